"""Test-side helpers for driving agents: :class:`Agent` is :class:`terway_agent.sim.SimAgent`
with the option to run an inline mode plugin through tests/functional/_runner.py."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from terway_agent.sim import (  # noqa: F401 - re-exported for the suites
    CNIRun,
    SimAgent,
    base_settings,
    links_in,
    ns_run,
    unique,
    whoami,
    whoami_server,
)

RUNNER = Path(__file__).resolve().parent / "functional" / "_runner.py"


class Agent(SimAgent):
    """A :class:`SimAgent`; ``inline="module"`` runs that module as the mode plugin."""

    def __init__(self, workdir: Path, node_ns: str, settings: dict[str, Any], inline: str | None = None,
                 env: dict[str, str] | None = None) -> None:
        prefix = [sys.executable, str(RUNNER), inline] if inline else None
        super().__init__(workdir, node_ns, settings, command_prefix=prefix, env=env or {})
