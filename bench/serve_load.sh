#!/usr/bin/env bash
# Load benchmark of `ptuning serve` on loopback (127.0.0.1 only).
#
# Scenarios, each driven by wrk for $DURATION seconds with $CONNS connections,
# one CB sentence pair per request:
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
# Needs wrk (apt-get install wrk). Environment: PTUNING_MODEL (default
# all-MiniLM-L6-v2), PTUNING_DATA (default ../shared/data), DURATION (20),
# CONNS (32), PORT (18181), RUN, WORK (a scratch folder).
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL=${PTUNING_MODEL:-all-MiniLM-L6-v2}
DATA=${PTUNING_DATA:-../shared/data}/superglue/CB
DURATION=${DURATION:-20}
CONNS=${CONNS:-32}
PORT=${PORT:-18181}
WORK=${WORK:-$(mktemp -d)}
BIN=target/release/ptuning
ADDR=127.0.0.1:$PORT

command -v wrk >/dev/null || { echo "wrk is needed: apt-get install wrk" >&2; exit 1; }
cargo build --release --quiet
mkdir -p "$WORK"

RUN=${RUN:-$WORK/cb}
if [ ! -e "$RUN/best/ptuning.json" ] && [ ! -e "$RUN/ptuning.json" ]; then
    echo "training a CB adapter (1 epoch) into $RUN ..." >&2
    "$BIN" train --task superglue/cb --data "$DATA" --model "$MODEL" --out "$RUN" --epochs 1 --quiet >&2
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
    "$BIN" serve --model "$MODEL" --addr "$ADDR" --max-batch "$2" --queue 4096 "${args[@]}" \
        >"$WORK/serve.log" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 1 200); do
        if curl -sf "http://$ADDR/healthz" >/dev/null 2>&1; then return 0; fi
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

cat >"$WORK/load.lua" <<'EOF'
-- POSTs one CB-like premise/hypothesis pair per request to a random adapter
-- among a1..aN (N from the ADAPTERS environment variable).
local n = tonumber(os.getenv("ADAPTERS") or "1")
local bodies = {
  '{"inputs":[["It was a complex language. Not written down but handed down. One might say it was peeled down.","the language was peeled down"]]}',
  '{"inputs":[["Valence the void-brain, Valence the virtuous valet. Why couldn\'t the figger choose his own portion of titanic anatomy to shaft?","Valence was helping"]]}',
  '{"inputs":[["B: And yet, uh, I we-, I hope to see employer based, you know, helping out. You know, child, uh, care centers at the place of employment and things like that, that will help out. A: Uh-huh. B: What do you think, do you think we are, setting a trend?","they are setting a trend"]]}',
  '{"inputs":[["The Paris to Rouen race of 1894 was the first motoring competition in history.","The race was held in 1894."]]}',
}
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  local path = "/v1/adapters/a" .. math.random(n) .. "/predict"
  return wrk.format(nil, path, nil, bodies[math.random(#bodies)])
end
EOF

# drive NAME N_ADAPTERS: prints one result line
drive() {
    local out="$WORK/wrk-$1.txt"
    ADAPTERS=$2 wrk -t1 -c"${CONNS}" -d"${DURATION}s" --latency -s "$WORK/load.lua" "http://$ADDR" >"$out"
    local rps p50 p99 errors
    rps=$(awk '/Requests\/sec/ {print $2}' "$out")
    p50=$(awk '$1 == "50%" {print $2}' "$out")
    p99=$(awk '$1 == "99%" {print $2}' "$out")
    errors=$(awk '/Non-2xx/ {print $NF}' "$out")
    printf '%-34s %9s req/s   p50 %9s   p99 %9s   non-2xx %s\n' "$1" "$rps" "$p50" "$p99" "${errors:-0}"
}

echo "ptuning serve load test: model $MODEL, $(nproc) cores, ${DURATION}s per scenario, $CONNS connections, 1 pair per request"
start_server 1 32
curl -sf -X POST "http://$ADDR/v1/adapters/a1/predict" -d '{"inputs":["warm up"]}' >/dev/null
drive "1 adapter, max-batch 32" 1
batches=$(curl -s "http://$ADDR/metrics" | awk '/^ptuning_batch_size_sum/ {s=$2} /^ptuning_batch_size_count/ {c=$2} END {if (c) printf "%.1f", s / c}')
echo "  (mean sequences per forward: $batches)"
CONNS=1 drive "1 adapter, 1 connection (no load)" 1
stop_server

start_server 8 32
drive "8 adapters spread, max-batch 32" 8
stats=$(curl -s "http://$ADDR/metrics" | awk '/^ptuning_batch_size_sum/ {s=$2} /^ptuning_batch_size_count/ {c=$2} /^ptuning_mixed_batches_total/ {m=$2} END {if (c) printf "mean sequences per forward: %.1f, mixed-adapter forwards: %.0f%%", s / c, 100 * m / c}')
echo "  ($stats)"
stop_server

start_server 8 1
drive "8 adapters spread, max-batch 1" 8
stop_server

start_server 1 32
curl -sf -X POST "http://$ADDR/v1/adapters/a1/predict" -d '{"inputs":["warm up"]}' >/dev/null
rss1=$(rss_mib)
stop_server
start_server 50 32
for i in $(seq 1 50); do
    curl -sf -X POST "http://$ADDR/v1/adapters/a$i/predict" -d '{"inputs":["warm up"]}' >/dev/null
done
rss50=$(rss_mib)
stop_server
echo "RSS: ${rss1} MiB with 1 adapter, ${rss50} MiB with 50 adapters (after one request each)"
