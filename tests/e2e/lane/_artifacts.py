"""The cached build outputs of ``scripts/e2e/build.sh`` and building them when missing."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ._util import LaneError

K8S_VERSION = "1.20.2"
REPO = Path(__file__).resolve().parents[3]
BUILD_SCRIPT = REPO / "scripts" / "e2e" / "build.sh"
DEFAULT_CACHE = Path("/var/cache/terway-agent/e2e") / K8S_VERSION
DEBIAN_CNI_BIN = Path("/usr/lib/cni")


def cache_dir() -> Path:
    """The cache directory of this Kubernetes version (``$TWE2E_CACHE_DIR`` overrides it)."""
    return Path(os.environ.get("TWE2E_CACHE_DIR", str(DEFAULT_CACHE)))


@dataclass(frozen=True)
class Artifacts:
    """Paths of everything the lane runs. Built by :func:`ensure_artifacts`."""

    cache: Path
    kube_apiserver: Path
    kubelet: Path
    cnitool: Path
    pause_tar: Path
    pause_image: str
    cri_stub_dir: Path
    etcd: Path
    containerd: Path
    ctr: Path
    runc: Path
    cni_plugin_dir: Path

    def missing(self) -> list[str]:
        """Names of outputs that are not there."""
        wanted = {
            "kube-apiserver": self.kube_apiserver,
            "kubelet": self.kubelet,
            "cnitool": self.cnitool,
            "pause-image": self.pause_tar,
            "cri-stubs": self.cri_stub_dir / "twe2e_cri_v1alpha2_pb2_grpc.py",
            "etcd": self.etcd,
            "containerd": self.containerd,
            "ctr": self.ctr,
            "runc": self.runc,
            "cni-plugins": self.cni_plugin_dir / "bridge",
        }
        return [k for k, p in wanted.items() if not p.exists()]


def _grpc_tools_version() -> str:
    try:
        return importlib.metadata.version("grpcio-tools")
    except importlib.metadata.PackageNotFoundError:
        return "none"


def artifacts() -> Artifacts:
    """The expected paths (they may not exist yet: see :meth:`Artifacts.missing`)."""
    c = cache_dir()
    pause_ref = c / "images" / "pause.ref"
    pause_image = (
        pause_ref.read_text().strip() if pause_ref.exists() else f"localhost/twe2e/pause:{K8S_VERSION}"
    )
    return Artifacts(
        cache=c,
        kube_apiserver=c / "bin" / "kube-apiserver",
        kubelet=c / "bin" / "kubelet",
        cnitool=c / "bin" / "cnitool",
        pause_tar=c / "images" / "pause.tar",
        pause_image=pause_image,
        cri_stub_dir=c / "cri" / f"grpcio-tools-{_grpc_tools_version()}",
        etcd=Path(shutil.which("etcd") or "/usr/bin/etcd"),
        containerd=Path(shutil.which("containerd") or "/usr/bin/containerd"),
        ctr=Path(shutil.which("ctr") or "/usr/bin/ctr"),
        runc=Path(shutil.which("runc") or "/usr/sbin/runc"),
        cni_plugin_dir=DEBIAN_CNI_BIN,
    )


def ensure_artifacts(progress: Callable[[str], None] | None = None, *, build: bool = True) -> Artifacts:
    """Return the artifacts, running ``scripts/e2e/build.sh`` first when any is missing.

    A cold build takes ~5 minutes (Debian packages, the kubernetes source package, Go compile);
    ``progress`` receives every line the script prints. With ``build=False`` a missing artifact
    raises LaneError instead.
    """
    art = artifacts()
    missing = art.missing()
    if not missing:
        return art
    if not build:
        raise LaneError(f"e2e artifacts missing in {art.cache}: {', '.join(missing)} (run {BUILD_SCRIPT})")
    say = progress or (lambda line: print(line, file=sys.stderr, flush=True))
    say(
        f"twe2e: e2e artifacts missing ({', '.join(missing)}): running {BUILD_SCRIPT} — a cold build "
        "takes about 5 minutes (apt packages, kubernetes source, Go compile of kube-apiserver+kubelet)"
    )
    t0 = time.monotonic()
    env = dict(os.environ, TWE2E_PYTHON=sys.executable, TWE2E_CACHE_DIR=str(art.cache))
    proc = subprocess.Popen(
        ["bash", str(BUILD_SCRIPT)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
        text=True,
    )
    assert proc.stdout is not None
    tail: list[str] = []
    for line in proc.stdout:
        line = line.rstrip("\n")
        tail = [*tail[-40:], line]
        say(line)
    if proc.wait() != 0:
        raise LaneError(f"{BUILD_SCRIPT} failed with exit code {proc.returncode}:\n" + "\n".join(tail))
    say(f"twe2e: build finished in {time.monotonic() - t0:.0f}s")
    art = artifacts()  # the stub directory may only now exist (grpcio-tools installed by the build)
    missing = art.missing()
    if missing:
        raise LaneError(f"{BUILD_SCRIPT} finished but these are still missing: {', '.join(missing)}")
    return art
