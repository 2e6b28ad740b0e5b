"""The Kubernetes API client: the official ``kubernetes`` package, driven from trio.

Every call runs in a worker thread (``trio.to_thread.run_sync`` under a
capacity limiter) with a request timeout, after a token from a client-side
bucket (``kube_client_qps`` / ``kube_client_burst`` of eni_conf, changed live
on reload).  Bodies are handled as plain JSON (``_preload_content=False``):
the agent reads a handful of fields and never needs the generated models.

A cancelled call abandons its thread; the thread ends at its request timeout
at the latest (watch streams are shut down at once, see :class:`_Stream`).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from functools import partial
from typing import Any

import trio

from terway_agent.errors import ConfigError, PermanentError, TemporaryError, TerwayError
from terway_agent.k8s import _metrics
from terway_agent.log import get_logger

log = get_logger(__name__)

#: Where a pod's service account is mounted (in-cluster configuration): ``token`` and
#: ``ca.crt``; settings ``kube_serviceaccount_dir`` overrides it.
SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"

USER_AGENT = "terway-agent"


# ---------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------


class KubeError(TerwayError):
    """The Kubernetes API answered an error or could not be reached.

    ``status`` is the HTTP status (0 for transport errors), ``reason`` the
    API's reason (``Forbidden``, ``NotFound``, ``Expired``...).
    """

    def __init__(self, message: str, *, status: int = 0, reason: str = "", **details: Any) -> None:
        super().__init__(message, status=status, reason=reason, **details)
        self.status = status
        self.reason = reason


class KubeUnavailable(KubeError, TemporaryError):
    """Transport errors, timeouts, 429 and 5xx: try again later."""


class KubeForbidden(KubeError, PermanentError):
    """401/403: the agent's identity or RBAC does not allow the request."""


class KubeRequestError(KubeError, PermanentError):
    """Any other 4xx: the request itself was refused."""


class KubeGone(KubeError):
    """410 Gone: a watch or list asked for a resourceVersion that was compacted."""


RBAC_HINT = (
    "grant it to the agent's ServiceAccount (deploy/chart/terway-agent/templates/rbac.yaml, "
    "docs/deploy.md 'RBAC')"
)


def _api_message(body: Any) -> tuple[str, str]:
    """(message, reason) of an API ``Status`` body, best effort."""
    if isinstance(body, bytes):
        body = body.decode(errors="replace")
    if isinstance(body, str) and body.strip().startswith("{"):
        try:
            doc = json.loads(body)
        except ValueError:
            return body.strip()[:300], ""
        if isinstance(doc, Mapping):
            return str(doc.get("message") or "").strip(), str(doc.get("reason") or "")
    return (str(body or "").strip()[:300], "")


def translate(exc: BaseException, op: str) -> KubeError:
    """A :class:`KubeError` for an exception of the kubernetes client or urllib3."""
    from kubernetes.client.exceptions import ApiException

    if isinstance(exc, KubeError):
        return exc
    if isinstance(exc, ApiException):
        status = int(exc.status or 0)
        message, reason = _api_message(exc.body)
        message = message or str(exc.reason or "")
        if status in (401, 403):
            kind = "Unauthorized" if status == 401 else "Forbidden"
            hint = (
                "check the agent's credentials (kubeconfig or service-account token)"
                if status == 401
                else RBAC_HINT
            )
            return KubeForbidden(
                f"the Kubernetes API refused to let terway-agent {op} ({status} {kind}): {message}; {hint}",
                status=status,
                reason=reason or kind,
                op=op,
            )
        if status == 410:
            return KubeGone(f"{op}: 410 Gone: {message}", status=410, reason=reason or "Expired", op=op)
        if status == 0 or status == 429 or status >= 500:
            return KubeUnavailable(
                f"the Kubernetes API could not {op} ({status or 'no answer'}): {message or exc.reason}",
                status=status,
                reason=reason,
                op=op,
            )
        return KubeRequestError(
            f"the Kubernetes API refused to {op} ({status} {reason}): {message}",
            status=status,
            reason=reason,
            op=op,
        )
    return KubeUnavailable(
        f"the Kubernetes API could not {op}: {type(exc).__name__}: {exc}", status=0, reason="", op=op
    )


# ---------------------------------------------------------------------------
# tuning (plugin_config.kubernetes)
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Tuning:
    """Knobs of the Kubernetes integration, from the agent settings'
    ``plugin_config.kubernetes`` section (docs/deploy.md lists them)."""

    #: namespace of the eni-config and terway-config ConfigMaps (the agent's own).
    namespace: str = ""
    #: name of the base ConfigMap (keys ``eni_conf`` and ``10-terway.conf``).
    eni_config: str = "eni-config"
    #: read timeout of one request, seconds.
    request_timeout: float = 30.0
    #: connect timeout, seconds.
    connect_timeout: float = 10.0
    #: server-side duration of one watch request, seconds; the watch is then resumed.
    watch_timeout: int = 300
    #: minimum time between two patches of the node's annotations/resources (a patch needs a
    #: moment to come back through the watch before the cache shows it).
    node_status_interval: float = 5.0
    #: how often the IPAM's insufficient-IP state is polled (no cloud call).
    ipam_poll_interval: float = 2.0
    #: the SufficientIP condition is re-posted at least this often (heartbeat), seconds.
    condition_heartbeat: float = 300.0
    #: worker threads for requests (watches have their own).
    threads: int = 4
    #: how long to wait at start for this node's Node object to exist, seconds.
    start_timeout: float = 60.0
    #: ask the API (SelfSubjectAccessReview) at start whether every permission is granted.
    check_permissions: bool = True
    #: pending events beyond this are dropped (counted in terway_k8s_events_dropped_total).
    event_queue: int = 1000
    #: in-cluster: the service-account token file is re-read this often (the kubelet rotates it).
    token_refresh_interval: float = 60.0

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None) -> Tuning:
        """Validate ``plugin_config.kubernetes``; unknown keys are errors (a typo would be silent)."""
        data = dict(data or {})
        known = {f.name: f for f in fields(cls)}
        kw: dict[str, Any] = {}
        for key, value in data.items():
            name = f"plugin_config.kubernetes.{key}"
            f = known.get(key)
            if f is None:
                raise ConfigError(name, value, "one of " + ", ".join(sorted(known)))
            default = f.default
            if isinstance(default, bool):
                if not isinstance(value, bool):
                    raise ConfigError(name, value, "true or false")
            elif isinstance(default, int):
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise ConfigError(name, value, "an integer >= 1")
            elif isinstance(default, float):
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                    raise ConfigError(name, value, "a number of seconds > 0")
                value = float(value)
            elif not isinstance(value, str):
                raise ConfigError(name, value, "a string")
            kw[key] = value
        tuning = cls(**kw)
        if not tuning.namespace:
            ns = os.environ.get("POD_NAMESPACE", "") or "kube-system"
            tuning = cls(**{**kw, "namespace": ns})
        return tuning


# ---------------------------------------------------------------------------
# rate limiting
# ---------------------------------------------------------------------------


class TokenBucket:
    """``qps`` tokens per second, at most ``burst`` saved; :meth:`acquire` waits for one."""

    def __init__(self, qps: float, burst: int) -> None:
        self.qps = qps
        self.burst = burst
        self._tokens = float(burst)
        self._last = time.monotonic()

    def configure(self, qps: float, burst: int) -> None:
        self._refill()
        self.qps, self.burst = qps, burst
        self._tokens = min(self._tokens, float(burst))

    def _refill(self) -> None:
        now = time.monotonic()
        self._tokens = min(float(self.burst), self._tokens + (now - self._last) * self.qps)
        self._last = now

    async def acquire(self) -> None:
        self._refill()
        self._tokens -= 1.0
        if self._tokens < 0:
            wait = -self._tokens / self.qps
            _metrics.THROTTLED.inc()
            await trio.sleep(wait)


# ---------------------------------------------------------------------------
# the client
# ---------------------------------------------------------------------------


def load_api_client(
    kubeconfig: str,
    *,
    pool_size: int = 16,
    serviceaccount_dir: str = "",
    token_refresh_interval: float = 60.0,
) -> Any:
    """A ``kubernetes.client.ApiClient`` from ``kubeconfig`` or, if empty, the pod's
    in-cluster service account: ``KUBERNETES_SERVICE_HOST``/``PORT`` and the ``token``
    and ``ca.crt`` in ``serviceaccount_dir`` (default :data:`SA_DIR`).  The token file is
    re-read every ``token_refresh_interval`` seconds (the kubelet rotates it)."""
    from kubernetes import client, config

    conf = client.Configuration()
    if kubeconfig:
        from kubernetes.config.config_exception import ConfigException

        if not os.path.exists(kubeconfig):
            raise ConfigError("kubeconfig", kubeconfig, "an existing kubeconfig file")
        try:
            config.load_kube_config(config_file=kubeconfig, client_configuration=conf)
        except (ConfigException, OSError, ValueError, TypeError) as exc:
            raise ConfigError("kubeconfig", kubeconfig, f"a valid kubeconfig file ({exc})") from None
    else:
        _load_incluster(conf, serviceaccount_dir or SA_DIR, token_refresh_interval)
    conf.connection_pool_maxsize = pool_size
    conf.retries = 0
    api = client.ApiClient(conf)
    api.user_agent = USER_AGENT
    return api


_INCLUSTER_HINT = (
    "kubeconfig is empty, so terway-agent authenticates as the pod's service account; "
    "mount its token (automountServiceAccountToken), point settings kube_serviceaccount_dir at "
    "the directory holding token and ca.crt, or set kubeconfig"
)


def _load_incluster(conf: Any, sa_dir: str, refresh: float) -> None:
    from kubernetes.config.config_exception import ConfigException
    from kubernetes.config.incluster_config import (
        SERVICE_HOST_ENV_NAME,
        SERVICE_PORT_ENV_NAME,
        InClusterConfigLoader,
    )

    host = os.environ.get(SERVICE_HOST_ENV_NAME, "")
    port = os.environ.get(SERVICE_PORT_ENV_NAME, "")
    if not host or not port:
        raise ConfigError(
            "kubeconfig",
            "",
            f"a kubeconfig path, or running in a pod ({SERVICE_HOST_ENV_NAME}/{SERVICE_PORT_ENV_NAME} "
            f"are not set; {_INCLUSTER_HINT})",
        )
    token_path = os.path.join(sa_dir, "token")
    ca_path = os.path.join(sa_dir, "ca.crt")
    for what, path in (("service-account token", token_path), ("service-account CA certificate", ca_path)):
        problem = _unreadable(path)
        if problem:
            raise ConfigError(
                "kube_serviceaccount_dir",
                path,
                f"a readable {what}",
                message=f"the in-cluster {what} {path} {problem} ({_INCLUSTER_HINT})",
            )
    # The client's own refresh re-reads every minute, fixed; ours has a configurable
    # period, keeps the last good token if a read fails and logs a rotation.
    loader = InClusterConfigLoader(token_filename=token_path, cert_filename=ca_path, try_refresh_token=False)
    token = TokenFile(token_path, refresh)
    try:
        loader.load_and_set(conf)
        token.refresh(conf, force=True)
    except (ConfigException, OSError) as exc:
        raise ConfigError(
            "kube_serviceaccount_dir", sa_dir, f"a service-account directory ({exc}; {_INCLUSTER_HINT})"
        ) from None
    conf.refresh_api_key_hook = token.refresh
    log.info("k8s.client.incluster", host=conf.host, path=token_path, ca=ca_path)


def _unreadable(path: str) -> str:
    """Why ``path`` cannot serve as a credential file, or "" if it can."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return "does not exist"
    except IsADirectoryError:
        return "is a directory"
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    return "" if data.strip() else "is empty"


class TokenFile:
    """A bearer token read from a file, re-read at most every ``interval`` seconds.

    Installed as the client configuration's ``refresh_api_key_hook``, which the
    kubernetes client calls (in the request's thread) before every request. A read
    that fails keeps the last token: it may still be valid, and the API answers 401
    if it is not.
    """

    def __init__(self, path: str, interval: float) -> None:
        self.path = path
        self.interval = interval
        self.token = ""
        self._next = 0.0
        self._lock = threading.Lock()

    def refresh(self, conf: Any, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now < self._next:
            return
        with self._lock:
            if not force and now < self._next:
                return
            self._next = now + self.interval
            try:
                with open(self.path) as f:
                    token = f.read().strip()
            except OSError as exc:
                if force:
                    raise
                log.warning("k8s.token.read_failed", path=self.path, error=str(exc), keeping="the last token")
                return
            if not token:
                if force:
                    raise OSError(f"{self.path} is empty")
                log.warning(
                    "k8s.token.read_failed", path=self.path, error="empty file", keeping="the last token"
                )
                return
            if token != self.token:
                if self.token:
                    log.info("k8s.token.rotated", path=self.path)
                self.token = token
            conf.api_key["BearerToken"] = "Bearer " + token
            conf.api_key_prefix.pop("BearerToken", None)


class Kube:
    """Calls into the API from trio: rate limited, in threads, with timeouts, JSON in and out."""

    def __init__(self, api_client: Any, tuning: Tuning, *, qps: float = 20.0, burst: int = 30) -> None:
        from kubernetes import client

        self.api_client = api_client
        self.tuning = tuning
        self.core = client.CoreV1Api(api_client)
        self.authz = client.AuthorizationV1Api(api_client)
        self.bucket = TokenBucket(qps, burst)
        self._limiter = trio.CapacityLimiter(tuning.threads)
        self._watch_limiter = trio.CapacityLimiter(16)
        self.timeout = (tuning.connect_timeout, tuning.request_timeout)

    def close(self) -> None:
        try:
            self.api_client.close()
        except Exception as exc:  # closing must not mask the real outcome
            log.warning("k8s.client.close_failed", error=repr(exc))

    async def call(
        self, op: str, fn: Callable[..., Any], *args: Any, not_found: Any = KubeRequestError, **kw: Any
    ) -> Any:
        """Run ``fn(*args, **kw)`` and return the decoded JSON body.

        ``op`` names the request for errors and metrics ("list pods"). A 404 raises
        unless ``not_found`` is given, which is then returned instead.
        """
        await self.bucket.acquire()
        started = time.perf_counter()
        timeout = self.timeout

        def run() -> Any:
            resp = fn(*args, _preload_content=False, _request_timeout=timeout, **kw)
            try:
                data = resp.data
            finally:
                resp.release_conn()
            return json.loads(data) if data else None

        # A read may be abandoned on cancellation (shutdown stays prompt); a
        # write is not: it finishes, bounded by the request timeout.
        read_only = op.split(" ", 1)[0] in ("get", "list") or op.startswith("create selfsubjectaccessreviews")
        try:
            result = await trio.to_thread.run_sync(run, limiter=self._limiter, abandon_on_cancel=read_only)
        except Exception as exc:
            err = translate(exc, op)
            if err.status == 404 and not_found is not KubeRequestError:
                _metrics.REQUESTS.labels(op, "404").inc()
                return not_found
            _metrics.REQUESTS.labels(op, str(err.status or "error")).inc()
            raise err from None
        finally:
            _metrics.LATENCY.labels(op).observe(time.perf_counter() - started)
        _metrics.REQUESTS.labels(op, "ok").inc()
        return result

    async def open_stream(self, op: str, fn: Callable[..., Any], **kw: Any) -> _Stream:
        """Start a watch request; returns a :class:`_Stream` of its event lines."""
        await self.bucket.acquire()
        read_timeout = float(kw.get("timeout_seconds") or self.tuning.request_timeout) + 30.0
        call = partial(
            fn, watch=True, _preload_content=False, _request_timeout=(self.timeout[0], read_timeout), **kw
        )
        try:
            resp = await trio.to_thread.run_sync(call, limiter=self._limiter, abandon_on_cancel=True)
        except Exception as exc:
            err = translate(exc, op)
            _metrics.REQUESTS.labels(op, str(err.status or "error")).inc()
            raise err from None
        _metrics.REQUESTS.labels(op, "ok").inc()
        return _Stream(resp, op, self._watch_limiter)


class _Stream:
    """The lines of a streaming (watch) response, read one at a time in a thread.

    :meth:`close` shuts the socket down, which ends a read blocked in another
    thread at once (the same technique ``kubernetes.watch.Watch.stop`` uses).
    """

    def __init__(self, resp: Any, op: str, limiter: trio.CapacityLimiter) -> None:
        self._resp = resp
        self._op = op
        self._limiter = limiter
        self._chunks = resp.stream(amt=None, decode_content=False)
        self._buffer = bytearray()
        self._closed = False
        self._reading = False

    def _next_line(self) -> bytes | None:
        while True:
            nl = self._buffer.find(b"\n")
            if nl >= 0:
                line = bytes(self._buffer[:nl])
                del self._buffer[: nl + 1]
                if line.strip():
                    return line
                continue
            try:
                chunk = next(self._chunks)
            except StopIteration:
                return None
            self._buffer.extend(chunk if isinstance(chunk, bytes) else str(chunk).encode())

    async def next_event(self) -> dict[str, Any] | None:
        """The next watch event (``{"type", "object"}``), or None at the end of the stream."""
        self._reading = True
        try:
            line = await trio.to_thread.run_sync(
                self._next_line, limiter=self._limiter, abandon_on_cancel=True
            )
            self._reading = False
        except Exception as exc:
            self._reading = False
            if self._closed:
                return None
            from urllib3.exceptions import ProtocolError, ReadTimeoutError

            if isinstance(exc, ReadTimeoutError):
                return None  # quiet for longer than the read timeout: resume the watch
            if isinstance(exc, ProtocolError | OSError):
                raise KubeUnavailable(f"{self._op}: the watch stream broke: {exc}", status=0) from None
            raise translate(exc, self._op) from None
        if line is None:
            return None
        try:
            event = json.loads(line)
        except ValueError:
            raise KubeUnavailable(f"{self._op}: undecodable watch event {line[:80]!r}") from None
        if not isinstance(event, dict) or not isinstance(event.get("object"), dict):
            raise KubeUnavailable(f"{self._op}: malformed watch event {line[:80]!r}")
        return event

    def close(self) -> None:
        """Stop the stream; safe while another thread is blocked reading it."""
        if self._closed:
            return
        self._closed = True
        sock = getattr(getattr(self._resp, "connection", None), "sock", None)
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if not self._reading:  # no thread is inside the response: close it for real
            try:
                self._resp.close()
            except Exception as exc:  # noqa: BLE001 - the connection is being torn down anyway
                log.debug("k8s.watch.close_failed", op=self._op, error=repr(exc))
