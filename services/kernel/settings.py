"""Settings from the environment (names fixed in interfaces.md)."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from services.kernel.logging import get_logger

SERVICES = ("registrar", "distributor", "audit", "operations", "extract")  # operations: operator tooling


@dataclass(frozen=True)
class Settings:
    """Everything a service needs to find its database, the broker and its topics."""

    data_dir: Path
    kafka_bootstrap: str | None  # None: the local broker (started by `rod up`)
    database_urls: dict[str, str]
    catalogue: Path | None
    topic_prefix: str

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, data_dir: str | None = None) -> Settings:
        """Read ROD_* variables; `data_dir` (a CLI flag) wins over ROD_DATA_DIR."""
        env = dict(os.environ if env is None else env)
        root = Path(data_dir or env.get("ROD_DATA_DIR") or "./var").resolve()
        default_url = env.get("ROD_DATABASE_URL")
        urls = {
            service: env.get(f"ROD_{service.upper()}_DATABASE_URL")
            or default_url
            or f"sqlite:///{root / (service + '.db')}"
            for service in SERVICES
        }
        catalogue = env.get("ROD_CATALOGUE")
        return cls(
            data_dir=root,
            kafka_bootstrap=env.get("ROD_KAFKA_BOOTSTRAP") or None,
            database_urls=urls,
            catalogue=Path(catalogue) if catalogue else None,
            topic_prefix=env.get("ROD_TOPIC_PREFIX", ""),
        )

    def topic(self, name: str) -> str:
        """The topic's name on the cluster: ROD_TOPIC_PREFIX prepended as it is."""
        return self.topic_prefix + name

    def group(self, name: str) -> str:
        """The consumer group's id on the cluster: prefixed like the topics, so systems sharing a
        cluster never join (and rebalance) each other's groups."""
        return self.topic_prefix + name

    @property
    def bootstrap_file(self) -> Path:
        """Where `rod up` writes the address of the local broker it started."""
        return self.data_dir / "kafka.bootstrap"


def private_data_dir(data_dir: Path) -> None:
    """Create `data_dir` 700 and have this process create every file 600 and directory 700 (the
    databases and their write-ahead logs hold person numbers in clear); warn, without changing
    anything, when an existing data dir or a file in it is open to others."""
    os.umask(0o077)
    if not data_dir.exists():
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        return
    mode = stat.S_IMODE(data_dir.stat().st_mode)
    too_open = 0
    for folder, _, names in os.walk(data_dir):
        for name in names:
            found = os.lstat(os.path.join(folder, name))
            too_open += stat.S_ISREG(found.st_mode) and bool(found.st_mode & 0o077)
    if mode & 0o077 or too_open:
        get_logger("settings").warning("data_dir_too_open", data_dir=str(data_dir), mode=f"{mode:o}",
                                       files_too_open=too_open, wanted="700 for the dir, 600 for its files")
