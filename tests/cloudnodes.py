"""The simulated cluster of :mod:`terway_agent.sim`, as the mode suites use it."""

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
)
