# syntax=docker/dockerfile:1
# flowlens-aggregator: correlates both Nodes' records of each flow and exports them.
# Build from the repository root (BuildKit reads aggregator.Dockerfile.dockerignore beside this file):
#   docker build -f deploy/images/aggregator.Dockerfile -t flowlens-aggregator:dev .

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
    cargo build --release --locked -p bins --bin flowlens-aggregator \
    && install -D -m 0755 target/release/flowlens-aggregator /out/flowlens-aggregator

# Runtime: glibc only. TLS is rustls (ring), conntrack is netlink from the binary itself: no
# OpenSSL, no conntrack-tools, no shell tools needed.
FROM debian:bookworm-slim
LABEL org.opencontainers.image.title="flowlens-aggregator" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/flowlens-aggregator /usr/local/bin/flowlens-aggregator
# An unprivileged user with no home and no shell entry (the Deployment also sets runAsNonRoot).
USER 65532:65532
EXPOSE 4739/tcp 4739/udp 9391/tcp
ENTRYPOINT ["/usr/local/bin/flowlens-aggregator"]
CMD ["--config", "/etc/flowlens/config/flowlens-aggregator.conf.yaml"]
