"""Instance-type limits and the pod limit of every mode (seed 003).

=====================  ==================================================  ==================
mode                   pod limit                                           node must have
=====================  ==================================================  ==================
``shared``             (EniQuantity - 1) x EniPrivateIpAddressQuantity     > 11
``trunk`` (members)    EniTotalQuantity - EniQuantity (0 without trunk)    > 0
``exclusive``          EniQuantity - 1                                     > 6
=====================  ==================================================  ==================

Limits come from ``DescribeInstanceTypes`` and are cached on disk as JSON
(``<state_dir>/instance-limits.json``, keyed by instance type) for 15 days like
the original's in-memory cache, so a restarting agent does not call the API.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio

from terway_agent.log import get_logger
from terway_agent.types import InstanceLimits

from .errors import CloudNotFound

if TYPE_CHECKING:
    from .client import CloudClient

log = get_logger(__name__)

CACHE_FILE = "instance-limits.json"
CACHE_TTL = 15 * 24 * 3600.0
_CACHE_VERSION = 1

class LimitsCache:
    """The on-disk cache of :class:`InstanceLimits` under ``state_dir``.

    :param state_dir: directory of ``instance-limits.json`` (created if missing).
    :param ttl: validity of an entry, seconds (15 days).
    :param now: wall clock in seconds since the epoch (for tests).
    """

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        *,
        ttl: float = CACHE_TTL,
        now: Callable[[], float] = time.time,
    ):
        self.path = os.path.join(os.fspath(state_dir), CACHE_FILE)
        self.ttl = ttl
        self._now = now

    def _load_sync(self) -> dict[str, Any]:
        try:
            with open(self.path, encoding="utf-8") as fh:
                doc = json.load(fh)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("limits.cache.unreadable", path=self.path, error=str(exc))
            return {}
        if (
            not isinstance(doc, dict)
            or doc.get("version") != _CACHE_VERSION
            or not isinstance(doc.get("entries"), dict)
        ):
            log.warning("limits.cache.unreadable", path=self.path, error="unexpected layout")
            return {}
        return doc["entries"]

    def _store_sync(self, instance_type: str, limits: InstanceLimits) -> None:
        entries = self._load_sync()
        entries[instance_type] = {"fetched_at": self._now(), "limits": limits.to_json()}
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        tmp = f"{self.path}.tmp.{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump({"version": _CACHE_VERSION, "entries": entries}, fh, indent=1, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)

    async def get(self, instance_type: str) -> InstanceLimits | None:
        """The cached limits of ``instance_type`` if present and younger than ``ttl``."""
        entries = await trio.to_thread.run_sync(self._load_sync)
        entry = entries.get(instance_type)
        if not isinstance(entry, dict):
            return None
        try:
            fetched = float(entry["fetched_at"])
            limits = InstanceLimits.from_json(entry["limits"])
        except (KeyError, TypeError, ValueError):
            return None
        age = self._now() - fetched
        if age < 0 or age >= self.ttl:
            return None
        return limits

    async def put(self, limits: InstanceLimits) -> None:
        """Store ``limits`` (atomically replacing the file)."""
        await trio.to_thread.run_sync(self._store_sync, limits.instance_type, limits)


async def get_instance_limits(
    client: CloudClient,
    instance_type: str,
    *,
    state_dir: str | os.PathLike[str],
    cache: LimitsCache | None = None,
) -> InstanceLimits:
    """Limits of ``instance_type``: from the disk cache if fresh, else ``DescribeInstanceTypes``.

    :raises CloudNotFound: the API does not know the instance type.
    """
    cache = cache or LimitsCache(state_dir)
    cached = await cache.get(instance_type)
    if cached is not None:
        return cached
    found = await client.describe_instance_types([instance_type])
    for item in found:
        if item.instance_type == instance_type:
            await cache.put(item)
            log.info(
                "limits.fetched",
                instance_type=instance_type,
                eni_quantity=item.eni_quantity,
                eni_private_ip_quantity=item.eni_private_ip_quantity,
                eni_total_quantity=item.eni_total_quantity,
                trunk_supported=item.trunk_supported,
            )
            return item
    raise CloudNotFound(
        f"DescribeInstanceTypes does not know instance type {instance_type!r}",
        api="DescribeInstanceTypes",
        code="InvalidInstanceType.NotFound",
    )
