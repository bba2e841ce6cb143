#!/usr/bin/env bash
# Load benchmark: our proxy vs HAProxy vs nginx-as-proxy, all routing by
# Host to one nginx backend serving a small static file, all on loopback.
#
#   benches/load/run.sh            wrk -t2 -c64, 10 s rounds, 5 interleaved rounds
#   ROUNDS=9 benches/load/run.sh   more rounds, steadier medians on a noisy machine
#   benches/load/run.sh --smoke    1 s rounds, 2 rounds (what CI runs)
#   PORT_BASE=21080 benches/load/run.sh   ports 21080..21094 instead of 18080..
#
# First, before any load: IDLE_CONNS (9,000) idle keep-alive client
# connections (each proxy's RSS per connection, its processes summed).
#
# The keep-alive rounds also run wrk through HAProxy's TCP mode to the
# same backend ("floor"): a relay that parses nothing and holds one
# backend connection per client connection. It is not a rival (it cannot
# route by Host); it is what moving the same bytes through a user-space
# relay costs on this machine, the ceiling for any HTTP proxy's rate.
#
# Then TLS: a full handshake per request (ECDSA P-256, Connection: close,
# session resumption off on every server), handshakes per second. Then
# five route reloads under load per proxy, counting failed requests: ours
# swaps its table in process (SIGHUP to proxy-bench), HAProxy reloads
# softly (master-worker, USR2), nginx reloads (HUP).
#
# Then the other load shapes, interleaved rounds as above: a new
# connection per request (Connection: close), TLS keep-alive, HTTP/2
# (h2load), a 1 MiB response (throughput, and our proxy's RSS sampled
# during it).
#
# Needs: nginx, haproxy, wrk, curl, openssl, h2load (Debian packages
# nginx haproxy wrk curl openssl nghttp2-client), cargo. Every server runs
# as a foreground child of this script, stopped by PID at exit.
set -euo pipefail
# 10,000 idle clients need the descriptors (as many as the hard limit allows).
ulimit -n "$(ulimit -Hn)"

DURATION=10s
TLS_DURATION=5s
# Two runs of one binary side by side differ by up to 10 % in a 10 s
# round on the 2-core machines: five rounds, and each ratio also taken
# within each round (a "paired" median), which drift between rounds does
# not move.
ROUNDS=${ROUNDS:-5}
# HAProxy asks for two descriptors per connection it may hold: under a
# 20,000 hard limit (the build machines') it holds at most ~9,900.
IDLE_CONNS=${IDLE_CONNS:-9000}
if [[ "${1:-}" == "--smoke" ]]; then
    DURATION=1s
    TLS_DURATION=1s
    ROUNDS=2
    IDLE_CONNS=1000
fi
CONNS=${CONNS:-64}
THREADS=${THREADS:-2}

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
TMP=$(mktemp -d /tmp/sotolito-load.XXXXXX)
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

for tool in nginx haproxy wrk curl openssl h2load cargo; do
    command -v "$tool" >/dev/null || { echo "run.sh: $tool is not installed" >&2; exit 1; }
done

# PORT_BASE moves every port, so two runs on one machine do not collide.
P=${PORT_BASE:-18080}
BACKEND=127.0.0.1:$P
OURS=127.0.0.1:$((P + 1))
OURS10K=127.0.0.1:$((P + 2))
HAPROXY=127.0.0.1:$((P + 3))
NGINXP=127.0.0.1:$((P + 4))
FLOOR=127.0.0.1:$((P + 5))
HOST=bench.test
# TLS clients send SNI only for names; wrk takes the name from the URL, so
# the TLS targets are named localhost and listen where it resolves.
TLS_HOST=localhost
TLS_IP=$(getent ahosts localhost | awk 'NR == 1 { print $1 }')
[[ $TLS_IP == *:* ]] && TLS_IP="[$TLS_IP]"
TLS_OURS=$TLS_IP:$((P + 11))
TLS_HAPROXY=$TLS_IP:$((P + 13))
TLS_NGINXP=$TLS_IP:$((P + 14))

echo "building proxy-bench (release)..." >&2
(cd "$ROOT" && cargo build --release -q -p sotolito-proxy --bin proxy-bench --bin idle-hold)
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/proxy-bench"
IDLE_HOLD="${CARGO_TARGET_DIR:-$ROOT/target}/release/idle-hold"

USER_LINE=""
[[ $(id -u) == 0 ]] && USER_LINE="user root;"
mkdir -p "$TMP/www" "$TMP/nginx-tmp"
head -c 128 /dev/zero | tr '\0' 'x' >"$TMP/www/index.html"
head -c 1048576 /dev/zero | tr '\0' 'y' >"$TMP/www/big.bin"
mkdir -p "$TMP/certs/$TLS_HOST"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj "/CN=$TLS_HOST" -addext "subjectAltName=DNS:$TLS_HOST" \
    -keyout "$TMP/certs/$TLS_HOST/privkey.pem" -out "$TMP/certs/$TLS_HOST/fullchain.pem" 2>/dev/null
cat "$TMP/certs/$TLS_HOST/fullchain.pem" "$TMP/certs/$TLS_HOST/privkey.pem" >"$TMP/haproxy.pem"

nginx_common() {
    cat <<EOF
$USER_LINE
daemon off;
pid $TMP/$1.pid;
error_log $TMP/$1.err warn;
worker_processes 2;
worker_rlimit_nofile 19000;
events { worker_connections 16000; }
http {
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path $TMP/nginx-tmp/$1-body;
    proxy_temp_path $TMP/nginx-tmp/$1-proxy;
    fastcgi_temp_path $TMP/nginx-tmp/$1-fcgi;
    uwsgi_temp_path $TMP/nginx-tmp/$1-uwsgi;
    scgi_temp_path $TMP/nginx-tmp/$1-scgi;
EOF
}

{
    nginx_common backend
    cat <<EOF
    server {
        listen $BACKEND;
        location / { root $TMP/www; }
        # Requests served, read before and after each run: a proxy's 2xx
        # answers must all have come from here.
        location = /stub_status { stub_status; }
    }
}
EOF
} >"$TMP/backend.conf"

# The one location both nginx proxy servers (plain and TLS) use.
NGINX_LOCATION=$(cat <<'EOF'
        location / {
            proxy_pass http://tenant;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
        }
EOF
)

{
    nginx_common nginxp
    cat <<EOF
    upstream tenant { server $BACKEND; keepalive 128; }
    server {
        listen $NGINXP default_server;
        return 404;
    }
    server {
        listen $TLS_NGINXP ssl http2;
        server_name $TLS_HOST;
        ssl_certificate $TMP/certs/$TLS_HOST/fullchain.pem;
        ssl_certificate_key $TMP/certs/$TLS_HOST/privkey.pem;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache off;
        ssl_session_tickets off;
$NGINX_LOCATION
    }
    server {
        listen $NGINXP;
        server_name $HOST;
$NGINX_LOCATION
    }
}
EOF
} >"$TMP/nginxp.conf"

printf '%s tenant\n%s tenant\n' "$HOST" "$TLS_HOST" >"$TMP/hosts.map"
# The map is looked up with Host less its port: h2load sends
# `:authority: localhost:PORT`, which HAProxy matched to no backend and
# answered 503 to every stream (the 241,883 "req/s" of 2026-11-29).
cat >"$TMP/haproxy.cfg" <<EOF
global
    nbthread 2
    maxconn 9900
    tune.ssl.cachesize 0
    ssl-default-bind-options no-tls-tickets ssl-min-ver TLSv1.2
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend edge
    bind $HAPROXY
    option forwardfor
    use_backend %[req.hdr(host),lower,field(1,:),map($TMP/hosts.map)]
frontend edge_tls
    bind $TLS_HAPROXY ssl crt $TMP/haproxy.pem alpn h2,http/1.1
    option forwardfor
    use_backend %[req.hdr(host),lower,field(1,:),map($TMP/hosts.map)]
frontend floor
    mode tcp
    bind $FLOOR
    default_backend relay
backend tenant
    http-reuse always
    server t1 $BACKEND
backend relay
    mode tcp
    server t1 $BACKEND
EOF

# A port another run holds would answer in place of the server meant to
# hold it (nginx even retries its bind for seconds before it gives up).
for addr in $BACKEND $OURS $OURS10K $HAPROXY $NGINXP $FLOOR $TLS_OURS $TLS_HAPROXY $TLS_NGINXP 127.0.0.1:$((P + 10)); do
    if [[ -n $(ss -Htln "sport = :${addr##*:}") ]]; then
        echo "run.sh: port ${addr##*:} is taken (another run?); PORT_BASE=N moves the ports to N..N+14" >&2
        exit 1
    fi
done
nginx -c "$TMP/backend.conf" -e "$TMP/backend.err" &
PIDS+=($!); BACKEND_PID=$!
nginx -c "$TMP/nginxp.conf" -e "$TMP/nginxp.err" &
PIDS+=($!); NGINXP_PID=$!
haproxy -W -f "$TMP/haproxy.cfg" -db 2>"$TMP/haproxy.err" &
PIDS+=($!); HAPROXY_PID=$!
"$BIN" --listen $OURS --route $HOST=$BACKEND --workers 2 2>"$TMP/ours.err" &
PIDS+=($!); OURS_PID=$!
"$BIN" --listen $OURS10K --route $HOST=$BACKEND --extra-routes 10000 --workers 2 2>"$TMP/ours10k.err" &
PIDS+=($!); OURS10K_PID=$!
"$BIN" --listen 127.0.0.1:$((P + 10)) --https $TLS_OURS --certs "$TMP/certs" --no-resumption \
    --route $TLS_HOST=$BACKEND --workers 2 --h2-streams-per-ip 1000 2>"$TMP/ours-tls.err" &
PIDS+=($!); TLS_OURS_PID=$!

# h2load's 64 clients x 10 streams all come from 127.0.0.1: over the
# default budget of 500 open streams per client address, 140 streams at a
# time would get our 429 (HAProxy and nginx have no such budget), so the
# TLS proxy above allows 1,000.

# Wait until every target answers.
for addr in $BACKEND $OURS $OURS10K $HAPROXY $NGINXP $FLOOR; do
    for _ in $(seq 100); do
        if curl -s -o /dev/null -H "Host: $HOST" "http://$addr/index.html"; then break; fi
        sleep 0.1
    done
    code=$(curl -s -o /dev/null -w '%{http_code}' -H "Host: $HOST" "http://$addr/index.html")
    [[ $code == 200 ]] || { echo "run.sh: $addr answered $code" >&2; exit 1; }
done
for addr in $TLS_OURS $TLS_HAPROXY $TLS_NGINXP; do
    port=${addr##*:}
    for _ in $(seq 100); do
        code=$(curl -sk -o /dev/null -w "%{http_code}" -H "Host: $TLS_HOST" "https://$TLS_HOST:$port/index.html" || true)
        [[ $code == 200 ]] && break
        sleep 0.1
    done
    [[ $code == 200 ]] || { echo "run.sh: TLS $addr answered $code" >&2; exit 1; }
done

# RSS (KiB) of a process and its direct children, from /proc/PID/status.
rss_kib() {
    local total=0 pid
    for pid in $1 $(awk -v p="$1" '{ rest = substr($0, index($0, ") ") + 2); split(rest, f, " "); if (f[2] == p) print $1 }' /proc/[0-9]*/stat 2>/dev/null); do
        total=$(( total + $(awk '/^VmRSS:/ { print $2 }' /proc/$pid/status 2>/dev/null || echo 0) ))
    done
    echo $total
}

SHAPE_TARGETS=(ours haproxy nginx)
plain_addr() { case $1 in ours) echo $OURS ;; haproxy) echo $HAPROXY ;; nginx) echo $NGINXP ;; esac; }
plain_pid() { case $1 in ours) echo $OURS_PID ;; haproxy) echo $HAPROXY_PID ;; nginx) echo $NGINXP_PID ;; esac; }

# Idle keep-alive client connections: each proxy's RSS with them held,
# less its RSS before, per connection. Measured first, on processes that
# have served nothing yet: memory a proxy freed after earlier load (its
# heap, HAProxy's pools) would otherwise hold the connections unseen, and
# the figure would depend on what ran before (HAProxy, which also serves
# the TLS and HTTP/2 rounds, showed 0.06 KiB after them and 1.24 fresh;
# nginx allocates its worker_connections table at start, so it shows
# none either way).
echo
echo "$IDLE_CONNS idle keep-alive client connections (one request each, then held)"
printf '%-8s %12s %12s %14s\n' target rss_before rss_held KiB/conn
for t in "${SHAPE_TARGETS[@]}"; do
    addr=$(plain_addr $t); pid=$(plain_pid $t)
    before=$(rss_kib "$pid")
    coproc HOLD { "$IDLE_HOLD" --connect "$addr" --host "$HOST" --path /index.html --connections "$IDLE_CONNS" --hold 120; }
    HOLD_PID=$HOLD_PID
    read -r line <&"${HOLD[0]}" || true
    [[ $line == "held $IDLE_CONNS" ]] || { echo "run.sh: idle-hold against $t: ${line:-nothing}" >&2; kill $HOLD_PID 2>/dev/null; exit 1; }
    sleep 1
    held=$(rss_kib "$pid")
    kill $HOLD_PID 2>/dev/null || true
    wait $HOLD_PID 2>/dev/null || true
    awk -v t=$t -v b="$before" -v h="$held" -v n="$IDLE_CONNS" 'BEGIN { printf "%-8s %12d %12d %14.2f\n", t, b, h, (h - b) / n }'
    sleep 2
done

# CPU ticks (user + system) of a process and its direct children (nginx
# and HAProxy workers), from /proc/PID/stat; comm may hold spaces, so the
# fields are counted after its closing ") ".
cpu_ticks() {
    # A process that exits between the glob and cat makes cat fail: with
    # pipefail that would end the run (seen on the shared machine).
    { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk -v p="$1" '{
        pid = $1
        rest = substr($0, index($0, ") ") + 2)
        split(rest, f, " ")
        if (pid == p || f[2] == p) total += f[12] + f[13]
    } END { print total + 0 }'
}
HZ=$(getconf CLK_TCK)

# Requests the backend has served so far (its stub_status).
backend_requests() { curl -s "http://$BACKEND/stub_status" | awk 'NR == 3 { print $3 }'; }
# A run counts only if every answer was 2xx and the backend served at least
# as many requests meanwhile (less the stub_status read itself): a proxy's
# own error pages, or answers that never reached the backend, are not
# proxied requests. Problems are collected and fail the run at the end.
INVALID=()
check_answers() { # TARGET SHAPE ANSWERED NON2XX BACKEND_BEFORE BACKEND_AFTER
    local served=$(( $6 - $5 - 1 ))
    (( $4 == 0 )) || INVALID+=("$2 $1: $4 of $3 answers were not 2xx")
    (( served >= $3 - $4 )) || INVALID+=("$2 $1: $(( $3 - $4 )) 2xx answers, but the backend served $served requests")
}
# The same for wrk's report ("Non-2xx or 3xx responses: N").
check_wrk() { # TARGET SHAPE WRK_OUTPUT BACKEND_BEFORE BACKEND_AFTER
    local reqs bad
    reqs=$(awk '/requests in/ { print $1 }' <<<"$3")
    bad=$(awk '/Non-2xx/ { print $NF }' <<<"$3")
    check_answers "$1" "$2" "${reqs:-0}" "${bad:-0}" "$4" "$5"
}

target_addr() { case $1 in direct) echo $BACKEND ;; ours) echo $OURS ;; ours-10k) echo $OURS10K ;; haproxy) echo $HAPROXY ;; nginx) echo $NGINXP ;; floor) echo $FLOOR ;; esac; }
target_pid() { case $1 in direct) echo $BACKEND_PID ;; ours) echo $OURS_PID ;; ours-10k) echo $OURS10K_PID ;; haproxy | floor) echo $HAPROXY_PID ;; nginx) echo $NGINXP_PID ;; esac; }

# Latency in wrk's units -> milliseconds.
to_ms() { awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n += 0; else if (v ~ /s$/) n *= 1000; printf "%.3f", n }'; }

RESULTS="$TMP/results.tsv"
: >"$RESULTS"
TARGETS=(direct ours ours-10k haproxy nginx floor)
echo "wrk -t$THREADS -c$CONNS -d$DURATION, $ROUNDS interleaved rounds" >&2
for round in $(seq "$ROUNDS"); do
    # Each round starts one target later, so no target always runs right
    # after the same neighbour.
    shift=$(( (round - 1) % ${#TARGETS[@]} ))
    for t in "${TARGETS[@]:shift}" "${TARGETS[@]:0:shift}"; do
        addr=$(target_addr $t)
        pid=$(target_pid $t)
        before=$(cpu_ticks "$pid"); b0=$(backend_requests)
        out=$(wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency -H "Host: $HOST" "http://$addr/index.html")
        after=$(cpu_ticks "$pid"); check_wrk "$t" keep-alive "$out" "$b0" "$(backend_requests)"
        rps=$(awk '/^Requests\/sec/ { print $2 }' <<<"$out")
        reqs=$(awk '/requests in/ { print $1 }' <<<"$out")
        errors=$(awk '/Non-2xx|Socket errors/ { print }' <<<"$out" | tr '\n' ' ')
        p50=$(to_ms "$(awk '$1 == "50%" { print $2 }' <<<"$out")")
        p99=$(to_ms "$(awk '$1 == "99%" { print $2 }' <<<"$out")")
        cpu_us=$(awk -v d=$((after - before)) -v hz="$HZ" -v n="$reqs" 'BEGIN { printf "%.2f", d / hz / n * 1e6 }')
        printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$t" "$round" "$rps" "$p50" "$p99" "$cpu_us" >>"$RESULTS"
        printf '  round %s %-9s %10s req/s  p50 %7s ms  p99 %7s ms  cpu %6s us/req %s\n' \
            "$round" "$t" "$rps" "$p50" "$p99" "$cpu_us" "$errors" >&2
    done
done

# Medians per target, then ratios to HAProxy.
median() { sort -g | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
col() { awk -F'\t' -v t="$1" -v c="$2" '$1 == t { print $c }' "$RESULTS" | median; }
# Median over rounds of target T's column C in FILE over HAProxy's in the
# same round (the round in column R; only rows whose column K is KEY).
paired() { # FILE T C R [K KEY]
    awk -F'\t' -v t="$2" -v c="$3" -v rc="$4" -v k="${5:-0}" -v key="${6:-}" '
        k && $k != key { next }
        { r = $rc }
        $1 == t { v[NR] = $c; rt[NR] = r }
        $1 == "haproxy" { h[r] = $c }
        END { for (i in v) if (h[rt[i]] > 0) print v[i] / h[rt[i]] }' "$1" | median | awk '{ printf "%.3f", $1 }'
}
H_RPS=$(col haproxy 3); H_P99=$(col haproxy 5); H_CPU=$(col haproxy 6)
echo
echo "medians of $ROUNDS interleaved rounds, wrk -t$THREADS -c$CONNS -d$DURATION, Host: $HOST -> nginx static file"
printf '%-10s %12s %9s %9s %12s %9s %9s %9s %9s %9s\n' target req/s p50_ms p99_ms cpu_us/req rps/hap p99/hap cpu/hap rps_pair p99_pair
for t in "${TARGETS[@]}"; do
    rps=$(col $t 3); p50=$(col $t 4); p99=$(col $t 5); cpu=$(col $t 6)
    awk -v t=$t -v rps="$rps" -v p50="$p50" -v p99="$p99" -v cpu="$cpu" -v hr="$H_RPS" -v hp="$H_P99" -v hc="$H_CPU" \
        -v pr="$(paired "$RESULTS" $t 3 2)" -v pp="$(paired "$RESULTS" $t 5 2)" \
        'BEGIN { printf "%-10s %12.0f %9.3f %9.3f %12.2f %9.3f %9.3f %9.3f %9.3f %9.3f\n", t, rps, p50, p99, cpu, rps / hr, p99 / hp, (t == "direct" ? 0 : cpu / hc), pr, pp }'
done
echo "(*_pair: the median over rounds of the ratio to HAProxy's figure in the same round)"

# TLS: every request a new connection and a full handshake.
TLS_RESULTS="$TMP/tls.tsv"
: >"$TLS_RESULTS"
echo >&2
echo "TLS: wrk -t$THREADS -c$CONNS -d$TLS_DURATION, Connection: close, $ROUNDS interleaved rounds" >&2
TLS_TARGETS=(ours haproxy nginx)
for round in $(seq "$ROUNDS"); do
    shift=$(( (round - 1) % ${#TLS_TARGETS[@]} ))
    for t in "${TLS_TARGETS[@]:shift}" "${TLS_TARGETS[@]:0:shift}"; do
        case $t in ours) addr=$TLS_OURS pid=$TLS_OURS_PID ;; haproxy) addr=$TLS_HAPROXY pid=$HAPROXY_PID ;; nginx) addr=$TLS_NGINXP pid=$NGINXP_PID ;; esac
        before=$(cpu_ticks "$pid"); b0=$(backend_requests)
        out=$(wrk -t"$THREADS" -c"$CONNS" -d"$TLS_DURATION" -H "Connection: close" -H "Host: $TLS_HOST" "https://$TLS_HOST:${addr##*:}/index.html")
        after=$(cpu_ticks "$pid"); check_wrk "$t" tls-handshakes "$out" "$b0" "$(backend_requests)"
        rps=$(awk '/^Requests\/sec/ { print $2 }' <<<"$out")
        reqs=$(awk '/requests in/ { print $1 }' <<<"$out")
        cpu_us=$(awk -v d=$((after - before)) -v hz="$HZ" -v n="$reqs" 'BEGIN { printf "%.2f", d / hz / n * 1e6 }')
        errors=$(awk '/Non-2xx|Socket errors/ { print }' <<<"$out" | tr '\n' ' ')
        printf '%s\t%s\t%s\t%s\n' "$t" "$round" "$rps" "$cpu_us" >>"$TLS_RESULTS"
        printf '  round %s %-8s %9s handshakes/s  cpu %7s us/handshake %s\n' "$round" "$t" "$rps" "$cpu_us" "$errors" >&2
    done
done
tcol() { awk -F'\t' -v t="$1" -v c="$2" '$1 == t { print $c }' "$TLS_RESULTS" | median; }
TH=$(tcol haproxy 3)
echo
echo "TLS full handshakes (ECDSA P-256, new connection per request), medians of $ROUNDS rounds"
printf '%-10s %14s %14s %9s %9s\n' target handshakes/s cpu_us/hs rate/hap paired
for t in ours haproxy nginx; do
    awk -v t=$t -v r="$(tcol $t 3)" -v c="$(tcol $t 4)" -v h="$TH" -v pr="$(paired "$TLS_RESULTS" $t 3 2)" 'BEGIN { printf "%-10s %14.0f %14.2f %9.3f %9.3f\n", t, r, c, r / h, pr }'
done

SHAPES="$TMP/shapes.tsv"
: >"$SHAPES"
tls_port() { case $1 in ours) echo ${TLS_OURS##*:} ;; haproxy) echo ${TLS_HAPROXY##*:} ;; nginx) echo ${TLS_NGINXP##*:} ;; esac; }
tls_pid() { case $1 in ours) echo $TLS_OURS_PID ;; haproxy) echo $HAPROXY_PID ;; nginx) echo $NGINXP_PID ;; esac; }

echo >&2
echo "load shapes: close, tls keep-alive, h2, 1 MiB; $ROUNDS interleaved rounds" >&2
for round in $(seq "$ROUNDS"); do
    shift=$(( (round - 1) % ${#SHAPE_TARGETS[@]} ))
    for t in "${SHAPE_TARGETS[@]:shift}" "${SHAPE_TARGETS[@]:0:shift}"; do
        addr=$(plain_addr $t); pid=$(plain_pid $t)
        # A new connection per request.
        before=$(cpu_ticks "$pid"); b0=$(backend_requests)
        out=$(wrk -t"$THREADS" -c"$CONNS" -d"$TLS_DURATION" -H "Connection: close" -H "Host: $HOST" "http://$addr/index.html")
        after=$(cpu_ticks "$pid"); check_wrk "$t" close "$out" "$b0" "$(backend_requests)"
        rps=$(awk '/^Requests\/sec/ { print $2 }' <<<"$out"); reqs=$(awk '/requests in/ { print $1 }' <<<"$out")
        printf '%s\tclose\t%s\t%s\t%s\n' "$t" "$rps" "$(awk -v d=$((after - before)) -v hz="$HZ" -v n="$reqs" 'BEGIN { printf "%.2f", d / hz / n * 1e6 }')" "$round" >>"$SHAPES"
        # A 1 MiB response; our RSS sampled meanwhile.
        peak=0; b0=$(backend_requests)
        wrk -t"$THREADS" -c16 -d"$TLS_DURATION" -H "Host: $HOST" "http://$addr/big.bin" >"$TMP/big-$t.txt" &
        WRK_PID=$!
        while kill -0 $WRK_PID 2>/dev/null; do
            r=$(rss_kib "$pid"); (( r > peak )) && peak=$r
            sleep 0.2
        done
        wait $WRK_PID
        check_wrk "$t" 1MiB "$(cat "$TMP/big-$t.txt")" "$b0" "$(backend_requests)"
        rps=$(awk '/^Requests\/sec/ { print $2 }' "$TMP/big-$t.txt")
        printf '%s\tbig\t%s\t%s\t%s\n' "$t" "$rps" "$peak" "$round" >>"$SHAPES"
        # TLS keep-alive.
        port=$(tls_port $t); pid=$(tls_pid $t)
        before=$(cpu_ticks "$pid"); b0=$(backend_requests)
        out=$(wrk -t"$THREADS" -c"$CONNS" -d"$TLS_DURATION" -H "Host: $TLS_HOST" "https://$TLS_HOST:$port/index.html")
        after=$(cpu_ticks "$pid"); check_wrk "$t" tls-keep-alive "$out" "$b0" "$(backend_requests)"
        rps=$(awk '/^Requests\/sec/ { print $2 }' <<<"$out"); reqs=$(awk '/requests in/ { print $1 }' <<<"$out")
        printf '%s\ttls-ka\t%s\t%s\t%s\n' "$t" "$rps" "$(awk -v d=$((after - before)) -v hz="$HZ" -v n="$reqs" 'BEGIN { printf "%.2f", d / hz / n * 1e6 }')" "$round" >>"$SHAPES"
        # HTTP/2: 64 connections, 10 streams each. The rate is of 2xx
        # answers (h2load's own req/s counts every answer, 503s too).
        # h2load has been seen to spin past -D: bounded.
        before=$(cpu_ticks "$pid"); b0=$(backend_requests)
        out=$(timeout 60 h2load -t"$THREADS" -c"$CONNS" -m10 -D "${TLS_DURATION%s}" "https://$TLS_HOST:$port/index.html" 2>&1) ||
            { echo "run.sh: h2load against $t failed or did not end: $out" >&2; exit 1; }
        after=$(cpu_ticks "$pid"); b1=$(backend_requests)
        done_=$(awk '/^requests:/ { print $6 }' <<<"$out")
        ok=$(awk '/^status codes:/ { print $3 }' <<<"$out")
        secs=$(awk '/^finished in/ { print $3 + 0 }' <<<"$out")
        check_answers "$t" h2 "${done_:-0}" "$(( ${done_:-0} - ${ok:-0} ))" "$b0" "$b1"
        rps=$(awk -v n="${ok:-0}" -v s="${secs:-0}" 'BEGIN { printf "%.0f", (s > 0 ? n / s : 0) }')
        cpu_us=$(awk -v d=$((after - before)) -v hz="$HZ" -v n="${ok:-0}" 'BEGIN { printf "%.2f", (n > 0 ? d / hz / n * 1e6 : 0) }')
        printf '%s\th2\t%s\t%s\t%s\n' "$t" "$rps" "$cpu_us" "$round" >>"$SHAPES"
        printf '  round %s %-8s done\n' "$round" "$t" >&2
    done
done
scol() { awk -F'\t' -v t="$1" -v s="$2" -v c="$3" '$1 == t && $2 == s { print $c }' "$SHAPES" | median; }
echo
echo "other load shapes, medians of $ROUNDS interleaved rounds (wrk -t$THREADS; h2load -c$CONNS -m10)"
printf '%-8s %12s %9s %12s %9s %10s %9s %9s %10s %12s %9s %12s\n' target close_rps close/hap close_cpu_us tls_ka_rps tls/hap h2_rps h2/hap h2_cpu_us 1MiB_MiB/s 1MiB/hap peak_rss_MiB
HC=$(scol haproxy close 3); HT=$(scol haproxy tls-ka 3); HH=$(scol haproxy h2 3); HB=$(scol haproxy big 3)
for t in "${SHAPE_TARGETS[@]}"; do
    awk -v t=$t -v c="$(scol $t close 3)" -v cc="$(scol $t close 4)" -v k="$(scol $t tls-ka 3)" -v h="$(scol $t h2 3)" -v hcpu="$(scol $t h2 4)" -v b="$(scol $t big 3)" -v r="$(scol $t big 4)" \
        -v hc="$HC" -v ht="$HT" -v hh="$HH" -v hb="$HB" \
        'BEGIN { printf "%-8s %12.0f %9.3f %12.2f %9.0f %10.3f %9.0f %9.3f %9.2f %10.0f %12.3f %12.1f\n", t, c, c / hc, cc, k, k / ht, h, (hh > 0 ? h / hh : 0), hcpu, b, b / hb, r / 1024 }'
done
echo "paired (median over rounds of ours over HAProxy in the same round):" \
    "close $(paired "$SHAPES" ours 3 5 2 close)," \
    "tls keep-alive $(paired "$SHAPES" ours 3 5 2 tls-ka)," \
    "h2 $(paired "$SHAPES" ours 3 5 2 h2)," \
    "1 MiB $(paired "$SHAPES" ours 3 5 2 big)"

# Five reloads in 5 s under load; every non-2xx answer and socket error is
# a failed request.
echo >&2
echo "reloads: wrk -t$THREADS -c$CONNS -d5s, 5 reloads each" >&2
echo
echo "five route reloads under load (wrk -t$THREADS -c$CONNS -d5s)"
printf '%-10s %10s %16s\n' target requests failed
for t in ours haproxy nginx; do
    case $t in ours) addr=$OURS pid=$OURS_PID sig=HUP ;; haproxy) addr=$HAPROXY pid=$HAPROXY_PID sig=USR2 ;; nginx) addr=$NGINXP pid=$NGINXP_PID sig=HUP ;; esac
    wrk -t"$THREADS" -c"$CONNS" -d5s -H "Host: $HOST" "http://$addr/index.html" >"$TMP/reload-$t.txt" &
    WRK_PID=$!
    for _ in 1 2 3 4 5; do
        sleep 0.8
        kill -"$sig" "$pid"
    done
    wait "$WRK_PID"
    out=$(cat "$TMP/reload-$t.txt")
    reqs=$(awk '/requests in/ { print $1 }' <<<"$out")
    non2xx=$(awk '/Non-2xx/ { print $NF }' <<<"$out")
    sockerr=$(awk -F'[ ,]+' '/Socket errors/ { print $4 + $6 + $8 + $10 }' <<<"$out")
    failed=$(( ${non2xx:-0} + ${sockerr:-0} ))
    printf '%-10s %10s %16s\n' "$t" "$reqs" "$failed"
    # Ours swaps its table in process: a single failed request is a bug.
    # (HAProxy's and nginx's reloads are known to drop some.)
    [[ $t == ours && $failed != 0 ]] && RELOAD_FAILED=$failed
    # Let the old workers of a soft reload finish before the next target.
    sleep 1
done

if (( ${#INVALID[@]} )); then
    echo
    echo "run.sh: runs whose answers were not all proxied 2xx (their figures above do not count):" >&2
    printf '  %s\n' "${INVALID[@]}" >&2
    exit 1
fi
if [[ -n ${RELOAD_FAILED:-} ]]; then
    echo "run.sh: $RELOAD_FAILED requests failed while our proxy reloaded its routes" >&2
    exit 1
fi

O1=$(col ours 3); O10=$(col ours-10k 3)
awk -v a="$O1" -v b="$O10" 'BEGIN { printf "\nours with 10,000 routes vs 1 route: %.3fx req/s\n", b / a }'
awk -v a="$O1" -v f="$(col floor 3)" 'BEGIN { printf "ours vs the TCP relay floor: %.3fx req/s\n", a / f }'
echo "(direct: wrk straight at the backend; its cpu column is the backend's own)"
echo "(floor: HAProxy's TCP mode relaying the same bytes, no HTTP; the rate no HTTP proxy here can pass)"
