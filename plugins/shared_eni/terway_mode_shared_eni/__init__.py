"""terway-agent mode `shared_eni`: shared ENI, veth + policy routing.

Registered so operators can see and select it; it does not serve pods yet
and says so (the shared-eni issue).
"""

from terway_agent.plugin import InstanceLimits, ModeInfo, hookimpl

__version__ = "0.1.0"


def _pod_limit(q: InstanceLimits) -> int:
    return q.shared_pods


@hookimpl
def terway_mode_info() -> ModeInfo:
    return ModeInfo(
        name="shared_eni",
        version=__version__,
        summary="shared ENI, veth + policy routing",
        implemented=False,
        exclusivity="shared",
        capabilities=frozenset({"ipv4", "ipv6", "dual_stack", "bandwidth", "network_policy", "hostport"}),
        pod_limit_formula="(EniQuantity - 1) x EniPrivateIpAddressQuantity",
        pod_limit=_pod_limit,
        min_pod_limit=11,
    )
