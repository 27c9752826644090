# roomcast container image: `roomcast serve` as a non-root user, configured by environment.
#
#   docker build -t roomcast:latest .     on a machine that can pull base images
#   scripts/docker-build.sh               on the project's machines (no image registry): makes
#                                         the two base images locally first, then builds this
#                                         file unchanged (plus the HAProxy/Prometheus images)
#
# Stages:
#   build    rust:1.95-bookworm (the Rust roomcast is developed with; the crate is edition
#            2024) runs `cargo build --release --locked`. Crates are fetched from crates.io
#            during the build, as on any machine with network. Dependencies are compiled in a
#            layer of their own, keyed on Cargo.toml + Cargo.lock, so a source change rebuilds
#            only roomcast itself. The binary keeps its line tables (the release profile asks
#            for them, for file:line in backtraces), zlib-compressed: ~20 MB instead of ~60 MB.
#   runtime  debian:bookworm-slim (same glibc as the build) + the binary, user roomcast
#            (uid/gid 10001), no shell tools added.
#
# Where no registry is reachable, scripts/docker-base.sh makes `debian:bookworm-slim`
# (debootstrap) and `rust:1.95-bookworm` (that image + the host's Rust toolchain + the host's
# extra CA certificates, so cargo reaches crates.io through the host's egress path) under
# these same names; containers there reach Debian's mirror and crates.io, so nothing in this
# file differs. See the comments in scripts/docker-base.sh.
#
# Configuration: every option is an env variable ROOMCAST_<OPTION> (README, Configuration).
# The image listens on all interfaces: HTTP/WebSocket on 8080, cluster on 7946 (TCP+UDP).
# A node listening for the cluster on all interfaces needs ROOMCAST_ADVERTISE (the host or IP
# peers reach it by) and ROOMCAST_CLUSTER_SECRET_FILE (or ROOMCAST_INSECURE=true); it exits
# with status 2 and says so otherwise. A single node on its own:
#
#   docker run --rm -p 127.0.0.1:8080:8080 -e ROOMCAST_CLUSTER_LISTEN=127.0.0.1:7946 roomcast
#
# A 3-node cluster behind HAProxy, with Prometheus: cluster-config/docker-compose.yml.

FROM rust:1.95-bookworm AS build
WORKDIR /build

# 1. Dependencies only: fetch and compile them against stub sources. If the manifest ever
#    needs more than the stubs (e.g. an explicit [[bench]] file), this step degrades to no
#    pre-built dependencies and step 2 compiles everything.
COPY Cargo.toml Cargo.lock ./
# The build flags too (.cargo/config.toml): dependencies built with other flags would all be
# rebuilt in step 2.
COPY .cargo .cargo
RUN mkdir -p src \
 && echo 'fn main() {}' > src/main.rs \
 && : > src/lib.rs \
 && { { cargo fetch --locked && cargo build --release --locked; } \
      || echo "note: dependency pre-build skipped; the next step compiles everything"; } \
 && rm -rf src

# 2. roomcast itself (its stub artifacts removed first, so stale mtimes cannot fool cargo).
COPY . .
RUN cargo clean --release --locked -p roomcast \
 && cargo build --release --locked \
 && mkdir -p /out \
 && objcopy --compress-debug-sections=zlib target/release/roomcast /out/roomcast \
 && /out/roomcast --version

FROM debian:bookworm-slim
RUN groupadd --system --gid 10001 roomcast \
 && useradd --system --uid 10001 --gid roomcast --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin roomcast
COPY --from=build /out/roomcast /usr/local/bin/roomcast

ENV ROOMCAST_LISTEN=0.0.0.0:8080 \
    ROOMCAST_CLUSTER_LISTEN=0.0.0.0:7946
# HTTP + WebSocket; cluster: internode protocol (TCP) and gossip (UDP) on the same port.
EXPOSE 8080/tcp 7946/tcp 7946/udp

# Numeric, so Kubernetes' runAsNonRoot can check it.
USER 10001:10001
# The image has no curl: `roomcast probe` GETs the URL and exits 0 on HTTP 200. It follows
# the port of ROOMCAST_LISTEN when that is changed, and speaks https when
# ROOMCAST_TLS_CERT_FILE is set (TLS set in a config file instead: override the check).
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
  CMD listen="${ROOMCAST_LISTEN:-:8080}"; scheme=http; [ -z "${ROOMCAST_TLS_CERT_FILE:-}" ] || scheme=https; \
      roomcast probe --timeout 3s "$scheme://127.0.0.1:${listen##*:}/healthz" || exit 1

# roomcast handles SIGTERM itself (drain: /readyz turns 503, clients get 1001, exit 0 within
# shutdown_timeout); give it more than that before a SIGKILL (docker stop -t, compose
# stop_grace_period, terminationGracePeriodSeconds).
STOPSIGNAL SIGTERM
ENTRYPOINT ["roomcast"]
CMD ["serve"]
