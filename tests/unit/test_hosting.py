"""Hook wiring: inline plugins registered into a fresh plugin manager."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import trio
import trio.lowlevel

from terway_agent._hosting import (
    ModeNotInstalled,
    PluginHost,
    PluginValidationError,
    describe_installed,
    installed,
)
from terway_agent.errors import FeatureNotSupported, ModeNotImplemented
from terway_agent.plugin import (
    Allocation,
    IPAssignment,
    LinkResult,
    ModeInfo,
    PodRef,
    PodRequest,
    RepairReport,
    Status,
    hookimpl,
)


def info(name: str = "inline", **kw: object) -> ModeInfo:
    return ModeInfo(name=name, version="9.9", summary="inline test mode", **kw)


class FullMode:
    """A complete inline mode that records calls."""

    def __init__(self, name: str = "inline") -> None:
        self.name = name
        self.calls: list[str] = []

    @hookimpl
    def terway_mode_info(self) -> ModeInfo:
        return info(self.name)

    @hookimpl
    async def terway_allocate(self, ctx, request):
        self.calls.append("allocate")
        await trio.lowlevel.checkpoint()
        return Allocation(kind="local", ipv4=IPAssignment("10.0.0.2", 32))

    @hookimpl
    async def terway_release(self, ctx, request, allocation):
        self.calls.append("release")

    @hookimpl
    async def terway_setup_link(self, ctx, request, allocation):
        self.calls.append("setup_link")
        return LinkResult(state={"x": 1})

    @hookimpl
    async def terway_teardown_link(self, ctx, request, allocation, link):
        self.calls.append("teardown_link")

    @hookimpl
    async def terway_check_link(self, ctx, request, allocation, link):
        return ["route missing"]

    @hookimpl
    async def terway_status(self, ctx):
        return Status(50, "no IPs")


REQ = PodRequest(verb="ADD", container_id="c1", ifname="eth0", netns="/run/netns/x", pod=PodRef("ns", "p"))


async def test_full_mode_hooks_are_awaited_through_the_facade() -> None:
    host = PluginHost()
    mode = FullMode()
    got = host.register_mode(mode, "inline")
    assert got.name == "inline"
    ctx = SimpleNamespace()
    alloc = await host.allocate(ctx, REQ)
    assert alloc.ipv4 is not None and alloc.ipv4.address == "10.0.0.2"
    link = await host.setup_link(ctx, REQ, alloc)
    assert link.state == {"x": 1}
    assert await host.check_link(ctx, REQ, alloc, link) == ["route missing"]
    await host.teardown_link(ctx, REQ, alloc, link)
    await host.release(ctx, REQ, alloc)
    assert mode.calls == ["allocate", "setup_link", "teardown_link", "release"]
    assert (await host.status(ctx)).code == 50
    hooks = host.implemented_hooks()["mode:inline"]
    assert "terway_allocate" in hooks and "terway_status" in hooks


def test_misspelt_hook_is_an_error() -> None:
    class Typo:
        @hookimpl
        def terway_mode_info(self):
            return info()

        @hookimpl
        async def terway_alocate(self, ctx, request):  # misspelt
            return None

    with pytest.raises(PluginValidationError, match="terway_alocate"):
        PluginHost().register_mode(Typo(), "inline")


def test_unmarked_hook_function_is_an_error() -> None:
    class Unmarked:
        @hookimpl
        def terway_mode_info(self):
            return info()

        async def terway_allocate(self, ctx, request):  # forgot @hookimpl
            return None

    with pytest.raises(PluginValidationError, match="not marked with @hookimpl"):
        PluginHost().register_mode(Unmarked(), "inline")


def test_sync_implementation_of_async_hook_is_an_error() -> None:
    class SyncAlloc:
        @hookimpl
        def terway_mode_info(self):
            return info(implemented=False)

        @hookimpl
        def terway_allocate(self, ctx, request):
            return None

    with pytest.raises(PluginValidationError, match="must be 'async def'"):
        PluginHost().register_mode(SyncAlloc(), "inline")


def test_async_implementation_of_sync_hook_is_an_error() -> None:
    class AsyncInfo:
        @hookimpl
        async def terway_mode_info(self):
            return info()

    with pytest.raises(PluginValidationError, match="plain function"):
        PluginHost().register_mode(AsyncInfo(), "inline")


def test_unknown_argument_in_hookimpl_is_an_error() -> None:
    class BadArgs:
        @hookimpl
        def terway_mode_info(self):
            return info(implemented=False)

        @hookimpl
        async def terway_status(self, ctx, verbose):
            return None

    with pytest.raises(PluginValidationError, match="verbose"):
        PluginHost().register_mode(BadArgs(), "inline")


def test_implemented_mode_lacking_hooks_is_an_error() -> None:
    class Half:
        @hookimpl
        def terway_mode_info(self):
            return info()

        @hookimpl
        async def terway_allocate(self, ctx, request):
            return None

    with pytest.raises(PluginValidationError, match="lacks hooks terway_release"):
        PluginHost().register_mode(Half(), "inline")


def test_mode_name_must_match_entry_point_name() -> None:
    with pytest.raises(PluginValidationError, match="describes itself as inline"):
        PluginHost().register_mode(FullMode(), "other")


def test_second_mode_is_refused() -> None:
    host = PluginHost()
    host.register_mode(FullMode(), "inline")
    with pytest.raises(PluginValidationError, match="one mode per agent"):
        host.register_mode(FullMode("b"), "b")


def test_extension_cannot_implement_mode_hooks() -> None:
    class Ext:
        @hookimpl
        async def terway_allocate(self, ctx, request):
            return None

    with pytest.raises(PluginValidationError, match="only the selected mode"):
        PluginHost().register_extension(Ext(), "ext")


async def test_extensions_join_shared_hooks_and_worst_status_wins() -> None:
    host = PluginHost()
    host.register_mode(FullMode(), "inline")
    seen: list[object] = []

    class Ext:
        @hookimpl
        async def terway_status(self, ctx):
            return Status(51, "datapath degraded")

        @hookimpl
        async def terway_policy(self, ctx, pod, allocation, policies):
            seen.append((pod, tuple(policies)))

        @hookimpl
        async def terway_repair(self, ctx, live):
            return RepairReport(checked=len(live), repaired=("rule 512",))

        @hookimpl
        async def terway_gc(self, ctx, live):
            return ["leftover veth could not be removed"]

    host.register_extension(Ext(), "ext")
    ctx = SimpleNamespace()
    st = await host.status(ctx)
    assert (st.code, st.message) == (51, "datapath degraded")
    alloc = Allocation(kind="local", ipv4=IPAssignment("10.0.0.2", 32))
    await host.policy(ctx, PodRef("ns", "p"), alloc, [{"podSelector": {}}])
    assert seen == [(PodRef("ns", "p"), ({"podSelector": {}},))]
    reports = await host.repair(ctx, [])
    assert reports == [RepairReport(checked=0, repaired=("rule 512",))]
    assert await host.gc(ctx, []) == ["leftover veth could not be removed"]


async def test_shared_hooks_run_in_pluggy_order_and_an_error_propagates() -> None:
    host = PluginHost()
    host.register_mode(FullMode(), "inline")
    ran = []

    class Boom:
        @hookimpl
        async def terway_start(self, ctx, nursery):
            raise RuntimeError("cannot start")

    class Later:
        @hookimpl(tryfirst=True)
        async def terway_start(self, ctx, nursery):
            ran.append("later")

    host.register_extension(Boom(), "boom")
    host.register_extension(Later(), "later")
    with pytest.raises(RuntimeError, match="cannot start"):
        await host.start(SimpleNamespace(), None)
    assert ran == ["later"]


async def test_not_implemented_mode_refuses_with_a_clear_error() -> None:
    class Declared:
        @hookimpl
        def terway_mode_info(self):
            return info(implemented=False)

    host = PluginHost()
    host.register_mode(Declared(), "inline")
    with pytest.raises(ModeNotImplemented, match="mode inline is not implemented yet"):
        await host.allocate(SimpleNamespace(), REQ)


def test_selected_mode_not_installed_names_mode_reason_and_installed() -> None:
    with pytest.raises(ModeNotInstalled) as info_:
        PluginHost().load_mode("warp_drive", chosen_by="label terway.alibabacloud.com/network-mode=warp_drive")
    msg = str(info_.value)
    assert "mode warp_drive" in msg
    assert "label terway.alibabacloud.com/network-mode=warp_drive" in msg
    for name in ("shared_eni", "exclusive_eni", "trunk", "ipvlan_ebpf", "datapath_v2", "example"):
        assert name in msg


def test_all_modes_and_the_example_are_installed_and_describable() -> None:
    names = {p.name for p in installed()}
    assert {"shared_eni", "exclusive_eni", "trunk", "ipvlan_ebpf", "datapath_v2", "example"} <= names
    rows = {r["name"]: r for r in describe_installed()}
    for name in names:
        assert "error" not in rows[name], rows[name]
        assert "terway_mode_info" in rows[name]["hooks"]
    assert rows["example"]["implemented"] is True
    assert "terway_allocate" in rows["example"]["hooks"]
    assert rows["exclusive_eni"]["exclusivity"] == "exclusive"
    assert rows["shared_eni"]["pod_limit"] == "(EniQuantity - 1) x EniPrivateIpAddressQuantity"


async def test_policies_without_an_enforcing_plugin_are_refused_not_ignored() -> None:
    host = PluginHost()
    host.register_mode(FullMode(), "inline")  # implements no terway_policy
    ctx = SimpleNamespace()
    alloc = Allocation(kind="local", ipv4=IPAssignment("10.0.0.2", 32))
    await host.policy(ctx, PodRef("ns", "p"), alloc, [])  # nothing to enforce: fine
    with pytest.raises(FeatureNotSupported) as err:
        await host.policy(ctx, PodRef("ns", "p"), alloc, [{"podSelector": {}}])
    assert err.value.cni_code == 104
    assert "ns/p" in err.value.message and "1 network policy" in err.value.message
    assert "inline" in err.value.message
