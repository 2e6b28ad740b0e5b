#!/usr/bin/env bash
# Sets up everything terway-agent needs on a fresh Debian bookworm machine (root):
# Debian packages for the datapath tests and the reference CNI plugins, then a
# virtualenv at .venv with the core, every mode plugin and the example plugin.
# Idempotent and quick when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  iproute2              # ip, tc, bridge: used by tests to observe the kernel
  containernetworking-plugins  # Go reference plugins: benchmarks and chaining (portmap, bandwidth, tuning)
  nftables iptables     # masquerade for exclusive ENI, portmap chaining
  iperf3                # throughput benchmarks
  tcpdump ethtool procps psmisc
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi

# Re-install only when a pyproject changed.
stamp=.venv/.terway-setup-stamp
sum=$(shopt -s nullglob; cat pyproject.toml plugins/*/pyproject.toml examples/*/pyproject.toml | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$sum" ]; then
  echo "setup: installing the core, the mode plugins and the example plugin into .venv"
  args=(-e ".[test]")
  shopt -s nullglob
  for d in plugins/*/ examples/*/; do
    if [ -f "$d/pyproject.toml" ]; then args+=(-e "$d"); fi
  done
  .venv/bin/pip install -q --disable-pip-version-check "${args[@]}"
  echo "$sum" > "$stamp"
fi
