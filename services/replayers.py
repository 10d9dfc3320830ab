"""How each service runs one of its dead letters again, installed in the kernel's registry.

`rod deadletter replay` and the console's replay ask the registry by service name; the
functions live in their services and are imported only when a letter of theirs is replayed,
so `rod` starts without loading every service.
"""

from __future__ import annotations

import importlib
from typing import Any

from services.kernel.deadletters import Replayer, install_replayers
from services.kernel.settings import Settings

WHERE = {
    "distributor": "services.distributor.replay",
    "audit": "services.audit.reader",
    "registrar": "services.registrar.impact",
    "extract": "services.extract.service",
}


def _in(module: str) -> Replayer:
    def replay(settings: Settings, bootstrap: str, row: Any) -> str:
        return importlib.import_module(module).replay_dead_letter(settings, bootstrap, row)  # type: ignore[no-any-return]

    return replay


install_replayers({service: _in(module) for service, module in WHERE.items()})
