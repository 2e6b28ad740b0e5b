"""``terway-cloud-emulator``: run the cloud emulator as a process, or talk to one.

Commands::

    terway-cloud-emulator serve [--topology FILE] [--listen 127.0.0.1:PORT] [--state-dump PATH]
    terway-cloud-emulator dump  --endpoint HOST:PORT
    terway-cloud-emulator check-topology FILE
    terway-cloud-emulator instance-types

``serve`` prints one JSON line when ready (``{"event": "emulator.ready",
"endpoint": ..., "admin_url": ..., "metadata_urls": {...}, ...}``) so scripts
can read the port when ``--listen`` ends in ``:0``; it runs until SIGINT or
SIGTERM and then writes the state dump.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from typing import Any

from terway_agent.errors import TerwayError


def _serve(args: argparse.Namespace) -> int:
    from terway_agent.cloud.emulator.emulator import Emulator  # noqa: PLC0415
    from terway_agent.cloud.emulator.topology import default_topology, load_topology  # noqa: PLC0415
    from terway_agent.log import configure  # noqa: PLC0415

    configure(level=args.log_level, stream=sys.stderr)
    topology = load_topology(args.topology) if args.topology else default_topology()
    emu = Emulator(topology, listen=args.listen, state_dump=args.state_dump)
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    emu.start()
    try:
        ready = {
            "event": "emulator.ready",
            "endpoint": emu.endpoint,
            "admin_url": emu.admin_url,
            "region_id": emu.region_id,
            "access_key_id": emu.access_key_id,
            "instances": emu.instance_ids,
            "metadata_urls": {iid: emu.metadata_url(iid) for iid in emu.instance_ids},
        }
        print(json.dumps(ready), flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        emu.stop()
    return 0


def _dump(args: argparse.Namespace) -> int:
    from terway_agent.cloud.emulator.admin_client import AdminClient  # noqa: PLC0415

    endpoint = args.endpoint.removeprefix("http://").rstrip("/")
    admin = AdminClient(f"http://{endpoint}/__admin__")
    print(json.dumps(admin.state(), indent=2, sort_keys=True))
    return 0


def _check(args: argparse.Namespace) -> int:
    from terway_agent.cloud.emulator.topology import load_topology  # noqa: PLC0415

    topo = load_topology(args.file)
    print(
        f"{args.file}: ok -- region {topo.region}, {len(topo.vswitches)} vSwitches, "
        f"{len(topo.instances)} instances, node side {topo.node_side}"
    )
    return 0


def _types(args: argparse.Namespace) -> int:
    from terway_agent.cloud.emulator._instance_types import INSTANCE_TYPES  # noqa: PLC0415

    print(f"{'type':24} {'ENIs':>4} {'IPv4/ENI':>8} {'IPv6/ENI':>8} {'total':>5} trunk  source")
    for tid, it in sorted(INSTANCE_TYPES.items()):
        print(
            f"{tid:24} {it.eni_quantity:>4} {it.eni_private_ip_address_quantity:>8} "
            f"{it.eni_ipv6_address_quantity:>8} {it.eni_total_quantity:>5} {str(it.eni_trunk_supported):5}  {it.source}"
        )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="terway-cloud-emulator", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the emulator until SIGINT/SIGTERM")
    serve.add_argument("--topology", help="topology YAML (default: the packaged demo topology)")
    serve.add_argument(
        "--listen", default="127.0.0.1:0", help="HOST:PORT (default 127.0.0.1:0, any free port)"
    )
    serve.add_argument("--state-dump", help="write the final state here as JSON on exit")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.set_defaults(fn=_serve)
    dump = sub.add_parser("dump", help="print the state of a running emulator")
    dump.add_argument("--endpoint", required=True, help="HOST:PORT of the emulator")
    dump.set_defaults(fn=_dump)
    check = sub.add_parser("check-topology", help="validate a topology file")
    check.add_argument("file")
    check.set_defaults(fn=_check)
    types = sub.add_parser("instance-types", help="list the known instance types and their ENI quotas")
    types.set_defaults(fn=_types)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Console entry point."""
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except TerwayError as exc:
        print(f"terway-cloud-emulator: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"terway-cloud-emulator: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
