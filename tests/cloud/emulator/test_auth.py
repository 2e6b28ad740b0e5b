"""Signature verification: ACS3-HMAC-SHA256, v2 HMAC-SHA1, nonces, timestamps."""

from __future__ import annotations

import hashlib
import http.client
import json
import uuid
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

from alibabacloud_ecs20140526 import models as m
from alibabacloud_tea_openapi.exceptions import ClientException
from alibabacloud_tea_openapi.utils import Utils
from twemu_helpers import api_error


def _region_call(c, emulator):
    return c.describe_network_interfaces(m.DescribeNetworkInterfacesRequest(region_id=emulator.region_id))


def test_wrong_secret_is_signature_does_not_match(emulator):
    c = emulator.ecs_client(access_key_secret="not-the-secret")
    err = api_error(lambda: _region_call(c, emulator))
    assert isinstance(err, ClientException)
    assert (err.code, err.status_code) == ("SignatureDoesNotMatch", 400)
    assert emulator.admin.results()["DescribeNetworkInterfaces"] == {"SignatureDoesNotMatch": 1}


def test_unknown_access_key(emulator):
    c = emulator.ecs_client(access_key_id="LTAIunknown")
    err = api_error(lambda: _region_call(c, emulator))
    assert (err.code, err.status_code) == ("InvalidAccessKeyId.NotFound", 404)


def test_v2_signature_accepted_and_checked(emulator):
    c = emulator.ecs_client(signature_algorithm="v2")
    body = _region_call(c, emulator).body
    assert body.total_count == 5  # the primary ENIs
    bad = emulator.ecs_client(signature_algorithm="v2", access_key_secret="nope")
    err = api_error(lambda: _region_call(bad, emulator))
    assert (err.code, err.status_code) == ("SignatureDoesNotMatch", 400)
    unknown = emulator.ecs_client(signature_algorithm="v2", access_key_id="LTAIunknown")
    err = api_error(lambda: _region_call(unknown, emulator))
    assert (err.code, err.status_code) == ("InvalidAccessKeyId.NotFound", 404)


def test_access_key_added_at_runtime(emulator):
    emulator.admin.add_access_key("LTAIextra", "extra-secret")
    c = emulator.ecs_client(access_key_id="LTAIextra", access_key_secret="extra-secret")
    assert _region_call(c, emulator).body.total_count == 5


class _Req:
    """What Utils.get_authorization reads from a request."""

    def __init__(self, method, query, headers):
        self.method = method
        self.pathname = "/"
        self.query = query
        self.headers = headers


def _signed(emulator, *, secret=None, date=None, nonce=None, body=b""):
    query = {"RegionId": emulator.region_id}
    headers = {
        "host": emulator.endpoint,
        "x-acs-version": "2014-05-26",
        "x-acs-action": "DescribeNetworkInterfaces",
        "x-acs-date": date or datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "x-acs-signature-nonce": nonce or uuid.uuid4().hex,
        "accept": "application/json",
        "x-acs-content-sha256": hashlib.sha256(body).hexdigest(),
    }
    headers["Authorization"] = Utils.get_authorization(
        _Req("POST", query, headers),
        "ACS3-HMAC-SHA256",
        headers["x-acs-content-sha256"],
        emulator.access_key_id,
        secret or emulator.access_key_secret,
    )
    return query, headers


def _send(emulator, query, headers, body=b""):
    host, port = emulator.endpoint.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        conn.request("POST", "/?" + urlencode(query), body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def test_raw_signed_request_and_nonce_replay(emulator):
    query, headers = _signed(emulator)
    status, body = _send(emulator, query, headers)
    assert status == 200, body
    assert body["TotalCount"] == 5
    status, body = _send(emulator, query, headers)
    assert (status, body["Code"]) == (400, "SignatureNonceUsed")


def test_expired_timestamp(emulator):
    old = (datetime.now(UTC) - timedelta(minutes=20)).strftime("%Y-%m-%dT%H:%M:%SZ")
    query, headers = _signed(emulator, date=old)
    status, body = _send(emulator, query, headers)
    assert (status, body["Code"]) == (400, "InvalidTimeStamp.Expired")


def test_tampered_query_and_body(emulator):
    query, headers = _signed(emulator)
    status, body = _send(emulator, {**query, "VpcId": "vpc-other"}, headers)
    assert (status, body["Code"]) == (400, "SignatureDoesNotMatch")
    query, headers = _signed(emulator)
    status, body = _send(emulator, query, headers, body=b"x=1")
    assert (status, body["Code"]) == (400, "SignatureDoesNotMatch")


def test_unsigned_request(emulator):
    status, body = _send(
        emulator,
        {"Action": "DescribeNetworkInterfaces", "Version": "2014-05-26", "RegionId": emulator.region_id},
        {"accept": "application/json"},
    )
    assert (status, body["Code"]) == (400, "IncompleteSignature")
    assert body["RequestId"]


def _ram_credentials(emulator, iid):
    import urllib.request

    base = emulator.metadata_url(iid) + "/latest/meta-data/ram/security-credentials/"
    with urllib.request.urlopen(base, timeout=5) as resp:
        role = resp.read().decode().strip()
    with urllib.request.urlopen(base + role, timeout=5) as resp:
        return role, json.loads(resp.read())


def test_ram_role_sts_credentials(emulator):
    role, doc = _ram_credentials(emulator, emulator.node1)
    assert role == "KubernetesWorkerRole-twemu"
    assert doc["Code"] == "Success"
    assert doc["AccessKeyId"].startswith("STS.")
    expires = datetime.strptime(doc["Expiration"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert timedelta(minutes=55) < expires - datetime.now(UTC) <= timedelta(hours=1)
    # the same credentials until half of their lifetime is gone
    assert _ram_credentials(emulator, emulator.node1)[1] == doc
    for algo in ({}, {"signature_algorithm": "v2"}):
        c = emulator.ecs_client(
            access_key_id=doc["AccessKeyId"],
            access_key_secret=doc["AccessKeySecret"],
            security_token=doc["SecurityToken"],
            **algo,
        )
        assert _region_call(c, emulator).body.total_count == 5
    wrong = emulator.ecs_client(
        access_key_id=doc["AccessKeyId"],
        access_key_secret=doc["AccessKeySecret"],
        security_token="CAISforged",
    )
    assert (
        api_error(lambda: _region_call(wrong, emulator)).code == "InvalidSecurityToken.MismatchWithAccessKey"
    )
    missing = emulator.ecs_client(access_key_id=doc["AccessKeyId"], access_key_secret=doc["AccessKeySecret"])
    assert api_error(lambda: _region_call(missing, emulator)).code == "InvalidSecurityToken.Malformed"
    assert emulator.admin.expire_sts() == 1
    c = emulator.ecs_client(
        access_key_id=doc["AccessKeyId"],
        access_key_secret=doc["AccessKeySecret"],
        security_token=doc["SecurityToken"],
    )
    err = api_error(lambda: _region_call(c, emulator))
    assert (err.code, err.status_code) == ("InvalidSecurityToken.Expired", 400)
    assert _ram_credentials(emulator, emulator.node1)[1]["AccessKeyId"] != doc["AccessKeyId"]


def test_instance_without_ram_role(emulator):
    import urllib.error
    import urllib.request

    url = emulator.metadata_url(emulator.small) + "/latest/meta-data/ram/security-credentials/"
    try:
        urllib.request.urlopen(url, timeout=5)
        raise AssertionError("expected 404")
    except urllib.error.HTTPError as exc:
        assert exc.code == 404


def test_sts_credentials_issued_by_admin(emulator):
    doc = emulator.admin.issue_sts(access_key_id="STS.twemuAddon", security_token="twemu-token", lifetime=120)
    assert (doc["AccessKeyId"], doc["SecurityToken"]) == ("STS.twemuAddon", "twemu-token")
    c = emulator.ecs_client(
        access_key_id=doc["AccessKeyId"],
        access_key_secret=doc["AccessKeySecret"],
        security_token="twemu-token",
    )
    assert _region_call(c, emulator).body.total_count == 5
    # a long-lived AccessKey does not take a security token
    c = emulator.ecs_client(security_token="twemu-token")
    assert api_error(lambda: _region_call(c, emulator)).code == "InvalidSecurityToken.MismatchWithAccessKey"
    gone = emulator.admin.issue_sts(lifetime=-1)
    c = emulator.ecs_client(
        access_key_id=gone["AccessKeyId"],
        access_key_secret=gone["AccessKeySecret"],
        security_token=gone["SecurityToken"],
    )
    assert api_error(lambda: _region_call(c, emulator)).code == "InvalidSecurityToken.Expired"
