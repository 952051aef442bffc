#!/usr/bin/env bash
# Builds kube-apiserver, kube-controller-manager and etcd from the Go wrapper module in
# tools/kube-bins and caches them, keyed on the module's go.mod and go.sum.
#
#   tools/build-kube-bins.sh            build (or reuse) and print the binary directory
#
# Environment:
#   ISTHMUS_KUBE_BIN_CACHE  cache root (default: $XDG_CACHE_HOME/isthmus/kube-bins,
#                           else ~/.cache/isthmus/kube-bins)
#   GOFLAGS                 passed through; defaults to -p=2 so that the openapi package
#                           compiles within the memory of a small machine
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
mod="$here/kube-bins"
k8s_version=$(awk '$1=="k8s.io/kubernetes" {print $2}' "$mod/go.mod")
minor=$(echo "$k8s_version" | cut -d. -f2)
key=$(cat "$mod/go.mod" "$mod/go.sum" "$0" | sha256sum | cut -c1-16)
root=${ISTHMUS_KUBE_BIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/isthmus/kube-bins}
out="$root/$key"

have_all() { [ -x "$out/kube-apiserver" ] && [ -x "$out/kube-controller-manager" ] && [ -x "$out/etcd" ]; }
if have_all; then
  echo "kube binaries: cached ($k8s_version) in $out" >&2
  echo "$out"
  exit 0
fi

# Several test binaries may ask at once: one builds, the others wait for it.
mkdir -p "$root"
exec 9>"$root/.lock"
flock 9
if have_all; then
  echo "kube binaries: built meanwhile ($k8s_version) in $out" >&2
  echo "$out"
  exit 0
fi

command -v go >/dev/null || { echo "error: go is not installed; install Go >= 1.24 (the Go module proxy must be reachable)" >&2; exit 1; }

echo "kube binaries: building $k8s_version into $out (cold build: several minutes)" >&2
tmp="$out.tmp.$$"
rm -rf "$tmp"; mkdir -p "$tmp"
trap 'rm -rf "$tmp"' EXIT
start=$(date +%s)
ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$k8s_version -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean"
(
  cd "$mod"
  export GOWORK=off CGO_ENABLED=0 GOFLAGS="${GOFLAGS:--p=2}"
  go build -trimpath -ldflags "$ldflags" -o "$tmp/" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager
  go build -trimpath -ldflags "-s -w" -o "$tmp/etcd" go.etcd.io/etcd/server/v3
)
mv "$tmp" "$out"
trap - EXIT
echo "kube binaries: built in $(( $(date +%s) - start ))s" >&2
# Keep only the newest build: older keys are dead weight after a version bump.
find "$root" -mindepth 1 -maxdepth 1 -type d ! -name "$key" -exec rm -rf {} + 2>/dev/null || true
echo "$out"
