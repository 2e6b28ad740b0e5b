"""Many SDK clients at once: state and address accounting stay consistent."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from alibabacloud_ecs20140526 import models as m
from twemu_helpers import attach, create_eni, detach


def test_concurrent_clients_keep_accounting_consistent(emulator):
    emulator.admin.configure(attach_latency=0.01, detach_latency=0.01)

    def worker(n):
        c = emulator.ecs_client()
        instance = (emulator.node1, emulator.small)[n % 2]
        kept = []
        for _ in range(3):
            eni = create_eni(
                c, emulator, v_switch_id=emulator.vsw_pod_a, secondary_private_ip_address_count=1
            )
            eni_id = eni.network_interface_id
            try:
                attach(c, emulator, eni_id, instance)
            except Exception as exc:  # the instance may be full: that is a quota answer, not a bug
                assert getattr(exc, "code", None) == "EniPerInstanceLimitExceeded", exc
                kept.append(eni_id)
                continue
            emulator.admin.settle()
            c.assign_private_ip_addresses(
                m.AssignPrivateIpAddressesRequest(
                    region_id=emulator.region_id,
                    network_interface_id=eni_id,
                    secondary_private_ip_address_count=1,
                )
            )
            detach(c, emulator, eni_id, instance)
            emulator.admin.settle()
            c.delete_network_interface(
                m.DeleteNetworkInterfaceRequest(region_id=emulator.region_id, network_interface_id=eni_id)
            )
        return kept

    with ThreadPoolExecutor(8) as pool:
        kept = [e for r in pool.map(worker, range(8)) for e in r]

    state = emulator.admin.state()
    secondary = [e for e in state["enis"] if e["type"] != "Primary"]
    assert sorted(e["id"] for e in secondary) == sorted(kept)
    assert all(e["status"] == "Available" for e in secondary)
    used = [ip for e in secondary for ip in [e["primary_ip"], *e["secondary_ips"]]]
    assert len(used) == len(set(used))
    pod_a = next(v for v in state["vswitches"] if v["id"] == emulator.vsw_pod_a)
    assert pod_a["used_ipv4"] == len(used)
    assert pod_a["available_ip_address_count"] == 4092 - len(used)
    calls = emulator.admin.calls()
    assert calls["CreateNetworkInterface"] == 24
    assert emulator.admin.results()["CreateNetworkInterface"] == {"OK": 24}
