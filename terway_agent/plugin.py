"""The public API for plugin authors: import everything from here.

    from terway_agent.plugin import hookimpl, ModeInfo, Allocation, LinkResult

A mode plugin is a module (or object) with ``@hookimpl`` functions, registered
under the entry-point group ``terway_agent.modes`` with the mode's name.  See
docs/plugin-guide.md and docs/hooks.md.
"""

from terway_agent.context import EventRecorder, ModeContext, NodeInfo
from terway_agent.errors import (
    AllocationError,
    ConfigError,
    DatapathError,
    FeatureNotSupported,
    InvalidInput,
    ModeNotImplemented,
    NotFound,
    PermanentError,
    TemporaryError,
    TerwayError,
)
from terway_agent.hookspecs import hookimpl
from terway_agent.types import (
    CNIIP,
    KNOWN_CAPABILITIES,
    Allocation,
    Attachment,
    Bandwidth,
    CNIInterface,
    CNIRoute,
    InstanceLimits,
    IPAssignment,
    LinkResult,
    ModeInfo,
    PodRef,
    PodRequest,
    RepairReport,
    Status,
)

MODES_GROUP = "terway_agent.modes"
EXTENSIONS_GROUP = "terway_agent.extensions"

__all__ = [
    "CNIIP",
    "EXTENSIONS_GROUP",
    "KNOWN_CAPABILITIES",
    "MODES_GROUP",
    "Allocation",
    "AllocationError",
    "Attachment",
    "Bandwidth",
    "CNIInterface",
    "CNIRoute",
    "ConfigError",
    "DatapathError",
    "EventRecorder",
    "FeatureNotSupported",
    "IPAssignment",
    "InstanceLimits",
    "InvalidInput",
    "LinkResult",
    "ModeContext",
    "ModeInfo",
    "ModeNotImplemented",
    "NodeInfo",
    "NotFound",
    "PermanentError",
    "PodRef",
    "PodRequest",
    "RepairReport",
    "Status",
    "TemporaryError",
    "TerwayError",
    "hookimpl",
]
