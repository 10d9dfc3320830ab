"""Het Loket: the institutions' pages in a browser (router.py: the endpoints; pages.py: what they share),
their sessions (sessions.py) and words (texts.py)."""
