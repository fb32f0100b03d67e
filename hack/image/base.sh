#!/usr/bin/env bash
# Make the image base locally: Debian bookworm + Python 3.11 via debootstrap, loaded into buildah.
# No container registry is reachable here, so this stands in for the official slim Python image
# (same Debian release, same Python minor). The rootfs tarball is cached and reused.
#
# usage: base.sh IMAGE_NAME CACHE_DIR   (buildah global flags come from $BUILDAH_FLAGS)
set -euo pipefail

image=$1
cache=$2
read -r -a buildah_flags <<<"${BUILDAH_FLAGS:-}"
buildah=(buildah "${buildah_flags[@]}")
tarball=$cache/bookworm-python3.11.tar
suite=bookworm
packages=python3.11,python3-venv,ca-certificates

if "${buildah[@]}" inspect --type image "$image" >/dev/null 2>&1; then
  echo "base image $image already present"
  exit 0
fi

# Use the Debian mirror this machine's apt is configured with; debootstrap's default otherwise.
host_mirror() {
  local uri=""
  if [[ -r /etc/apt/sources.list.d/debian.sources ]]; then
    uri=$(awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)
  fi
  if [[ -z $uri && -r /etc/apt/sources.list ]]; then
    uri=$(awk '$1 == "deb" && $2 !~ /security/ && $3 == "'"$suite"'" {print $2; exit}' /etc/apt/sources.list)
  fi
  printf '%s' "$uri"
}

if [[ ! -s $tarball ]]; then
  mkdir -p "$cache"
  rootfs=$(mktemp -d "$cache/rootfs.XXXXXX")
  trap 'rm -rf "$rootfs"' EXIT
  mirror=$(host_mirror)
  echo "debootstrap $suite ($packages) into $rootfs"
  # shellcheck disable=SC2086  # an empty mirror must vanish so debootstrap uses its default
  debootstrap --variant=minbase --include="$packages" "$suite" "$rootfs" $mirror
  # Shrink it the way slim images do: no apt lists, caches, docs or logs.
  chroot "$rootfs" apt-get clean
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/log/*.log \
    "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
    "$rootfs"/var/cache/debconf/*-old "$rootfs"/var/lib/dpkg/*-old
  tar -C "$rootfs" --numeric-owner -cf "$tarball.partial" .
  mv "$tarball.partial" "$tarball"
fi

ctr=$("${buildah[@]}" from scratch)
"${buildah[@]}" add "$ctr" "$tarball" /
"${buildah[@]}" config --env LANG=C.UTF-8 \
  --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  --cmd python3 --label org.opencontainers.image.description="Debian $suite + Python 3.11 (debootstrap)" \
  "$ctr"
"${buildah[@]}" commit --rm "$ctr" "$image"
echo "base image $image ready"
