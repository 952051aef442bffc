#!/usr/bin/env bash
# The soak of docs/reliability.md: a two-cluster testbed (kube-apiserver per cluster,
# pods as root) under steady load through the cross-cluster chain for DURATION, with a
# config change, endpoint churn and a link rotation in turn every EVERY; every
# component's resident memory and open descriptors sampled each minute. Writes
# samples.csv, events.csv, summary.txt and rss.png (gnuplot) into OUT, and exits
# non-zero when a request failed or memory or descriptors did not stay flat.
#
#   tools/soak.sh [DURATION [EVERY]]     defaults: 30m 3m
#
# Environment: SOAK_OUT (default target/soak).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

duration=${1:-30m}
every=${2:-3m}
out=${SOAK_OUT:-target/soak}

if ! command -v gnuplot >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "tools/soak.sh: installing gnuplot-nox (the plot)" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gnuplot-nox >/dev/null
  else
    echo "tools/soak.sh: install gnuplot first (Debian: apt-get install gnuplot-nox)" >&2
    exit 1
  fi
fi

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/isthmus/target}
cargo build -q --workspace --bins
meshctl="$CARGO_TARGET_DIR/debug/meshctl"
ISTHMUS_KUBE_BIN_DIR=$(tools/build-kube-bins.sh)
export ISTHMUS_KUBE_BIN_DIR
ISTHMUS_JAEGER_BIN=$(tools/build-jaeger.sh)
export ISTHMUS_JAEGER_BIN

bed=$(mktemp -d)/bed
trap '"$meshctl" testbed down --dir "$bed" >/dev/null 2>&1 || true' EXIT
"$meshctl" testbed up --dir "$bed" >/dev/null
mkdir -p "$out"
status=0
"$meshctl" testbed soak --dir "$bed" --duration "$duration" --every "$every" --out "$out" \
  | tee "$out/summary.txt" || status=$?

# One line per mesh component (the API servers and Jaeger are test infrastructure):
# RSS (MiB) against minutes.
series="$out/series"
rm -rf "$series" && mkdir -p "$series"
awk -F, -v d="$series" 'NR > 1 && $2 !~ /^apiserver-/ && $2 != "jaeger" { printf "%s %.1f\n", $1, $3 / 1024 > (d "/" $2 ".dat") }' "$out/samples.csv"
gnuplot <<PLOT
set terminal pngcairo size 1280,720 font ",10"
set output "$out/rss.png"
set title "Resident memory of every mesh component over the soak ($duration, a change every $every)"
set xlabel "minute"
set ylabel "RSS (MiB)"
set yrange [0:*]
set key outside right
set grid
files = system("ls $series/*.dat")
plot for [f in files] f using 1:2 with linespoints pointsize 0.5 title system("basename " . f . " .dat")
PLOT
echo "plot: $out/rss.png"
exit "$status"
