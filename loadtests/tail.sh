#!/usr/bin/env bash
# The steady state's latency tail, explained: one build takes RATE events/s
# for SECS s (bench.sh scenario 2's workload) while the machine's CPU, the
# service's, Postgres's, Redis's and the publisher's are sampled every
# 100 ms and Postgres logs its checkpoints, autovacuum runs and statements
# over SLOW_STATEMENT_MS; then each row's latency (commit minus XADD) is
# laid over that timeline (loadtests/tail.py report).
# Starts its own Redis and PostgreSQL on loopback (scripts/services.sh, in a
# temp folder removed at the end).
#
#   loadtests/tail.sh [BIN]   default: target/release/swisper-ingest
#   RATE=5000 SECS=60 SLOW_MS=50 SLOW_STATEMENT_MS=20 RUNS=1 (defaults)
#   KEEP=dir: copy each run's latencies, CPU samples and Postgres log there
#   Any OBSERVABILITY_* setting reaches the service.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
RATE=${RATE:-5000} SECS=${SECS:-60} SLOW_MS=${SLOW_MS:-50} SLOW_STATEMENT_MS=${SLOW_STATEMENT_MS:-20} RUNS=${RUNS:-1}
bin=${1:-target/release/swisper-ingest}
cargo build --release --quiet -p swisper-loadtests
loadgen=target/release/loadgen

# shellcheck source=loadtests/lib/services.sh
source loadtests/lib/services.sh
start_services tail
services=$work/services
# Commit timestamps give each row's commit time (a restart turns them on).
psql "$admin" -qc "ALTER SYSTEM SET track_commit_timestamp = on"
scripts/services.sh stop-postgres "$services" && scripts/services.sh start-postgres "$services"
psql "$admin" -qc "ALTER SYSTEM SET log_checkpoints = on" -c "ALTER SYSTEM SET log_autovacuum_min_duration = 0" \
  -c "ALTER SYSTEM SET log_min_duration_statement = $SLOW_STATEMENT_MS" \
  -c "ALTER SYSTEM SET log_line_prefix = '%m [%p] '" -c "SELECT pg_reload_conf()" >/dev/null
postmaster=$(head -1 "$services/pg/postmaster.pid")
redis=$(cat "$services/redis.pid")

for run in $(seq 1 "$RUNS"); do
  psql "$admin" -qc "DROP DATABASE IF EXISTS tail" -c "CREATE DATABASE tail"
  url=${DATABASE_URL%/*}/tail
  DATABASE_URL=$url "$bin" migrate >/dev/null
  redis-cli -u "$OBSERVABILITY_REDIS_URL" DEL tail >/dev/null
  psql "$admin" -qc "CHECKPOINT"
  log_from=$(stat -c %s "$services/pg.log")
  serve "$bin" "$url" tail
  rm -f "$work/publisher.pid"
  python3 loadtests/tail.py sample "$work/cpu.csv" "$svc_pid" "$postmaster" "$redis" "$work/publisher.pid" &
  sampler=$!
  "$loadgen" publish --stream tail --rate "$RATE" --duration "$SECS" --seed 7 \
    --in-flight $((RATE * 2 / 11 + 1)) --cache-dir target/loadgen-cache --summary "$work/publish.json" \
    >/dev/null 2>>"$work/loadgen.log" &
  echo $! >"$work/publisher.pid"
  wait $!
  "$loadgen" verify --database-url "$url" --group tail --summary "$work/publish.json" --timeout 120 \
    --metrics-url "http://127.0.0.1:$port" --latencies "$work/latencies.csv" >"$work/verify.json" 2>>"$work/loadgen.log"
  kill -TERM "$svc_pid"; wait "$svc_pid" 2>/dev/null || true; svc_pid=
  wait "$sampler" || true
  tail -c +"$((log_from + 1))" "$services/pg.log" >"$work/pg-run.log"
  echo "## $bin: $RATE events/s for $SECS s, run $run/$RUNS, load $(cut -d' ' -f1-3 /proc/loadavg)"
  jq -r --argjson secs "$SECS" '.service[0] | "transactions \(.transactions), \(.entries_per_transaction | floor) entries and \(.write_ms_mean * 10 | round / 10) ms each, writer busy \(.write_seconds_total / $secs * 100 | round / 100)"' "$work/verify.json"
  python3 loadtests/tail.py report "$work/latencies.csv" "$work/cpu.csv" "$work/pg-run.log" "$SLOW_MS"
  if [[ -n ${KEEP:-} ]]; then
    mkdir -p "$KEEP"
    for f in latencies.csv cpu.csv pg-run.log verify.json service.log; do cp "$work/$f" "$KEEP/run$run-$f"; done
  fi
done
