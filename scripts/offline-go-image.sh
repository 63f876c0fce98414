#!/usr/bin/env bash
# offline-go-image.sh NAME: make a Go builder image from this machine's own
# Go toolchain (/usr/local/go, or `go env GOROOT`) for machines that cannot
# pull golang from Docker Hub. It carries Go, a POSIX shell, a CA bundle
# and an empty /tmp: what the Dockerfile's build stage uses, nothing more.
set -euo pipefail
name=${1:?usage: offline-go-image.sh IMAGE_NAME}
goroot=$(go env GOROOT)
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/tmp" "$stage/usr/local"
chmod 1777 "$stage/tmp"
cp -a "$goroot" "$stage/usr/local/go"
# sh and the shared objects it needs, found by ldd rather than guessed.
sh_bin=$(readlink -f /bin/sh)
files=("$sh_bin" /etc/ssl/certs/ca-certificates.crt)
while read -r lib; do files+=("$lib" "$(readlink -f "$lib")"); done < <(ldd "$sh_bin" | grep -o '/[^ ]*')
for f in "${files[@]}"; do
  mkdir -p "$stage$(dirname "$f")"
  cp -aL "$f" "$stage$f"
done
mkdir -p "$stage/bin"
ln -sf "$sh_bin" "$stage/bin/sh"
tar -C "$stage" -cf - . | docker import \
  -c 'ENV PATH=/usr/local/go/bin:/usr/bin:/bin' -c 'ENV GOPATH=/go' \
  - "$name" >/dev/null
echo "$name"
