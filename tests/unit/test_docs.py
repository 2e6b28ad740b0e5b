"""The hook reference stays complete: every hook documented with its exact signature."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from terway_agent import hookspecs

DOCS = Path(__file__).resolve().parents[2] / "docs" / "hooks.md"
HOOKS = sorted(
    name for name, fn in vars(hookspecs).items() if name.startswith("terway_") and callable(fn)
)


def _sections() -> dict[str, str]:
    text = DOCS.read_text()
    parts = re.split(r"^### ", text, flags=re.M)[1:]
    return {p.split("\n", 1)[0].strip(): p for p in parts}


def test_there_are_hooks() -> None:
    assert {"terway_allocate", "terway_release", "terway_setup_link", "terway_teardown_link",
            "terway_check_link", "terway_policy"} <= set(HOOKS)


@pytest.mark.parametrize("name", HOOKS)
def test_hook_is_documented_with_its_signature(name: str) -> None:
    params = ", ".join(inspect.signature(getattr(hookspecs, name)).parameters)
    heading = f"{name}({params})"
    sections = _sections()
    assert heading in sections, f"docs/hooks.md lacks a '### {heading}' section"
    body = sections[heading]
    kind = "*Async." if name in hookspecs.ASYNC_HOOKS else "*Sync."
    assert kind in body, f"{heading}: the section must say {kind!r}"
    role = "Mode hook" if name in hookspecs.MODE_HOOKS else "Shared hook"
    assert role in body, f"{heading}: the section must say {role!r}"
    for must in ("**When:**", "**Task:**", "**Returns**", "None", "Cancellation", "dempotency"):
        assert must in body, f"{heading}: the section lacks {must!r}"


def test_no_documented_hook_is_stale() -> None:
    documented = {h.split("(")[0] for h in _sections()}
    assert documented == set(HOOKS)
