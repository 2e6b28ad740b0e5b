"""The simulated cluster of :mod:`terway_agent.sim`, as the mode suites use it."""

from terway_agent.datapath import netns
from terway_agent.sim import (  # noqa: F401 - re-exported for the suites
    ACCESS_KEY,
    HOST_STACK_CIDR,
    POD_VSWITCHES,
    REGION,
    SECURITY_GROUP,
    SERVICE_CIDR,
    SERVICE_CIDR6,
    ZONE,
    CloudCluster,
    Node,
    eni_conf,
    start_cluster,
    topology,
    unique,
)


class PodSandboxes:
    """Pod sandboxes a test makes on the cluster's nodes: each a fresh network namespace
    (``prefix`` + a random suffix) and container id; :meth:`cleanup` DELs every one whose
    agent still runs, through the real executable, and removes the namespaces."""

    prefix = "twpd"

    def __init__(self) -> None:
        self.made: list[tuple[Node, str, str]] = []

    def sandbox(self, node: Node) -> tuple[str, str]:
        """A new pod namespace on ``node`` and a container id for it."""
        ns = unique(self.prefix)
        netns.create(ns)
        cid = unique("cid")
        self.made.append((node, ns, cid))
        return ns, cid

    def cleanup(self) -> None:
        for node, ns, cid in self.made:
            if node.agent.proc is not None and node.agent.proc.poll() is None:
                node.agent.cni("DEL", cid, netns_path=netns.netns_path(ns))
            netns.remove(ns)
