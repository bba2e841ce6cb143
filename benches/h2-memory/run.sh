#!/usr/bin/env bash
# Memory one client address can pin in the proxy over HTTP/2: h2-hold opens
# CONNS TLS connections from one address, asks for a large response on each
# of STREAMS streams per connection and never reads. The proxy's resident
# memory (VmRSS and VmHWM from /proc/PID/status) is sampled while it holds.
#
#   benches/h2-memory/run.sh                   CONNS=1000 STREAMS=100 BODY_MB=4
#   CONNS=50 STREAMS=100 benches/h2-memory/run.sh
#   OPEN_WINDOWS=1 benches/h2-memory/run.sh   the client announces 2^31-1 windows
#   ENGINE=hyper benches/h2-memory/run.sh     streams to the tenant through hyper's
#                                             client (before: the engine's pool)
#
# Needs nginx, openssl (Debian packages), cargo. The backend and the proxy
# run as children of this script, stopped by PID at exit.
set -euo pipefail

CONNS=${CONNS:-1000}
STREAMS=${STREAMS:-100}
BODY_MB=${BODY_MB:-4}
HOLD=${HOLD:-20}

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
TMP=$(mktemp -d /tmp/sotolito-h2mem.XXXXXX)
chmod 755 "$TMP"
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$TMP"
}
trap cleanup EXIT

for tool in nginx openssl cargo; do
    command -v "$tool" >/dev/null || { echo "run.sh: $tool is not installed" >&2; exit 1; }
done
# Every held stream is a tenant connection too.
ulimit -n "$(ulimit -Hn)"

BACKEND=127.0.0.1:18180
HTTPS=127.0.0.1:18181
HOST=big.test

echo "building proxy-bench and h2-hold (release)..." >&2
(cd "$ROOT" && cargo build --release -q -p sotolito-proxy --bin proxy-bench --bin h2-hold)
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"

USER_LINE=""
[[ $(id -u) == 0 ]] && USER_LINE="user root;"
mkdir -p "$TMP/www" "$TMP/nginx-tmp" "$TMP/certs/$HOST"
head -c $((BODY_MB * 1024 * 1024)) /dev/zero >"$TMP/www/big"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj "/CN=$HOST" -addext "subjectAltName=DNS:$HOST" -addext "basicConstraints=critical,CA:FALSE" \
    -keyout "$TMP/certs/$HOST/privkey.pem" -out "$TMP/certs/$HOST/fullchain.pem" 2>/dev/null
cat >"$TMP/backend.conf" <<EOF
$USER_LINE
daemon off;
pid $TMP/backend.pid;
error_log $TMP/backend.err warn;
worker_processes 2;
worker_rlimit_nofile 300000;
events { worker_connections 150000; }
http {
    access_log off;
    client_body_temp_path $TMP/nginx-tmp/body;
    proxy_temp_path $TMP/nginx-tmp/proxy;
    fastcgi_temp_path $TMP/nginx-tmp/fcgi;
    uwsgi_temp_path $TMP/nginx-tmp/uwsgi;
    scgi_temp_path $TMP/nginx-tmp/scgi;
    server {
        listen $BACKEND backlog=65535;
        location / { root $TMP/www; }
    }
}
EOF
nginx -c "$TMP/backend.conf" &
PIDS+=($!)
"$BIN/proxy-bench" --listen 127.0.0.1:18182 --https "$HTTPS" --certs "$TMP/certs" \
    --route "$HOST=$BACKEND" ${ENGINE:+--engine "$ENGINE"} 2>"$TMP/proxy.err" &
PROXY=$!
PIDS+=($PROXY)
sleep 1
kib() { awk -v k="$1:" '$1 == k { print $2 }' "/proc/$PROXY/status"; }
echo "proxy idle: VmRSS $(kib VmRSS) KiB" >&2

"$BIN/h2-hold" --connect "$HTTPS" --name "$HOST" --ca "$TMP/certs/$HOST/fullchain.pem" \
    --connections "$CONNS" --streams "$STREAMS" --path /big --hold "$HOLD" ${OPEN_WINDOWS:+--open-windows} &
CLIENT=$!
PIDS+=($CLIENT)
peak=0
while kill -0 "$CLIENT" 2>/dev/null; do
    rss=$(kib VmRSS)
    ((rss > peak)) && peak=$rss
    sleep 1
done
wait "$CLIENT" || true
echo "CONNS=$CONNS STREAMS=$STREAMS BODY_MB=$BODY_MB OPEN_WINDOWS=${OPEN_WINDOWS:-} ENGINE=${ENGINE:-h1}: proxy VmRSS peak $peak KiB, VmHWM $(kib VmHWM) KiB"
