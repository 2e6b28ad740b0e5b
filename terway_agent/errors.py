"""The error taxonomy shared by the core and every plugin.

Three families, chosen by what the caller should do next:

* :class:`InvalidInput` -- the request or configuration is wrong; retrying the
  same thing cannot help.  Always names the field, the value and what was
  expected.
* :class:`TemporaryError` -- try again later (optionally after ``retry_after``
  seconds): throttling, an exhausted pool that is being refilled, a pod that is
  already being processed.
* :class:`PermanentError` -- the operation cannot succeed on this node as it
  is configured (a mode that is not implemented, an unsupported feature).

CNI error codes are chosen only at the CNI edge (``terway_agent.daemon``) from
these classes; the ``cni_code`` attribute is the default mapping.

Plugins raise these (or subclasses); they never construct CNI errors.
"""

from __future__ import annotations

from typing import Any


class TerwayError(Exception):
    """Base of every error the agent raises on purpose.

    :param message: a sentence for humans.
    :param details: key-value data for logs and the CNI ``details`` field.
        Never put secrets here.
    """

    #: CNI error code used when this error reaches the CNI edge.
    cni_code: int = 100

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def __str__(self) -> str:  # pragma: no cover - trivial
        return self.message


class InvalidInput(TerwayError):
    """Something the caller supplied is wrong.

    :param field: the dotted name of the offending field (``eni_conf.max_pool_size``,
        ``CNI_IFNAME``, ``annotation k8s.aliyun.com/ingress-bandwidth``).
    :param value: the value that was given; callers pass a placeholder such as
        ``"<redacted>"`` for credentials (the message is logged and may become an event).
    :param expected: what would have been accepted.
    """

    cni_code = 7

    def __init__(self, field: str, value: Any, expected: str, *, message: str | None = None) -> None:
        shown = _short_repr(value)
        super().__init__(
            message or f"{field}: got {shown}, expected {expected}",
            field=field,
            value=shown,
            expected=expected,
        )
        self.field = field
        self.value = value
        self.expected = expected


class ConfigError(InvalidInput):
    """Invalid agent or CNI configuration (eni_conf, conflist, flags)."""


class TemporaryError(TerwayError):
    """Retry later; ``retry_after`` (seconds) when known."""

    cni_code = 11

    def __init__(self, message: str, *, retry_after: float | None = None, **details: Any) -> None:
        super().__init__(message, **details)
        self.retry_after = retry_after


class PodBusy(TemporaryError):
    """Another request for the same pod is in progress."""


class PermanentError(TerwayError):
    """Cannot succeed on this node as configured."""

    cni_code = 100


class ModeNotImplemented(PermanentError):
    """The selected mode is registered but does not serve pods yet."""

    cni_code = 103

    def __init__(self, mode: str, detail: str = "") -> None:
        msg = f"mode {mode} is not implemented yet"
        if detail:
            msg += f": {detail}"
        super().__init__(msg, mode=mode)
        self.mode = mode


class FeatureNotSupported(PermanentError):
    """The mode does not support what the request asks for (e.g. NetworkPolicy in exclusive ENI mode)."""

    cni_code = 104


class AllocationError(TerwayError):
    """No address could be allocated (pool empty and the cloud refused or failed)."""

    cni_code = 101


class DatapathError(TerwayError):
    """A netlink or sysctl operation failed.

    Carries ``device``, ``netns`` and ``errno`` in ``details`` where known.
    """

    cni_code = 102


class NotFound(TerwayError):
    """The thing to act on does not exist (used where absence is not success)."""

    cni_code = 3


def _short_repr(value: Any, limit: int = 120) -> str:
    text = repr(value)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text


def terway_error_in(exc: BaseException) -> TerwayError | None:
    """The TerwayError inside ``exc`` (possibly nested in exception groups), if any."""
    if isinstance(exc, TerwayError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for sub in exc.exceptions:
            found = terway_error_in(sub)
            if found is not None:
                return found
    return None
