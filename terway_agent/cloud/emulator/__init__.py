"""A faithful local Alibaba Cloud: the ECS/VPC RPC API as the official SDK
speaks it, instance metadata, and an admin endpoint for tests.

Public surface:

* :class:`Emulator` -- start/stop in-process, ``endpoint``, ``metadata_url()``, ``admin()``;
* :class:`AdminClient` -- script faults, latencies, rate limits; read state and call counts;
* :class:`Topology`, :func:`load_topology`, :func:`default_topology`;
* the node-side seam in :mod:`terway_agent.cloud.emulator.node_side`.

Run as a process with ``terway-cloud-emulator serve --topology FILE``.
See docs/cloud.md for what is emulated and how it differs from the real service.
"""

from terway_agent.cloud.emulator.admin_client import AdminClient, AdminError
from terway_agent.cloud.emulator.emulator import Emulator
from terway_agent.cloud.emulator.topology import Topology, default_topology, load_topology

__all__ = ["AdminClient", "AdminError", "Emulator", "Topology", "default_topology", "load_topology"]
