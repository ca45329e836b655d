#!/usr/bin/env bash
# Load benchmark of `ptuning serve` on loopback (127.0.0.1 only).
#
# Scenarios, each driven by wrk (or bench/http_load.py where wrk is not
# installed) for $DURATION seconds with $CONNS connections, one CB sentence
# pair per request (bench/serve_bodies.txt):
#   1. one adapter,  --max-batch 32: all traffic to it
#   2. 8 adapters,   --max-batch 32: traffic spread evenly (mixed-task batches)
#   3. 8 adapters,   --max-batch 1:  the same spread, one sequence per forward
# plus the latency of one adapter under no load (1 connection),
# and the server's RSS with 1 and with 50 adapters loaded.
#
# The adapters: one `ptuning train --task superglue/cb --epochs 1` run on the
# backbone ($RUN to reuse a run folder), loaded under 1, 8 or 50 names. Each
# name is its own in-memory adapter (own prefix table and head), so the work
# per request is that of distinct adapters: values do not change the cost.
#
# Environment: PTUNING_MODEL (default all-MiniLM-L6-v2), PTUNING_DATA
# (default ../shared/data), PTUNING_BIN (a built binary; default: cargo build
# --release), PTUNING_FLAGS (global flags, e.g. "--device cuda --precision
# bf16"), DURATION (20), CONNS (32), PORT (18181), RUN, WORK (a scratch
# folder), LOAD (wrk or python; default wrk where installed).
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL=${PTUNING_MODEL:-all-MiniLM-L6-v2}
DATA=${PTUNING_DATA:-../shared/data}/superglue/CB
DURATION=${DURATION:-20}
CONNS=${CONNS:-32}
PORT=${PORT:-18181}
WORK=${WORK:-$(mktemp -d)}
ADDR=127.0.0.1:$PORT
read -r -a FLAGS <<<"${PTUNING_FLAGS:-}"
if command -v wrk >/dev/null; then LOAD=${LOAD:-wrk}; else LOAD=${LOAD:-python}; fi
if [ -n "${PTUNING_BIN:-}" ]; then
    BIN=$PTUNING_BIN
else
    cargo build --release --quiet
    BIN=target/release/ptuning
fi
mkdir -p "$WORK"

# http GET|POST PATH [BODY]: the response body (curl, else Python's urllib).
http() {
    if command -v curl >/dev/null; then
        if [ "$1" = POST ]; then curl -sf -X POST "http://$ADDR$2" -d "$3"; else curl -sf "http://$ADDR$2"; fi
    else
        python3 -c 'import sys, urllib.request as u
data = sys.argv[3].encode() if len(sys.argv) > 3 else None
sys.stdout.write(u.urlopen(u.Request(sys.argv[2], data=data), timeout=30).read().decode())' "$1" "http://$ADDR$2" "${@:3}"
    fi
}

RUN=${RUN:-$WORK/cb}
if [ ! -e "$RUN/best/ptuning.json" ] && [ ! -e "$RUN/ptuning.json" ]; then
    echo "training a CB adapter (1 epoch) into $RUN ..." >&2
    "$BIN" "${FLAGS[@]}" train --task superglue/cb --data "$DATA" --model "$MODEL" --out "$RUN" --epochs 1 --quiet >&2
fi

SERVER_PID=
stop_server() {
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID"
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    SERVER_PID=
}
trap stop_server EXIT

# start_server N_ADAPTERS MAX_BATCH
start_server() {
    local args=()
    for i in $(seq 1 "$1"); do args+=(--adapter "a$i=$RUN"); done
    "$BIN" "${FLAGS[@]}" serve --model "$MODEL" --addr "$ADDR" --max-batch "$2" --queue 4096 "${args[@]}" \
        >"$WORK/serve.log" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 1 600); do
        if http GET /healthz >/dev/null 2>&1; then return 0; fi
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then cat "$WORK/serve.log" >&2; exit 1; fi
        sleep 0.1
    done
    echo "the server did not come up" >&2
    cat "$WORK/serve.log" >&2
    exit 1
}

rss_mib() {
    awk '/VmRSS/ {printf "%.1f", $2 / 1024}' "/proc/$SERVER_PID/status"
}

BODIES="$PWD/bench/serve_bodies.txt"
cat >"$WORK/load.lua" <<EOF
-- POSTs one CB-like premise/hypothesis pair per request (a line of
-- $BODIES) to a random adapter among a1..aN (N from the ADAPTERS
-- environment variable).
local n = tonumber(os.getenv("ADAPTERS") or "1")
local bodies = {}
for line in io.lines("$BODIES") do bodies[#bodies + 1] = line end
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  local path = "/v1/adapters/a" .. math.random(n) .. "/predict"
  return wrk.format(nil, path, nil, bodies[math.random(#bodies)])
end
EOF

# drive NAME N_ADAPTERS: prints one result line
drive() {
    local out="$WORK/load-$1.txt" rps p50 p99 errors
    if [ "$LOAD" = wrk ]; then
        ADAPTERS=$2 wrk -t1 -c"${CONNS}" -d"${DURATION}s" --latency -s "$WORK/load.lua" "http://$ADDR" >"$out"
        rps=$(awk '/Requests\/sec/ {print $2}' "$out")
        p50=$(awk '$1 == "50%" {print $2}' "$out")
        p99=$(awk '$1 == "99%" {print $2}' "$out")
        errors=$(awk '/Non-2xx/ {print $NF}' "$out")
    else
        python3 bench/http_load.py --addr "$ADDR" --adapters "$2" --conns "$CONNS" --seconds "$DURATION" >"$out"
        read -r rps p50 p99 errors <"$out"
        p50=${p50}ms p99=${p99}ms
    fi
    printf '%-34s %9s req/s   p50 %9s   p99 %9s   non-2xx %s\n' "$1" "$rps" "$p50" "$p99" "${errors:-0}"
}

echo "ptuning serve load test: model $MODEL ${FLAGS[*]}, $(nproc) cores, ${DURATION}s per scenario, $CONNS connections ($LOAD), 1 pair per request"
start_server 1 32
http POST /v1/adapters/a1/predict '{"inputs":["warm up"]}' >/dev/null
drive "1 adapter, max-batch 32" 1
batches=$(http GET /metrics | awk '/^ptuning_batch_size_sum/ {s=$2} /^ptuning_batch_size_count/ {c=$2} END {if (c) printf "%.1f", s / c}')
echo "  (mean sequences per forward: $batches)"
CONNS=1 drive "1 adapter, 1 connection (no load)" 1
stop_server

start_server 8 32
drive "8 adapters spread, max-batch 32" 8
stats=$(http GET /metrics | awk '/^ptuning_batch_size_sum/ {s=$2} /^ptuning_batch_size_count/ {c=$2} /^ptuning_mixed_batches_total/ {m=$2} END {if (c) printf "mean sequences per forward: %.1f, mixed-adapter forwards: %.0f%%", s / c, 100 * m / c}')
echo "  ($stats)"
stop_server

start_server 8 1
drive "8 adapters spread, max-batch 1" 8
stop_server

start_server 1 32
http POST /v1/adapters/a1/predict '{"inputs":["warm up"]}' >/dev/null
rss1=$(rss_mib)
stop_server
start_server 50 32
for i in $(seq 1 50); do
    http POST "/v1/adapters/a$i/predict" '{"inputs":["warm up"]}' >/dev/null
done
rss50=$(rss_mib)
stop_server
echo "RSS: ${rss1} MiB with 1 adapter, ${rss50} MiB with 50 adapters (after one request each)"
