#!/usr/bin/env bash
# Interleaved drains for A/B comparisons of builds: one backlog is published
# once, then each round drains it with every given build in turn, each into
# a fresh database with a fresh consumer group, and prints per drain the
# service's CPU seconds (all of it, and its parse pool's), minor page
# faults and peak RSS (from /proc/PID/, read before it stops), Postgres's
# and Redis's CPU seconds over the drain (all of Postgres's processes) and
# the drain time. CPU varies with the machine's load; compare builds within
# a round, over several rounds.
# Starts its own Redis and PostgreSQL on loopback (scripts/services.sh, in a
# temp folder removed at the end).
#
#   loadtests/drain_ab.sh BIN [BIN ...]
#   EVENTS=200000 ROUNDS=3 WORKLOAD=seed|sdk (defaults: 200000, 3, seed)
#   CHECKPOINT_FIRST=0: no CHECKPOINT before each drain (the default runs one)
#   PERF_DIR=dir: also `perf record --call-graph dwarf` (300 Hz) each drain's
#   service into dir/ROUND-N.data (N: the build's position), for call-graph
#   profiles (`perf report -i …`); perf adds CPU of its own to the drain.
#   Any other environment (MIMALLOC_PURGE_DELAY=0, say) reaches every build.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
EVENTS=${EVENTS:-200000} ROUNDS=${ROUNDS:-3} WORKLOAD=${WORKLOAD:-seed}
(($#)) || { echo "usage: $0 BIN [BIN ...]" >&2; exit 2; }
case $WORKLOAD in
  seed) compression=never ;;
  sdk) compression=sdk ;;
  *) echo "WORKLOAD is seed or sdk" >&2; exit 2 ;;
esac
cargo build --release --quiet -p swisper-loadtests
loadgen=target/release/loadgen

# shellcheck source=loadtests/lib/services.sh
source loadtests/lib/services.sh
start_services drain-ab
"$loadgen" publish --stream backlog --events "$EVENTS" --seed 42 --in-flight 200 \
  --compression "$compression" --cache-dir target/loadgen-cache \
  --summary "$work/publish.json" >"$work/publish.log" 2>&1 || { cat "$work/publish.log"; exit 1; }
total=$(redis-cli -p "$REDIS_PORT" XLEN backlog)

# Fields of /proc/PID/stat: 10 minflt, 14 utime, 15 stime (clock ticks).
ticks_per_second=$(getconf CLK_TCK)
# Postgres: the postmaster, its ended children (cutime, cstime: the
# service's backends are gone when a drain is measured) and the live ones.
postmaster_pid=$(head -1 "$work/services/pg/postmaster.pid")
pg_cpu() {
  local ticks
  ticks=$(awk '{print $14 + $15 + $16 + $17}' "/proc/$postmaster_pid/stat")
  for child in $(pgrep -P "$postmaster_pid"); do
    ticks=$((ticks + $(awk '{print $14 + $15}' "/proc/$child/stat" 2>/dev/null || echo 0)))
  done
  bc -l <<<"$ticks / $ticks_per_second"
}
redis_pid=$(<"$work/services/redis.pid")
redis_cpu() { awk -v t="$ticks_per_second" '{print ($14 + $15) / t}' "/proc/$redis_pid/stat"; }
printf '%-5s %-40s %10s %10s %10s %11s %12s %8s %10s %6s\n' round build cpu_s parse_cpu_s pg_cpu_s redis_cpu_s minor_faults hwm_mib drain_s load
for round in $(seq 1 "$ROUNDS"); do
  position=0
  for bin in "$@"; do
    PGOPTIONS="-c client_min_messages=warning" psql "$admin" -qc "DROP DATABASE IF EXISTS drain_ab" -c "CREATE DATABASE drain_ab"
    DATABASE_URL=${DATABASE_URL%/*}/drain_ab "$bin" migrate >/dev/null 2>&1
    group=ab-$round-$RANDOM
    # Every drain starts right after a checkpoint unless CHECKPOINT_FIRST=0:
    # a drain writes ~40% of max_wal_size, so otherwise where the next
    # checkpoint (and the full-page images after it) lands depends on the
    # drain's position in the round.
    [[ ${CHECKPOINT_FIRST:-1} == 1 ]] && psql "$admin" -qc CHECKPOINT
    pg0=$(pg_cpu) redis0=$(redis_cpu)
    start=$(date +%s.%N)
    DATABASE_URL=${DATABASE_URL%/*}/drain_ab OBSERVABILITY_STREAM_NAME=backlog \
      OBSERVABILITY_GROUP_NAME=$group OBSERVABILITY_HTTP_ADDR=127.0.0.1:$port \
      OBSERVABILITY_SKIP_MIGRATIONS=true RUST_LOG=warn "$bin" serve >"$work/service.log" 2>&1 &
    svc_pid=$!
    perf_pid=
    if [[ -n ${PERF_DIR:-} ]]; then
      mkdir -p "$PERF_DIR"
      # Attached once the service's threads exist: `perf record -p` follows
      # only the threads present when it attaches (the writers and the parse
      # pool start after the process does; attached at once, perf saw ~20%
      # of the drain's CPU).
      sleep 0.5
      perf record -q -F 300 --call-graph dwarf,16384 -o "$PERF_DIR/$round-$((++position)).data" -p "$svc_pid" 2>/dev/null &
      perf_pid=$!
    fi
    # Drained: every entry delivered (lag 0) and acknowledged (0 pending).
    until [[ $(redis-cli -p "$REDIS_PORT" XINFO GROUPS backlog | awk -v g="$group" '$0==g{f=1} f&&/^lag$/{getline; print; exit}') == 0 &&
             $(redis-cli -p "$REDIS_PORT" XPENDING backlog "$group" | head -1) == 0 ]]; do
      kill -0 "$svc_pid" 2>/dev/null || { cat "$work/service.log"; exit 1; }
      sleep 0.2
    done
    drained=$(date +%s.%N)
    [[ -n $perf_pid ]] && { kill -INT "$perf_pid"; wait "$perf_pid" || true; }
    read -r faults cpu_ticks < <(awk '{print $10, $14 + $15}' "/proc/$svc_pid/stat")
    # The parse pool's threads alone: a lever on parsing shows here, apart
    # from the noise of the rest.
    parse_ticks=$(cat /proc/"$svc_pid"/task/*/stat | awk '$2 ~ /^\(parse-/ {t += $14 + $15} END {print t + 0}')
    redis_s=$(bc -l <<<"$(redis_cpu) - $redis0")
    hwm=$(awk '/VmHWM/ {printf "%.0f", $2 / 1024}' "/proc/$svc_pid/status")
    kill -TERM "$svc_pid"; wait "$svc_pid" || true; svc_pid=
    sleep 0.5 # the service's backends end after it
    pg=$(bc -l <<<"$(pg_cpu) - $pg0")
    redis-cli -p "$REDIS_PORT" XGROUP DESTROY backlog "$group" >/dev/null
    printf '%-5s %-40s %10.2f %10.2f %10.2f %11.2f %12s %8s %10.2f %6s\n' "$round" "$bin" \
      "$(bc -l <<<"$cpu_ticks / $ticks_per_second")" "$(bc -l <<<"$parse_ticks / $ticks_per_second")" "$pg" "$redis_s" "$faults" "$hwm" "$(bc -l <<<"$drained - $start")" \
      "$(cut -d' ' -f1 /proc/loadavg)"
  done
done
echo "($total entries, workload $WORKLOAD)"
