"""The instance metadata service: token flow, every path, delayed visibility, faults."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

from alibabacloud_ecs20140526 import models as m
from twemu_helpers import attach, create_eni

TOKEN_TTL = "X-aliyun-ecs-metadata-token-ttl-seconds"
TOKEN = "X-aliyun-ecs-metadata-token"


def _req(url, method="GET", headers=None):
    request = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _get(emulator, iid, path, token=None):
    headers = {TOKEN: token} if token else {}
    return _req(emulator.metadata_url(iid) + "/latest/meta-data/" + path, headers=headers)


def _token(emulator, iid, ttl="21600"):
    status, body = _req(emulator.metadata_url(iid) + "/latest/api/token", "PUT", {TOKEN_TTL: ttl})
    assert status == 200, body
    return body


def test_token_flow_optional_and_required(emulator):
    iid = emulator.node1
    assert _get(emulator, iid, "instance-id") == (200, iid)  # optional mode: no token needed
    token = _token(emulator, iid)
    assert _get(emulator, iid, "instance-id", token) == (200, iid)
    assert _get(emulator, iid, "instance-id", "forged")[0] == 401
    # a token is bound to its instance
    assert _get(emulator, emulator.small, "instance-id", token)[0] == 401
    emulator.admin.configure(metadata_tokens="required")
    assert _get(emulator, iid, "instance-id")[0] == 401
    assert _get(emulator, iid, "instance-id", token) == (200, iid)


def test_token_ttl_is_validated_and_expires(emulator):
    url = emulator.metadata_url(emulator.node1) + "/latest/api/token"
    assert _req(url, "PUT")[0] == 400
    assert _req(url, "PUT", {TOKEN_TTL: "0"})[0] == 400
    assert _req(url, "PUT", {TOKEN_TTL: "21601"})[0] == 400
    assert _req(url, "GET", {TOKEN_TTL: "10"})[0] == 405
    token = _token(emulator, emulator.node1, ttl="1")
    assert _get(emulator, emulator.node1, "instance-id", token)[0] == 200
    time.sleep(1.05)
    assert _get(emulator, emulator.node1, "instance-id", token)[0] == 401


def test_instance_paths(emulator):
    iid = emulator.node1
    expect = {
        "instance-id": iid,
        "instance/instance-type": "ecs.g7.xlarge",
        "region-id": "cn-hangzhou",
        "zone-id": "cn-hangzhou-k",
        "vswitch-id": emulator.vsw_node,
        "vpc-id": "vpc-bp1twemutest0000000",
        "vpc-cidr-block": "172.16.0.0/12",
        "private-ipv4": "172.16.0.11",
    }
    for path, value in expect.items():
        assert _get(emulator, iid, path) == (200, value), path
    status, mac = _get(emulator, iid, "mac")
    assert status == 200 and mac.startswith("00:16:3e:")
    assert _get(emulator, iid, "network/interfaces/macs/") == (200, mac + "/")
    status, listing = _get(emulator, iid, "")
    assert status == 200 and "instance-id" in listing.split("\n")
    assert _get(emulator, iid, "no-such-thing")[0] == 404
    assert _req(emulator.metadata_url("i-nope") + "/latest/meta-data/instance-id")[0] == 404


def test_eni_paths(emulator):
    c = emulator.ecs_client()
    eni = create_eni(c, emulator, secondary_private_ip_address_count=2, ipv_6address_count=2)
    attach(c, emulator, eni.network_interface_id, emulator.node1)
    mac = eni.mac_address
    base = f"network/interfaces/macs/{mac}/"
    ipv4s = [s.private_ip_address for s in eni.private_ip_sets.private_ip_set]
    ipv6s = [s.ipv_6address for s in eni.ipv_6sets.ipv_6set]
    expect = {
        "network-interface-id": eni.network_interface_id,
        "primary-ip-address": eni.private_ip_address,
        "gateway": "172.17.15.253",
        "netmask": "255.255.240.0",
        "vswitch-id": emulator.vsw_pod_a,
        "vswitch-cidr-block": "172.17.0.0/20",
        "vswitch-ipv6-cidr-block": "2408:4005:300:8c01::/64",
        "ipv6-gateway": "2408:4005:300:8c01:ffff:ffff:ffff:fffd",
        "ipv6s": "[" + ",".join(ipv6s) + "]",
    }
    for path, value in expect.items():
        assert _get(emulator, emulator.node1, base + path) == (200, value), path
    status, body = _get(emulator, emulator.node1, base + "private-ipv4s")
    assert status == 200 and json.loads(body) == ipv4s
    status, macs = _get(emulator, emulator.node1, "network/interfaces/macs/")
    assert macs.split("\n")[1] == mac + "/"
    status, keys = _get(emulator, emulator.node1, base)
    assert {"gateway", "private-ipv4s", "ipv6s", "network-interface-id"} <= set(keys.split("\n"))


def test_ipv6_paths_are_404_without_ipv6(emulator):
    c = emulator.ecs_client()
    eni = create_eni(c, emulator, v_switch_id=emulator.vsw_tiny)
    attach(c, emulator, eni.network_interface_id, emulator.node1)
    base = f"network/interfaces/macs/{eni.mac_address}/"
    for path in ("ipv6s", "ipv6-gateway", "vswitch-ipv6-cidr-block"):
        assert _get(emulator, emulator.node1, base + path)[0] == 404, path
    # an ENI on an IPv6 vSwitch but without IPv6 addresses: ipv6s is 404
    eni2 = create_eni(c, emulator)
    attach(c, emulator, eni2.network_interface_id, emulator.node1)
    assert _get(emulator, emulator.node1, f"network/interfaces/macs/{eni2.mac_address}/ipv6s")[0] == 404


def test_attach_and_assign_show_up_after_the_metadata_delay(emulator):
    emulator.admin.configure(metadata_delay=0.3)
    c = emulator.ecs_client()
    eni = create_eni(c, emulator)
    attach(c, emulator, eni.network_interface_id, emulator.node1)
    t0 = time.monotonic()
    assert (
        _get(emulator, emulator.node1, f"network/interfaces/macs/{eni.mac_address}/primary-ip-address")[0]
        == 404
    )
    status, macs = _get(emulator, emulator.node1, "network/interfaces/macs/")
    assert eni.mac_address + "/" not in macs.split("\n")
    while (
        _get(emulator, emulator.node1, f"network/interfaces/macs/{eni.mac_address}/primary-ip-address")[0]
        != 200
    ):
        assert time.monotonic() - t0 < 3
        time.sleep(0.02)
    assert time.monotonic() - t0 >= 0.25
    new = c.assign_private_ip_addresses(
        m.AssignPrivateIpAddressesRequest(
            region_id=emulator.region_id,
            network_interface_id=eni.network_interface_id,
            secondary_private_ip_address_count=2,
        )
    ).body.assigned_private_ip_addresses_set.private_ip_set.private_ip_address
    path = f"network/interfaces/macs/{eni.mac_address}/private-ipv4s"
    assert json.loads(_get(emulator, emulator.node1, path)[1]) == [eni.private_ip_address]
    deadline = time.monotonic() + 3
    while json.loads(_get(emulator, emulator.node1, path)[1]) != [eni.private_ip_address, *new]:
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_metadata_faults(emulator):
    emulator.admin.add_fault(
        "metadata:get", status=429, code="Throttling", message="Too Many Requests", times=1
    )
    assert _get(emulator, emulator.node1, "instance-id")[0] == 429
    assert _get(emulator, emulator.node1, "instance-id") == (200, emulator.node1)
    emulator.admin.add_fault("metadata:token", status=500, times=1)
    url = emulator.metadata_url(emulator.node1) + "/latest/api/token"
    assert _req(url, "PUT", {TOKEN_TTL: "60"})[0] == 500
    assert _req(url, "PUT", {TOKEN_TTL: "60"})[0] == 200
    assert emulator.admin.calls()["metadata:get"] == 2


def test_member_enis_are_not_in_metadata(emulator):
    c = emulator.ecs_client()
    trunk = create_eni(c, emulator, instance_type="Trunk")
    attach(c, emulator, trunk.network_interface_id, emulator.node1)
    member = create_eni(c, emulator)
    attach(c, emulator, member.network_interface_id, emulator.node1, trunk=trunk.network_interface_id)
    macs = _get(emulator, emulator.node1, "network/interfaces/macs/")[1].split("\n")
    assert trunk.mac_address + "/" in macs
    assert member.mac_address + "/" not in macs
