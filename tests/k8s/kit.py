"""Helpers for tests that run terway-agent against a real kube-apiserver.

Shared by ``tests/k8s`` (apiserver only) and the end-to-end lane
(``tests/e2e/test_terway_*.py``):

* :class:`Forwarder` -- a TCP relay that listens on 127.0.0.1 inside a network
  namespace (or the caller's) and connects to the apiserver on the host's
  loopback: a node namespace reaches the API as a real node reaches its API
  server address.  :meth:`Forwarder.block` / :meth:`Forwarder.cut` simulate
  network trouble without touching the agent.
* :class:`KubeAgent` -- ``terway-agent run`` as a process (root namespace or a
  node namespace via ``nsenter --net``, which keeps the host's mounts so that
  the runtime's pod namespaces are visible).
* the chart's objects rendered for a test namespace (:func:`chart`), RBAC and
  a ServiceAccount token for the agent (:func:`install_agent_identity`).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml
from agentkit import Agent, workdir_settings

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "deploy" / "tools"))
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

from render_chart import Renderer  # noqa: E402

CHART = ROOT / "deploy" / "chart" / "terway-agent"
VENV_BIN = Path(sys.executable).parent
PREFIX = "twk8s"


def sfx(n: int = 3) -> str:
    return uuid.uuid4().hex[: 2 * n]


# ---------------------------------------------------------------------------
# TCP relay into a network namespace
# ---------------------------------------------------------------------------


class Forwarder:
    """Relays ``127.0.0.1:<port>`` (inside ``netns`` if given) to ``target`` in the caller's namespace.

    ``port`` is chosen by the kernel unless given. Every relayed connection is two
    threads copying bytes; :meth:`cut` closes them all (a network blip), :meth:`block`
    also refuses new ones until :meth:`unblock`.
    """

    def __init__(self, target: tuple[str, int], *, netns: str | None = None, port: int = 0) -> None:
        self.target = target
        self.netns = netns
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._blocked = threading.Event()
        self._closed = threading.Event()
        self.accepted = 0
        self.listener = self._listen(port)
        self.port = self.listener.getsockname()[1]
        self._thread = threading.Thread(target=self._accept_loop, name=f"fwd-{self.port}", daemon=True)
        self._thread.start()

    def _listen(self, port: int) -> socket.socket:
        def make() -> socket.socket:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))
            s.listen(64)
            return s

        if self.netns is None:
            return make()
        from terway_agent.datapath import netns as tw_netns

        with tw_netns.enter(self.netns):  # the socket stays in the namespace it was made in
            return make()

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            if self._blocked.is_set():
                conn.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                conn.close()
                continue
            self.accepted += 1
            with self._lock:
                self._conns.update((conn, upstream))
            for a, b in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            with self._lock:
                for s in (src, dst):
                    if s in self._conns:
                        self._conns.discard(s)
                        s.close()

    def cut(self) -> int:
        """Close every relayed connection; returns how many there were."""
        with self._lock:
            conns = list(self._conns)
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        return len(conns) // 2

    def block(self) -> None:
        self._blocked.set()
        self.cut()

    def unblock(self) -> None:
        self._blocked.clear()

    def close(self) -> None:
        self._closed.set()
        try:
            self.listener.close()
        except OSError:
            pass
        self.cut()


# ---------------------------------------------------------------------------
# the agent as a process
# ---------------------------------------------------------------------------


class KubeAgent(Agent):
    """``terway-agent run --config <settings>`` in the root namespace (``node_ns=""``) or,
    through ``nsenter --net``, in a node namespace."""

    argv: list[str] | None = None

    def command(self, *extra: str) -> list[str]:
        settings = str(self.write_settings())
        base = list(self.argv) if self.argv else [str(VENV_BIN / "terway-agent"), "run"]
        base = [a if a != "@SETTINGS@" else settings for a in base]
        if "--config" not in base:
            base += ["--config", settings]
        if not self.node_ns:
            return [*base, *extra]
        from terway_agent.datapath import netns as tw_netns

        return ["nsenter", f"--net={tw_netns.netns_path(self.node_ns)}", "--", *base, *extra]

    def lines(self, event: str | None = None, **match: Any) -> list[dict[str, Any]]:
        """The agent's JSON log lines (optionally only ``event`` with matching keys)."""
        out = []
        for rec in self.events():
            if event is not None and rec.get("event") != event:
                continue
            if all(rec.get(k) == v for k, v in match.items()):
                out.append(rec)
        return out

    def wait_line(
        self, event: str, *, timeout: float = 20.0, count: int = 1, **match: Any
    ) -> list[dict[str, Any]]:
        """Wait until ``event`` (with ``match``) was logged ``count`` times."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.lines(event, **match)
            if len(found) >= count:
                return found
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(
                    f"agent exited ({self.proc.returncode}) before logging {event} {match}:\n{self.log()}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"agent did not log {event} {match} x{count} within {timeout}s:\n{self.log()}"
                )
            time.sleep(0.05)

    def exit_code(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)


def wait_for(what: str, probe: Callable[[], Any], *, timeout: float = 20.0, interval: float = 0.1) -> Any:
    """Poll ``probe`` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            value = probe()
            if value:
                return value
            last = value
        except Exception as exc:  # noqa: BLE001 - reported on timeout
            last = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")
        time.sleep(interval)


# ---------------------------------------------------------------------------
# Kubernetes objects
# ---------------------------------------------------------------------------


def chart(namespace: str, release: str, **values: Any) -> Renderer:
    """The chart rendered for ``release`` in ``namespace`` with value overrides."""
    return Renderer.from_chart(CHART, overrides=values, release=release, namespace=namespace)


def kind_docs(docs: Iterable[dict[str, Any]], *kinds: str) -> list[dict[str, Any]]:
    return [d for d in docs if d.get("kind") in kinds]


def apply_docs(
    api_client: Any, docs: Iterable[dict[str, Any]], *, dry_run: bool = False
) -> list[dict[str, Any]]:
    """Create each document (server-side dry run if asked); returns the API's answers."""
    from kubernetes.dynamic import DynamicClient

    dyn = DynamicClient(api_client)
    out = []
    for doc in docs:
        res = dyn.resources.get(api_version=doc["apiVersion"], kind=doc["kind"])
        params = [("dryRun", "All")] if dry_run else []
        kwargs = {"namespace": doc["metadata"].get("namespace")} if res.namespaced else {}
        out.append(res.create(body=doc, query_params=params, **kwargs).to_dict())
    return out


def delete_docs(api_client: Any, docs: Iterable[dict[str, Any]]) -> None:
    """Delete what :func:`apply_docs` created (missing objects are fine)."""
    from kubernetes.client.exceptions import ApiException
    from kubernetes.dynamic import DynamicClient
    from kubernetes.dynamic.exceptions import NotFoundError

    dyn = DynamicClient(api_client)
    for doc in docs:
        res = dyn.resources.get(api_version=doc["apiVersion"], kind=doc["kind"])
        kwargs = {"namespace": doc["metadata"].get("namespace")} if res.namespaced else {}
        try:
            res.delete(name=doc["metadata"]["name"], **kwargs)
        except (NotFoundError, ApiException):
            pass


IDENTITY_KINDS = ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")


def install_agent_identity(api: Any, namespace: str, release: str) -> tuple[str, list[dict[str, Any]]]:
    """Create the chart's ServiceAccount and RBAC for ``release`` in ``namespace``; returns
    (a token of that ServiceAccount, the created documents)."""
    docs = kind_docs(chart(namespace, release).documents(), *IDENTITY_KINDS)
    with api.api_client() as client:
        apply_docs(client, docs)
    sa = kind_docs(docs, "ServiceAccount")[0]["metadata"]["name"]
    return api.create_service_account_token(namespace, sa), docs


def write_kubeconfig(api: Any, path: Path, token: str, *, port: int | None = None) -> Path:
    """A kubeconfig for ``token``, optionally pointing at a forwarder's port on 127.0.0.1."""
    api.write_kubeconfig(path, token=token, user="terway-agent")
    if port is not None:
        cfg = yaml.safe_load(path.read_text())
        cfg["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{port}"
        path.write_text(yaml.safe_dump(cfg))
    return path


def events_for(core: Any, namespace: str, name: str, reason: str | None = None) -> list[Any]:
    evs = core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={name}").items
    return [e for e in evs if reason is None or e.reason == reason]


def settings_for(
    workdir: Path, *, node: str, namespace: str, kubeconfig: Path, **over: Any
) -> dict[str, Any]:
    """Agent settings for a test: everything under ``workdir``, Kubernetes on."""
    s: dict[str, Any] = {
        "node_name": node,
        "use_kubernetes": True,
        "kubeconfig": str(kubeconfig),
        **workdir_settings(workdir),
        "log_level": "info",
        "plugin_config": {
            "example": {"subnet": "10.251.0.0/24"},
            "kubernetes": {"namespace": namespace, "start_timeout": 15, "ipam_poll_interval": 0.2},
        },
    }
    for k, v in over.items():
        if k == "plugin_config":
            for pk, pv in v.items():
                s["plugin_config"][pk] = {**s["plugin_config"].get(pk, {}), **pv}
        else:
            s[k] = v
    return s


def eni_config_doc(
    namespace: str, eni_conf: dict[str, Any], netconf: dict[str, Any] | None = None
) -> dict[str, Any]:
    data = {"eni_conf": json.dumps(eni_conf)}
    if netconf is not None:
        data["10-terway.conf"] = json.dumps(netconf)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "eni-config", "namespace": namespace},
        "data": data,
    }


def run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=kw.pop("timeout", 60), **kw)


def is_root() -> bool:
    return os.geteuid() == 0
