"""Settings from the environment (names fixed in interfaces.md)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

SERVICES = ("registrar", "distributor", "audit", "operations")  # operations: operator tooling


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

    @property
    def bootstrap_file(self) -> Path:
        """Where `rod up` writes the address of the local broker it started."""
        return self.data_dir / "kafka.bootstrap"
