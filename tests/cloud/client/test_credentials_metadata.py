"""Credentials (file rotation, chain, RAM role) and the metadata client against the emulator."""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import structlog
import trio
from twcli_helpers import MakeClient, settings_for

from terway_agent.cloud import errors as E
from terway_agent.cloud._metrics import METADATA_LATENCY
from terway_agent.cloud.client import CloudClient
from terway_agent.cloud.credentials import (
    AddonTokenFileProvider,
    RamRoleCredentialProvider,
    StaticCredentialProvider,
    credential_provider_for,
    encode_addon_token,
)
from terway_agent.cloud.limits import LimitsCache, get_instance_limits
from terway_agent.cloud.metadata import MetadataClient
from terway_agent.daemon.cloud_service import NodeBelowMinimum, check_pod_limit

KEYRING = b"twcli-keyring-0123456789abcdef!!"  # 32 bytes


def _write_token(path: Path, ak: str, sk: str, token: str, expires: datetime) -> None:
    text = encode_addon_token(
        access_key_id=ak, access_key_secret=sk, security_token=token, expiration=expires, keyring=KEYRING
    )
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# --- credentials -------------------------------------------------------------------------------
async def test_chain_selects_the_configured_source(emulator: Any, tmp_path: Path) -> None:
    md = MetadataClient(emulator.metadata_url(emulator.node1))
    static = credential_provider_for(settings_for(emulator), md)
    assert isinstance(static, StaticCredentialProvider)
    path = tmp_path / "twcli-token-config"
    from_file = credential_provider_for(
        settings_for(emulator, access_key_id="", access_key_secret="", credential_path=str(path)), md
    )
    assert isinstance(from_file, AddonTokenFileProvider) and from_file.path == str(path)
    role = credential_provider_for(settings_for(emulator, access_key_id="", access_key_secret=""), md)
    assert isinstance(role, RamRoleCredentialProvider)


async def test_token_file_rotation_reaches_the_sdk(
    emulator: Any, make_client: MakeClient, tmp_path: Path
) -> None:
    path = tmp_path / "twcli-token-config"
    now = datetime.now(UTC)
    sts1 = emulator.admin.issue_sts(lifetime=3600)
    _write_token(
        path, sts1["AccessKeyId"], sts1["AccessKeySecret"], sts1["SecurityToken"], now + timedelta(hours=1)
    )
    provider = AddonTokenFileProvider(path, check_interval=0.0)
    client = make_client(
        access_key_id="", access_key_secret="", credential_path=str(path), credentials=provider
    )
    assert len(await client.describe_vswitches()) == 5  # signed with the STS key, token sent along

    # rotate to credentials the cloud does not know yet: the next call must use them (and fail)
    new_ak, new_sk, new_token = "STS.twcliRotated0001", "twcli-rotated-secret-0123456789", "CAIStwcli-token-2"
    _write_token(path, new_ak, new_sk, new_token, now + timedelta(hours=2))
    with structlog.testing.capture_logs() as logs:
        with pytest.raises(E.CloudAuthError) as info:
            await client.describe_vswitches()
    assert info.value.code.startswith(("InvalidAccessKeyId", "InvalidSecurityToken"))
    for text in (str(info.value), repr(logs)):
        assert new_sk not in text and new_token not in text
    assert any(e["event"] == "openapi.client.rebuilt" for e in logs)

    emulator.admin.issue_sts(access_key_id=new_ak, access_key_secret=new_sk, security_token=new_token)
    assert len(await client.describe_vswitches()) == 5
    assert provider.reads == 2


async def test_expired_sts_rereads_a_rotated_file_at_once(
    emulator: Any, make_client: MakeClient, tmp_path: Path
) -> None:
    path = tmp_path / "twcli-token-config"
    now = datetime.now(UTC)
    old = emulator.admin.issue_sts(lifetime=3600)
    _write_token(
        path, old["AccessKeyId"], old["AccessKeySecret"], old["SecurityToken"], now + timedelta(hours=1)
    )
    provider = AddonTokenFileProvider(path, check_interval=3600)  # would not look at the file again
    client = make_client(access_key_id="", access_key_secret="", credentials=provider)
    assert len(await client.describe_vswitches()) == 5
    new = emulator.admin.issue_sts(lifetime=3600)
    _write_token(
        path, new["AccessKeyId"], new["AccessKeySecret"], new["SecurityToken"], now + timedelta(hours=1)
    )
    emulator.admin.expire_sts()
    emulator.admin.issue_sts(
        access_key_id=new["AccessKeyId"],
        access_key_secret=new["AccessKeySecret"],
        security_token=new["SecurityToken"],
    )
    assert len(await client.describe_vswitches()) == 5  # Expired -> re-read the file -> retried
    assert (await provider.get()).access_key_id == new["AccessKeyId"]


async def test_wrong_security_token_is_rejected(
    emulator: Any, make_client: MakeClient, tmp_path: Path
) -> None:
    path = tmp_path / "twcli-token-config"
    sts = emulator.admin.issue_sts(lifetime=3600)
    _write_token(
        path,
        sts["AccessKeyId"],
        sts["AccessKeySecret"],
        "CAIStwcli-forged",
        datetime.now(UTC) + timedelta(hours=1),
    )
    client = make_client(access_key_id="", access_key_secret="", credential_path=str(path))
    with pytest.raises(E.CloudAuthError) as info:
        await client.describe_vswitches()
    assert info.value.code == "InvalidSecurityToken.MismatchWithAccessKey"
    assert emulator.admin.call_count("DescribeVSwitches") == 1


async def test_token_file_default_provider_rereads_after_change(
    emulator: Any, make_client: MakeClient, tmp_path: Path
) -> None:
    path = tmp_path / "twcli-token-config"
    now = datetime.now(UTC)
    _write_token(path, "STS.twcliNotYet", "twcli-not-yet-secret", "CAIStwcli-t", now + timedelta(hours=1))
    client = make_client(access_key_id="", access_key_secret="", credential_path=str(path))
    with pytest.raises(E.CloudAuthError):
        await client.describe_vswitches()
    sts = emulator.admin.issue_sts(lifetime=3600)
    _write_token(
        path, sts["AccessKeyId"], sts["AccessKeySecret"], sts["SecurityToken"], now + timedelta(hours=1)
    )
    await trio.sleep(1.1)  # the default provider looks at the file at most once a second
    assert len(await client.describe_vswitches()) == 5


async def test_expired_token_file_is_a_credential_error(
    emulator: Any, make_client: MakeClient, tmp_path: Path
) -> None:
    path = tmp_path / "twcli-token-config"
    _write_token(
        path, emulator.access_key_id, emulator.access_key_secret, "", datetime.now(UTC) - timedelta(minutes=1)
    )
    client = make_client(access_key_id="", access_key_secret="", credential_path=str(path))
    with pytest.raises(E.CredentialError) as info:
        await client.describe_vswitches()
    assert "expired" in str(info.value)
    assert emulator.admin.call_count("DescribeVSwitches") == 0


def _emulator_serves_ram_role(emulator: Any) -> bool:
    url = emulator.metadata_url(emulator.node1) + "/latest/meta-data/ram/security-credentials/"
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status == 200 and bool(resp.read().strip())
    except urllib.error.HTTPError:
        return False


@pytest.fixture
def ram_role(emulator: Any) -> None:
    if not _emulator_serves_ram_role(emulator):
        pytest.skip(
            "the emulator's metadata service does not serve ram/security-credentials/ yet "
            "(no RAM role / STS in the emulator); reported as a gap"
        )


async def test_ram_role_credentials_from_metadata(
    emulator: Any, make_client: MakeClient, ram_role: None
) -> None:
    md = MetadataClient(emulator.metadata_url(emulator.node1))
    assert await md.ram_roles() == ["KubernetesWorkerRole-twemu"]
    clock = [datetime.now(UTC)]
    provider = RamRoleCredentialProvider(md, now=lambda: clock[0])
    client = make_client(access_key_id="", access_key_secret="", credentials=provider)
    assert len(await client.describe_vswitches()) == 5  # STS key + security token accepted
    creds = await provider.get()
    assert creds.access_key_id.startswith("STS.") and creds.security_token and creds.expiration is not None
    assert creds.source == "ram-role:KubernetesWorkerRole-twemu"
    assert creds.access_key_secret not in repr(creds) and creds.security_token not in repr(creds)
    assert provider.fetches == 1
    assert await provider.get() is creds  # cached while far from expiry
    assert provider.fetches == 1

    # ten minutes before expiry the provider reads the metadata service again
    clock[0] = creds.expiration - timedelta(minutes=5)
    await provider.get()
    assert provider.fetches == 2
    clock[0] = datetime.now(UTC)
    await provider.get()
    assert provider.fetches == 2

    # the cloud expires every credential it issued while our copy still looks valid: the call
    # is answered InvalidSecurityToken.Expired, the client fetches new credentials and repeats it
    emulator.admin.expire_sts()
    emulator.admin.reset_calls()
    with structlog.testing.capture_logs() as logs:
        assert len(await client.describe_vswitches()) == 5
    assert provider.fetches == 3
    assert (await provider.get()).access_key_id != creds.access_key_id
    assert emulator.admin.results()["DescribeVSwitches"] == {"InvalidSecurityToken.Expired": 1, "OK": 1}
    assert [e["event"] for e in logs if e["event"].startswith("openapi.")] == [
        "openapi.call.reauth",
        "openapi.client.rebuilt",
    ]


async def test_ram_role_is_the_default_without_keys(
    emulator: Any, make_client: MakeClient, ram_role: None
) -> None:
    client = make_client(access_key_id="", access_key_secret="")
    assert isinstance(client.credentials, RamRoleCredentialProvider)
    assert len(await client.describe_vswitches()) == 5


async def test_no_ram_role_is_a_clear_error(emulator: Any, make_client: MakeClient) -> None:
    # ``small`` has no RAM role
    client = make_client(
        access_key_id="", access_key_secret="", metadata_endpoint=emulator.metadata_url(emulator.small)
    )
    with pytest.raises(E.CredentialError) as info:
        await client.describe_vswitches()
    assert "RAM role" in str(info.value)


# --- metadata ----------------------------------------------------------------------------------
async def test_metadata_paths(emulator: Any) -> None:
    md = MetadataClient(emulator.metadata_url(emulator.node1))
    assert await md.instance_id() == emulator.node1
    assert await md.instance_type() == "ecs.g7.xlarge"
    assert await md.region_id() == "cn-hangzhou"
    assert await md.zone_id() == "cn-hangzhou-k"
    assert await md.vswitch_id() == emulator.vsw_node
    assert await md.vpc_id() == "vpc-bp1twemutest0000000"
    assert await md.vpc_cidr_block() == "172.16.0.0/12"
    mac = await md.primary_mac()
    assert await md.macs() == [mac]
    eni = await md.eni(mac)
    assert eni.primary_ip == "172.16.0.11" and eni.private_ipv4s == ("172.16.0.11",)
    assert (eni.vswitch_id, eni.vswitch_cidr4, eni.gateway) == (
        emulator.vsw_node,
        "172.16.0.0/24",
        "172.16.0.253",
    )
    assert eni.eni_id.startswith("eni-")
    assert eni.ipv6s == ()  # the primary ENI holds no IPv6 address; its vSwitch is dual-stack
    assert eni.vswitch_cidr6 == "2408:4005:300:8c00::/64" and eni.ipv6_gateway
    with pytest.raises(E.MetadataNotFound):
        await md.eni_id("00:16:3e:00:00:01")
    assert md.token_fetches == 1  # one token for all of that


async def test_metadata_ipv6_lists(emulator: Any, make_client: MakeClient) -> None:
    client = make_client()
    eni = await client.create_and_attach_eni(emulator.vsw_pod_a, [emulator.sg], ipv6_count=3)
    md = client.metadata
    assert set(await md.ipv6s(eni.mac)) == set(eni.ipv6s) and len(eni.ipv6s) == 3
    assert await md.vswitch_ipv6_cidr_block(eni.mac) == "2408:4005:300:8c01::/64"


async def test_metadata_token_required_and_refreshed_on_401(emulator: Any) -> None:
    emulator.admin.configure(metadata_tokens="required")
    md = MetadataClient(emulator.metadata_url(emulator.node1))
    assert await md.instance_id() == emulator.node1
    assert md.token_fetches == 1
    # the service forgets our token (restart): 401, new token, same answer
    emulator.admin.add_fault("metadata:get", kind="error", status=401, times=1)
    with structlog.testing.capture_logs() as logs:
        assert await md.zone_id() == "cn-hangzhou-k"
    assert md.token_fetches == 2
    assert [e["event"] for e in logs] == ["metadata.token.rejected"]
    emulator.emulator.reset()  # every token the emulator issued is gone now
    assert await md.region_id() == "cn-hangzhou"
    assert md.token_fetches == 3


async def test_metadata_retries_5xx_and_429(emulator: Any) -> None:
    md = MetadataClient(emulator.metadata_url(emulator.node1), retry_delay=0.01)
    emulator.admin.add_fault("metadata:get", kind="error", status=500, times=1)
    emulator.admin.add_fault("metadata:get", kind="error", status=429, times=1)
    before = METADATA_LATENCY.labels(url="/latest/meta-data/instance-id", error="500")._sum.get()
    assert await md.instance_id() == emulator.node1
    assert emulator.admin.results()["metadata:get"] == {"InternalError": 1, "Throttling": 1, "200": 1}
    assert METADATA_LATENCY.labels(url="/latest/meta-data/instance-id", error="500")._sum.get() > before
    emulator.admin.add_fault("metadata:get", kind="error", status=503)
    with pytest.raises(E.MetadataUnavailable) as info:
        await md.instance_id()
    assert "after 5 attempts" in str(info.value)


async def test_metadata_without_token_support(emulator: Any) -> None:
    emulator.admin.add_fault("metadata:token", kind="error", status=404, times=1)
    md = MetadataClient(emulator.metadata_url(emulator.node1))
    assert await md.instance_id() == emulator.node1
    assert await md.zone_id() == "cn-hangzhou-k"
    assert md.token_fetches == 0
    assert emulator.admin.call_count("metadata:token") == 1


async def test_wait_for_eni_polls_then_times_out_clearly(emulator: Any, make_client: MakeClient) -> None:
    client = make_client()
    emulator.admin.configure(metadata_delay=0.3)
    eni = await client.create_network_interface(emulator.vsw_pod_b, [emulator.sg], secondary_ip_count=1)
    await client.attach_network_interface(eni.eni_id, emulator.node1)
    await client.wait_eni_status(eni.eni_id, "InUse")
    got = await client.metadata.wait_for_eni(eni.mac, ipv4s=eni.private_ips, timeout=5, interval=0.05)
    assert got.eni_id == eni.eni_id and set(got.private_ipv4s) == set(eni.private_ips)

    with pytest.raises(E.MetadataTimeout) as info:
        await client.metadata.wait_for_eni(eni.mac, ipv4s=["172.17.31.1"], timeout=0.3, interval=0.05)
    assert "172.17.31.1" in str(info.value) and eni.mac in str(info.value)
    with pytest.raises(E.MetadataTimeout) as info:
        await client.metadata.wait_for_eni("00:16:3e:aa:bb:cc", timeout=0.2, interval=0.05)
    assert "not listed" in str(info.value)


# --- limits against the emulator -----------------------------------------------------------------
def _info(mode: str):
    import importlib

    return importlib.import_module(f"terway_mode_{mode}").terway_mode_info()


async def test_instance_limits_cached_on_disk(emulator: Any, make_client: MakeClient, tmp_path: Path) -> None:
    state = tmp_path / "twcli-state"
    client = make_client()
    limits = await get_instance_limits(client, "ecs.g7.xlarge", state_dir=state)
    assert (limits.eni_quantity, limits.eni_private_ip_quantity, limits.eni_total_quantity) == (4, 15, 20)
    assert check_pod_limit(_info("shared_eni"), limits) == 45  # (4-1) x 15
    assert check_pod_limit(_info("trunk"), limits) == 16  # 20-4
    with pytest.raises(NodeBelowMinimum) as info:
        check_pod_limit(_info("exclusive_eni"), limits)  # 4-1 = 3, a node needs more than 6
    assert "ecs.g7.xlarge" in str(info.value) and "EniQuantity=4" in str(info.value)
    assert emulator.admin.call_count("DescribeInstanceTypes") == 1

    # a restarted agent (new client, same state dir) does not call the API
    again = await get_instance_limits(make_client(), "ecs.g7.xlarge", state_dir=state)
    assert again == limits
    assert emulator.admin.call_count("DescribeInstanceTypes") == 1
    assert await LimitsCache(state).get("ecs.g7.xlarge") == limits

    tiny = await get_instance_limits(client, "ecs.twemu-tiny.small", state_dir=state)
    with pytest.raises(NodeBelowMinimum) as info:
        check_pod_limit(_info("shared_eni"), tiny)
    assert "ecs.twemu-tiny.small supports 2 pods" in str(info.value)
    with pytest.raises(E.CloudNotFound):
        await get_instance_limits(client, "ecs.twcli-nonexistent", state_dir=state)


async def test_metadata_client_used_by_cloud_client_defaults(emulator: Any) -> None:
    client = CloudClient(settings_for(emulator))
    assert await client.instance_id() == emulator.node1
