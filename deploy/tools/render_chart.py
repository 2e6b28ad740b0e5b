#!/usr/bin/env python3
"""Render the terway-agent Helm chart without Helm (a small Go-template subset).

Helm cannot be installed on the build machines of this project, so the chart's
templates are written with a deliberately small part of Go templates and Sprig
that this module implements -- the same templates render with real Helm 3::

    python3 deploy/tools/render_chart.py deploy/chart/terway-agent \\
        --namespace kube-system --release terway-agent [-f my-values.yaml] [--set agent.logLevel=debug]

Supported: ``{{ }}`` with ``{{-``/``-}}`` trimming, comments ``{{/* */}}``,
``.Values/.Release/.Chart/.Capabilities`` fields, ``$`` and ``$var`` (also
``:=``/``=`` assignments), string/number/bool/nil literals, parenthesised
pipelines, ``|``, ``if/else if/else``, ``with``, ``range`` (lists and maps,
``$i, $v :=``), ``define``/``include``/``template``, and the functions listed
in ``FUNCTIONS``.  Anything else is an error naming the template and line.

Output: the rendered documents of ``templates/`` (files starting with ``_``
are helpers), each prefixed with ``# Source: <chart>/templates/<file>`` like
``helm template``; ``--crds`` prepends the chart's ``crds/`` files.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml


class TemplateError(Exception):
    """A template that this renderer cannot render (or that is wrong)."""


# ---------------------------------------------------------------------------
# values
# ---------------------------------------------------------------------------


def deep_merge(base: Any, over: Any) -> Any:
    """Helm's values coalescing: maps merge recursively, anything else replaces; ``null`` deletes."""
    if isinstance(base, Mapping) and isinstance(over, Mapping):
        out = dict(base)
        for k, v in over.items():
            if v is None:
                out.pop(k, None)
            else:
                out[k] = deep_merge(base.get(k), v)
        return out
    return over


def parse_set(expr: str) -> dict[str, Any]:
    """``a.b.c=value`` (value parsed as YAML: numbers, booleans, lists) into a nested dict."""
    if "=" not in expr:
        raise TemplateError(f"--set {expr!r}: expected key=value")
    key, raw = expr.split("=", 1)
    value = yaml.safe_load(raw) if raw else ""
    out: dict[str, Any] = {}
    cur = out
    parts = key.split(".")
    for p in parts[:-1]:
        cur = cur.setdefault(p, {})
    cur[parts[-1]] = value
    return out


# ---------------------------------------------------------------------------
# functions (Go template builtins + the Sprig/Helm functions the chart uses)
# ---------------------------------------------------------------------------


def truthy(v: Any) -> bool:
    if v is None or v is False:
        return False
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return v != 0
    if isinstance(v, (str, list, tuple, dict)):
        return len(v) > 0
    return True


def _to_yaml(v: Any) -> str:
    if v is None:
        return "null"
    return yaml.safe_dump(v, default_flow_style=False, sort_keys=True, width=1 << 20).rstrip("\n")


def _indent(n: int, s: Any) -> str:
    pad = " " * int(n)
    return "\n".join(pad + line if line else line for line in str(s).split("\n"))


def _go_str(v: Any) -> str:
    if v is None:
        return ""
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    if isinstance(v, (dict, list)):
        return json.dumps(v)
    return str(v)


def _printf(fmt: str, *args: Any) -> str:
    out = []
    i = 0
    args_l = list(args)
    while i < len(fmt):
        c = fmt[i]
        if c == "%" and i + 1 < len(fmt):
            verb = fmt[i + 1]
            if verb == "%":
                out.append("%")
            elif verb in "sdv":
                if not args_l:
                    raise TemplateError(f"printf {fmt!r}: not enough arguments")
                out.append(_go_str(args_l.pop(0)))
            elif verb == "q":
                out.append(json.dumps(_go_str(args_l.pop(0))))
            else:
                raise TemplateError(f"printf {fmt!r}: verb %{verb} is not supported")
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out)


def _required(msg: str, v: Any) -> Any:
    if not truthy(v) and v != 0:
        raise TemplateError(f"required value missing: {msg}")
    return v


def _default(d: Any, v: Any = None) -> Any:
    return v if truthy(v) else d


def _eq(a: Any, *bs: Any) -> bool:
    return any(a == b for b in bs)


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "default": _default,
    "quote": lambda *v: " ".join(json.dumps(_go_str(x)) for x in v),
    "squote": lambda v: "'" + _go_str(v) + "'",
    "toYaml": _to_yaml,
    "toJson": lambda v: json.dumps(v, separators=(",", ":"), sort_keys=True),
    "toPrettyJson": lambda v: json.dumps(v, indent=2, sort_keys=True),
    "indent": _indent,
    "nindent": lambda n, s: "\n" + _indent(n, s),
    "trunc": lambda n, s: _go_str(s)[: int(n)] if int(n) >= 0 else _go_str(s)[int(n) :],
    "trimSuffix": lambda suf, s: _go_str(s)[: -len(suf)] if suf and _go_str(s).endswith(suf) else _go_str(s),
    "trimPrefix": lambda pre, s: _go_str(s)[len(pre) :] if pre and _go_str(s).startswith(pre) else _go_str(s),
    "trim": lambda s: _go_str(s).strip(),
    "lower": lambda s: _go_str(s).lower(),
    "upper": lambda s: _go_str(s).upper(),
    "replace": lambda old, new, s: _go_str(s).replace(old, new),
    "contains": lambda sub, s: sub in _go_str(s),
    "hasPrefix": lambda pre, s: _go_str(s).startswith(pre),
    "sha256sum": lambda s: hashlib.sha256(_go_str(s).encode()).hexdigest(),
    "b64enc": lambda s: base64.b64encode(_go_str(s).encode()).decode(),
    "printf": _printf,
    "print": lambda *a: "".join(_go_str(x) for x in a),
    "toString": _go_str,
    "required": _required,
    "empty": lambda v: not truthy(v),
    "not": lambda v: not truthy(v),
    "and": lambda *a: next((x for x in a if not truthy(x)), a[-1] if a else None),
    "or": lambda *a: next((x for x in a if truthy(x)), a[-1] if a else None),
    "eq": _eq,
    "ne": lambda a, b: a != b,
    "hasKey": lambda d, k: isinstance(d, Mapping) and k in d,
    "list": lambda *a: list(a),
    "dict": lambda *a: {str(a[i]): a[i + 1] for i in range(0, len(a) - 1, 2)},
    "merge": lambda d, *others: _merge_all(d, *others),
    "join": lambda sep, items: sep.join(_go_str(x) for x in (items or [])),
    "int": lambda v: int(v),
}


def _merge_all(dst: Any, *srcs: Any) -> Any:
    out = dict(dst or {})
    for s in srcs:
        for k, v in (s or {}).items():
            if k not in out:
                out[k] = v
            elif isinstance(out[k], Mapping) and isinstance(v, Mapping):
                out[k] = _merge_all(out[k], v)
    return out


# ---------------------------------------------------------------------------
# lexing: text and actions
# ---------------------------------------------------------------------------

_ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.S)


def _split(src: str, name: str) -> list[tuple[str, str, int]]:
    """[("text", s, line) | ("action", s, line)] with trimming applied."""
    parts: list[tuple[str, str, int]] = []
    pos = 0
    for m in _ACTION.finditer(src):
        text = src[pos : m.start()]
        if m.group(1):
            text = text.rstrip(" \t\r\n")
        line = src.count("\n", 0, m.start()) + 1
        parts.append(("text", text, line))
        body = m.group(2).strip()
        if not body.startswith("/*"):
            parts.append(("action", body, line))
        pos = m.end()
        if m.group(3):
            rest = src[pos:]
            stripped = rest.lstrip(" \t\r\n")
            pos += len(rest) - len(stripped)
    parts.append(("text", src[pos:], src.count("\n") + 1))
    # a trimmed text is only trimmed on its own side: re-apply left trims of the next action
    return [p for p in parts if p[1] != "" or p[0] == "action"]


_TOKEN = re.compile(
    r'\s*(?:(?P<str>"(?:[^"\\]|\\.)*"|`[^`]*`)|(?P<num>-?\d+(?:\.\d+)?)|(?P<var>\$[A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*)'
    r"|(?P<field>(?:\.[A-Za-z0-9_]+)+|\.)|(?P<ident>[A-Za-z_][A-Za-z0-9_]*)|(?P<op>:=|=|\||\(|\)|,))"
)


def _tokens(expr: str, where: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    expr = expr.strip()
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if not m or m.end() == pos:
            raise TemplateError(f"{where}: cannot parse {expr[pos : pos + 30]!r} in {{{{ {expr} }}}}")
        kind = m.lastgroup
        assert kind is not None
        out.append((kind, m.group(kind)))
        pos = m.end()
    return out


# ---------------------------------------------------------------------------
# parsing into a tree
# ---------------------------------------------------------------------------


class _Node:
    pass


class _Text(_Node):
    def __init__(self, text: str) -> None:
        self.text = text


class _Action(_Node):
    def __init__(self, pipe: Any, where: str, assign: str | None = None, declare: bool = False) -> None:
        self.pipe, self.where, self.assign, self.declare = pipe, where, assign, declare


class _Block(_Node):
    def __init__(self, kind: str, pipe: Any, where: str, vars_: list[str]) -> None:
        self.kind, self.pipe, self.where, self.vars = kind, pipe, where, vars_
        self.body: list[_Node] = []
        self.else_body: list[_Node] = []


class _Include(_Node):
    def __init__(self, name: str, pipe: Any, where: str) -> None:
        self.name, self.pipe, self.where = name, pipe, where


def _parse_pipeline(toks: list[tuple[str, str]], where: str) -> Any:
    """A pipeline: list of commands; a command: list of operands."""
    cmds: list[list[Any]] = [[]]
    i = 0

    def operand(j: int) -> tuple[Any, int]:
        kind, val = toks[j]
        if kind == "op" and val == "(":
            depth, k = 1, j + 1
            while k < len(toks) and depth:
                if toks[k] == ("op", "("):
                    depth += 1
                elif toks[k] == ("op", ")"):
                    depth -= 1
                k += 1
            if depth:
                raise TemplateError(f"{where}: unbalanced parenthesis")
            return ("pipe", _parse_pipeline(toks[j + 1 : k - 1], where)), k
        return (kind, val), j + 1

    while i < len(toks):
        kind, val = toks[i]
        if kind == "op" and val == "|":
            cmds.append([])
            i += 1
            continue
        if kind == "op" and val in (")", ",", ":=", "="):
            raise TemplateError(f"{where}: unexpected {val!r}")
        op, i = operand(i)
        cmds[-1].append(op)
    if any(not c for c in cmds):
        raise TemplateError(f"{where}: empty command in pipeline")
    return cmds


def _parse(src: str, name: str) -> tuple[list[_Node], dict[str, list[_Node]]]:
    defines: dict[str, list[_Node]] = {}
    root: list[_Node] = []
    stack: list[tuple[str, list[_Node], _Block | None, str | None]] = [("root", root, None, None)]

    def target() -> list[_Node]:
        return stack[-1][1]

    for kind, text, line in _split(src, name):
        where = f"{name}:{line}"
        if kind == "text":
            target().append(_Text(text))
            continue
        head = text.split(None, 1)
        word = head[0] if head else ""
        rest = head[1] if len(head) > 1 else ""
        if word in ("if", "with", "range"):
            vars_: list[str] = []
            toks = _tokens(rest, where)
            if word == "range" and any(t == ("op", ":=") for t in toks):
                k = toks.index(("op", ":="))
                vars_ = [v for kk, v in toks[:k] if kk == "var"]
                toks = toks[k + 1 :]
            elif word == "with" and len(toks) > 2 and toks[1] == ("op", ":="):
                vars_ = [toks[0][1]]
                toks = toks[2:]
            block = _Block(word, _parse_pipeline(toks, where), where, vars_)
            target().append(block)
            stack.append((word, block.body, block, None))
        elif word == "else":
            if stack[-1][2] is None:
                raise TemplateError(f"{where}: else without if/with/range")
            _k, _body, block, _ = stack[-1]
            assert block is not None
            if rest.startswith("if "):
                inner = _Block("if", _parse_pipeline(_tokens(rest[3:], where), where), where, [])
                block.else_body.append(inner)
                stack.append(("if", inner.body, inner, "elif"))
            else:
                stack[-1] = (stack[-1][0], block.else_body, block, stack[-1][3])
        elif word == "end":
            if len(stack) == 1:
                raise TemplateError(f"{where}: end without a block")
            popped = stack.pop()
            # an "else if" chain ends with one {{ end }}: unwind the nested ifs up to the first
            while popped[3] == "elif":
                popped = stack.pop()
            if popped[0] == "define":
                defines[str(popped[2])] = popped[1]  # type: ignore[index]
        elif word == "define":
            m = re.fullmatch(r'"([^"]+)"', rest.strip())
            if not m:
                raise TemplateError(f"{where}: define needs a quoted name")
            body: list[_Node] = []
            stack.append(("define", body, m.group(1), None))  # type: ignore[arg-type]
        elif word == "template":
            m = re.fullmatch(r'"([^"]+)"\s*(.*)', rest.strip())
            if not m:
                raise TemplateError(f"{where}: template needs a quoted name")
            pipe = _parse_pipeline(_tokens(m.group(2) or ".", where), where)
            target().append(_Include(m.group(1), pipe, where))
        else:
            toks = _tokens(text, where)
            assign = None
            declare = False
            if len(toks) > 2 and toks[0][0] == "var" and toks[1] in (("op", ":="), ("op", "=")):
                assign, declare = toks[0][1], toks[1][1] == ":="
                toks = toks[2:]
            target().append(_Action(_parse_pipeline(toks, where), where, assign, declare))
    if len(stack) != 1:
        raise TemplateError(f"{name}: unterminated {stack[-1][0]} block")
    return root, defines


# ---------------------------------------------------------------------------
# evaluation
# ---------------------------------------------------------------------------


class Renderer:
    """Renders a chart directory."""

    def __init__(self, chart_dir: Path, values: Mapping[str, Any], *, release: str, namespace: str) -> None:
        self.chart_dir = Path(chart_dir)
        chart = yaml.safe_load((self.chart_dir / "Chart.yaml").read_text())
        self.root = {
            "Values": dict(values),
            "Release": {
                "Name": release,
                "Namespace": namespace,
                "Service": "Helm",
                "IsInstall": True,
                "IsUpgrade": False,
                "Revision": 1,
            },
            "Chart": {
                "Name": chart["name"],
                "Version": str(chart["version"]),
                "AppVersion": str(chart.get("appVersion", "")),
            },
            "Capabilities": {"KubeVersion": {"Version": "v1.20.2", "Major": "1", "Minor": "20"}},
            "Template": {"BasePath": f"{chart['name']}/templates"},
        }
        self.defines: dict[str, list[_Node]] = {}
        self.templates: list[tuple[str, list[_Node]]] = []
        for path in sorted((self.chart_dir / "templates").iterdir()):
            if path.suffix not in (".yaml", ".yml", ".tpl"):
                continue
            tree, defines = _parse(path.read_text(), f"templates/{path.name}")
            self.defines.update(defines)
            if not path.name.startswith("_"):
                self.templates.append((path.name, tree))

    @classmethod
    def from_chart(
        cls,
        chart_dir: str | Path,
        *,
        values_files: list[str | Path] = (),  # type: ignore[assignment]
        overrides: Mapping[str, Any] | None = None,
        sets: list[str] = (),  # type: ignore[assignment]
        release: str = "terway-agent",
        namespace: str = "kube-system",
    ) -> Renderer:
        chart_dir = Path(chart_dir)
        values = yaml.safe_load((chart_dir / "values.yaml").read_text()) or {}
        for f in values_files:
            values = deep_merge(values, yaml.safe_load(Path(f).read_text()) or {})
        if overrides:
            values = deep_merge(values, overrides)
        for s in sets:
            values = deep_merge(values, parse_set(s))
        return cls(chart_dir, values, release=release, namespace=namespace)

    # -- public ---------------------------------------------------------------------

    def render(self) -> dict[str, str]:
        """``{template file name: rendered text}``."""
        out = {}
        for name, tree in self.templates:
            out[name] = self._run(tree, self.root, {"$": self.root})
        return out

    def documents(self) -> list[dict[str, Any]]:
        """The rendered Kubernetes objects (empty documents dropped)."""
        docs = []
        for _name, text in self.render().items():
            for doc in yaml.safe_load_all(text):
                if doc:
                    docs.append(doc)
        return docs

    def crds(self) -> list[tuple[str, str]]:
        d = self.chart_dir / "crds"
        return [(p.name, p.read_text()) for p in sorted(d.glob("*.yaml"))] if d.is_dir() else []

    def stream(self, *, with_crds: bool = False) -> str:
        """All documents as one YAML stream in Helm's install order (``helm template``,
        ``--include-crds``)."""
        chart = self.root["Chart"]["Name"]
        parts = []
        if with_crds:
            for name, text in self.crds():
                parts.append(f"---\n# Source: {chart}/crds/{name}\n{text.strip()}\n")
        docs: list[tuple[int, int, str]] = []
        for name, text in self.render().items():
            body = text.strip("\n")
            for doc in re.split(r"^---\s*$", body, flags=re.M):
                if not doc.strip():
                    continue
                parsed = yaml.safe_load(doc)
                if not parsed:
                    continue
                kind = parsed.get("kind", "")
                rank = INSTALL_ORDER.index(kind) if kind in INSTALL_ORDER else len(INSTALL_ORDER)
                docs.append(
                    (rank, len(docs), f"---\n# Source: {chart}/templates/{name}\n{doc.strip(chr(10))}\n")
                )
        parts.extend(d for _r, _i, d in sorted(docs))
        return "".join(parts)

    # -- evaluation -----------------------------------------------------------------

    def _run(self, nodes: list[_Node], dot: Any, scope: dict[str, Any]) -> str:
        out: list[str] = []
        for node in nodes:
            if isinstance(node, _Text):
                out.append(node.text)
            elif isinstance(node, _Action):
                value = self._pipe(node.pipe, dot, scope, node.where)
                if node.assign:
                    scope[node.assign] = value
                else:
                    out.append(_go_str(value))
            elif isinstance(node, _Include):
                arg = self._pipe(node.pipe, dot, scope, node.where)
                out.append(self._include(node.name, arg, node.where))
            elif isinstance(node, _Block):
                out.append(self._block(node, dot, scope))
        return "".join(out)

    def _block(self, b: _Block, dot: Any, scope: dict[str, Any]) -> str:
        value = self._pipe(b.pipe, dot, scope, b.where)
        if b.kind == "if":
            return self._run(b.body if truthy(value) else b.else_body, dot, dict(scope))
        if b.kind == "with":
            inner = dict(scope)
            if b.vars:
                inner[b.vars[0]] = value
            return (
                self._run(b.body, value, inner) if truthy(value) else self._run(b.else_body, dot, dict(scope))
            )
        # range
        if not truthy(value):
            return self._run(b.else_body, dot, dict(scope))
        items: list[tuple[Any, Any]]
        if isinstance(value, Mapping):
            items = [(k, value[k]) for k in sorted(value)]
        elif isinstance(value, (list, tuple)):
            items = list(enumerate(value))
        elif isinstance(value, int):
            items = [(i, i) for i in range(value)]
        else:
            raise TemplateError(f"{b.where}: range over {type(value).__name__}")
        out = []
        for k, v in items:
            inner = dict(scope)
            if len(b.vars) == 1:
                inner[b.vars[0]] = v
            elif len(b.vars) == 2:
                inner[b.vars[0]], inner[b.vars[1]] = k, v
            out.append(self._run(b.body, v, inner))
        return "".join(out)

    def _include(self, name: str, arg: Any, where: str) -> str:
        tree = self.defines.get(name)
        if tree is None:
            raise TemplateError(f"{where}: no template named {name!r}")
        return self._run(tree, arg, {"$": self.root})

    def _pipe(self, cmds: list[list[Any]], dot: Any, scope: dict[str, Any], where: str) -> Any:
        value: Any = _MISSING
        for cmd in cmds:
            value = self._command(cmd, dot, scope, where, value)
        return value

    def _command(self, cmd: list[Any], dot: Any, scope: dict[str, Any], where: str, piped: Any) -> Any:
        head_kind, head = cmd[0]
        if head_kind == "ident" and head not in ("true", "false", "nil"):
            args = [self._operand(op, dot, scope, where) for op in cmd[1:]]
            if piped is not _MISSING:
                args.append(piped)
            if head == "include":
                if len(args) != 2:
                    raise TemplateError(f"{where}: include takes a name and a value")
                return self._include(str(args[0]), args[1], where)
            if head == "tpl":
                tree, defines = _parse(str(args[0]), where)
                self.defines.update(defines)
                return self._run(tree, args[1], {"$": self.root})
            fn = FUNCTIONS.get(head)
            if fn is None:
                raise TemplateError(f"{where}: function {head!r} is not supported by this renderer")
            try:
                return fn(*args)
            except TemplateError:
                raise
            except Exception as exc:
                raise TemplateError(f"{where}: {head}: {exc}") from None
        if len(cmd) != 1 or piped is not _MISSING:
            raise TemplateError(f"{where}: {head!r} is not a function")
        return self._operand(cmd[0], dot, scope, where)

    def _operand(self, op: tuple[str, Any], dot: Any, scope: dict[str, Any], where: str) -> Any:
        kind, val = op
        if kind == "pipe":
            return self._pipe(val, dot, scope, where)
        if kind == "str":
            if val.startswith("`"):
                return val[1:-1]
            return json.loads(val)
        if kind == "num":
            return float(val) if "." in val else int(val)
        if kind == "ident":
            if val == "true":
                return True
            if val == "false":
                return False
            if val == "nil":
                return None
            fn = FUNCTIONS.get(val)
            if fn is None:
                raise TemplateError(f"{where}: unknown identifier {val!r}")
            return fn()
        if kind == "field":
            return _walk(dot, [p for p in val.split(".") if p], where)
        if kind == "var":
            name, *path = val.split(".")
            if name not in scope:
                raise TemplateError(f"{where}: undefined variable {name}")
            return _walk(scope[name], path, where)
        raise TemplateError(f"{where}: unexpected {val!r}")


_MISSING = object()

#: Helm's install order of kinds (pkg/releaseutil/kind_sorter.go), the part this chart uses.
INSTALL_ORDER = [
    "Namespace",
    "NetworkPolicy",
    "ResourceQuota",
    "LimitRange",
    "PodSecurityPolicy",
    "PodDisruptionBudget",
    "ServiceAccount",
    "Secret",
    "ConfigMap",
    "StorageClass",
    "PersistentVolume",
    "PersistentVolumeClaim",
    "CustomResourceDefinition",
    "ClusterRole",
    "ClusterRoleBinding",
    "Role",
    "RoleBinding",
    "Service",
    "DaemonSet",
    "Pod",
    "ReplicaSet",
    "Deployment",
    "StatefulSet",
    "Job",
    "CronJob",
]


def _walk(value: Any, path: list[str], where: str) -> Any:
    for p in path:
        if value is None:
            return None
        if isinstance(value, Mapping):
            value = value.get(p)
        else:
            raise TemplateError(f"{where}: cannot read .{p} of a {type(value).__name__}")
    return value


# ---------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("chart")
    p.add_argument("--namespace", default="kube-system")
    p.add_argument("--release", default="terway-agent")
    p.add_argument("-f", "--values", action="append", default=[])
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--include-crds", action="store_true")
    args = p.parse_args(argv)
    try:
        r = Renderer.from_chart(
            args.chart,
            values_files=args.values,
            sets=args.set,
            release=args.release,
            namespace=args.namespace,
        )
        sys.stdout.write(r.stream(with_crds=args.include_crds))
    except TemplateError as exc:
        print(f"render_chart: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
