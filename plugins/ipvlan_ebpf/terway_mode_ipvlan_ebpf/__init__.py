"""terway-agent mode `ipvlan_ebpf`: ipvlan L2 on the ENI with eBPF service resolution.

Registered so operators can see and select it; it does not serve pods yet
and says so (the ipvlan-ebpf issue; this kernel has no ipvlan, see docs).
"""

from terway_agent.plugin import InstanceLimits, ModeInfo, hookimpl

__version__ = "0.1.0"


def _pod_limit(q: InstanceLimits) -> int:
    return q.shared_pods


@hookimpl
def terway_mode_info() -> ModeInfo:
    return ModeInfo(
        name="ipvlan_ebpf",
        version=__version__,
        summary="ipvlan L2 on the ENI with eBPF service resolution",
        implemented=False,
        exclusivity="shared",
        capabilities=frozenset({"ipv4", "ipv6", "bandwidth", "network_policy", "ebpf", "service_acceleration"}),
        pod_limit_formula="(EniQuantity - 1) x EniPrivateIpAddressQuantity",
        pod_limit=_pod_limit,
        min_pod_limit=11,
    )
