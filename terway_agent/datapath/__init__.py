"""The datapath library: describe the kernel state as data, then converge to it.

Mode plugins build a :class:`Plan` of frozen objects (:mod:`terway_agent.datapath.plan`)
and hand it to the executor::

    from terway_agent import datapath as dp

    plan = dp.Plan((
        dp.Veth(name="cali1234567890a", peer_name="eth0", peer_netns=pod_netns, mac=host_mac),
        dp.LinkState(name="cali1234567890a"),
        dp.LinkState(name="eth0", netns=pod_netns),
        dp.Address(dev="eth0", address="10.0.0.5/32", netns=pod_netns),
        dp.Neighbour(dev="eth0", ip="169.254.1.1", lladdr=host_mac, netns=pod_netns),
        dp.Route(dst="default", gateway="169.254.1.1", dev="eth0", onlink=True, netns=pod_netns),
        dp.Route(dst="10.0.0.5/32", dev="cali1234567890a"),
        dp.Rule(priority=512, dst="10.0.0.5/32", table=dp.MAIN_TABLE),
        dp.Rule(priority=2048, src="10.0.0.5/32", table=1003),
    ))
    report = await dp.apply_async(plan, limiter=limiter)   # report.created / changed / unchanged
    problems = dp.check(plan)                              # [] when the kernel holds the plan
    dp.remove(plan)                                        # idempotent: gone already = success

* :func:`apply` observes the kernel, computes the difference and changes only
  that: applying twice changes nothing.  It returns when the result is usable
  (links it brought up operational, IPv6 addresses it added out of DAD).
* :func:`check` reports :class:`Problem` s (missing / different) without changing anything.
* :func:`remove` is idempotent; :func:`prune` removes what an older plan had
  and a newer one does not.
* The sync functions block; call them via the ``*_async`` wrappers (a trio
  worker thread under a ``trio.CapacityLimiter``).  Pod namespaces are entered
  with setns(2) in the worker thread -- no fork per namespace.

Errors: :class:`~terway_agent.errors.NotFound` (a namespace, device or MAC is
missing), :class:`~terway_agent.errors.DatapathError` (the kernel refused;
details carry ``device``, ``netns``, ``errno``),
:class:`~terway_agent.errors.InvalidInput` (bad plan data).

See docs/datapath.md.
"""

from terway_agent.datapath._executor import (
    DEFAULT_LINK_TIMEOUT,
    LinkInfo,
    apply,
    apply_async,
    check,
    check_async,
    find_link_by_mac,
    find_link_by_mac_async,
    get_link,
    prune,
    prune_async,
    remove,
    remove_async,
)
from terway_agent.datapath.plan import (
    MAIN_TABLE,
    Address,
    ApplyReport,
    BpfFilter,
    Clsact,
    LinkState,
    MovedLink,
    Neighbour,
    Plan,
    PlanObject,
    Problem,
    RemoveReport,
    Route,
    Rule,
    Sysctl,
    Tbf,
    Veth,
    stable_mac,
    veth_name,
)

__all__ = [
    "DEFAULT_LINK_TIMEOUT",
    "MAIN_TABLE",
    "Address",
    "ApplyReport",
    "BpfFilter",
    "Clsact",
    "LinkInfo",
    "LinkState",
    "MovedLink",
    "Neighbour",
    "Plan",
    "PlanObject",
    "Problem",
    "RemoveReport",
    "Route",
    "Rule",
    "Sysctl",
    "Tbf",
    "Veth",
    "apply",
    "apply_async",
    "check",
    "check_async",
    "find_link_by_mac",
    "find_link_by_mac_async",
    "get_link",
    "prune",
    "prune_async",
    "remove",
    "remove_async",
    "stable_mac",
    "veth_name",
]
