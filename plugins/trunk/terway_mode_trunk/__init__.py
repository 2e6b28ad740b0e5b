"""terway-agent mode `trunk`: trunk ENI, member ENIs per pod with VLAN tagging.

Registered so operators can see and select it; it does not serve pods yet
and says so (the trunk issue).
"""

from terway_agent.plugin import InstanceLimits, ModeInfo, hookimpl

__version__ = "0.1.0"


def _pod_limit(q: InstanceLimits) -> int:
    return q.trunk_member_pods


@hookimpl
def terway_mode_info() -> ModeInfo:
    return ModeInfo(
        name="trunk",
        version=__version__,
        summary="trunk ENI, member ENIs per pod with VLAN tagging",
        implemented=False,
        exclusivity="shared",
        capabilities=frozenset({"ipv4", "ipv6", "bandwidth", "trunk", "fixed_ip", "per_pod_vswitch", "per_pod_security_group", "ebpf"}),
        pod_limit_formula="EniTotalQuantity - EniQuantity member-ENI pods, plus the shared ENI pods",
        pod_limit=_pod_limit,
        min_pod_limit=0,
    )
