# syntax=docker/dockerfile:1
# flowlens-agent: the per-Node DaemonSet reading conntrack and exporting IPFIX.
# Build from the repository root (BuildKit reads agent.Dockerfile.dockerignore beside this file):
#   docker build -f deploy/images/agent.Dockerfile -t flowlens-agent:dev .

# The web UI's ECharts bundle from the npm registry (checksum-verified by vendor.sh):
# bins/build.rs embeds it, and that build script runs for every binary of the bins package.
FROM node:22-bookworm-slim AS ui
WORKDIR /src
COPY bins/ui/vendor.sh bins/ui/vendor.sh
RUN sh bins/ui/vendor.sh

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
COPY --from=ui /src/bins/ui/vendor/ bins/ui/vendor/
# The target directory is a cache mount, so the binary is copied out in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,id=flowlens-target \
    cargo build --release --locked -p bins --bin flowlens-agent \
    && install -D -m 0755 target/release/flowlens-agent /out/flowlens-agent

# Runtime: glibc only. TLS is rustls (ring), conntrack is netlink from the binary itself: no
# OpenSSL, no conntrack-tools, no shell tools needed.
FROM debian:bookworm-slim
LABEL org.opencontainers.image.title="flowlens-agent" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/flowlens-agent /usr/local/bin/flowlens-agent
# Runs as root on purpose: reading the Node's conntrack table takes CAP_NET_ADMIN, which
# Kubernetes grants only to uid 0 (no ambient capabilities). The DaemonSet drops every other
# capability, forbids privilege escalation and mounts the root file system read-only.
ENTRYPOINT ["/usr/local/bin/flowlens-agent"]
CMD ["--config", "/etc/flowlens/config/flowlens-agent.conf.yaml"]
