"""The emulator with the real NetnsNodeSide: a node namespace reaches the
metadata service and the OpenAPI through its eth0, and attached ENIs appear as
devices in it."""

from __future__ import annotations

import copy
import http.client
import os
import secrets
import time

import pytest
from alibabacloud_ecs20140526 import models as m
from pyroute2 import IPRoute
from twemu_topology import TEST_TOPOLOGY

from terway_agent.datapath import netns

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="creating network namespaces needs root"),
]


@pytest.fixture
def cloud(make_emulator):
    sfx = secrets.token_hex(3)
    topo = copy.deepcopy(TEST_TOPOLOGY)
    topo["instances"] = topo["instances"][:1]
    topo["instances"][0]["netns"] = f"twemu-n1-{sfx}"
    topo["node_side"] = {"kind": "netns", "vpc_netns": f"twemu-vpc-{sfx}"}
    try:
        yield make_emulator(topo), topo["instances"][0]["netns"]
    finally:
        for name in (f"twemu-n1-{sfx}", f"twemu-vpc-{sfx}"):
            netns.remove(name)


def _links(ns):
    with netns.enter(ns), IPRoute() as ipr:
        return {link.get_attr("IFLA_IFNAME"): link.get_attr("IFLA_ADDRESS") for link in ipr.get_links()}


def test_node_namespace_talks_to_the_cloud(cloud):
    fx, node_ns = cloud
    with netns.enter(node_ns):
        conn = http.client.HTTPConnection("100.100.100.200", 80, timeout=5)
        conn.request("GET", "/latest/meta-data/instance-id")
        resp = conn.getresponse()
        assert (resp.status, resp.read().decode()) == (200, fx.node1)
        conn.close()
        c = fx.ecs_client(endpoint="100.100.100.201:80")  # the OpenAPI address seen from a VPC
        eni = c.create_network_interface(
            m.CreateNetworkInterfaceRequest(
                region_id=fx.region_id, v_switch_id=fx.vsw_pod_a, security_group_id=fx.sg
            )
        ).body
        c.attach_network_interface(
            m.AttachNetworkInterfaceRequest(
                region_id=fx.region_id, network_interface_id=eni.network_interface_id, instance_id=fx.node1
            )
        )
    # eni_attached ran before the attach completed (attach latency is 0 here)
    assert _links(node_ns).get("eth1") == eni.mac_address
    fx.ecs_client().detach_network_interface(
        m.DetachNetworkInterfaceRequest(
            region_id=fx.region_id, network_interface_id=eni.network_interface_id, instance_id=fx.node1
        )
    )
    deadline = time.monotonic() + 5
    while "eth1" in _links(node_ns):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert fx.admin.node_side()["errors"] == []
