"""Serving CNI requests: parse, lock per pod, call the mode's hooks, persist, answer.

The order of an ADD (docs/architecture.md, "Life of an ADD"):

1. parse and validate the request (code 4/7 on bad input);
2. take the pod's slot -- a second concurrent request for the same pod is
   answered "try again" (code 11);
3. an attachment already ``ready`` in the same netns is answered from the
   store (a retried ADD); a half-made one is cleaned up first;
4. insert the attachment (``allocating``), ``terway_allocate``, commit the
   allocation (``allocated``), ``terway_setup_link``, ``terway_policy``, commit
   the link result (``ready``), answer.  Any failure undoes steps 4.. under a
   shield before the error is answered.

DEL replays the stored attachment (teardown, release, delete) and succeeds
when there is nothing to delete.  GC does the same for every stored
attachment of the network missing from ``cni.dev/valid-attachments``.
"""

from __future__ import annotations

import contextlib
import json
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import trio

from terway_agent import metrics
from terway_agent._hosting import PluginHost
from terway_agent.config import SUPPORTED_CNI_VERSIONS, parse_netconf
from terway_agent.context import ModeContext
from terway_agent.errors import InvalidInput, NotFound, PodBusy, TemporaryError, TerwayError
from terway_agent.log import bind_request, get_logger
from terway_agent.podspec import bandwidth_from
from terway_agent.protocol import CNI_VERBS, PROTOCOL_VERSION
from terway_agent.types import Allocation, Attachment, LinkResult, PodRef, PodRequest, Status

log = get_logger(__name__)

#: Deadline for cleanup that must finish (teardown + release), run shielded.
CLEANUP_DEADLINE = 30.0


@dataclass(frozen=True, slots=True)
class PodInfo:
    """What the agent knows about a pod beyond CNI_ARGS (from Kubernetes)."""

    annotations: Mapping[str, str]
    owner_kind: str = ""
    policies: Sequence[Mapping[str, Any]] = ()
    ignored: bool = False


PodLookup = Callable[[PodRef], Awaitable[PodInfo | None]]


class CNIError(TerwayError):
    """An error with an explicit CNI code (chosen at this edge only)."""

    def __init__(self, code: int, message: str, **details: Any) -> None:
        super().__init__(message, **details)
        self.cni_code = code


class CNIService:
    """Answers protocol messages.  One instance per agent.

    :param host: the loaded plugins.
    :param ctx: the context handed to hooks.
    :param pod_lookup: optional source of pod annotations/owner/policies.
    :param status_extra: optional extra STATUS source (e.g. IPAM inhibit state).
    """

    def __init__(
        self,
        host: PluginHost,
        ctx: ModeContext,
        *,
        pod_lookup: PodLookup | None = None,
        queries: Mapping[str, Callable[[dict[str, Any]], Awaitable[Any]]] | None = None,
    ) -> None:
        self.host = host
        self.ctx = ctx
        self.store = ctx.store
        self.pod_lookup = pod_lookup
        self.queries = dict(queries or {})
        self._busy: set[str] = set()
        # Whole-node passes (the plugins' leftover sweep, repair) run with no
        # per-pod operation in flight and none starting: see exclusive().
        self._gate = trio.Event()
        self._gate.set()
        self._exclusive_lock = trio.Lock()
        self._pod_ops = 0
        self._pod_ops_done = trio.Event()
        self._pod_ops_done.set()
        self.in_flight = 0
        self._idle = trio.Event()
        self._idle.set()
        self.draining = False
        #: called (in a worker thread) after each successful ADD
        self.on_attached: Callable[[], None] | None = None
        #: why the last repair pass failed as a whole (STATUS answers 51 while set); objects of
        #: single pods it could not restore are logged and counted, not a node-wide state
        self.repair_error: str = ""
        #: called in the serving task after each successful ADD, with the
        #: request, the allocation and the seconds it took; must not block
        #: (e.g. queue work for a background task).
        self.on_ready: list[Callable[[PodRequest, Allocation, float], None]] = []

    # -- entry point --------------------------------------------------------------

    async def handle(self, msg: Mapping[str, Any]) -> dict[str, Any]:
        """Answer one protocol message; never raises."""
        verb = msg.get("verb") if isinstance(msg, Mapping) else None
        started = time.perf_counter()
        label = str(verb) if verb in CNI_VERBS else "other"
        self.in_flight += 1
        self._idle = trio.Event() if self.in_flight == 1 else self._idle
        metrics.IN_FLIGHT.inc()
        code = 0
        try:
            if msg.get("v") != PROTOCOL_VERSION:
                raise CNIError(1, f"protocol version {msg.get('v')!r} is not supported; the agent speaks {PROTOCOL_VERSION}")
            if verb in CNI_VERBS:
                if self.draining and verb == "ADD":
                    raise TemporaryError("the agent is shutting down; try again later")
                result = await self._cni(str(verb), msg)
            elif isinstance(verb, str) and verb in self.queries:
                result = await self.queries[verb](dict(msg))
            else:
                raise CNIError(4, f"unknown verb {verb!r}: expected one of {', '.join(CNI_VERBS)}")
            return {"v": PROTOCOL_VERSION, "ok": True, "result": result}
        except TerwayError as exc:
            code = exc.cni_code
            return _error(code, exc.message, exc.details)
        except Exception as exc:  # answered, logged with traceback: never swallowed
            code = 100
            log.error("cni.internal_error", verb=verb, error=repr(exc), traceback=traceback.format_exc())
            return _error(100, f"internal error in the terway agent: {type(exc).__name__}: {exc}", {})
        finally:
            metrics.IN_FLIGHT.dec()
            metrics.RPC_LATENCY.labels(label, "ok" if code == 0 else str(code)).observe(time.perf_counter() - started)
            self.in_flight -= 1
            if self.in_flight == 0:
                self._idle.set()

    async def wait_idle(self) -> None:
        """Return once no request is being served."""
        while self.in_flight:
            await self._idle.wait()

    # -- CNI verbs ------------------------------------------------------------------

    async def _cni(self, verb: str, msg: Mapping[str, Any]) -> Any:
        env = msg.get("env")
        conf = msg.get("config")
        if not isinstance(env, Mapping) or not isinstance(conf, Mapping):
            raise CNIError(6, "malformed request: env and config must be JSON objects")
        if verb == "STATUS":
            return await self._status()
        if verb == "GC":
            return await self._gc(conf)
        request = await self._parse(verb, env, conf)
        slot = request.pod.key if request.pod.namespace else request.container_id
        with bind_request(verb=verb, pod=request.pod.key, container=request.container_id, ifname=request.ifname):
            await self._gate.wait()
            if slot in self._busy:
                raise PodBusy(f"pod {request.pod.key} is being processed by another request; try again later")
            self._busy.add(slot)
            self._pod_op_started()
            try:
                if verb == "ADD":
                    return await self._add(request)
                if verb == "DEL":
                    await self._del(request)
                    return None
                return await self._check(request)
            finally:
                self._busy.discard(slot)
                self._pod_op_ended()

    def _pod_op_started(self) -> None:
        self._pod_ops += 1
        if self._pod_ops == 1:
            self._pod_ops_done = trio.Event()

    def _pod_op_ended(self) -> None:
        self._pod_ops -= 1
        if self._pod_ops == 0:
            self._pod_ops_done.set()

    @asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        """Run a whole-node pass (leftover sweep, repair) with no ADD/DEL/CHECK in
        flight: new ones wait at the gate, running ones are waited for.  A pass that
        judges "no attachment owns this" from a snapshot can otherwise remove what
        an ADD made a moment after the snapshot."""
        async with self._exclusive_lock:
            self._gate = trio.Event()
            try:
                await self._pod_ops_done.wait()
                yield
            finally:
                self._gate.set()

    async def _parse(self, verb: str, env: Mapping[str, Any], conf: Mapping[str, Any]) -> PodRequest:
        cid = str(env.get("CNI_CONTAINERID", ""))
        ifname = str(env.get("CNI_IFNAME", ""))
        if not cid:
            raise CNIError(4, "CNI_CONTAINERID is not set")
        if not ifname:
            raise CNIError(4, "CNI_IFNAME is not set")
        args: dict[str, str] = {}
        for item in str(env.get("CNI_ARGS", "")).split(";"):
            if item:
                k, sep, v = item.partition("=")
                if not sep:
                    raise CNIError(4, f"CNI_ARGS: malformed item {item!r}, expected KEY=VALUE")
                args[k] = v
        version = conf.get("cniVersion")
        if version not in SUPPORTED_CNI_VERSIONS:
            raise CNIError(1, f"incompatible CNI version {version!r}: supported " + ", ".join(SUPPORTED_CNI_VERSIONS))
        try:
            parse_netconf(conf)
        except InvalidInput:
            if verb != "DEL":
                raise
            # DEL must work with whatever config it gets: the stored request is replayed.
        netconf_dict = dict(conf)
        netconf_dict.pop("prevResult", None)
        runtime_config = conf.get("runtimeConfig") or {}
        if not isinstance(runtime_config, Mapping):
            raise InvalidInput("runtimeConfig", runtime_config, "a JSON object")
        pod = PodRef(
            namespace=args.get("K8S_POD_NAMESPACE", ""),
            name=args.get("K8S_POD_NAME", "") or cid,
            uid=args.get("K8S_POD_UID", ""),
        )
        annotations: Mapping[str, str] = {}
        owner_kind = ""
        if verb == "ADD" and self.pod_lookup is not None and pod.namespace:
            info = await self.pod_lookup(pod)
            if info is not None:
                annotations, owner_kind = info.annotations, info.owner_kind
        try:
            bandwidth = bandwidth_from(runtime_config, annotations) if verb == "ADD" else None
        except InvalidInput as exc:
            if pod.namespace:
                self.ctx.events.record(f"Pod/{pod.key}", "Pod", "AllocIPFailed", f"Alloc IP failed: {exc}", warning=True)
            raise
        prev = conf.get("prevResult")
        kw: dict[str, Any] = {}
        if bandwidth is not None:
            kw["bandwidth"] = bandwidth
        return PodRequest(
            verb=verb,
            container_id=cid,
            ifname=ifname,
            netns=str(env.get("CNI_NETNS", "") or ""),
            pod=pod,
            network=str(conf.get("name", "")),
            cni_version=str(version),
            netconf=netconf_dict,
            runtime_config=dict(runtime_config),
            cni_args=args,
            annotations=dict(annotations),
            owner_kind=owner_kind,
            prev_result=prev if isinstance(prev, Mapping) else None,
            **kw,
        )

    async def _add(self, request: PodRequest) -> dict[str, Any]:
        started = time.perf_counter()
        existing = await self.store.acall(self.store.get_attachment, request.container_id, request.ifname)
        if existing is not None:
            if existing.state == "ready" and existing.netns == request.netns and existing.link and existing.allocation:
                log.info("cni.add.replayed")
                return cni_result(existing.link, request.cni_version, request.prev_result)
            log.warning("cni.add.cleanup_partial", state=existing.state)
            await self._remove(existing)  # with its own stored request: the netns may differ
        await self.store.acall(
            lambda: self.store.begin_attachment(
                request=_request_record(request),
                network=request.network,
                pod=request.pod,
                netns=request.netns,
                mode=self.ctx.mode,
            )
        )
        allocation: Allocation | None = None
        link: LinkResult | None = None
        try:
            log.debug("cni.add.allocate.started")
            allocation = await self.host.allocate(self.ctx, request)
            await self.store.acall(self.store.set_allocation, request.container_id, request.ifname, allocation)
            log.debug("cni.add.allocate.done", ips=[a.address for a in allocation.addresses])
            link = await self.host.setup_link(self.ctx, request, allocation)
            policies: Sequence[Mapping[str, Any]] = ()
            if self.pod_lookup is not None and request.pod.namespace:
                info = await self.pod_lookup(request.pod)
                policies = info.policies if info is not None else ()
            await self.host.policy(self.ctx, request.pod, allocation, policies)
            await self.store.acall(self.store.set_link, request.container_id, request.ifname, link)
            if self.on_attached is not None:
                await self.store.acall(self.on_attached)
        except BaseException as exc:
            log.warning("cni.add.failed", error=repr(exc), allocated=allocation is not None)
            if request.pod.namespace and isinstance(exc, Exception):
                self.ctx.events.record(
                    f"Pod/{request.pod.key}", "Pod", "AllocIPFailed", f"Alloc IP failed: {exc}", warning=True
                )
            with trio.move_on_after(CLEANUP_DEADLINE, shield=True) as scope:
                try:
                    if allocation is not None:
                        await self.host.teardown_link(self.ctx, request, allocation, link)
                    await self.host.release(self.ctx, request, allocation)
                    await self.store.acall(self.store.delete_attachment, request.container_id, request.ifname)
                except Exception as cleanup_exc:
                    # The row stays (state allocating/allocated): DEL or GC finishes it.
                    log.error("cni.add.rollback_failed", error=repr(cleanup_exc))
            if scope.cancelled_caught:
                log.error("cni.add.rollback_timeout", deadline=CLEANUP_DEADLINE)
            raise
        elapsed = time.perf_counter() - started
        log.info("cni.add.done", ips=[a.address for a in allocation.addresses], ms=round(elapsed * 1000, 1))
        if request.pod.namespace:
            self.ctx.events.record(
                f"Pod/{request.pod.key}", "Pod", "AllocIPSucceed",
                f"Alloc IP {','.join(a.address for a in allocation.addresses)} took {elapsed:.3f}s",
            )
        for callback in self.on_ready:
            callback(request, allocation, elapsed)
        return cni_result(link, request.cni_version, request.prev_result)

    async def _del(self, request: PodRequest) -> None:
        att = await self.store.acall(self.store.get_attachment, request.container_id, request.ifname)
        if att is None:
            log.info("cni.del.nothing")
            return
        # A DEL without K8S_POD_* arguments still logs the pod it removes (from the store).
        with bind_request(pod=att.pod.key) if not request.pod.namespace else contextlib.nullcontext():
            await self._remove(att, request)
            log.info("cni.del.done")

    async def _remove(self, att: Attachment, request: PodRequest | None = None) -> None:
        """Tear down and release a stored attachment; shielded; raises if it could not."""
        req = _stored_request(att, request)
        with trio.move_on_after(CLEANUP_DEADLINE, shield=True) as scope:
            if att.state != "releasing":
                await self.store.acall(self.store.set_state, att.container_id, att.ifname, "releasing")
            if att.allocation is not None:
                await self.host.teardown_link(self.ctx, req, att.allocation, att.link)
            await self.host.release(self.ctx, req, att.allocation)
            await self.store.acall(self.store.delete_attachment, att.container_id, att.ifname)
        if scope.cancelled_caught:
            raise TemporaryError(
                f"removing attachment {att.container_id}/{att.ifname} did not finish within {CLEANUP_DEADLINE:.0f}s; "
                "it will be retried"
            )

    async def _check(self, request: PodRequest) -> None:
        att = await self.store.acall(self.store.get_attachment, request.container_id, request.ifname)
        if att is None:
            raise NotFound(f"no attachment {request.container_id}/{request.ifname} is known to the agent")
        if att.state != "ready" or att.link is None or att.allocation is None:
            raise CNIError(102, f"attachment {request.container_id}/{request.ifname} is incomplete (state {att.state})")
        problems = []
        if request.prev_result is not None:
            problems.extend(_compare_prev_result(att.allocation, request.prev_result, request.ifname))
        problems.extend(await self.host.check_link(self.ctx, request, att.allocation, att.link))
        if problems:
            raise CNIError(102, f"CHECK found {len(problems)} problem(s): " + "; ".join(problems), problems=problems)
        return None

    async def node_status(self) -> Status:
        """The plugins' answer, made 51 while the repair pass itself fails: the agent
        cannot keep existing pods' datapaths in place.  (One pod whose objects cannot
        be restored -- its ENI or netns gone -- does not make the node unavailable:
        the runtime would mark the node NotReady and evict every pod.)"""
        st = await self.host.status(self.ctx)
        if self.repair_error:
            why = f"existing pods may have limited connectivity: {self.repair_error}"
            return Status(51, f"{st.message}; {why}" if st.message else why)
        return st

    async def _status(self) -> None:
        st = await self.node_status()
        if not st.ok:
            raise CNIError(st.code, st.message or "the node cannot serve ADD now")
        return None

    async def _gc(self, conf: Mapping[str, Any]) -> None:
        valid_raw = conf.get("cni.dev/valid-attachments", conf.get("cni.dev/attachments"))
        if valid_raw is None:
            # Without the list every attachment would look stale: refuse rather than delete all pods.
            raise InvalidInput(
                "cni.dev/valid-attachments", None,
                "the list of still-valid attachments (an empty list means none is valid); GC removes nothing without it",
            )
        if not isinstance(valid_raw, list):
            raise InvalidInput("cni.dev/valid-attachments", valid_raw, "a list of {containerID, ifname} objects")
        valid: set[tuple[str, str]] = set()
        for i, item in enumerate(valid_raw):
            if not isinstance(item, Mapping) or not isinstance(item.get("containerID"), str) or not isinstance(
                item.get("ifname"), str
            ):
                raise InvalidInput(f"cni.dev/valid-attachments[{i}]", item, 'an object {"containerID": ..., "ifname": ...}')
            valid.add((item["containerID"], item["ifname"]))
        network = str(conf.get("name", ""))
        async def not_listed(att: Attachment) -> bool:
            return att.key not in valid

        errors, removed = await self.gc(network, not_listed, trigger="cni")
        if errors:
            raise CNIError(102, f"GC removed {removed} attachment(s) but met {len(errors)} error(s): " + "; ".join(errors),
                           errors=errors)
        return None

    async def gc(
        self,
        network: str | None,
        is_dead: Callable[[Attachment], Awaitable[bool]],
        *,
        trigger: str,
    ) -> tuple[list[str], int]:
        """Remove the stored attachments (of ``network``; all networks if None) that
        ``is_dead``, then let plugins remove datapath leftovers.  Keeps going on errors.

        Each candidate is re-read and judged again under its pod's slot, so an
        attachment made or finished after the snapshot is never removed on the
        strength of an older copy; the plugins' sweep runs in :meth:`exclusive`.
        """
        errors: list[str] = []
        removed = 0
        atts = await self.store.acall(lambda: self.store.attachments(network=network))
        for att in atts:
            if not await is_dead(att):
                continue
            slot = att.pod.key if att.pod.namespace else att.container_id
            if slot in self._busy:
                continue
            self._busy.add(slot)
            self._pod_op_started()
            try:
                fresh = await self.store.acall(self.store.get_attachment, att.container_id, att.ifname)
                if fresh is None or not await is_dead(fresh):
                    continue
                with bind_request(verb="GC", pod=fresh.pod.key, container=fresh.container_id, ifname=fresh.ifname):
                    await self._remove(fresh)
                    removed += 1
                    metrics.GC_REMOVED.labels(trigger).inc()
                    log.info("gc.attachment.removed", trigger=trigger)
            except Exception as exc:
                errors.append(f"{att.container_id}/{att.ifname}: {exc}")
                log.warning("gc.attachment.failed", container=att.container_id, error=repr(exc))
            finally:
                self._busy.discard(slot)
                self._pod_op_ended()
        async with self.exclusive():
            live = await self.store.acall(self.store.attachments)
            errors.extend(await self.host.gc(self.ctx, live))
        return errors, removed

    async def repair(self) -> list[Any]:
        """The plugins' repair pass over the live attachments, in :meth:`exclusive`
        (a DEL finishing mid-pass must not have its datapath re-created)."""
        async with self.exclusive():
            live = [a for a in await self.store.acall(self.store.attachments) if a.state == "ready"]
            return await self.host.repair(self.ctx, live)


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def _error(code: int, msg: str, details: Mapping[str, Any]) -> dict[str, Any]:
    err: dict[str, Any] = {"code": code, "msg": msg}
    if details:
        err["details"] = json.dumps(dict(details), default=str, sort_keys=True)
    return {"v": PROTOCOL_VERSION, "ok": False, "error": err}


def _request_record(req: PodRequest) -> dict[str, Any]:
    d = req.to_dict()
    d.pop("prev_result", None)
    return d


def _stored_request(att: Attachment, current: PodRequest | None) -> PodRequest:
    """The request to hand to teardown/release: the stored ADD request, with the
    current verb and netns when a live request is at hand."""
    stored = dict(att.request)
    try:
        base = PodRequest.from_dict(stored)
    except (KeyError, TypeError, ValueError):
        base = PodRequest(verb="DEL", container_id=att.container_id, ifname=att.ifname, netns=att.netns, pod=att.pod,
                          network=att.network)
    verb = current.verb if current is not None else "GC"
    netns = current.netns if current is not None and current.netns else base.netns
    from dataclasses import replace

    return replace(base, verb=verb, netns=netns)


def _compare_prev_result(allocation: Allocation, prev: Mapping[str, Any], ifname: str) -> list[str]:
    problems = []
    ips = prev.get("ips")
    if not isinstance(ips, list):
        return ["prevResult has no ips"]
    have = {str(i.get("address", "")).split("/")[0] for i in ips if isinstance(i, Mapping)}
    for a in allocation.addresses:
        if a.address not in have:
            problems.append(f"prevResult lacks the pod address {a.address}")
    return problems


def cni_result(link: LinkResult, version: str, prev: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The CNI result of ``link`` in ``version``'s format, appended to ``prev`` when chained."""
    new11 = version == "1.1.0"
    v040 = version == "0.4.0"
    interfaces = []
    ips = []
    routes = []
    base_index = 0
    dns: dict[str, Any] = {}
    if prev:
        interfaces = [dict(i) for i in prev.get("interfaces", []) if isinstance(i, Mapping)]
        ips = [dict(i) for i in prev.get("ips", []) if isinstance(i, Mapping)]
        routes = [dict(r) for r in prev.get("routes", []) if isinstance(r, Mapping)]
        dns = dict(prev.get("dns") or {})
        base_index = len(interfaces)
    for i in link.interfaces:
        d: dict[str, Any] = {"name": i.name}
        if i.mac:
            d["mac"] = i.mac
        if i.mtu and new11:
            d["mtu"] = i.mtu
        if i.sandbox:
            d["sandbox"] = i.sandbox
        interfaces.append(d)
    for ip in link.ips:
        d = {"address": ip.address}
        if ip.gateway:
            d["gateway"] = ip.gateway
        if ip.interface is not None:
            d["interface"] = ip.interface + base_index
        if v040:
            d["version"] = "6" if ":" in ip.address else "4"
        ips.append(d)
    for r in link.routes:
        d = {"dst": r.dst}
        if r.gw:
            d["gw"] = r.gw
        if new11:
            for k in ("mtu", "advmss", "priority", "table", "scope"):
                v = getattr(r, k)
                if v is not None:
                    d[k] = v
        routes.append(d)
    if link.dns:
        dns = dict(link.dns)
    out: dict[str, Any] = {"cniVersion": version, "interfaces": interfaces, "ips": ips}
    if routes:
        out["routes"] = routes
    out["dns"] = dns
    return out

