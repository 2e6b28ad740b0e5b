"""Typed errors of the Alibaba Cloud client.

Every failed OpenAPI call surfaces as a :class:`CloudError` carrying the
OpenAPI ``code``, the ``request_id`` (quote it to Alibaba Cloud support), the
``http_status`` and the ``api`` name.  The classes slot into the agent's error
families (:mod:`terway_agent.errors`) by what the caller should do next:

==================================  ===================================  ==========================
class                               codes                                family
==================================  ===================================  ==========================
:class:`CloudThrottled`             ``Throttling*``                      :class:`TemporaryError`
:class:`CloudUnavailable`           ``InternalError``,                   :class:`TemporaryError`
                                    ``ServiceUnavailable``, HTTP 5xx
:class:`CloudTransportError`        connection refused/reset, timeouts,  :class:`TemporaryError`
                                    malformed responses
:class:`IpNotEnough`                ``InvalidVSwitchId.IpNotEnough``,    :class:`AllocationError`
                                    ``QuotaExceeded.PrivateIpAddress``,
                                    IPv6 equivalents
:class:`EniPerInstanceLimitExceeded`  ``EniPerInstanceLimitExceeded``    :class:`AllocationError`
:class:`IpCountExceeded`            ``InvalidOperation.Ipv4/6CountExceeded``  :class:`AllocationError`
:class:`CloudNotFound`              ``*.NotFound``                       :class:`NotFound`
:class:`CloudInvalidParameter`      ``InvalidParameter*``,               :class:`PermanentError`
                                    ``MissingParameter*``,
                                    ``InvalidVSwitchId.*`` (not IpNotEnough)
:class:`CloudAuthError`             signature / access key / RAM         :class:`PermanentError`
:class:`CloudInvalidState`          ``InvalidOperation.InvalidEniState``,  :class:`PermanentError`
                                    ``IncorrectInstanceStatus`` ...
:class:`CloudRequestError`          any other non-retryable error        :class:`PermanentError`
==================================  ===================================  ==========================

Only :class:`CloudError` subclasses with ``retryable = True`` are ever retried
by :class:`terway_agent.cloud.client.CloudClient`.

Secrets never reach these objects: the message is built from the response's
code and message and the request id; transport errors are summarised without
the request URL.
"""

from __future__ import annotations

from typing import Any

from terway_agent.errors import (
    AllocationError,
    NotFound,
    PermanentError,
    TemporaryError,
    TerwayError,
)

# --- well-known codes (see the ECS API error centre) -------------------------------------------
INVALID_VSWITCH_IP_NOT_ENOUGH = "InvalidVSwitchId.IpNotEnough"
QUOTA_EXCEEDED_PRIVATE_IP = "QuotaExceeded.PrivateIpAddress"
INVALID_VSWITCH_IPV6_NOT_ENOUGH = "InvalidVSwitchId.Ipv6NotEnough"
QUOTA_EXCEEDED_IPV6 = "QuotaExceeded.Ipv6Address"
ENI_PER_INSTANCE_LIMIT_EXCEEDED = "EniPerInstanceLimitExceeded"
IPV4_COUNT_EXCEEDED = "InvalidOperation.Ipv4CountExceeded"
IPV6_COUNT_EXCEEDED = "InvalidOperation.Ipv6CountExceeded"
INVALID_ENI_NOT_FOUND = "InvalidEniId.NotFound"
INVALID_ECS_NOT_FOUND = "InvalidEcsId.NotFound"
INVALID_INSTANCE_NOT_FOUND = "InvalidInstanceId.NotFound"
INVALID_IP_UNASSIGNED = "InvalidIp.IpUnassigned"
INVALID_ENI_STATE = "InvalidOperation.InvalidEniState"
INTERNAL_ERROR = "InternalError"
SERVICE_UNAVAILABLE = "ServiceUnavailable"
IDEMPOTENT_FAILED = "IdempotentFailed"
IDEMPOTENT_PARAMETER_MISMATCH = "IdempotentParameterMismatch"
OPERATION_CONFLICT = "Operation.Conflict"

_IP_NOT_ENOUGH_CODES = frozenset(
    {
        INVALID_VSWITCH_IP_NOT_ENOUGH,
        QUOTA_EXCEEDED_PRIVATE_IP,
        INVALID_VSWITCH_IPV6_NOT_ENOUGH,
        QUOTA_EXCEEDED_IPV6,
        "InvalidVSwitchId.Ipv6NotEnough",
        "InvalidVSwitchId.IPv6NotEnough",
        "QuotaExceeded.Ipv6Address",
        "QuotaExceeded.IPv6Address",
    }
)
_AUTH_CODES = frozenset(
    {
        "SignatureDoesNotMatch",
        "IncompleteSignature",
        "InvalidAccessKeyId.NotFound",
        "InvalidAccessKeyId.Inactive",
        "InvalidAccessKeyId",
        "InvalidSecurityToken.Expired",
        "InvalidSecurityToken.Malformed",
        "InvalidSecurityToken.MismatchWithAccessKey",
        "SignatureNonceUsed",
        "InvalidTimeStamp.Expired",
        "InvalidTimeStamp.Format",
        "Forbidden.RAM",
        "Forbidden",
        "Forbidden.AccessKeyDisabled",
        "NoPermission",
    }
)
_INVALID_STATE_CODES = frozenset(
    {
        INVALID_ENI_STATE,
        "IncorrectInstanceStatus",
        "IncorrectStatus",
        "InvalidOperation.EniNotAttached",
        "InvalidOperation.EniAlreadyAttached",
        "InvalidOperation.InvalidEcsState",
        "IncorrectVSwitchStatus",
    }
)
_UNAVAILABLE_CODES = frozenset(
    {INTERNAL_ERROR, SERVICE_UNAVAILABLE, "ServiceUnavailable.Timeout", "UnknownError"}
)


class CloudError(TerwayError):
    """An Alibaba Cloud OpenAPI call failed.

    :param message: a sentence for humans (never contains secrets).
    :param api: the OpenAPI action (``CreateNetworkInterface``).
    :param code: the OpenAPI error code (``InvalidVSwitchId.IpNotEnough``); empty
        for transport errors.
    :param request_id: the RequestId of the failed call, when the cloud answered.
    :param http_status: the HTTP status, when the cloud answered.
    :param retry_after: seconds the cloud asked us to wait (``x-acs-retry-after``).
    """

    #: Whether :class:`~terway_agent.cloud.client.CloudClient` retries this error.
    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        api: str,
        code: str = "",
        request_id: str = "",
        http_status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        details: dict[str, Any] = {"api": api, "code": code, "request_id": request_id}
        if http_status is not None:
            details["http_status"] = http_status
        if retry_after is not None:
            details["retry_after"] = retry_after
        TerwayError.__init__(self, message, **details)
        self.api = api
        self.code = code
        self.request_id = request_id
        self.http_status = http_status
        self.retry_after = retry_after

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(api={self.api!r}, code={self.code!r}, "
            f"request_id={self.request_id!r}, http_status={self.http_status!r}, message={self.message!r})"
        )

    def __reduce__(self) -> Any:  # the constructor is keyword-only: make copy/pickle work
        return (
            _rebuild,
            (
                type(self),
                self.message,
                self.api,
                self.code,
                self.request_id,
                self.http_status,
                self.retry_after,
            ),
        )


def _rebuild(
    cls: type[CloudError], message: str, api: str, code: str, request_id: str, http_status, retry_after
):
    return cls(
        message, api=api, code=code, request_id=request_id, http_status=http_status, retry_after=retry_after
    )


# --- retryable ----------------------------------------------------------------------------------
class CloudTemporaryError(CloudError, TemporaryError):
    """Base of the errors worth retrying later."""

    retryable = True


class CloudThrottled(CloudTemporaryError):
    """``Throttling``, ``Throttling.User``, ``Throttling.Api`` ...; ``retry_after`` set when the cloud said."""


class CloudUnavailable(CloudTemporaryError):
    """``InternalError``, ``ServiceUnavailable`` or any HTTP 5xx."""


class CloudTransportError(CloudTemporaryError):
    """No usable answer: connection refused or reset, connect/read timeout, malformed response.

    The request may or may not have been executed by the cloud; that is why
    creating calls carry a ``ClientToken``.
    """


class CloudTimeout(CloudTemporaryError):
    """A wait for a cloud-side condition (ENI status, metadata) ran out of attempts."""


# --- allocation ---------------------------------------------------------------------------------
class CloudAllocationError(CloudError, AllocationError):
    """The cloud refused to hand out more addresses or interfaces."""


class IpNotEnough(CloudAllocationError):
    """The vSwitch has no free address (IPv4 or IPv6) or the private-IP quota is exhausted.

    ``InvalidVSwitchId.IpNotEnough``, ``QuotaExceeded.PrivateIpAddress`` and the
    IPv6 equivalents.  The original blocks allocation on that vSwitch for 10 min.
    """


class EniPerInstanceLimitExceeded(CloudAllocationError):
    """The instance already has as many ENIs as its type allows."""


class IpCountExceeded(CloudAllocationError):
    """The ENI already has as many IPv4/IPv6 addresses as its instance type allows."""


# --- not retryable ------------------------------------------------------------------------------
class CloudRequestError(CloudError, PermanentError):
    """A non-retryable error of the request (any 4xx not classified more precisely)."""


class CloudInvalidParameter(CloudRequestError):
    """``InvalidParameter*``, ``MissingParameter*``, ``InvalidVSwitchId.*`` (other than IpNotEnough),
    ``InvalidSecurityGroupId.*``: the request is wrong; retrying cannot help."""


class CloudAuthError(CloudRequestError):
    """The cloud rejected our identity: wrong AccessKey secret (``SignatureDoesNotMatch``),
    unknown AccessKey, expired STS token, missing RAM permission."""


class CloudInvalidState(CloudRequestError):
    """The resource is in a state that forbids the operation (``InvalidOperation.InvalidEniState``)."""


class IdempotentFailed(CloudRequestError):
    """A ``ClientToken`` was reused with different parameters (``IdempotentFailed``,
    ``IdempotentParameterMismatch``)."""


class CloudNotFound(CloudError, NotFound):
    """``InvalidEniId.NotFound``, ``InvalidEcsId.NotFound`` and other ``*.NotFound`` codes."""


class CredentialError(PermanentError):
    """No usable credentials: the credential file is missing/corrupt/expired or the RAM role
    cannot be read from the metadata service.  Never carries secret material."""


# --- predicates ---------------------------------------------------------------------------------
def is_throttling_code(code: str) -> bool:
    """``Throttling`` and every ``Throttling.*`` code."""
    return code.startswith("Throttling")


def is_ip_not_enough_code(code: str) -> bool:
    """IPv4/IPv6 exhaustion of a vSwitch or of the private IP quota."""
    return code in _IP_NOT_ENOUGH_CODES


def is_ip_not_enough(err: BaseException) -> bool:
    """True for :class:`IpNotEnough`."""
    return isinstance(err, IpNotEnough)


def is_invalid_vswitch(err: BaseException) -> bool:
    """True for ``InvalidVSwitchId.*`` errors other than IP exhaustion (unknown or unusable vSwitch)."""
    return (
        isinstance(err, CloudError) and err.code.startswith("InvalidVSwitchId") and not is_ip_not_enough(err)
    )


def is_not_found(err: BaseException, *codes: str) -> bool:
    """True for :class:`CloudNotFound` (optionally only for the given ``codes``)."""
    return isinstance(err, CloudNotFound) and (not codes or err.code in codes)


def error_class_for(code: str, http_status: int | None) -> type[CloudError]:
    """The :class:`CloudError` subclass for an OpenAPI error ``code`` and ``http_status``.

    Retryable: ``Throttling*`` codes, ``InternalError``/``ServiceUnavailable``
    and HTTP 5xx.  Never retryable: ``InvalidParameter*`` and the other 4xx.
    """
    if is_throttling_code(code):
        return CloudThrottled
    if is_ip_not_enough_code(code):
        return IpNotEnough
    if code == ENI_PER_INSTANCE_LIMIT_EXCEEDED:
        return EniPerInstanceLimitExceeded
    if code in (IPV4_COUNT_EXCEEDED, IPV6_COUNT_EXCEEDED):
        return IpCountExceeded
    if code in _UNAVAILABLE_CODES:
        return CloudUnavailable
    if code in (IDEMPOTENT_FAILED, IDEMPOTENT_PARAMETER_MISMATCH):
        return IdempotentFailed
    if code in _AUTH_CODES:
        return CloudAuthError
    if code.endswith(".NotFound") or code.endswith("NotFound"):
        return CloudNotFound
    if code in _INVALID_STATE_CODES:
        return CloudInvalidState
    if (
        code.startswith("InvalidParameter")
        or code.startswith("MissingParameter")
        or code.startswith("InvalidVSwitchId")
        or code.startswith("InvalidSecurityGroupId")
        or code.startswith("InvalidVpcId")
        or code.startswith("InvalidZoneId")
        or code.startswith("InvalidInstanceType")
        or code.startswith("InvalidPrivateIpAddress")
        or code.startswith("InvalidIpv6Address")
        or code.startswith("InvalidCidrBlock")
    ):
        return CloudInvalidParameter
    if http_status is not None and http_status >= 500:
        return CloudUnavailable
    if http_status in (401, 403):
        return CloudAuthError
    return CloudRequestError


# --- instance metadata service ------------------------------------------------------------------
class MetadataError(TerwayError):
    """The instance metadata service failed; ``details`` carry ``path`` and ``http_status``."""

    def __init__(self, message: str, *, path: str, http_status: int | None = None, **details: Any) -> None:
        TerwayError.__init__(self, message, path=path, http_status=http_status, **details)
        self.path = path
        self.http_status = http_status
        self.retry_after: float | None = None


class MetadataUnavailable(MetadataError, TemporaryError):
    """No answer, 429 or 5xx after the retries: try again later."""


class MetadataNotFound(MetadataError, NotFound):
    """404: the path does not exist (e.g. an ENI MAC the service does not know yet)."""


class MetadataTimeout(MetadataError, TemporaryError):
    """A wait for the metadata service to show something (a new ENI, its IPs) timed out."""
