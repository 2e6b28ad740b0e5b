"""The agent inside a Kubernetes cluster: the official ``kubernetes`` client, driven from trio.

What the agent reads (all from watch caches: list, then watch from the list's
resourceVersion with bookmarks; resumed after a timeout or a broken stream,
re-listed after ``410 Gone`` with only the difference delivered):

* its **Node** (``metadata.name=<node>``): labels select the mode at start and
  name the node pool's ``terway-config`` ConfigMap; ``k8s.aliyun.com/ignore-by-terway=true``
  keeps the agent off the node;
* the **ConfigMaps** of its namespace: ``eni-config`` (keys ``eni_conf`` and
  ``10-terway.conf``) and the ``terway-config`` one its node names; a change
  is applied live where the core allows (``Sources.fingerprint``);
* the **pods on this node** (``spec.nodeName=<node>``): annotations
  (bandwidth, ``k8s.aliyun.com/pod-ip-reservation``, ``k8s.aliyun.com/pod-networking``)
  and the owner's kind for ADD; whether a stored attachment's pod still exists
  for the periodic GC.

What it writes: ``k8s.aliyun.com/pod-ips`` on pods after ADD; ``v1 Events``
(pod ``AllocIPSucceed`` with the time it took, ``AllocIPFailed``, node
``AllocIPFailed``, ``ConfigError``); node annotations
``k8s.aliyun.com/max-available-ip`` / ``max-member-eni-ip``, extended
resources ``aliyun/eni`` / ``aliyun/member-eni`` and the ``SufficientIP``
condition.  docs/operations.md describes all of them.

Public API::

    await run_agent(settings)                     # what `terway-agent run` does with use_kubernetes
    async with open_kubernetes(settings) as kube:  # for embedding / tests
        agent = kube.make_agent(host=..., services=...)
"""

from __future__ import annotations

from terway_agent.k8s._agent import Kubernetes, NodeIgnored, NodeNotFound, open_kubernetes, run_agent
from terway_agent.k8s._client import (
    KubeError,
    KubeForbidden,
    KubeGone,
    KubeRequestError,
    KubeUnavailable,
    Tuning,
)
from terway_agent.k8s._node import (
    ANN_MAX_AVAILABLE_IP,
    ANN_MAX_MEMBER_ENI_IP,
    CONDITION_SUFFICIENT_IP,
    RES_ENI,
    RES_MEMBER_ENI,
    NodeFacts,
    node_facts,
)
from terway_agent.k8s._pods import ANN_POD_IP_RESERVATION, ANN_POD_IPS, ANN_POD_NETWORKING

__all__ = [
    "ANN_MAX_AVAILABLE_IP",
    "ANN_MAX_MEMBER_ENI_IP",
    "ANN_POD_IPS",
    "ANN_POD_IP_RESERVATION",
    "ANN_POD_NETWORKING",
    "CONDITION_SUFFICIENT_IP",
    "RES_ENI",
    "RES_MEMBER_ENI",
    "KubeError",
    "KubeForbidden",
    "KubeGone",
    "KubeRequestError",
    "KubeUnavailable",
    "Kubernetes",
    "NodeFacts",
    "NodeIgnored",
    "NodeNotFound",
    "Tuning",
    "node_facts",
    "open_kubernetes",
    "run_agent",
]
