"""An instant OpenAI-compatible model server: a fixed completion with usage, streamed or not.

Deterministic, so that a fault run's accounting can be checked exactly: the prompt count is
derived from the messages' length, the completion is always the same seven tokens.
``python -m tests.fault.instant_model --port N``.
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

PIECES = ("Refunds are ", "handled within ", "thirty days ", "of ", "delivery, ", "as ", "stated.")
COMPLETION_TOKENS = len(PIECES)


def usage_of(body: dict[str, Any]) -> dict[str, int]:
    """Fixed, content-derived usage: the same request always reports the same tokens."""
    chars = sum(len(str(m.get("content", ""))) for m in body.get("messages", []))
    prompt = 10 + chars // 4
    return {
        "prompt_tokens": prompt,
        "completion_tokens": COMPLETION_TOKENS,
        "total_tokens": prompt + COMPLETION_TOKENS,
    }


async def models(request: Request) -> Response:
    return JSONResponse({"object": "list", "data": [{"id": "smollm2-135m", "object": "model"}]})


async def completions(request: Request) -> Response:
    body = await request.json()
    model = str(body.get("model") or "smollm2-135m")
    usage = usage_of(body)
    cid = f"chatcmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    if not body.get("stream"):
        return JSONResponse(
            {
                "id": cid,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "".join(PIECES)},
                        "finish_reason": "stop",
                    }
                ],
                "usage": usage,
            }
        )
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

    def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
        payload = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        return f"data: {json.dumps(payload)}\n\n"

    async def stream() -> AsyncIterator[str]:
        yield chunk({"role": "assistant", "content": ""})
        for piece in PIECES:
            yield chunk({"content": piece})
        yield chunk({}, "stop")
        if include_usage:
            tail = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [],
                "usage": usage,
            }
            yield f"data: {json.dumps(tail)}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(stream(), media_type="text/event-stream")


app = Starlette(
    routes=[
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/chat/completions", completions, methods=["POST"]),
    ]
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
