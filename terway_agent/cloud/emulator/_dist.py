"""Latency distributions: fixed, uniform, normal with a floor."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from terway_agent.errors import ConfigError


@dataclass(frozen=True)
class Distribution:
    """A delay in seconds drawn per use.

    ``kind`` is ``fixed`` (``value``), ``uniform`` (``low``..``high``) or
    ``normal`` (``mean``, ``stddev``, never below ``floor``).
    """

    kind: str = "fixed"
    value: float = 0.0
    low: float = 0.0
    high: float = 0.0
    mean: float = 0.0
    stddev: float = 0.0
    floor: float = 0.0

    def sample(self, rng: random.Random) -> float:
        if self.kind == "fixed":
            return self.value
        if self.kind == "uniform":
            return rng.uniform(self.low, self.high)
        return max(self.floor, rng.gauss(self.mean, self.stddev))

    def to_dict(self) -> dict[str, Any]:
        if self.kind == "fixed":
            return {"kind": "fixed", "value": self.value}
        if self.kind == "uniform":
            return {"kind": "uniform", "low": self.low, "high": self.high}
        return {"kind": "normal", "mean": self.mean, "stddev": self.stddev, "floor": self.floor}


ZERO = Distribution()


def _num(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(field, value, "a number of seconds >= 0")
    if value < 0:
        raise ConfigError(field, value, "a number of seconds >= 0")
    return float(value)


def parse_distribution(value: Any, field: str) -> Distribution:
    """Parse ``0.05`` or ``{"kind": "uniform", "low": .., "high": ..}`` etc.

    Raises :class:`ConfigError` naming ``field`` for anything else.
    """
    if isinstance(value, int | float) and not isinstance(value, bool):
        return Distribution(kind="fixed", value=_num(value, field))
    if not isinstance(value, dict):
        raise ConfigError(
            field, value, "seconds, or a mapping with kind fixed|uniform|normal and its parameters"
        )
    kind = value.get("kind", "fixed")
    allowed = {
        "fixed": {"value"},
        "uniform": {"low", "high"},
        "normal": {"mean", "stddev", "floor"},
    }
    if kind not in allowed:
        raise ConfigError(f"{field}.kind", kind, "one of fixed, uniform, normal")
    extra = set(value) - allowed[kind] - {"kind"}
    if extra:
        raise ConfigError(f"{field}", sorted(extra), f"only the keys {sorted(allowed[kind])} for kind {kind}")
    if kind == "fixed":
        return Distribution(kind="fixed", value=_num(value.get("value", 0), f"{field}.value"))
    if kind == "uniform":
        if "low" not in value or "high" not in value:
            raise ConfigError(field, value, "uniform needs low and high")
        low, high = _num(value["low"], f"{field}.low"), _num(value["high"], f"{field}.high")
        if high < low:
            raise ConfigError(f"{field}.high", high, f"a value >= low ({low})")
        return Distribution(kind="uniform", low=low, high=high)
    if "mean" not in value or "stddev" not in value:
        raise ConfigError(field, value, "normal needs mean and stddev (floor optional)")
    return Distribution(
        kind="normal",
        mean=_num(value["mean"], f"{field}.mean"),
        stddev=_num(value["stddev"], f"{field}.stddev"),
        floor=_num(value.get("floor", 0.0), f"{field}.floor"),
    )
