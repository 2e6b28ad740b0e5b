"""``terway-agent``: the node agent and its operator commands.

Subcommands::

    terway-agent run          run the agent (what the DaemonSet runs)
    terway-agent plugins      installed modes and extensions, versions, hooks (--json)
    terway-agent info         ask a running agent what it is doing
    terway-agent attachments  list the attachments a running agent holds (--json)
    terway-agent pool         the IPAM's ENIs, addresses, owners and inhibits (--json)
    terway-agent mapping      check that store, cloud and kernel agree (exit 1 if not)
    terway-agent install-cni  place the terway CNI executable into a CNI bin dir
    terway-agent state reset-mode   forget which mode ran pods (after draining)
    terway-agent demo         the README demo

Exit status: 0 success, 1 a check failed / the agent reported an error,
2 bad usage or configuration.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from terway_agent.errors import TerwayError, terway_error_in


def _settings_from_args(args: argparse.Namespace) -> Any:
    from terway_agent.config import load_document, parse_settings

    data: dict[str, Any] = {}
    if args.config:
        doc = load_document(args.config, field_name="--config")
        if not isinstance(doc, dict):
            from terway_agent.errors import ConfigError

            raise ConfigError("--config", args.config, "a YAML/JSON object of agent settings")
        data.update(doc)
    flags = {
        "node_name": args.node_name,
        "node_labels": args.node_labels,
        "mode": args.mode,
        "eni_conf_path": args.eni_conf,
        "netconf_path": args.netconf,
        "configmap_dir": args.configmap_dir,
        "socket_path": args.socket,
        "state_dir": args.state_dir,
        "lock_path": args.lock,
        "cni_conf_dir": args.cni_conf_dir,
        "cni_bin_dir": args.cni_bin_dir,
        "debug_listen": args.debug_listen,
        "log_level": args.log_level,
    }
    data.update({k: v for k, v in flags.items() if v is not None})
    parsed = parse_settings(data, source="settings")
    return parsed.value, parsed.warnings


def _add_run_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="agent settings file (YAML or JSON)")
    p.add_argument("--node-name")
    p.add_argument("--node-labels", help="k=v,k=v (standalone: labels for mode selection)")
    p.add_argument("--mode", help="explicit mode, same as the node label terway.alibabacloud.com/network-mode")
    p.add_argument("--eni-conf", help="path of eni_conf (default /etc/eni/eni_conf)")
    p.add_argument("--netconf", help="path of the CNI network config template (the original's 10-terway.conf)")
    p.add_argument("--configmap-dir", help="standalone: directory of terway-config ConfigMaps (<name>.json|yaml)")
    p.add_argument("--socket", help="CNI socket path (default /var/run/eni/eni.socket)")
    p.add_argument("--state-dir", help="state directory (default /var/lib/terway-agent)")
    p.add_argument("--lock", help="lock file (default /var/run/eni/terwayd.lock)")
    p.add_argument("--cni-conf-dir", help="where to write the conflist (default /etc/cni/net.d)")
    p.add_argument("--cni-bin-dir", help="CNI bin dir (default /opt/cni/bin)")
    p.add_argument("--debug-listen", help="host:port of the debug endpoint, '' to disable")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"))


def cmd_run(args: argparse.Namespace) -> int:
    import trio

    from terway_agent import log
    from terway_agent.daemon.app import Agent

    settings, warnings = _settings_from_args(args)
    log.configure(settings.log_level, json=settings.log_json)
    logger = log.get_logger("terway_agent.cli")
    for w in warnings:
        logger.warning("config.warning", problem=w)
    code = 0
    try:
        if settings.use_kubernetes:
            # labels, ConfigMaps, pods and events through the API (terway_agent/k8s)
            from terway_agent.k8s import run_agent

            trio.run(run_agent, settings)
        else:
            trio.run(Agent(settings).run)
    except BaseException as exc:
        err = terway_error_in(exc)
        if err is None:
            raise
        logger.error("agent.failed", error=err.message, **{k: v for k, v in err.details.items() if k != "event"})
        print(f"terway-agent: {err.message}", file=sys.stderr)
        code = 2
    # The agent has stopped and its state is committed.  Worker threads that
    # were abandoned in a blocking read (a Kubernetes watch) may still be
    # parked in C code; tearing the interpreter down around them can abort the
    # process (SIGABRT from glibc's thread unwinding), turning a clean exit
    # code into a crash.  Leave without finalisation instead.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def cmd_plugins(args: argparse.Namespace) -> int:
    from terway_agent._hosting import describe_installed

    rows = describe_installed()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    header = ("NAME", "KIND", "DISTRIBUTION", "VERSION", "STATE", "CAPABILITIES", "HOOKS")
    table = [header]
    for r in rows:
        state = "error" if "error" in r else ("ready" if r.get("implemented", True) else "not implemented")
        table.append(
            (
                r["name"],
                r["kind"],
                r["distribution"],
                r["version"],
                state,
                ",".join(r.get("capabilities", [])) or "-",
                ",".join(h.removeprefix("terway_") for h in r.get("hooks", [])) or "-",
            )
        )
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    for r in rows:
        if "error" in r:
            print(f"\n{r['name']}: {r['error']}", file=sys.stderr)
    return 1 if any("error" in r for r in rows) else 0


def _query(socket_path: str, verb: str, **extra: Any) -> Any:
    from terway_agent import protocol

    try:
        answer = protocol.request(socket_path, {"v": protocol.PROTOCOL_VERSION, "verb": verb, **extra}, timeout=30)
    except OSError as exc:
        raise SystemExit(f"terway-agent: cannot reach the agent at {socket_path}: {exc}") from None
    if not answer.get("ok"):
        err = answer.get("error", {})
        raise SystemExit(f"terway-agent: the agent answered error {err.get('code')}: {err.get('msg')}")
    return answer.get("result")


def cmd_info(args: argparse.Namespace) -> int:
    print(json.dumps(_query(args.socket, "_info"), indent=2))
    return 0


def cmd_attachments(args: argparse.Namespace) -> int:
    rows = _query(args.socket, "_attachments")
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'POD':40} {'CONTAINER':14} {'IFNAME':7} {'STATE':10} {'MODE':14} IPS")
    for r in rows:
        print(f"{r['pod']:40} {r['container_id'][:12]:14} {r['ifname']:7} {r['state']:10} {r['mode']:14} {','.join(r['ips'])}")
    return 0


def launcher_text(python: str, package_root: str) -> str:
    """A tiny launcher for the CNI executable: isolated interpreter, no site
    processing (start-up is on every pod's critical path), standard library only."""
    return (
        f"#!{python} -IS\n"
        "# terway CNI executable, installed by 'terway-agent install-cni'\n"
        "import sys\n"
        f"sys.path.insert(0, {package_root!r})\n"
        "from terway_agent.cni.main import main\n"
        "main()\n"
    )


#: The modules the CNI executable consists of: standard library only.
CNI_MODULES = ("__init__.py", "protocol.py", "cni/__init__.py", "cni/main.py")


def standalone_cni(python: str) -> bytes:
    """A self-contained ``terway`` executable: a zip application of the CNI
    modules with a ``#!<python> -IS`` line, for a host interpreter that has
    nothing of this project installed (the DaemonSet's init container writes it
    from the image onto the node)."""
    import io
    import zipfile

    import terway_agent

    root = os.path.dirname(os.path.abspath(terway_agent.__file__))
    buf = io.BytesIO()
    buf.write(f"#!{python} -IS\n".encode())
    with zipfile.ZipFile(buf, "a", compression=zipfile.ZIP_STORED) as zf:
        for rel in CNI_MODULES:
            with open(os.path.join(root, rel), "rb") as f:
                zf.writestr(f"terway_agent/{rel}", f.read())
        zf.writestr("__main__.py", "from terway_agent.cni.main import main\nmain()\n")
    return buf.getvalue()


def install_cni(bin_dir: str, *, name: str = "terway", standalone_python: str | None = None) -> str:
    """Write the CNI executable atomically into ``bin_dir``; returns its path.

    By default a launcher for this interpreter and this installation; with
    ``standalone_python`` a self-contained zip application for that interpreter.
    """
    if standalone_python:
        data = standalone_cni(standalone_python)
    else:
        import terway_agent

        package_root = os.path.dirname(os.path.dirname(os.path.abspath(terway_agent.__file__)))
        data = launcher_text(sys.executable, package_root).encode()
    os.makedirs(bin_dir, exist_ok=True)
    target = os.path.join(bin_dir, name)
    tmp = f"{target}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.chmod(tmp, 0o755)
    os.replace(tmp, target)
    return target


def cmd_install_cni(args: argparse.Namespace) -> int:
    python = args.python if args.standalone else None
    print(install_cni(args.bin_dir, standalone_python=python))
    return 0


def cmd_state(args: argparse.Namespace) -> int:
    from terway_agent.daemon.app import META_RAN_EXCLUSIVITY, META_RAN_MODE
    from terway_agent.store import Store

    store = Store(os.path.join(args.state_dir, "state.db"))
    try:
        if args.action == "reset-mode":
            counts = store.count_by_mode()
            if counts:
                listed = ", ".join(f"{n} by {m}" for m, n in counts.items())
                print(f"terway-agent: refusing: attachments still exist ({listed}); drain the node first", file=sys.stderr)
                return 1
            store.set_meta(META_RAN_EXCLUSIVITY, None)
            store.set_meta(META_RAN_MODE, None)
            print("the node's mode history is cleared; the agent may now start in any mode")
        elif args.action == "show":
            print(json.dumps({
                "schema_version": store.schema_version,
                "ran_exclusivity": store.get_meta(META_RAN_EXCLUSIVITY),
                "ran_mode": store.get_meta(META_RAN_MODE),
                "attachments": store.count_by_mode(),
            }, indent=2))
    finally:
        store.close()
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from terway_agent.demo import main as demo_main

    return demo_main(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="terway-agent", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run the agent")
    _add_run_flags(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("plugins", help="list installed modes and extensions")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_plugins)

    for name, fn, helptext in (("info", cmd_info, "what a running agent is doing"),
                               ("attachments", cmd_attachments, "attachments a running agent holds")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--socket", default="/var/run/eni/eni.socket")
        p.add_argument("--json", action="store_true")
        p.set_defaults(func=fn)

    p = sub.add_parser("install-cni", help="place the terway CNI executable into a CNI bin dir")
    p.add_argument("--bin-dir", default="/opt/cni/bin")
    p.add_argument("--standalone", action="store_true",
                   help="write a self-contained executable for the host's Python (from a container image)")
    p.add_argument("--python", default="/usr/bin/python3", help="the host interpreter for --standalone")
    p.set_defaults(func=cmd_install_cni)

    p = sub.add_parser("state", help="inspect or reset the agent's state")
    p.add_argument("action", choices=("show", "reset-mode"))
    p.add_argument("--state-dir", default="/var/lib/terway-agent")
    p.set_defaults(func=cmd_state)

    from terway_agent.ipam._cli import add_commands as add_ipam_commands

    add_ipam_commands(sub)  # pool, mapping

    p = sub.add_parser("demo", help="run the README demo")
    p.add_argument("--workdir", default="/tmp/terway-demo")
    p.add_argument("--keep", action="store_true", help="leave the demo running until Ctrl-C")
    p.add_argument("--standalone", action="store_true", help="one node without a cloud (the example mode)")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = args.func(args)
    except TerwayError as exc:
        print(f"terway-agent: {exc.message}", file=sys.stderr)
        code = 2
    sys.exit(code)


if __name__ == "__main__":
    main()
