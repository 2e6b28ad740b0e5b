"""GC and repair never act on a stale copy of an attachment (races found in review)."""

from __future__ import annotations

from pathlib import Path

import trio

from terway_agent._hosting import PluginHost
from terway_agent.context import ModeContext, NodeInfo
from terway_agent.daemon.service import CNIService
from terway_agent.plugin import Allocation, IPAssignment, LinkResult, ModeInfo, RepairReport, Status, hookimpl
from terway_agent.store import Store


class Mode:
    """An inline mode with a slow teardown, recording what the sweeps saw."""

    def __init__(self) -> None:
        self.owned: dict[str, str] = {}
        self.links: set[str] = set()
        self.swept_live: list[set[str]] = []
        self.n = 0

    @hookimpl
    def terway_mode_info(self) -> ModeInfo:
        return ModeInfo(name="m", version="1", summary="inline")

    @hookimpl
    async def terway_allocate(self, ctx, request):
        await trio.sleep(0.01)
        self.n += 1
        ip = f"10.0.0.{self.n}"
        self.owned[ip] = request.owner
        return Allocation(kind="local", ipv4=IPAssignment(ip, 32))

    @hookimpl
    async def terway_release(self, ctx, request, allocation):
        for ip, owner in list(self.owned.items()):
            if owner == request.owner:
                del self.owned[ip]

    @hookimpl
    async def terway_setup_link(self, ctx, request, allocation):
        await trio.sleep(0.05)
        self.links.add(request.owner)
        return LinkResult()

    @hookimpl
    async def terway_teardown_link(self, ctx, request, allocation, link):
        await trio.sleep(0.2)  # netlink work for the dead pod
        self.links.discard(request.owner)

    @hookimpl
    async def terway_check_link(self, ctx, request, allocation, link):
        return []

    @hookimpl
    async def terway_gc(self, ctx, live):
        self.swept_live.append({f"{a.container_id}/{a.ifname}" for a in live})
        return []

    @hookimpl
    async def terway_repair(self, ctx, live):
        return RepairReport(checked=len(live))

    @hookimpl
    async def terway_status(self, ctx):
        return Status()


def _add(cid: str, pod: str) -> dict:
    return {
        "v": 1,
        "verb": "ADD",
        "env": {"CNI_CONTAINERID": cid, "CNI_IFNAME": "eth0", "CNI_NETNS": "/proc/self/ns/net",
                "CNI_ARGS": f"K8S_POD_NAMESPACE=ns;K8S_POD_NAME={pod}"},
        "config": {"cniVersion": "1.0.0", "name": "net", "type": "terway"},
    }


def _service(tmp_path: Path) -> tuple[CNIService, Mode, Store]:
    store = Store(tmp_path / "s.db")
    mode = Mode()
    host = PluginHost()
    host.register_mode(mode, "m")
    ctx = ModeContext(mode="m", node=NodeInfo(name="n"), store=store, state_dir=tmp_path, config_getter=lambda: None)
    return CNIService(host, ctx), mode, store


async def test_gc_judges_the_fresh_row_and_sweeps_with_no_add_in_flight(tmp_path: Path) -> None:
    svc, mode, store = _service(tmp_path)
    assert (await svc.handle(_add("dead", "a")))["ok"]

    async def is_dead(att) -> bool:
        return att.container_id == "dead"

    answers = []
    async with trio.open_nursery() as nursery:
        async def fresh_add() -> None:
            answers.append(await svc.handle(_add("fresh", "b")))

        nursery.start_soon(fresh_add)  # starts right after GC's snapshot would be taken
        await trio.sleep(0.005)
        errors, removed = await svc.gc(None, is_dead, trigger="periodic")
    assert answers[0]["ok"]
    assert (errors, removed) == ([], 1)
    fresh = store.get_attachment("fresh", "eth0")
    assert fresh is not None and fresh.state == "ready"
    assert "fresh/eth0" in mode.owned.values() and "fresh/eth0" in mode.links
    assert "dead/eth0" not in mode.owned.values() and "dead/eth0" not in mode.links
    # the plugins' sweep ran with the finished ADD in its live set
    assert mode.swept_live == [{"fresh/eth0"}]
    store.close()


async def test_pod_requests_wait_for_an_exclusive_pass(tmp_path: Path) -> None:
    svc, _mode, store = _service(tmp_path)
    order: list[str] = []
    async with trio.open_nursery() as nursery:
        async def sweep() -> None:
            async with svc.exclusive():
                order.append("sweep-start")
                await trio.sleep(0.1)
                order.append("sweep-end")

        async def add() -> None:
            await trio.sleep(0.01)
            r = await svc.handle(_add("c1", "p"))
            order.append("add-done" if r["ok"] else "add-failed")

        nursery.start_soon(sweep)
        nursery.start_soon(add)
    assert order == ["sweep-start", "sweep-end", "add-done"]
    reports = await svc.repair()
    assert reports == [RepairReport(checked=1)]
    store.close()
