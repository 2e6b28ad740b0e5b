"""The example mode with delays and an exclusivity chosen by environment
variables, so tests can kill the agent in the middle of a step.

TW_SLOW_ALLOCATE / TW_SLOW_SETUP / TW_SLOW_START / TW_SLOW_TEARDOWN / TW_SLOW_RELEASE:
seconds to sleep inside the hook (teardown and release sleep before doing their work).
TW_REPAIR_FAIL_FILE: while this file exists, the repair pass fails as a whole.
TW_EXCLUSIVITY: "shared" (default) or "exclusive".
TW_MODE_NAME: the mode name (default "example").
"""

from __future__ import annotations

import dataclasses
import os

import trio

import terway_mode_example as base
from terway_agent.plugin import hookimpl


def _delay(name: str) -> float:
    return float(os.environ.get(name, "0") or 0)


@hookimpl
def terway_mode_info():
    info = base.terway_mode_info()
    return dataclasses.replace(
        info,
        name=os.environ.get("TW_MODE_NAME", info.name),
        exclusivity=os.environ.get("TW_EXCLUSIVITY", "shared"),
    )


terway_validate_config = base.terway_validate_config
terway_check_link = base.terway_check_link
terway_gc = base.terway_gc


@hookimpl
async def terway_start(ctx, nursery):
    await trio.sleep(_delay("TW_SLOW_START"))


@hookimpl
async def terway_allocate(ctx, request):
    alloc = await base.terway_allocate(ctx, request)
    await trio.sleep(_delay("TW_SLOW_ALLOCATE"))
    return alloc


@hookimpl
async def terway_setup_link(ctx, request, allocation):
    await trio.sleep(_delay("TW_SLOW_SETUP"))
    return await base.terway_setup_link(ctx, request, allocation)


@hookimpl
async def terway_teardown_link(ctx, request, allocation, link):
    await trio.sleep(_delay("TW_SLOW_TEARDOWN"))
    await base.terway_teardown_link(ctx, request, allocation, link)


@hookimpl
async def terway_release(ctx, request, allocation):
    await trio.sleep(_delay("TW_SLOW_RELEASE"))
    await base.terway_release(ctx, request, allocation)


@hookimpl
async def terway_repair(ctx, live):
    flag = os.environ.get("TW_REPAIR_FAIL_FILE")
    if flag and os.path.exists(flag):
        raise RuntimeError(f"repair cannot run ({flag} exists)")
    return await base.terway_repair(ctx, live)
