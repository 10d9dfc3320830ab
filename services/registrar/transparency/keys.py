"""The key that signs the log's checkpoints: from ROD_LOG_SIGNING_KEY, else made once.

ROD_LOG_SIGNING_KEY holds the signer key text (`PRIVATE+KEY+<name>+<id>+<base64>`, the note
format of Go's sumdb/note) or the path of a file holding it. Without it the embedded default
makes a key named after the origin under `<data dir>/log/` the first time (600 in a 700
directory; two processes starting at once make one key: the file is created exclusively).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from services.kernel.logging import get_logger
from services.kernel.settings import Settings
from services.registrar.transparency.checkpoint import NoteError, Signer, parse_signer

log = get_logger("registrar.log_keys")

DEFAULT_ORIGIN = "rodchain.local/log"
KEY_FILE = "signing-key.txt"
_PRIVATE = "PRIVATE+KEY+"


@dataclass(frozen=True)
class LogIdentity:
    origin: str
    signer: Signer
    source: str  # where the key came from, for the start-up line (never the key)


def origin() -> str:
    """The checkpoints' origin line: ROD_LOG_ORIGIN, default rodchain.local/log."""
    return os.environ.get("ROD_LOG_ORIGIN") or DEFAULT_ORIGIN


def load_identity(settings: Settings) -> LogIdentity:
    """The origin and the signer of this installation's checkpoints."""
    name = origin()
    configured = (os.environ.get("ROD_LOG_SIGNING_KEY") or "").strip()
    if configured:
        text = configured if configured.startswith(_PRIVATE) else Path(configured).read_text().strip()
        try:
            signer = parse_signer(text)
        except NoteError as exc:
            raise SystemExit(f"ROD_LOG_SIGNING_KEY: {exc}") from None
        return LogIdentity(name, signer, "ROD_LOG_SIGNING_KEY")
    folder = settings.data_dir / "log"
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = folder / KEY_FILE
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return LogIdentity(name, _read(path), str(path))
    signer = Signer.generate(name)
    with os.fdopen(descriptor, "w") as out:
        out.write(signer.text() + "\n")
    log.warning("log_signing_key_created", path=str(path), verifier=signer.verifier.text(),
                note="the embedded default; production sets ROD_LOG_SIGNING_KEY")
    return LogIdentity(name, signer, str(path))


def _read(path: Path) -> Signer:
    for _ in range(50):  # another process may be writing it this moment
        text = path.read_text().strip()
        if text:
            return parse_signer(text)
        time.sleep(0.02)
    raise SystemExit(f"{path} is empty: remove it to make a new log signing key")
