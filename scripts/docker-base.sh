#!/usr/bin/env bash
# Makes, locally, every base image that the project's Dockerfiles name, when it is missing.
#
#   scripts/docker-base.sh            (needs root for debootstrap, and a running Docker engine)
#
# Why: the Dockerfiles (Dockerfile, cluster-config/*.Dockerfile) are ordinary and build
# unchanged on any machine that can pull `debian:bookworm-slim` and `rust:1.95-bookworm`.
# The project's own machines (developers, CI) reach Debian's package mirror, crates.io and
# PyPI but no image registry, and their Docker engine starts with no images. So this script
# makes stand-ins under the same names, and a plain `docker build` then finds them locally
# (the classic builder never pulls an image it already has):
#
#   debian:bookworm-slim  debootstrap --variant=minbase of bookworm from the host's Debian
#                         mirror, slimmed like the official image (no docs, man pages or
#                         locales; apt lists and caches emptied), then `docker import`.
#   rust:1.95-bookworm    FROM that image: gcc, libc6-dev, make, pkg-config, ca-certificates
#                         from Debian's packages (apt-get over plain http inside the build),
#                         plus the host's active Rust toolchain copied in (without its docs).
#                         Layout as in the official image: RUSTUP_HOME=/usr/local/rustup,
#                         CARGO_HOME=/usr/local/cargo, cargo and rustc on PATH.
#                         The host's extra trusted CA certificates (/usr/local/share/
#                         ca-certificates) are added too, so that `cargo build` inside an
#                         image build reaches crates.io over HTTPS exactly as the host does
#                         (e.g. through a TLS-intercepting egress proxy). An official image
#                         needs none of this on a normal network.
#
# Idempotent: an image that already exists is left alone (remove it to remake it:
# `docker rmi rust:1.95-bookworm`). Set DEBIAN_MIRROR / DEBIAN_SECURITY_MIRROR to override
# the mirror read from /etc/apt/sources.list*.
# Takes about 1-2 minutes from scratch (debootstrap ~45 s, the Rust image ~30-60 s).
set -euo pipefail
cd "$(dirname "$0")/.."

DEBIAN_IMAGE=debian:bookworm-slim
RUST_IMAGE=rust:1.95-bookworm
SUITE=bookworm

say() { echo "docker-base: $*"; }
die() {
  echo "docker-base: error: $*" >&2
  exit 1
}

command -v docker >/dev/null || die "docker is not installed"
docker info >/dev/null 2>&1 || die "cannot talk to the Docker engine (is it running? are you root?)"

have_image() { docker image inspect "$1" >/dev/null 2>&1; }

# Every FROM of the project's Dockerfiles must be an image this script can make, or a stage.
check_dockerfiles() {
  local f img stages
  for f in Dockerfile cluster-config/*.Dockerfile; do
    [ -f "$f" ] || continue
    stages=$(awk 'toupper($1) == "FROM" { for (i = 2; i < NF; i++) if (toupper($i) == "AS") print $(i + 1) }' "$f")
    # shellcheck disable=SC2013 # image names have no spaces
    for img in $(awk 'toupper($1) == "FROM" { for (i = 2; i <= NF; i++) if ($i !~ /^--/) { print $i; break } }' "$f"); do
      case "$img" in
        "$DEBIAN_IMAGE" | "$RUST_IMAGE") ;;
        *)
          if ! grep -qxF "$img" <<<"$stages"; then
            die "$f uses base image $img, which this script does not know how to make"
          fi
          ;;
      esac
    done
  done
}

# The host's Debian mirrors (first enabled `deb` URI for the main archive and for security).
host_mirrors() {
  local uris
  uris=$(
    {
      awk 'tolower($1) == "uris:" { for (i = 2; i <= NF; i++) print $i }' /etc/apt/sources.list.d/*.sources 2>/dev/null || true
      awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i !~ /^\[/ && $i !~ /\]$/) { print $i; break } }' \
        /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null || true
    } | grep -E '^https?://' || true
  )
  MIRROR="${DEBIAN_MIRROR:-$(grep -E '/debian/?$' <<<"$uris" | head -n1 || true)}"
  SECURITY_MIRROR="${DEBIAN_SECURITY_MIRROR:-$(grep -E '/debian-security/?$' <<<"$uris" | head -n1 || true)}"
  MIRROR="${MIRROR:-http://deb.debian.org/debian}"
  SECURITY_MIRROR="${SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
  MIRROR="${MIRROR%/}"
  SECURITY_MIRROR="${SECURITY_MIRROR%/}"
}

make_debian() {
  [ "$(id -u)" = 0 ] || die "making $DEBIAN_IMAGE needs root (debootstrap); run this script as root"
  if ! command -v debootstrap >/dev/null; then
    command -v apt-get >/dev/null || die "debootstrap is missing and there is no apt-get to install it"
    say "installing debootstrap (apt-get)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >/dev/null 2>&1 ||
      { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >/dev/null; } ||
      die "cannot install debootstrap"
  fi
  host_mirrors
  local work root
  work=$(mktemp -d "${TMPDIR:-/var/tmp}/roomcast-debian.XXXXXX")
  # shellcheck disable=SC2064
  trap "rm -rf '$work'" EXIT
  root="$work/rootfs"
  say "debootstrap --variant=minbase $SUITE from $MIRROR (log: $work/debootstrap.log)"
  if ! debootstrap --variant=minbase "$SUITE" "$root" "$MIRROR" >"$work/debootstrap.log" 2>&1; then
    tail -n 20 "$work/debootstrap.log" >&2
    die "debootstrap failed"
  fi

  say "slimming the root file system"
  # What the official -slim image does (debuerreotype-slimify): keep dpkg from installing docs,
  # man pages and translations, and remove those already installed.
  cat >"$root/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
  find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
  find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete
  rm -rf "${root:?}"/usr/share/{man,groff,info,lintian,linda}/*
  find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +
  # apt as in the official image: no caches kept, no translations, gzipped indexes.
  cat >"$root/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
  echo 'Acquire::Languages "none";' >"$root/etc/apt/apt.conf.d/docker-no-languages"
  echo 'Acquire::GzipIndexes "true";' >"$root/etc/apt/apt.conf.d/docker-gzip-indexes"
  echo 'Apt::AutoRemove::SuggestsImportant "false";' >"$root/etc/apt/apt.conf.d/docker-autoremove-suggests"
  case "$MIRROR" in
    *snapshot*) echo 'Acquire::Check-Valid-Until "false";' >"$root/etc/apt/apt.conf.d/docker-snapshot" ;;
  esac
  rm -f "$root/etc/apt/sources.list"
  cat >"$root/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $MIRROR
Suites: $SUITE $SUITE-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $SECURITY_MIRROR
Suites: $SUITE-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  rm -rf "${root:?}"/var/lib/apt/lists/* "${root:?}"/var/cache/apt/* "${root:?}"/var/cache/debconf/*-old \
    "${root:?}"/var/log/*.log "${root:?}"/var/log/apt/* "${root:?}"/dev/* "${root:?}"/proc/* "${root:?}"/sys/* \
    "${root:?}"/tmp/* "${root:?}"/root/.bash_history
  : >"$root/etc/machine-id"
  echo localhost >"$root/etc/hostname"

  say "docker import -> $DEBIAN_IMAGE"
  tar --numeric-owner -C "$root" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["bash"]' \
    --change "LABEL org.opencontainers.image.description=\"local stand-in for $DEBIAN_IMAGE (debootstrap minbase, scripts/docker-base.sh)\"" \
    --message "debootstrap --variant=minbase $SUITE $MIRROR" \
    - "$DEBIAN_IMAGE" >/dev/null || die "docker import failed"
  rm -rf "$work"
  trap - EXIT
}

make_rust() {
  have_image "$DEBIAN_IMAGE" || die "$DEBIAN_IMAGE is missing"
  command -v rustc >/dev/null || die "no Rust toolchain on this host (rustc not found)"
  local want have sysroot triple work
  want="${RUST_IMAGE#rust:}"
  want="${want%%-*}" # 1.95
  have=$(rustc --version | awk '{print $2}')
  case "$have" in
    "$want" | "$want".*) ;;
    *) die "the host's rustc is $have but the Dockerfile builds with $RUST_IMAGE; install Rust $want (or change both)" ;;
  esac
  sysroot=$(rustc --print sysroot)
  triple=$(rustc -vV | awk '$1 == "host:" {print $2}')
  [ -x "$sysroot/bin/cargo" ] || die "the active toolchain ($sysroot) has no cargo"
  work=$(mktemp -d "${TMPDIR:-/var/tmp}/roomcast-rust.XXXXXX")
  # shellcheck disable=SC2064
  trap "rm -rf '$work'" EXIT
  say "copying the host's toolchain $have ($sysroot, without docs)"
  mkdir -p "$work/extra-ca"
  # Hard links where possible (same file system): fast and no extra space.
  cp -al "$sysroot" "$work/toolchain" 2>/dev/null || cp -a "$sysroot" "$work/toolchain"
  rm -rf "$work/toolchain/share/doc"
  if [ -d /usr/local/share/ca-certificates ]; then
    find /usr/local/share/ca-certificates -name '*.crt' -type f -exec cp {} "$work/extra-ca/" \;
  fi
  local toolchain="$have-$triple"
  cat >"$work/Dockerfile" <<EOF
# Local stand-in for $RUST_IMAGE, made by scripts/docker-base.sh.
FROM $DEBIAN_IMAGE
RUN apt-get update \\
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \\
      ca-certificates gcc libc6-dev make pkg-config \\
 && rm -rf /var/lib/apt/lists/*
COPY extra-ca/ /usr/local/share/ca-certificates/host/
RUN update-ca-certificates
COPY toolchain/ /usr/local/rustup/toolchains/$toolchain/
RUN mkdir -p /usr/local/cargo/bin \\
 && ln -s /usr/local/rustup/toolchains/$toolchain/bin/* /usr/local/cargo/bin/
ENV RUSTUP_HOME=/usr/local/rustup \\
    CARGO_HOME=/usr/local/cargo \\
    PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \\
    RUST_VERSION=$have
LABEL org.opencontainers.image.description="local stand-in for $RUST_IMAGE (host toolchain $have, scripts/docker-base.sh)"
RUN cargo --version && rustc --version && cc --version | head -n1
EOF
  say "docker build -> $RUST_IMAGE (log: $work/build.log)"
  if ! docker build -t "$RUST_IMAGE" "$work" >"$work/build.log" 2>&1; then
    tail -n 30 "$work/build.log" >&2
    die "building $RUST_IMAGE failed"
  fi
  rm -rf "$work"
  trap - EXIT
}

check_dockerfiles

start=$SECONDS
if have_image "$DEBIAN_IMAGE"; then
  say "$DEBIAN_IMAGE exists, skipped"
else
  make_debian
  say "$DEBIAN_IMAGE made ($((SECONDS - start)) s)"
fi

start=$SECONDS
if have_image "$RUST_IMAGE"; then
  say "$RUST_IMAGE exists, skipped"
else
  make_rust
  say "$RUST_IMAGE made ($((SECONDS - start)) s)"
fi
