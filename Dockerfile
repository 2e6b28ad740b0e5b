# terway-agent: the node agent image used by the DaemonSet (deploy/).
#
#   docker build -t <your registry>/terway-agent:0.1.0 .
#
# Two stages: the build stage creates a virtualenv with the core and every mode plugin (as an
# unprivileged user); the runtime stage copies it onto a slim Debian with Python and the few
# tools the agent or an operator needs (nft for the exclusive-ENI masquerade, ip/tc to look at
# the datapath). The runtime runs as root: netlink (NET_ADMIN), setns(2) into pod namespaces
# and sysctls need uid 0 with the capabilities the DaemonSet grants (not privileged; see
# docs/deploy.md, "Security").
#
# This file cannot be built on the project's build machines (no image engine there); CI
# validates the manifests and runs the DaemonSet's command line in the end-to-end lane instead.

ARG BASE=debian:bookworm-slim

# --- build ----------------------------------------------------------------------------------
FROM ${BASE} AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-pip ca-certificates \
 && rm -rf /var/lib/apt/lists/*
RUN useradd --create-home --uid 10001 builder \
 && mkdir /opt/terway-agent /src \
 && chown builder /opt/terway-agent /src
USER builder
WORKDIR /src
# dependencies first: a source change does not re-download them
COPY --chown=builder pyproject.toml README.md ./
COPY --chown=builder terway_agent/__init__.py terway_agent/__init__.py
RUN python3 -m venv /opt/terway-agent \
 && /opt/terway-agent/bin/pip install --no-cache-dir --upgrade pip \
 && /opt/terway-agent/bin/pip install --no-cache-dir .
COPY --chown=builder terway_agent terway_agent
COPY --chown=builder plugins plugins
RUN /opt/terway-agent/bin/pip install --no-cache-dir --no-deps --force-reinstall . \
 && for p in plugins/*/; do /opt/terway-agent/bin/pip install --no-cache-dir --no-deps "./$p"; done \
 && /opt/terway-agent/bin/terway-agent plugins

# --- runtime --------------------------------------------------------------------------------
FROM ${BASE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 iproute2 nftables ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/terway-agent /opt/terway-agent
ENV PATH=/opt/terway-agent/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# the debug endpoint (metrics, probes), bound to 127.0.0.1 of the host network
EXPOSE 6061
# the DaemonSet passes the command (terway-agent run --config ...); this default shows the modes
ENTRYPOINT []
CMD ["terway-agent", "plugins"]
LABEL org.opencontainers.image.title="terway-agent" \
      org.opencontainers.image.description="VPC-native Kubernetes CNI for Alibaba Cloud, as a plugin platform" \
      org.opencontainers.image.licenses="Apache-2.0"
