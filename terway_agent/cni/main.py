"""``terway``: the CNI executable that container runtimes exec for every pod.

Speaks CNI 1.0.0 and 1.1.0 (and 0.4.0 for ADD/DEL/CHECK): all six verbs.
It validates its environment and stdin, answers VERSION itself, and forwards
everything else to the agent over its unix socket (:mod:`terway_agent.protocol`).

Imports only the cheapest parts of the standard library (no ``json``, ``re``,
``socket`` or ``typing``: each costs ~9 ms of start-up here; see
:mod:`terway_agent.protocol`): the interpreter's start-up is most of its cost
(benchmarks/bench_cni.py).  Logs go to the configured file (``log_file``
in the network config, or ``TERWAY_CNI_LOG``) and errors also to stderr --
never to stdout, which carries only the CNI result.

Error codes (CNI spec): 1 incompatible version, 4 invalid environment
variable (named), 6 stdin not decodable, 7 invalid network config, 11 try
again later (agent unreachable or busy), 50/51 STATUS unavailable; 100+ are
the agent's own (docs/architecture.md).
"""

from __future__ import annotations

import os
import sys
import time

from terway_agent import protocol

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from typing import Any, NoReturn

SUPPORTED_VERSIONS = ("0.4.0", "1.0.0", "1.1.0")
LATEST = "1.1.0"

_REQUIRED_ENV = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"),
    "GC": ("CNI_PATH",),
    "STATUS": ("CNI_PATH",),
    "VERSION": (),
}
_ALNUM = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
_CID_CHARS = _ALNUM | frozenset("_.-")
_TIMEOUTS = {"ADD": 300.0, "DEL": 120.0, "CHECK": 60.0, "GC": 300.0, "STATUS": 10.0}


class CNIError(Exception):
    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details


def _version_tuple(v: str) -> tuple[int, ...]:
    parts = v.split(".")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        return (-1, -1, -1)
    return tuple(int(p) for p in parts)


def valid_container_id(cid: str) -> bool:
    return bool(cid) and cid[0] in _ALNUM and all(c in _CID_CHARS for c in cid)


def validate_ifname(name: str) -> str | None:
    """Why ``name`` cannot be a Linux interface name, or None if it can."""
    if not name:
        return "it is empty"
    if len(name) > 15:
        return f"it is {len(name)} characters long, at most 15 are allowed"
    if name in (".", ".."):
        return "it is . or .."
    for ch in name:
        if ch == "/" or ch == ":" or ch.isspace():
            return f"it contains {ch!r}"
    return None


def parse_cni_args(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in text.split(";"):
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CNIError(4, f"CNI_ARGS: malformed item {item!r}, expected KEY=VALUE pairs separated by ';'")
        out[key] = value
    return out


def validate_env(command: str, env: dict[str, str]) -> dict[str, str]:
    """The CNI_* variables of ``command``, validated (raises CNIError code 4)."""
    picked: dict[str, str] = {}
    for var in _REQUIRED_ENV[command]:
        value = env.get(var)
        if value is None or value == "":  # as libcni's skel: empty is missing
            raise CNIError(4, f"{var} is not set; {command} requires {', '.join(_REQUIRED_ENV[command])}")
        picked[var] = value
    for var in ("CNI_NETNS", "CNI_ARGS", "CNI_CONTAINERID", "CNI_IFNAME"):
        if var not in picked and env.get(var):
            picked[var] = env[var]
    cid = picked.get("CNI_CONTAINERID")
    if cid is not None and not valid_container_id(cid):
        raise CNIError(
            4,
            f"CNI_CONTAINERID {cid!r} is invalid: expected an alphanumeric first character "
            "followed by alphanumerics, '_', '.' or '-'",
        )
    ifname = picked.get("CNI_IFNAME")
    if ifname is not None:
        why = validate_ifname(ifname)
        if why:
            raise CNIError(4, f"CNI_IFNAME {ifname!r} cannot be used as an interface name: {why}")
    netns = picked.get("CNI_NETNS")
    if command in ("ADD", "CHECK") and netns is not None and not netns.startswith("/"):
        raise CNIError(4, f"CNI_NETNS {netns!r} is not an absolute path to a network namespace")
    if "CNI_ARGS" in picked:
        parse_cni_args(picked["CNI_ARGS"])
    return picked


def read_config(command: str, stdin: bytes) -> dict[str, Any]:
    if not stdin.strip():
        if command == "VERSION":
            return {}
        raise CNIError(6, "no network configuration on stdin: expected a JSON object")
    try:
        conf = protocol.loads(stdin)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CNIError(6, f"cannot decode the network configuration on stdin: {exc}") from None
    if not isinstance(conf, dict):
        raise CNIError(6, "the network configuration on stdin is not a JSON object")
    return conf


def check_version(command: str, conf: dict[str, Any]) -> str:
    version = conf.get("cniVersion")
    if not isinstance(version, str) or not version:
        raise CNIError(7, "network config cniVersion is missing: expected one of " + ", ".join(SUPPORTED_VERSIONS))
    if version not in SUPPORTED_VERSIONS:
        raise CNIError(
            1,
            f"incompatible CNI version {version}: this plugin supports " + ", ".join(SUPPORTED_VERSIONS),
        )
    if command in ("GC", "STATUS") and _version_tuple(version) < (1, 1, 0):
        raise CNIError(1, f"{command} needs cniVersion 1.1.0 or later, the network config has {version}")
    return version


_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}


class _Log:
    """JSON lines to ``path`` (at ``level`` and above) and errors to stderr; never stdout."""

    def __init__(self, path: str, level: str = "info") -> None:
        self.path = path
        self.level = _LEVELS.get(level, 20)

    def write(self, level: str, event: str, **data: Any) -> None:
        if level != "error" and _LEVELS[level] < self.level:
            return
        line = protocol.dumps({"ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "level": level,
                               "event": event, **data})
        if level == "error":
            try:
                sys.stderr.write(line + "\n")
            except OSError:
                pass
        if self.path:
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                try:
                    os.write(fd, line.encode() + b"\n")
                finally:
                    os.close(fd)
            except OSError:
                pass  # logging must never fail a pod


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(protocol.dumps(obj))
    sys.stdout.write("\n")
    sys.stdout.flush()


def _fail(err: CNIError, version: str, log: _Log, **ctx: Any) -> NoReturn:
    out: dict[str, Any] = {"cniVersion": version, "code": err.code, "msg": err.msg}
    if err.details:
        out["details"] = err.details
    log.write("error", "cni.failed", code=err.code, msg=err.msg, details=err.details, **ctx)
    _emit(out)
    sys.exit(1)


def run(env: dict[str, str], stdin: bytes) -> None:
    log = _Log(env.get("TERWAY_CNI_LOG", ""), env.get("TERWAY_CNI_LOG_LEVEL", "info"))
    command = env.get("CNI_COMMAND", "")
    version = LATEST
    try:
        if command not in _REQUIRED_ENV:
            raise CNIError(
                4,
                f"CNI_COMMAND {command!r} is not supported: expected one of ADD, DEL, CHECK, STATUS, GC, VERSION"
                if command
                else "CNI_COMMAND is not set: expected one of ADD, DEL, CHECK, STATUS, GC, VERSION",
            )
        conf = read_config(command, stdin)
        if isinstance(conf.get("log_file"), str) and conf["log_file"] and not log.path:
            log.path = conf["log_file"]
        if isinstance(conf.get("log_level"), str) and conf["log_level"] in _LEVELS and "TERWAY_CNI_LOG_LEVEL" not in env:
            log.level = _LEVELS[conf["log_level"]]
        if command == "VERSION":
            asked = conf.get("cniVersion") if isinstance(conf.get("cniVersion"), str) else LATEST
            _emit({"cniVersion": asked or LATEST, "supportedVersions": list(SUPPORTED_VERSIONS)})
            return
        version = check_version(command, conf)
        picked = validate_env(command, env)
        socket_path = env.get("TERWAY_SOCKET") or conf.get("socket_path") or protocol.DEFAULT_SOCKET
        if not isinstance(socket_path, str):
            raise CNIError(7, f"network config socket_path {socket_path!r} is not a string")
        started = time.monotonic()
        try:
            answer = protocol.request(
                socket_path,
                {"v": protocol.PROTOCOL_VERSION, "verb": command, "env": picked, "config": conf},
                timeout=_TIMEOUTS[command],
            )
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            if command == "STATUS":
                raise CNIError(50, f"the terway agent is not running (socket {socket_path}: {exc.strerror})") from None
            raise CNIError(11, f"the terway agent is not reachable at {socket_path} ({exc.strerror}); try again later") from None
        except TimeoutError:
            if command == "STATUS":
                raise CNIError(50, f"the terway agent did not answer STATUS within {_TIMEOUTS[command]:.0f}s") from None
            raise CNIError(11, f"the terway agent did not answer {command} within {_TIMEOUTS[command]:.0f}s; try again later") from None
        except (OSError, protocol.ProtocolError) as exc:
            if command == "STATUS":
                raise CNIError(50, f"the terway agent at {socket_path} is unavailable: {exc}") from None
            raise CNIError(11, f"talking to the terway agent at {socket_path} failed: {exc}; try again later") from None
        if not answer.get("ok"):
            err = answer.get("error") or {}
            raise CNIError(int(err.get("code", 100)), str(err.get("msg", "the agent failed without a message")),
                           str(err.get("details", "")))
        log.write("info", "cni.done", command=command, container=picked.get("CNI_CONTAINERID", ""),
                  ms=round((time.monotonic() - started) * 1000, 1))
        result = answer.get("result")
        if result is not None:
            _emit(result)
    except CNIError as err:
        _fail(err, version, log, command=command, container=env.get("CNI_CONTAINERID", ""))


def main() -> None:
    try:
        stdin = sys.stdin.buffer.read()
    except OSError as exc:
        _fail(CNIError(5, f"cannot read stdin: {exc}"), LATEST, _Log(os.environ.get("TERWAY_CNI_LOG", "")))
    run(dict(os.environ), stdin)


if __name__ == "__main__":
    main()
