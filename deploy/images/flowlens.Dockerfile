# syntax=docker/dockerfile:1
# flowlens: the collector (store, HTTP API, dashboards) and the command-line tools.
# Build from the repository root (BuildKit reads flowlens.Dockerfile.dockerignore beside this file):
#   docker build -f deploy/images/flowlens.Dockerfile -t flowlens:dev .

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
    cargo build --release --locked -p bins --bin flowlens \
    && install -D -m 0755 target/release/flowlens /out/flowlens

# Runtime: glibc only. TLS is rustls (ring), conntrack is netlink from the binary itself: no
# OpenSSL, no conntrack-tools, no shell tools needed.
FROM debian:bookworm-slim
LABEL org.opencontainers.image.title="flowlens" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/flowlens /usr/local/bin/flowlens
# An unprivileged user with no home and no shell entry (the Deployment also sets runAsNonRoot).
USER 65532:65532
EXPOSE 4739/tcp 8080/tcp
ENTRYPOINT ["/usr/local/bin/flowlens"]
CMD ["collector", "--config", "/etc/flowlens/config/flowlens-collector.conf.yaml"]
