#!/usr/bin/env python3
"""Source of the swisper-ingest Grafana dashboard.

Writes helm/swisper-ingest/dashboards/swisper-ingest.json (the chart ships it
as a ConfigMap for Grafana's sidecar; it also imports by hand). Run it after a
change here, through deploy/generate.sh; tests/deploy/run.sh fails when the
JSON differs from what this script writes, and checks every query with
promtool.

Usage: dashboard.py [OUTPUT]   (default: print to stdout)
"""

import json
import sys

DS = {"type": "prometheus", "uid": "${datasource}"}
# Every series of this deployment; group-level gauges are the same on every
# replica, so they are aggregated with max, not sum.
SEL = 'namespace=~"$namespace"'
POD = 'namespace=~"$namespace", pod=~"$pod"'


class Layout:
    """Places panels left to right on Grafana's 24-column grid."""

    def __init__(self):
        self.y = 0
        self.x = 0
        self.row_height = 0
        self.next_id = 1
        self.panels = []

    def _id(self):
        self.next_id += 1
        return self.next_id - 1

    def row(self, title):
        self.newline()
        self.panels.append(
            {
                "type": "row",
                "id": self._id(),
                "title": title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y},
                "panels": [],
            }
        )
        self.y += 1

    def newline(self):
        self.y += self.row_height
        self.x = 0
        self.row_height = 0

    def add(self, panel, w, h):
        if self.x + w > 24:
            self.newline()
        panel["id"] = self._id()
        panel["gridPos"] = {"h": h, "w": w, "x": self.x, "y": self.y}
        self.x += w
        self.row_height = max(self.row_height, h)
        self.panels.append(panel)


def targets(*queries):
    return [
        {"datasource": DS, "expr": expr, "legendFormat": legend, "refId": chr(ord("A") + i)}
        for i, (expr, legend) in enumerate(queries)
    ]


def timeseries(title, description, unit, *queries, stack=False):
    custom = {"lineWidth": 1, "fillOpacity": 10, "showPoints": "never"}
    if stack:
        custom["stacking"] = {"mode": "normal", "group": "A"}
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": DS,
        "fieldConfig": {"defaults": {"unit": unit, "custom": custom}, "overrides": []},
        "options": {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        "targets": targets(*queries),
    }


def stat(title, description, unit, query, thresholds=None):
    steps = [{"color": "green", "value": None}]
    for value, color in thresholds or []:
        steps.append({"color": color, "value": value})
    return {
        "type": "stat",
        "title": title,
        "description": description,
        "datasource": DS,
        "fieldConfig": {
            "defaults": {"unit": unit, "thresholds": {"mode": "absolute", "steps": steps}},
            "overrides": [],
        },
        "options": {
            "colorMode": "value",
            "graphMode": "area",
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        },
        "targets": targets((query, "")),
    }


def quantiles(metric, by=""):
    """p50, p95 and p99 of a histogram, optionally per label."""
    group = f"le{', ' + by if by else ''}"
    legend = f"{{{{{by}}}}} " if by else ""
    return [
        (
            f"histogram_quantile({q}, sum by ({group}) (rate({metric}_bucket{{{POD}}}[$__rate_interval])))",
            f"{legend}p{int(q * 100)}",
        )
        for q in (0.5, 0.95, 0.99)
    ]


def build():
    L = Layout()
    backlog = (
        f"max(swisper_ingest_group_lag{{{SEL}}}) + max(swisper_ingest_pending_entries{{{SEL}}})"
    )

    L.row("Overview")
    L.add(stat("Ready replicas", "Replicas whose /readyz is 200 (Redis, Postgres and the group reachable).",
               "short", f"sum(swisper_ingest_ready{{{POD}}})"), 3, 4)
    L.add(stat("Backlog", "Entries waiting for the group: lag (not yet delivered) plus pending (delivered, not acked). Alert above 10,000.",
               "short", backlog, [(1000, "yellow"), (10000, "red")]), 3, 4)
    L.add(stat("Stored / s", "Entries stored per second, all replicas.", "ops",
               f'sum(rate(swisper_ingest_events_total{{{POD}, outcome="stored"}}[$__rate_interval]))'), 3, 4)
    L.add(stat("Dead letters (1h)", "Entries written to swisper_ingest.dead_letters in the last hour.", "short",
               f"sum(increase(swisper_ingest_dead_letters_total{{{POD}}}[1h]))", [(1, "red")]), 3, 4)
    L.add(stat("Oldest pending", "Age of the oldest delivered but unacknowledged entry.", "s",
               f"max(swisper_ingest_oldest_pending_age_seconds{{{SEL}}})", [(60, "yellow"), (300, "red")]), 3, 4)
    L.add(stat("End-to-end p95", "Commit time minus publish time, 95th percentile.", "s",
               f"histogram_quantile(0.95, sum by (le) (rate(swisper_ingest_end_to_end_latency_seconds_bucket{{{POD}}}[$__rate_interval])))",
               [(5, "yellow"), (30, "red")]), 3, 4)
    # Both metrics are absent from replicas older than them (and the counter
    # until its first increment): "or vector(0)" shows 0 instead of no data.
    L.add(stat("Poison protection", "Replicas where poison protection holds consumption: a run of bad entries (a broken producer) past OBSERVABILITY_POISON_RUN. Alert SwisperIngestPoisoned.",
               "short", f"sum(swisper_ingest_poisoned{{{POD}}}) or vector(0)", [(1, "red")]), 3, 4)
    L.add(stat("Trimmed unread", "Entries deleted from the stream (a producer's MAXLEN) before they were stored: unread entries the group will never see, while Redis can tell, plus pending entries trimmed in the last hour. Data loss; alert SwisperIngestEntriesTrimmedUnread.",
               "short", f"(max(swisper_ingest_trimmed_before_delivery{{{SEL}}}) or vector(0)) + (sum(increase(swisper_ingest_trimmed_before_ack_total{{{POD}}}[1h])) or vector(0))",
               [(1, "red")]), 3, 4)

    L.row("Throughput")
    L.add(timeseries("Events by outcome", "Stream entries handled per second: stored, dead_lettered, heartbeat, expired (late events of forgotten traces).", "ops",
                     (f"sum by (outcome) (rate(swisper_ingest_events_total{{{POD}}}[$__rate_interval]))", "{{outcome}}"),
                     stack=True), 12, 8)
    L.add(timeseries("Stored events by type", "Stored entries per second by event_type.", "ops",
                     (f'sum by (event_type) (rate(swisper_ingest_events_total{{{POD}, outcome="stored"}}[$__rate_interval]))', "{{event_type}}"),
                     stack=True), 12, 8)
    L.add(timeseries("Acked and claimed", "XACK after commit; XAUTOCLAIM of entries whose consumer went idle.", "ops",
                     (f"sum(rate(swisper_ingest_acked_total{{{POD}}}[$__rate_interval]))", "acked"),
                     (f"sum(rate(swisper_ingest_claimed_total{{{POD}}}[$__rate_interval]))", "claimed")), 12, 8)
    L.add(timeseries("End-to-end latency", "Commit time minus the event's publish timestamp.", "s",
                     *quantiles("swisper_ingest_end_to_end_latency_seconds")), 12, 8)

    L.row("Backlog")
    L.add(timeseries("Group lag and pending", "Lag: entries not yet delivered to the group. Pending: delivered, not acknowledged.", "short",
                     (f"max(swisper_ingest_group_lag{{{SEL}}})", "lag"),
                     (f"max(swisper_ingest_pending_entries{{{SEL}}})", "pending")), 8, 8)
    L.add(timeseries("Stream length", "XLEN of the stream: acknowledged entries stay until trimmed.", "short",
                     (f"max(swisper_ingest_stream_length{{{SEL}}})", "stream length")), 8, 8)
    L.add(timeseries("Oldest pending entry", "Age of the oldest delivered but unacknowledged entry; alert above 5 minutes.", "s",
                     (f"max(swisper_ingest_oldest_pending_age_seconds{{{SEL}}})", "oldest pending")), 8, 8)

    L.row("Writes")
    L.add(timeseries("Batch size", "Entries per committed batch: quantiles and mean.", "short",
                     *quantiles("swisper_ingest_batch_size_entries"),
                     (f"sum(rate(swisper_ingest_batch_size_entries_sum{{{POD}}}[$__rate_interval])) / sum(rate(swisper_ingest_batch_size_entries_count{{{POD}}}[$__rate_interval]))", "mean")),
          12, 8)
    L.add(timeseries("Write duration", "Time to commit one batch, retries included.", "s",
                     *quantiles("swisper_ingest_write_duration_seconds")), 12, 8)

    L.row("Studio tables")
    L.add(timeseries("LLM costs", "Observation ends with LLM usage per second, by outcome: priced (calculated_*_cost written), no_price (the model has no row in the studio's model_pricing), not_billable (no model, or a zero token count). Costs are computed as the studio does.", "ops",
                     (f"sum by (outcome) (rate(swisper_ingest_costs_total{{{POD}}}[$__rate_interval]))", "{{outcome}}"),
                     stack=True), 12, 8)
    L.add(timeseries("Projects, conflicts, unknown types", "Projects created on first sight (standalone databases), transactions run again because another writer inserted one of their new rows first, and observation types outside the studio's enum (stored as SPAN, the original in meta._ingest_original_type); per second.", "ops",
                     (f"sum(rate(swisper_ingest_projects_created_total{{{POD}}}[$__rate_interval])) or vector(0)", "projects created"),
                     (f"sum(rate(swisper_ingest_write_conflicts_total{{{POD}}}[$__rate_interval])) or vector(0)", "write conflicts"),
                     (f"sum(rate(swisper_ingest_unknown_observation_types_total{{{POD}}}[$__rate_interval])) or vector(0)", "unknown types")), 12, 8)

    L.row("Errors")
    L.add(timeseries("Dead letters by reason", "Entries dead-lettered per second; see swisper_ingest.dead_letters.reason_code. unknown_project and project_mismatch have alerts of their own.", "ops",
                     (f"sum by (reason) (rate(swisper_ingest_dead_letters_total{{{POD}}}[$__rate_interval]))", "{{reason}}")), 8, 8)
    L.add(timeseries("Redis and Postgres errors", "Failed Redis commands by operation; failed Postgres writes by kind.", "ops",
                     (f"sum by (operation) (rate(swisper_ingest_redis_errors_total{{{POD}}}[$__rate_interval]))", "redis {{operation}}"),
                     (f"sum by (kind) (rate(swisper_ingest_postgres_errors_total{{{POD}}}[$__rate_interval]))", "postgres {{kind}}")), 8, 8)
    L.add(timeseries("Restarts", "Actor restarts by the supervisor, and container restarts (kube-state-metrics).", "short",
                     (f"sum by (actor) (increase(swisper_ingest_actor_restarts_total{{{POD}}}[$__rate_interval]))", "actor {{actor}}"),
                     (f'sum by (pod) (increase(kube_pod_container_status_restarts_total{{{POD}, container="swisper-ingest"}}[$__rate_interval]))', "container {{pod}}")), 8, 8)

    L.row("Per replica")
    L.add(timeseries("Stored / s per replica", "How the group spreads work over replicas.", "ops",
                     (f'sum by (pod) (rate(swisper_ingest_events_total{{{POD}, outcome="stored"}}[$__rate_interval]))', "{{pod}}")), 8, 8)
    L.add(timeseries("Write duration p95 per replica", "95th percentile commit time per replica.", "s",
                     (f"histogram_quantile(0.95, sum by (le, pod) (rate(swisper_ingest_write_duration_seconds_bucket{{{POD}}}[$__rate_interval])))", "{{pod}}")), 8, 8)
    L.add(timeseries("Seconds since last commit", "Per replica; grows while a replica commits nothing.", "s",
                     (f"time() - max by (pod) (swisper_ingest_last_commit_timestamp_seconds{{{POD}}})", "{{pod}}")), 8, 8)
    L.add(timeseries("Ready per replica", "1 when ready, 0 when not (or draining).", "short",
                     (f"max by (pod) (swisper_ingest_ready{{{POD}}})", "{{pod}}")), 12, 6)
    L.add(timeseries("Mean batch size per replica", "Entries per committed batch, per replica.", "short",
                     (f"sum by (pod) (rate(swisper_ingest_batch_size_entries_sum{{{POD}}}[$__rate_interval])) / sum by (pod) (rate(swisper_ingest_batch_size_entries_count{{{POD}}}[$__rate_interval]))", "{{pod}}")), 12, 6)

    L.row("Process")
    # process_* names are generic: keep the series scraped with this service's own.
    ours = f"and on (namespace, pod, instance) swisper_ingest_build_info{{{POD}}}"
    L.add(timeseries("Resident memory", "process_resident_memory_bytes per replica; compare with the container's memory limit.", "bytes",
                     (f"max by (pod) (process_resident_memory_bytes{{{POD}}} {ours})", "{{pod}}")), 8, 8)
    L.add(timeseries("CPU", "CPU seconds per second per replica (1 = one core).", "short",
                     (f"sum by (pod) (rate(process_cpu_seconds_total{{{POD}}}[$__rate_interval]) {ours})", "{{pod}}")), 8, 8)
    L.add(timeseries("Open file descriptors", "Open descriptors per replica, and the limit.", "short",
                     (f"max by (pod) (process_open_fds{{{POD}}} {ours})", "{{pod}}"),
                     (f"max(process_max_fds{{{POD}}} {ours})", "limit")), 8, 8)

    L.row("Memory budget")
    # The budget bounds the weight of the entries a replica holds (read, not
    # yet committed and acked); docs/operations.md, "The numbers that matter".
    L.add(timeseries("Memory in hand and budget", "Weight of the entries in hand (read, not yet committed and acked) per replica, against its budget (OBSERVABILITY_MEMORY_BUDGET_BYTES, by default 3/8 of the container's memory limit). At the budget for long while the lag grows: big entries are read a few at a time; raise the memory limit if throughput matters.", "bytes",
                     (f"max by (pod) (swisper_ingest_memory_in_hand_bytes{{{POD}}})", "in hand {{pod}}"),
                     (f"max by (pod) (swisper_ingest_memory_budget_bytes{{{POD}}})", "budget {{pod}}")), 8, 8)
    L.add(timeseries("Memory budget used", "Entries in hand as a share of the budget, per replica; 100% means reads wait for commits.", "percentunit",
                     (f"max by (pod) (swisper_ingest_memory_in_hand_bytes{{{POD}}}) / max by (pod) (swisper_ingest_memory_budget_bytes{{{POD}}} > 0)", "{{pod}}")), 8, 8)
    L.add(timeseries("Entries heavier than the budget", "Entries heavier than the whole memory budget, each processed alone, per second and replica (swisper_ingest_oversized_for_budget_total). Often: raise the memory limit, or lower config.maxEntryBytes.", "ops",
                     (f"sum by (pod) (rate(swisper_ingest_oversized_for_budget_total{{{POD}}}[$__rate_interval])) or vector(0)", "{{pod}}")), 8, 8)

    L.row("Retention")
    L.add(timeseries("Retention: rows forgotten", "Rows forgotten per second by table (traces leave with all their observations); docs/operations.md, Retention.", "ops",
                     (f"sum by (table) (rate(swisper_ingest_retention_forgotten_rows_total{{{POD}}}[$__rate_interval]))", "{{table}}")), 8, 8)
    L.add(timeseries("Retention: behind and last run", "Behind: how far past its horizon the oldest stored trace is (0 when on time). Since last run: time since the lock holder completed a run. Alert SwisperIngestRetentionBehind above 1 hour.", "s",
                     (f"max(swisper_ingest_retention_behind_seconds{{{SEL}}})", "behind"),
                     (f"time() - max(swisper_ingest_retention_last_run_timestamp_seconds{{{SEL}}})", "since last run")), 8, 8)
    L.add(timeseries("Late events and retention batches", "Events of traces past their horizon (acked, not stored), and the p99 time of one retention transaction.", "short",
                     (f'sum(rate(swisper_ingest_events_total{{{POD}, outcome="expired"}}[$__rate_interval]))', "late events / s"),
                     (f"histogram_quantile(0.99, sum by (le) (rate(swisper_ingest_retention_batch_duration_seconds_bucket{{{POD}}}[$__rate_interval])))", "batch p99 (s)")), 8, 8)

    L.row("SDK")
    L.add(timeseries("SDK heartbeat age by project", "Age of the newest SDK heartbeat per project; alert above 5 minutes.", "s",
                     (f"max by (project_id) (swisper_ingest_sdk_heartbeat_age_seconds{{{SEL}}})", "{{project_id}}")), 16, 8)
    L.add(timeseries("Version", "Replicas per running version.", "short",
                     (f"count by (version) (swisper_ingest_build_info{{{POD}}})", "{{version}}")), 8, 8)

    return {
        "uid": "swisper-ingest",
        "title": "swisper-ingest",
        "description": "SwisperStudio ingestion: Redis Streams consumer group to PostgreSQL.",
        "tags": ["swisper-ingest", "observability"],
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-3h", "to": "now"},
        "timezone": "",
        "annotations": {"list": []},
        "links": [],
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Data source",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                },
                {
                    "name": "namespace",
                    "label": "Namespace",
                    "type": "query",
                    "datasource": DS,
                    "query": {"query": "label_values(swisper_ingest_build_info, namespace)", "refId": "namespace"},
                    "definition": "label_values(swisper_ingest_build_info, namespace)",
                    "refresh": 2,
                    "current": {},
                    "hide": 0,
                    "includeAll": False,
                    "multi": False,
                    "sort": 1,
                },
                {
                    "name": "pod",
                    "label": "Replica",
                    "type": "query",
                    "datasource": DS,
                    "query": {"query": 'label_values(swisper_ingest_build_info{namespace=~"$namespace"}, pod)', "refId": "pod"},
                    "definition": 'label_values(swisper_ingest_build_info{namespace=~"$namespace"}, pod)',
                    "refresh": 2,
                    "current": {},
                    "hide": 0,
                    "includeAll": True,
                    "allValue": ".*",
                    "multi": True,
                    "sort": 1,
                },
            ]
        },
        "panels": L.panels,
    }


def main():
    text = json.dumps(build(), indent=2, ensure_ascii=False) + "\n"
    if len(sys.argv) > 1:
        with open(sys.argv[1], "w", encoding="utf-8") as out:
            out.write(text)
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main()
