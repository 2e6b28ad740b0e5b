"""Traffic control: TBF shaping that really limits throughput, clsact + eBPF filter slots."""

from __future__ import annotations

import ctypes
import json
import os
import subprocess

import pytest
from twdp_topology import GATEWAY4  # tests/datapath is on sys.path

from terway_agent import datapath as dp
from terway_agent.datapath import _probe
from terway_agent.errors import InvalidInput

pytestmark = pytest.mark.netns

POD = "192.168.0.30"


def _tc_json(netns_path: str, dev: str) -> list[dict]:
    out = subprocess.run(
        ["tc", "-n", os.path.basename(netns_path), "-j", "qdisc", "show", "dev", dev],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out)


def test_tbf_parameters_follow_the_original():
    tbf = dp.Tbf.for_bandwidth(dev="eth0", bits_per_s=16_000_000, mtu=1500)
    assert tbf.rate_bytes_per_s == 2_000_000  # bits -> bytes
    assert tbf.burst_bytes == 3000  # max(rate/1000 = 2000, mtu + 1500 = 3000)
    assert tbf.latency_us == 25_000
    assert tbf.limit_bytes == 2_000_000 * 25 // 1000 + 3000
    fast = dp.Tbf.for_bandwidth(dev="eth0", bits_per_s=8_000_000_000)
    assert fast.burst_bytes == 1_000_000  # a millisecond of traffic at 1 GB/s
    with pytest.raises(InvalidInput) as info:
        dp.Tbf.for_bandwidth(dev="eth0", bits_per_s=0)
    assert info.value.field == "bandwidth"


def test_tbf_limits_egress_and_ingress_throughput(shared_eni):
    egress_bits = 16_000_000
    ingress_bits = 8_000_000
    pod, plan = shared_eni.add_pod("bw", POD, egress_bits_per_s=egress_bits, ingress_bits_per_s=ingress_bits)
    report = dp.apply(plan)
    assert {o.kind for o in report.created} >= {"tbf"}
    assert dp.apply(plan).unchanged == plan.objects
    assert dp.check(plan) == []

    root = [q for q in _tc_json(pod, "eth0") if q.get("root")][0]
    assert root["kind"] == "tbf" and root["options"]["rate"] == egress_bits // 8

    # egress is shaped in the pod: pod -> VPC gateway
    egress = _probe.measure_throughput(pod, shared_eni.vpc, GATEWAY4, seconds=2.0)
    assert egress == pytest.approx(egress_bits / 8, rel=0.2), f"egress {egress * 8 / 1e6:.2f} Mbit/s"
    # ingress is shaped on the host veth: VPC -> pod
    ingress = _probe.measure_throughput(shared_eni.vpc, pod, POD, seconds=2.0)
    assert ingress == pytest.approx(ingress_bits / 8, rel=0.2), f"ingress {ingress * 8 / 1e6:.2f} Mbit/s"

    # a new limit replaces the qdisc's parameters (reported changed)
    faster = dp.Tbf.for_bandwidth(dev="eth0", netns=pod, bits_per_s=32_000_000)
    diff = dp.check(dp.Plan((faster,)))
    assert len(diff) == 1 and "rate is 2000000 B/s, expected 4000000" in diff[0].description
    assert dp.apply(dp.Plan((faster,))).changed == (faster,)
    assert dp.check(dp.Plan((faster,))) == []

    removed = dp.remove(dp.Plan((faster,)))
    assert removed.removed == (faster,)
    assert all(q["kind"] != "tbf" for q in _tc_json(pod, "eth0"))
    assert dp.remove(dp.Plan((faster,))).absent == (faster,)


def test_tbf_rate_beyond_32_bits(make_netns):
    """Rates of 2^32 B/s and more travel in TCA_TBF_RATE64 and are read back from it."""
    ns = make_netns("t64")
    link = dp.Veth(name="twdpt0", netns=ns, peer_name="twdpt1", peer_netns=ns)
    fast = dp.Tbf.for_bandwidth(dev="twdpt0", netns=ns, bits_per_s=40_000_000_000)  # 5e9 B/s
    assert fast.rate_bytes_per_s > 0xFFFFFFFF
    plan = dp.Plan((link, fast))
    assert fast in dp.apply(plan).created
    root = [q for q in _tc_json(ns, "twdpt0") if q.get("root")][0]
    assert root["kind"] == "tbf" and root["options"]["rate"] == fast.rate_bytes_per_s
    assert dp.check(plan) == []
    assert dp.apply(plan).unchanged == plan.objects
    slower = dp.Tbf.for_bandwidth(dev="twdpt0", netns=ns, bits_per_s=32_000_000_000)
    diff = dp.check(dp.Plan((slower,)))
    assert len(diff) == 1 and "rate is 5000000000 B/s, expected 4000000000" in diff[0].description


# --- eBPF ------------------------------------------------------------------------

_BPF_PROG_LOAD = 5
_BPF_PROG_TYPE_SCHED_CLS = 3
_SYS_BPF = 321  # x86_64


def _load_tc_program(action: int = 0) -> int:
    """Load ``r0 = action; exit`` as a SCHED_CLS program; return its fd."""
    insns = bytes([0xB7, 0x00, 0, 0]) + action.to_bytes(4, "little", signed=True)  # mov64 r0, imm
    insns += bytes([0x95, 0, 0, 0, 0, 0, 0, 0])  # exit
    insn_buf = ctypes.create_string_buffer(insns, len(insns))
    license = ctypes.create_string_buffer(b"GPL")
    attr = ctypes.create_string_buffer(128)
    ctypes.memmove(ctypes.byref(attr, 0), ctypes.byref(ctypes.c_uint32(_BPF_PROG_TYPE_SCHED_CLS)), 4)
    ctypes.memmove(ctypes.byref(attr, 4), ctypes.byref(ctypes.c_uint32(2)), 4)
    ctypes.memmove(ctypes.byref(attr, 8), ctypes.byref(ctypes.c_uint64(ctypes.addressof(insn_buf))), 8)
    ctypes.memmove(ctypes.byref(attr, 16), ctypes.byref(ctypes.c_uint64(ctypes.addressof(license))), 8)
    ctypes.memmove(ctypes.byref(attr, 48), b"twdp_test", 9)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    fd = libc.syscall(_SYS_BPF, _BPF_PROG_LOAD, attr, ctypes.c_uint(128))
    if fd < 0:
        err = ctypes.get_errno()
        pytest.skip(f"this kernel refused to load a SCHED_CLS program: {os.strerror(err)}")
    return fd


def _prog_id(fd: int) -> int:
    with open(f"/proc/self/fdinfo/{fd}") as f:
        return int(next(line for line in f if line.startswith("prog_id:")).split()[1])


def test_clsact_and_bpf_filter_slot(make_netns):
    ns = make_netns("bpf")
    fd1 = _load_tc_program(0)
    fd2 = _load_tc_program(0)
    try:
        plan = dp.Plan(
            (
                dp.Veth(name="twdpb0", netns=ns, peer_name="twdpb1", peer_netns=ns),
                dp.Clsact(dev="twdpb0", netns=ns),
                dp.BpfFilter(dev="twdpb0", netns=ns, direction="egress", priority=50001, slot="vlan-tag"),
                dp.BpfFilter(dev="twdpb0", netns=ns, direction="ingress", priority=20000, slot="vlan-untag"),
            )
        )
        with pytest.raises(InvalidInput) as info:
            dp.apply(plan, bpf_fds={"vlan-tag": fd1})
        assert info.value.field == "bpf_fds['vlan-untag']"

        first = dp.apply(plan, bpf_fds={"vlan-tag": fd1, "vlan-untag": fd1})
        assert {o.kind for o in first.created} == {"veth", "clsact", "bpf_filter"}
        out = subprocess.run(
            ["tc", "-n", os.path.basename(ns), "-j", "filter", "show", "dev", "twdpb0", "egress"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        filters = [f for f in json.loads(out) if f.get("options")]
        assert len(filters) == 1
        assert filters[0]["kind"] == "bpf" and filters[0]["pref"] == 50001
        assert filters[0]["options"]["bpf_name"] == "vlan-tag" and filters[0]["options"]["direct-action"]
        assert filters[0]["options"]["prog"]["id"] == _prog_id(fd1)

        same = dp.apply(plan, bpf_fds={"vlan-tag": fd1, "vlan-untag": fd1})
        assert same.unchanged == plan.objects
        assert dp.check(plan) == []  # without fds: identified by name

        swapped = dp.apply(plan, bpf_fds={"vlan-tag": fd2, "vlan-untag": fd1})
        assert [o.kind for o in swapped.changed] == ["bpf_filter"]
        problems = dp.check(plan, bpf_fds={"vlan-tag": fd1, "vlan-untag": fd1})
        assert len(problems) == 1 and f"expected {_prog_id(fd1)}" in problems[0].description

        only_tc = dp.Plan(plan.objects[1:])
        removed = dp.remove(only_tc)
        assert {o.kind for o in removed.removed} == {"clsact", "bpf_filter"}
        assert [q for q in _tc_json(ns, "twdpb0") if q["kind"] == "clsact"] == []
        assert not dp.remove(only_tc).removed
    finally:
        os.close(fd1)
        os.close(fd2)
