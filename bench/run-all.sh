#!/usr/bin/env bash
# Every benchmark in turn, each bounded in time (`make bench`; see bench/README.md).
#   retrieval  ingest / question embedding / search (its own embedded Chroma)   ≤ 10 min
#   precision  the local embedder in fp32 and int8: speed and retrieval quality   ≤ 5 min
#   cache      semantic-cache lookup by cache size, against a filtered query     ≤ 12 min
#   writes     the cache's Chroma writes: SQLite's rollback journal against WAL   ≤ 3 min
#   leakage    inference's leakage scan of a RAG-sized prompt, 100 and 1,000 tenants ≤ 2 min
#   metering   usage events into the ledger (its own Tansu and database)         ≤ 10 min
#   gateway    Tenantry vs LiteLLM vs Portkey over the instant server            ≤ 15 min
#   system     chat through the edge: RAG on/off, cache hit/miss, each mode's highest
#              sustained rate, memory at rest                                    ≤ 25 min
# system (and gateway with BENCH_QUICK=1) needs the stack with the bench catalogue; this script
# starts it (`scripts/stack.py up`) if it is not running, and stops it at the end only if it
# started it. The full gateway run (--fresh-stack) starts and stops the stack itself.
# Results: bench/<name>/results*, and a log per benchmark in var/bench/logs/run-all-*.log.
# BENCH_ONLY="gateway system" runs a subset; BENCH_QUICK=1 shortens every benchmark.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
LOGS=var/bench/logs
mkdir -p "$LOGS"
ONLY=${BENCH_ONLY:-"retrieval precision cache writes leakage metering gateway system"}
QUICK=${BENCH_QUICK:-0}
status=0
started_stack=0

say() { printf '[bench] %s (load %s)\n' "$1" "$(cut -d' ' -f1-3 /proc/loadavg)"; }

run() {  # name, time limit in seconds, command...
  local name=$1 limit=$2
  shift 2
  say "$name: starting (at most ${limit}s)"
  if timeout --kill-after=30 "$limit" "$@" >"$LOGS/run-all-$name.log" 2>&1; then
    say "$name: done"
  else
    say "$name: FAILED or timed out (rc $?); see $LOGS/run-all-$name.log"
    status=1
  fi
  tail -n 25 "$LOGS/run-all-$name.log"
}

stack_up() {
  if "$PY" scripts/stack.py status | grep -Eq '^auth .* running .* ready$' \
     && ! "$PY" scripts/stack.py status | grep -Eq '^auth .*not ready$'; then
    return 0
  fi
  say "starting the stack with the bench catalogue (instant model)"
  eval "$("$PY" bench/gateway/run.py --print-stack-env)"
  timeout 300 "$PY" scripts/stack.py up && started_stack=1
}

cleanup() {
  if [ "$started_stack" = 1 ]; then "$PY" scripts/stack.py down || true; fi
}
trap cleanup EXIT

for bench in $ONLY; do
  case $bench in
    retrieval)
      if [ "$QUICK" = 1 ]; then args=(--sizes 1000,10000 --question-rounds 50 --queries 100)
      else args=(); fi
      run retrieval 600 "$PY" bench/retrieval/bench_retrieval.py "${args[@]}" ;;
    precision)
      if [ "$QUICK" = 1 ]; then args=(--rounds 50 --repeats 1); else args=(); fi
      run precision 300 "$PY" bench/retrieval/bench_precision.py "${args[@]}" ;;
    cache)
      if [ "$QUICK" = 1 ]; then args=(--sizes 100,1000 --questions 60)
      else args=(--sizes 100,1000,10000,100000 --questions 200); fi
      run cache 720 "$PY" bench/retrieval/bench_cache_lookup.py "${args[@]}" ;;
    writes)
      if [ "$QUICK" = 1 ]; then args=(--rounds 1 --writes 40); else args=(--rounds 6); fi
      run writes 180 "$PY" bench/retrieval/bench_chroma_writes.py "${args[@]}" \
        --out "bench/retrieval/results/chroma-writes-$(date -u +%Y%m%dT%H%M%S).json" ;;
    leakage)
      if [ "$QUICK" = 1 ]; then args=(--rounds 2 --repeat 20); else args=(); fi
      run leakage 120 bash -c "$PY bench/inference/bench_leakage.py ${args[*]} \
        && $PY bench/inference/bench_leakage.py --tenants 1000 --rounds 3 --repeat 50 ${args[*]}" ;;
    metering)
      if [ "$QUICK" = 1 ]; then args=(--events 10000); else args=(--events 50000); fi
      run metering 600 "$PY" bench/metering/bench_ingest.py --tenants 100 "${args[@]}" ;;
    gateway)
      # --fresh-stack starts and stops the stack around each Tenantry point itself.
      if [ "$QUICK" = 1 ]; then
        stack_up || { say "gateway: the stack did not start"; status=1; continue; }
        args=(--duration 5 --warmup 5)
      else args=(--fresh-stack); fi
      run gateway 900 "$PY" bench/gateway/run.py "${args[@]}" ;;
    system)
      stack_up || { say "system: the stack did not start"; status=1; continue; }
      if [ "$QUICK" = 1 ]; then
        args=(--tenants 10 --chunks 500 --duration 5 --probe 10
              --find-max --max-from 10 --max-ceiling 20 --max-step-s 3)
      else args=(--tenants 100 --chunks "${BENCH_SYSTEM_CHUNKS:-1000}" --find-max --max-step-s 8); fi
      run system 1500 "$PY" bench/system/bench_system.py "${args[@]}" ;;
    *) say "unknown benchmark: $bench"; status=1 ;;
  esac
done
exit $status
