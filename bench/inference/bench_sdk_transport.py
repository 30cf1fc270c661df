"""CPU per chat call through the openai SDK: httpx2 or aiohttp transport, typed or raw chunks,
the way inference opens its stream (``client.post`` with ``stream=True``); with ``--whole``,
whole answers the way inference asks for them (``client.post`` with ``cast_to=object``; without
its per-call timeout option), and for scale the same request sent with aiohttp alone (no SDK:
not what inference does).

Needs the gateway bench's instant server (nginx answering a fixed SSE stream)::

    .venv/bin/python bench/gateway/instant.py &      # port 18090
    .venv/bin/python bench/inference/bench_sdk_transport.py
    .venv/bin/python bench/inference/bench_sdk_transport.py --whole --base-url http://127.0.0.1:18090/v1

Each variant makes ``--calls`` calls, ``--concurrency`` at a time, after 100 warm-up calls, in
one process; the variants alternate for ``--rounds`` rounds so that the machine's load falls on
all alike. Prints process CPU per call (``time.process_time``) and calls per second.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import aiohttp
import openai
from openai.types.chat import ChatCompletion, ChatCompletionChunk

BODY: dict[str, Any] = {
    "model": "instant",
    "messages": [{"role": "user", "content": "What is the refund policy for annual plans?"}],
    "max_tokens": 64,
    "temperature": 0.2,
    "stream": True,
    "stream_options": {"include_usage": True},
}


async def one_call(client: openai.AsyncOpenAI, chunk_type: Any) -> int:
    """One streamed call read to its end; returns the number of chunks."""
    stream = await client.post(
        "/chat/completions",
        cast_to=ChatCompletion,
        body=BODY,
        options={"security": {"bearer_auth": True}},
        stream=True,
        stream_cls=openai.AsyncStream[chunk_type],
    )
    chunks = 0
    async for _ in stream:
        chunks += 1
    return chunks


async def one_whole_call(client: openai.AsyncOpenAI) -> int:
    """One whole answer as parsed JSON; returns its number of choices."""
    body = {k: v for k, v in BODY.items() if k not in ("stream", "stream_options")}
    answer = await client.post(
        "/chat/completions",
        cast_to=object,
        body=body,
        options={"security": {"bearer_auth": True}},
    )
    return len(answer["choices"]) if isinstance(answer, dict) else 0


async def timed(call: Any, *, calls: int, concurrency: int) -> tuple[list[int], float, float]:
    """Run ``call()`` ``calls`` times, ``concurrency`` at a time, after 100 warm-up calls:
    (its results, CPU ms per call, calls per second)."""
    slots = asyncio.Semaphore(concurrency)

    async def guarded() -> int:
        async with slots:
            return int(await call())

    await asyncio.gather(*(guarded() for _ in range(100)))
    cpu, wall = time.process_time(), time.perf_counter()
    counts = await asyncio.gather(*(guarded() for _ in range(calls)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return counts, 1000 * cpu / calls, calls / wall


async def measure(
    *, base_url: str, transport: str, chunk_type: Any, calls: int, concurrency: int
) -> tuple[float, float]:
    """(CPU ms per call, calls per second) for one streamed variant."""
    http_client = openai.DefaultAioHttpClient() if transport == "aiohttp" else None
    client = openai.AsyncOpenAI(
        base_url=base_url, api_key="not-needed", max_retries=2, http_client=http_client
    )
    try:
        counts, cpu_ms, rate = await timed(
            lambda: one_call(client, chunk_type), calls=calls, concurrency=concurrency
        )
    finally:
        await client.close()
    assert min(counts) > 1, "the instant server did not stream (is it the /stream/v1 URL?)"
    return cpu_ms, rate


async def measure_whole(
    *, base_url: str, transport: str, calls: int, concurrency: int
) -> tuple[float, float]:
    """(CPU ms per call, calls per second) for one whole-answer variant."""
    if transport == "aiohttp alone":
        async with aiohttp.ClientSession() as session:

            async def raw() -> int:
                async with session.post(
                    f"{base_url}/chat/completions",
                    json={k: v for k, v in BODY.items() if k not in ("stream", "stream_options")},
                    headers={"Authorization": "Bearer not-needed"},
                ) as response:
                    return len((await response.json())["choices"])

            counts, cpu_ms, rate = await timed(raw, calls=calls, concurrency=concurrency)
    else:
        http_client = openai.DefaultAioHttpClient() if transport == "aiohttp" else None
        client = openai.AsyncOpenAI(
            base_url=base_url, api_key="not-needed", max_retries=2, http_client=http_client
        )
        try:
            counts, cpu_ms, rate = await timed(
                lambda: one_whole_call(client), calls=calls, concurrency=concurrency
            )
        finally:
            await client.close()
    assert min(counts) == 1, "the instant server did not answer a chat completion"
    return cpu_ms, rate


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base-url", default="http://127.0.0.1:18090/stream/v1")
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--whole", action="store_true", help="whole answers (use the /v1 URL: --base-url ...)"
    )
    args = parser.parse_args()
    if args.whole:
        print("| round | transport | CPU ms per whole answer | calls/s |")
        print("| ---: | --- | ---: | ---: |")
        for round_ in range(1, args.rounds + 1):
            for transport in ("httpx2", "aiohttp", "aiohttp alone"):
                cpu_ms, rate = await measure_whole(
                    base_url=args.base_url,
                    transport=transport,
                    calls=args.calls,
                    concurrency=args.concurrency,
                )
                print(f"| {round_} | {transport} | {cpu_ms:.2f} | {rate:,.0f} |")
        return
    variants = [
        ("httpx2", ChatCompletionChunk),
        ("httpx2", object),
        ("aiohttp", ChatCompletionChunk),
        ("aiohttp", object),
    ]
    print("| round | transport | chunks as | CPU ms per call | calls/s |")
    print("| ---: | --- | --- | ---: | ---: |")
    for round_ in range(1, args.rounds + 1):
        for transport, chunk_type in variants:
            cpu_ms, rate = await measure(
                base_url=args.base_url,
                transport=transport,
                chunk_type=chunk_type,
                calls=args.calls,
                concurrency=args.concurrency,
            )
            shape = "typed chunks" if chunk_type is ChatCompletionChunk else "parsed JSON"
            print(f"| {round_} | {transport} | {shape} | {cpu_ms:.2f} | {rate:,.0f} |")


if __name__ == "__main__":
    asyncio.run(main())
