# shellcheck shell=bash
# Shell helpers shared by the scripts that start servers on loopback
# (scripts/services.sh, tests/tls/servers.sh, tests/credentials/postgres.sh).
# Sourced, never run.

# Runs a command that may leave daemons behind (servers; apt-get, whose
# postinst may start some) with every descriptor above 2 closed: a daemon
# holding a caller's lock files or pipes (bats' fd 3, CI log pipes, cargo
# test's output) would keep that caller waiting.
detached() {
  (
    local fd
    for fd in /proc/self/fd/*; do
      fd=${fd##*/}
      if ((fd > 2)); then eval "exec $fd>&-"; fi
    done
    exec "$@" </dev/null
  )
}

# The PostgreSQL binaries: Debian's 15 when installed, else the newest.
newest_pg_bin() {
  if [[ -x /usr/lib/postgresql/15/bin/initdb ]]; then
    echo /usr/lib/postgresql/15/bin
  else
    printf '%s\n' /usr/lib/postgresql/*/bin | sort -V | tail -n 1
  fi
}
