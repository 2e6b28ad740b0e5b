"""Run the real agent (mode plugins from entry points, as ``terway-agent run``)
with pod annotations from a JSON file, where the Kubernetes API would be their
source: ``python _annotated_agent.py <pods.json> --config settings.yaml``.

``pods.json`` maps ``"<namespace>/<name>"`` to that pod's annotations; it is read
on every lookup, so a test can add pods while the agent runs.  Everything else
-- the agent, its socket, store, CNI handling and the shared_eni plugin -- is the
production code.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agentkit import run_agent_process  # noqa: E402

from terway_agent.daemon.app import Agent  # noqa: E402
from terway_agent.daemon.service import PodInfo  # noqa: E402
from terway_agent.types import PodRef  # noqa: E402


def main() -> int:
    pods_file = Path(sys.argv[1])

    async def pod_lookup(ref: PodRef) -> PodInfo | None:
        pods = json.loads(await trio.to_thread.run_sync(pods_file.read_text))
        annotations = pods.get(f"{ref.namespace}/{ref.name}")
        return None if annotations is None else PodInfo(annotations=annotations)

    return run_agent_process(sys.argv[2:], lambda settings: Agent(settings, pod_lookup=pod_lookup))


if __name__ == "__main__":
    sys.exit(main())
