"""Run the real agent with an inline mode plugin (a module path) instead of an
entry point: ``python _runner.py <module> --config settings.yaml``.

Used by crash and lifecycle tests that need a mode with controllable delays.
The agent, its socket, store and CNI handling are the production code.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from agentkit import run_agent_process  # noqa: E402

from terway_agent._hosting import PluginHost  # noqa: E402
from terway_agent.daemon.app import Agent  # noqa: E402


def main() -> int:
    module = importlib.import_module(sys.argv[1])
    host = PluginHost()
    host.register_mode(module, module.terway_mode_info().name)
    return run_agent_process(sys.argv[2:], lambda settings: Agent(settings, host=host))


if __name__ == "__main__":
    sys.exit(main())
