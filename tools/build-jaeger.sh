#!/usr/bin/env bash
# Builds Jaeger (all-in-one, cmd/jaeger) from the Go wrapper module in tools/jaeger and
# caches it, keyed on the module's go.mod and go.sum. The testbed's shared tracing
# backend.
#
#   tools/build-jaeger.sh            build (or reuse) and print the binary's path
#
# Environment:
#   ISTHMUS_JAEGER_CACHE  cache root (default: $XDG_CACHE_HOME/isthmus/jaeger, else
#                         ~/.cache/isthmus/jaeger)
#   GOFLAGS               passed through; defaults to -p=2 for small machines
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
mod="$here/jaeger"
version=$(awk '$1=="github.com/jaegertracing/jaeger" {print $2}' "$mod/go.mod")
key=$(cat "$mod/go.mod" "$mod/go.sum" "$0" | sha256sum | cut -c1-16)
root=${ISTHMUS_JAEGER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/isthmus/jaeger}
out="$root/$key"

if [ -x "$out/jaeger" ]; then
  echo "jaeger: cached ($version) in $out" >&2
  echo "$out/jaeger"
  exit 0
fi

mkdir -p "$root"
exec 9>"$root/.lock"
flock 9
if [ -x "$out/jaeger" ]; then
  echo "jaeger: built meanwhile ($version) in $out" >&2
  echo "$out/jaeger"
  exit 0
fi

command -v go >/dev/null || { echo "error: go is not installed; install Go >= 1.24 (the Go module proxy must be reachable)" >&2; exit 1; }

echo "jaeger: building $version into $out (cold build: a few minutes)" >&2
tmp="$out.tmp.$$"
rm -rf "$tmp"; mkdir -p "$tmp"
trap 'rm -rf "$tmp"' EXIT
start=$(date +%s)
(
  cd "$mod"
  # go.sum pins every module; the checksum database is not consulted.
  export GOWORK=off CGO_ENABLED=0 GOFLAGS="${GOFLAGS:--p=2}" GONOSUMDB='*'
  go build -trimpath -ldflags "-s -w" -o "$tmp/jaeger" github.com/jaegertracing/jaeger/cmd/jaeger
)
mv "$tmp" "$out"
trap - EXIT
echo "jaeger: built in $(( $(date +%s) - start ))s" >&2
find "$root" -mindepth 1 -maxdepth 1 -type d ! -name "$key" -exec rm -rf {} + 2>/dev/null || true
echo "$out/jaeger"
