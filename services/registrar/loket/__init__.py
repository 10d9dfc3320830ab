"""Het Loket: the institutions' pages in a browser (router.py), their sessions (sessions.py)
and words (texts.py)."""
