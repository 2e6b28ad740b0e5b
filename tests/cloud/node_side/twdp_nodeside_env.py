"""Shared data of the NetnsNodeSide tests (imported by conftest.py and the test module)."""

from __future__ import annotations

from terway_agent.cloud.emulator.node_side import EniNet, ServiceAddresses, VSwitchNet

VSW = VSwitchNet(
    vswitch_id="vsw-twdp-1",
    cidr4="192.168.32.0/19",
    gateway4="192.168.63.253",
    cidr6="2408:4005:300::/64",
    gateway6="2408:4005:300::1",
)
SERVICES = ServiceAddresses(extra=("100.100.100.202",))


def eni(
    n: int, *, device_index: int, primary_ip: str, secondary: tuple[str, ...] = (), **kw: object
) -> EniNet:
    return EniNet(
        eni_id=f"eni-twdp{n:04d}",
        mac=f"00:16:3e:00:{n >> 8:02x}:{n & 0xFF:02x}",
        device_index=device_index,
        vswitch=VSW,
        primary_ip=primary_ip,
        secondary_ipv4s=secondary,
        **kw,  # type: ignore[arg-type]
    )
