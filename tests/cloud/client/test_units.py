"""Settings validation, error classification, credentials file format and rotation, limits."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trio
import trio.testing

from terway_agent.cloud import errors as E
from terway_agent.cloud.credentials import (
    AddonTokenFileProvider,
    Credentials,
    StaticCredentialProvider,
    decode_addon_token,
    encode_addon_token,
)
from terway_agent.cloud.limits import InstanceLimits, LimitsCache
from terway_agent.cloud.settings import CloudSettings
from terway_agent.daemon.cloud_service import NodeBelowMinimum, check_pod_limit
from terway_agent.errors import (
    AllocationError,
    ConfigError,
    NotFound,
    PermanentError,
    TemporaryError,
)

SECRET = "twcli-Very-Secret-Value-0123456789"
KEYRING = b"twcli-keyring-16"


# --- settings ----------------------------------------------------------------------------------
def test_settings_repr_hides_the_secret() -> None:
    s = CloudSettings(region_id="cn-hangzhou", access_key_id="LTAIexample", access_key_secret=SECRET)
    assert SECRET not in repr(s)
    assert SECRET not in str(s)
    assert s.has_static_credentials


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"region_id": "Hangzhou"}, "region_id"),
        ({"endpoint": "http://127.0.0.1:80"}, "endpoint"),
        ({"protocol": "ftp"}, "protocol"),
        ({"access_key_id": "LTAI"}, "access_key_secret"),
        ({"access_key_secret": SECRET}, "access_key_id"),
        ({"metadata_endpoint": "100.100.100.200"}, "metadata_endpoint"),
        ({"rate_limit": {"CreateNetworkInterface": -1}}, "rate_limit.CreateNetworkInterface"),
        ({"backoff_override": {"eni_ops": {"steps": "many"}}}, "backoff_override.eni_ops.steps"),
        ({"eni_tags": {"": "x"}}, "eni_tags."),
        ({"request_timeout": 0}, "request_timeout"),
        ({"max_concurrent_calls": 0}, "max_concurrent_calls"),
    ],
)
def test_settings_errors_name_field_value_expected(kwargs: dict, field: str) -> None:
    args = {"region_id": "cn-hangzhou", **kwargs}
    with pytest.raises(ConfigError) as info:
        CloudSettings(**args)
    err = info.value
    assert err.field == field
    assert err.expected
    assert SECRET not in str(err)


def test_settings_from_eni_conf() -> None:
    conf = {
        "access_key": "LTAIexample",
        "access_secret": SECRET,
        "rate_limit": {"DescribeVSwitches": 30},
        "backoff_override": {"eni_create": {"steps": 3}},
        "eni_tags": {"team": "net"},
        "resource_group_id": "rg-1",
        "vswitches": {"cn-hangzhou-k": ["vsw-1"]},
    }
    s = CloudSettings.from_eni_conf(conf, region_id="cn-hangzhou", endpoint="127.0.0.1:9", protocol="http")
    assert s.access_key_id == "LTAIexample"
    assert s.rate_limit == {"DescribeVSwitches": 30}
    assert s.backoffs["eni_create"].steps == 3
    assert dict(s.eni_tags) == {"team": "net"}
    with pytest.raises(ConfigError) as info:
        CloudSettings.from_eni_conf(conf, region_id="cn-hangzhou", endpoit="x")
    assert info.value.field == "endpoit"


# --- error classification ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("code", "status", "cls", "family", "retryable"),
    [
        ("Throttling", 400, E.CloudThrottled, TemporaryError, True),
        ("Throttling.User", 400, E.CloudThrottled, TemporaryError, True),
        ("Throttling.Api", 503, E.CloudThrottled, TemporaryError, True),
        ("InternalError", 500, E.CloudUnavailable, TemporaryError, True),
        ("ServiceUnavailable", 503, E.CloudUnavailable, TemporaryError, True),
        ("SomethingNew", 502, E.CloudUnavailable, TemporaryError, True),
        ("InvalidVSwitchId.IpNotEnough", 403, E.IpNotEnough, AllocationError, False),
        ("QuotaExceeded.PrivateIpAddress", 403, E.IpNotEnough, AllocationError, False),
        ("InvalidVSwitchId.Ipv6NotEnough", 403, E.IpNotEnough, AllocationError, False),
        ("EniPerInstanceLimitExceeded", 403, E.EniPerInstanceLimitExceeded, AllocationError, False),
        ("InvalidOperation.Ipv4CountExceeded", 403, E.IpCountExceeded, AllocationError, False),
        ("InvalidEniId.NotFound", 404, E.CloudNotFound, NotFound, False),
        ("InvalidVSwitchId.NotFound", 404, E.CloudNotFound, NotFound, False),
        ("InvalidParameter", 400, E.CloudInvalidParameter, PermanentError, False),
        ("InvalidParameter.Mismatch", 400, E.CloudInvalidParameter, PermanentError, False),
        ("MissingParameter", 400, E.CloudInvalidParameter, PermanentError, False),
        ("InvalidVSwitchId.Malformed", 400, E.CloudInvalidParameter, PermanentError, False),
        ("SignatureDoesNotMatch", 400, E.CloudAuthError, PermanentError, False),
        ("InvalidAccessKeyId.NotFound", 404, E.CloudAuthError, PermanentError, False),
        ("Forbidden.RAM", 403, E.CloudAuthError, PermanentError, False),
        ("InvalidOperation.InvalidEniState", 403, E.CloudInvalidState, PermanentError, False),
        ("IdempotentFailed", 400, E.IdempotentFailed, PermanentError, False),
        ("Whatever", 400, E.CloudRequestError, PermanentError, False),
    ],
)
def test_error_classes(code: str, status: int, cls: type, family: type, retryable: bool) -> None:
    got = E.error_class_for(code, status)
    assert got is cls
    err = got("x failed", api="CreateNetworkInterface", code=code, request_id="R-1", http_status=status)
    assert isinstance(err, family)
    assert isinstance(err, E.CloudError)
    assert err.retryable is retryable
    assert err.details["code"] == code and err.details["request_id"] == "R-1"
    assert "R-1" in repr(err)


def test_predicates() -> None:
    ip = E.IpNotEnough("x", api="A", code="InvalidVSwitchId.IpNotEnough")
    assert E.is_ip_not_enough(ip)
    assert not E.is_invalid_vswitch(ip)
    assert E.is_invalid_vswitch(E.CloudNotFound("x", api="A", code="InvalidVSwitchId.NotFound"))
    assert E.is_not_found(
        E.CloudNotFound("x", api="A", code="InvalidEniId.NotFound"), "InvalidEniId.NotFound"
    )
    assert not E.is_not_found(
        E.CloudNotFound("x", api="A", code="InvalidEcsId.NotFound"), "InvalidEniId.NotFound"
    )
    assert E.is_throttling_code("Throttling.User") and not E.is_throttling_code("InvalidParameter")


def test_cloud_error_copies() -> None:
    import copy
    import pickle

    err = E.CloudThrottled(
        "slow down", api="A", code="Throttling", request_id="R", http_status=400, retry_after=1.5
    )
    for clone in (copy.copy(err), pickle.loads(pickle.dumps(err))):
        assert type(clone) is E.CloudThrottled
        assert (clone.code, clone.request_id, clone.retry_after) == ("Throttling", "R", 1.5)


# --- credentials -------------------------------------------------------------------------------
def _write_token(path: Path, ak: str, sk: str, token: str, expires: datetime) -> None:
    text = encode_addon_token(
        access_key_id=ak, access_key_secret=sk, security_token=token, expiration=expires, keyring=KEYRING
    )
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def test_addon_token_format_roundtrip() -> None:
    exp = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    text = encode_addon_token(
        access_key_id="STS.id",
        access_key_secret=SECRET,
        security_token="tok",
        expiration=exp,
        keyring=KEYRING,
    )
    doc = json.loads(text)
    assert set(doc) == {"access.key.id", "access.key.secret", "security.token", "expiration", "keyring"}
    assert doc["expiration"] == "2030-01-02T03:04:05Z"
    assert SECRET not in text
    creds = decode_addon_token(text, "/x")
    assert (creds.access_key_id, creds.access_key_secret, creds.security_token) == ("STS.id", SECRET, "tok")
    assert creds.expiration == exp
    assert SECRET not in repr(creds) and "tok" not in repr(creds)


def test_addon_token_decrypts_a_go_style_blob() -> None:
    # Built independently of our encoder: base64(iv || AES-CBC(keyring, pkcs7(value))).
    import base64

    from cryptography.hazmat.primitives import padding
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    key = b"0123456789abcdef0123456789abcdef"
    iv = bytes(range(16))

    def enc(v: str) -> str:
        p = padding.PKCS7(128).padder()
        raw = p.update(v.encode()) + p.finalize()
        e = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
        return base64.b64encode(iv + e.update(raw) + e.finalize()).decode()

    text = json.dumps(
        {
            "access.key.id": enc("AKID"),
            "access.key.secret": enc("exactly-16-bytes"),
            "security.token": enc(""),
            "expiration": "2031-05-06T07:08:09Z",
            "keyring": key.decode(),
        }
    )
    creds = decode_addon_token(text, "/var/addon/token-config")
    assert (creds.access_key_id, creds.access_key_secret, creds.security_token) == (
        "AKID",
        "exactly-16-bytes",
        "",
    )


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda d: d.pop("keyring"), "'keyring'"),
        (lambda d: d.update(keyring="short"), "'keyring' has 5 bytes"),
        (lambda d: d.update({"access.key.secret": "!!notbase64"}), "'access.key.secret' cannot be decrypted"),
        (lambda d: d.update(keyring="another-keyring!"), "cannot be decrypted"),
        (lambda d: d.update(expiration="tomorrow"), "'expiration'"),
    ],
)
def test_addon_token_errors_name_the_field_not_the_value(mutate, needle: str) -> None:
    doc = json.loads(
        encode_addon_token(
            access_key_id="AKID",
            access_key_secret=SECRET,
            security_token="tok",
            expiration=datetime(2030, 1, 1, tzinfo=UTC),
            keyring=KEYRING,
        )
    )
    mutate(doc)
    with pytest.raises(E.CredentialError) as info:
        decode_addon_token(json.dumps(doc), "/var/addon/token-config")
    assert needle in str(info.value)
    assert "/var/addon/token-config" in str(info.value)
    assert SECRET not in str(info.value)


async def test_token_file_rotation_and_expiry(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    path = tmp_path / "twcli-token-config"
    now = datetime.now(UTC)
    _write_token(path, "AK1", "SK1", "T1", now + timedelta(hours=1))
    provider = AddonTokenFileProvider(path, check_interval=1.0)
    c1 = await provider.get()
    assert (c1.access_key_id, c1.access_key_secret, c1.security_token) == ("AK1", "SK1", "T1")
    assert c1.source == f"file:{path}"
    assert await provider.get() is c1  # cached, no re-read
    assert provider.reads == 1

    _write_token(path, "AK2", "SK2", "T2-longer-token", now + timedelta(hours=2))
    assert (await provider.get()) is c1  # within the check interval: not looked at yet
    await trio.sleep(1.5)
    c2 = await provider.get()
    assert (c2.access_key_id, c2.security_token) == ("AK2", "T2-longer-token")
    assert provider.reads == 2

    # The file is not renewed and the credentials expire: a clear error, no secret.
    _write_token(path, "AK3", "SK3", "T3", now - timedelta(seconds=1))
    await trio.sleep(1.5)
    with pytest.raises(E.CredentialError) as info:
        await provider.get()
    assert "expired" in str(info.value) and str(path) in str(info.value)
    assert "SK3" not in str(info.value)


async def test_token_file_near_expiry_is_reread(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    path = tmp_path / "twcli-token-config"
    now = datetime.now(UTC)
    _write_token(path, "AK1", "SK1", "T1", now + timedelta(minutes=2))  # inside refresh_before (5 min)
    provider = AddonTokenFileProvider(path, check_interval=1.0)
    await provider.get()
    await trio.sleep(1.5)
    await provider.get()
    assert provider.reads == 2  # re-read although unchanged, because it is about to expire


async def test_token_file_missing_is_a_clear_error(tmp_path: Path) -> None:
    provider = AddonTokenFileProvider(tmp_path / "twcli-nothing")
    with pytest.raises(E.CredentialError) as info:
        await provider.get()
    assert "twcli-nothing" in str(info.value) and "cannot read" in str(info.value)


async def test_static_provider_repr_masks() -> None:
    p = StaticCredentialProvider("LTAIabcdefgh", SECRET)
    creds = await p.get()
    assert creds == Credentials("LTAIabcdefgh", SECRET, "", None, "static")
    assert SECRET not in repr(p) and "LTAIabcdefgh" not in repr(creds)


# --- limits ------------------------------------------------------------------------------------
G7_4XL = InstanceLimits("ecs.g7.4xlarge", 8, 30, 30, 33, True)


def _info(mode: str):
    import importlib

    return importlib.import_module(f"terway_mode_{mode}").terway_mode_info()


def test_pod_limit_formulas_seed_003() -> None:
    assert G7_4XL.shared_pods == 210  # (8-1) x 30
    assert G7_4XL.exclusive_pods == 7  # 8-1
    assert G7_4XL.trunk_member_pods == 25  # 33-8
    assert check_pod_limit(_info("shared_eni"), G7_4XL) == 210
    assert check_pod_limit(_info("exclusive_eni"), G7_4XL) == 7
    assert check_pod_limit(_info("trunk"), G7_4XL) == 25
    assert InstanceLimits("ecs.t6", 2, 2, 0, 2, False).trunk_member_pods == 0


@pytest.mark.parametrize(
    ("limits", "mode", "needles"),
    [
        (
            InstanceLimits("ecs.t5-lc1m1.small", 2, 2, 0, 2, False),
            "shared_eni",
            ["ecs.t5-lc1m1.small", "supports 2 pods", "(EniQuantity - 1) x EniPrivateIpAddressQuantity",
             "EniQuantity=2", "EniPrivateIpAddressQuantity=2", "more than 11"],
        ),
        (
            InstanceLimits("ecs.g7.large", 3, 6, 6, 3, False),
            "exclusive_eni",
            ["ecs.g7.large", "supports 2 pods", "EniQuantity - 1", "EniQuantity=3", "more than 6"],
        ),
    ],
)
def test_node_below_minimum_is_refused_clearly(limits: InstanceLimits, mode: str, needles: list[str]) -> None:
    with pytest.raises(NodeBelowMinimum) as info:
        check_pod_limit(_info(mode), limits)
    assert isinstance(info.value, PermanentError)
    for needle in needles:
        assert needle in str(info.value)
    assert info.value.details["instance_type"] == limits.instance_type


def test_minimums_are_strict() -> None:
    shared, exclusive = _info("shared_eni"), _info("exclusive_eni")
    assert check_pod_limit(shared, InstanceLimits("a", 3, 6, 0, 3, False)) == 12  # (3-1) x 6 > 11
    with pytest.raises(NodeBelowMinimum):
        check_pod_limit(shared, InstanceLimits("b", 2, 11, 0, 2, False))  # exactly 11
    assert check_pod_limit(exclusive, InstanceLimits("c", 8, 2, 0, 8, False)) == 7
    with pytest.raises(NodeBelowMinimum):
        check_pod_limit(exclusive, InstanceLimits("d", 7, 2, 0, 7, False))  # exactly 6


def test_limits_from_api_entry() -> None:
    item = {
        "InstanceTypeId": "ecs.g7.4xlarge",
        "EniQuantity": 8,
        "EniPrivateIpAddressQuantity": 30,
        "EniIpv6AddressQuantity": 30,
        "EniTotalQuantity": 33,
        "EniTrunkSupported": True,
    }
    assert InstanceLimits.from_api(item) == G7_4XL


async def test_limits_cache_on_disk_with_ttl(tmp_path: Path) -> None:
    clock = [1_000_000.0]
    cache = LimitsCache(tmp_path / "twcli-state", now=lambda: clock[0])
    assert await cache.get("ecs.g7.4xlarge") is None
    await cache.put(G7_4XL)
    await cache.put(InstanceLimits("ecs.g6.large", 3, 6, 0, 3, False))
    doc = json.loads((tmp_path / "twcli-state" / "instance-limits.json").read_text())
    assert set(doc["entries"]) == {"ecs.g7.4xlarge", "ecs.g6.large"}
    fresh = LimitsCache(tmp_path / "twcli-state", now=lambda: clock[0])
    assert await fresh.get("ecs.g7.4xlarge") == G7_4XL
    clock[0] += 15 * 24 * 3600 - 1
    assert await fresh.get("ecs.g7.4xlarge") == G7_4XL
    clock[0] += 2
    assert await fresh.get("ecs.g7.4xlarge") is None  # older than 15 days


async def test_limits_cache_survives_garbage(tmp_path: Path) -> None:
    d = tmp_path / "twcli-state"
    d.mkdir()
    (d / "instance-limits.json").write_text("{not json")
    cache = LimitsCache(d)
    assert await cache.get("ecs.g7.4xlarge") is None
    await cache.put(G7_4XL)
    assert await cache.get("ecs.g7.4xlarge") == G7_4XL


async def test_token_file_half_written_keeps_valid_credentials(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    path = tmp_path / "twcli-token-config"
    _write_token(path, "AK1", "SK1", "T1", datetime.now(UTC) + timedelta(hours=1))
    provider = AddonTokenFileProvider(path, check_interval=1.0)
    first = await provider.get()
    path.write_text('{"access.key.id": "tru')  # a writer caught mid-way
    await trio.sleep(1.5)
    assert await provider.get() == first
    path.unlink()  # briefly missing during a rename-based rotation
    await trio.sleep(1.5)
    assert await provider.get() == first
    _write_token(path, "AK2", "SK2", "T2", datetime.now(UTC) + timedelta(hours=1))
    await trio.sleep(1.5)
    assert (await provider.get()).access_key_id == "AK2"
