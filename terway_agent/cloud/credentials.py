"""Where the OpenAPI credentials come from, and keeping them fresh.

The chain of the original, first configured source wins:

1. a static AccessKey pair from the settings (``access_key``/``access_secret``);
2. the ACK addon token file at ``credential_path`` (``/var/addon/token-config``):
   JSON ``{"access.key.id", "access.key.secret", "security.token", "expiration",
   "keyring"}`` where the three secrets are ``base64(iv || AES-CBC(keyring,
   PKCS#7-padded value))`` and ``keyring`` is the AES key itself (16/24/32
   bytes).  The file is re-read when it changes (mtime/size/inode, checked at
   most once a second) and when its credentials are about to expire;
3. the instance's RAM role from the metadata service
   (``/latest/meta-data/ram/security-credentials/`` names the role,
   ``.../<role>`` returns AccessKeyId/AccessKeySecret/SecurityToken/Expiration),
   refreshed ``refresh_before`` ahead of expiry.

Unlike the original there is no silent fall-through: when ``credential_path``
is set and the file is unusable, that is an error (a misconfigured node should
be loud, not quietly use another identity).

:class:`Credentials` never shows secrets in ``repr()``.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

import trio
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from terway_agent.log import get_logger

from .errors import CredentialError, MetadataError

if TYPE_CHECKING:
    from .metadata import MetadataClient
    from .settings import CloudSettings

log = get_logger(__name__)

_EXPIRATION_FORMATS = ("%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%dT%H:%M:%S.%fZ")


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _mask(value: str) -> str:
    if len(value) <= 6:
        return "***"
    return f"{value[:3]}***{value[-3:]}"


@dataclass(frozen=True, repr=False, eq=True)
class Credentials:
    """One set of credentials.

    :param access_key_id: AccessKey id (shown masked in reprs).
    :param access_key_secret: AccessKey secret (never shown).
    :param security_token: STS token; empty for a long-lived AccessKey.
    :param expiration: when STS credentials expire (UTC); ``None`` = never.
    :param source: ``static``, ``file:<path>`` or ``ram-role:<name>``.
    """

    access_key_id: str
    access_key_secret: str
    security_token: str = ""
    expiration: datetime | None = None
    source: str = "static"

    def __repr__(self) -> str:
        exp = self.expiration.isoformat() if self.expiration else None
        return (
            f"Credentials(source={self.source!r}, access_key_id={_mask(self.access_key_id)!r}, "
            f"sts={bool(self.security_token)}, expiration={exp!r})"
        )

    __str__ = __repr__

    def expires_within(self, delta: timedelta, now: datetime | None = None) -> bool:
        """Whether the credentials expire within ``delta`` from ``now``."""
        if self.expiration is None:
            return False
        return self.expiration - (now or _utcnow()) <= delta

    @property
    def secrets(self) -> tuple[str, ...]:
        """The secret strings (for scrubbing error texts); never log this."""
        return tuple(s for s in (self.access_key_secret, self.security_token) if s)


class CredentialProvider(Protocol):
    """Something that returns current credentials, refreshing them as needed."""

    async def get(self) -> Credentials:
        """Current, non-expired credentials; raises :class:`CredentialError`."""
        ...


class StaticCredentialProvider:
    """A fixed AccessKey pair (optionally with an STS token)."""

    def __init__(self, access_key_id: str, access_key_secret: str, security_token: str = "") -> None:
        if not access_key_id or not access_key_secret:
            raise CredentialError("static credentials need both an AccessKey id and secret")
        self._creds = Credentials(access_key_id, access_key_secret, security_token, None, "static")

    def __repr__(self) -> str:
        return f"StaticCredentialProvider({self._creds!r})"

    async def get(self) -> Credentials:
        await trio.lowlevel.checkpoint()
        return self._creds


def parse_expiration(value: str) -> datetime:
    """``2006-01-02T15:04:05Z`` (the format of the token file and of STS) as an aware UTC datetime."""
    for fmt in _EXPIRATION_FORMATS:
        try:
            return datetime.strptime(value, fmt).replace(tzinfo=UTC)
        except (TypeError, ValueError):
            continue
    raise ValueError(f"expiration {value!r} is not like 2006-01-02T15:04:05Z")


def _format_expiration(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- ACK addon token file ---------------------------------------------------------------------
def _aes_cbc_decrypt(blob: str, keyring: bytes) -> str:
    data = base64.b64decode(blob, validate=True)
    if len(data) < 32 or len(data) % 16:
        raise ValueError("ciphertext is not IV + whole AES blocks")
    iv, body = data[:16], data[16:]
    dec = Cipher(algorithms.AES(keyring), modes.CBC(iv)).decryptor()
    plain = dec.update(body) + dec.finalize()
    pad = plain[-1]
    if pad < 1 or pad > 16 or plain[-pad:] != bytes([pad]) * pad:
        raise ValueError("bad PKCS#7 padding (wrong keyring?)")
    return plain[:-pad].decode("utf-8")


def _aes_cbc_encrypt(text: str, keyring: bytes) -> str:
    iv = os.urandom(16)
    raw = text.encode("utf-8")
    pad = 16 - len(raw) % 16
    raw += bytes([pad]) * pad
    enc = Cipher(algorithms.AES(keyring), modes.CBC(iv)).encryptor()
    return base64.b64encode(iv + enc.update(raw) + enc.finalize()).decode("ascii")


def encode_addon_token(
    *,
    access_key_id: str,
    access_key_secret: str,
    security_token: str,
    expiration: datetime,
    keyring: bytes,
) -> str:
    """The JSON text of an ACK addon token file (the format :class:`AddonTokenFileProvider` reads).

    For tests and tooling (an emulated cluster writes its node's token file with it).
    ``keyring`` must be 16, 24 or 32 bytes of printable ASCII (it is stored in the JSON as is).
    """
    if len(keyring) not in (16, 24, 32):
        raise ValueError("keyring must be 16, 24 or 32 bytes")
    return json.dumps(
        {
            "access.key.id": _aes_cbc_encrypt(access_key_id, keyring),
            "access.key.secret": _aes_cbc_encrypt(access_key_secret, keyring),
            "security.token": _aes_cbc_encrypt(security_token, keyring),
            "expiration": _format_expiration(expiration),
            "keyring": keyring.decode("ascii"),
        }
    )


def decode_addon_token(text: str, source: str) -> Credentials:
    """Credentials from the JSON text of an addon token file; :class:`CredentialError` when unusable.

    The error names the file and the field, never a value.
    """
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise CredentialError(
            f"credential file {source}: not JSON ({exc.msg} at line {exc.lineno})"
        ) from None
    if not isinstance(doc, dict):
        raise CredentialError(f"credential file {source}: expected a JSON object")
    for key in ("access.key.id", "access.key.secret", "security.token", "expiration", "keyring"):
        if not isinstance(doc.get(key), str):
            raise CredentialError(f"credential file {source}: field {key!r} missing or not a string")
    keyring = doc["keyring"].encode("utf-8")
    if len(keyring) not in (16, 24, 32):
        raise CredentialError(
            f"credential file {source}: field 'keyring' has {len(keyring)} bytes, expected 16, 24 or 32"
        )
    values: dict[str, str] = {}
    for key in ("access.key.id", "access.key.secret", "security.token"):
        try:
            values[key] = _aes_cbc_decrypt(doc[key], keyring)
        except (ValueError, UnicodeDecodeError) as exc:
            raise CredentialError(
                f"credential file {source}: field {key!r} cannot be decrypted: {exc}"
            ) from None
    try:
        expiration = parse_expiration(doc["expiration"])
    except ValueError as exc:
        raise CredentialError(f"credential file {source}: field 'expiration': {exc}") from None
    if not values["access.key.id"] or not values["access.key.secret"]:
        raise CredentialError(f"credential file {source}: empty AccessKey id or secret")
    return Credentials(
        values["access.key.id"],
        values["access.key.secret"],
        values["security.token"],
        expiration,
        f"file:{source}",
    )


class AddonTokenFileProvider:
    """Credentials from the ACK addon token file, re-read when it changes or nears expiry.

    :param path: the token file.
    :param refresh_before: re-read the file this long before the credentials expire.
    :param check_interval: look at the file's mtime at most this often, seconds.
    :param now: wall clock returning an aware UTC datetime (for tests).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        refresh_before: timedelta = timedelta(minutes=5),
        check_interval: float = 1.0,
        now: Callable[[], datetime] = _utcnow,
    ) -> None:
        self.path = os.fspath(path)
        self._refresh_before = refresh_before
        self._check_interval = check_interval
        self._now = now
        self._creds: Credentials | None = None
        self._stamp: tuple[int, int, int] | None = None
        self._checked_at = float("-inf")
        self._lock = trio.Lock()
        self.reads = 0  #: how many times the file was parsed

    def __repr__(self) -> str:
        return f"AddonTokenFileProvider(path={self.path!r})"

    def invalidate(self) -> None:
        """The cloud rejected the credentials: re-read the file on the next :meth:`get`."""
        self._stamp = None
        self._checked_at = float("-inf")

    def _read(self) -> tuple[tuple[int, int, int], str]:
        with open(self.path, encoding="utf-8") as fh:
            st = os.fstat(fh.fileno())
            return (st.st_mtime_ns, st.st_size, st.st_ino), fh.read()

    async def _look(self, force: bool) -> tuple[tuple[int, int, int], str | None]:
        """The file's identity and, when it changed (or ``force``), its text."""
        try:
            if not force:
                st = await trio.to_thread.run_sync(os.stat, self.path)
                stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
                if stamp == self._stamp:
                    return stamp, None
            return await trio.to_thread.run_sync(self._read)
        except OSError as exc:
            raise CredentialError(
                f"credential file {self.path}: cannot read: {exc.strerror}", path=self.path
            ) from None

    async def get(self) -> Credentials:
        async with self._lock:
            now_t = trio.current_time()
            creds = self._creds
            due = now_t - self._checked_at >= self._check_interval
            if creds is None or due:
                near_expiry = creds is None or creds.expires_within(self._refresh_before, self._now())
                try:
                    stamp, text = await self._look(near_expiry)
                    self._checked_at = now_t
                    if text is not None and (stamp != self._stamp or creds is None or near_expiry):
                        new = decode_addon_token(text, self.path)
                        self.reads += 1
                        rotated = creds is not None and new != creds
                        self._creds, self._stamp = new, stamp
                        if creds is None or rotated:
                            log.info(
                                "credentials.file.loaded",
                                path=self.path,
                                expiration=_format_expiration(new.expiration) if new.expiration else None,
                                rotated=rotated,
                            )
                except CredentialError as exc:
                    # a file being rewritten or briefly missing: keep valid credentials we have
                    if creds is None or creds.expires_within(timedelta(0), self._now()):
                        raise
                    self._checked_at = now_t
                    log.warning("credentials.file.unusable", path=self.path, error=exc.message)
                creds = self._creds
            if creds is None:  # pragma: no cover - every path above sets or raises
                raise CredentialError(f"credential file {self.path}: no credentials loaded", path=self.path)
            if creds.expiration is not None and creds.expiration <= self._now():
                raise CredentialError(
                    f"credential file {self.path}: credentials expired at "
                    f"{_format_expiration(creds.expiration)} and the file was not renewed",
                    path=self.path,
                )
            return creds


class RamRoleCredentialProvider:
    """STS credentials of the instance's RAM role, from the metadata service.

    :param metadata: the metadata client.
    :param role_name: the role; ``None`` = the first role the service lists.
    :param refresh_before: fetch new credentials this long before expiry.
    :param now: wall clock returning an aware UTC datetime (for tests).
    """

    def __init__(
        self,
        metadata: MetadataClient,
        *,
        role_name: str | None = None,
        refresh_before: timedelta = timedelta(minutes=10),
        now: Callable[[], datetime] = _utcnow,
    ) -> None:
        self._metadata = metadata
        self._role = role_name
        self._refresh_before = refresh_before
        self._now = now
        self._creds: Credentials | None = None
        self._stale = False
        self._lock = trio.Lock()
        self.fetches = 0  #: how many times credentials were fetched

    def __repr__(self) -> str:
        return f"RamRoleCredentialProvider(role={self._role!r}, metadata={self._metadata!r})"

    def invalidate(self) -> None:
        """The cloud rejected the credentials: fetch new ones on the next :meth:`get`."""
        self._stale = True

    async def get(self) -> Credentials:
        async with self._lock:
            creds = self._creds
            if (
                creds is not None
                and not self._stale
                and not creds.expires_within(self._refresh_before, self._now())
            ):
                return creds
            try:
                if self._role is None:
                    roles = await self._metadata.ram_roles()
                    if not roles:
                        raise CredentialError(
                            "no AccessKey configured, no credential_path, and the instance has no RAM role "
                            "(metadata ram/security-credentials/ is empty)"
                        )
                    self._role = roles[0]
                doc: dict[str, Any] = await self._metadata.ram_role_credentials(self._role)
            except MetadataError as exc:
                if creds is not None and not creds.expires_within(timedelta(0), self._now()):
                    log.warning("credentials.ramrole.refresh_failed", role=self._role, error=str(exc))
                    return creds
                raise CredentialError(
                    f"cannot read RAM role {self._role!r} credentials from the metadata service: {exc.message}"
                ) from None
            code = doc.get("Code")
            if code not in (None, "Success"):
                raise CredentialError(
                    f"metadata service refused RAM role {self._role!r} credentials: Code={code}"
                )
            try:
                new = Credentials(
                    str(doc["AccessKeyId"]),
                    str(doc["AccessKeySecret"]),
                    str(doc.get("SecurityToken") or ""),
                    parse_expiration(str(doc["Expiration"])) if doc.get("Expiration") else None,
                    f"ram-role:{self._role}",
                )
            except (KeyError, ValueError) as exc:
                raise CredentialError(
                    f"RAM role {self._role!r} credentials from the metadata service are malformed: "
                    f"{type(exc).__name__} {exc if isinstance(exc, KeyError) else ''}".rstrip()
                ) from None
            self._creds = new
            self._stale = False
            self.fetches += 1
            log.info(
                "credentials.ramrole.refreshed",
                role=self._role,
                expiration=_format_expiration(new.expiration) if new.expiration else None,
            )
            return new


def credential_provider_for(settings: CloudSettings, metadata: MetadataClient) -> CredentialProvider:
    """The provider the chain selects for ``settings``: static AccessKey, else the addon token
    file, else the RAM role of the instance."""
    if settings.has_static_credentials:
        return StaticCredentialProvider(settings.access_key_id, settings.access_key_secret)
    if settings.credential_path:
        return AddonTokenFileProvider(settings.credential_path)
    return RamRoleCredentialProvider(metadata)
