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
    workdir_settings,
)

RUNNER = Path(__file__).resolve().parent / "functional" / "_runner.py"


class Agent(SimAgent):
    """A :class:`SimAgent`; ``inline="module"`` runs that module as the mode plugin."""

    def __init__(self, workdir: Path, node_ns: str, settings: dict[str, Any], inline: str | None = None,
                 env: dict[str, str] | None = None) -> None:
        prefix = [sys.executable, str(RUNNER), inline] if inline else None
        super().__init__(workdir, node_ns, settings, command_prefix=prefix, env=env or {})


def run_agent_process(argv: list[str], make_agent: Any) -> int:
    """The body of a test runner script: settings from ``terway-agent run`` arguments
    (``argv``), JSON logs, ``make_agent(settings)`` run to the end; a TerwayError that
    stops it is printed and exits 2, as ``terway-agent run`` does."""
    import trio

    from terway_agent import log
    from terway_agent.cli import _settings_from_args, build_parser
    from terway_agent.errors import terway_error_in

    settings, _warnings = _settings_from_args(build_parser().parse_args(["run", *argv]))
    log.configure(settings.log_level, json=True)
    try:
        trio.run(make_agent(settings).run)
    except BaseException as exc:
        err = terway_error_in(exc)
        if err is None:
            raise
        print(f"terway-agent: {err.message}", file=sys.stderr)
        return 2
    return 0
