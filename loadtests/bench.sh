#!/usr/bin/env bash
# Benchmark of swisper-ingest against its yardstick, PostgreSQL's own bulk
# load (COPY) of exactly the rows a run produced in SwisperStudio's tables
# (public.traces and public.observations, with the project row they refer
# to). Starts its own Redis and PostgreSQL on loopback (scripts/services.sh,
# in a temp folder removed at the end), builds the service and `loadgen` in
# release mode, runs the scenarios
# and writes the results table to loadtests/results/<date>[-quick].md (and
# stdout), with the raw measurements beside it (.jsonl).
#
#   loadtests/bench.sh            all scenarios, 3 runs each (~15 min)
#   loadtests/bench.sh --quick    smaller and 1 run each (~3 min)
#   options: --runs N   --only 1,2,...  (scenarios to run; 3 without 1 takes
#            its ladder from --capacity N events/s, default 8000)   --profile (perf record the service and Postgres
#            during the first drain and the first steady run; needs perf)   --keep (keep the services folder)
#            --baseline BIN|REV (also drain with this binary, or with REV
#            built into target/baseline, interleaved with this build)
#            --lever "LABEL:ENV=VALUE ..." (also drain with these settings;
#            repeatable)   --workload seed|sdk|both (scenario 1's backlogs;
#            default both, sdk with --quick)   --steady-lever "ENV=VALUE ..."
#            (scenario 2's levers instead of its default four; repeatable)
#   SERVICE_BIN=path: benchmark that binary as "this build" (scenario 3's
#            ladder of an older build, say)
#
# Scenarios (goals, not assertions):
#   1 drain a backlog of 200,000 realistic events, seed-format (plain JSON)
#     and SDK-like (gzip+base64); yardstick: COPY of its final rows (also
#     timed: COPY of the merge state the service keeps beside them). Every
#     variant (this build, --baseline, --lever) drains the same backlog in
#     the same run, in rotating order; ratios are within a run
#   2 steady 5,000 events/s for 60 s: end-to-end latency (commit - publish)
#   3 peak sustained rate with p99 < 1 s (a ladder of rates), and how drain
#     capacity moves with consumers, batch sizes, TOAST compression and the
#     number of traces in flight (LEVER_EVENTS=0: the ladder alone)
#   4 two replicas in one group vs one
#   5 resident memory (VmHWM) at peak and with a 1,000,000-entry backlog
#   6 steady 5,000 events/s (RET_RATE) with retention running vs off:
#     throughput, p99, table sizes over time (horizon RET_HORIZON s, scaled)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

mode=full runs=3 profile=false keep=false only=1,2,3,4,5,6 capacity_arg=8000
baseline='' workload_arg='' levers=() steady_levers=()
while (($#)); do
  case $1 in
    --quick) mode=quick; runs=1 ;;
    --runs) runs=$2; shift ;;
    --only) only=$2; shift ;;
    --capacity) capacity_arg=$2; shift ;;
    --profile) profile=true ;;
    --baseline) baseline=$2; shift ;;
    --lever) levers+=("$2"); shift ;;
    --steady-lever) steady_levers+=("$2"); shift ;;
    --workload) workload_arg=$2; shift ;;
    --keep) keep=true ;;
    -h | --help) awk 'NR > 1 && !/^#/ {exit} NR > 1' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench.sh: unknown option $1" >&2; exit 1 ;;
  esac
  shift
done

if [[ $mode == full ]]; then
  BACKLOG=200000 STEADY_RATE=${STEADY_RATE:-5000} STEADY_SECS=${STEADY_SECS:-60} STEP_SECS=20 LADDER_MAX=6
  LEVER_EVENTS=${LEVER_EVENTS:-100000} MEM_BACKLOG=1000000 MEM_WATCH_SECS=30 REPLICA_RUNS=$runs
  RET_SECS=${RET_SECS:-90} RET_HORIZON=${RET_HORIZON:-20}
else
  BACKLOG=50000 STEADY_RATE=5000 STEADY_SECS=15 STEP_SECS=10 LADDER_MAX=2
  LEVER_EVENTS=0 MEM_BACKLOG=0 MEM_WATCH_SECS=0 REPLICA_RUNS=1
  RET_SECS=${RET_SECS:-30} RET_HORIZON=${RET_HORIZON:-8}
fi
# Scenario 6's rate (RET_RATE=1000 for the user's scale on a busy machine).
RET_RATE=${RET_RATE:-$STEADY_RATE}
TRACE_SECONDS=2 # a traced request lasts ~2 s: traces in flight = rate × 2 / 11

stamp=$(date +%Y-%m-%d)
suffix=$([[ $mode == quick ]] && echo "-quick" || true)
[[ $only == 1,2,3,4,5,6 ]] || suffix="$suffix-only-${only//,/-}"
results_dir=loadtests/results
mkdir -p "$results_dir"
# A second run of the same day and scenarios gets -2, -3...: results are
# never overwritten.
n=1 base_suffix=$suffix
while [[ -e $results_dir/$stamp$suffix.md || -e $results_dir/$stamp$suffix.jsonl ]]; do
  n=$((n + 1)) suffix=$base_suffix-$n
done
out_md=$results_dir/$stamp$suffix.md
out_jsonl=$results_dir/$stamp$suffix.jsonl
: >"$out_jsonl"
work=$(mktemp -d /tmp/swisper-bench.XXXXXX)
chmod 755 "$work"
svc_dir=$work/services
cache_dir=${LOADGEN_CACHE_DIR:-target/loadgen-cache}
wanted() { [[ ,$only, == *,$1,* ]]; }
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if $keep; then
    scripts/services.sh down "$svc_dir" >/dev/null 2>&1 || true
    log "services folder kept: $svc_dir"
  else
    scripts/services.sh purge "$svc_dir" >/dev/null 2>&1 || true
    rm -rf "$work"
  fi
}
trap cleanup EXIT

rev=$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src migrations || echo '+local changes')
log "building swisper-ingest $rev and loadgen (release)"
cargo build --release --quiet --bin swisper-ingest -p swisper-ingest
cargo build --release --quiet -p swisper-loadtests
bin=${SERVICE_BIN:-target/release/swisper-ingest}
[[ -n ${SERVICE_BIN:-} ]] && rev="$(basename "$SERVICE_BIN") (SERVICE_BIN)"
loadgen=target/release/loadgen

# Scenario 1's variants: name, binary, settings.
variant_names=("this build ($rev)") variant_bins=("$bin") variant_envs=("")
if [[ -n $baseline ]]; then
  if [[ -x $baseline ]]; then
    base_bin=$baseline base_name="baseline $(basename "$baseline")"
  else
    base_rev=$(git rev-parse --short "$baseline")
    log "building the baseline $base_rev into target/baseline"
    rm -rf target/baseline-src && git worktree add -f --detach target/baseline-src "$base_rev" >/dev/null 2>&1
    cargo build --release --quiet --bin swisper-ingest --manifest-path target/baseline-src/Cargo.toml --target-dir target/baseline
    git worktree remove --force target/baseline-src
    base_bin=target/baseline/release/swisper-ingest base_name="baseline $base_rev"
  fi
  variant_names+=("$base_name") variant_bins+=("$base_bin") variant_envs+=("")
fi
for lever in "${levers[@]}"; do
  variant_names+=("${lever%%:*}") variant_bins+=("$bin") variant_envs+=("${lever#*:}")
done
declare -A compression_of=([seed]=never [sdk]=sdk)
case ${workload_arg:-$([[ $mode == quick ]] && echo sdk || echo both)} in
  seed) workloads=(seed) ;;
  sdk) workloads=(sdk) ;;
  both) workloads=(seed sdk) ;; # sdk last: the other scenarios use its backlog
  *) echo "bench.sh: --workload seed|sdk|both" >&2; exit 1 ;;
esac

log "starting redis and postgres in $svc_dir"
scripts/services.sh up "$svc_dir" >/dev/null
# shellcheck disable=SC1091
source "$svc_dir/env"
base="postgres://postgres@127.0.0.1:$PG_PORT"
# Commit timestamps give the exact commit time of every row's last write.
psql "$base/postgres" -qc "ALTER SYSTEM SET track_commit_timestamp = on"
scripts/services.sh stop-postgres "$svc_dir" && scripts/services.sh start-postgres "$svc_dir"
redis_pid=$(cat "$svc_dir/redis.pid")
postmaster_pid=$(head -1 "$svc_dir/pg/postmaster.pid")
tck=$(getconf CLK_TCK)

# --- helpers ---------------------------------------------------------------

# record SCENARIO FIGURE UNIT VALUE [jq object of extra keys]
record() {
  local value=$4 extra=${5:-}
  [[ -z $value || $value == null ]] && return 0
  [[ -n $extra ]] || extra='{}'
  jq -nc --arg s "$1" --arg f "$2" --arg u "$3" --argjson v "$value" --argjson x "$extra" \
    '{scenario: $s, figure: $f, unit: $u, value: $v} + $x' >>"$out_jsonl"
}
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
cpu_of() { awk -v t="$tck" '{print ($14 + $15) / t}' "/proc/$1/stat" 2>/dev/null || echo 0; }
# CPU seconds of the postmaster, of its children that ended (cutime, cstime:
# a psql session's backend is gone when it is measured) and of every live one.
pg_cpu() {
  local total
  total=$(awk -v t="$tck" '{print ($14 + $15 + $16 + $17) / t}' "/proc/$postmaster_pid/stat")
  for child in $(pgrep -P "$postmaster_pid"); do total=$(echo "$total + $(cpu_of "$child")" | bc); done
  echo "$total"
}
# CPU seconds the whole machine spent busy (every core, every job: user, nice,
# system, irq, softirq, steal), from /proc/stat.
machine_cpu() { awk -v t="$tck" '/^cpu / {print ($2 + $3 + $4 + $7 + $8 + $9) / t}' /proc/stat; }
hwm_mb() { awk '/VmHWM/ {printf "%.1f", $2 / 1024}' "/proc/$1/status"; }
rss_mb() { awk '/VmRSS/ {printf "%.1f", $2 / 1024}' "/proc/$1/status"; }
fresh_db() {
  psql "$base/postgres" -qc "DROP DATABASE IF EXISTS $1" -c "CREATE DATABASE $1" 2>/dev/null
  DATABASE_URL=$base/$1 $bin migrate >/dev/null 2>&1
}
drop_db() { psql "$base/postgres" -qc "DROP DATABASE IF EXISTS $1" 2>/dev/null; }
# Every drain and yardstick COPY starts right after a checkpoint: a drain
# writes ~40% of max_wal_size, and drains that may meet a checkpoint (with
# the full-page images after it) spent a tenth more Postgres CPU on average
# than drains that start from one (docs/benchmarks.md, ninth session).
checkpoint() { psql "$base/postgres" -qc CHECKPOINT; }

# start_service DB STREAM GROUP REPLICA [ENV=VALUE...]: sets svc_pid, svc_url
start_service() {
  local db=$1 stream=$2 group=$3 replica=$4
  shift 4
  local port
  port=$(free_port)
  svc_url=http://127.0.0.1:$port
  env DATABASE_URL="$base/$db" OBSERVABILITY_STREAM_NAME="$stream" OBSERVABILITY_GROUP_NAME="$group" \
    OBSERVABILITY_CONSUMER_NAME="$replica" OBSERVABILITY_HTTP_ADDR=127.0.0.1:$port \
    OBSERVABILITY_SKIP_MIGRATIONS=true RUST_LOG=warn "$@" \
    "${svc_bin:-$bin}" serve >>"$work/service-$db.log" 2>&1 &
  svc_pid=$!
  pids+=("$svc_pid")
}
wait_ready() {
  for _ in $(seq 1 200); do
    curl -fs "$1/readyz" >/dev/null 2>&1 && return 0
    sleep 0.05
  done
  log "service at $1 not ready"; return 1
}
stop_service() { kill -TERM "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

publish() { timeout 900 $loadgen publish --cache-dir "$cache_dir" "$@" 2>>"$work/loadgen.log"; }
verify() { timeout 900 $loadgen verify --no-fail "$@" 2>>"$work/loadgen.log"; }
j() { jq -r "$1" "$2"; }

# profile_run WHAT DB DELAY: after DELAY s, 10 s of perf samples of the
# service and of its Postgres backends, into $work/WHAT-{service,postgres}.perf.
profile_run() {
  sleep "$3"
  perf record -F 499 -g -p "$svc_pid" -o "$work/$1-service.perf" -- sleep 10 >/dev/null 2>&1 &
  local backends
  backends=$(psql "$base/$2" -Atc "SELECT string_agg(pid::text, ',') FROM pg_stat_activity WHERE application_name = 'swisper-ingest'")
  perf record -F 499 -g -p "$backends" -o "$work/$1-postgres.perf" -- sleep 10 >/dev/null 2>&1
  wait
}

# drain RUN_NAME STREAM SUMMARY [ENV=VALUE...]: drains the stream into a fresh
# database with a fresh group; leaves $work/RUN_NAME.json and sets drain_* vars.
drain() {
  local name=$1 stream=$2 summary=$3
  shift 3
  fresh_db "$name"
  redis-cli -p "$REDIS_PORT" XGROUP DESTROY "$stream" "$name" >/dev/null
  checkpoint
  local pg0 r0 since
  drain_load=$(cut -d' ' -f1 /proc/loadavg)
  pg0=$(pg_cpu) r0=$(cpu_of "$redis_pid")
  since=$(date +%s.%N)
  start_service "$name" "$stream" "$name" r1 "$@"
  if $profile && [[ -z ${profiled_drain:-} ]]; then
    profiled_drain=1
    profile_run drain "$name" 2 &
  fi
  verify --database-url "$base/$name" --group "$name" --summary "$summary" --since "$since" \
    --metrics-url "$svc_url" --timeout 600 >"$work/$name.json"
  drain_cpu_service=$(cpu_of "$svc_pid")
  drain_cpu_pg=$(echo "$(pg_cpu) - $pg0" | bc)
  drain_cpu_redis=$(echo "$(cpu_of "$redis_pid") - $r0" | bc)
  drain_hwm=$(hwm_mb "$svc_pid")
  stop_service "$svc_pid"
}

# Columns COPY can load (not the generated ones), in table order; TABLE is
# schema-qualified.
copy_columns() {
  psql "$base/$1" -Atc "SELECT string_agg(quote_ident(attname), ',' ORDER BY attnum) FROM pg_attribute
    WHERE attrelid = '$2'::regclass AND attnum > 0 AND NOT attisdropped AND attgenerated = ''"
}

# --- conditions ---------------------------------------------------------------
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
started=$(date +%s)

# --- scenario 1: drain a backlog, every variant interleaved ---------------------
# Each workload's backlog is drained by every variant (this build, the
# baseline binary, each lever) in turn, the order rotating run by run, and
# then loaded by the yardstick COPY: ratios are taken within one run.
# The studio's rows the drain produced (public.traces and observations, and
# the projects they refer to) and the merge state the service keeps beside
# them (swisper_ingest.trace_state and observation_state).
studio_tables=(public.projects public.traces public.observations)
state_tables=(swisper_ingest.trace_state swisper_ingest.observation_state)
copy_rows() { # DB: exports the drain's final rows (the yardstick's input)
  declare -gA copy_cols=()
  rm -rf "$work/rows" && mkdir -p "$work/rows" && chmod 777 "$work/rows"
  local table args=()
  for table in "${studio_tables[@]}" "${state_tables[@]}"; do
    copy_cols[$table]=$(copy_columns "$1" "$table")
    args+=(-c "\\copy (SELECT ${copy_cols[$table]} FROM $table) TO '$work/rows/$table.copy'")
  done
  psql "$base/$1" -q "${args[@]}"
  rows=$(psql "$base/$1" -Atc "SELECT (SELECT count(*) FROM public.traces) + (SELECT count(*) FROM public.observations)")
  obs_rows=$(psql "$base/$1" -Atc "SELECT count(*) FROM public.observations")
}
copy_in() { # DB TABLE...: COPY FROM of each table's rows in one transaction; prints the backend pid
  # Long values compressed with lz4, as the service's writes are by default:
  # the yardstick is the database's best bulk load, not pglz's.
  local db=$1 table args=(-c "SET default_toast_compression = lz4" -c "SELECT pg_backend_pid()")
  shift
  for table; do
    args+=(-c "\\copy $table(${copy_cols[$table]}) FROM '$work/rows/$table.copy'")
  done
  psql "$base/$db" -qAt -1 "${args[@]}"
}
wait_backend_gone() { # the session's backend counts in the postmaster's cutime once reaped
  for _ in $(seq 1 100); do [[ -e /proc/$1 ]] || break; sleep 0.05; done
}
yardstick_copy() { # DB: sets copy_s and copy_cpu_pg (the studio's rows), state_copy_s and state_copy_cpu_pg
  fresh_db "$1"
  # The studio tables of a fresh database are standalone ones (migrate made
  # them): they come with the studio's default user, nothing else.
  local pg0 t0 t1 backend
  checkpoint
  pg0=$(pg_cpu) t0=$(date +%s.%N)
  backend=$(copy_in "$1" "${studio_tables[@]}")
  t1=$(date +%s.%N)
  copy_s=$(echo "$t1 - $t0" | bc)
  wait_backend_gone "$backend"
  copy_cpu_pg=$(echo "$(pg_cpu) - $pg0" | bc)
  pg0=$(pg_cpu) t0=$(date +%s.%N)
  backend=$(copy_in "$1" "${state_tables[@]}")
  t1=$(date +%s.%N)
  state_copy_s=$(echo "$t1 - $t0" | bc)
  wait_backend_gone "$backend"
  state_copy_cpu_pg=$(echo "$(pg_cpu) - $pg0" | bc)
  drop_db "$1"
}
if wanted 1 || wanted 4; then
for wl in "${workloads[@]}"; do
  log "scenario 1: publishing a backlog of $BACKLOG events ($wl)"
  publish --stream "backlog_$wl" --events "$BACKLOG" --seed 42 --in-flight 200 --compression "${compression_of[$wl]}" \
    --summary "$work/backlog_$wl.json" >/dev/null
  record "workload $wl" "XADD rate, pipelined backlog (loadgen)" "events/s" "$(j .publish_rate "$work/backlog_$wl.json")"
  record "workload $wl" "entry size on the wire (avg)" "B" "$(j .avg_entry_bytes "$work/backlog_$wl.json")"
  record "workload $wl" "data JSON before compression (avg)" "B" "$(j .avg_json_bytes "$work/backlog_$wl.json")"
done
# Scenario 4 and the rest drain the SDK-like backlog.
cp "$work/backlog_${workloads[-1]}.json" "$work/backlog.json"
events=$(j .events "$work/backlog.json")
backlog_stream=backlog_${workloads[-1]}
fi

for wl in "${workloads[@]}"; do
  wanted 1 || break
  sc="1 drain ${BACKLOG} ($wl)"
  wl_events=$(j .events "$work/backlog_$wl.json")
  # Not recorded: the first drain after a backlog is published ran 15-24%
  # slower, with a quarter more service CPU, in 4 of 6 drain_ab sets,
  # whichever build went first
  # (loadtests/results/2026-12-07-drain-ab-first-after-publish.txt), and
  # run 1 starts with this build.
  log "scenario 1 ($wl): warm-up drain (not recorded)"
  svc_bin=${variant_bins[0]} drain s1_warm "backlog_$wl" "$work/backlog_$wl.json"
  drop_db s1_warm
  for run in $(seq 1 "$runs"); do
    declare -A d_time=() d_svc=() d_pg=()
    n=${#variant_names[@]}
    for k in $(seq 0 $((n - 1))); do
      i=$(((k + run - 1) % n))
      vname=${variant_names[$i]}
      log "scenario 1 ($wl): run $run/$runs, $vname"
      # shellcheck disable=SC2086 # a variant's settings are a list
      svc_bin=${variant_bins[$i]} drain "s1_$i" "backlog_$wl" "$work/backlog_$wl.json" ${variant_envs[$i]}
      v=$work/s1_$i.json
      d_time[$i]=$(j .drain_seconds "$v") d_svc[$i]=$drain_cpu_service d_pg[$i]=$drain_cpu_pg
      record "$sc" "drain time: $vname" "s" "${d_time[$i]}"
      record "$sc" "drain rate: $vname" "events/s" "$(j .drain_events_per_second "$v")"
      record "$sc" "every event stored, 0 dead letters: $vname" "(1 = yes)" "$(j 'if .ok then 1 else 0 end' "$v")"
      record "$sc" "CPU service per 100,000 events: $vname" "s" "$(echo "$drain_cpu_service * 100000 / $wl_events" | bc -l)"
      record "$sc" "CPU postgres: $vname" "s" "$drain_cpu_pg"
      record "$sc" "entries per transaction: $vname" "" "$(j '.service[0].entries_per_transaction' "$v")"
      record "$sc" "writer busy (write time / drain time): $vname" "" "$(jq '.service[0].write_seconds_total / .drain_seconds' "$v")"
      record "$sc" "transactions run again (write conflicts): $vname" "" "$(j '.service[0].write_conflicts' "$v")"
      record "$sc" "observation rows updated after insert: $vname" "%" \
        "$(jq '[.table_writes[] | select(.table == "observations")][0] | 100 * .updated / .inserted' "$v")"
      record "$sc" "trace rows updated after insert: $vname" "%" \
        "$(jq '[.table_writes[] | select(.table == "traces")][0] | 100 * .updated / .inserted' "$v")"
      record "$sc" "load average at start: $vname" "" "$drain_load"
      [[ $i == 0 ]] && record "5 memory" "VmHWM draining the ${BACKLOG} backlog ($wl)" "MB" "$drain_hwm" \
        '{"target": "< 150 MB", "limit": {"op": "<", "value": 150}}'
      if [[ $run == 1 && $i == 0 ]]; then copy_rows "s1_$i"; fi
      drop_db "s1_$i"
    done
    log "yardstick ($wl): COPY run $run/$runs"
    yardstick_copy yard
    yard_extra='{}'
    [[ $wl == "${workloads[-1]}" ]] && yard_extra='{"yardstick": "time", "note": "psql \\copy (text) of every public.traces and public.observations row the drain produced (and its project row), into the empty studio tables of a fresh database (swisper-ingest migrate: standalone), long values compressed with lz4"}'
    record "yardstick" "COPY of the final rows ($rows rows, $wl), one transaction" "s" "$copy_s" "$yard_extra"
    record "yardstick" "CPU postgres of that COPY ($wl)" "s" "$copy_cpu_pg"
    record "yardstick" "then COPY of their merge state (swisper_ingest.trace_state, observation_state; $wl)" "s" "$state_copy_s" \
      '{"note": "not part of the yardstick: what the service writes beside the studio rows"}'
    record "yardstick" "CPU postgres of that merge-state COPY ($wl)" "s" "$state_copy_cpu_pg"
    [[ $wl == "${workloads[-1]}" ]] && record "yardstick" "COPY rate in events/s ($wl)" "events/s" "$(echo "$wl_events / $copy_s" | bc -l)" '{"yardstick": "rate"}'
    record "yardstick" "COPY rate in observation rows/s ($wl)" "rows/s" "$(echo "$obs_rows / $copy_s" | bc -l)"
    for i in $(seq 0 $((n - 1))); do
      vname=${variant_names[$i]}
      record "$sc" "drain time / COPY time (same run): $vname" "×" "$(echo "${d_time[$i]} / $copy_s" | bc -l)" \
        '{"target": "≤ 1.2", "limit": {"op": "<=", "value": 1.2}}'
      record "$sc" "CPU postgres / COPY's CPU postgres (same run): $vname" "×" "$(echo "${d_pg[$i]} / $copy_cpu_pg" | bc -l)" \
        '{"target": "≤ 1.1", "limit": {"op": "<=", "value": 1.1}}'
      record "$sc" "CPU service + postgres / COPY's CPU: $vname" "×" "$(echo "(${d_svc[$i]} + ${d_pg[$i]}) / $copy_cpu_pg" | bc -l)"
      record "$sc" "drain time / COPY time with the merge state (same run): $vname" "×" \
        "$(echo "${d_time[$i]} / ($copy_s + $state_copy_s)" | bc -l)"
      # Each run drains every variant back to back: the ratio within that
      # pair is the A/B figure least moved by the machine's state.
      if ((i > 0)); then
        record "$sc" "this build / $vname within a run: service CPU" "×" "$(echo "${d_svc[0]} / ${d_svc[$i]}" | bc -l)"
        record "$sc" "this build / $vname within a run: Postgres CPU" "×" "$(echo "${d_pg[0]} / ${d_pg[$i]}" | bc -l)"
        record "$sc" "this build / $vname within a run: drain time" "×" "$(echo "${d_time[0]} / ${d_time[$i]}" | bc -l)"
      fi
    done
  done
done

# report_profiles WHAT: the top symbols of WHAT's perf records (see profile_run).
report_profiles() {
  local what
  for what in service postgres; do
    [[ -f $work/$1-$what.perf ]] || continue
    perf report -i "$work/$1-$what.perf" --no-children --sort symbol -g none 2>/dev/null \
      | grep -E '^ +[0-9]' | sed -E 's/ +-? +-? *$//; s/ {2,}/ /g' | head -25 >"$results_dir/$stamp$suffix-profile-$1-$what.txt" || true
    log "profile: $results_dir/$stamp$suffix-profile-$1-$what.txt"
  done
}
$profile && wanted 1 && report_profiles drain

# --- scenario 4: two replicas in one group ---------------------------------------
for run in $(seq 1 "$REPLICA_RUNS"); do
  wanted 4 || break
  log "scenario 4: two replicas, run $run/$REPLICA_RUNS"
  name=s4_$run
  fresh_db "$name"
  redis-cli -p "$REDIS_PORT" XGROUP DESTROY "$backlog_stream" "$name" >/dev/null
  pg0=$(pg_cpu)
  since=$(date +%s.%N)
  start_service "$name" "$backlog_stream" "$name" r1
  a_pid=$svc_pid a_url=$svc_url
  start_service "$name" "$backlog_stream" "$name" r2
  b_pid=$svc_pid b_url=$svc_url
  verify --database-url "$base/$name" --group "$name" --summary "$work/backlog.json" --since "$since" \
    --metrics-url "$a_url" --metrics-url "$b_url" --timeout 600 >"$work/$name.json"
  cpu=$(echo "$(cpu_of "$a_pid") + $(cpu_of "$b_pid")" | bc)
  pgc=$(echo "$(pg_cpu) - $pg0" | bc)
  stop_service "$a_pid"
  stop_service "$b_pid"
  v=$work/$name.json
  record "4 two replicas, drain ${BACKLOG}" "drain time" "s" "$(j .drain_seconds "$v")" '{"compare": "time"}'
  record "4 two replicas, drain ${BACKLOG}" "drain rate" "events/s" "$(j .drain_events_per_second "$v")" '{"compare": "rate"}'
  record "4 two replicas, drain ${BACKLOG}" "every event stored, 0 dead letters" "(1 = yes)" "$(j 'if .ok then 1 else 0 end' "$v")"
  record "4 two replicas, drain ${BACKLOG}" "CPU: both services" "s" "$cpu"
  record "4 two replicas, drain ${BACKLOG}" "CPU: postgres (all processes)" "s" "$pgc"
  drop_db "$name"
done

capacity=$(jq -s '[.[] | select((.figure | startswith("drain rate: this build")) and (.scenario | endswith("(sdk)")))] | map(.value) | sort | .[length / 2 | floor]' "$out_jsonl")
[[ $capacity == null ]] && capacity=$capacity_arg

# steady RATE SECONDS NAME [ENV=VALUE...]: publishes at RATE for SECONDS into
# a fresh stream and database; leaves $work/NAME.json and NAME-publish.json.
steady() {
  local rate=$1 secs=$2 name=$3
  shift 3
  local in_flight
  in_flight=$(echo "$rate * $TRACE_SECONDS / 11 + 1" | bc)
  fresh_db "$name"
  redis-cli -p "$REDIS_PORT" DEL "$name" >/dev/null
  start_service "$name" "$name" "$name" r1 "$@"
  wait_ready "$svc_url"
  local pg0 r0
  steady_load=$(cut -d' ' -f1 /proc/loadavg)
  pg0=$(pg_cpu) r0=$(cpu_of "$redis_pid")
  local s0 m0 t0
  s0=$(cpu_of "$svc_pid") m0=$(machine_cpu) t0=$(date +%s.%N)
  if $profile && [[ -z ${profiled_steady:-} ]]; then
    profiled_steady=1
    profile_run steady "$name" 10 &
  fi
  publish --stream "$name" --rate "$rate" --duration "$secs" --seed 7 --in-flight "$in_flight" \
    --summary "$work/$name-publish.json" >/dev/null
  # CPU over the publish window alone (scenario 3's cores): verify's own
  # work and the drain of what is left come after.
  window_cpu_service=$(echo "$(cpu_of "$svc_pid") - $s0" | bc)
  window_cpu_pg=$(echo "$(pg_cpu) - $pg0" | bc)
  window_cpu_redis=$(echo "$(cpu_of "$redis_pid") - $r0" | bc)
  window_cpu_machine=$(echo "$(machine_cpu) - $m0" | bc)
  window_secs=$(echo "$(date +%s.%N) - $t0" | bc)
  verify --database-url "$base/$name" --group "$name" --summary "$work/$name-publish.json" \
    --metrics-url "$svc_url" --timeout 120 >"$work/$name.json"
  steady_cpu_service=$(echo "$(cpu_of "$svc_pid") - $s0" | bc)
  steady_cpu_pg=$(echo "$(pg_cpu) - $pg0" | bc)
  steady_cpu_redis=$(echo "$(cpu_of "$redis_pid") - $r0" | bc)
  steady_hwm=$(hwm_mb "$svc_pid")
  stop_service "$svc_pid"
  redis-cli -p "$REDIS_PORT" DEL "$name" >/dev/null
  drop_db "$name"
}

# --- scenario 2: steady load ---------------------------------------------------------
for run in $(seq 1 "$runs"); do
  wanted 2 || break
  log "scenario 2: $STEADY_RATE events/s for $STEADY_SECS s, run $run/$runs"
  steady "$STEADY_RATE" "$STEADY_SECS" "s2_$run"
  v=$work/s2_$run.json p=$work/s2_$run-publish.json
  sc="2 steady ${STEADY_RATE}/s × ${STEADY_SECS} s"
  record "$sc" "end-to-end latency p50" "ms" "$(j .latency_ms.p50 "$v")" '{"target": "< 10 ms", "limit": {"op": "<", "value": 10}}'
  record "$sc" "end-to-end latency p99" "ms" "$(j .latency_ms.p99 "$v")" '{"target": "< 50 ms", "limit": {"op": "<", "value": 50}}'
  record "$sc" "end-to-end latency max" "ms" "$(j .latency_ms.max "$v")"
  record "$sc" "service histogram p50 (bucket-interpolated)" "ms" "$(j '.service[0].latency_p50_ms' "$v")" \
    '{"note": "swisper_ingest_end_to_end_latency_seconds, every event, interpolated within its buckets (…10, 25, 50, 100 ms…); the exact figures above come from commit timestamps, one sample per row (its newest event)"}'
  record "$sc" "service histogram p99 (bucket-interpolated)" "ms" "$(j '.service[0].latency_p99_ms' "$v")"
  record "$sc" "load average at start (1 min, all jobs)" "" "$steady_load"
  record "$sc" "publish rate achieved" "events/s" "$(j .publish_rate "$p")"
  record "$sc" "XADD round trip p99 (one event)" "ms" "$(j .xadd_ms.p99 "$p")" \
    '{"note": "the Redis part of the SDK publish cost per event, under this load; 11 events a trace"}'
  record "$sc" "every event stored, 0 dead letters" "(1 = yes)" "$(j 'if .ok then 1 else 0 end' "$v")"
  record "$sc" "entries per transaction" "" "$(j '.service[0].entries_per_transaction' "$v")"
  record "$sc" "mean write transaction" "ms" "$(j '.service[0].write_ms_mean' "$v")" \
    '{"note": "swisper_ingest_write_duration_seconds: lock, statements, COPY and commit of one batch; an event waits for the one in flight, then its own"}'
  record "$sc" "writer busy (write time / publish time)" "" "$(jq --argjson d "$STEADY_SECS" '.service[0].write_seconds_total / $d' "$v")"
  record "$sc" "transactions run again (write conflicts)" "" "$(j '.service[0].write_conflicts' "$v")"
  record "$sc" "CPU: service" "% of one core" "$(echo "100 * $steady_cpu_service / $STEADY_SECS" | bc -l)"
  record "$sc" "CPU: postgres (all processes)" "% of one core" "$(echo "100 * $steady_cpu_pg / $STEADY_SECS" | bc -l)"
  record "$sc" "CPU: redis" "% of one core" "$(echo "100 * $steady_cpu_redis / $STEADY_SECS" | bc -l)"
  record "$sc" "CPU: loadgen (the publisher)" "% of one core" "$(jq '100 * .publish_cpu_seconds / .publish_seconds' "$p")" \
    '{"note": "the publisher shares the 2 cores here; in production the applications run elsewhere"}'
  record "5 memory" "VmHWM at ${STEADY_RATE}/s" "MB" "$steady_hwm"
  if [[ -n ${base_bin:-} ]]; then
    log "scenario 2: the same with $base_name, run $run/$runs"
    svc_bin=$base_bin steady "$STEADY_RATE" "$STEADY_SECS" "s2b_$run"
    v=$work/s2b_$run.json
    record "$sc" "end-to-end latency p50: $base_name" "ms" "$(j .latency_ms.p50 "$v")"
    record "$sc" "end-to-end latency p99: $base_name" "ms" "$(j .latency_ms.p99 "$v")"
    record "$sc" "CPU: service, $base_name" "% of one core" "$(echo "100 * $steady_cpu_service / $STEADY_SECS" | bc -l)"
    record "$sc" "CPU: postgres (all processes), $base_name" "% of one core" "$(echo "100 * $steady_cpu_pg / $STEADY_SECS" | bc -l)"
  fi
done

# --- scenario 2: the latency levers that need no code change (one run each) ----
if [[ $mode == full ]] && wanted 2; then
  ((${#steady_levers[@]})) || steady_levers=(OBSERVABILITY_WRITE_LINGER_MS=5 OBSERVABILITY_CONSUMERS=1
    OBSERVABILITY_PARSE_THREADS=0 OBSERVABILITY_WRITER_THREAD=false)
  for lever in "${steady_levers[@]}"; do
    log "scenario 2 lever: $lever at $STEADY_RATE events/s for $STEP_SECS s"
    # shellcheck disable=SC2086 # the lever is a list of settings
    steady "$STEADY_RATE" "$STEP_SECS" s2_lever $lever
    sc="2 levers: ${STEADY_RATE}/s × ${STEP_SECS} s"
    record "$sc" "p50 with ${lever//OBSERVABILITY_/}" "ms" "$(j .latency_ms.p50 "$work/s2_lever.json")"
    record "$sc" "p99 with ${lever//OBSERVABILITY_/}" "ms" "$(j .latency_ms.p99 "$work/s2_lever.json")"
  done
fi

$profile && wanted 2 && report_profiles steady

# --- scenario 3: peak sustained rate ----------------------------------------------------
# A ladder from 60% of the drain capacity up in steps of 10%; the peak is the
# highest rate whose p99 stays under 1 s (which also means no growing lag).
if wanted 3; then
  step=$(echo "($capacity * 0.1 / 250 + 0.5) / 1" | bc)
  step=$((step * 250))
  rate=$(echo "($capacity * 0.6 / 250 + 0.5) / 1" | bc)
  rate=$((rate * 250))
  peak=0 peak_run=
  for i in $(seq 1 "$LADDER_MAX"); do
    log "scenario 3: ladder step $i at $rate events/s for $STEP_SECS s"
    steady "$rate" "$STEP_SECS" "s3_$i"
    p99=$(j .latency_ms.p99 "$work/s3_$i.json")
    ok=$(j .ok "$work/s3_$i.json")
    record "3 peak ladder" "p99 at $rate events/s" "ms" "$p99"
    record "3 peak ladder" "write conflicts at $rate events/s" "" "$(j '.service[0].write_conflicts' "$work/s3_$i.json")"
    record "3 peak ladder" "publish rate achieved at $rate events/s" "events/s" "$(j .publish_rate "$work/s3_$i-publish.json")"
    # Where the 2 cores went while the step published: what limits the
    # peak on this machine (the publisher shares it).
    for part in "service:$window_cpu_service" "postgres:$window_cpu_pg" "redis:$window_cpu_redis" \
      "loadgen:$(j .publish_cpu_seconds "$work/s3_$i-publish.json")" "the machine (all jobs, of 2):$window_cpu_machine"; do
      record "3 peak ladder" "cores used at $rate events/s: ${part%%:*}" "cores" "$(echo "${part##*:} / $window_secs" | bc -l)"
    done
    if [[ $ok == true ]] && (($(echo "$p99 < 1000" | bc))); then
      peak=$rate peak_run=s3_$i peak_hwm=$steady_hwm
      rate=$((rate + step))
    else
      break
    fi
  done
  record "3 peak sustained (p99 < 1 s)" "peak rate (highest passing step)" "events/s" "$peak" '{"compare": "rate"}'
  if [[ $peak != 0 ]]; then
    record "5 memory" "VmHWM at the peak rate" "MB" "$peak_hwm" '{"target": "< 150 MB", "limit": {"op": "<", "value": 150}}'
    record "3 peak sustained (p99 < 1 s)" "p99 at the peak rate" "ms" "$(j .latency_ms.p99 "$work/$peak_run.json")" \
      '{"target": "< 1000 ms", "limit": {"op": "<", "value": 1000}}'
    for run in $(seq 2 "$runs"); do
      log "scenario 3: confirming $peak events/s, run $run/$runs"
      steady "$peak" "$STEP_SECS" "s3_confirm_$run"
      record "3 peak sustained (p99 < 1 s)" "p99 at the peak rate" "ms" "$(j .latency_ms.p99 "$work/s3_confirm_$run.json")"
    done
  fi
fi

# --- scenario 3: levers, on the drain capacity (one run each) -----------------------------
if ((LEVER_EVENTS > 0)) && wanted 3; then
  publish --stream lever --events "$LEVER_EVENTS" --seed 43 --in-flight 200 --summary "$work/lever-publish.json" >/dev/null
  lever() {
    local label=$1 stream=$2 summary=$3
    shift 3
    log "scenario 3 lever: $label"
    drain "lever" "$stream" "$summary" "$@"
    record "3 levers: drain ${LEVER_EVENTS}" "$label" "events/s" "$(j .drain_events_per_second "$work/lever.json")" '{"compare": "rate"}'
    drop_db lever
  }
  lever "defaults (2 consumers × 2000)" lever "$work/lever-publish.json"
  lever "1 consumer × 2000" lever "$work/lever-publish.json" OBSERVABILITY_CONSUMERS=1
  lever "4 consumers × 2000" lever "$work/lever-publish.json" OBSERVABILITY_CONSUMERS=4
  lever "2 consumers × 500" lever "$work/lever-publish.json" OBSERVABILITY_BATCH_SIZE=500
  lever "2 consumers × 5000" lever "$work/lever-publish.json" OBSERVABILITY_BATCH_SIZE=5000
  lever "OBSERVABILITY_WRITERS=2" lever "$work/lever-publish.json" OBSERVABILITY_WRITERS=2
  for flight in 20 2000; do
    publish --stream "lever_f$flight" --events "$LEVER_EVENTS" --seed 43 --in-flight "$flight" --summary "$work/lever_f$flight-publish.json" >/dev/null
    lever "defaults, $flight traces in flight (not 200)" "lever_f$flight" "$work/lever_f$flight-publish.json"
    record "3 levers: drain ${LEVER_EVENTS}" "observation rows updated after insert, $flight in flight" "%" \
      "$(jq '[.table_writes[] | select(.table == "observations")][0] | 100 * .updated / .inserted' "$work/lever.json")"
    redis-cli -p "$REDIS_PORT" DEL "lever_f$flight" >/dev/null
  done
  redis-cli -p "$REDIS_PORT" DEL lever >/dev/null
fi

# --- scenario 5: memory with a large backlog -----------------------------------------------
if ((MEM_BACKLOG > 0)) && wanted 5; then
  redis-cli -p "$REDIS_PORT" DEL backlog_seed backlog_sdk >/dev/null
  log "scenario 5: publishing a backlog of $MEM_BACKLOG events"
  publish --stream big --events "$MEM_BACKLOG" --seed 44 --in-flight 200 --summary "$work/big.json" >/dev/null
  record "5 memory" "redis used memory with the ${MEM_BACKLOG} backlog" "MB" \
    "$(redis-cli -p "$REDIS_PORT" INFO memory | awk -F: '/^used_memory:/ {printf "%.0f", $2 / 1048576}')"
  fresh_db big
  start_service big big big r1
  wait_ready "$svc_url" || true
  max_rss=0
  for _ in $(seq 1 "$MEM_WATCH_SECS"); do
    sleep 1
    r=$(rss_mb "$svc_pid")
    (($(echo "$r > $max_rss" | bc))) && max_rss=$r
  done
  lag=$(curl -fs "$svc_url/api/v1/observability/metrics" | jq -c . 2>/dev/null || echo '{}')
  record "5 memory" "VmHWM draining a ${MEM_BACKLOG} backlog (first ${MEM_WATCH_SECS} s)" "MB" "$(hwm_mb "$svc_pid")" \
    "$(jq -nc --arg lag "$lag" '{"target": "< 150 MB", "limit": {"op": "<", "value": 150}, "note": ("memory is bounded by consumers × batch size, not by the backlog; group state after the watch: " + $lag)}')"
  stop_service "$svc_pid"
  redis-cli -p "$REDIS_PORT" DEL big >/dev/null
  drop_db big
fi

# --- scenario 6: steady load with retention running vs off ----------------------------------
# The same steady publish twice, retention off and on. "On" is retention's
# steady state at this rate: a horizon of RET_HORIZON s (a retention "day"
# scaled to a second with OBSERVABILITY_RETENTION_UNIT_SECS=1), so that after
# one horizon it forgets traces as fast as they arrive, with the default batch
# size (500) and pause (100 ms), every 5 s. Autovacuum looks every 5 s instead
# of every minute for both runs (time is scaled). Latency from commit
# timestamps covers the rows still stored (the last horizon: while retention
# deletes); the service's histogram covers every event. Rows missing at the
# end must be exactly those retention forgot: verify counts the rows in one
# snapshot and reads the service's forgotten-rows counters just before and
# just after it, and the missing rows must lie between (retention keeps
# forgetting while verify looks).
retention_run() { # NAME on|off
  local name=$1 mode6=$2 in_flight
  in_flight=$(echo "$RET_RATE * $TRACE_SECONDS / 11 + 1" | bc)
  local -a env6=()
  [[ $mode6 == on ]] && env6=(OBSERVABILITY_RETENTION_DAYS=$RET_HORIZON OBSERVABILITY_RETENTION_UNIT_SECS=1
    OBSERVABILITY_RETENTION_INTERVAL_SECS=5)
  fresh_db "$name"
  redis-cli -p "$REDIS_PORT" DEL "$name" >/dev/null
  start_service "$name" "$name" "$name" r1 "${env6[@]}"
  wait_ready "$svc_url"
  local pg0 s0 since
  pg0=$(pg_cpu) s0=$(cpu_of "$svc_pid") since=$(date +%s.%N)
  publish --stream "$name" --rate "$RET_RATE" --duration "$RET_SECS" --seed 9 --in-flight "$in_flight" \
    --summary "$work/$name-publish.json" >/dev/null &
  local pub=$!
  : >"$work/$name-sizes.txt"
  while kill -0 "$pub" 2>/dev/null; do
    psql "$base/$name" -Atc "SELECT round(extract(epoch FROM now()) - $since),
      pg_total_relation_size('public.traces') + pg_total_relation_size('public.observations'),
      pg_total_relation_size('swisper_ingest.trace_state') + pg_total_relation_size('swisper_ingest.observation_state')" \
      >>"$work/$name-sizes.txt" 2>/dev/null || true
    sleep 5
  done
  wait "$pub"
  verify --database-url "$base/$name" --group "$name" --summary "$work/$name-publish.json" \
    --metrics-url "$svc_url" --since "$since" --timeout 120 >"$work/$name.json"
  ret_cpu_service=$(echo "$(cpu_of "$svc_pid") - $s0" | bc)
  ret_cpu_pg=$(echo "$(pg_cpu) - $pg0" | bc)
  ret_metrics=$(curl -fs "$svc_url/metrics" || true)
  stop_service "$svc_pid"
  redis-cli -p "$REDIS_PORT" DEL "$name" >/dev/null
  drop_db "$name"
}
metric_of() { echo "$ret_metrics" | awk -v m="$1" 'index($0, m) == 1 {s += $NF} END {print s + 0}'; }
if wanted 6; then
  psql "$base/postgres" -qc "ALTER SYSTEM SET autovacuum_naptime = '5s'" -c "SELECT pg_reload_conf()" >/dev/null
  for run in $(seq 1 "$runs"); do
    for mode6 in off on; do
      log "scenario 6: $RET_RATE events/s for $RET_SECS s, retention $mode6, run $run/$runs"
      name=s6_${mode6}_$run
      retention_run "$name" "$mode6"
      v=$work/$name.json p=$work/$name-publish.json
      sc="6 retention $mode6: ${RET_RATE}/s × ${RET_SECS} s"
      [[ $mode6 == on ]] && sc="$sc, horizon ${RET_HORIZON} s"
      record "$sc" "publish rate achieved" "events/s" "$(j .publish_rate "$p")"
      record "$sc" "stored rate (events / (last commit - start))" "events/s" "$(j .drain_events_per_second "$v")"
      record "$sc" "end-to-end latency p50 (rows still stored)" "ms" "$(j .latency_ms.p50 "$v")"
      record "$sc" "end-to-end latency p99 (rows still stored)" "ms" "$(j .latency_ms.p99 "$v")"
      record "$sc" "service histogram p99, every event (bucket-interpolated)" "ms" "$(j '.service[0].latency_p99_ms' "$v")"
      record "$sc" "mean write transaction" "ms" "$(j '.service[0].write_ms_mean' "$v")"
      record "$sc" "CPU: service" "% of one core" "$(echo "100 * $ret_cpu_service / $RET_SECS" | bc -l)"
      record "$sc" "CPU: postgres (all processes)" "% of one core" "$(echo "100 * $ret_cpu_pg / $RET_SECS" | bc -l)"
      sizes=$(awk -F'|' '{printf "%s%d s: %.0f MB", (NR > 1 ? ", " : ""), $1, $2 / 1048576}' "$work/$name-sizes.txt")
      record "$sc" "traces + observations size at the end" "MB" "$(tail -1 "$work/$name-sizes.txt" | awk -F'|' '{printf "%.1f", $2 / 1048576}')" \
        "$(jq -nc --arg s "$sizes" '{"note": ("pg_total_relation_size of public.traces + public.observations over time: " + $s)}')"
      record "$sc" "their merge state's size at the end (swisper_ingest)" "MB" "$(tail -1 "$work/$name-sizes.txt" | awk -F'|' '{printf "%.1f", $3 / 1048576}')"
      forgotten_traces=$(metric_of 'swisper_ingest_retention_forgotten_rows_total{table="traces"}')
      forgotten_obs=$(metric_of 'swisper_ingest_retention_forgotten_rows_total{table="observations"}')
      record "$sc" "traces forgotten by retention" "" "$forgotten_traces"
      record "$sc" "late events (outcome expired)" "" "$(echo "$ret_metrics" | grep 'outcome="expired"' | awk '{s += $NF} END {print s + 0}')"
      record "$sc" "missing rows = rows retention forgot, 0 dead letters" "(1 = yes)" \
        "$(jq 'if .dead_letters == 0 and .forgotten_before != null and .forgotten_after != null
                  and .missing_traces >= .forgotten_before.traces and .missing_traces <= .forgotten_after.traces
                  and .missing_observations >= .forgotten_before.observations
                  and .missing_observations <= .forgotten_after.observations then 1 else 0 end' "$v")"
    done
  done
  psql "$base/postgres" -qc "ALTER SYSTEM RESET autovacuum_naptime" -c "SELECT pg_reload_conf()" >/dev/null
fi

# --- the table ------------------------------------------------------------------------------
load_end=$(cut -d' ' -f1-3 /proc/loadavg)
elapsed=$(($(date +%s) - started))
{
  echo "# swisper-ingest benchmark, $stamp ($mode)"
  echo
  echo "Machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), $(free -g | awk '/Mem:/ {print $2}') GB RAM,"
  echo "shared with other jobs and noisy: load average $load_start at the start, $load_end at the end."
  echo "PostgreSQL $(psql "$base/postgres" -Atc 'SHOW server_version' | cut -d' ' -f1) (scripts/services.sh defaults: shared_buffers 128MB,"
  echo "fsync on, synchronous_commit on; plus track_commit_timestamp on), Redis $(redis-server --version | grep -o 'v=[0-9.]*' | cut -d= -f2) without persistence,"
  echo "all on loopback. swisper-ingest $rev, release build, default settings unless said."
  echo "Workload: loadgen, seed-repeatable traces of 1 trace_start + 5 observations (start + end, 10% errors),"
  echo "LangGraph-like states of 1.1–2.2 KB, data gzip+base64 from 1 KB like the SDK. Runs: $runs a figure unless said; total $((elapsed / 60)) min."
  echo
  $loadgen report "$out_jsonl"
} | tee "$out_md"
log "results: $out_md (raw: $out_jsonl)"
