#!/usr/bin/env bash
# Builds (once) everything the real-cluster e2e lane needs, from Debian packages only:
#   kube-apiserver + kubelet v1.20.2 (Debian's `kubernetes` source package, GOPATH mode),
#   the pause image (static, from the same source) as a docker-archive tar for `ctr images import`,
#   cnitool (Debian's golang-github-appc-cni source package),
#   Python CRI v1alpha2 stubs (api.proto from the same source, grpcio-tools).
# Outputs are cached in $TWE2E_CACHE_DIR (default /var/cache/terway-agent/e2e/<version>/) and are
# rebuilt only when missing. The 2.2 GB build tree is deleted afterwards. A lock file keeps two
# concurrent runs from building twice. Idempotent; safe to re-run; prints every step and its time.
#
# Usage: scripts/e2e/build.sh [--check]    (--check: exit 0 if everything is cached, 1 otherwise)
# Env:   TWE2E_CACHE_DIR  cache directory for this version
#        TWE2E_PYTHON     python used for grpcio-tools (default: <repo>/.venv/bin/python)
#        TWE2E_KEEP_TREE=1  keep the build tree (debugging)
set -euo pipefail

K8S_VERSION=1.20.2
DEB_SRC_VERSION=1.20.5+really1.20.2-1.1+deb12u1
REPO=$(cd "$(dirname "$0")/../.." && pwd)
CACHE=${TWE2E_CACHE_DIR:-/var/cache/terway-agent/e2e/$K8S_VERSION}
PY=${TWE2E_PYTHON:-$REPO/.venv/bin/python}
PAUSE_IMAGE=localhost/twe2e/pause:$K8S_VERSION

APT_PACKAGES=(etcd-server containerd runc golang-go golang-github-modern-go-reflect2-dev
  golang-github-appc-cni-dev containernetworking-plugins rsync jq iptables iproute2 gcc libc6-dev
  dpkg-dev openssl iputils-ping util-linux)
PIP_PACKAGES=(grpcio grpcio-tools protobuf)

T0=$(date +%s.%N)
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1fs", b - a }'; }
log() { printf '[twe2e-build %7s] %s\n' "$(since "$T0")" "$*"; }

stub_dir() {
  # Generated stubs depend on the grpcio-tools (protoc) version: key them by it.
  local v
  v=$("$PY" -c 'import importlib.metadata as m; print(m.version("grpcio-tools"))' 2>/dev/null) || v=none
  echo "$CACHE/cri/grpcio-tools-$v"
}

missing_outputs() {
  local m=()
  [ -x "$CACHE/bin/kube-apiserver" ] || m+=(kube-apiserver)
  [ -x "$CACHE/bin/kubelet" ] || m+=(kubelet)
  [ -x "$CACHE/bin/cnitool" ] || m+=(cnitool)
  [ -f "$CACHE/images/pause.tar" ] || m+=(pause-image)
  [ -f "$CACHE/cri/api.proto" ] || m+=(cri-proto)
  [ -f "$(stub_dir)/twe2e_cri_v1alpha2_pb2_grpc.py" ] || m+=(cri-stubs)
  echo "${m[*]}"
}

ensure_deb_src() {
  # deb-src entries without naming any host: derived from the existing deb822 sources.
  local pkg=$1 version=$2 src_list=/etc/apt/sources.list.d/debian-src.sources
  if [ ! -f "$src_list" ] && ! grep -rqs '^Types:.*deb-src' /etc/apt/sources.list.d/ \
     && ! grep -qs '^deb-src' /etc/apt/sources.list; then
    log "enabling deb-src ($src_list from debian.sources)"
    sed 's/^Types: deb$/Types: deb-src/' /etc/apt/sources.list.d/debian.sources >"$src_list"
    apt-get update -qq
  fi
  # (no `| grep -q` here: with pipefail, grep closing the pipe early fails the pipeline)
  if ! grep -qxF "Version: $version" <<<"$(apt-cache showsrc "$pkg" 2>/dev/null)"; then
    log "source $pkg=$version not known yet: apt-get update"
    apt-get update -qq
  fi
}

main() {
if [ "${1:-}" = "--check" ]; then
  m=$(missing_outputs)
  if [ -z "$m" ]; then echo "twe2e-build: all cached in $CACHE"; exit 0; fi
  echo "twe2e-build: missing in $CACHE: $m"; exit 1
fi

mkdir -p "$CACHE"
exec 9>"$CACHE/.build.lock"
if ! flock -n 9; then
  log "another build holds $CACHE/.build.lock; waiting for it"
  flock 9
fi

log "cache: $CACHE"
need=$(missing_outputs)
if [ -z "$need" ]; then
  log "everything is cached; nothing to do"
  exit 0
fi
log "to build: $need"

# --- Debian packages --------------------------------------------------------------------------------
t=$(now)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  log "apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  log "apt packages installed in $(since "$t")"
else
  log "apt packages already installed"
fi

# --- Python packages for the CRI stubs ---------------------------------------------------------------
if ! "$PY" -c 'import grpc, grpc_tools.protoc, google.protobuf' 2>/dev/null; then
  t=$(now)
  log "pip install ${PIP_PACKAGES[*]} into $($PY -c 'import sys; print(sys.prefix)')"
  "$PY" -m pip install -q --disable-pip-version-check "${PIP_PACKAGES[@]}"
  log "pip packages installed in $(since "$t")"
fi
need=$(missing_outputs)

# --- kube-apiserver, kubelet, pause, api.proto from the kubernetes source package --------------------
if [[ " $need " =~ " kube-apiserver " || " $need " =~ " kubelet " || " $need " =~ " pause-image " \
   || " $need " =~ " cri-proto " ]]; then
  ensure_deb_src kubernetes "$DEB_SRC_VERSION"
  WORK=$(mktemp -d /var/tmp/twe2e-build.XXXXXX)
  cleanup_tree() {
    if [ "${TWE2E_KEEP_TREE:-0}" = 1 ]; then log "keeping build tree $WORK"; return; fi
    log "deleting build tree $WORK ($(du -sh "$WORK" 2>/dev/null | cut -f1))"
    rm -rf "$WORK"
  }
  trap cleanup_tree EXIT
  cd "$WORK"

  t=$(now)
  log "apt-get source --download-only kubernetes=$DEB_SRC_VERSION"
  apt-get source -qq -o APT::Sandbox::User=root --download-only "kubernetes=$DEB_SRC_VERSION" >/dev/null
  log "unpacking (dpkg-source -x)"
  dpkg-source -q --no-check -x ./*.dsc src >/dev/null
  rm -f ./*.tar.* ./*.dsc
  SRC=$WORK/src
  log "source ready in $(since "$t") ($(du -sh "$SRC" | cut -f1))"

  if [[ " $need " =~ " kube-apiserver " || " $need " =~ " kubelet " ]]; then
    # Go 1.19 crashes the vendored reflect2 v1.0.1 (on the first custom-resource create):
    # replace it with Debian's 1.0.2.
    R2=/usr/share/gocode/src/github.com/modern-go/reflect2
    log "reflect2 fix: vendor/github.com/modern-go/reflect2 <- $R2 (Debian 1.0.2)"
    rm -f "$SRC"/vendor/github.com/modern-go/reflect2/*.go "$SRC"/vendor/github.com/modern-go/reflect2/*.s
    cp "$R2"/*.go "$SRC/vendor/github.com/modern-go/reflect2/"
    cp "$R2"/*.s "$SRC/vendor/github.com/modern-go/reflect2/" 2>/dev/null || true
    rm -f "$SRC"/vendor/github.com/modern-go/reflect2/*_test.go

    cat >"$WORK/version.env" <<EOF
KUBE_GIT_VERSION='v$K8S_VERSION'
KUBE_GIT_MAJOR='1'
KUBE_GIT_MINOR='$(echo "$K8S_VERSION" | cut -d. -f2)'
KUBE_GIT_TREE_STATE='clean'
KUBE_GIT_COMMIT='debian-$DEB_SRC_VERSION'
EOF
    t=$(now)
    log "go build kube-apiserver + kubelet (GOPATH mode, $(go version | cut -d' ' -f3), ~4-5 min on 2 cores)"
    mkdir -p "$SRC/.go/src/k8s.io"
    ln -sfn ../../.. "$SRC/.go/src/k8s.io/kubernetes"
    (cd "$SRC/.go/src/k8s.io/kubernetes" && env GOPATH="$SRC/.go" GOCACHE="$WORK/gocache" CGO_ENABLED=0 \
      GOPROXY=off GOFLAGS= KUBE_GIT_VERSION_FILE="$WORK/version.env" \
      make WHAT="cmd/kube-apiserver cmd/kubelet" >"$WORK/make.log" 2>&1) || {
      tail -50 "$WORK/make.log"; log "make failed (log above)"; exit 1; }
    log "built in $(since "$t")"
    mkdir -p "$CACHE/bin"
    for b in kube-apiserver kubelet; do
      f=$(find "$SRC/_output" -type f -name "$b" -perm -u+x | head -1)
      [ -n "$f" ] || { log "no $b in _output"; exit 1; }
      install -m 0755 "$f" "$CACHE/bin/$b.tmp" && mv -f "$CACHE/bin/$b.tmp" "$CACHE/bin/$b"
    done
    "$CACHE/bin/kube-apiserver" --version
    "$CACHE/bin/kubelet" --version
  fi

  if [[ " $need " =~ " pause-image " ]]; then
    t=$(now)
    PC=$(find "$SRC/build/pause" -name pause.c | grep -v windows | head -1)
    PTAG=$(sed -n 's/^TAG[ ?:]*= *//p' "$SRC/build/pause/Makefile" | head -1)
    log "gcc -Os -static $PC (pause $PTAG)"
    mkdir -p "$CACHE/images"
    gcc -Os -Wall -Werror -static -DVERSION="v$PTAG-twe2e" -o "$WORK/pause" "$PC"
    strip "$WORK/pause"
    install -m 0755 "$WORK/pause" "$CACHE/images/pause"
    log "pause built in $(since "$t")"
  fi

  if [[ " $need " =~ " cri-proto " ]]; then
    P=$SRC/staging/src/k8s.io/cri-api/pkg/apis/runtime/v1alpha2/api.proto
    log "CRI proto: $P (gogoproto options stripped)"
    mkdir -p "$CACHE/cri"
    python3 - "$P" "$CACHE/cri/api.proto.tmp" <<'EOF'
import re, sys
text = open(sys.argv[1]).read()
text = re.sub(r'^import "github.com/gogo/protobuf/gogoproto/gogo.proto";\n', "", text, flags=re.M)
text = re.sub(r'^option \(gogoproto\.[a-z_]+\)\s*=\s*[a-z]+;\n', "", text, flags=re.M)
text = re.sub(r'\s*\[\(gogoproto\.[^\]]*\]', "", text)
assert "gogoproto" not in text, "unhandled gogoproto option"
open(sys.argv[2], "w").write(text)
EOF
    mv -f "$CACHE/cri/api.proto.tmp" "$CACHE/cri/api.proto"
  fi
  cd /
  cleanup_tree
  trap - EXIT
fi

# --- pause image as a docker-archive tar ----------------------------------------------------------
if [[ " $(missing_outputs) " =~ " pause-image " ]]; then
  log "packaging $PAUSE_IMAGE as $CACHE/images/pause.tar (docker-archive)"
  python3 - "$CACHE/images/pause" "$CACHE/images/pause.tar.tmp" "$PAUSE_IMAGE" <<'EOF'
import hashlib, io, json, sys, tarfile
binary, out, ref = sys.argv[1:4]
def tar_bytes(members):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as t:
        for name, data, mode in members:
            info = tarfile.TarInfo(name); info.size = len(data); info.mode = mode; info.mtime = 0
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()
layer = tar_bytes([("pause", open(binary, "rb").read(), 0o755)])
diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
config = json.dumps({
    "architecture": "amd64", "os": "linux", "created": "1970-01-01T00:00:00Z",
    "config": {"Entrypoint": ["/pause"], "User": "65535:65535"},
    "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "twe2e build.sh: static pause.c"}],
}, sort_keys=True).encode()
cfg_name = hashlib.sha256(config).hexdigest() + ".json"
layer_name = diff_id[7:] + "/layer.tar"
manifest = json.dumps([{"Config": cfg_name, "RepoTags": [ref], "Layers": [layer_name]}]).encode()
open(out, "wb").write(tar_bytes([
    (cfg_name, config, 0o644), (layer_name, layer, 0o644), ("manifest.json", manifest, 0o644)]))
EOF
  mv -f "$CACHE/images/pause.tar.tmp" "$CACHE/images/pause.tar"
  echo "$PAUSE_IMAGE" >"$CACHE/images/pause.ref"
fi

# --- cnitool ---------------------------------------------------------------------------------------
if [[ " $(missing_outputs) " =~ " cnitool " ]]; then
  t=$(now)
  # cnitool is only in the source package; its imports (libcni, pkg/...) come from the -dev package,
  # so take the source of the same version.
  CNI_SRC_VERSION=$(dpkg-query -W -f='${Version}' golang-github-appc-cni-dev)
  log "go build cnitool (Debian source golang-github-appc-cni=$CNI_SRC_VERSION, GOPATH mode)"
  ensure_deb_src golang-github-appc-cni "$CNI_SRC_VERSION"
  mkdir -p "$CACHE/bin"
  CW=$(mktemp -d /var/tmp/twe2e-cni.XXXXXX)
  (cd "$CW" && apt-get source -qq -o APT::Sandbox::User=root --download-only \
      "golang-github-appc-cni=$CNI_SRC_VERSION" >/dev/null && \
    dpkg-source -q --no-check -x ./*.dsc src >/dev/null && cd src && \
    env GO111MODULE=off GOPATH=/usr/share/gocode GOCACHE="$CW/gocache" CGO_ENABLED=0 \
      go build -o "$CACHE/bin/cnitool.tmp" ./cnitool/) || { rm -rf "$CW"; log "cnitool build failed"; exit 1; }
  rm -rf "$CW"
  mv -f "$CACHE/bin/cnitool.tmp" "$CACHE/bin/cnitool"
  log "cnitool built in $(since "$t")"
fi

# --- CRI stubs ---------------------------------------------------------------------------------------
SD=$(stub_dir)
if [ ! -f "$SD/twe2e_cri_v1alpha2_pb2_grpc.py" ]; then
  t=$(now)
  log "grpc_tools.protoc -> $SD"
  tmp=$(mktemp -d "$CACHE/cri/.gen.XXXXXX")
  cp "$CACHE/cri/api.proto" "$tmp/twe2e_cri_v1alpha2.proto"
  (cd "$tmp" && "$PY" -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. twe2e_cri_v1alpha2.proto)
  rm -f "$tmp/twe2e_cri_v1alpha2.proto"
  rm -rf "$SD" && mv "$tmp" "$SD"
  log "stubs generated in $(since "$t")"
fi

cat >"$CACHE/manifest.json" <<EOF
{"kubernetes": "v$K8S_VERSION", "debian_source": "kubernetes=$DEB_SRC_VERSION",
 "pause_image": "$PAUSE_IMAGE", "go": "$(go version | cut -d' ' -f3)",
 "built": "$(date -u +%FT%TZ)"}
EOF
m=$(missing_outputs)
if [ -n "$m" ]; then log "still missing after build: $m"; exit 1; fi
log "done in $(since "$T0"): $(ls "$CACHE/bin" | tr '\n' ' ')+ images/pause.tar + $(basename "$SD")"
}

# Everything runs from main() so that editing this file never disturbs a build in progress.
main "$@"
exit $?
