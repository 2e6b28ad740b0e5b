"""The real-cluster e2e lane: etcd + kube-apiserver (+ containerd + kubelet) built from Debian sources.

Two modes:

- apiserver-only: ``ApiServer.start(ensure_artifacts())`` — etcd + kube-apiserver v1.20.2 on loopback,
  ready in a few seconds; for the agent's Kubernetes client (watches, 410 Gone, RBAC, CRDs).
- full node: ``Node.start(api, art, cni_conflist=...)`` — containerd 1.6 (Debian) with its own
  root/state/socket and CNI dirs, the pause image imported, kubelet v1.20.2 registered and Ready.

Everything is started and stopped by PID and cleaned up (mounts, netns, links, sysctls, CNI caches,
pod log dirs); :func:`reap_stale` removes what a killed run left behind. The pytest fixtures are in
``tests/e2e/conftest.py``; ``docs/e2e.md`` explains the lane.
"""

from ._apiserver import ADMIN_USER, COMPACTING_ARGS, SA_ISSUER, SERVICE_CIDR, ApiServer
from ._artifacts import K8S_VERSION, Artifacts, artifacts, ensure_artifacts
from ._cri import CRIClient
from ._k8s import pause_pod, wait_pod_gone, wait_pod_running
from ._node import Node, debian_bridge_conflist, host_local_dir, unused_subnet24
from ._procs import ManagedProcess, Workdir, reap_stale
from ._util import PREFIX, LaneError, Stopwatch, suffix, wait_until

__all__ = [
    "ADMIN_USER",
    "COMPACTING_ARGS",
    "K8S_VERSION",
    "PREFIX",
    "SA_ISSUER",
    "SERVICE_CIDR",
    "ApiServer",
    "Artifacts",
    "CRIClient",
    "LaneError",
    "ManagedProcess",
    "Node",
    "Stopwatch",
    "Workdir",
    "artifacts",
    "debian_bridge_conflist",
    "ensure_artifacts",
    "host_local_dir",
    "reap_stale",
    "suffix",
    "pause_pod",
    "unused_subnet24",
    "wait_pod_gone",
    "wait_pod_running",
    "wait_until",
]
