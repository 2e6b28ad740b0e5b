"""Loading, validating and calling plugins.

Core code never calls ``pm.hook.*`` directly: it goes through :class:`PluginHost`,
a typed facade with one method per hook that awaits async implementations
(see the module docstring of :mod:`terway_agent.hookspecs`).
"""

from __future__ import annotations

import importlib.metadata as md
import inspect
from collections.abc import Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pluggy

from terway_agent import hookspecs
from terway_agent.errors import ConfigError, FeatureNotSupported, PermanentError
from terway_agent.types import (
    Allocation,
    Attachment,
    LinkResult,
    ModeInfo,
    PodRef,
    PodRequest,
    RepairReport,
    Status,
)

MODES_GROUP = "terway_agent.modes"
EXTENSIONS_GROUP = "terway_agent.extensions"

#: Hooks a mode that says ``implemented=True`` must provide.
REQUIRED_MODE_HOOKS = (
    "terway_allocate",
    "terway_release",
    "terway_setup_link",
    "terway_teardown_link",
    "terway_check_link",
)


class PluginValidationError(PermanentError):
    """A plugin is wrongly written (misspelt hook, sync/async mismatch, ...)."""


class ModeNotInstalled(PermanentError):
    """The selected mode has no installed plugin."""


@dataclass(frozen=True, slots=True)
class InstalledPlugin:
    name: str
    group: str
    distribution: str
    version: str
    value: str


def installed(group: str = MODES_GROUP) -> list[InstalledPlugin]:
    """Plugins installed for ``group`` (from package metadata; nothing is imported)."""
    out: list[InstalledPlugin] = []
    for ep in md.entry_points(group=group):
        dist = ep.dist
        out.append(
            InstalledPlugin(
                name=ep.name,
                group=group,
                distribution=dist.metadata["Name"] if dist is not None else "?",
                version=dist.version if dist is not None else "?",
                value=ep.value,
            )
        )
    return sorted(out, key=lambda p: p.name)


def new_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    return pm


class PluginHost:
    """One agent's plugins: the selected mode plus every extension.

    :param pm: a manager with the hook specs added (``new_manager()``); tests
        pass a fresh one and register inline plugins with :meth:`register_mode`
        / :meth:`register_extension`.
    """

    def __init__(self, pm: pluggy.PluginManager | None = None) -> None:
        self.pm = pm or new_manager()
        self.mode_name: str | None = None
        self._mode_plugin: object | None = None
        self._info: ModeInfo | None = None

    # -- registration --------------------------------------------------------

    def register_mode(self, plugin: object, name: str) -> ModeInfo:
        """Register ``plugin`` as the mode ``name`` and validate it."""
        if self._mode_plugin is not None:
            raise PluginValidationError(
                f"cannot register mode {name}: mode {self.mode_name} is already registered; one mode per agent"
            )
        self._register_checked(plugin, name, is_mode=True)
        self._mode_plugin = plugin
        self.mode_name = name
        info = self._call_info()
        if info.name != name:
            self.pm.unregister(plugin)
            self._mode_plugin = None
            raise PluginValidationError(
                f"mode plugin registered as {name} describes itself as {info.name}; they must match",
                plugin=name,
            )
        missing = [h for h in REQUIRED_MODE_HOOKS if not self._implemented(plugin, h)]
        if info.implemented and missing:
            self.pm.unregister(plugin)
            self._mode_plugin = None
            raise PluginValidationError(
                f"mode {name} says it is implemented but lacks hooks {', '.join(missing)}", plugin=name
            )
        self._info = info
        return info

    def register_extension(self, plugin: object, name: str) -> None:
        self._register_checked(plugin, name, is_mode=False)

    def _register_checked(self, plugin: object, name: str, *, is_mode: bool) -> None:
        """Register ``plugin`` (as ``mode:<name>`` or ``ext:<name>``) and validate its hooks;
        a plugin that fails validation is unregistered again."""
        _check_unmarked(plugin, name)
        try:
            self.pm.register(plugin, name=f"{'mode' if is_mode else 'ext'}:{name}")
        except pluggy.PluginValidationError as exc:
            raise PluginValidationError(f"plugin {name}: {exc}", plugin=name) from exc
        try:
            self._validate(plugin, name, is_mode=is_mode)
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            self.pm.unregister(plugin)
            raise PluginValidationError(f"plugin {name}: {exc}", plugin=name) from exc
        except PluginValidationError:
            self.pm.unregister(plugin)
            raise

    def load_mode(self, name: str, *, chosen_by: str = "") -> ModeInfo:
        """Load the installed mode ``name`` from its entry point."""
        eps = [ep for ep in md.entry_points(group=MODES_GROUP) if ep.name == name]
        if not eps:
            have = ", ".join(p.name for p in installed()) or "none"
            why = f" (chosen by {chosen_by})" if chosen_by else ""
            raise ModeNotInstalled(
                f"mode {name}{why} is not installed; installed modes: {have}",
                mode=name,
                chosen_by=chosen_by,
                installed=have,
            )
        if len(eps) > 1:
            raise PluginValidationError(
                f"mode {name} is provided by several distributions: "
                + ", ".join(str(ep.dist.metadata["Name"]) for ep in eps if ep.dist),
                mode=name,
            )
        plugin = eps[0].load()
        return self.register_mode(plugin, name)

    def load_extensions(self) -> list[str]:
        names = []
        for ep in md.entry_points(group=EXTENSIONS_GROUP):
            self.register_extension(ep.load(), ep.name)
            names.append(ep.name)
        return names

    def _implemented(self, plugin: object, hook: str) -> bool:
        caller = getattr(self.pm.hook, hook)
        return any(impl.plugin is plugin for impl in caller.get_hookimpls())

    def _validate(self, plugin: object, name: str, *, is_mode: bool) -> None:
        for hook_name in dir(self.pm.hook):
            if not hook_name.startswith("terway_"):
                continue
            caller = getattr(self.pm.hook, hook_name)
            for impl in caller.get_hookimpls():
                if impl.plugin is not plugin:
                    continue
                fn = impl.function
                is_coro = inspect.iscoroutinefunction(fn)
                if hook_name in hookspecs.ASYNC_HOOKS and not is_coro:
                    raise PluginValidationError(
                        f"plugin {name}: {hook_name} must be 'async def' (the core awaits it)", plugin=name
                    )
                if hook_name not in hookspecs.ASYNC_HOOKS and is_coro:
                    raise PluginValidationError(
                        f"plugin {name}: {hook_name} must be a plain function, not 'async def'", plugin=name
                    )
                if not is_mode and hook_name in hookspecs.MODE_HOOKS:
                    raise PluginValidationError(
                        f"extension {name} implements {hook_name}, which only the selected mode may implement",
                        plugin=name,
                    )
        if is_mode and not self._implemented(plugin, "terway_mode_info"):
            raise PluginValidationError(f"mode plugin {name} does not implement terway_mode_info", plugin=name)

    # -- describe --------------------------------------------------------------

    def _call_info(self) -> ModeInfo:
        results = self.pm.hook.terway_mode_info()
        if len(results) != 1 or not isinstance(results[0], ModeInfo):
            raise PluginValidationError(
                f"terway_mode_info must return one ModeInfo, got {results!r}", plugin=self.mode_name
            )
        return results[0]

    @property
    def info(self) -> ModeInfo:
        if self._info is None:
            raise PluginValidationError("no mode is registered")
        return self._info

    def validate_config(self, config: Any) -> list[str]:
        problems: list[str] = []
        for result in self.pm.hook.terway_validate_config(config=config, mode=self.mode_name or ""):
            if result:
                problems.extend(result)
        return problems

    def implemented_hooks(self) -> dict[str, list[str]]:
        """``{plugin name: [hooks]}`` for ``terway-agent plugins``."""
        out: dict[str, list[str]] = {}
        for hook_name in sorted(dir(self.pm.hook)):
            if not hook_name.startswith("terway_"):
                continue
            for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
                out.setdefault(impl.plugin_name, []).append(hook_name)
        return out

    # -- calling async hooks ---------------------------------------------------

    async def _await_all(self, coros: Sequence[Coroutine[Any, Any, Any]]) -> list[Any]:
        results = []
        pending = list(coros)
        try:
            while pending:
                coro = pending.pop(0)
                results.append(await coro)
        finally:
            for coro in pending:  # an earlier implementation raised
                coro.close()
        return results

    async def _mode_call(self, hook: str, **kwargs: Any) -> Any:
        coros = getattr(self.pm.hook, hook)(**kwargs)
        if len(coros) != 1:
            for c in coros:
                c.close()
            if not coros:
                from terway_agent.errors import ModeNotImplemented

                raise ModeNotImplemented(self.mode_name or "?", f"it does not implement {hook}")
            raise PluginValidationError(f"{len(coros)} plugins implement {hook}; exactly one mode may")
        return await coros[0]

    async def start(self, ctx: Any, nursery: Any) -> None:
        await self._await_all(self.pm.hook.terway_start(ctx=ctx, nursery=nursery))

    async def stop(self, ctx: Any) -> None:
        await self._await_all(self.pm.hook.terway_stop(ctx=ctx))

    async def allocate(self, ctx: Any, request: PodRequest) -> Allocation:
        result = await self._mode_call("terway_allocate", ctx=ctx, request=request)
        if not isinstance(result, Allocation):
            raise PluginValidationError(f"terway_allocate of {self.mode_name} returned {result!r}, not an Allocation")
        return result

    async def release(self, ctx: Any, request: PodRequest, allocation: Allocation | None) -> None:
        await self._mode_call("terway_release", ctx=ctx, request=request, allocation=allocation)

    async def setup_link(self, ctx: Any, request: PodRequest, allocation: Allocation) -> LinkResult:
        result = await self._mode_call("terway_setup_link", ctx=ctx, request=request, allocation=allocation)
        if not isinstance(result, LinkResult):
            raise PluginValidationError(
                f"terway_setup_link of {self.mode_name} returned {result!r}, not a LinkResult"
            )
        return result

    async def teardown_link(
        self, ctx: Any, request: PodRequest, allocation: Allocation, link: LinkResult | None
    ) -> None:
        await self._mode_call("terway_teardown_link", ctx=ctx, request=request, allocation=allocation, link=link)

    async def check_link(self, ctx: Any, request: PodRequest, allocation: Allocation, link: LinkResult) -> list[str]:
        result = await self._mode_call("terway_check_link", ctx=ctx, request=request, allocation=allocation, link=link)
        if result is None:
            raise PluginValidationError(f"terway_check_link of {self.mode_name} returned None; return [] for no problems")
        return list(result)

    async def policy(
        self, ctx: Any, pod: PodRef, allocation: Allocation, policies: Sequence[Mapping[str, Any]]
    ) -> None:
        if policies and not self.pm.hook.terway_policy.get_hookimpls():
            raise FeatureNotSupported(
                f"pod {pod.namespace}/{pod.name} is selected by {len(policies)} network "
                f"polic{'y' if len(policies) == 1 else 'ies'}, but no loaded plugin of mode "
                f"{self.mode_name} enforces NetworkPolicy",
                mode=self.mode_name,
            )
        await self._await_all(self.pm.hook.terway_policy(ctx=ctx, pod=pod, allocation=allocation, policies=policies))

    async def gc(self, ctx: Any, live: Sequence[Attachment]) -> list[str]:
        errors: list[str] = []
        for result in await self._await_all(self.pm.hook.terway_gc(ctx=ctx, live=live)):
            if result:
                errors.extend(result)
        return errors

    async def repair(self, ctx: Any, live: Sequence[Attachment]) -> list[RepairReport]:
        return [r for r in await self._await_all(self.pm.hook.terway_repair(ctx=ctx, live=live)) if r is not None]

    async def status(self, ctx: Any) -> Status:
        worst = Status()
        for result in await self._await_all(self.pm.hook.terway_status(ctx=ctx)):
            if result is not None and result.code > worst.code:
                worst = result
        return worst


def _check_unmarked(plugin: object, name: str) -> None:
    """A function named like a hook but missing ``@hookimpl`` is an error, not silence."""
    for attr in dir(plugin):
        if not attr.startswith("terway_"):
            continue
        fn = getattr(plugin, attr, None)
        if callable(fn) and not hasattr(fn, f"{hookspecs.PROJECT}_impl"):
            raise PluginValidationError(
                f"plugin {name}: {attr} looks like a hook but is not marked with @hookimpl", plugin=name
            )


def describe_installed(groups: Iterable[str] = (MODES_GROUP, EXTENSIONS_GROUP)) -> list[dict[str, Any]]:
    """Load each installed plugin into its own manager and describe it
    (``terway-agent plugins``).  A plugin that fails to load is reported, not raised."""
    rows: list[dict[str, Any]] = []
    for group in groups:
        for p in installed(group):
            row: dict[str, Any] = {
                "name": p.name,
                "kind": "mode" if group == MODES_GROUP else "extension",
                "distribution": p.distribution,
                "version": p.version,
                "entry_point": p.value,
            }
            host = PluginHost()
            try:
                if group == MODES_GROUP:
                    info = host.load_mode(p.name)
                    row.update(
                        implemented=info.implemented,
                        exclusivity=info.exclusivity,
                        capabilities=sorted(info.capabilities),
                        pod_limit=info.pod_limit_formula,
                        summary=info.summary,
                        mode_version=info.version,
                    )
                else:
                    host.register_extension(md_load(group, p.name), p.name)
                hooks = host.implemented_hooks()
                row["hooks"] = sorted({h for hs in hooks.values() for h in hs})
            except Exception as exc:  # reported to the operator in the table
                row["error"] = f"{type(exc).__name__}: {exc}"
            rows.append(row)
    return rows


def md_load(group: str, name: str) -> object:
    for ep in md.entry_points(group=group):
        if ep.name == name:
            return ep.load()
    raise ConfigError(f"{group}", name, "an installed entry point")
