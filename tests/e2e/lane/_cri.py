"""A minimal CRI (runtime.v1alpha2) client over containerd's socket, from stubs made by build.sh."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from ._util import LaneError

_MODULES: tuple[ModuleType, ModuleType] | None = None


def _load_stubs(stub_dir: Path) -> tuple[ModuleType, ModuleType]:
    global _MODULES
    if _MODULES is None:
        if not (stub_dir / "twe2e_cri_v1alpha2_pb2_grpc.py").exists():
            raise LaneError(f"CRI stubs missing in {stub_dir}: run scripts/e2e/build.sh")
        importlib.invalidate_caches()
        sys.path.insert(0, str(stub_dir))
        try:
            pb2 = importlib.import_module("twe2e_cri_v1alpha2_pb2")
            grpc_mod = importlib.import_module("twe2e_cri_v1alpha2_pb2_grpc")
        finally:
            sys.path.remove(str(stub_dir))
        _MODULES = (pb2, grpc_mod)
    return _MODULES


class CRIClient:
    """RuntimeService calls of CRI v1alpha2 (what containerd 1.6 and kubelet 1.20 speak).

    ``pb`` exposes the generated message classes (e.g. ``client.pb.PodSandboxConfig``) for
    :meth:`run_pod_sandbox`.
    """

    def __init__(self, socket_path: Path, stub_dir: Path, *, timeout: float = 60) -> None:
        import grpc

        self.pb, grpc_mod = _load_stubs(stub_dir)
        self._channel = grpc.insecure_channel(f"unix://{socket_path}")
        self._rt = grpc_mod.RuntimeServiceStub(self._channel)
        self._timeout = timeout

    def close(self) -> None:
        """Close the gRPC channel."""
        self._channel.close()

    def version(self) -> Any:
        """``Version``: runtime name/version and the CRI API version."""
        return self._rt.Version(self.pb.VersionRequest(version="v1alpha2"), timeout=self._timeout)

    def status(self) -> dict[str, bool]:
        """``Status``: condition type -> status (``RuntimeReady``, ``NetworkReady``)."""
        resp = self._rt.Status(self.pb.StatusRequest(), timeout=self._timeout)
        return {c.type: c.status for c in resp.status.conditions}

    def run_pod_sandbox(self, config: Any, runtime_handler: str = "") -> str:
        """``RunPodSandbox``: returns the sandbox id (containerd runs CNI ADD inside)."""
        req = self.pb.RunPodSandboxRequest(config=config, runtime_handler=runtime_handler)
        return self._rt.RunPodSandbox(req, timeout=self._timeout).pod_sandbox_id

    def stop_pod_sandbox(self, sandbox_id: str) -> None:
        """``StopPodSandbox`` (containerd runs CNI DEL inside)."""
        self._rt.StopPodSandbox(
            self.pb.StopPodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=self._timeout
        )

    def remove_pod_sandbox(self, sandbox_id: str) -> None:
        """``RemovePodSandbox``."""
        self._rt.RemovePodSandbox(
            self.pb.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=self._timeout
        )

    def pod_sandbox_status(self, sandbox_id: str) -> tuple[Any, dict[str, Any]]:
        """``PodSandboxStatus`` (verbose): the status message and the decoded ``info["info"]`` JSON.

        The info holds ``pid`` (the pause process) and ``runtimeSpec`` with the netns path.
        """
        resp = self._rt.PodSandboxStatus(
            self.pb.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id, verbose=True), timeout=self._timeout
        )
        info = json.loads(resp.info["info"]) if "info" in resp.info else {}
        return resp.status, info

    def list_pod_sandboxes(self, **labels: str) -> list[Any]:
        """``ListPodSandbox``, optionally filtered by labels."""
        flt = self.pb.PodSandboxFilter(label_selector=labels) if labels else None
        return list(
            self._rt.ListPodSandbox(self.pb.ListPodSandboxRequest(filter=flt), timeout=self._timeout).items
        )

    def sandbox_netns(self, sandbox_id: str) -> str:
        """The network namespace path of a sandbox (``/var/run/netns/cni-...``) from its status."""
        _, info = self.pod_sandbox_status(sandbox_id)
        for ns in info.get("runtimeSpec", {}).get("linux", {}).get("namespaces", []):
            if ns.get("type") == "network" and ns.get("path"):
                return ns["path"]
        pid = info.get("pid")
        if pid:
            return f"/proc/{pid}/ns/net"
        raise LaneError(f"no network namespace in the status of sandbox {sandbox_id}")
