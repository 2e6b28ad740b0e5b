"""``terway-agent pool`` and ``terway-agent mapping`` (wired by terway_agent/cli.py)."""

from __future__ import annotations

import argparse
import json
from typing import Any


def add_commands(sub: Any) -> None:
    """Register the ``pool`` and ``mapping`` subcommands on ``sub`` (argparse subparsers)."""
    p = sub.add_parser("pool", help="the IPAM's ENIs, addresses, owners and inhibits")
    p.add_argument("--socket", default="/var/run/eni/eni.socket")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_pool)

    p = sub.add_parser("mapping", help="check that the store, the cloud and the kernel agree (exit 1 if not)")
    p.add_argument("--socket", default="/var/run/eni/eni.socket")
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--skip-kernel",
        action="store_true",
        help="do not compare network devices (nodes whose ENIs have none)",
    )
    p.set_defaults(func=cmd_mapping)


def _ask(socket: str, verb: str, **extra: Any) -> Any:
    from terway_agent.cli import _query

    return _query(socket, verb, **extra)


def cmd_pool(args: argparse.Namespace) -> int:
    snap = _ask(args.socket, "_pool")
    if args.json:
        print(json.dumps(snap, indent=2))
        return 0
    print(render_pool(snap))
    return 0


def render_pool(snap: dict[str, Any]) -> str:
    """The human-readable ``terway-agent pool`` output."""
    lines = [
        f"pool: {snap['kind']} ENI, stack {snap['ip_stack']}, instance {snap['instance_id']} ({snap['instance_type']})",
        f"ENIs: {len(snap['enis'])} of max {snap['max_enis']} (min {snap['min_enis']}), "
        f"{snap['slot_capacity_per_eni']} slot(s) per ENI",
        f"idle: {snap['idle']} (usable now {snap['usable']}), watermarks min {snap['min_pool_size']} / "
        f"max {snap['max_pool_size']}; pending {snap['pending']}, cloud operations in flight {snap['in_flight']}",
    ]
    if snap["insufficient"]:
        lines.append(f"INSUFFICIENT IP: {snap['insufficient_reason']}")
    for name, inh in sorted(snap["inhibits"].items()):
        lines.append(f"inhibit {name}: {inh['reason']} ({inh['left']:.0f}s left)")
    if snap["last_error"]:
        lines.append(f"last cloud error: {snap['last_error']}")
    for v, st in snap["vswitches"].items():
        avail = "?" if st["available"] is None else st["available"]
        aside = f", set aside ({st['reason']})" if st["aside_until"] else ""
        lines.append(f"vSwitch {v}: {avail} free{aside}")
    for eni_id, age in snap["orphans"].items():
        lines.append(f"orphan ENI {eni_id}: unattached, seen {age:.0f}s ago")
    for address, tomb in snap.get("lost", {}).items():
        lines.append(
            f"lost address {address}: still used by {tomb.get('owner')} ({tomb.get('pod') or '?'}), "
            f"gone from {tomb.get('eni_id')}; not handed out until that owner is released"
        )
    lines.append("")
    lines.append(f"{'ENI':24} {'MAC':17} {'IDX':>3} {'STATE':9} {'VSWITCH':24} OWNER")
    for e in snap["enis"]:
        idx = "-" if e["device_index"] is None else str(e["device_index"])
        owner = e["owner"] or ""
        if e["pod"]:
            owner += f" ({e['pod']})"
        lines.append(
            f"{e['eni_id']:24} {e['mac']:17} {idx:>3} {e['state'] + ('*' if e['busy'] else ''):9} "
            f"{e['vswitch_id']:24} {owner}"
        )
        for ip in e["ips"]:
            note = []
            if ip["primary"]:
                note.append("primary")
            if ip["state"] != "ready":
                note.append(ip["state"])
            if ip["cooldown_left"]:
                note.append(f"cooldown {ip['cooldown_left']:.0f}s")
            if ip["hold_for"]:
                note.append(f"held for {ip['hold_for']} {ip['hold_left']:.0f}s")
            if ip.get("lost_for"):
                note.append(f"quarantined: lost by {ip['lost_for']}")
            who = ip["owner"] or "idle"
            if ip["pod"]:
                who += f" ({ip['pod']})"
            lines.append(f"    {ip['address']:39} {who}{'  [' + ', '.join(note) + ']' if note else ''}")
    return "\n".join(lines)


def cmd_mapping(args: argparse.Namespace) -> int:
    report = _ask(args.socket, "_mapping", kernel=not args.skip_kernel)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        views = "store, cloud and kernel" if report["kernel_checked"] else "store and cloud"
        if report["consistent"]:
            print(
                f"consistent: the {views} agree ({len(report['enis'])} ENIs, {len(report['owners'])} owners)"
            )
        else:
            print(f"INCONSISTENT: {len(report['problems'])} problem(s) between the {views}:")
            for p in report["problems"]:
                print(f"  - {p}")
        for n in report["notes"]:
            print(f"  note: {n}")
    return 0 if report["consistent"] else 1
