"""etcd + kube-apiserver on loopback: the apiserver-only mode of the lane."""

from __future__ import annotations

import json
import shutil
import ssl
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from . import _cleanup
from ._artifacts import Artifacts
from ._pki import Pki, make_pki
from ._procs import ManagedProcess, Workdir
from ._util import PREFIX, LaneError, Stopwatch, free_port, suffix, wait_until

#: Service CIDR handed to the apiserver (configuration only: nothing routes to it).
SERVICE_CIDR = "10.96.0.0/16"
#: Issuer of service-account tokens (and default audience of TokenRequest tokens).
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"

#: Extra kube-apiserver flags that make ``410 Gone`` easy to provoke: no watch cache (watches are
#: served by etcd) and etcd compaction every second, so a resourceVersion older than ~2 s expires.
#: With the watch cache on (the default) the cache grows with the event rate and even compacted
#: revisions stay watchable: a too-old resourceVersion is then hard to produce.
COMPACTING_ARGS = ("--watch-cache=false", "--etcd-compaction-interval=1s")

ADMIN_USER = "twe2e-admin"
KUBELET_USER = "twe2e-kubelet"


class ApiServer:
    """A running etcd + kube-apiserver pair (no controller-manager, no scheduler).

    Use :meth:`start`; stop with :meth:`stop` or as a context manager. Attributes:

    - ``url``: ``https://127.0.0.1:<port>``; ``ca_crt``: the CA that signed its serving certificate
    - ``admin_token`` (user ``twe2e-admin`` in ``system:masters``), ``kubeconfig``: admin kubeconfig file
    - ``kubelet_token``: static token for kubelets (``twe2e-kubelet``, ``system:nodes`` + ``system:masters``)
    - ``timings``: phase durations of the start (``Stopwatch``)

    Admission: ``ServiceAccount`` is disabled (nothing would create the ``default`` ServiceAccount or
    its token Secret without a controller-manager). Service-account *tokens* still work through the
    TokenRequest API (see :meth:`create_service_account_token`) because the issuer and signing key
    flags are set.
    """

    def __init__(self, art: Artifacts) -> None:
        self.art = art
        self.workdir = Workdir("api")
        self.timings = Stopwatch()
        self.etcd: ManagedProcess | None = None
        self.apiserver: ManagedProcess | None = None
        self.etcd_url = ""
        self.port = 0
        self.url = ""
        self.admin_token = suffix(16)
        self.kubelet_token = suffix(16)
        self.kubeconfig = self.workdir.path / "admin.kubeconfig"
        self.pki: Pki | None = None
        self._apiserver_argv: list[str] = []
        self._etcd_dir: Path | None = None

    # -- lifecycle ------------------------------------------------------------------------------------

    @classmethod
    def start(cls, art: Artifacts, *, extra_args: list[str] | None = None, timeout: float = 90) -> ApiServer:
        """Start etcd and kube-apiserver, wait until ``/readyz`` is OK and ``default`` exists."""
        self = cls(art)
        try:
            self._start(extra_args or [], timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, extra_args: list[str], timeout: float) -> None:
        wd = self.workdir
        self.pki = make_pki(
            wd.sub("pki"),
            ips=["127.0.0.1", "10.96.0.1"],
            dns=["localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"],
        )
        self.timings.mark("pki")

        # etcd's WAL fsyncs: keep its data in memory (/dev/shm) to make writes cheap.
        self._etcd_dir = Path(tempfile.mkdtemp(prefix=f"{PREFIX}-etcd-", dir="/dev/shm"))
        wd.record("glob", pattern=str(self._etcd_dir))
        for attempt in range(3):
            client_port, peer_port = free_port(), free_port()
            self.etcd_url = f"http://127.0.0.1:{client_port}"
            peer = f"http://127.0.0.1:{peer_port}"
            self.etcd = wd.spawn(
                "etcd",
                [str(self.art.etcd), "--name", "twe2e", "--data-dir", str(self._etcd_dir / "data")]
                + ["--listen-client-urls", self.etcd_url, "--advertise-client-urls", self.etcd_url]
                + ["--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer]
                + ["--initial-cluster", f"twe2e={peer}", "--log-level", "warn"]
                + ["--quota-backend-bytes", str(2 << 30), "--snapshot-count", "100000"],
            )
            try:
                wait_until(
                    "etcd /health",
                    lambda: _http_json(self.etcd_url + "/health").get("health") == "true",
                    timeout=20,
                    alive=self.etcd.dead_message,
                )
                break
            except LaneError:
                if self.etcd.exited() is None or attempt == 2:
                    raise
                shutil.rmtree(self._etcd_dir / "data", ignore_errors=True)  # port race: retry
        self.timings.mark("etcd")

        tokens = wd.path / "tokens.csv"
        tokens.write_text(
            f'{self.admin_token},{ADMIN_USER},{ADMIN_USER},"system:masters"\n'
            f'{self.kubelet_token},{KUBELET_USER},{KUBELET_USER},"system:nodes,system:masters"\n'
        )
        tokens.chmod(0o600)
        pki = self.pki
        for attempt in range(3):
            self.port = free_port()
            self.url = f"https://127.0.0.1:{self.port}"
            argv = [
                str(self.art.kube_apiserver),
                f"--etcd-servers={self.etcd_url}",
                "--bind-address=127.0.0.1",
                f"--secure-port={self.port}",
                "--insecure-port=0",
                "--advertise-address=127.0.0.1",
                "--endpoint-reconciler-type=none",
                f"--tls-cert-file={pki.server_crt}",
                f"--tls-private-key-file={pki.server_key}",
                f"--cert-dir={wd.sub('apiserver-certs')}",
                f"--token-auth-file={tokens}",
                "--authorization-mode=RBAC",
                f"--service-account-issuer={SA_ISSUER}",
                f"--service-account-key-file={pki.sa_pub}",
                f"--service-account-signing-key-file={pki.sa_key}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--disable-admission-plugins=ServiceAccount",
                "--allow-privileged=true",
                "--profiling=false",
                "--v=1",
                *extra_args,
            ]
            self._apiserver_argv = list(argv)
            self.apiserver = wd.spawn("kube-apiserver", argv)
            try:
                wait_until(
                    "kube-apiserver /readyz",
                    lambda: self._get("/readyz", raw=True) == "ok",
                    timeout=timeout,
                    interval=0.2,
                    alive=self.apiserver.dead_message,
                )
                break
            except LaneError as exc:
                bind_race = "address already in use" in str(exc)
                if not bind_race or attempt == 2:
                    raise
        self.timings.mark("apiserver-ready")
        wait_until(
            "namespace default",
            lambda: self._get("/api/v1/namespaces/default").get("metadata"),
            timeout=30,
            alive=self.apiserver.dead_message,
        )
        self.timings.mark("default-namespace")
        self.write_kubeconfig(self.kubeconfig, token=self.admin_token, user=ADMIN_USER)

    def stop(self) -> None:
        """Stop kube-apiserver and etcd (by PID), delete the data and the work directory. Idempotent."""
        for proc in (self.apiserver, self.etcd):
            if proc is not None:
                proc.stop()
        _cleanup.release_resources(self.workdir.resources, self.workdir.path)
        self.workdir.remove()

    def restart_apiserver(self, *, down_for: float = 0.0, timeout: float = 90) -> float:
        """Stop kube-apiserver (SIGTERM, by PID) and start it again with the same arguments and port;
        etcd keeps running, so every object and resourceVersion survives. Waits until ``/readyz``.

        ``down_for``: seconds to stay down. Returns the seconds the API was unavailable.
        """
        import time

        if self.apiserver is None or not self._apiserver_argv:
            raise LaneError("restart_apiserver: the apiserver was never started")
        started = time.monotonic()
        self.apiserver.stop()
        time.sleep(down_for)
        self.apiserver = self.workdir.spawn("kube-apiserver", self._apiserver_argv)
        proc = self.apiserver
        wait_until(
            "kube-apiserver /readyz after restart",
            lambda: self._get("/readyz", raw=True) == "ok",
            timeout=timeout,
            interval=0.2,
            alive=proc.dead_message,
        )
        return time.monotonic() - started

    def __enter__(self) -> ApiServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- clients --------------------------------------------------------------------------------------

    def _ssl(self) -> ssl.SSLContext:
        assert self.pki is not None
        return ssl.create_default_context(cafile=str(self.pki.ca_crt))

    def _get(self, path: str, *, raw: bool = False) -> Any:
        req = urllib.request.Request(self.url + path, headers={"Authorization": f"Bearer {self.admin_token}"})
        with urllib.request.urlopen(req, context=self._ssl(), timeout=5) as resp:
            body = resp.read().decode()
        return body if raw else json.loads(body)

    @property
    def ca_crt(self) -> Path:
        """The CA certificate file to verify the apiserver with."""
        assert self.pki is not None
        return self.pki.ca_crt

    def write_kubeconfig(self, path: Path, *, token: str, user: str = "user") -> Path:
        """Write a kubeconfig for ``token`` (CA embedded by file path) to ``path`` and return it."""
        cfg = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {"name": "twe2e", "cluster": {"server": self.url, "certificate-authority": str(self.ca_crt)}}
            ],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [{"name": "twe2e", "context": {"cluster": "twe2e", "user": user}}],
            "current-context": "twe2e",
        }
        path.write_text(yaml.safe_dump(cfg))
        path.chmod(0o600)
        return path

    def api_client(self, token: str | None = None) -> Any:
        """A ``kubernetes.client.ApiClient`` for ``token`` (default: the admin token)."""
        from kubernetes import client

        conf = client.Configuration()
        conf.host = self.url
        conf.ssl_ca_cert = str(self.ca_crt)
        conf.api_key = {"authorization": token or self.admin_token}
        conf.api_key_prefix = {"authorization": "Bearer"}
        return client.ApiClient(conf)

    def create_service_account_token(
        self,
        namespace: str,
        name: str,
        *,
        expiration_seconds: int = 3600,
        audiences: list[str] | None = None,
    ) -> str:
        """Mint a token for ServiceAccount ``namespace/name`` via the TokenRequest API.

        The ServiceAccount must exist (create it first). ``audiences`` defaults to the apiserver's
        (the issuer). The token authenticates as ``system:serviceaccount:<ns>:<name>`` with groups
        ``system:serviceaccounts`` and ``system:serviceaccounts:<ns>``; bind RBAC roles to it.
        """
        from kubernetes import client

        with self.api_client() as api:
            req = client.AuthenticationV1TokenRequest(
                spec=client.V1TokenRequestSpec(
                    audiences=audiences or [], expiration_seconds=expiration_seconds
                )
            )
            resp = client.CoreV1Api(api).create_namespaced_service_account_token(name, namespace, req)
        return resp.status.token


def _http_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=3) as resp:
        return json.loads(resp.read().decode())
