"""Temporary (STS) credentials of instance RAM roles, as the metadata service
hands them out under ``ram/security-credentials/<role>``.

Each (instance, role) has current credentials; they are replaced once less
than half their lifetime is left, and old ones stay valid until they expire,
as on the real service.  API calls signed with them must carry the matching
security token.
"""

from __future__ import annotations

import secrets
import string
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from terway_agent.cloud.emulator._model import ApiError


@dataclass
class StsCredentials:
    access_key_id: str
    secret: str
    token: str
    issued: float  # wall clock
    expires: float  # wall clock

    def document(self) -> dict[str, str]:
        fmt = "%Y-%m-%dT%H:%M:%SZ"
        return {
            "AccessKeyId": self.access_key_id,
            "AccessKeySecret": self.secret,
            "Expiration": datetime.fromtimestamp(self.expires, UTC).strftime(fmt),
            "SecurityToken": self.token,
            "LastUpdated": datetime.fromtimestamp(self.issued, UTC).strftime(fmt),
            "Code": "Success",
        }


class StsStore:
    def __init__(self, lifetime: float) -> None:
        self.lifetime = lifetime
        self._lock = threading.Lock()
        self._by_key: dict[str, StsCredentials] = {}
        self._current: dict[tuple[str, str], StsCredentials] = {}

    def _new(self, now: float, lifetime: float) -> StsCredentials:
        alphabet = string.ascii_letters + string.digits
        return StsCredentials(
            access_key_id="STS." + "".join(secrets.choice(alphabet) for _ in range(24)),
            secret=secrets.token_urlsafe(30),
            token="CAIS" + secrets.token_urlsafe(120),
            issued=now,
            expires=now + lifetime,
        )

    def credentials(self, instance_id: str, role: str) -> StsCredentials:
        now = time.time()
        with self._lock:
            cur = self._current.get((instance_id, role))
            if cur is None or cur.expires - now < self.lifetime / 2:
                cur = self._new(now, self.lifetime)
                self._current[(instance_id, role)] = cur
                self._by_key[cur.access_key_id] = cur
            self._by_key = {k: v for k, v in self._by_key.items() if v.expires > now - 3600}
            return cur

    def issue(
        self,
        *,
        lifetime: float | None = None,
        access_key_id: str | None = None,
        secret: str | None = None,
        token: str | None = None,
    ) -> StsCredentials:
        """Register STS credentials (as an AssumeRole would return them); unset
        parts are generated."""
        now = time.time()
        cred = self._new(now, lifetime if lifetime is not None else self.lifetime)
        cred.access_key_id = access_key_id or cred.access_key_id
        cred.secret = secret or cred.secret
        cred.token = token or cred.token
        with self._lock:
            self._by_key[cred.access_key_id] = cred
        return cred

    def secrets(self) -> dict[str, str]:
        with self._lock:
            return {k: v.secret for k, v in self._by_key.items()}

    def check(self, access_key_id: str, token: str | None) -> None:
        """Raise the real error when the token does not go with the key."""
        with self._lock:
            cred = self._by_key.get(access_key_id)
        if cred is None:
            if token:
                raise ApiError(
                    "InvalidSecurityToken.MismatchWithAccessKey",
                    "The security token you provided does not match the AccessKey.",
                    400,
                )
            return
        if not token:
            raise ApiError(
                "InvalidSecurityToken.Malformed", "The security token is missing for an STS AccessKey.", 400
            )
        if token != cred.token:
            raise ApiError(
                "InvalidSecurityToken.MismatchWithAccessKey",
                "The security token you provided does not match the AccessKey.",
                400,
            )
        if cred.expires <= time.time():
            raise ApiError(
                "InvalidSecurityToken.Expired", "The security token you provided has expired.", 400
            )

    def expire_all(self) -> int:
        """Make every issued credential expired now (tests); returns how many."""
        now = time.time()
        with self._lock:
            for cred in self._by_key.values():
                cred.expires = min(cred.expires, now - 1)
            return len(self._by_key)

    def clear(self, lifetime: float | None = None) -> None:
        with self._lock:
            self._by_key.clear()
            self._current.clear()
            if lifetime is not None:
                self.lifetime = lifetime
