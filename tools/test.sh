#!/usr/bin/env bash
# Runs the whole Isthmus test suite: checks the machine has what the tests use,
# builds (or reuses) the Kubernetes control-plane binaries and Jaeger the tests start,
# then every test of the workspace.
#
#   tools/test.sh [extra cargo test arguments]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Toolchains: stop at once naming them (`.ci/run` installs both on a fresh machine).
missing=()
command -v cargo >/dev/null || missing+=("Rust 1.89 or newer (cargo; https://rustup.rs, or run .ci/run)")
command -v go >/dev/null || missing+=("Go 1.21 or newer (go; it builds kube-apiserver, etcd and Jaeger; or run .ci/run)")
command -v cc >/dev/null || missing+=("a C compiler (cc; Debian: apt-get install build-essential)")
if [ ${#missing[@]} -gt 0 ]; then
  printf 'tools/test.sh: missing prerequisites:\n' >&2
  printf '  - %s\n' "${missing[@]}" >&2
  exit 1
fi

# Tools the tests run, from the distribution: shellcheck (the scripts' lint test),
# nginx (the real TLS server TLS origination is tested against), chromium (the
# dashboard is tested in a real headless browser) and, as root, what pods and
# cluster networks need (network namespaces, veth pairs, iptables capture).
pkgs=()
command -v shellcheck >/dev/null || pkgs+=(shellcheck)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || pkgs+=(nginx)
command -v chromium >/dev/null || pkgs+=(chromium)
if [ "$(id -u)" = 0 ]; then
  command -v ip >/dev/null || pkgs+=(iproute2)
  command -v iptables >/dev/null || pkgs+=(iptables)
fi
if [ ${#pkgs[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "tools/test.sh: installing ${pkgs[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}" >/dev/null
  else
    echo "tools/test.sh: install ${pkgs[*]} first (Debian: apt-get install ${pkgs[*]})" >&2
    exit 1
  fi
fi

ISTHMUS_KUBE_BIN_DIR=$(tools/build-kube-bins.sh)
export ISTHMUS_KUBE_BIN_DIR
ISTHMUS_JAEGER_BIN=$(tools/build-jaeger.sh)
export ISTHMUS_JAEGER_BIN
exec cargo test --workspace "$@"
