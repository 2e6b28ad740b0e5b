"""Pod wishes from runtimeConfig and annotations."""

from __future__ import annotations

import pytest

from terway_agent.errors import InvalidInput
from terway_agent.podspec import bandwidth_from


def test_cni_convention_spelling() -> None:
    bw = bandwidth_from({"bandwidth": {"ingressRate": 20_000_000, "egressRate": 8_000_000}}, {})
    assert (bw.ingress_bps, bw.egress_bps) == (20_000_000, 8_000_000)


def test_containerd_go_field_names_as_observed_in_the_e2e_lane() -> None:
    rc = {"bandwidth": {"IngressRate": 20_000_000, "IngressBurst": 4294967295,
                        "EgressRate": 8_000_000, "EgressBurst": 4294967295}}
    bw = bandwidth_from(rc, {})
    assert (bw.ingress_bps, bw.egress_bps) == (20_000_000, 8_000_000)


def test_runtime_config_wins_over_legacy_annotations() -> None:
    ann = {"k8s.aliyun.com/ingress-bandwidth": "10M", "k8s.aliyun.com/egress-bandwidth": "5M"}
    bw = bandwidth_from({"bandwidth": {"IngressRate": 30_000_000}}, ann)
    assert (bw.ingress_bps, bw.egress_bps) == (30_000_000, 5_000_000)


def test_an_invalid_rate_names_the_key_as_sent() -> None:
    with pytest.raises(InvalidInput) as err:
        bandwidth_from({"bandwidth": {"EgressRate": "fast"}}, {})
    assert err.value.field == "runtimeConfig.bandwidth.EgressRate"
    with pytest.raises(InvalidInput) as err:
        bandwidth_from({}, {"k8s.aliyun.com/ingress-bandwidth": "fast"})
    assert "k8s.aliyun.com/ingress-bandwidth" in err.value.field
