"""With a real node side, the emulator serves 100.100.100.200 (metadata by source
IP) and 100.100.100.201 (OpenAPI) inside the VPC namespace."""

from __future__ import annotations

import http.client
import os
import secrets

import pytest
from alibabacloud_ecs20140526 import models as m
from pyroute2 import IPRoute

from terway_agent.datapath import netns

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="creating network namespaces needs root"),
]


class LoopbackVpcNodeSide:
    """The smallest real node side: a VPC namespace whose loopback holds the
    service addresses and one node's primary IP (so a client there can use it
    as its source address)."""

    def __init__(self, name: str, extra: tuple[str, ...]):
        self.name = name
        self.extra = extra

    def start(self, vswitches, services):
        netns.create(self.name)
        with netns.enter(self.name), IPRoute() as ipr:
            lo = ipr.link_lookup(ifname="lo")[0]
            ipr.link("set", index=lo, state="up")
            for addr in (services.metadata, services.openapi, *self.extra):
                ipr.addr("add", index=lo, address=addr, prefixlen=32)

    def vswitch_added(self, vswitch):
        pass

    def add_instance(self, instance_id, netns_name, primary):
        pass

    def eni_attached(self, instance_id, eni):
        pass

    def eni_ips_changed(self, instance_id, eni):
        pass

    def eni_detached(self, instance_id, eni):
        pass

    def remove_instance(self, instance_id):
        pass

    def close(self):
        netns.remove(self.name)


@pytest.fixture
def vpc(make_emulator):
    name = f"twemu-vpc-{secrets.token_hex(3)}"
    side = LoopbackVpcNodeSide(name, ("172.16.0.11",))
    try:
        fx = make_emulator(node_side=side, vpc_netns=name)
        yield fx, name
    finally:
        netns.remove(name)


def _md_get(path, source):
    conn = http.client.HTTPConnection("100.100.100.200", 80, timeout=5, source_address=(source, 0))
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


def test_services_inside_the_vpc_namespace(vpc):
    fx, name = vpc
    with netns.enter(name):
        assert _md_get("/latest/meta-data/instance-id", "172.16.0.11") == (200, fx.node1)
        assert _md_get("/latest/meta-data/private-ipv4", "172.16.0.11") == (200, "172.16.0.11")
        # a caller that is no instance's primary IP is refused
        assert _md_get("/latest/meta-data/instance-id", "100.100.100.200")[0] == 403
        client = fx.ecs_client(endpoint="100.100.100.201:80")  # the OpenAPI address seen from a VPC
        body = client.describe_network_interfaces(
            m.DescribeNetworkInterfacesRequest(region_id=fx.region_id)
        ).body
    assert body.total_count == 5
    # the loopback listener still works from the root namespace
    assert fx.admin.call_count("DescribeNetworkInterfaces") == 1
