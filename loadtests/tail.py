#!/usr/bin/env python3
"""What the steady state's slowest events waited on (loadtests/tail.sh).

  tail.py sample OUT SERVICE_PID POSTMASTER_PID REDIS_PID PUBLISHER_PIDFILE
      every 100 ms until SERVICE_PID ends, one CSV line: epoch seconds, the
      machine's busy CPU seconds (all cores, /proc/stat) and the CPU seconds
      of the service, Postgres (postmaster and children), Redis and the
      publisher (its PID read from PUBLISHER_PIDFILE once it exists).
  tail.py report LATENCIES CPU PG_LOG [SLOW_MS]
      LATENCIES: `loadgen verify --latencies` (commit µs, latency ms per row).
      Groups the rows slower than SLOW_MS (default 50) into episodes (slow
      commits less than 250 ms apart) and prints, for each, the CPU over the
      time its rows waited (the machine's, ours, and other jobs': the
      machine's minus ours) and what Postgres logged meanwhile (checkpoints,
      autovacuum, statements over log_min_duration_statement).
"""
import bisect
import csv
import os
import re
import sys
import time
from datetime import datetime

TICK = os.sysconf("SC_CLK_TCK")


def busy_seconds():
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal: all but idle and iowait.
    return (sum(fields[:8]) - fields[3] - fields[4]) / TICK


def cpu_of(pid, gone=0.0):
    """CPU seconds of a live process; `gone` once it has ended."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK
    except (OSError, IndexError, ValueError):
        return gone


def children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return f.read().split()
    except OSError:
        return []


def sample(out, service, postmaster, redis, publisher_file):
    publisher, publisher_cpu = None, 0.0
    with open(out, "w") as f:
        f.write("t,busy,service,postgres,redis,publisher\n")
        while os.path.exists(f"/proc/{service}"):
            if publisher is None and os.path.exists(publisher_file):
                publisher = open(publisher_file).read().strip() or None
            # Postgres: the postmaster with its ended children, and every live one.
            try:
                with open(f"/proc/{postmaster}/stat") as s:
                    pm = s.read().rsplit(")", 1)[1].split()
                pg = sum(int(x) for x in pm[11:15]) / TICK
            except OSError:
                pg = 0.0
            pg += sum(cpu_of(c) for c in children(postmaster))
            if publisher:
                # Its last figure once it has ended.
                publisher_cpu = cpu_of(publisher, publisher_cpu)
            f.write(
                f"{time.time():.3f},{busy_seconds():.2f},{cpu_of(service):.2f},{pg:.2f},"
                f"{cpu_of(redis):.2f},{publisher_cpu:.2f}\n"
            )
            f.flush()
            time.sleep(0.1)


LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+) \w+ \[\d+\] (\w+):\s+(.*)")
ELAPSED = re.compile(r"elapsed: ([\d.]+) s")
CHECKPOINT_TOTAL = re.compile(r"total=([\d.]+) s")
DURATION = re.compile(r"^duration: ([\d.]+) ms\s+(.*)")


def pg_events(path):
    """(start, end, what) of each checkpoint, autovacuum/analyze and slow statement."""
    events = []
    for line in open(path, errors="replace"):
        m = LOG_TIME.match(line)
        if not m:
            continue
        at = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S.%f").timestamp()
        text = m.group(3)
        if text.startswith("automatic "):
            e = ELAPSED.search(text)
            span = float(e.group(1)) if e else 0.0
            table = re.search(r'table "([^"]+)"', text)
            kind = text.split()[1]
            events.append((at - span, at, f"auto{kind} {table.group(1) if table else '?'} {span:.2f} s"))
        elif text.startswith("checkpoint complete"):
            e = CHECKPOINT_TOTAL.search(text)
            span = float(e.group(1)) if e else 0.0
            events.append((at - span, at, f"checkpoint {span:.2f} s"))
        else:
            d = DURATION.match(text)
            if d:
                span = float(d.group(1)) / 1e3
                events.append((at - span, at, f"{d.group(1)} ms {d.group(2)[:50]}"))
    return sorted(events)


def load_cpu(path):
    rows = []
    with open(path) as f:
        for r in csv.DictReader(f):
            rows.append({k: float(v) for k, v in r.items()})
    return rows


def cpu_between(cpu, start, end):
    """CPU shares (of one core) over [start, end], from the samples around it."""
    times = [r["t"] for r in cpu]
    i = max(bisect.bisect_right(times, start) - 1, 0)
    j = min(bisect.bisect_left(times, end), len(cpu) - 1)
    if j <= i:
        j = min(i + 1, len(cpu) - 1)
    a, b = cpu[i], cpu[j]
    span = b["t"] - a["t"]
    if span <= 0:
        return None
    share = {k: (b[k] - a[k]) / span for k in ("busy", "service", "postgres", "redis", "publisher")}
    share["ours"] = share["service"] + share["postgres"] + share["redis"] + share["publisher"]
    share["others"] = max(share["busy"] - share["ours"], 0.0)
    share["span"] = span
    return share


def quantile(sorted_values, q):
    return sorted_values[min(int(q * len(sorted_values)), len(sorted_values) - 1)]


def report(latencies_path, cpu_path, log_path, slow_ms=50.0):
    samples = []
    with open(latencies_path) as f:
        for line in f:
            commit, latency = line.split(",")
            samples.append((int(commit) / 1e6, float(latency)))
    samples.sort()
    cpu = load_cpu(cpu_path)
    events = pg_events(log_path)
    values = sorted(s[1] for s in samples)
    slow = [s for s in samples if s[1] > slow_ms]
    print(f"rows {len(samples)}, p50 {quantile(values, 0.5):.1f} ms, p99 {quantile(values, 0.99):.1f} ms, "
          f"max {values[-1]:.0f} ms; slower than {slow_ms:.0f} ms: {len(slow)} ({100 * len(slow) / len(samples):.2f}%)")
    whole = cpu_between(cpu, samples[0][0], samples[-1][0])
    if whole:
        print(f"whole run, share of a core: machine {whole['busy']:.2f} (2 cores: 2.00), service {whole['service']:.2f}, "
              f"postgres {whole['postgres']:.2f}, redis {whole['redis']:.2f}, publisher {whole['publisher']:.2f}, "
              f"other jobs {whole['others']:.2f}")
    episodes = []
    for commit, latency in slow:
        waited_from = commit - latency / 1e3
        if episodes and commit - episodes[-1]["last"] < 0.25:
            e = episodes[-1]
            e["from"] = min(e["from"], waited_from)
            e["last"] = commit
            e["rows"] += 1
            e["max"] = max(e["max"], latency)
        else:
            episodes.append({"from": waited_from, "last": commit, "rows": 1, "max": latency})
    print(f"{len(episodes)} episodes (slow commits < 250 ms apart), worst first by rows:")
    print("start(s into run)  span_ms  rows  max_ms | machine  ours  others (cores) | postgres log meanwhile")
    t0 = samples[0][0]
    for e in sorted(episodes, key=lambda e: -e["rows"])[:25]:
        share = cpu_between(cpu, e["from"], e["last"])
        during = [w for (s, end, w) in events if s <= e["last"] and end >= e["from"] - 0.05]
        cpu_text = (f"{share['busy']:.2f}  {share['ours']:.2f}  {share['others']:.2f}" if share else "-")
        print(f"{e['from'] - t0:8.2f}  {1e3 * (e['last'] - e['from']):8.0f}  {e['rows']:5d}  {e['max']:6.0f} | "
              f"{cpu_text} | {'; '.join(during[:4]) or '-'}")
    in_log = sum(e["rows"] for e in episodes
                 if any(s <= e["last"] and end >= e["from"] - 0.05 for (s, end, _) in events))
    print(f"slow rows in episodes that overlap something Postgres logged: {in_log} of {len(slow)}")


if __name__ == "__main__":
    if sys.argv[1] == "sample":
        sample(*sys.argv[2:7])
    elif sys.argv[1] == "report":
        report(sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5]) if len(sys.argv) > 5 else 50.0)
    else:
        sys.exit(__doc__)
