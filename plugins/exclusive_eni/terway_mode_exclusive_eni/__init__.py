"""terway-agent mode `exclusive_eni`: exclusive ENI, the pod owns a whole ENI.

Registered so operators can see and select it; it does not serve pods yet
and says so (the exclusive-eni issue).
"""

from terway_agent.plugin import InstanceLimits, ModeInfo, hookimpl

__version__ = "0.1.0"


def _pod_limit(q: InstanceLimits) -> int:
    return q.exclusive_pods


@hookimpl
def terway_mode_info() -> ModeInfo:
    return ModeInfo(
        name="exclusive_eni",
        version=__version__,
        summary="exclusive ENI, the pod owns a whole ENI",
        implemented=False,
        exclusivity="exclusive",
        capabilities=frozenset({"ipv4", "ipv6", "dual_stack", "bandwidth", "host_peer"}),
        pod_limit_formula="EniQuantity - 1",
        pod_limit=_pod_limit,
        min_pod_limit=6,
    )
