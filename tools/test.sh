#!/usr/bin/env bash
# Runs the whole Isthmus test suite: builds (or reuses) the Kubernetes control-plane
# binaries the tests start, then every test of the workspace.
#
#   tools/test.sh [extra cargo test arguments]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

ISTHMUS_KUBE_BIN_DIR=$(tools/build-kube-bins.sh)
export ISTHMUS_KUBE_BIN_DIR
ISTHMUS_JAEGER_BIN=$(tools/build-jaeger.sh)
export ISTHMUS_JAEGER_BIN
exec cargo test --workspace "$@"
