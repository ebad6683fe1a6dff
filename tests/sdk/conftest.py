"""Fixtures of the swisper-studio-sdk end-to-end test (run it with
tests/sdk/run.sh, which starts swisper-ingest on a fresh database and stream
and passes where everything is through the environment).

The SDK runs as an application runs it: `auto_trace()` configured by the
SWISPER_STUDIO_* variables, on one event loop that lives for the whole
session (a background thread), so that its heartbeat task keeps beating
between tests exactly as in a long-running service. Tests hand coroutines to
that loop with `sdk.run(coro)`.
"""

import asyncio
import base64
import gzip
import json
import logging
import os
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable, Optional

import psycopg
import pytest
from psycopg.rows import dict_row
import redis

HERE = Path(__file__).resolve().parent
# Look-alikes of Swisper's own LLM adapter classes: the only LLM path the SDK
# instruments (see stubs/README.md). Must be importable before auto_trace().
sys.path.insert(0, str(HERE / "stubs"))

REQUIRED_ENV = (
    "SWISPER_STUDIO_REDIS_URL",
    "SWISPER_STUDIO_STREAM_NAME",
    "SWISPER_STUDIO_PROJECT_ID",
    "SDK_E2E_DATABASE_URL",
    "SDK_E2E_GROUP",
    "SDK_E2E_HTTP_ADDR",
    "SDK_E2E_SERVICE_PID",
)

SDK_VERSION = "0.14.3"

# The studio's default prices (model_pricing rows without a project) that the
# test puts in place before the graphs run: model -> (hosting provider,
# input price, output price per million tokens). The provider is the one the
# studio derives from the model name.
PRICES = {"gpt-4o-mini": ("openai", Decimal("0.15"), Decimal("0.60"))}


@dataclass(frozen=True)
class E2E:
    redis_url: str
    stream: str
    project_id: str
    database_url: str
    group: str
    http_addr: str
    service_pid: int


@pytest.fixture(scope="session")
def e2e() -> E2E:
    missing = [name for name in REQUIRED_ENV if not os.environ.get(name)]
    if missing:
        pytest.exit(f"{', '.join(missing)} not set: run this suite with tests/sdk/run.sh", returncode=2)
    return E2E(
        redis_url=os.environ["SWISPER_STUDIO_REDIS_URL"],
        stream=os.environ["SWISPER_STUDIO_STREAM_NAME"],
        project_id=os.environ["SWISPER_STUDIO_PROJECT_ID"],
        database_url=os.environ["SDK_E2E_DATABASE_URL"],
        group=os.environ["SDK_E2E_GROUP"],
        http_addr=os.environ["SDK_E2E_HTTP_ADDR"],
        service_pid=int(os.environ["SDK_E2E_SERVICE_PID"]),
    )


# ------------------------------------------------------------------ waiting


def wait_for(what: str, predicate: Callable[[], Any], timeout: float, interval: float = 0.1) -> Any:
    """Polls until `predicate()` is truthy and returns its value; fails with
    `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = predicate()
        if last:
            return last
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what} (last value: {last!r})")
        time.sleep(interval)


# ------------------------------------------------------------------ the SDK's loop


class SdkLoop:
    """One asyncio loop in a daemon thread: the application's loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="sdk-loop", daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float = 60.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        async def cancel_all():
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            self.run(cancel_all(), timeout=10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)


class LogCapture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@dataclass
class Sdk:
    loop: SdkLoop
    status: dict
    init_log: list

    def run(self, coro, timeout: float = 60.0):
        return self.loop.run(coro, timeout)


@pytest.fixture(scope="session")
def sdk(e2e: E2E, redis_client) -> Sdk:
    """The real SDK, initialised the way a Swisper application does it:
    `await auto_trace()` with the SWISPER_STUDIO_* environment variables."""
    for name in ("SWISPER_STUDIO_TRANSPORT", "SWISPER_STUDIO_OBFUSCATE_CONTENT"):
        os.environ.pop(name, None)  # Redis transport, content in clear
    os.environ["SWISPER_STUDIO_ENABLED"] = "true"
    # The service writes its consumer heartbeat on its first monitor tick once
    # ready; give that tick a moment so that the SDK's one-off check at init
    # sees it (run.sh only waited for /readyz).
    wait_for(
        "the service to write swisper_studio:consumer:heartbeat",
        lambda: redis_client.exists("swisper_studio:consumer:heartbeat"),
        timeout=10,
    )
    capture = LogCapture()
    sdk_logger = logging.getLogger("swisper_studio_sdk")
    sdk_logger.addHandler(capture)
    sdk_logger.setLevel(logging.DEBUG)
    loop = SdkLoop()
    from swisper_studio_sdk import auto_trace

    status = loop.run(auto_trace(), timeout=30)
    sdk_logger.removeHandler(capture)
    assert status.get("initialized"), f"auto_trace() did not initialise: {status}"
    assert status.get("langgraph_patched"), f"auto_trace() did not patch LangGraph: {status}"
    assert status.get("llm_wrapped"), f"auto_trace() did not wrap the LLM adapter: {status}"
    yield Sdk(loop=loop, status=status, init_log=capture.messages)

    async def close():
        from swisper_studio_sdk import close_redis_publisher

        await close_redis_publisher()

    try:
        loop.run(close(), timeout=10)
    finally:
        loop.close()


# ------------------------------------------------------------------ Redis and Postgres


@pytest.fixture(scope="session")
def redis_client(e2e: E2E) -> redis.Redis:
    client = redis.Redis.from_url(e2e.redis_url, socket_timeout=5, socket_connect_timeout=5)
    client.ping()
    yield client
    client.close()


@pytest.fixture(scope="session")
def db(e2e: E2E) -> psycopg.Connection:
    conn = psycopg.connect(e2e.database_url, autocommit=True, connect_timeout=10)
    conn.execute("SET statement_timeout = '10s'")
    yield conn
    conn.close()


@pytest.fixture(scope="session")
def pricing(db) -> dict:
    """PRICES as the studio's default model_pricing rows. run.sh starts the
    service with OBSERVABILITY_PRICE_REFRESH_SECS=1: after a second every
    write sees them, whenever the service first read the table."""
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    for model, (provider, input_price, output_price) in PRICES.items():
        db.execute(
            "INSERT INTO public.model_pricing (id, project_id, hosting_provider, model_name,"
            " input_price_per_million, output_price_per_million, created_at, updated_at, type, description)"
            " VALUES (%s, NULL, %s, %s, %s, %s, %s, %s, 'llm', 'sdk e2e test price')",
            (f"sdk-e2e-{model}", provider, model, input_price, output_price, now, now),
        )
    time.sleep(1.2)
    return PRICES


def naive_utc(value: Optional[datetime]) -> Optional[datetime]:
    """An aware time as the studio's `timestamp without time zone` columns
    hold it (UTC)."""
    return value.astimezone(timezone.utc).replace(tzinfo=None) if value is not None else None


def query(conn: psycopg.Connection, sql: str, params=()) -> list[dict]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(sql, params)
        return cur.fetchall()


def http_get(addr: str, path: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://{addr}{path}", timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


# ------------------------------------------------------------------ the wire


@dataclass
class WireEvent:
    """One entry of the stream as the SDK wrote it, `data` expanded."""

    entry_id: str
    event_type: str
    project_id: str
    timestamp: str
    trace_id: Optional[str]
    observation_id: Optional[str]
    data: Optional[dict]
    compressed: bool

    @property
    def order(self) -> tuple:
        # The service's version order: publish time, then the entry id.
        ms, seq = self.entry_id.split("-")
        return (float(self.timestamp), int(ms), int(seq))


def read_stream(client: redis.Redis, stream: str) -> list[WireEvent]:
    events = []
    for entry_id, fields in client.xrange(stream, "-", "+"):
        f = {k.decode(): v.decode() for k, v in fields.items()}
        # Python's json reads the NaN the SDK may write; the SDK's own format.
        data = json.loads(f["data"]) if "data" in f else None
        compressed = isinstance(data, dict) and data.get("_compressed") is True
        if compressed:
            data = json.loads(gzip.decompress(base64.b64decode(data["_data"])))
        events.append(
            WireEvent(
                entry_id=entry_id.decode(),
                event_type=f["event_type"],
                project_id=f["project_id"],
                timestamp=f["timestamp"],
                trace_id=f.get("trace_id"),
                observation_id=f.get("observation_id"),
                data=data,
                compressed=compressed,
            )
        )
    return events
