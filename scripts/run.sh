#!/usr/bin/env bash
# The main job end to end on local defaults: installs and starts Redis and
# PostgreSQL on loopback when missing (scripts/services.sh), builds and runs
# swisper-ingest, publishes a small sample workload of traces in the SDK's
# wire format, shows them stored in SwisperStudio's own tables
# (public.traces and public.observations; the database is standalone, so the
# service creates the studio's tables and the project on first sight), and
# says where to look. The service keeps
# running until Ctrl-C (then drains and exits); `--once` stops it right after.
#
#   scripts/run.sh [--once]
#   SWISPER_DEV_DIR   where Redis and Postgres keep their data (/tmp/swisper-ingest-dev)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

once=false
[[ ${1:-} == --once ]] && once=true
dir=${SWISPER_DEV_DIR:-/tmp/swisper-ingest-dev}

scripts/services.sh up "$dir"
# shellcheck disable=SC1091
source "$dir/env"
psql_cmd() { psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -d swisper_ingest "$@"; }

echo "==> building swisper-ingest (release)"
cargo build --release --quiet --bin swisper-ingest

port=8080
if ! python3 -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', $port))" 2>/dev/null; then
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
fi
export OBSERVABILITY_HTTP_ADDR=127.0.0.1:$port OBSERVABILITY_CONSUMER_NAME=local
log="$dir/service.log"
target/release/swisper-ingest serve >"$log" 2>&1 &
pid=$!
stop() {
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    wait "$pid" || true
    echo "swisper-ingest drained and stopped (log: $log)"
  fi
}
trap stop EXIT
for _ in $(seq 1 300); do
  curl -fs "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
  kill -0 "$pid" 2>/dev/null || { cat "$log"; exit 1; }
  sleep 0.1
done
curl -fs "http://127.0.0.1:$port/readyz" >/dev/null || { echo "not ready; log: $log"; exit 1; }
echo "==> swisper-ingest is running (pid $pid), http://127.0.0.1:$port"

# A LangGraph-like run per trace: an agent with four nodes, one of which
# fails, published as the SDK publishes it (times zone-less UTC).
echo "==> publishing 5 sample traces"
run_id=$(date +%s)
publish() { redis-cli -p "$REDIS_PORT" XADD observability:events '*' "$@" >/dev/null; }
for t in 1 2 3 4 5; do
  trace="sample-$run_id-$t"
  now=$(date -u +%Y-%m-%dT%H:%M:%S.%6N)
  ts=$(date +%s.%6N)
  publish event_type trace_start trace_id "$trace" project_id demo-project timestamp "$ts" \
    data "{\"name\":\"What is the weather in Zurich?\",\"user_id\":\"user-$t\",\"session_id\":\"chat-$t\",\"run_id\":\"$run_id\",\"timestamp\":\"$now\"}"
  publish event_type observation_start trace_id "$trace" project_id demo-project timestamp "$ts" observation_id "$trace-agent" \
    data "{\"name\":\"swisper_agent\",\"type\":\"SPAN\",\"input\":{\"user_message\":\"What is the weather in Zurich?\"},\"start_time\":\"$now\"}"
  parent="$trace-agent"
  for node in classify_intent memory_lookup planner ui_renderer; do
    publish event_type observation_start trace_id "$trace" project_id demo-project timestamp "$ts" observation_id "$trace-$node" \
      data "{\"name\":\"$node\",\"type\":\"SPAN\",\"parent_observation_id\":\"$parent\",\"input\":{\"messages\":[\"What is the weather in Zurich?\"]},\"start_time\":\"$now\"}"
    if [[ $node == memory_lookup && $t == 3 ]]; then
      publish event_type observation_error trace_id "$trace" project_id demo-project timestamp "$ts" observation_id "$trace-$node" \
        data "{\"level\":\"ERROR\",\"error\":\"memory store timed out\",\"end_time\":\"$now\"}"
    else
      publish event_type observation_end trace_id "$trace" project_id demo-project timestamp "$ts" observation_id "$trace-$node" \
        data "{\"output\":{\"result\":\"$node done\"},\"level\":\"DEFAULT\",\"end_time\":\"$now\"}"
    fi
  done
  publish event_type observation_end trace_id "$trace" project_id demo-project timestamp "$ts" observation_id "$trace-agent" \
    data "{\"output\":{\"answer\":\"Sunny, 21 degrees.\"},\"type\":\"AGENT\",\"level\":\"DEFAULT\",\"end_time\":\"$now\"}"
done

for _ in $(seq 1 100); do
  stored=$(psql_cmd -tAc "SELECT count(*) FROM public.observations WHERE trace_id LIKE 'sample-$run_id-%' AND end_time IS NOT NULL")
  [[ $stored == 25 ]] && break
  sleep 0.1
done
echo "==> stored: $stored of 25 observations"
if [[ $stored != 25 ]]; then
  echo "the sample traces were not all stored within 10 s; the service log: $log" >&2
  tail -n 20 "$log" >&2
  exit 1
fi
# Times are the studio's: timestamp without time zone, in UTC.
psql_cmd -c "SELECT id, name, user_id, session_id, project_id, meta::jsonb ->> 'run_id' AS run_id, \"timestamp\"
             FROM public.traces WHERE id LIKE 'sample-$run_id-%' ORDER BY id"
psql_cmd -c "SELECT trace_id, name, type, level, parent_observation_id IS NOT NULL AS nested, status_message
             FROM public.observations WHERE trace_id = 'sample-$run_id-3' ORDER BY start_time, name"
dead=$(psql_cmd -tAc "SELECT count(*) FROM swisper_ingest.dead_letters")
echo "==> dead letters: $dead"
echo "==> metrics (http://127.0.0.1:$port/metrics):"
curl -fs "http://127.0.0.1:$port/metrics" | grep -E '^swisper_ingest_(events_total|group_lag|pending_entries|ready) ' || true
curl -fs "http://127.0.0.1:$port/metrics" | grep -E '^swisper_ingest_events_total' || true
cat <<MSG

Where to look:
  status JSON   curl http://127.0.0.1:$port/api/v1/observability/metrics
  metrics       curl http://127.0.0.1:$port/metrics
  database      psql -h 127.0.0.1 -p $PG_PORT -U postgres -d swisper_ingest
                (the studio's public.traces, observations, projects; ours in schema swisper_ingest:
                 dead_letters, sdk_heartbeats, trace_state, observation_state)
  stream        redis-cli -p $REDIS_PORT XINFO GROUPS observability:events
  service log   $log
  publish more  OBSERVABILITY_REDIS_URL=$OBSERVABILITY_REDIS_URL, stream observability:events (see docs/event-format.md)
MSG
if $once; then
  exit 0
fi
echo "swisper-ingest keeps running; Ctrl-C drains and stops it."
wait "$pid"
