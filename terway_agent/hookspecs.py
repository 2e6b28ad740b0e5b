"""Hook specifications: the whole contract between the core and plugins.

A *mode* plugin (entry-point group ``terway_agent.modes``) implements the
describe hook and the mode hooks; exactly one mode is loaded per agent, chosen
by the node's labels.  An *extension* plugin (group ``terway_agent.extensions``)
may add behaviour through the shared hooks (policy, lifecycle, gc, repair,
status, config validation) in any mode; extensions are all loaded.

How the hooks meet trio
-----------------------
pluggy calls hook implementations synchronously.  Hooks that do I/O are
therefore **async implementations**: pluggy's call returns their coroutines and
the core awaits each one explicitly in the calling task (see
``terway_agent._hosting.Hooks``).  Consequences, enforced at registration:

* a hook marked *async* below must be implemented with ``async def``; a sync
  hook must not be;
* no async hook is ``firstresult`` (a coroutine is never ``None``); for the
  *mode hooks* exactly one implementation exists (the selected mode's) and its
  result is the answer;
* an implementation that blocks (netlink, the cloud SDK, the kube client) must
  go through ``ctx.run_sync`` / ``trio.to_thread.run_sync`` with a limiter --
  never block the event loop;
* cancellation: the core cancels ``allocate``/``setup_link``/``policy`` when
  the agent shuts down and the drain deadline passes (a CNI executable that
  goes away does not cancel its request: the runtime follows up with DEL,
  answered try-again until the ADD finished); ``release``, ``teardown_link``
  and ``stop`` run **shielded** with a deadline and must finish what they
  started.

Every hook is documented in docs/hooks.md (a test keeps that complete).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:  # pragma: no cover
    import trio

    from terway_agent.context import ModeContext
    from terway_agent.types import (
        Allocation,
        Attachment,
        LinkResult,
        ModeInfo,
        PodRef,
        PodRequest,
        RepairReport,
        Status,
    )

PROJECT = "terway"

#: Marker for hook specifications (used by the core only).
hookspec = pluggy.HookspecMarker(PROJECT)
#: Marker plugins import (via ``terway_agent.plugin``) to implement hooks.
hookimpl = pluggy.HookimplMarker(PROJECT)

#: Hooks whose implementations must be ``async def``.
ASYNC_HOOKS: set[str] = set()
#: Hooks only the selected mode may implement; exactly one implementation.
MODE_HOOKS: set[str] = set()


def _async(fn: Any) -> Any:
    ASYNC_HOOKS.add(fn.__name__)
    return fn


def _mode_only(fn: Any) -> Any:
    MODE_HOOKS.add(fn.__name__)
    return fn


# ---------------------------------------------------------------------------
# Describe
# ---------------------------------------------------------------------------


@_mode_only
@hookspec
def terway_mode_info() -> ModeInfo:
    """Describe the mode: name, version, capabilities and pod-limit formula.

    Called synchronously, once when the plugin is loaded and by
    ``terway-agent plugins``; must be cheap and free of I/O.

    :return: a :class:`terway_agent.types.ModeInfo`.  Never ``None``.
    """


@hookspec
def terway_validate_config(config: Any, mode: str) -> Sequence[str] | None:
    """Check the agent configuration for this mode, before anything starts and on every reload.

    Called synchronously in the main task.  Must not do I/O.

    :param config: the merged :class:`terway_agent.config.AgentConfig`.
    :param mode: the selected mode's name.
    :return: a list of problems, each a sentence naming the field, the value
        and what was expected; ``None`` or empty means no objection.  Any
        problem stops the agent at start and rejects a reload.
    """


# ---------------------------------------------------------------------------
# Lifecycle
# ---------------------------------------------------------------------------


@_async
@hookspec
async def terway_start(ctx: ModeContext, nursery: trio.Nursery) -> None:
    """Start the plugin: prepare the node and start background tasks.

    Awaited once, in the agent's main task, after the store, the cloud client
    and the IPAM are ready and **before** the CNI socket serves.  Start
    long-running tasks with ``nursery.start(...)``/``start_soon``: they live as
    long as the agent and are cancelled at shutdown (after ``terway_stop``).
    An exception stops the agent.

    :param ctx: the plugin's services (see :class:`terway_agent.context.ModeContext`).
    :param nursery: the agent's service nursery.
    :return: ``None``.
    """


@_async
@hookspec
async def terway_stop(ctx: ModeContext) -> None:
    """Stop the plugin: flush and release what ``terway_start`` acquired.

    Awaited once at shutdown after in-flight CNI requests drained, **shielded**
    with a deadline (10 s): finish quickly, do not start new work.  Pods keep
    their network: do not tear down datapaths here.

    :return: ``None``.
    """


# ---------------------------------------------------------------------------
# Mode hooks: exactly one implementation (the selected mode)
# ---------------------------------------------------------------------------


@_mode_only
@_async
@hookspec
async def terway_allocate(ctx: ModeContext, request: PodRequest) -> Allocation:
    """Reserve network resources (addresses, an ENI) for a new attachment.

    Awaited in the task serving a CNI ADD, after the core checked that the
    attachment is not already known.  May be cancelled (shutdown after the
    drain deadline): leave nothing half-reserved, or make it reclaimable by
    ``terway_release``.  Must be safe to call again for the same attachment
    after a crash (use the attachment as the owner key).

    :param request: the parsed ADD request.
    :return: the :class:`terway_agent.types.Allocation`, which the core commits
        to its store before going on.  Never ``None``; raise
        :class:`terway_agent.errors.TemporaryError` when the pool is being
        refilled, :class:`terway_agent.errors.AllocationError` when it cannot be.
    """


@_mode_only
@_async
@hookspec
async def terway_release(ctx: ModeContext, request: PodRequest, allocation: Allocation | None) -> None:
    """Give back what ``terway_allocate`` reserved.

    Awaited for DEL, GC, a failed ADD, and when the agent finds an allocation
    whose pod is gone.  Runs **shielded** (30 s deadline).  Idempotent:
    releasing something already released is success.  ``request`` may be a
    reconstruction from the store (``netns`` empty).

    :param allocation: the stored allocation, or ``None`` when the agent died
        while ``terway_allocate`` ran: then release whatever this attachment
        (``request.attachment``) owns.
    :return: ``None``.
    """


@_mode_only
@_async
@hookspec
async def terway_setup_link(ctx: ModeContext, request: PodRequest, allocation: Allocation) -> LinkResult:
    """Build the pod's datapath: interfaces, addresses, routes, rules, tc.

    Awaited in the task serving ADD after the allocation is committed.
    Compute the desired state as data, observe the kernel, change only the
    difference: calling it twice changes nothing.  On failure, undo what this
    call made before raising (the core then calls ``terway_release``).

    :return: the :class:`terway_agent.types.LinkResult`; its ``state`` is stored
        and handed back to teardown/check/gc/repair.  Never ``None``.
    """


@_mode_only
@_async
@hookspec
async def terway_teardown_link(
    ctx: ModeContext, request: PodRequest, allocation: Allocation, link: LinkResult | None
) -> None:
    """Remove exactly what ``terway_setup_link`` made.

    Awaited for DEL, GC and failed ADDs, **shielded** (30 s deadline), before
    ``terway_release``.  Idempotent; succeeds when the objects or the pod's
    netns are already gone.  ``link`` is ``None`` when the agent died before
    the link was recorded: then remove whatever can be derived from
    ``request`` and ``allocation``.

    :return: ``None``.
    """


@_mode_only
@_async
@hookspec
async def terway_check_link(
    ctx: ModeContext, request: PodRequest, allocation: Allocation, link: LinkResult
) -> Sequence[str]:
    """Verify the datapath of a live attachment (CNI CHECK, ``terway-agent pool``).

    Awaited in the task serving CHECK.  Read only.

    :return: a list of problems, each naming the missing or wrong object;
        empty when everything is in place.  Never ``None``.
    """


# ---------------------------------------------------------------------------
# Shared hooks: every loaded plugin's implementation is awaited in turn
# ---------------------------------------------------------------------------


@_async
@hookspec
async def terway_policy(
    ctx: ModeContext, pod: PodRef, allocation: Allocation, policies: Sequence[Mapping[str, Any]]
) -> None:
    """Apply the network policies that select a pod.

    Awaited after ``terway_setup_link`` on ADD, with the pod's current
    policies (possibly empty).  (No policy controller re-applies them on
    change yet; the core raises ``FeatureNotSupported`` itself when policies
    are non-empty and no loaded plugin implements this hook.)  Idempotent.  A mode that cannot enforce non-empty ``policies``
    must raise :class:`terway_agent.errors.FeatureNotSupported` -- never ignore
    them silently.

    :param policies: NetworkPolicy-like mappings (``spec`` of the Kubernetes object).
    :return: ``None``.
    """


@_async
@hookspec
async def terway_gc(ctx: ModeContext, live: Sequence[Attachment]) -> Sequence[str] | None:
    """Remove datapath leftovers that belong to no live attachment.

    Awaited by the CNI GC verb (after the core released the allocations of
    attachments missing from ``cni.dev/valid-attachments``) and by the periodic
    GC pass.  Keep going on errors.

    :param live: the attachments that remain.
    :return: errors met (sentences), ``None`` or empty for none.
    """


@_async
@hookspec
async def terway_repair(ctx: ModeContext, live: Sequence[Attachment]) -> RepairReport | None:
    """Re-create missing datapath objects of live attachments.

    Awaited at agent start (after ``terway_start``) and periodically (rules or
    routes flushed by another tool, a reboot).  Never removes anything a live
    attachment needs.

    :return: a :class:`terway_agent.types.RepairReport`, or ``None`` if this
        plugin has nothing to repair.
    """


@_async
@hookspec
async def terway_status(ctx: ModeContext) -> Status | None:
    """Say whether this node can serve ADD now (CNI STATUS).

    Awaited by STATUS and the readiness endpoint; must be fast (no cloud call).

    :return: a :class:`terway_agent.types.Status`; ``None`` means no opinion.
        The worst answer of all plugins wins.
    """
