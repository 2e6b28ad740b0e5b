"""Settings of the Alibaba Cloud client.

:class:`CloudSettings` is a frozen dataclass validated on construction; every
bad value raises :class:`terway_agent.errors.ConfigError` naming the field,
the value and what was expected.  :meth:`CloudSettings.from_eni_conf` maps the
original's ``eni_conf`` keys (``access_key``, ``access_secret``,
``credential_path``, ``rate_limit``, ``backoff_override``, ``eni_tags``,
``resource_group_id``).

Secrets (``access_key_secret``) never appear in ``repr()``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from terway_agent.errors import ConfigError

from ._backoff import Backoff, resolve_backoffs
from ._ratelimit import validate_rate_limits

_REGION = re.compile(r"^[a-z]{2,}(-[a-z0-9]+)+$")
_HOSTPORT = re.compile(r"^[A-Za-z0-9.\-]+(:\d{1,5})?$|^\[[0-9A-Fa-f:.]+\](:\d{1,5})?$")

#: Tag added to every ENI the agent creates (as the original).
CREATOR_TAG = ("creator", "terway")


def _frozen_map(value: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType(dict(value or {}))


@dataclass(frozen=True)
class CloudSettings:
    """How to reach and authenticate to the Alibaba Cloud OpenAPI and the metadata service.

    :param region_id: ``cn-hangzhou``; required.
    :param endpoint: ``host[:port]`` of the ECS OpenAPI; ``None`` = the SDK's regional default
        for ``network`` (``ecs-vpc.<region>...`` inside a VPC).
    :param protocol: ``https`` (default) or ``http``.
    :param network: endpoint network type used when ``endpoint`` is ``None`` (``vpc`` like the
        original, or ``None`` for the public endpoint).
    :param access_key_id: static AccessKey id; with ``access_key_secret`` it wins over the other sources.
    :param access_key_secret: static AccessKey secret (never shown in reprs or logs).
    :param credential_path: the ACK addon token file (``/var/addon/token-config``): used when no
        static AccessKey is set.  With neither, the instance's RAM role from the metadata service.
    :param metadata_endpoint: base URL of the instance metadata service; may carry a path prefix.
    :param rate_limit: ``{OpenAPI name: calls per minute}`` overrides of the token buckets.
    :param backoff_override: ``{backoff key: {duration, factor, jitter, steps, ...}}`` overrides.
    :param eni_tags: tags put on every created ENI (``creator=terway`` is always added).
    :param resource_group_id: resource group of created ENIs.
    :param request_timeout: read timeout of one OpenAPI request, seconds.
    :param connect_timeout: connect timeout of one OpenAPI request, seconds.
    :param max_concurrent_calls: worker threads used for SDK calls at once.
    :param metadata_wait_timeout: how long :meth:`CloudClient.create_and_attach_eni` waits for
        the metadata service to show a new ENI (the original: 10 s, polled each second).
    :param metadata_poll_interval: poll interval of that wait, seconds.
    """

    region_id: str
    endpoint: str | None = None
    protocol: str = "https"
    network: str | None = "vpc"
    access_key_id: str = field(default="", repr=False)
    access_key_secret: str = field(default="", repr=False)
    credential_path: str = ""
    metadata_endpoint: str = "http://100.100.100.200"
    rate_limit: Mapping[str, int] = field(default_factory=dict)
    backoff_override: Mapping[str, Any] = field(default_factory=dict)
    eni_tags: Mapping[str, str] = field(default_factory=dict)
    resource_group_id: str = ""
    request_timeout: float = 20.0
    connect_timeout: float = 5.0
    max_concurrent_calls: int = 16
    metadata_wait_timeout: float = 10.0
    metadata_poll_interval: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.region_id, str) or not _REGION.match(self.region_id):
            raise ConfigError("region_id", self.region_id, "a region id like 'cn-hangzhou'")
        if self.endpoint is not None:
            if not isinstance(self.endpoint, str) or not _HOSTPORT.match(self.endpoint):
                raise ConfigError(
                    "endpoint", self.endpoint, "host[:port] without scheme (e.g. '127.0.0.1:8080'), or null"
                )
        if self.protocol not in ("http", "https"):
            raise ConfigError("protocol", self.protocol, "'http' or 'https'")
        for name in ("access_key_id", "access_key_secret", "credential_path", "resource_group_id"):
            if not isinstance(getattr(self, name), str):
                shown = "<redacted>" if name == "access_key_secret" else getattr(self, name)
                raise ConfigError(name, shown, "a string")
        if bool(self.access_key_id) != bool(self.access_key_secret):
            missing = "access_key_secret" if self.access_key_id else "access_key_id"
            raise ConfigError(
                missing, "", "set together with its pair (access_key_id and access_key_secret, or neither)"
            )
        parts = urlsplit(self.metadata_endpoint) if isinstance(self.metadata_endpoint, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(
                "metadata_endpoint", self.metadata_endpoint, "a base URL like 'http://100.100.100.200'"
            )
        object.__setattr__(self, "rate_limit", _frozen_map(validate_rate_limits(self.rate_limit)))
        if not isinstance(self.backoff_override, Mapping):
            raise ConfigError("backoff_override", self.backoff_override, "an object {key: {duration, ...}}")
        resolve_backoffs(self.backoff_override)  # validates
        object.__setattr__(self, "backoff_override", _frozen_map(self.backoff_override))
        if not isinstance(self.eni_tags, Mapping):
            raise ConfigError("eni_tags", self.eni_tags, "an object {tag key: tag value}")
        for k, v in self.eni_tags.items():
            if not isinstance(k, str) or not k or not isinstance(v, str):
                raise ConfigError(f"eni_tags.{k}", v, "non-empty string keys with string values")
        object.__setattr__(self, "eni_tags", _frozen_map(self.eni_tags))
        for name in (
            "request_timeout",
            "connect_timeout",
            "metadata_wait_timeout",
            "metadata_poll_interval",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ConfigError(name, value, "a positive number of seconds")
        if (
            isinstance(self.max_concurrent_calls, bool)
            or not isinstance(self.max_concurrent_calls, int)
            or self.max_concurrent_calls < 1
        ):
            raise ConfigError("max_concurrent_calls", self.max_concurrent_calls, "an integer >= 1")

    # ------------------------------------------------------------------------------------------
    @property
    def backoffs(self) -> dict[str, Backoff]:
        """The effective backoff policies (defaults + ``backoff_override``)."""
        return resolve_backoffs(self.backoff_override)

    @property
    def has_static_credentials(self) -> bool:
        """Whether a static AccessKey pair is configured."""
        return bool(self.access_key_id and self.access_key_secret)

    @classmethod
    def from_eni_conf(cls, eni_conf: Mapping[str, Any], *, region_id: str, **overrides: Any) -> CloudSettings:
        """Build settings from the original's ``eni_conf`` JSON keys.

        ``access_key``/``access_secret``, ``credential_path``, ``rate_limit``,
        ``backoff_override``, ``eni_tags``, ``resource_group_id`` are read;
        ``overrides`` (any field of this class) win over them.
        """
        if not isinstance(eni_conf, Mapping):
            raise ConfigError("eni_conf", eni_conf, "a JSON object")
        values: dict[str, Any] = {
            "region_id": region_id,
            "access_key_id": eni_conf.get("access_key") or "",
            "access_key_secret": eni_conf.get("access_secret") or "",
            "credential_path": eni_conf.get("credential_path") or "",
            "rate_limit": eni_conf.get("rate_limit") or {},
            "backoff_override": eni_conf.get("backoff_override") or {},
            "eni_tags": eni_conf.get("eni_tags") or {},
            "resource_group_id": eni_conf.get("resource_group_id") or "",
        }
        known = {f.name for f in fields(cls)}
        for key, value in overrides.items():
            if key not in known:
                raise ConfigError(key, value, f"a CloudSettings field, one of {sorted(known)}")
            values[key] = value
        return cls(**values)
