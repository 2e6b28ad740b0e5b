"""Run the real agent with an inline mode plugin (a module path) instead of an
entry point: ``python _runner.py <module> --config settings.yaml``.

Used by crash and lifecycle tests that need a mode with controllable delays.
The agent, its socket, store and CNI handling are the production code.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from terway_agent import log  # noqa: E402
from terway_agent._hosting import PluginHost  # noqa: E402
from terway_agent.cli import _settings_from_args, build_parser, terway_error_in  # noqa: E402
from terway_agent.daemon.app import Agent  # noqa: E402


def main() -> int:
    module = importlib.import_module(sys.argv[1])
    args = build_parser().parse_args(["run", *sys.argv[2:]])
    settings, _warnings = _settings_from_args(args)
    log.configure(settings.log_level, json=True)
    host = PluginHost()
    host.register_mode(module, module.terway_mode_info().name)
    try:
        trio.run(Agent(settings, host=host).run)
    except BaseException as exc:
        err = terway_error_in(exc)
        if err is None:
            raise
        print(f"terway-agent: {err.message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
