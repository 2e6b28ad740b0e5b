"""Print how long each mode of the e2e lane takes to become ready (warm cache).

Usage: .venv/bin/python scripts/e2e/measure.py [rounds]   (root; builds first when not cached)
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests" / "e2e"))

import lane  # noqa: E402


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    art = lane.ensure_artifacts()
    api_times, node_times, stop_times, pod_times = [], [], [], []
    for _ in range(rounds):
        t0 = time.monotonic()
        api = lane.ApiServer.start(art)
        api_times.append(time.monotonic() - t0)
        try:
            with tempfile.TemporaryDirectory(prefix="twe2e-measure-") as data:
                conf = lane.debian_bridge_conflist(subnet=lane.unused_subnet24(), data_dir=Path(data))
                t0 = time.monotonic()
                node = lane.Node.start(api, art, cni_conflist=conf)
                node_times.append(time.monotonic() - t0)
                node.record_link(conf["plugins"][0]["bridge"])
                try:
                    from kubernetes import client

                    with api.api_client() as c:
                        core = client.CoreV1Api(c)
                        core.create_namespaced_pod("default", lane.pause_pod("m", node.name, art.pause_image))
                        t0 = time.monotonic()
                        lane.wait_pod_running(core, "default", "m")
                        pod_times.append(time.monotonic() - t0)
                finally:
                    t0 = time.monotonic()
                    node.stop()
                    stop_times.append(time.monotonic() - t0)
        finally:
            api.stop()

    def fmt(xs: list[float]) -> str:
        return (
            f"median {statistics.median(xs):5.1f}s  min {min(xs):5.1f}s  max {max(xs):5.1f}s  (n={len(xs)})"
        )

    print(f"apiserver-only ready (etcd + kube-apiserver): {fmt(api_times)}")
    print(f"full node Ready (containerd + kubelet):       {fmt(node_times)}")
    print(f"pause pod Running after create:               {fmt(pod_times)}")
    print(f"full node stop + clean-up (1 pod running):    {fmt(stop_times)}")


if __name__ == "__main__":
    main()
