"""Pod-facing inputs: bandwidth quantities and annotations, parsed with errors that name them."""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

from terway_agent.errors import InvalidInput
from terway_agent.types import Bandwidth

ANN_INGRESS = "k8s.aliyun.com/ingress-bandwidth"
ANN_EGRESS = "k8s.aliyun.com/egress-bandwidth"
K8S_ANN_INGRESS = "kubernetes.io/ingress-bandwidth"
K8S_ANN_EGRESS = "kubernetes.io/egress-bandwidth"
ANN_POD_IP_RESERVATION = "k8s.aliyun.com/pod-ip-reservation"


def wants_ip_reservation(annotations: Mapping[str, str]) -> bool:
    """``k8s.aliyun.com/pod-ip-reservation: "true"``: keep the pod's IP for its successor."""
    return str(annotations.get(ANN_POD_IP_RESERVATION, "")).strip().lower() == "true"

_QUANTITY = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(Ki|Mi|Gi|Ti|Pi|k|K|M|G|T|P)?\s*$")
_SUFFIX = {
    None: 1,
    "k": 10**3,
    "K": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
}
#: kubelet accepts 1k .. 32G for the bandwidth annotations; we accept up to 1P.
MIN_BPS = 1_000
MAX_BPS = 10**15


def parse_bandwidth_quantity(field: str, value: Any) -> int:
    """Bits per second from a Kubernetes quantity (``"10M"``, ``"1Gi"``, ``"500k"``) or an integer."""
    expected = 'a bandwidth in bits/s such as "10M", "1G" or "500k" (between 1k and 1P)'
    if isinstance(value, bool):
        raise InvalidInput(field, value, expected)
    if isinstance(value, int):
        bps = value
    elif isinstance(value, str):
        m = _QUANTITY.match(value)
        if not m:
            raise InvalidInput(field, value, expected)
        try:
            bps = int(Decimal(m.group(1)) * _SUFFIX[m.group(2)])
        except InvalidOperation:
            raise InvalidInput(field, value, expected) from None
    else:
        raise InvalidInput(field, value, expected)
    if not MIN_BPS <= bps <= MAX_BPS:
        raise InvalidInput(field, value, expected)
    return bps


def bandwidth_from(runtime_config: Mapping[str, Any], annotations: Mapping[str, str]) -> Bandwidth:
    """The pod's bandwidth: the CNI ``bandwidth`` capability wins over the legacy annotations."""
    ingress = egress = 0
    for ann, which in ((ANN_INGRESS, "in"), (ANN_EGRESS, "out")):
        if ann in annotations:
            bps = parse_bandwidth_quantity(f"annotation {ann}", annotations[ann])
            if which == "in":
                ingress = bps
            else:
                egress = bps
    bw = runtime_config.get("bandwidth")
    if bw is not None:
        if not isinstance(bw, Mapping):
            raise InvalidInput("runtimeConfig.bandwidth", bw, "an object with ingressRate/egressRate in bits/s")
        # The CNI convention spells ingressRate/egressRate; containerd sends Go's field names
        # (IngressRate, EgressRate) and Go plugins decode case-insensitively: so do we.
        keys = {str(k).lower(): k for k in bw}
        for name in ("ingressrate", "egressrate"):
            key = keys.get(name)
            if key is None or not bw[key]:
                continue
            bps = parse_bandwidth_quantity(f"runtimeConfig.bandwidth.{key}", bw[key])
            if name == "ingressrate":
                ingress = bps
            else:
                egress = bps
    return Bandwidth(ingress_bps=ingress, egress_bps=egress)
