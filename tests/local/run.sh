#!/usr/bin/env bash
# The quick start as a user without root (issue 20). Run as root (CI does):
# makes sure Redis and PostgreSQL are installed, creates the throwaway user
# SWISPER_LOCAL_USER when missing, and as that user, with a clean environment:
#   1. scripts/services.sh up with redis-server off PATH: fails at once,
#      names the apt-get line, creates nothing;
#   2. scripts/run.sh with cargo, cc and curl off PATH: fails at once and
#      names each of them, starts nothing;
#   3. scripts/run.sh --once, the real quick start, in a checkout of the
#      user's own: it must store the 25 sample observations and stop the
#      service; Redis and Postgres must have run as the user, and once the
#      user stops them (scripts/services.sh purge) no process of the user's
#      may be left.
# The user's toolchain: /root is private (mode 700), so the user reaches
# root's Rust toolchain and cargo's downloaded crates through hard links in a
# folder of this run (the files stay root's, read-only to the user); its
# HOME, CARGO_HOME, build folder and state folder are its own, so the
# release build is the user's, from scratch, with no network. Everything is removed at the
# end, processes by PID.
#
#   tests/local/run.sh
#   SWISPER_LOCAL_USER     the user (swisper-local; created and removed when missing)
#   SWISPER_LOCAL_TIMEOUT  seconds the quick start may take, build included (2400)
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
export PATH="$HOME/.cargo/bin:$PATH"

user=${SWISPER_LOCAL_USER:-swisper-local}
limit=${SWISPER_LOCAL_TIMEOUT:-2400}
started=$SECONDS

say() { echo "local: $*"; }
indent() { sed 's/^/    /'; }
die() {
  echo "local: FAIL: $*" >&2
  exit 1
}

((EUID == 0)) || die "run as root: it creates a user and runs the quick start as that user"
{ command -v runuser && command -v useradd; } >/dev/null || die "needs runuser and useradd (util-linux, passwd)"

created_user=
work=
uid=
user_env=()

# PIDs of the user's live processes (zombies count as gone: PID 1 in a
# container may reap them late).
user_pids() {
  local p stat
  for p in /proc/[0-9]*; do
    [[ $(stat -c %u "$p" 2>/dev/null) == "$uid" ]] || continue
    stat=$(cat "$p/stat" 2>/dev/null) || continue
    stat=${stat##*) }
    [[ ${stat%% *} == [ZX] ]] || echo "${p#/proc/}"
  done
}

describe_pids() {
  local pid
  for pid in "$@"; do
    echo "  $pid $(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)"
  done
}

# Waits up to $1 seconds for the user to have no live process left.
no_user_processes_within() {
  local deadline=$((SECONDS + $1))
  while [[ -n $(user_pids) ]]; do
    ((SECONDS < deadline)) || return 1
    sleep 0.2
  done
}

cleanup() {
  local pids
  if [[ -n $uid && -n $work && -d $work/user/state ]]; then
    runuser -u "$user" -- "${user_env[@]}" "$work/user/repo/scripts/services.sh" purge "$work/user/state" >/dev/null 2>&1 || true
  fi
  if [[ -n $uid ]]; then
    pids=$(user_pids)
    # shellcheck disable=SC2086 # one PID a word
    if [[ -n $pids ]]; then kill -TERM $pids 2>/dev/null || true; fi
    no_user_processes_within 10 || {
      pids=$(user_pids)
      # shellcheck disable=SC2086
      [[ -z $pids ]] || kill -KILL $pids 2>/dev/null || true
      no_user_processes_within 10 || true
    }
  fi
  if [[ -n $work ]]; then rm -rf "$work"; fi
  if [[ -n $created_user ]]; then userdel "$user" 2>/dev/null || say "warning: could not remove user $user"; fi
}
trap cleanup EXIT

# ---------------------------------------------------------------- setup

if ! id -u "$user" >/dev/null 2>&1; then
  useradd --user-group --no-create-home --home-dir /nonexistent --shell /bin/bash "$user" ||
    die "useradd $user failed"
  created_user=1
fi
uid=$(id -u "$user")
((uid != 0)) || die "$user is root"
# shellcheck disable=SC2046 # one PID a word
[[ -z $(user_pids) ]] || die "user $user already runs processes:
$(describe_pids $(user_pids))"

work=$(mktemp -d /tmp/swisper-local.XXXXXX)
chmod 755 "$work"
mkdir -m 700 "$work/user" "$work/user/home" "$work/user/run"
chown "$user:" "$work/user" "$work/user/home" "$work/user/run"

# A checkout of the user's own: the files of this working tree, no build output.
mkdir "$work/user/repo"
if git -C "$repo" rev-parse --git-dir >/dev/null 2>&1; then
  (cd "$repo" && git ls-files -z --cached --others --exclude-standard |
    tar --null --ignore-failed-read -T - -cf - 2>/dev/null) | tar -xf - -C "$work/user/repo"
else
  tar -C "$repo" --exclude=./target -cf - . | tar -xf - -C "$work/user/repo"
fi
chown -R "$user:" "$work/user/repo"
# From here on no command depends on root's working folder (the user may not
# be able to enter it).
cd /
as_user() { runuser -u "$user" -- "$@"; }

# The user cannot install them: root does, as the README's root path would.
if ! as_user "$work/user/repo/scripts/services.sh" check >/dev/null; then
  say "installing Redis and PostgreSQL (scripts/services.sh up as root)"
  d=$(mktemp -d /tmp/swisper-local-install.XXXXXX)
  "$repo/scripts/services.sh" up "$d" >/dev/null
  "$repo/scripts/services.sh" purge "$d"
fi

# Puts folder $1 into folder $2 for the user: hard links to its files (a
# copy when they cannot be linked across file systems), which stay root's and
# read-only to the user; the files the user could not read become copies of
# its own (some crates ship mode 640 files); the folders become the user's, so
# cargo can add what it needs.
link_for_user() {
  local copy=$2/${1##*/} f
  cp -al "$1" "$2/" 2>/dev/null || cp -a "$1" "$2/"
  find "$copy" -type d -exec chown "$user:" {} +
  find "$copy" -type f ! -perm -o+r -print0 | while IFS= read -r -d '' f; do
    cp -p "$f" "$f.copy" && mv -f "$f.copy" "$f" && chown "$user:" "$f"
  done
}

# Rust: root's toolchain, linked for the user when it cannot reach it.
sysroot=$(rustc --print sysroot) || die "no Rust toolchain for root (rustc --print sysroot)"
rust_bin=$sysroot/bin
if ! as_user test -x "$rust_bin/cargo"; then
  mkdir "$work/rust"
  for part in bin lib libexec etc; do
    if [[ -e $sysroot/$part ]]; then link_for_user "$sysroot/$part" "$work/rust"; fi
  done
  rust_bin=$work/rust/bin
fi
# cargo's crates: fetched by root (a no-op when they are there already), linked
# into the user's CARGO_HOME, so the user's build needs no network.
(cd "$repo" && cargo fetch --locked --quiet) || die "cargo fetch --locked failed"
root_cargo_home=${CARGO_HOME:-$HOME/.cargo}
mkdir "$work/user/home/.cargo"
chown "$user:" "$work/user/home/.cargo"
if [[ -d $root_cargo_home/registry ]]; then link_for_user "$root_cargo_home/registry" "$work/user/home/.cargo"; fi

# A login-like environment and nothing else from root's.
user_env=(env -i HOME="$work/user/home" USER="$user" LOGNAME="$user" SHELL=/bin/bash LANG=C.UTF-8
  XDG_RUNTIME_DIR="$work/user/run" PATH="$rust_bin:/usr/local/bin:/usr/bin:/bin"
  SWISPER_DEV_DIR="$work/user/state")

# A PATH like the user's without some commands.
path_without() {
  local bin=$work/user/path-without-$1 f
  mkdir "$bin"
  # The user's PATH order: the first of each name wins.
  for f in "$rust_bin"/* /usr/local/bin/* /usr/bin/*; do
    [[ -e $f && ! -e $bin/${f##*/} ]] || continue
    [[ " $* " == *" ${f##*/} "* ]] || ln -s "$f" "$bin/"
  done
  echo "$bin"
}

# ---------------------------------------------------------------- 1. servers missing

say "1. services.sh up without redis-server on PATH"
bin=$(path_without redis-server redis-cli)
rc=0
out=$(as_user "${user_env[@]}" PATH="$bin" "$work/user/repo/scripts/services.sh" up "$work/user/state" 2>&1) || rc=$?
indent <<<"$out"
((rc != 0)) || die "services.sh up succeeded without redis-server"
[[ $out == *"apt-get install -y --no-install-recommends redis-server"* ]] ||
  die "services.sh did not name the apt-get line for redis-server"
[[ ! -e $work/user/state ]] || die "services.sh created $work/user/state although it could not start"
[[ -z $(ls -A "$work/user/run") ]] || die "services.sh made a port registry although it could not start"

# ---------------------------------------------------------------- 2. tools missing

say "2. run.sh without cargo, cc and curl on PATH"
bin=$(path_without cargo rustc cc gcc curl)
rc=0
out=$(as_user "${user_env[@]}" PATH="$bin" timeout 60 bash "$work/user/repo/scripts/run.sh" --once 2>&1) || rc=$?
indent <<<"$out"
((rc != 0 && rc != 124)) || die "run.sh exited $rc without cargo, cc and curl (0: ran anyway; 124: hung)"
need=$(sed -n 's/^rust-version *= *"\([0-9.]*\)".*/\1/p' "$repo/Cargo.toml")
for want in "Rust $need or newer" "a C compiler, cc: apt-get install gcc libc6-dev" "apt-get install curl"; do
  [[ $out == *"$want"* ]] || die "run.sh's message lacks '$want'"
done
[[ $out != *"==> building"* ]] || die "run.sh went on to build"
[[ ! -e $work/user/state ]] || die "run.sh started the servers although it could not build"
# shellcheck disable=SC2046
[[ -z $(user_pids) ]] || die "run.sh left processes behind:
$(describe_pids $(user_pids))"

# ---------------------------------------------------------------- 3. the quick start

say "3. scripts/run.sh --once as $user (uid $uid), release build from scratch, at most ${limit}s"
quick=$SECONDS
rc=0
as_user "${user_env[@]}" timeout --kill-after=30 "$limit" "$work/user/repo/scripts/run.sh" --once 2>&1 | tee "$work/quick-start.log" | indent || rc=${PIPESTATUS[0]}
quick=$((SECONDS - quick))
((rc == 0)) || die "the quick start exited $rc after ${quick}s (124: timed out)"
grep -q '^==> stored: 25 of 25 observations' "$work/quick-start.log" || die "the quick start did not store the 25 observations"
grep -q '^swisper-ingest drained and stopped' "$work/quick-start.log" || die "the quick start did not stop the service"
binary=$work/user/repo/target/release/swisper-ingest
[[ $(stat -c %u "$binary" 2>/dev/null) == "$uid" ]] || die "$binary was not built by $user"

# Redis and Postgres stay up for the next run, as the user's own processes;
# the service must be gone.
pg_pid=$(head -n 1 "$work/user/state/pg/postmaster.pid" 2>/dev/null) || die "no postmaster.pid"
redis_pid=$(cat "$work/user/state/redis.pid" 2>/dev/null) || die "no redis.pid"
for pid in "$pg_pid" "$redis_pid"; do
  [[ $(stat -c %u "/proc/$pid" 2>/dev/null) == "$uid" ]] || die "server pid $pid is not running as $user"
done
for pid in $(user_pids); do
  case $(cat "/proc/$pid/comm" 2>/dev/null) in
    postgres | redis-server) ;;
    *) die "left running after the quick start:
$(describe_pids "$pid")" ;;
  esac
done

say "stopping the servers as $user (scripts/services.sh purge)"
as_user "${user_env[@]}" "$work/user/repo/scripts/services.sh" purge "$work/user/state"
# shellcheck disable=SC2046
no_user_processes_within 30 || die "processes of $user left after purge:
$(describe_pids $(user_pids))"
[[ ! -e $work/user/state ]] || die "purge left $work/user/state"

say "ok: quick start as $user in ${quick}s, whole test $((SECONDS - started))s"
