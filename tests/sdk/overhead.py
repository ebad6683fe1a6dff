"""What swisper-studio-sdk costs one graph run: the same five-node LangGraph
graph, traced by the real SDK and untraced, in one process, with swisper-ingest
consuming the stream. Not part of the test run.

    tests/sdk/run.sh --overhead [--runs 200] [--warmup 20]

(run.sh starts the service on a fresh database and stream and sets
SWISPER_STUDIO_REDIS_URL, SWISPER_STUDIO_STREAM_NAME, SWISPER_STUDIO_PROJECT_ID.)

Two states: a small one (~300 bytes, events sent as plain JSON) and a large
one (~8 KB, every node's event gzip-compressed by the SDK). One node calls the
look-alike Swisper LLM adapter (stubs/), with its simulated provider latency
set to 0, so that each traced run also publishes a GENERATION. Traced and
untraced runs alternate so that drift hits both alike. The figure is the
wall time of `await app.ainvoke(...)`, what a request waits.
"""

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path
from typing import TypedDict

sys.path.insert(0, str(Path(__file__).resolve().parent / "stubs"))


class State(TypedDict, total=False):
    user_message: str
    document: str
    normalized: str
    facts: list
    answer: str
    review: str
    summary: str


async def intake(state: State) -> dict:
    return {"normalized": state["document"].upper()}


async def research(state: State) -> dict:
    return {"facts": [f"fact {i}" for i in range(10)]}


async def llm_node(state: State) -> dict:
    from swisper.gateways.llm.adapter import GenerateRequest, Message, SwisperLLMAdapter

    adapter = SwisperLLMAdapter(agent_node="llm_node", config={"model": "gpt-4o-mini"})
    response = await adapter.generate(
        GenerateRequest(messages=[Message("system", "You are terse."), Message("user", state["user_message"])]),
        config={"model": "gpt-4o-mini"},
    )
    return {"answer": response.text}


async def review(state: State) -> dict:
    return {"review": "ok"}


async def finalize(state: State) -> dict:
    return {"summary": f"{state['answer']} ({len(state['facts'])} facts)"}


NODES = [("intake", intake), ("research", research), ("llm_node", llm_node), ("review", review), ("finalize", finalize)]


def build(graph):
    from langgraph.graph import END, START

    for name, fn in NODES:
        graph.add_node(name, fn)
    graph.add_edge(START, NODES[0][0])
    for (a, _), (b, _) in zip(NODES, NODES[1:]):
        graph.add_edge(a, b)
    graph.add_edge(NODES[-1][0], END)
    return graph.compile()


def percentile(values, p):
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=200, help="measured runs per variant and state")
    parser.add_argument("--warmup", type=int, default=20, help="unmeasured runs first")
    args = parser.parse_args()

    import swisper.gateways.llm.adapter as fake_llm
    from langgraph.graph import StateGraph
    from swisper_studio_sdk import __version__, close_redis_publisher, create_traced_graph, safe_initialize, wrap_llm_adapter

    fake_llm.FAKE_LATENCY_S = 0.0
    status = await safe_initialize(
        redis_url=os.environ["SWISPER_STUDIO_REDIS_URL"],
        project_id=os.environ["SWISPER_STUDIO_PROJECT_ID"],
        stream_name=os.environ["SWISPER_STUDIO_STREAM_NAME"],
    )
    if not status.get("initialized"):
        sys.exit(f"the SDK did not initialise: {status}")
    wrap_llm_adapter()
    untraced = build(StateGraph(State))
    traced = build(create_traced_graph(State, trace_name="overhead_agent"))

    states = {
        "small (~300 B)": {"user_message": "What is the capital of France? Be brief.", "document": "rail " * 40},
        "large (~8 KB)": {"user_message": "What is the capital of France? Be brief.", "document": "rail network " * 640},
    }
    rows = []
    for label, state in states.items():
        times = {"untraced": [], "traced": []}
        for i in range(args.warmup + args.runs):
            for variant, app in (("untraced", untraced), ("traced", traced)):
                t0 = time.perf_counter()
                await app.ainvoke(dict(state))
                elapsed = (time.perf_counter() - t0) * 1000
                if i >= args.warmup:
                    times[variant].append(elapsed)
        for variant in ("untraced", "traced"):
            v = times[variant]
            rows.append((label, variant, len(v), statistics.median(v), percentile(v, 90), percentile(v, 99), statistics.fmean(v)))
        u, t = times["untraced"], times["traced"]
        rows.append((label, "overhead", len(t), statistics.median(t) - statistics.median(u),
                     percentile(t, 90) - percentile(u, 90), percentile(t, 99) - percentile(u, 99),
                     statistics.fmean(t) - statistics.fmean(u)))

    await asyncio.sleep(1)  # let the fire-and-forget GENERATION publishes land
    await close_redis_publisher()
    print(f"\nswisper-studio-sdk {__version__}, five-node graph, ainvoke wall time in ms "
          f"({args.runs} runs each after {args.warmup} warm-up, Python {sys.version.split()[0]})\n")
    print(f"| {'state':<15} | {'variant':<9} | {'runs':>4} | {'p50':>6} | {'p90':>6} | {'p99':>6} | {'mean':>6} |")
    print(f"|{'-' * 17}|{'-' * 11}|{'-' * 6}|{'-' * 8}|{'-' * 8}|{'-' * 8}|{'-' * 8}|")
    for label, variant, n, p50, p90, p99, mean in rows:
        print(f"| {label:<15} | {variant:<9} | {n:>4} | {p50:>6.2f} | {p90:>6.2f} | {p99:>6.2f} | {mean:>6.2f} |")


if __name__ == "__main__":
    asyncio.run(main())
