#!/usr/bin/env bash
# Benchmarks one mesh hop on loopback, every figure of the data-path issue in one run:
#   direct:   load → backend
#   isthmus:  load → sidecar A → mTLS → sidecar B → backend
#   nginx:    load → nginx A  → mTLS → nginx B  → backend
#   haproxy:  load → haproxy A → mTLS → haproxy B → backend
#   gateway:  load → sidecar A → east-west gateway (TCP passthrough, or QUIC) → sidecar B → backend
#   gRPC:     h2load → sidecar A → sidecar B → gRPC backend, against nginx grpc_pass
#   TCP:      load → sidecar A (captured, opaque TCP) → sidecar B → backend, against
#             haproxy `mode tcp`, in a network namespace of its own (capture needs iptables)
# TLS 1.3, ECDSA P-256, client certificates verified on both sides, upstream
# keepalive everywhere. The churn rows use a second client-side proxy of each pair
# that opens a new TLS connection to its B side per request, and a load generator
# that opens a new connection per request. Open-loop load at a fixed rate with latency correction (oha),
# proxies pinned to core 1 with one worker each, load generator and backend on core 0.
#
#   tools/bench/sidecar-hop.sh [RATE] [SECONDS]     (defaults 1000 rps, 20 s)
#   ROUNDS=5 THROUGHPUT_ONLY=1 tools/bench/sidecar-hop.sh   (interleaved throughput rounds only)
#   PROFILE=DIR THROUGHPUT_ONLY=1 ROUNDS=1 tools/bench/sidecar-hop.sh
#     (also records perf profiles of sidecars A and B at maximum rps: DIR/{a,b}.txt)
#
# Also prints each proxy's idle memory: resident, anonymous and file-backed apart.
# Needs: oha (cargo install oha --locked), nginx, haproxy, h2load (nghttp2-client),
# openssl, taskset, iptables, ip (iproute2) and root (the TCP rows run in a namespace).
# Prints Markdown rows for docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

RATE=${1:-1000}
SECS=${2:-20}
WARMUP=5
for tool in oha nginx haproxy h2load openssl taskset python3 iptables ip; do
  command -v "$tool" >/dev/null || { echo "error: $tool is required" >&2; exit 1; }
done

cargo build --release -q -p sidecar -p meshctl -p east-west-gateway
cargo build --release -q -p mesh-proxy --example grpc_backend
BIN="${CARGO_TARGET_DIR:-target}/release"
W=$(mktemp -d /tmp/isthmus-bench.XXXXXX)
NS=isthmus-bench-$$
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  ip netns del "$NS" 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT

# --- certificates -------------------------------------------------------------
"$BIN/meshctl" ca init --trust-domain bench.local --out "$W/root" >/dev/null
"$BIN/meshctl" ca intermediate --root "$W/root" --cluster bench --out "$W/ca" >/dev/null
"$BIN/meshctl" ca workload --ca "$W/ca" --namespace default --service-account client --out "$W/client" >/dev/null
"$BIN/meshctl" ca workload --ca "$W/ca" --namespace default --service-account server --out "$W/server" >/dev/null
"$BIN/meshctl" ca workload --ca "$W/ca" --namespace istio-system --service-account isthmus-eastwestgateway \
  --out "$W/gateway" >/dev/null
# nginx and haproxy verify host names, so their pair gets DNS-SAN certificates.
openssl ecparam -name prime256v1 -genkey -noout -out "$W/pca.key" 2>/dev/null
openssl req -x509 -new -key "$W/pca.key" -subj /CN=bench-ca -days 2 -out "$W/pca.crt" 2>/dev/null
for n in pserver pclient; do
  openssl ecparam -name prime256v1 -genkey -noout -out "$W/$n.key" 2>/dev/null
  openssl req -new -key "$W/$n.key" -subj /CN=mesh.test -out "$W/$n.csr" 2>/dev/null
  printf 'subjectAltName=DNS:mesh.test\nextendedKeyUsage=serverAuth,clientAuth\n' > "$W/$n.ext"
  openssl x509 -req -in "$W/$n.csr" -CA "$W/pca.crt" -CAkey "$W/pca.key" -CAcreateserial -days 2 \
    -extfile "$W/$n.ext" -out "$W/$n.crt" 2>/dev/null
  cat "$W/$n.crt" "$W/$n.key" > "$W/$n.pem"
done

# Shared by every nginx and haproxy config below.
nginx_head() { printf 'worker_processes 1; daemon off; pid %s/%s.pid; error_log %s/%s.err warn;\nevents { worker_connections 4096; }\n' "$W" "$1" "$W" "$1"; }
haproxy_head() {
  printf '%s\n' 'global' '  nbthread 1' 'defaults' '  mode http' '  timeout connect 5s' \
    '  timeout client 60s' '  timeout server 60s' '  http-reuse always'
}

# --- backend: 1 KiB responses --------------------------------------------------
BODY=$(head -c 1024 /dev/zero | tr '\0' 'x')
cat > "$W/backend.conf" <<EOF
$(nginx_head backend)
http { access_log off; keepalive_requests 1000000; server { listen 127.0.0.1:18080; location / { return 200 "$BODY"; } } }
EOF
taskset -c 0 nginx -p "$W" -c "$W/backend.conf" & PIDS+=($!)
# gRPC: unary calls answer one 64-byte message, streaming calls 100 of them.
taskset -c 0 "$BIN/examples/grpc_backend" 127.0.0.1:18090 100 & PIDS+=($!)

# --- isthmus pair ----------------------------------------------------------------
cat > "$W/a.yaml" <<EOF
apiVersion: isthmus.dev/v1alpha1
kind: ProxyConfig
node: {name: client, namespace: default, serviceAccount: client}
services:
- name: bench
  namespace: default
  ports: [{name: http, port: 8080}]
  endpoints: [{address: 127.0.0.1, inboundPort: 18306}]
- name: grpcbench
  namespace: default
  ports: [{name: grpc, port: 7070}]
  endpoints: [{address: 127.0.0.1, inboundPort: 18306}]
EOF
cat > "$W/b.yaml" <<EOF
apiVersion: isthmus.dev/v1alpha1
kind: ProxyConfig
node: {name: server, namespace: default, serviceAccount: server}
services:
- {name: bench, namespace: default, ports: [{name: http, port: 8080, targetPort: 18080}]}
- {name: grpcbench, namespace: default, ports: [{name: grpc, port: 7070, targetPort: 18090}]}
EOF
# The churn client: a DestinationRule allowing one request per upstream connection.
ONE_PER_CONNECTION='---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: bench, namespace: default}
spec:
  host: bench
  trafficPolicy: {connectionPool: {http: {maxRequestsPerConnection: 1}}}'
{ cat "$W/a.yaml"; echo "$ONE_PER_CONNECTION"; } > "$W/a-churn.yaml"
# Through the east-west gateway: sidecar B is its local endpoint; the clients reach B
# at the gateway, over TCP (SNI passthrough) or in a QUIC tunnel.
cat > "$W/gw.yaml" <<EOF
apiVersion: isthmus.dev/v1alpha1
kind: ProxyConfig
node: {name: gateway, namespace: istio-system, serviceAccount: isthmus-eastwestgateway}
services:
- {name: bench, namespace: default, ports: [{name: http, port: 8080}], endpoints: [{address: 127.0.0.1, inboundPort: 18306}]}
EOF
for t in tcp quic; do
  tunnel=""; [ "$t" = quic ] && tunnel=", tunnel: quic"
  cat > "$W/a-gw-$t.yaml" <<EOF
apiVersion: isthmus.dev/v1alpha1
kind: ProxyConfig
node: {name: client, namespace: default, serviceAccount: client}
services:
- {name: bench, namespace: default, ports: [{name: http, port: 8080}], endpoints: [{address: 127.0.0.1, inboundPort: 18401$tunnel}]}
EOF
  { cat "$W/a-gw-$t.yaml"; echo "$ONE_PER_CONNECTION"; } > "$W/a-gw-$t-churn.yaml"
done
# Access logging off, as in Istio's default mesh config.
RUST_LOG=warn taskset -c 1 "$BIN/sidecar" --workers 1 --config "$W/a.yaml" --cert-dir "$W/client" \
  --outbound 127.0.0.1:18301 --inbound 127.0.0.1:18302 --admin 127.0.0.1:18303 & PIDS+=($!); ISTHMUS_A=$!
RUST_LOG=warn taskset -c 1 "$BIN/sidecar" --workers 1 --config "$W/b.yaml" --cert-dir "$W/server" \
  --outbound 127.0.0.1:18304 --inbound 127.0.0.1:18306 --admin 127.0.0.1:18305 & PIDS+=($!); ISTHMUS_B=$!
RUST_LOG=warn taskset -c 1 "$BIN/sidecar" --workers 1 --config "$W/a-churn.yaml" --cert-dir "$W/client" \
  --outbound 127.0.0.1:18311 --inbound 127.0.0.1:18312 --admin 127.0.0.1:18313 & PIDS+=($!); ISTHMUS_AC=$!
RUST_LOG=warn taskset -c 1 "$BIN/east-west-gateway" --workers 1 --config "$W/gw.yaml" --cert-dir "$W/gateway" \
  --listen 127.0.0.1:18401 --admin 127.0.0.1:18402 --quic & PIDS+=($!); GATEWAY=$!
# Client sidecars through the gateway: 18341 TCP, 18351 QUIC, 18361 and 18371 the
# same with a new connection per request.
port=18341
for c in gw-tcp gw-quic gw-tcp-churn gw-quic-churn; do
  RUST_LOG=warn taskset -c 1 "$BIN/sidecar" --workers 1 --config "$W/a-$c.yaml" --cert-dir "$W/client" \
    --outbound 127.0.0.1:$port --inbound 127.0.0.1:$((port + 1)) --admin 127.0.0.1:$((port + 2)) & PIDS+=($!)
  port=$((port + 10))
done

# --- nginx pair -----------------------------------------------------------------
cat > "$W/nginx-a.conf" <<EOF
$(nginx_head na)
http { access_log off; keepalive_requests 1000000;
  upstream b { server 127.0.0.1:18102; keepalive 64; keepalive_requests 1000000; }
  server { listen 127.0.0.1:18101;
    location / { proxy_pass https://b; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_ssl_certificate $W/pclient.crt; proxy_ssl_certificate_key $W/pclient.key;
      proxy_ssl_trusted_certificate $W/pca.crt; proxy_ssl_verify on; proxy_ssl_name mesh.test;
      proxy_ssl_server_name on; proxy_ssl_protocols TLSv1.3; proxy_ssl_session_reuse on; } }
  upstream gb { server 127.0.0.1:18122; keepalive 64; keepalive_requests 1000000; }
  server { listen 127.0.0.1:18121 http2;
    location / { grpc_pass grpcs://gb;
      grpc_ssl_certificate $W/pclient.crt; grpc_ssl_certificate_key $W/pclient.key;
      grpc_ssl_trusted_certificate $W/pca.crt; grpc_ssl_verify on; grpc_ssl_name mesh.test;
      grpc_ssl_server_name on; grpc_ssl_protocols TLSv1.3; grpc_ssl_session_reuse on; } } }
EOF
cat > "$W/nginx-b.conf" <<EOF
$(nginx_head nb)
http { access_log off; keepalive_requests 1000000;
  upstream app { server 127.0.0.1:18080; keepalive 64; keepalive_requests 1000000; }
  server { listen 127.0.0.1:18102 ssl; ssl_protocols TLSv1.3;
    ssl_certificate $W/pserver.crt; ssl_certificate_key $W/pserver.key;
    ssl_client_certificate $W/pca.crt; ssl_verify_client on;
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; } }
  upstream grpcapp { server 127.0.0.1:18090; keepalive 64; keepalive_requests 1000000; }
  server { listen 127.0.0.1:18122 ssl http2; ssl_protocols TLSv1.3;
    ssl_certificate $W/pserver.crt; ssl_certificate_key $W/pserver.key;
    ssl_client_certificate $W/pca.crt; ssl_verify_client on;
    location / { grpc_pass grpc://grpcapp; } } }
EOF
# The churn client: no upstream keepalive, so each request opens a TLS connection.
cat > "$W/nginx-ac.conf" <<EOF
$(nginx_head nac)
http { access_log off;
  server { listen 127.0.0.1:18111;
    location / { proxy_pass https://127.0.0.1:18102;
      proxy_ssl_certificate $W/pclient.crt; proxy_ssl_certificate_key $W/pclient.key;
      proxy_ssl_trusted_certificate $W/pca.crt; proxy_ssl_verify on; proxy_ssl_name mesh.test;
      proxy_ssl_server_name on; proxy_ssl_protocols TLSv1.3; proxy_ssl_session_reuse on; } } }
EOF
taskset -c 1 nginx -p "$W" -c "$W/nginx-a.conf" & PIDS+=($!); NGINX_A=$!
taskset -c 1 nginx -p "$W" -c "$W/nginx-ac.conf" & PIDS+=($!); NGINX_AC=$!
taskset -c 1 nginx -p "$W" -c "$W/nginx-b.conf" & PIDS+=($!); NGINX_B=$!

# --- haproxy pair ---------------------------------------------------------------
cat > "$W/haproxy-a.cfg" <<EOF
$(haproxy_head)
frontend fe
  bind 127.0.0.1:18201
  default_backend be
backend be
  server b 127.0.0.1:18202 ssl crt $W/pclient.pem ca-file $W/pca.crt verify required verifyhost mesh.test sni str(mesh.test) ssl-min-ver TLSv1.3
EOF
cat > "$W/haproxy-b.cfg" <<EOF
$(haproxy_head)
frontend fe
  bind 127.0.0.1:18202 ssl crt $W/pserver.pem ca-file $W/pca.crt verify required ssl-min-ver TLSv1.3
  default_backend app
backend app
  server app 127.0.0.1:18080
EOF
sed -e 's/18201/18211/' -e 's/http-reuse always/http-reuse never/' "$W/haproxy-a.cfg" > "$W/haproxy-ac.cfg"
taskset -c 1 haproxy -f "$W/haproxy-a.cfg" -db & PIDS+=($!); HAPROXY_A=$!
taskset -c 1 haproxy -f "$W/haproxy-ac.cfg" -db & PIDS+=($!); HAPROXY_AC=$!
taskset -c 1 haproxy -f "$W/haproxy-b.cfg" -db & PIDS+=($!); HAPROXY_B=$!

# --- opaque TCP, in a network namespace of its own ------------------------------
# Sidecar A captures the load generator's connections to the service's address
# (iptables, as in a pod) and carries them as opaque TCP over mTLS to sidecar B; the
# haproxy pair runs `mode tcp` over TLS. Everything of this section (a backend of its
# own too) runs in the namespace, whose loopback is its own.
ip netns add "$NS"
ip -n "$NS" link set lo up
ip -n "$NS" link add bench0 type veth peer name bench1
ip -n "$NS" addr add 10.250.0.1/24 dev bench0
ip -n "$NS" link set bench0 up
ip -n "$NS" link set bench1 up
# Started in the background with `ip netns exec` itself (it execs, so $! is the
# process); `inns` runs a command to its end in the namespace.
inns() { ip netns exec "$NS" "$@"; }
sed -e "s|pid $W/backend.pid|pid $W/backend-ns.pid|" -e "s|$W/backend.err|$W/backend-ns.err|" \
  "$W/backend.conf" > "$W/backend-ns.conf"
ip netns exec "$NS" taskset -c 0 nginx -p "$W" -c "$W/backend-ns.conf" & PIDS+=($!)
cat > "$W/a-tcp.yaml" <<EOF
apiVersion: isthmus.dev/v1alpha1
kind: ProxyConfig
node: {name: client, namespace: default, serviceAccount: client}
services:
- {name: tcpbench, namespace: default, addresses: [10.250.0.100], ports: [{name: tcp, port: 9000}], endpoints: [{address: 127.0.0.1, inboundPort: 18336}]}
EOF
cat > "$W/b-tcp.yaml" <<EOF
apiVersion: isthmus.dev/v1alpha1
kind: ProxyConfig
node: {name: server, namespace: default, serviceAccount: server}
services:
- {name: tcpbench, namespace: default, ports: [{name: tcp, port: 9000, targetPort: 18080}]}
EOF
RUST_LOG=warn ip netns exec "$NS" taskset -c 1 "$BIN/sidecar" --workers 1 --config "$W/a-tcp.yaml" --cert-dir "$W/client" \
  --capture --outbound 127.0.0.1:18331 --inbound 127.0.0.1:18332 --admin 127.0.0.1:18333 & PIDS+=($!); ISTHMUS_TA=$!
RUST_LOG=warn ip netns exec "$NS" taskset -c 1 "$BIN/sidecar" --workers 1 --config "$W/b-tcp.yaml" --cert-dir "$W/server" \
  --outbound 127.0.0.1:18334 --inbound 127.0.0.1:18336 --admin 127.0.0.1:18335 & PIDS+=($!); ISTHMUS_TB=$!
haproxy_tcp_head() {
  printf '%s\n' 'global' '  nbthread 1' 'defaults' '  mode tcp' '  timeout connect 5s' \
    '  timeout client 60s' '  timeout server 60s'
}
cat > "$W/haproxy-ta.cfg" <<EOF
$(haproxy_tcp_head)
frontend fe
  bind 127.0.0.1:18231
  default_backend be
backend be
  server b 127.0.0.1:18232 ssl crt $W/pclient.pem ca-file $W/pca.crt verify required verifyhost mesh.test sni str(mesh.test) ssl-min-ver TLSv1.3
EOF
cat > "$W/haproxy-tb.cfg" <<EOF
$(haproxy_tcp_head)
frontend fe
  bind 127.0.0.1:18232 ssl crt $W/pserver.pem ca-file $W/pca.crt verify required ssl-min-ver TLSv1.3
  default_backend app
backend app
  server app 127.0.0.1:18080
EOF
ip netns exec "$NS" taskset -c 1 haproxy -f "$W/haproxy-ta.cfg" -db & PIDS+=($!); HAPROXY_TA=$!
ip netns exec "$NS" taskset -c 1 haproxy -f "$W/haproxy-tb.cfg" -db & PIDS+=($!); HAPROXY_TB=$!

sleep 2
# Every path must answer before anything is measured.
check() {
  local url=$1 code
  shift
  code=$("$@" oha -n 5 --no-tui -H 'host: bench:8080' --output-format json "$url" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(sorted(d["statusCodeDistribution"].keys()))')
  [ "$code" = "['200']" ] || { echo "error: $url answered $code" >&2; exit 1; }
}
for url in http://127.0.0.1:18080/ http://127.0.0.1:18301/ http://127.0.0.1:18101/ http://127.0.0.1:18201/ \
  http://127.0.0.1:18311/ http://127.0.0.1:18111/ http://127.0.0.1:18211/ http://127.0.0.1:18341/ \
  http://127.0.0.1:18351/ http://127.0.0.1:18361/ http://127.0.0.1:18371/; do
  check "$url"
done
check http://10.250.0.100:9000/ inns
check http://127.0.0.1:18231/ inns
# gRPC: an empty request message; every call must answer 200 (h2load counts 2xx).
printf '\0\0\0\0\0' > "$W/empty.grpc"
grpc_load() {
  local url=$1
  shift
  taskset -c 0 h2load "$@" -d "$W/empty.grpc" -H 'content-type: application/grpc' -H 'te: trailers' \
    -H ':authority: grpcbench:7070' "$url"
}
for url in http://127.0.0.1:18301/bench.Echo/Unary http://127.0.0.1:18121/bench.Echo/Stream; do
  out=$(grpc_load "$url" -n 10 -c 1)
  if ! grep -q 'status codes: 10 2xx' <<<"$out"; then
    echo "error: gRPC through $url failed: $out" >&2
    exit 1
  fi
done

# A proxy is its process and its children (nginx's worker does the work).
family() { echo "$1"; pgrep -P "$1" || true; }
ticks() { for p in $(family "$1"); do awk '{print $14+$15}' "/proc/$p/stat"; done | awk '{s+=$1} END {print s}'; }
rss_kb() { for p in $(family "$1"); do awk '/^VmRSS/ {print $2}' "/proc/$p/status"; done | awk '{s+=$1} END {print s}'; }
hwm_kb() { for p in $(family "$1"); do awk '/^VmHWM/ {print $2}' "/proc/$p/status"; done | awk '{s+=$1} END {print s}'; }
HZ=$(getconf CLK_TCK)

run() {
  local name=$1 url=$2 conns=$3 a=${4:-} b=${5:-}
  local extra=()
  case "$name" in *churn*) extra=(--disable-keepalive) ;; esac
  ${RUN_IN:-} oha -z "${WARMUP}s" -q "$RATE" -c "$conns" --latency-correction --no-tui "${extra[@]}" -H 'host: bench:8080' "$url" >/dev/null
  local ra rb ta0 tb0
  if [ -n "$a" ]; then ra=$(rss_kb "$a"); rb=$(rss_kb "$b"); ta0=$(ticks "$a"); tb0=$(ticks "$b"); fi
  local json
  json=$(${RUN_IN:-} taskset -c 0 oha -z "${SECS}s" -q "$RATE" -c "$conns" --latency-correction --no-tui \
    "${extra[@]}" -H 'host: bench:8080' --output-format json "$url")
  local cpu="-" mem="-"
  local ok
  ok=$(echo "$json" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["statusCodeDistribution"].get("200",0))')
  if [ -n "$a" ]; then
    cpu=$(python3 -c "print(f'{($(ticks "$a")-$ta0)/$HZ/($ok/10000):.2f}, {($(ticks "$b")-$tb0)/$HZ/($ok/10000):.2f}')")
    mem=$(python3 -c "print(f'{$ra/1024:.1f}→{$(hwm_kb "$a")/1024:.1f}, {$rb/1024:.1f}→{$(hwm_kb "$b")/1024:.1f}')")
  fi
  echo "$json" | python3 -c "
import json,sys
d=json.load(sys.stdin); p=d['latencyPercentiles']
us=lambda k: f'{p[k]*1e6:.0f}'
print(f'| $name | $conns | $RATE | {us(\"p50\")} | {us(\"p90\")} | {us(\"p99\")} | {us(\"p99.9\")} | $ok | $cpu | $mem |')"
}

# Idle memory of each proxy (its process and children), after the checks above and
# before any load: resident in total, and its anonymous part (heap, stacks: what the
# proxy itself allocates) apart from file-backed pages (its binary and libraries,
# shared with every other process that maps them).
status_kb() { for p in $(family "$1"); do awk -v k="$2:" '$1 == k {print $2}' "/proc/$p/status"; done | awk '{s+=$1} END {print s}'; }
mib() { python3 -c "print(f'{$1/1024:.1f}')"; }
echo "| proxy (idle) | RSS MiB | anonymous MiB | file-backed MiB |"
echo "|---|---|---|---|"
for pair in "isthmus A:$ISTHMUS_A" "isthmus B:$ISTHMUS_B" "east-west gateway:$GATEWAY" \
    "nginx A:$NGINX_A" "nginx B:$NGINX_B" "haproxy A:$HAPROXY_A" "haproxy B:$HAPROXY_B"; do
  pid=${pair#*:}
  echo "| ${pair%%:*} | $(mib "$(status_kb "$pid" VmRSS)") | $(mib "$(status_kb "$pid" RssAnon)") | $(mib "$(status_kb "$pid" RssFile)") |"
done
echo

# THROUGHPUT_ONLY=1 skips the latency rows (the throughput rounds below still run).
if [ "${THROUGHPUT_ONLY:-}" != 1 ]; then
echo "| topology | conns | rate | p50 µs | p90 µs | p99 µs | p99.9 µs | ok | CPU-s/10k (A, B) | RSS idle→peak MiB (A, B) |"
echo "|---|---|---|---|---|---|---|---|---|---|"
for c in 4 16; do
  run direct  http://127.0.0.1:18080/ "$c"
  run isthmus http://127.0.0.1:18301/ "$c" "$ISTHMUS_A" "$ISTHMUS_B"
  run nginx   http://127.0.0.1:18101/ "$c" "$NGINX_A" "$NGINX_B"
  run haproxy http://127.0.0.1:18201/ "$c" "$HAPROXY_A" "$HAPROXY_B"
done
# Connection churn: a new client connection and a new mTLS connection per request.
run "direct churn"  http://127.0.0.1:18080/ 4
run "isthmus churn" http://127.0.0.1:18311/ 4 "$ISTHMUS_AC" "$ISTHMUS_B"
run "nginx churn"   http://127.0.0.1:18111/ 4 "$NGINX_AC" "$NGINX_B"
run "haproxy churn" http://127.0.0.1:18211/ 4 "$HAPROXY_AC" "$HAPROXY_B"
# One cross-cluster hop: the same client sidecar setup, B reached through the
# gateway; CPU and memory here are the client sidecar's and the gateway's.
run "isthmus via gateway, TCP" http://127.0.0.1:18341/ 4 "$(pgrep -f 'outbound 127.0.0.1:18341')" "$GATEWAY"
run "isthmus via gateway, QUIC" http://127.0.0.1:18351/ 4 "$(pgrep -f 'outbound 127.0.0.1:18351')" "$GATEWAY"
run "isthmus churn via gateway, TCP" http://127.0.0.1:18361/ 4 "$(pgrep -f 'outbound 127.0.0.1:18361')" "$GATEWAY"
run "isthmus churn via gateway, QUIC" http://127.0.0.1:18371/ 4 "$(pgrep -f 'outbound 127.0.0.1:18371')" "$GATEWAY"
# Opaque TCP (HTTP/1.1 requests carried as bytes), in the namespace.
RUN_IN=inns run "isthmus TCP" http://10.250.0.100:9000/ 4 "$ISTHMUS_TA" "$ISTHMUS_TB"
RUN_IN=inns run "haproxy mode tcp" http://127.0.0.1:18231/ 4 "$HAPROXY_TA" "$HAPROXY_TB"
fi

# A profile of each Isthmus sidecar at maximum rps (needs perf).
if [ -n "${PROFILE:-}" ]; then
  command -v perf >/dev/null || { echo "error: PROFILE needs perf (apt-get install linux-perf)" >&2; exit 1; }
  mkdir -p "$PROFILE"
  oha -z 3s -c 16 --no-tui -H 'host: bench:8080' http://127.0.0.1:18301/ >/dev/null
  for side in a b; do
    pid=$ISTHMUS_A; [ "$side" = b ] && pid=$ISTHMUS_B
    perf record -q -F 999 -g -p "$pid" -o "$PROFILE/$side.data" -- sleep 8 2>/dev/null &
    perf_pid=$!
    taskset -c 0 oha -z 8s -c 16 --no-tui -H 'host: bench:8080' http://127.0.0.1:18301/ >/dev/null
    wait "$perf_pid" || true
    perf report -i "$PROFILE/$side.data" --no-children -g none --percent-limit 0.3 \
      --sort dso,symbol --stdio > "$PROFILE/$side.txt" 2>/dev/null || true
    perf report -i "$PROFILE/$side.data" --no-children -g none --sort dso --stdio \
      > "$PROFILE/$side-dso.txt" 2>/dev/null || true
  done
  echo "profiles: $PROFILE/a.txt $PROFILE/b.txt (by library: $PROFILE/a-dso.txt $PROFILE/b-dso.txt)"
fi

# Throughput of each pair on its one core: closed loop, 16 connections, 10 s per try.
# The systems are interleaved over ROUNDS rounds (default 3) and the median is reported
# with the lowest and highest try, since one run on a shared machine says little.
ROUNDS=${ROUNDS:-3}
declare -A TRIES=()
oha_rps() {
  ${RUN_IN:-} taskset -c 0 oha -z 10s -c 16 --no-tui -H 'host: bench:8080' --output-format json "$1" \
    | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["summary"]["requestsPerSec"]))'
}
# gRPC: closed loop, 16 connections of one stream each, 10 s; req/s as h2load reports it.
h2_rps() { grpc_load "$1" -D 10 -c 16 -m 1 | awk '/^finished in/ {print int($4)}'; }
for _ in $(seq "$ROUNDS"); do
  for t in "isthmus http://127.0.0.1:18301/" "nginx http://127.0.0.1:18101/" "haproxy http://127.0.0.1:18201/"; do
    read -r name url <<<"$t"
    TRIES[$name]="${TRIES[$name]:-} $(oha_rps "$url")"
  done
  TRIES[isthmus-tcp]="${TRIES[isthmus-tcp]:-} $(RUN_IN=inns oha_rps http://10.250.0.100:9000/)"
  TRIES[haproxy-tcp]="${TRIES[haproxy-tcp]:-} $(RUN_IN=inns oha_rps http://127.0.0.1:18231/)"
  for call in Unary Stream; do
    TRIES[isthmus-$call]="${TRIES[isthmus-$call]:-} $(h2_rps http://127.0.0.1:18301/bench.Echo/$call)"
    TRIES[nginx-$call]="${TRIES[nginx-$call]:-} $(h2_rps http://127.0.0.1:18121/bench.Echo/$call)"
  done
done
echo
echo "| topology | max rps, median of $ROUNDS interleaved tries (min–max) (pair on one core, 16 conns, closed loop) | × haproxy |"
echo "|---|---|---|"
median() { tr ' ' '\n' <<<"$1" | grep . | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)], a[1], a[NR]}'; }
read -r hap _ _ <<<"$(median "${TRIES[haproxy]}")"
for name in isthmus nginx haproxy; do
  read -r med lo hi <<<"$(median "${TRIES[$name]}")"
  echo "| $name | $med ($lo–$hi) | $(python3 -c "print(f'{$med/$hap:.2f}')") |"
done
echo
echo "| opaque TCP (HTTP/1.1 requests as bytes) | max rps, median of $ROUNDS (min–max) | × haproxy mode tcp |"
echo "|---|---|---|"
read -r hap _ _ <<<"$(median "${TRIES[haproxy-tcp]}")"
for name in isthmus-tcp haproxy-tcp; do
  read -r med lo hi <<<"$(median "${TRIES[$name]}")"
  echo "| ${name%-tcp} | $med ($lo–$hi) | $(python3 -c "print(f'{$med/$hap:.2f}')") |"
done
echo
echo "| gRPC call (16 conns, closed loop) | isthmus calls/s, median of $ROUNDS (min–max) | nginx grpc_pass | × nginx |"
echo "|---|---|---|---|"
for call in Unary Stream; do
  read -r im ilo ihi <<<"$(median "${TRIES[isthmus-$call]}")"
  read -r nm nlo nhi <<<"$(median "${TRIES[nginx-$call]}")"
  label=unary; [ "$call" = Stream ] && label="server streaming, 100 messages per call"
  echo "| $label | $im ($ilo–$ihi) | $nm ($nlo–$nhi) | $(python3 -c "print(f'{$im/$nm:.2f}')") |"
done
