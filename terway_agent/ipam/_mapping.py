"""``terway-agent mapping``: do the store, the cloud and the kernel agree?

Three views of the node's ENIs and addresses are compared:

* the **store**: the pool's ENIs and addresses, and the agent's attachments
  (who owns what);
* the **cloud**: DescribeNetworkInterfaces of this instance and of the ENIs
  tagged with it;
* the **kernel**: network devices by MAC in the agent's network namespace.

Every disagreement is a sentence in ``problems``; the command exits 1 when
there is any.  ENIs with a cloud operation in flight are reported as such and
not compared (they are changing).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import trio

from terway_agent.cloud.errors import CloudError
from terway_agent.datapath import netns as _netns

if TYPE_CHECKING:  # pragma: no cover
    from terway_agent.store import Store

    from ._base import IPAM


def _kernel_macs(netns: str | None) -> dict[str, str]:
    """MAC -> device name of every link in ``netns`` (None: the calling thread's namespace)."""
    from pyroute2 import IPRoute

    def dump() -> dict[str, str]:
        out: dict[str, str] = {}
        with IPRoute() as ipr:
            for link in ipr.get_links():
                mac = link.get_attr("IFLA_ADDRESS")
                if mac:
                    out.setdefault(str(mac).lower(), str(link.get_attr("IFLA_IFNAME")))
        return out

    if netns is None:
        return dump()
    with _netns.enter(netns):
        return dump()


async def mapping_report(
    ipam: IPAM, store: Store, *, kernel: bool = True, netns: str | None = None
) -> dict[str, Any]:
    """Compare store, cloud and kernel; returns ``{"consistent", "problems", "enis", ...}``.

    :param kernel: also compare the kernel's devices (off where ENIs have no device).
    :param netns: the node namespace to look at (default: the agent's own).
    """
    problems: list[str] = []
    notes: list[str] = []
    iid = ipam._node.instance_id
    gens = {e.eni_id: e.gen for e in ipam._enis.values()}
    try:
        view = await ipam._cloud_view()
    except CloudError as exc:
        view = None
        problems.append(f"the cloud could not be asked: {exc.message}")
    macs = await trio.to_thread.run_sync(_kernel_macs, netns) if kernel else {}
    atts = await store.acall(store.attachments)
    att_by_key = {f"{a.container_id}/{a.ifname}": a for a in atts}
    rows = []
    for eni in sorted(ipam._enis.values(), key=lambda e: (e.device_index or 0, e.eni_id)):
        row: dict[str, Any] = {
            "eni_id": eni.eni_id,
            "mac": eni.mac,
            "state": eni.state,
            "store_ips": sorted(a for a, ip in eni.ips.items() if ip.state == "ready"),
        }
        rows.append(row)
        if eni.busy or gens.get(eni.eni_id) != eni.gen or eni.state != "ready":
            notes.append(
                f"ENI {eni.eni_id} is {eni.state}{' with an operation in flight' if eni.busy else ''}"
            )
            continue
        if view is not None:
            info = view.get(eni.eni_id)
            if info is None:
                problems.append(f"ENI {eni.eni_id} is in the store but the cloud does not know it")
            elif info.instance_id != iid or info.status != "InUse":
                problems.append(
                    f"ENI {eni.eni_id} is in the store but the cloud shows it {info.status} "
                    f"on {info.instance_id or 'no instance'}"
                )
            else:
                cloud = set(ipam._families(info))
                row["cloud_ips"] = sorted(cloud)
                store_all = set(eni.ips)
                ready = set(row["store_ips"])
                for a in sorted(ready - cloud):
                    problems.append(f"address {a} is on ENI {eni.eni_id} in the store but not in the cloud")
                for a in sorted(cloud - store_all):
                    problems.append(f"address {a} is on ENI {eni.eni_id} in the cloud but not in the store")
        if kernel:
            dev = macs.get(eni.mac)
            row["device"] = dev
            if dev is None and (ipam.kind == "shared" or eni.owner is None):
                problems.append(
                    f"ENI {eni.eni_id} (MAC {eni.mac}) has no device in the node's network namespace"
                )
    if view is not None:
        for info in view.values():
            if info.eni_id in ipam._enis or info.type != "Secondary":
                continue
            if info.instance_id == iid and info.status == "InUse":
                if ipam._managed(info):
                    problems.append(f"ENI {info.eni_id} is attached to this node but not in the store")
            elif ipam._ours(info) and info.status == "Available":
                problems.append(
                    f"ENI {info.eni_id} of this node is unattached (orphan; GC deletes it after the grace)"
                )
    # ownership: the pool vs the agent's attachments
    owners: dict[str, list[str]] = {}
    for eni in ipam._enis.values():
        if eni.owner is not None:
            owners.setdefault(eni.owner, []).append(eni.eni_id)
        for ip in eni.ips.values():
            if ip.owner is not None:
                owners.setdefault(ip.owner, []).append(ip.address)
    for owner, items in sorted(owners.items()):
        if owner not in att_by_key:
            problems.append(
                f"{', '.join(sorted(items))} held by {owner}, which is not an attachment of the agent"
            )
    for key, att in sorted(att_by_key.items()):
        alloc = att.allocation
        if alloc is None or alloc.kind not in ("eni_ip", "eni") or att.state == "allocating":
            continue
        held = set(owners.get(key, ()))
        for a in alloc.addresses:
            if a.address not in held:
                problems.append(
                    f"attachment {key} uses {a.address}, which the pool does not record as its own"
                )
    return {
        "consistent": not problems,
        "problems": problems,
        "notes": notes,
        "instance_id": iid,
        "kind": ipam.kind,
        "kernel_checked": kernel,
        "enis": rows,
        "owners": {k: sorted(v) for k, v in sorted(owners.items())},
    }
