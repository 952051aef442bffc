#!/usr/bin/env bash
# Two kind clusters on separate Docker networks, Isthmus installed in each, linked
# with `meshctl remote-secret`, helloworld v1 in east and v2 in west, then a check
# that east reaches v2 when v1 is gone. Needs docker, kind and kubectl.
#
#   testbed/kind/multicluster.sh up      # create, build, install, link, deploy, check
#   testbed/kind/multicluster.sh down    # delete both clusters and networks
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

IMAGE=${IMAGE:-isthmus:dev}
WORK=${WORK:-$PWD/target/kind}
CLUSTERS=(east west)
MESHCTL=${MESHCTL:-target/release/meshctl}

need() { command -v "$1" >/dev/null || { echo "error: $1 is needed" >&2; exit 1; }; }

ctx() { echo "kind-isthmus-$1"; }

up() {
  need docker; need kind; need kubectl
  cargo build --release -p meshctl
  docker build -f deploy/Dockerfile -t "$IMAGE" .
  mkdir -p "$WORK"
  "$MESHCTL" ca init --trust-domain mesh.example --out "$WORK/root"
  local i=0
  for c in "${CLUSTERS[@]}"; do
    i=$((i + 1))
    # Separate Docker networks: the clusters reach each other only through the
    # addresses published in the link Secrets.
    docker network inspect "isthmus-$c" >/dev/null 2>&1 \
      || docker network create --subnet "172.$((30 + i)).0.0/16" "isthmus-$c" >/dev/null
    KIND_EXPERIMENTAL_DOCKER_NETWORK="isthmus-$c" kind create cluster --name "isthmus-$c" \
      --config testbed/kind/cluster.yaml
    kind load docker-image "$IMAGE" --name "isthmus-$c"
    "$MESHCTL" ca intermediate --root "$WORK/root" --cluster "$c" --out "$WORK/$c" \
      --secret-namespace istio-system
    "$MESHCTL" install --cluster-name "$c" --network "net-$c" --trust-domain mesh.example \
      --image "$IMAGE" --kubeconfig <(kind get kubeconfig --name "isthmus-$c")
    kubectl --context "$(ctx "$c")" apply -f "$WORK/$c/cacerts-secret.yaml"
    kubectl --context "$(ctx "$c")" -n istio-system rollout status deploy/isthmus-discovery --timeout 180s
    kubectl --context "$(ctx "$c")" -n istio-system rollout status deploy/isthmus-eastwestgateway --timeout 180s
  done
  # The gateways and discovery are reached on each node's address (NodePort of the
  # LoadBalancer Service; kind has no load balancer).
  for c in "${CLUSTERS[@]}"; do
    local node_ip gw_port
    node_ip=$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "isthmus-$c-control-plane")
    gw_port=$(kubectl --context "$(ctx "$c")" -n istio-system get svc isthmus-eastwestgateway \
      -o jsonpath='{.spec.ports[?(@.name=="tls")].nodePort}')
    kubectl --context "$(ctx "$c")" -n istio-system expose deploy isthmus-discovery \
      --name isthmus-discovery-peering --type NodePort --port 15012 --dry-run=client -o yaml \
      | kubectl --context "$(ctx "$c")" apply -f -
    local disc_port
    disc_port=$(kubectl --context "$(ctx "$c")" -n istio-system get svc isthmus-discovery-peering \
      -o jsonpath='{.spec.ports[0].nodePort}')
    "$MESHCTL" remote-secret --name "$c" --network "net-$c" \
      --discovery-address "$node_ip:$disc_port" --gateway-address "$node_ip:$gw_port" \
      --trust-bundle "$WORK/root/root-cert.pem" > "$WORK/link-$c.yaml"
  done
  # Each cluster gets the other's link.
  kubectl --context "$(ctx east)" apply -f "$WORK/link-west.yaml"
  kubectl --context "$(ctx west)" apply -f "$WORK/link-east.yaml"
  for c in "${CLUSTERS[@]}"; do
    local v=v1
    [[ $c == west ]] && v=v2
    sed "s/VERSION/$v/g" testbed/kind/helloworld.yaml | kubectl --context "$(ctx "$c")" apply -f -
    kubectl --context "$(ctx "$c")" -n sample rollout status "deploy/helloworld-$v" --timeout 180s
    kubectl --context "$(ctx "$c")" -n sample rollout status deploy/curl --timeout 180s
  done
  check
}

hello() {
  kubectl --context "$(ctx east)" -n sample exec deploy/curl -c curl -- \
    curl -s --max-time 5 http://helloworld.sample:5000/hello
}

check() {
  echo "from east: $(hello)"
  # Statically first: links up, v2 ready in west behind its gateway, outlier detection.
  kubectl --context "$(ctx east)" -n istio-system port-forward deploy/isthmus-discovery 15014:15014 \
    >/dev/null & local pf=$!
  sleep 2
  local verified=0
  "$MESHCTL" multicluster verify-failover --discovery 127.0.0.1:15014 --service helloworld.sample \
    || verified=$?
  kill "$pf" 2>/dev/null || true
  [[ $verified == 0 ]] || { echo "FAIL: helloworld would not fail over" >&2; exit 1; }
  # Failover: without v1 in east, east must reach v2 in west.
  kubectl --context "$(ctx east)" -n sample scale deploy/helloworld-v1 --replicas 0
  kubectl --context "$(ctx east)" -n sample wait --for=delete pod -l version=v1 --timeout 60s || true
  local out
  out=$(hello)
  echo "from east without v1: $out"
  [[ $out == *"version: v2"* ]] || { echo "FAIL: east did not fail over to west" >&2; exit 1; }
  kubectl --context "$(ctx east)" -n sample scale deploy/helloworld-v1 --replicas 1
  echo "PASS: failover across clusters"
}

down() {
  for c in "${CLUSTERS[@]}"; do
    kind delete cluster --name "isthmus-$c" 2>/dev/null || true
    docker network rm "isthmus-$c" >/dev/null 2>&1 || true
  done
  rm -rf "$WORK"
}

case "${1:-up}" in
  up) up ;;
  check) check ;;
  down) down ;;
  *) echo "usage: $0 up|check|down" >&2; exit 2 ;;
esac
