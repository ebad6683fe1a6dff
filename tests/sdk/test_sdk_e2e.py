"""swisper-ingest against the real client: swisper-studio-sdk 0.14.3 from
PyPI tracing real LangGraph graphs, the service storing what it publishes.

Run with tests/sdk/run.sh (it starts the service on a fresh database and
stream). Two kinds of truth are checked:

* graph truth: what each node saw and returned, recorded by the nodes
  themselves, must be what Postgres holds as the observation's input and
  output (decompressed), in the right place of the tree;
* wire truth: every entry the SDK wrote to the stream (read back with XRANGE
  and expanded) must be stored in SwisperStudio's own tables (public.traces,
  public.observations) as docs/event-format.md says: the end's type and
  level (an error's always ERROR), an error's message as status_message,
  data.meta's keys and every key without a column in `meta`, model and
  token counts by the studio's rule (estimated when the SDK reports no
  total), costs from model_pricing, times as naive UTC, no row that the
  stream did not ask for, no dead letter, and the merge state beside every
  row in schema swisper_ingest.

The tests run in file order and share one SDK loop: the heartbeat test needs
the heartbeats started by the first graph run, and the consumer-check test
stops the service, so it comes last.
"""

import json
import os
from decimal import Decimal
import signal
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from datetime import datetime, timezone
from typing import Optional, TypedDict

import pytest
from conftest import PRICES, SDK_VERSION, WireEvent, http_get, naive_utc, query, read_stream, wait_for

MAIN_GRAPH = "sdk_e2e_agent"
INNER_GRAPH = "inner_agent"
HITL_GRAPH = "hitl_agent"
MAIN_NODES = ["intake", "research_agent", "llm_node", "review", "finalize"]

# Over 1 KB, so that every event carrying it is compressed by the SDK.
DOCUMENT = " ".join(f"Paragraph {i}: the Swiss rail network links {i * 7} towns." for i in range(60))
FAIL_MESSAGE = "boom: finalize could not publish the answer"
LLM_MODEL = "gpt-4o-mini"
SYSTEM_PROMPT = "You are terse."
TOOL_ERRORS = {"geo_lookup": "Error: upstream HTTP 503"}

RUN_FAIL_INPUT = {
    "user_message": "What is the capital of France? Answer briefly and cite sources.",
    "user_id": "user-42",
    "chat_id": "chat-e2e-1",
    "fail": True,
    "document": DOCUMENT,
}
RUN_OK_INPUT = {
    "user_message": "Summarise the rail network. Keep it short.",
    "user_id": "user-43",
    "chat_id": "chat-e2e-2",
    "fail": False,
    "document": DOCUMENT,
}
HITL_INPUT = {"user_message": "Book a train to the capital!", "chat_id": "chat-e2e-3"}
HITL_ANSWER = "Zurich"

# The studio's LLM columns of observations and their types. Cached and
# thought tokens and the latency have no column: they stay in the output.
LLM_COLUMNS = {
    "model": "character varying",
    "prompt_tokens": "integer",
    "completion_tokens": "integer",
    "total_tokens": "integer",
    "calculated_input_cost": "numeric",
    "calculated_output_cost": "numeric",
    "calculated_total_cost": "numeric",
}
OBSERVATION_TYPES = {"SPAN", "GENERATION", "EVENT", "TOOL", "AGENT"}


def jsonable(value):
    return json.loads(json.dumps(value))


# What each node and traced helper saw and returned, per call, in call order.
SEEN: dict = defaultdict(list)


def record(name: str, state: dict, output: Optional[dict]) -> None:
    SEEN[name].append({"input": jsonable(state), "output": jsonable(output) if output is not None else None})


# ------------------------------------------------------------------ the graphs


class MainState(TypedDict, total=False):
    user_message: str
    user_id: str
    chat_id: str
    fail: bool
    document: str
    normalized: str
    facts: list
    sub_result: dict
    answer: str
    errors: dict
    _tools_executed: list
    summary: str


class InnerState(TypedDict, total=False):
    topic: str
    pad: str
    sub_out: dict


class HitlState(TypedDict, total=False):
    user_message: str
    chat_id: str
    plan: str
    city: str


def build_graphs() -> dict:
    """Built after auto_trace(): the patched StateGraph traces every node and
    every compiled graph's ainvoke, as in a Swisper application."""
    from langgraph.checkpoint.memory import InMemorySaver
    from langgraph.graph import END, START, StateGraph
    from langgraph.types import interrupt
    from swisper_studio_sdk import set_trace_name, traced

    @traced(name="lookup_facts")
    async def lookup_facts(request: dict) -> dict:
        # A traced helper inside a node: a child of the node's observation.
        out = {"facts": [f"{request['topic']} fact {i}: " + "z" * 40 for i in range(30)]}
        record("lookup_facts", request, out)
        return out

    async def inner_step(state: InnerState) -> dict:
        out = {"sub_out": {"topic": state["topic"], "pad_length": len(state["pad"])}}
        record("inner_step", state, out)
        return out

    inner = StateGraph(InnerState)
    set_trace_name(inner, INNER_GRAPH)
    inner.add_node("inner_step", inner_step)
    inner.add_edge(START, "inner_step")
    inner.add_edge("inner_step", END)
    inner_app = inner.compile()

    async def intake(state: MainState) -> dict:
        out = {"normalized": state["document"].upper()}
        record("intake", state, out)
        return out

    async def research_agent(state: MainState) -> dict:
        facts = await lookup_facts({"topic": "France", "pad": "p" * 1200})
        # A nested traced graph that succeeds (a failing one is run twice by
        # SDK 0.14.3, see docs/sdk.md).
        sub = await inner_app.ainvoke({"topic": "geography", "pad": "q" * 1100})
        out = {"facts": facts["facts"], "sub_result": sub["sub_out"]}
        record("research_agent", state, out)
        return out

    async def llm_node(state: MainState) -> dict:
        from swisper.gateways.llm.adapter import GenerateRequest, Message, SwisperLLMAdapter

        adapter = SwisperLLMAdapter(agent_node="llm_node", config={"model": LLM_MODEL})
        response = await adapter.generate(
            GenerateRequest(messages=[Message("system", SYSTEM_PROMPT), Message("user", state["user_message"])]),
            config={"model": LLM_MODEL},
        )
        out = {"answer": response.text}
        record("llm_node", state, out)
        return out

    async def review(state: MainState) -> dict:
        # A top-level `errors` dict makes the SDK end the node at WARNING; the
        # failed tool report makes it publish a TOOL observation at ERROR.
        out = {
            "errors": dict(TOOL_ERRORS),
            "_tools_executed": [
                {"tool_name": "geo_lookup", "parameters": {"q": "France"}, "result": None,
                 "error": "HTTP 503", "status": "failure"}
            ],
        }
        record("review", state, out)
        return out

    async def finalize(state: MainState) -> dict:
        if state.get("fail"):
            record("finalize", state, None)
            raise ValueError(FAIL_MESSAGE)
        out = {"summary": f"{state['answer']} ({len(state['facts'])} facts)"}
        record("finalize", state, out)
        return out

    main = StateGraph(MainState)
    set_trace_name(main, MAIN_GRAPH)
    for name, fn in zip(MAIN_NODES, [intake, research_agent, llm_node, review, finalize]):
        main.add_node(name, fn)
    main.add_edge(START, MAIN_NODES[0])
    for a, b in zip(MAIN_NODES, MAIN_NODES[1:]):
        main.add_edge(a, b)
    main.add_edge(MAIN_NODES[-1], END)

    async def plan(state: HitlState) -> dict:
        # An LLM call whose provider reports no usage: the SDK sends null
        # token counts, which the studio's rule estimates from the text.
        from swisper.gateways.llm.adapter import GenerateRequest, Message, SwisperLLMAdapter

        adapter = SwisperLLMAdapter(agent_node="plan", config={"model": LLM_MODEL, "fake_usage": False})
        await adapter.generate(
            GenerateRequest(messages=[Message("system", SYSTEM_PROMPT), Message("user", state["user_message"])]),
            config={"model": LLM_MODEL},
        )
        out = {"plan": "train"}
        record("plan", state, out)
        return out

    async def ask_user(state: HitlState) -> dict:
        city = interrupt("Which city?")  # pauses the run: WAITING
        out = {"city": city}
        record("ask_user", state, out)
        return out

    hitl = StateGraph(HitlState)
    set_trace_name(hitl, HITL_GRAPH)
    hitl.add_node("plan", plan)
    hitl.add_node("ask_user", ask_user)
    hitl.add_edge(START, "plan")
    hitl.add_edge("plan", "ask_user")
    hitl.add_edge("ask_user", END)

    return {
        "main": main.compile(),
        "hitl": hitl.compile(checkpointer=InMemorySaver()),
    }


# ------------------------------------------------------------------ the runs


class Runs:
    """What the graph runs returned, what the SDK wrote and what got stored."""

    def __init__(self, results: dict, wire: list, db):
        self.results = results
        self.wire = wire
        trace_starts = [e for e in wire if e.event_type == "trace_start"]
        self.trace_fail, self.trace_ok, self.trace_hitl = (e.trace_id for e in trace_starts[:3])
        self.db = db

    def wire_of(self, trace_id: str) -> list:
        return [e for e in self.wire if e.trace_id == trace_id]

    def trace_start(self, trace_id: str) -> WireEvent:
        return next(e for e in self.wire if e.event_type == "trace_start" and e.trace_id == trace_id)

    def rows(self, trace_id: str) -> list:
        return observation_rows(self.db, "o.trace_id = %s", (trace_id,))

    def trace_row(self, trace_id: str) -> Optional[dict]:
        rows = query(self.db, TRACE_SQL + " WHERE t.id = %s", (trace_id,))
        return rows[0] if rows else None


# The studio's rows, with what the service keeps beside them: the trace's
# project (observations have no project column), the types of the start and
# the end (the row holds the combined one), when each kind of event was
# stored, and the trace's first sight.
OBSERVATION_SQL = """
    SELECT o.*, t.project_id,
           s.start_type, s.end_type,
           s.start_version IS NOT NULL AS has_start, s.end_version IS NOT NULL AS has_end
    FROM public.observations o
    LEFT JOIN public.traces t ON t.id = o.trace_id
    LEFT JOIN swisper_ingest.observation_state s ON s.id = o.id
"""
TRACE_SQL = """
    SELECT t.*, t.meta::jsonb ->> 'run_id' AS run_id,
           s.first_seen_at, s.start_version IS NOT NULL AS has_start
    FROM public.traces t
    LEFT JOIN swisper_ingest.trace_state s ON s.id = t.id
"""


def observation_rows(db, where: str = "true", params=()) -> list:
    return query(db, OBSERVATION_SQL + f" WHERE {where} ORDER BY o.start_time, o.id", params)


def wire_complete(wire: list) -> bool:
    """Three traces started, and every observation opened has been closed
    (GENERATION ends are published fire-and-forget, after the node returns)."""
    if sum(e.event_type == "trace_start" for e in wire) < 3:
        return False
    opened = {e.observation_id for e in wire if e.event_type == "observation_start"}
    closed = {e.observation_id for e in wire if e.event_type in ("observation_end", "observation_error")}
    return opened <= closed


def stored(db, wire: list) -> bool:
    """Every observation of the wire has its row, closed when the wire closed it."""
    ends = {e.observation_id for e in wire if e.event_type in ("observation_end", "observation_error")}
    ids = {e.observation_id for e in wire if e.observation_id}
    rows = query(db, "SELECT id, end_time IS NOT NULL AS closed FROM public.observations")
    by_id = {r["id"]: r["closed"] for r in rows}
    return all(i in by_id and (by_id[i] or i not in ends) for i in ids)


def group_drained(redis_client, e2e) -> bool:
    for group in redis_client.xinfo_groups(e2e.stream):
        if group["name"].decode() == e2e.group:
            return group["pending"] == 0 and group.get("lag") == 0
    return False


@pytest.fixture(scope="module")
def runs(sdk, pricing, e2e, redis_client, db) -> Runs:
    apps = build_graphs()
    results: dict = {}

    async def go():
        from langgraph.types import Command

        try:
            await apps["main"].ainvoke(dict(RUN_FAIL_INPUT))
            results["fail"] = "no exception"
        except ValueError as error:
            results["fail"] = str(error)
        results["ok"] = await apps["main"].ainvoke(
            dict(RUN_OK_INPUT), config={"configurable": {"thread_id": f"ok-{uuid.uuid4()}"}}
        )
        config = {"configurable": {"thread_id": f"hitl-{uuid.uuid4()}"}}
        results["hitl_paused"] = await apps["hitl"].ainvoke(dict(HITL_INPUT), config=config)
        results["hitl_resumed"] = await apps["hitl"].ainvoke(Command(resume=HITL_ANSWER), config=config)

    sdk.run(go(), timeout=60)
    assert results["fail"] == FAIL_MESSAGE, "the failing run should raise the node's error"
    wire = wait_for(
        "the SDK to publish every event of the three runs",
        lambda: (lambda w: w if wire_complete(w) else None)(read_stream(redis_client, e2e.stream)),
        timeout=20,
    )
    wait_for("the service to store every observation", lambda: stored(db, wire), timeout=30, interval=0.2)
    wait_for("the consumer group to have acknowledged everything", lambda: group_drained(redis_client, e2e), timeout=30)
    # Heartbeats may have been added since; keep the final picture.
    return Runs(results, read_stream(redis_client, e2e.stream), db)


# ------------------------------------------------------------------ helpers


def parse_time(text: Optional[str]) -> Optional[datetime]:
    """The SDK's two shapes: zone-less UTC and +00:00."""
    if text is None:
        return None
    value = datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def newest(events: list) -> Optional[WireEvent]:
    return max(events, key=lambda e: e.order) if events else None


# Keys of data with a column (project_id: the field wins, data's is dropped).
TRACE_COLUMNS = {"name", "user_id", "session_id", "tags", "timestamp", "project_id"}
START_COLUMNS = {"name", "type", "parent_observation_id", "input", "start_time", "project_id"}
END_COLUMNS = {"type", "level", "output", "status_message", "end_time", "project_id"}
# An error's level other than ERROR has no column: it is kept in meta.
ERROR_COLUMNS = END_COLUMNS - {"level"}


def event_meta(data: dict, columns: set, typed: bool = False) -> dict:
    """The studio's `meta` from one event: data.meta's keys (a meta that is
    not an object under "_meta"), then every key without a column (these win
    a clash); a type outside the studio's enum under _ingest_original_type."""
    meta = data.get("meta")
    out = dict(meta) if isinstance(meta, dict) else ({} if meta is None else {"_meta": meta})
    out.update((k, v) for k, v in data.items() if k not in columns and k != "meta")
    if typed and data.get("type") is not None and data["type"] not in OBSERVATION_TYPES:
        out["_ingest_original_type"] = data["type"]
    return out


def studio_type(value) -> Optional[str]:
    return value if value in OBSERVATION_TYPES else None


def int4(value) -> Optional[int]:
    """A token count the studio's int4 columns hold (src/event/llm.rs)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return value if isinstance(value, int) and -(2**31) <= value < 2**31 else None


def studio_usage(output) -> dict:
    """model, prompt/completion/total tokens as SwisperStudio's consumer reads
    an output: from _llm_tokens; when its total is missing or 0, each count
    estimated as int(words * 0.75) of _llm_messages[].content and
    _llm_result (unless both estimates are 0)."""
    usage = {"model": None, "prompt_tokens": None, "completion_tokens": None, "total_tokens": None}
    if not isinstance(output, dict) or ("_llm_tokens" not in output and "_llm_model" not in output):
        return usage
    if isinstance(output.get("_llm_model"), str):
        usage["model"] = output["_llm_model"]
    if "_llm_tokens" not in output:
        return usage
    tokens = output["_llm_tokens"] if isinstance(output["_llm_tokens"], dict) else {}
    for column, key in (("prompt_tokens", "prompt"), ("completion_tokens", "completion"), ("total_tokens", "total")):
        usage[column] = int4(tokens.get(key))
    if not usage["total_tokens"]:
        messages = output.get("_llm_messages")
        prompt = sum(
            int(len(str(m["content"]).split()) * 0.75)
            for m in (messages if isinstance(messages, list) else [])
            if isinstance(m, dict) and "content" in m
        )
        result = output.get("_llm_result")
        completion = int(len(str(result).split()) * 0.75) if result else 0
        if prompt > 0 or completion > 0:
            usage.update(prompt_tokens=int4(prompt), completion_tokens=int4(completion), total_tokens=int4(prompt + completion))
    return usage


def studio_costs(model, prompt, completion) -> dict:
    """calculated_*_cost as the studio computes them: tokens / 1e6 * the
    price per million, the total from the unrounded two, each rounded
    half-even to 6 decimals; only for a priced model and non-zero counts."""
    none = {"calculated_input_cost": None, "calculated_output_cost": None, "calculated_total_cost": None}
    if not (model and prompt and completion) or model not in PRICES:
        return none
    _, input_price, output_price = PRICES[model]
    cost_in = Decimal(prompt) / Decimal(10**6) * input_price
    cost_out = Decimal(completion) / Decimal(10**6) * output_price
    q = Decimal("0.000001")
    return {
        "calculated_input_cost": cost_in.quantize(q),
        "calculated_output_cost": cost_out.quantize(q),
        "calculated_total_cost": (cost_in + cost_out).quantize(q),
    }


def publish_time(event: WireEvent) -> datetime:
    return datetime.fromtimestamp(float(event.timestamp), timezone.utc)


def expected_observation(events: list) -> dict:
    """The studio row docs/event-format.md promises for one observation's
    events (times naive UTC, as the studio's columns hold them)."""
    start = newest([e for e in events if e.event_type == "observation_start"])
    end = newest([e for e in events if e.event_type in ("observation_end", "observation_error")])
    sd = (start.data or {}) if start else {}
    ed = (end.data or {}) if end else {}
    exp = {"trace_id": events[0].trace_id, "project_id": events[0].project_id,
           "has_start": start is not None, "has_end": end is not None}
    end_time = (parse_time(ed.get("end_time")) or publish_time(end)) if end else None
    if start:
        exp.update(
            name=sd.get("name") if sd.get("name") is not None else "unnamed_observation",
            start_type=studio_type(sd.get("type")),
            parent_observation_id=sd.get("parent_observation_id") or None,
            input=sd.get("input"),
            start_time=naive_utc(parse_time(sd.get("start_time")) or publish_time(start)),
        )
    else:
        # Until its start arrives: no name, the end's time as start_time.
        exp.update(name=None, parent_observation_id=None, input=None, start_time=naive_utc(end_time))
    if end:
        is_error = end.event_type == "observation_error"
        status = ed.get("status_message")
        if is_error:
            # As the studio stores an error: always level ERROR (another
            # level it carries stays in meta), and `error or status_message`.
            level = "ERROR"
            ed = {k: v for k, v in ed.items() if k != "level" or v not in (None, "ERROR")}
            error = ed.get("error")
            if error:
                status = error if isinstance(error, str) else "True" if error is True else json.dumps(error, separators=(",", ":"))
        else:
            level = ed["level"] if ed.get("level") is not None else "DEFAULT"
        exp.update(
            end_type=studio_type(ed.get("type")),
            level=level,
            output=ed.get("output"),
            status_message=status,
            end_time=naive_utc(end_time),
        )
        usage = studio_usage(ed.get("output"))
    else:
        exp.update(level="DEFAULT", output=None, status_message=None, end_time=None)
        usage = studio_usage(None)
    exp.update(usage)
    exp.update(studio_costs(usage["model"], usage["prompt_tokens"], usage["completion_tokens"]))
    exp["type"] = studio_type(ed.get("type")) or studio_type(sd.get("type")) or "SPAN"
    meta = event_meta(sd, START_COLUMNS, typed=True) if start else {}
    if end:
        meta.update(event_meta(ed, ERROR_COLUMNS if end.event_type == "observation_error" else END_COLUMNS, typed=True))
    exp["meta"] = meta or None
    return exp


def expected_trace(start: WireEvent) -> dict:
    """The studio row of a trace whose trace_start is stored."""
    d = start.data or {}
    return {
        "project_id": start.project_id,
        "name": d["name"] if d.get("name") is not None else "unnamed_trace",
        "user_id": d.get("user_id"),
        "session_id": d.get("session_id"),
        "meta": event_meta(d, TRACE_COLUMNS),
        "tags": d["tags"] if d.get("tags") is not None else [],
        "timestamp": naive_utc(parse_time(d.get("timestamp")) or publish_time(start)),
        "input": None,
        "output": None,
        "has_start": True,
    }


def by_name(rows: list, name: str, type_: Optional[str] = None) -> list:
    return [r for r in rows if r["name"] == name and (type_ is None or r["type"] == type_)]


def one(rows: list, name: str, type_: Optional[str] = None) -> dict:
    found = by_name(rows, name, type_)
    assert len(found) == 1, f"expected one observation {name!r} (type {type_}), found {len(found)}: {[r['id'] for r in found]}"
    return found[0]


def children(rows: list, parent: dict) -> list:
    return sorted((r["name"], r["type"]) for r in rows if r["parent_observation_id"] == parent["id"])


def column_exists(db, table: str, column: str) -> Optional[str]:
    rows = query(
        db,
        "SELECT data_type FROM information_schema.columns"
        " WHERE table_schema = current_schema() AND table_name = %s AND column_name = %s",
        (table, column),
    )
    return rows[0]["data_type"] if rows else None


# ------------------------------------------------------------------ 1. traces and observations


def test_sdk_published_what_this_test_relies_on(runs):
    """Preconditions on the SDK side (not the service): compression, a
    GENERATION, a TOOL, levels, an error and a pause were all on the wire."""
    wire = runs.wire
    events = [e for e in wire if e.event_type != "heartbeat"]
    assert {e.project_id for e in events} == {os.environ["SWISPER_STUDIO_PROJECT_ID"]}
    compressed = [e for e in events if e.compressed]
    assert len(compressed) >= 6, f"expected the >1 KB inputs and outputs compressed, got {len(compressed)} compressed entries"
    starts = [e.data for e in events if e.event_type == "observation_start"]
    assert any(d.get("type") == "GENERATION" for d in starts), "no GENERATION published: wrap_llm_adapter() did not patch the stub"
    assert any(d.get("type") == "TOOL" for d in starts), "no TOOL published for _tools_executed"
    levels = {(e.data or {}).get("level") for e in events if e.event_type in ("observation_end", "observation_error")}
    assert {"DEFAULT", "WARNING", "ERROR", "WAITING"} <= levels, levels
    assert any(e.event_type == "observation_error" for e in events)
    assert not [e for e in events if e.event_type not in ("trace_start", "observation_start", "observation_end", "observation_error")]


def test_no_dead_letters(runs, db, e2e):
    letters = query(
        db,
        "SELECT stream_entry_id, event_type, reason_code, reason FROM swisper_ingest.dead_letters WHERE stream = %s",
        (e2e.stream,),
    )
    assert letters == [], f"the service dead-lettered SDK entries: {letters}"
    assert query(db, "SELECT count(*) AS n FROM swisper_ingest.dead_letters")[0]["n"] == 0


def test_rows_are_exactly_what_the_stream_asked_for(runs, db, e2e):
    events = [e for e in runs.wire if e.event_type != "heartbeat"]
    trace_ids = {e.trace_id for e in events}
    observation_ids = {e.observation_id for e in events if e.observation_id}
    stored_traces = {r["id"] for r in query(db, "SELECT id FROM public.traces")}
    stored_observations = {r["id"] for r in query(db, "SELECT id FROM public.observations")}
    assert stored_traces == trace_ids
    assert stored_observations == observation_ids
    # Every studio row has its merge state beside it, and nothing else has.
    assert {r["id"] for r in query(db, "SELECT id FROM swisper_ingest.trace_state")} == trace_ids
    assert {r["id"] for r in query(db, "SELECT id FROM swisper_ingest.observation_state")} == observation_ids
    # A fresh database is standalone: the service created the studio's
    # tables and the SDK's project on first sight (name = id).
    assert query(db, "SELECT created_studio_schema FROM swisper_ingest.installation") == [{"created_studio_schema": True}]
    projects = query(db, "SELECT id, name, tracing_enabled, deleted_at FROM public.projects")
    assert projects == [{"id": e2e.project_id, "name": e2e.project_id, "tracing_enabled": True, "deleted_at": None}]


def test_traces_match_trace_start(runs, db):
    for trace_id in (runs.trace_fail, runs.trace_ok, runs.trace_hitl):
        start = runs.trace_start(trace_id)
        row = runs.trace_row(trace_id)
        assert row is not None, f"trace {trace_id} not stored"
        want = expected_trace(start)
        got = {k: row[k] for k in want}
        assert got == want, f"trace {trace_id}"
        d = start.data
        assert row["run_id"] == d["run_id"] and row["meta"]["run_id"] == d["run_id"]
        # A trace's time for retention is when Redis received its oldest
        # entry (the entry id's milliseconds), not the SDK's clock.
        first_received = min(int(e.entry_id.split("-")[0]) for e in runs.wire_of(trace_id)) / 1000
        assert abs(row["first_seen_at"].timestamp() - first_received) < 0.0005
    # What the SDK derives from the input state, as it reached the row.
    fail = runs.trace_row(runs.trace_fail)
    assert (fail["name"], fail["user_id"], fail["session_id"]) == ("What is the capital of France", "user-42", "chat-e2e-1")
    hitl = runs.trace_row(runs.trace_hitl)
    assert (hitl["name"], hitl["user_id"], hitl["session_id"]) == ("Book a train to the capital", None, "chat-e2e-3")
    assert len({runs.trace_row(t)["run_id"] for t in (runs.trace_fail, runs.trace_ok, runs.trace_hitl)}) == 3


def test_every_observation_matches_its_events(runs, db):
    """Wire truth: each stored observation is what its events say (types from
    the end, levels, an error's message as status_message, expanded input and
    output, naive UTC times, meta, model, tokens and costs by the studio's
    rules)."""
    events = defaultdict(list)
    for e in runs.wire:
        if e.observation_id:
            events[e.observation_id].append(e)
    rows = {r["id"]: r for r in observation_rows(db)}
    problems = []
    for obs_id, evs in events.items():
        row = rows.get(obs_id)
        if row is None:
            problems.append(f"{obs_id}: not stored")
            continue
        exp = expected_observation(evs)
        label = f"{exp.get('name')} ({obs_id[:8]})"
        for key, want in exp.items():
            if key == "meta" and isinstance(want, dict) and isinstance(row["meta"], dict):
                for mkey in sorted(set(want) | set(row["meta"])):
                    mwant, got = want.get(mkey, "<absent>"), row["meta"].get(mkey, "<absent>")
                    if got != mwant:
                        problems.append(f"{label}: meta.{mkey}: expected {str(mwant)[:200]!r}, got {str(got)[:200]!r}")
                continue
            if row[key] != want:
                problems.append(f"{label}: {key}: expected {str(want)[:200]!r}, got {str(row[key])[:200]!r}")
    assert not problems, "\n".join(problems)


def check_main_tree(runs, trace_id: str, failed: bool, call: int):
    rows = runs.rows(trace_id)
    root = one(rows, MAIN_GRAPH)
    assert root["parent_observation_id"] is None and root["type"] == "AGENT"
    assert children(rows, root) == sorted(
        [("intake", "SPAN"), ("research_agent", "AGENT"), ("llm_node", "SPAN"), ("review", "SPAN"), ("finalize", "SPAN")]
    )
    research = one(rows, "research_agent")
    assert research["start_type"] == "SPAN" and research["end_type"] == "AGENT", "the end's type must replace the start's"
    assert research["type"] == "AGENT"
    assert children(rows, research) == [("inner_agent", "AGENT"), ("lookup_facts", "SPAN")]
    inner = one(rows, INNER_GRAPH)
    assert children(rows, inner) == [("inner_step", "SPAN")]
    assert children(rows, one(rows, "llm_node", "SPAN")) == [("llm_node", "GENERATION")]
    assert children(rows, one(rows, "review")) == [("geo_lookup", "TOOL")]
    for leaf in ("intake", "finalize", "lookup_facts", "inner_step"):
        assert children(rows, one(rows, leaf)) == [], leaf

    # Graph truth: what each node saw and returned, decompressed and whole.
    for name in ("intake", "research_agent", "llm_node", "review", "lookup_facts", "inner_step"):
        row = one(rows, name, "SPAN" if name == "llm_node" else None)
        seen = SEEN[name][call]
        assert row["input"] == seen["input"], f"{name}: input differs from the state the node saw"
        assert row["output"] == seen["output"], f"{name}: output differs from what the node returned"
    finalize = one(rows, "finalize")
    assert finalize["input"] == SEEN["finalize"][call]["input"]
    run_input = RUN_FAIL_INPUT if failed else RUN_OK_INPUT
    assert root["input"] == jsonable(run_input)
    assert len(json.dumps(one(rows, "intake")["input"])) > 1024, "intake's input should have been big enough to compress"

    # Levels as the SDK sent them.
    assert one(rows, "review")["level"] == "WARNING"
    assert one(rows, "review")["meta"].get("errors") == TOOL_ERRORS
    assert one(rows, "geo_lookup", "TOOL")["level"] == "ERROR"
    for name in ("intake", "research_agent", "lookup_facts", "inner_step"):
        assert one(rows, name)["level"] == "DEFAULT", name
    assert one(rows, INNER_GRAPH)["level"] == "DEFAULT"

    # run_id: in the trace's meta, and in every node's (data.meta's keys
    # are meta's own).
    run_id = runs.trace_row(trace_id)["run_id"]
    assert run_id == runs.trace_start(trace_id).data["run_id"]
    for name in ("intake", "research_agent", "llm_node", "review", "finalize", "lookup_facts"):
        meta = one(rows, name, "SPAN" if name == "llm_node" else None)["meta"]
        assert meta and meta.get("run_id") == run_id, f"{name}: meta = {meta!r}"
    return rows, root, finalize


def test_failing_run_tree_levels_and_error(runs):
    rows, root, finalize = check_main_tree(runs, runs.trace_fail, failed=True, call=0)
    assert finalize["level"] == "ERROR"
    assert finalize["status_message"] == FAIL_MESSAGE
    assert finalize["meta"].get("error") == FAIL_MESSAGE
    assert finalize["output"] is None and finalize["end_time"] is not None
    # The root AGENT's observation_error has `error` and no status_message:
    # the service takes the error as the status message.
    assert root["level"] == "ERROR"
    assert root["status_message"] == FAIL_MESSAGE
    assert root["meta"].get("error") == FAIL_MESSAGE
    assert root["output"] is None and root["end_time"] is not None


def test_successful_run_tree_and_final_state(runs):
    rows, root, finalize = check_main_tree(runs, runs.trace_ok, failed=False, call=1)
    assert finalize["level"] == "DEFAULT" and finalize["status_message"] is None
    assert finalize["output"] == SEEN["finalize"][1]["output"]
    assert root["level"] == "DEFAULT" and root["status_message"] is None
    assert root["output"] == jsonable(runs.results["ok"]), "the root's output must be the final state ainvoke returned"
    for row in rows:
        assert row["end_time"] is not None and row["start_time"] is not None, row["name"]
        assert row["end_time"] >= row["start_time"], row["name"]


def test_llm_generation_and_columns(runs, db):
    wrong = {c: column_exists(db, "observations", c) for c, t in LLM_COLUMNS.items() if column_exists(db, "observations", c) != t}
    assert not wrong, f"LLM columns of observations missing or of the wrong type: {wrong} (expected {LLM_COLUMNS})"
    from swisper.gateways.llm.adapter import FAKE_LATENCY_S, FAKE_TEXT, FAKE_USAGE

    assert LLM_MODEL in PRICES, "the test's model_pricing row"
    for call, trace_id in enumerate((runs.trace_fail, runs.trace_ok)):
        rows = runs.rows(trace_id)
        gen = one(rows, "llm_node", "GENERATION")
        node = one(rows, "llm_node", "SPAN")
        assert gen["parent_observation_id"] == node["id"]
        assert gen["start_type"] == "GENERATION" and gen["level"] == "DEFAULT"
        out = gen["output"]
        assert out["_llm_model"] == LLM_MODEL
        assert out["_llm_result"] == FAKE_TEXT
        assert out["_llm_messages"] == [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": SEEN["llm_node"][call]["input"]["user_message"]},
        ]
        assert out["_llm_tokens"] == {"total": 42, "prompt": 30, "completion": 12, "cached": 5, "thoughts": 7}
        duration = out["_llm_latency"]["duration_ms"]
        assert duration >= FAKE_LATENCY_S * 1000
        # The SDK's counts, as reported (total given: nothing estimated), and
        # the costs at the test's price: 30 × 0.15 / 1e6 = 0.0000045 rounds
        # half-even to 0.000004; the total comes from the unrounded costs
        # (0.0000117 -> 0.000012, not 0.000004 + 0.000007).
        got = {c: gen[c] for c in LLM_COLUMNS}
        want = {
            "model": LLM_MODEL,
            "prompt_tokens": FAKE_USAGE.prompt_tokens,
            "completion_tokens": FAKE_USAGE.completion_tokens,
            "total_tokens": FAKE_USAGE.total_tokens,
            "calculated_input_cost": Decimal("0.000004"),
            "calculated_output_cost": Decimal("0.000007"),
            "calculated_total_cost": Decimal("0.000012"),
        }
        assert got == want
        assert [str(gen[c]) for c in LLM_COLUMNS if c.startswith("calculated_")] == ["0.000004", "0.000007", "0.000012"]
        # Cached and thought tokens and the latency have no column: they are
        # read from the output.
        inside = query(
            db,
            "SELECT (output::jsonb -> '_llm_tokens' ->> 'cached')::int AS cached,"
            " (output::jsonb -> '_llm_tokens' ->> 'thoughts')::int AS thoughts,"
            " (output::jsonb -> '_llm_latency' ->> 'duration_ms')::float8 AS duration_ms"
            " FROM public.observations WHERE id = %s",
            (gen["id"],),
        )
        assert inside == [{"cached": FAKE_USAGE.cached_tokens, "thoughts": FAKE_USAGE.thoughts_tokens, "duration_ms": duration}]
        # The node itself carries no telemetry in 0.14.3: its columns stay empty.
        assert all(r[c] is None for r in rows if r["id"] != gen["id"] for c in LLM_COLUMNS)


def test_llm_tokens_estimated_when_the_provider_reports_none(runs):
    """The HITL plan node's LLM call has no usage: the SDK sends null counts,
    and the studio's rule estimates them at 0.75 tokens a word (each part
    int-truncated), then prices them."""
    from swisper.gateways.llm.adapter import FAKE_TEXT

    rows = runs.rows(runs.trace_hitl)
    gen = one(rows, "plan", "GENERATION")
    assert gen["parent_observation_id"] == one(rows, "plan", "SPAN")["id"]
    out = gen["output"]
    assert out["_llm_tokens"].get("total") is None, out["_llm_tokens"]
    words = len(SYSTEM_PROMPT.split()), len(HITL_INPUT["user_message"].split()), len(FAKE_TEXT.split())
    assert words == (3, 6, 6)
    prompt = int(words[0] * 0.75) + int(words[1] * 0.75)  # 2 + 4
    completion = int(words[2] * 0.75)  # 4
    assert (gen["model"], gen["prompt_tokens"], gen["completion_tokens"], gen["total_tokens"]) == (
        LLM_MODEL, prompt, completion, prompt + completion)
    # 6 × 0.15 / 1e6 = 0.0000009, 4 × 0.60 / 1e6 = 0.0000024, total 0.0000033.
    assert (gen["calculated_input_cost"], gen["calculated_output_cost"], gen["calculated_total_cost"]) == (
        Decimal("0.000001"), Decimal("0.000002"), Decimal("0.000003"))


def test_hitl_pause_and_resume_in_one_trace(runs):
    assert "__interrupt__" in runs.results["hitl_paused"]
    assert runs.results["hitl_resumed"]["city"] == HITL_ANSWER
    starts = [e for e in runs.wire if e.event_type == "trace_start" and e.trace_id == runs.trace_hitl]
    assert len(starts) == 1, "a resume continues the trace, it does not start one"
    rows = runs.rows(runs.trace_hitl)
    roots = sorted((r for r in rows if r["parent_observation_id"] is None), key=lambda r: r["start_time"])
    assert [r["name"] for r in roots] == [HITL_GRAPH, f"{HITL_GRAPH} (HITL Continuation)"]
    paused, resumed = roots
    assert paused["level"] == "WAITING" and paused["type"] == "AGENT"
    assert paused["status_message"] == "Waiting for user input"
    assert "__interrupt__" in paused["output"]
    assert paused["input"] == jsonable(HITL_INPUT)
    assert resumed["level"] == "DEFAULT" and resumed["type"] == "AGENT"
    assert resumed["input"] == {"_command_resume": HITL_ANSWER}
    assert resumed["output"] == jsonable(runs.results["hitl_resumed"])
    assert resumed["meta"].get("is_hitl_continuation") is True
    assert resumed["meta"].get("hitl_user_response") == HITL_ANSWER
    assert resumed["meta"].get("run_id") == runs.trace_row(runs.trace_hitl)["run_id"], resumed["meta"]
    asks = sorted(by_name(rows, "ask_user"), key=lambda r: r["start_time"])
    assert len(asks) == 2, "the interrupted node runs again on resume, as a new observation"
    assert asks[0]["level"] == "WAITING" and asks[0]["parent_observation_id"] == paused["id"]
    assert asks[0]["status_message"].startswith("Waiting for user input:")
    assert "Which city?" in asks[0]["status_message"]
    assert asks[0]["output"] is None
    assert asks[1]["level"] == "DEFAULT" and asks[1]["parent_observation_id"] == resumed["id"]
    assert asks[1]["output"] == {"city": HITL_ANSWER}
    assert one(rows, "plan", "SPAN")["parent_observation_id"] == paused["id"]


# ------------------------------------------------------------------ 2. SDK heartbeats


def test_sdk_heartbeats_are_stored_not_traced(runs, sdk, e2e, redis_client, db):
    """The SDK's heartbeat task started with the first traced ainvoke and
    beats every 10 s; each beat updates swisper_ingest.sdk_heartbeats, never
    the studio's traces."""
    beats = wait_for(
        "two SDK heartbeats on the stream (10 s apart)",
        lambda: (lambda b: b if len(b) >= 2 else None)(
            [e for e in read_stream(redis_client, e2e.stream) if e.event_type == "heartbeat"]
        ),
        timeout=25,
        interval=0.5,
    )
    for beat in beats:
        assert beat.trace_id is None and beat.observation_id is None
        assert beat.data["sdk_version"] == SDK_VERSION and beat.data["project_id"] == e2e.project_id
    newest_beat = max(float(b.timestamp) for b in beats)

    def row():
        rows = query(db, "SELECT * FROM swisper_ingest.sdk_heartbeats WHERE project_id = %s", (e2e.project_id,))
        return rows if rows and rows[0]["last_seen_at"].timestamp() >= newest_beat - 0.001 else None

    rows = wait_for("swisper_ingest.sdk_heartbeats to hold the newest heartbeat", row, timeout=15)
    assert len(rows) == 1 and rows[0]["sdk_version"] == SDK_VERSION, rows
    oldest_beat = min(float(b.timestamp) for b in beats)
    assert abs(rows[0]["first_seen_at"].timestamp() - oldest_beat) < 0.001
    assert rows[0]["last_seen_at"] > rows[0]["first_seen_at"]
    assert isinstance(rows[0]["metadata"], dict)
    everything = query(db, "SELECT project_id, sdk_version FROM swisper_ingest.sdk_heartbeats")
    assert everything == [{"project_id": e2e.project_id, "sdk_version": SDK_VERSION}]

    # Never a trace: the traces are exactly those of the graph runs.
    trace_ids = {e.trace_id for e in read_stream(redis_client, e2e.stream) if e.event_type != "heartbeat"}
    assert {r["id"] for r in query(db, "SELECT id FROM public.traces")} == trace_ids
    assert query(db, "SELECT count(*) AS n FROM swisper_ingest.dead_letters")[0]["n"] == 0

    # What an operator watches: the age of the project's newest heartbeat.
    series = f'swisper_ingest_sdk_heartbeat_age_seconds{{project_id="{e2e.project_id}"}}'

    def gauge():
        status, text = http_get(e2e.http_addr, "/metrics")
        for line in text.splitlines() if status == 200 else []:
            if line.startswith(series + " "):
                return float(line.split()[-1]) + 1e-9  # 0 is a valid age
        return None

    age = wait_for(f"{series} on /metrics", gauge, timeout=10, interval=0.5)
    assert age < 30, f"{series} = {age}"


# ------------------------------------------------------------------ 3. the SDK's consumer check (stops the service: last)


def sdk_consumer_healthy(sdk) -> bool:
    """The SDK's own check of swisper_studio:consumer:heartbeat, on its own
    Redis client (what initialize_redis_publisher runs at start-up)."""
    from swisper_studio_sdk.tracing.redis_publisher import _verify_consumer_health, get_redis_client

    return sdk.run(_verify_consumer_health(get_redis_client(), timeout=3.0), timeout=10)


def fresh_app_status(e2e) -> dict:
    """safe_initialize() in a new process: an application starting now."""
    code = (
        "import asyncio, json, os\n"
        "from swisper_studio_sdk import safe_initialize\n"
        "s = asyncio.run(safe_initialize(os.environ['SWISPER_STUDIO_REDIS_URL'], os.environ['SWISPER_STUDIO_PROJECT_ID'],"
        " stream_name=os.environ['SWISPER_STUDIO_STREAM_NAME'], connection_timeout=3.0))\n"
        "print(json.dumps(s))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def process_running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")  # an exited child not yet reaped by run.sh is a zombie


def key_timestamp(redis_client) -> Optional[datetime]:
    raw = redis_client.get("swisper_studio:consumer:heartbeat")
    return datetime.fromisoformat(json.loads(raw)["timestamp"]) if raw else None


def test_sdk_consumer_check_follows_the_service(runs, sdk, e2e, redis_client):
    # While the service runs: the check at the application's start-up (the
    # auto_trace() of this session), the SDK's check now, and a new application.
    assert any("Consumer detected: HEALTHY" in m for m in sdk.init_log), (
        "auto_trace() did not report the consumer healthy at start-up: "
        + "; ".join(m for m in sdk.init_log if "onsumer" in m)
    )
    assert sdk_consumer_healthy(sdk) is True
    assert fresh_app_status(e2e)["consumer"] is True

    # Stop the service (run.sh passed its PID) and wait for it to exit.
    assert process_running(e2e.service_pid), "the service is not running"
    os.kill(e2e.service_pid, signal.SIGTERM)
    wait_for("the service to exit after SIGTERM", lambda: not process_running(e2e.service_pid), timeout=30)
    stopped = datetime.now(timezone.utc).replace(tzinfo=None)
    last = key_timestamp(redis_client)
    assert last is not None, "the consumer heartbeat key vanished at once (it should expire on its own)"
    assert last <= stopped, f"the key's timestamp {last} is after the service stopped ({stopped})"
    age = (datetime.utcnow() - last).total_seconds()
    if age < 9:
        assert sdk_consumer_healthy(sdk) is True, f"key {age:.1f} s old should still read as healthy"

    # Once the key is over 10 s old (or expired), the SDK sees no consumer.
    wait_s = max(0.0, 10.5 - (datetime.utcnow() - last).total_seconds())
    assert wait_s < 12, f"the key is {age:.1f} s old already"
    time.sleep(wait_s)
    assert key_timestamp(redis_client) in (None, last), "something refreshed the key after the service stopped"
    assert sdk_consumer_healthy(sdk) is False
    assert fresh_app_status(e2e)["consumer"] is False
