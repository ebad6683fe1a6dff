#!/usr/bin/env python3
"""Checks the Grafana dashboard offline.

1. Structure: valid JSON, a uid and title, unique panel ids, panels inside the
   24-column grid and not overlapping, every query panel on the ${datasource}
   variable with at least one target.
2. Every query (panel targets and label_values() selectors of the template
   variables), with Grafana's variables replaced by sample values, is written
   as a recording rule and checked by `promtool check rules` (it parses).
3. A promtool unit test evaluates each query against synthetic series of
   every swisper_ingest_* metric of the service's contract and expects a
   non-empty result: a misspelt metric or label returns nothing and fails.
4. Every metric a query selects, and every metric of that contract, is one
   the service declares in src/metrics.rs (or kube-state-metrics'); and the
   memory budget's metrics each have a panel.

Usage: check_dashboard.py DASHBOARD.json PROMTOOL WORKDIR METRICS.rs
"""

import json
import re
import subprocess
import sys
from pathlib import Path

VARIABLES = {
    "$__rate_interval": "2m",
    "$__interval": "1m",
    "$__range": "1h",
    "${namespace}": "obs",
    "$namespace": "obs",
    "${pod}": ".*",
    "$pod": ".*",
}

# The service's metrics (docs/operations.md lists them) and their label sets.
PODS = [("p-0", "10.0.0.1:8080"), ("p-1", "10.0.0.2:8080")]
COUNTERS = {
    "swisper_ingest_events_total": [
        {"event_type": t, "outcome": o}
        for t in ("trace_start", "observation_start", "observation_end")
        for o in ("stored", "dead_lettered", "expired")
    ]
    + [{"event_type": "heartbeat", "outcome": "heartbeat"}],
    "swisper_ingest_dead_letters_total": [{"reason": "invalid_data"}, {"reason": "too_large"}],
    "swisper_ingest_claimed_total": [{}],
    "swisper_ingest_acked_total": [{}],
    "swisper_ingest_redis_errors_total": [{"operation": "xreadgroup"}, {"operation": "xack"}],
    "swisper_ingest_postgres_errors_total": [{"kind": k} for k in ("unavailable", "data", "read_only", "statement_timeout")],
    "swisper_ingest_trimmed_before_ack_total": [{}],
    "swisper_ingest_actor_restarts_total": [{"actor": "consumer"}, {"actor": "writer"}],
    "process_cpu_seconds_total": [{}],
    "swisper_ingest_retention_forgotten_rows_total": [{"table": "traces"}, {"table": "observations"}],
    "swisper_ingest_retention_errors_total": [{}],
    "swisper_ingest_costs_total": [{"outcome": o} for o in ("priced", "no_price", "not_billable")],
    "swisper_ingest_projects_created_total": [{}],
    "swisper_ingest_write_conflicts_total": [{}],
    "swisper_ingest_unknown_observation_types_total": [{}],
    "swisper_ingest_oversized_for_budget_total": [{}],
}
GAUGES = {
    "swisper_ingest_stream_length": [{}],
    "swisper_ingest_group_lag": [{}],
    "swisper_ingest_pending_entries": [{}],
    "swisper_ingest_oldest_pending_age_seconds": [{}],
    "swisper_ingest_ready": [{}],
    "swisper_ingest_last_commit_timestamp_seconds": [{}],
    "swisper_ingest_sdk_heartbeat_age_seconds": [{"project_id": "proj-a"}, {"project_id": "proj-b"}],
    "swisper_ingest_build_info": [{"version": "0.1.0"}],
    "swisper_ingest_poisoned": [{}],
    "swisper_ingest_trimmed_before_delivery": [{}],
    "process_resident_memory_bytes": [{}],
    "process_open_fds": [{}],
    "process_max_fds": [{}],
    "swisper_ingest_retention_behind_seconds": [{}],
    "swisper_ingest_retention_last_run_timestamp_seconds": [{}],
    "swisper_ingest_retention_holder": [{}],
    "swisper_ingest_memory_budget_bytes": [{}],
    "swisper_ingest_memory_in_hand_bytes": [{}],
}
HISTOGRAMS = {
    "swisper_ingest_batch_size_entries": [1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000],
    "swisper_ingest_write_duration_seconds": [0.001, 0.01, 0.1, 0.5, 1, 5, 30],
    "swisper_ingest_end_to_end_latency_seconds": [0.001, 0.01, 0.1, 0.5, 1, 5, 30],
    "swisper_ingest_retention_batch_duration_seconds": [0.001, 0.01, 0.1, 0.5, 1, 5, 30],
}


# Metrics the dashboard reads that the service does not export.
EXTERNAL = {"kube_pod_container_status_restarts_total"}
# Metrics that must have a panel: what an operator needs to size the memory.
REQUIRED = {
    "swisper_ingest_memory_budget_bytes",
    "swisper_ingest_memory_in_hand_bytes",
    "swisper_ingest_oversized_for_budget_total",
}


def declared_metrics(metrics_rs):
    """The metric names src/metrics.rs declares (pub const X: &str = "...")."""
    text = Path(metrics_rs).read_text(encoding="utf-8")
    return set(re.findall(r'pub const [A-Z0-9_]+: &str = "([a-z_:][a-z0-9_:]*)";', text))


def selected_metrics(expr):
    """Metric names a query selects: every name with a {selector}, or the
    whole expression when it is a bare name (label_values(name, label))."""
    names = set(re.findall(r"^\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*$", expr))
    for name in re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{", expr):
        names.add(re.sub(r"_(bucket|sum|count)$", "", name) if name.endswith(("_bucket", "_sum", "_count")) else name)
    return names


def check_metrics(found, declared, problems):
    if not declared:
        problems.append("no metric names found in src/metrics.rs")
        return
    used = set()
    for where, expr in found:
        names = selected_metrics(expr)
        if not names:
            problems.append(f"{where}: selects no metric with a {{selector}}")
        for name in names:
            if name not in declared and name not in EXTERNAL:
                problems.append(f"{where}: metric {name} is not declared in src/metrics.rs")
            used.add(name)
    for name in sorted(set(COUNTERS) | set(GAUGES) | set(HISTOGRAMS)):
        if name not in declared and name not in EXTERNAL:
            problems.append(f"contract metric {name} is not declared in src/metrics.rs")
    for name in sorted(REQUIRED - used):
        problems.append(f"no panel shows {name}")


def fail(problems):
    for p in problems:
        print(f"dashboard: {p}", file=sys.stderr)
    sys.exit(1)


def selector(labels):
    return "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"


def input_series():
    series = []
    for pod, instance in PODS:
        base = {"namespace": "obs", "job": "swisper-ingest", "pod": pod, "instance": instance}
        for name, label_sets in COUNTERS.items():
            for extra in label_sets:
                series.append((name + selector({**base, **extra}), "0+7x30"))
        for name, label_sets in GAUGES.items():
            for extra in label_sets:
                series.append((name + selector({**base, **extra}), "5x30"))
        for name, bounds in HISTOGRAMS.items():
            for i, le in enumerate([*map(str, bounds), "+Inf"]):
                series.append((f"{name}_bucket" + selector({**base, "le": le}), f"0+{i + 1}x30"))
            series.append((f"{name}_sum" + selector(base), "0+3x30"))
            series.append((f"{name}_count" + selector(base), f"0+{len(bounds) + 1}x30"))
        ksm = {"namespace": "obs", "job": "kube-state-metrics", "instance": "ksm:8080",
               "pod": pod, "container": "swisper-ingest"}
        series.append(("kube_pod_container_status_restarts_total" + selector(ksm), "0+1x30"))
    return series


def substitute(expr):
    for var, value in sorted(VARIABLES.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(var, value)
    left = re.findall(r"\$\{?[A-Za-z_]\w*", expr)
    return expr, left


def queries(dash, problems):
    """(where, expr) of every panel target and variable selector."""
    found = []
    for var in dash.get("templating", {}).get("list", []):
        if var.get("type") != "query":
            continue
        q = var.get("query")
        q = q.get("query", "") if isinstance(q, dict) else (q or "")
        m = re.fullmatch(r"\s*label_values\((.*),\s*([A-Za-z_]\w*)\s*\)\s*", q)
        if not m:
            problems.append(f"variable {var.get('name')}: query {q!r} is not label_values(selector, label)")
            continue
        found.append((f"variable {var['name']}", m.group(1)))
    for panel in dash.get("panels", []):
        for t in panel.get("targets", []):
            found.append((f"panel {panel.get('id')} {panel.get('title')!r} {t.get('refId')}", t.get("expr", "")))
    return found


def check_structure(dash, problems):
    for key in ("uid", "title", "panels", "templating", "schemaVersion"):
        if key not in dash:
            problems.append(f"missing top-level {key}")
    names = {v.get("name") for v in dash.get("templating", {}).get("list", [])}
    for needed in ("datasource", "namespace", "pod"):
        if needed not in names:
            problems.append(f"missing template variable {needed}")
    ids = set()
    cells = {}
    for panel in dash.get("panels", []):
        pid = panel.get("id")
        if pid in ids:
            problems.append(f"duplicate panel id {pid}")
        ids.add(pid)
        g = panel.get("gridPos") or {}
        if not all(isinstance(g.get(k), int) for k in ("x", "y", "w", "h")):
            problems.append(f"panel {pid}: gridPos needs integer x, y, w, h")
            continue
        if g["x"] < 0 or g["w"] < 1 or g["x"] + g["w"] > 24:
            problems.append(f"panel {pid}: outside the 24-column grid")
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                if (x, y) in cells:
                    problems.append(f"panel {pid} overlaps panel {cells[(x, y)]}")
                    break
                cells[(x, y)] = pid
            else:
                continue
            break
        if panel.get("type") == "row":
            continue
        if not panel.get("title"):
            problems.append(f"panel {pid}: no title")
        if (panel.get("datasource") or {}).get("uid") != "${datasource}":
            problems.append(f"panel {pid}: datasource is not the ${{datasource}} variable")
        targets = panel.get("targets") or []
        if not targets:
            problems.append(f"panel {pid}: no query")
        for t in targets:
            if not t.get("expr"):
                problems.append(f"panel {pid}: target {t.get('refId')} has no expr")


def main():
    dash_path, promtool, workdir, metrics_rs = sys.argv[1], sys.argv[2], Path(sys.argv[3]), sys.argv[4]
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        dash = json.loads(Path(dash_path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        fail([f"{dash_path}: {e}"])
    problems = []
    check_structure(dash, problems)
    found = queries(dash, problems)
    if not found:
        problems.append("no queries found")
    check_metrics(found, declared_metrics(metrics_rs), problems)
    exprs = []
    for where, raw in found:
        expr, left = substitute(raw)
        if left:
            problems.append(f"{where}: unknown variables {left} in {raw!r}")
        exprs.append((where, expr))
    if problems:
        fail(problems)

    # 2. Every query parses: one recording rule each.
    rules = workdir / "dashboard.rules.yaml"
    lines = ["groups:", "  - name: dashboard-queries", "    rules:"]
    for i, (where, expr) in enumerate(exprs):
        lines += [f"      - record: dashboard:query_{i}", f"        expr: {json.dumps(expr)}"]
    rules.write_text("\n".join(lines) + "\n", encoding="utf-8")
    check = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True)
    if check.returncode != 0:
        index = "\n".join(f"  dashboard:query_{i} = {w}: {e}" for i, (w, e) in enumerate(exprs))
        fail([f"promtool check rules failed:\n{check.stdout}{check.stderr}", f"queries:\n{index}"])

    # 3. Every query returns data from the contract's metrics.
    test = workdir / "dashboard.test.yaml"
    lines = ["rule_files: []", "evaluation_interval: 1m", "tests:"]
    for i, (where, expr) in enumerate(exprs):
        lines += [
            f"  - name: {json.dumps(where)}",
            "    interval: 1m",
            "    input_series:",
        ]
        for series, values in input_series():
            lines += [f"      - series: {json.dumps(series)}", f"        values: {json.dumps(values)}"]
        lines += [
            "    promql_expr_test:",
            f"      - expr: {json.dumps(f'count({expr}) > bool 0')}",
            "        eval_time: 20m",
            "        exp_samples:",
            "          - labels: '{}'",
            "            value: 1",
        ]
    test.write_text("\n".join(lines) + "\n", encoding="utf-8")
    run = subprocess.run([promtool, "test", "rules", str(test)], capture_output=True, text=True)
    if run.returncode != 0:
        fail([f"a query returns no data from the service's metrics:\n{run.stdout[-4000:]}{run.stderr[-2000:]}"])
    print(f"dashboard: {len(exprs)} queries parse and return data; "
          f"{len(dash['panels'])} panels laid out without overlap")


if __name__ == "__main__":
    main()
