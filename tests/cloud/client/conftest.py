"""Fixtures of the cloud-client tests: a :class:`CloudClient` wired to the ``emulator`` fixture."""

from __future__ import annotations

from typing import Any

import pytest
from twcli_helpers import MakeClient, settings_for

from terway_agent.cloud.client import CloudClient


@pytest.fixture
def make_client(emulator: Any) -> MakeClient:
    """``make_client(**settings_overrides)`` -> a CloudClient for the emulator."""

    def make(*, instance_id: str | None = None, credentials: Any = None, **overrides: Any) -> CloudClient:
        return CloudClient(
            settings_for(emulator, **overrides), instance_id=instance_id, credentials=credentials
        )

    return make
