"""A look-alike of Swisper's SwisperLLMAdapter: what swisper-studio-sdk's
wrap_llm_adapter() patches to publish one GENERATION observation per call.

Only what the SDK reads is here: `agent_node`, `_config`, `generate(request,
config=None, on_thinking_chunk=None)` and `stream`, a request with
`messages` (role, content), and a response with `text` and `usage`
(total/prompt/completion/cached/thoughts tokens). No network: the answer and
its usage are fixed (FAKE_USAGE), after a short sleep that stands for the
provider's latency. A config with `"fake_usage": False` answers without usage,
as a provider that reports none (the SDK then sends null token counts).
"""

import asyncio
from dataclasses import dataclass, field
from typing import Any, List, Optional

FAKE_TEXT = "Paris is the capital of France."
FAKE_LATENCY_S = 0.02


@dataclass
class Message:
    role: str
    content: str


@dataclass
class GenerateRequest:
    messages: List[Message]
    output_schema: Any = None
    tools: Any = None


@dataclass
class Usage:
    total_tokens: int
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    thoughts_tokens: int = 0


FAKE_USAGE = Usage(total_tokens=42, prompt_tokens=30, completion_tokens=12, cached_tokens=5, thoughts_tokens=7)


@dataclass
class GenerateResponse:
    text: str
    thinking: Optional[str] = None
    usage: Optional[Usage] = None
    tool_calls: list = field(default_factory=list)


class SwisperLLMAdapter:
    def __init__(self, agent_node: str, config: dict):
        self.agent_node = agent_node
        self._config = config

    async def generate(self, request: GenerateRequest, config: Optional[dict] = None, on_thinking_chunk=None):
        await asyncio.sleep(FAKE_LATENCY_S)
        settings = {**self._config, **(config or {})}
        usage = FAKE_USAGE if settings.get("fake_usage", True) else None
        return GenerateResponse(text=FAKE_TEXT, usage=usage)

    async def stream(self, request, config=None):
        raise NotImplementedError("the test uses generate() only")
