"""Backoff policies by key, with the numbers of the original Terway.

A :class:`Backoff` follows Kubernetes' ``wait.Backoff`` as the original uses it:
``steps`` is the number of *attempts*; between attempts the delay starts at
``duration``, is multiplied by ``factor`` after each attempt (capped by
``cap``) and each delay is jittered up by ``uniform(0, jitter) * delay``.
``initial_delay`` is slept once before the first attempt (used by the
status waits, as the original's ``ExtendedBackoff``).

Overrides (``eni_conf.backoff_override``) are partial: ``{"eni_create":
{"duration": "2s", "steps": 4}}`` keeps the other fields of the default.
Durations are seconds (number) or Go-style strings (``"500ms"``, ``"10s"``,
``"1m30s"``); capitalised Go field names (``Duration``, ``Factor``, ``Jitter``,
``Steps``, ``Cap``, ``InitialDelay``) are accepted as aliases.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import trio

from terway_agent.errors import ConfigError

T = TypeVar("T")

DEFAULT = "default"
ENI_CREATE = "eni_create"
ENI_OPS = "eni_ops"
ENI_RELEASE = "eni_release"
ENI_IP_OPS = "eni_ip_ops"
WAIT_ENI_STATUS = "wait_eni_status"
WAIT_MEMBER_ENI_STATUS = "wait_member_eni_status"
WAIT_PODENI_STATUS = "wait_podeni_status"


@dataclass(frozen=True)
class Backoff:
    """One backoff policy.

    :param duration: first delay between attempts, seconds.
    :param factor: multiplier applied to the delay after each attempt (1 = constant).
    :param jitter: each delay becomes ``delay * (1 + uniform(0, jitter))``; 0 = none.
    :param steps: number of attempts (>= 1).
    :param initial_delay: sleep before the first attempt (status waits only).
    :param cap: upper bound of the un-jittered delay, seconds; ``None`` = unbounded.
    """

    duration: float
    factor: float = 1.0
    jitter: float = 0.0
    steps: int = 1
    initial_delay: float = 0.0
    cap: float | None = None

    def delays(self, rng: random.Random | None = None) -> Iterator[float]:
        """The ``steps - 1`` delays slept between attempts, jittered."""
        rnd = rng or random
        delay = self.duration
        for _ in range(self.steps - 1):
            d = delay
            if self.jitter > 0:
                d = d + rnd.random() * self.jitter * d
            yield d
            if self.factor:
                delay = delay * self.factor
                if self.cap is not None and delay > self.cap:
                    delay = self.cap

    def max_total(self) -> float:
        """Upper bound of the time spent sleeping (initial delay + every delay at full jitter)."""
        total = self.initial_delay
        delay = self.duration
        for _ in range(self.steps - 1):
            total += delay * (1 + max(self.jitter, 0.0))
            if self.factor:
                delay = delay * self.factor
                if self.cap is not None and delay > self.cap:
                    delay = self.cap
        return total


#: Defaults of the original (pkg/backoff, 2026 snapshot; see docs/cloud-client.md).
DEFAULT_BACKOFFS: Mapping[str, Backoff] = {
    DEFAULT: Backoff(duration=2.0, factor=1.5, jitter=0.3, steps=6),
    ENI_CREATE: Backoff(duration=10.0, factor=2.0, jitter=0.3, steps=2),
    ENI_OPS: Backoff(duration=5.0, factor=2.0, jitter=0.3, steps=6),
    ENI_RELEASE: Backoff(duration=4.0, factor=2.0, jitter=0.5, steps=8),
    ENI_IP_OPS: Backoff(duration=5.0, factor=1.0, jitter=1.3, steps=6),
    WAIT_ENI_STATUS: Backoff(duration=3.0, factor=1.5, jitter=0.5, steps=8, initial_delay=3.0),
    WAIT_MEMBER_ENI_STATUS: Backoff(duration=1.0, factor=1.5, jitter=0.5, steps=8, initial_delay=2.0),
    WAIT_PODENI_STATUS: Backoff(duration=1.0, factor=1.0, jitter=0.3, steps=100),
}

_FIELD_ALIASES = {
    "duration": "duration",
    "Duration": "duration",
    "factor": "factor",
    "Factor": "factor",
    "jitter": "jitter",
    "Jitter": "jitter",
    "steps": "steps",
    "Steps": "steps",
    "cap": "cap",
    "Cap": "cap",
    "initial_delay": "initial_delay",
    "initialDelay": "initial_delay",
    "InitialDelay": "initial_delay",
}
def parse_duration(value: Any, field: str) -> float:
    """Seconds from a number of seconds or a Go duration string (``"1m30s"``, ``"500ms"``)."""
    from terway_agent.config import parse_duration as _parse

    return _parse(field, value)


def _parse_entry(key: str, raw: Any, base: Backoff, field_prefix: str) -> Backoff:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{field_prefix}.{key}", raw, "an object with duration/factor/jitter/steps")
    changes: dict[str, Any] = {}
    for name, value in raw.items():
        field = f"{field_prefix}.{key}.{name}"
        target = _FIELD_ALIASES.get(name)
        if target is None:
            raise ConfigError(field, value, "one of duration, factor, jitter, steps, cap, initial_delay")
        if target in ("duration", "initial_delay"):
            changes[target] = parse_duration(value, field)
        elif target == "cap":
            changes[target] = None if value is None else parse_duration(value, field)
        elif target == "steps":
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(field, value, "an integer >= 1 (number of attempts)")
            changes[target] = value
        else:  # factor, jitter
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ConfigError(field, value, "a non-negative number")
            changes[target] = float(value)
    return replace(base, **changes)


def resolve_backoffs(
    overrides: Mapping[str, Any] | None, field_prefix: str = "backoff_override"
) -> dict[str, Backoff]:
    """The default policies with ``overrides`` applied; raises :class:`ConfigError` on bad input.

    The key ``""`` (the original's name of the default policy) is accepted as ``default``.
    """
    result = dict(DEFAULT_BACKOFFS)
    for key, raw in (overrides or {}).items():
        name = DEFAULT if key == "" else key
        if name not in DEFAULT_BACKOFFS:
            raise ConfigError(
                f"{field_prefix}.{key}", raw, f"a backoff key, one of {sorted(DEFAULT_BACKOFFS)}"
            )
        result[name] = _parse_entry(key, raw, result[name], field_prefix)
    return result


async def poll(
    backoff: Backoff,
    condition: Callable[[], Awaitable[T | None]],
    *,
    rng: random.Random | None = None,
) -> tuple[bool, T | None]:
    """Call ``condition`` up to ``backoff.steps`` times until it returns something not ``None``.

    Sleeps ``backoff.initial_delay`` first and the backoff's delays in between.
    Returns ``(True, value)`` on success, ``(False, None)`` when the attempts ran out.
    Exceptions of ``condition`` propagate.
    """
    if backoff.initial_delay > 0:
        await trio.sleep(backoff.initial_delay)
    delays = backoff.delays(rng)
    while True:
        value = await condition()
        if value is not None:
            return True, value
        delay = next(delays, None)
        if delay is None:
            return False, None
        await trio.sleep(delay)
