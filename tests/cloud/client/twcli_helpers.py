"""Helpers shared by the cloud-client tests (settings for the emulator, fast backoffs)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from terway_agent.cloud.client import CloudClient
from terway_agent.cloud.settings import CloudSettings

#: Backoffs scaled down so retries take milliseconds (a legitimate ``backoff_override``).
FAST_BACKOFFS: dict[str, dict[str, Any]] = {
    "default": {"duration": 0.02, "jitter": 0},
    "eni_create": {"duration": 0.02, "steps": 3, "jitter": 0},
    "eni_ops": {"duration": 0.02, "jitter": 0},
    "eni_release": {"duration": 0.02, "jitter": 0},
    "eni_ip_ops": {"duration": 0.02, "jitter": 0},
    "wait_eni_status": {"duration": 0.02, "factor": 1, "jitter": 0, "steps": 100, "initial_delay": 0},
    "wait_member_eni_status": {"duration": 0.02, "factor": 1, "jitter": 0, "steps": 100, "initial_delay": 0},
}

MakeClient = Callable[..., CloudClient]


def settings_for(emulator: Any, **overrides: Any) -> CloudSettings:
    """CloudSettings pointing at the emulator (node1's metadata), fast backoffs."""
    kwargs: dict[str, Any] = {
        "region_id": emulator.region_id,
        "endpoint": emulator.endpoint,
        "protocol": "http",
        "access_key_id": emulator.access_key_id,
        "access_key_secret": emulator.access_key_secret,
        "metadata_endpoint": emulator.metadata_url(emulator.node1),
        "backoff_override": FAST_BACKOFFS,
        "request_timeout": 5.0,
        "connect_timeout": 2.0,
        "metadata_wait_timeout": 5.0,
        "metadata_poll_interval": 0.05,
    }
    kwargs.update(overrides)
    return CloudSettings(**kwargs)
