"""Run the real agent with the IPAM test mode: ``python twipam_agent.py --config settings.yaml``.

The agent (store, CNI socket, default services: cloud + IPAM) is the production code.
"""

from __future__ import annotations

import sys
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import twipam_mode  # noqa: E402

from terway_agent import log  # noqa: E402
from terway_agent._hosting import PluginHost  # noqa: E402
from terway_agent.cli import _settings_from_args, build_parser, terway_error_in  # noqa: E402
from terway_agent.daemon.app import Agent  # noqa: E402


def main() -> int:
    args = build_parser().parse_args(["run", *sys.argv[1:]])
    settings, _warnings = _settings_from_args(args)
    log.configure(settings.log_level, json=True)
    host = PluginHost()
    host.register_mode(twipam_mode, "twipam")
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
