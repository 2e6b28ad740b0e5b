"""Verify OpenAPI request signatures: ACS3-HMAC-SHA256 (header) and the v2
RPC HMAC-SHA1 query signature, computed exactly as the Alibaba Cloud SDK does."""

from __future__ import annotations

import base64
import hashlib
import hmac
import threading
import time
from collections import OrderedDict
from urllib.parse import quote, quote_plus

from terway_agent.cloud.emulator._model import ApiError

NONCE_WINDOW = 15 * 60.0


def _incomplete(detail: str) -> ApiError:
    return ApiError(
        "IncompleteSignature", f"The request signature does not conform to Aliyun standards. {detail}", 400
    )


def _no_key(ak: str) -> ApiError:
    return ApiError("InvalidAccessKeyId.NotFound", f"Specified access key is not found: {ak}.", 404)


def _mismatch(string_to_sign: str) -> ApiError:
    return ApiError(
        "SignatureDoesNotMatch",
        f"Specified signature is not matched with our calculation. server string to sign is:{string_to_sign}",
        400,
    )


class NonceCache:
    """Rejects a signature nonce seen within the last 15 minutes (``SignatureNonceUsed``)."""

    def __init__(self, window: float = NONCE_WINDOW, max_entries: int = 200_000):
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()
        self._window = window
        self._max = max_entries

    def check(self, nonce: str) -> None:
        now = time.monotonic()
        with self._lock:
            while self._seen:
                oldest, stamp = next(iter(self._seen.items()))
                if now - stamp <= self._window and len(self._seen) < self._max:
                    break
                self._seen.popitem(last=False)
            if nonce in self._seen:
                raise ApiError(
                    "SignatureNonceUsed", f"Specified signature nonce was used already: {nonce}.", 400
                )
            self._seen[nonce] = now


def verify_acs3(
    method: str,
    path: str,
    query: dict[str, str],
    headers: dict[str, list[str]],
    body: bytes,
    secrets: dict[str, str],
) -> str:
    """Verify an ``Authorization: ACS3-HMAC-SHA256 ...`` request.  Returns the
    access key id.  ``headers`` maps lower-case names to their values."""
    auth = (headers.get("authorization") or [""])[0].strip()
    algo, _, rest = auth.partition(" ")
    if algo != "ACS3-HMAC-SHA256":
        raise _incomplete(f"Unsupported signature algorithm {algo!r}; expected ACS3-HMAC-SHA256.")
    parts: dict[str, str] = {}
    for item in rest.split(","):
        key, eq, value = item.strip().partition("=")
        if eq:
            parts[key] = value
    for key in ("Credential", "SignedHeaders", "Signature"):
        if not parts.get(key):
            raise _incomplete(f"The Authorization header has no {key}.")
    ak = parts["Credential"]
    secret = secrets.get(ak)
    if secret is None:
        raise _no_key(ak)
    signed = parts["SignedHeaders"].split(";")
    canon_headers = ""
    for name in signed:
        values = headers.get(name)
        if values is None:
            raise _incomplete(f"The signed header {name!r} is missing from the request.")
        canon_headers += f"{name}:{','.join(sorted(v.strip() for v in values))}\n"
    payload_hash = hashlib.sha256(body).hexdigest()
    declared = (headers.get("x-acs-content-sha256") or [None])[0]
    if declared is not None and declared != payload_hash:
        raise ApiError(
            "SignatureDoesNotMatch", "The x-acs-content-sha256 header does not match the request body.", 400
        )
    canon_query = "&".join(f"{k}={quote(query[k], safe='~')}" for k in sorted(query))
    canonical_request = (
        f"{method}\n{path or '/'}\n{canon_query}\n{canon_headers}\n{';'.join(signed)}\n{payload_hash}"
    )
    string_to_sign = "ACS3-HMAC-SHA256\n" + hashlib.sha256(canonical_request.encode()).hexdigest()
    expected = hmac.new(secret.encode(), string_to_sign.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, parts["Signature"]):
        raise _mismatch(string_to_sign)
    return ak


def verify_rpc_v2(method: str, query: dict[str, str], secrets: dict[str, str]) -> str:
    """Verify a v2 (HMAC-SHA1, ``Signature`` query parameter) RPC request.
    Returns the access key id."""
    for key in ("AccessKeyId", "Signature", "SignatureMethod", "SignatureNonce", "Timestamp"):
        if not query.get(key):
            raise ApiError(
                "MissingParameter",
                f'The input parameter "{key}" that is mandatory for processing this request is not supplied.',
                400,
            )
    if query["SignatureMethod"] != "HMAC-SHA1":
        raise _incomplete(f"Unsupported SignatureMethod {query['SignatureMethod']!r}; expected HMAC-SHA1.")
    ak = query["AccessKeyId"]
    secret = secrets.get(ak)
    if secret is None:
        raise _no_key(ak)
    canon = "&".join(
        f"{quote(k, safe='~')}={quote(query[k], safe='~')}" for k in sorted(query) if k != "Signature"
    )
    string_to_sign = f"{method}&%2F&{quote_plus(canon, safe='~')}"
    expected = base64.b64encode(
        hmac.new((secret + "&").encode(), string_to_sign.encode(), hashlib.sha1).digest()
    ).decode()
    if not hmac.compare_digest(expected, query["Signature"]):
        raise _mismatch(string_to_sign)
    return ak
