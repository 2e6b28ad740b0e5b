"""terway-agent mode `datapath_v2`: DataPath V2, veth + eBPF service and policy acceleration.

Registered so operators can see and select it; it does not serve pods yet
and says so (the datapath-v2 issue).
"""

from terway_agent.plugin import InstanceLimits, ModeInfo, hookimpl

__version__ = "0.1.0"


def _pod_limit(q: InstanceLimits) -> int:
    return q.shared_pods


@hookimpl
def terway_mode_info() -> ModeInfo:
    return ModeInfo(
        name="datapath_v2",
        version=__version__,
        summary="DataPath V2, veth + eBPF service and policy acceleration",
        implemented=False,
        exclusivity="shared",
        capabilities=frozenset({"ipv4", "ipv6", "dual_stack", "bandwidth", "network_policy", "ebpf", "service_acceleration", "hostport"}),
        pod_limit_formula="(EniQuantity - 1) x EniPrivateIpAddressQuantity",
        pod_limit=_pod_limit,
        min_pod_limit=11,
    )
