"""Calling models through the ``openai`` SDK: routing by the catalogue, whole or streamed answers,
errors.

Retries are the SDK's own: ``max_retries`` with exponential backoff and jitter (honouring
``Retry-After``) on 408/409/429/5xx, connection errors and timeouts, while the request has not
started streaming. A failure after that is not retried: the client may already hold part of the
answer.

The SDK's clients send through its aiohttp transport (``DefaultAioHttpClient``, the ``aiohttp``
extra) and hand stream chunks over as the JSON objects they arrive as: against its default
httpx2 transport and typed chunks, a streamed call costs 0.7 to 0.9 instead of 2.0 to 2.3 ms of
CPU here (bench/README.md). Transport errors surface as ``httpx2`` exceptions either way.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import httpx2
import openai
from openai.types.chat import ChatCompletion
from tenantry_common.events import (
    ChatMessage,
    FailureReason,
    ResponseFormat,
    SamplingHints,
    TokenUsage,
    ToolOptions,
)
from tenantry_common.settings import ModelSpec

#: The SDK insists on a key; local OpenAI-compatible servers ignore it.
_NO_KEY = "not-needed"

#: A provider's answers that refuse the request itself (not the provider's state): too large,
#: malformed, or a parameter it does not take. Not retried by the SDK; no fallback is asked.
_REJECTED_STATUSES = frozenset({400, 413, 422})
#: Error codes some servers send with a 400 that are about the provider, not the request:
#: llama-cpp-python's for a model file it cannot find (OpenAI's API sends a 404).
_NOT_THE_REQUEST = frozenset({"model_not_found"})
#: A provider's error code is passed on only when it is an identifier
#: (``context_length_exceeded``), never free text, which may echo the prompt.
_CODE = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")


class ModelCallError(Exception):
    """The model could not answer; ``reason`` and ``message`` go into ChatFailed as they are."""

    def __init__(self, reason: FailureReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class ToolCallPiece:
    """A piece of a tool call the model makes: a stream sends its id and name first, then its
    arguments in parts, all under its index; a whole answer sends each call in one piece."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass(frozen=True)
class StreamPiece:
    """One chunk of an answer: some text, the usage the server reported, or why it stopped."""

    text: str = ""
    usage: TokenUsage | None = None
    #: The server's ``finish_reason`` ("stop", "length", "tool_calls", ...) once it gives one.
    finish: str | None = None
    tool_calls: tuple[ToolCallPiece, ...] = ()


class ModelGateway:
    """One async OpenAI client per catalogue model, created on first use."""

    def __init__(
        self,
        *,
        catalogue: dict[str, ModelSpec],
        api_keys: dict[str, str | None],
        timeout_s: float,
        max_retries: int,
        timeouts: dict[str, float] | None = None,
        whole_answer_timeout_s: float | None = None,
    ) -> None:
        self.catalogue = catalogue
        self.api_keys = api_keys
        self.timeout_s = timeout_s
        self.timeouts = dict(timeouts or {})
        self.max_retries = max_retries
        #: How long the model may take to send a whole answer (None: the per-attempt timeout).
        self.whole_answer_timeout_s = whole_answer_timeout_s
        self._clients: dict[str, openai.AsyncOpenAI] = {}

    def client(self, model: str) -> openai.AsyncOpenAI:
        """The client for a catalogue model (refuses a model whose key is not configured)."""
        if model not in self._clients:
            spec = self.catalogue[model]
            key = self.api_keys.get(model)
            if spec.api_key_env and not key:
                raise ModelCallError(
                    FailureReason.MODEL_UNAVAILABLE,
                    f"model {model} is not available: no API key is configured for it",
                )
            self._clients[model] = openai.AsyncOpenAI(
                base_url=spec.base_url,
                api_key=key or _NO_KEY,
                timeout=self.timeouts.get(model, self.timeout_s),
                max_retries=self.max_retries,
                http_client=openai.DefaultAioHttpClient(),
            )
        return self._clients[model]

    async def aclose(self) -> None:
        """Close every client's connection pool."""
        for client in self._clients.values():
            await client.close()
        self._clients.clear()

    async def generate(
        self,
        *,
        model: str,
        messages: Sequence[ChatMessage],
        max_tokens: int,
        temperature: float,
        stream: bool,
        stop: Sequence[str] = (),
        sampling: SamplingHints | None = None,
        response_format: ResponseFormat | None = None,
        tools: ToolOptions | None = None,
    ) -> AsyncIterator[StreamPiece]:
        """The answer: text pieces as they arrive, then the usage if the server gave one.

        ``stop`` is the request's own stop sequences, sent with the model's (its catalogue's);
        ``sampling`` its own top_p, seed and penalties, sent as given; ``response_format`` the
        form its answer must take, as the model's server takes it (``ModelSpec.response_formats``);
        ``tools`` the functions it may call instead, as given.

        ``stream=False`` asks for the whole answer in one response (one text piece): for a
        client that did not ask for a stream there is nothing to gain from one, and parsing
        a stream costs more.
        """
        spec = self.catalogue[model]
        client = self.client(model)
        request: dict[str, Any] = {
            "model": spec.served_name or model,
            "messages": [_message(m) for m in messages],
            "max_tokens": max_tokens,
            "temperature": temperature,
        }
        if sequences := list(dict.fromkeys([*spec.stop, *stop])):
            request["stop"] = sequences
        if sampling is not None:
            request |= sampling.given()
        if response_format is not None:
            request["response_format"] = spec.response_format_body(response_format)
        if tools is not None:
            request |= tools.body()
        try:
            if not stream:
                completion = await _ask_whole(client, request, self._whole_timeout(model))
                for piece in _whole_answer(completion, model):
                    yield piece
                return
            request["stream"] = True
            # Ask for usage in the stream; servers that ignore it are counted with a tokenizer.
            request["stream_options"] = {"include_usage": True}
            try:
                chunks = await _open_stream(client, request)
            except openai.BadRequestError as exc:
                if "stream_options" not in str(exc):
                    raise
                # Some OpenAI-compatible servers refuse the option outright.
                request.pop("stream_options")
                chunks = await _open_stream(client, request)
            received = 0
            async for chunk in chunks:
                received += 1
                usage = _field(chunk, "usage")
                if usage:
                    yield StreamPiece(usage=_usage(usage))
                for choice in _field(chunk, "choices") or ():
                    delta = _field(choice, "delta")
                    content = _field(delta, "content")
                    if isinstance(content, str) and content:
                        yield StreamPiece(text=content)
                    if calls := _tool_call_pieces(_field(delta, "tool_calls")):
                        yield StreamPiece(tool_calls=calls)
                    finish = _field(choice, "finish_reason")
                    if isinstance(finish, str) and finish:
                        yield StreamPiece(finish=finish)
            if not received:
                # Not even a role chunk: the server ignored "stream" (a JSON body parses as no
                # events at all). Answering empty, at zero tokens, would hide it.
                raise ModelCallError(
                    FailureReason.MODEL_UNAVAILABLE,
                    f"the model {model} answered a streaming request without a stream",
                )
        except ModelCallError:
            raise
        except (openai.APITimeoutError, httpx2.TimeoutException) as exc:
            raise ModelCallError(
                FailureReason.MODEL_TIMEOUT,
                f"the model {model} did not answer in time (after {self.max_retries} retries)",
            ) from exc
        except openai.RateLimitError as exc:
            raise ModelCallError(
                FailureReason.MODEL_UNAVAILABLE,
                f"the model {model} is rate limited by its provider; try again shortly",
            ) from exc
        except openai.APIStatusError as exc:
            # The provider's error text is not copied: it may echo parts of the prompt.
            if exc.status_code in _REJECTED_STATUSES and exc.code not in _NOT_THE_REQUEST:
                raise _rejected(model, exc) from exc
            raise ModelCallError(
                FailureReason.MODEL_UNAVAILABLE,
                f"the model {model} refused or failed the request (HTTP {exc.status_code})",
            ) from exc
        except (openai.APIConnectionError, httpx2.HTTPError) as exc:
            raise ModelCallError(
                FailureReason.MODEL_UNAVAILABLE, f"the model {model} could not be reached"
            ) from exc
        except openai.OpenAIError as exc:
            raise ModelCallError(
                FailureReason.MODEL_UNAVAILABLE,
                f"the model {model} returned an unusable response ({type(exc).__name__})",
            ) from exc

    def _whole_timeout(self, model: str) -> httpx2.Timeout:
        """A whole answer's timeouts: connecting and sending as for a stream, but the answer
        itself may take as long as a whole answer may.

        A stream's chunks each arrive within the per-attempt timeout; a whole answer arrives
        only once all of it is generated. Bounding that by the per-attempt timeout would cut
        long answers short and have the SDK retry them, generating (and paying for) them again.
        """
        attempt = self.timeouts.get(model, self.timeout_s)
        whole = max(attempt, self.whole_answer_timeout_s or attempt)
        return httpx2.Timeout(attempt, read=whole)


def _rejected(model: str, exc: openai.APIStatusError) -> ModelCallError:
    """The provider refused the request itself: named with its status and, if it gave one that
    is an identifier, its error code (its message is not copied)."""
    code = exc.code if isinstance(exc.code, str) and _CODE.fullmatch(exc.code) else None
    said = f"HTTP {exc.status_code}: {code}" if code else f"HTTP {exc.status_code}"
    return ModelCallError(
        FailureReason.REQUEST_REJECTED,
        f"the model {model} rejected the request as invalid ({said})",
    )


def _whole_answer(completion: object, model: str) -> list[StreamPiece]:
    """The pieces of a whole (non-streamed) completion: its usage if reported, its text, then
    why it stopped if said."""
    choices = _field(completion, "choices")
    if not isinstance(choices, list):
        # A stream, or text: the server ignored "stream": false. Not an answer to bill.
        raise ModelCallError(
            FailureReason.MODEL_UNAVAILABLE,
            f"the model {model} did not answer with a chat completion",
        )
    pieces: list[StreamPiece] = []
    # The usage first: an answer the leakage check blocks is still billed as the server counted.
    usage = _field(completion, "usage")
    if usage:
        pieces.append(StreamPiece(usage=_usage(usage)))
    message = _field(choices[0], "message") if choices else None
    content = _field(message, "content")
    if isinstance(content, str) and content:
        pieces.append(StreamPiece(text=content))
    if calls := _tool_call_pieces(_field(message, "tool_calls"), whole=True):
        pieces.append(StreamPiece(tool_calls=calls))
    finish = _field(choices[0], "finish_reason") if choices else None
    if isinstance(finish, str) and finish:
        pieces.append(StreamPiece(finish=finish))
    return pieces


def _message(message: ChatMessage) -> dict[str, Any]:
    """A message as OpenAI's API takes it."""
    body: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.tool_calls is not None:
        body["tool_calls"] = [call.model_dump(mode="json") for call in message.tool_calls]
    if message.tool_call_id is not None:
        body["tool_call_id"] = message.tool_call_id
    return body


def _tool_call_pieces(calls: object, *, whole: bool = False) -> tuple[ToolCallPiece, ...]:
    """The tool calls (or pieces of them) of a message or a stream's delta; what is not a
    call in OpenAI's shape is left out. A whole message's calls are numbered in order (it
    sends no index)."""
    if not isinstance(calls, list):
        return ()
    pieces = []
    for position, call in enumerate(calls):
        index = position if whole else _field(call, "index")
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            continue
        function = _field(call, "function")
        call_id, name, arguments = (
            _field(call, "id"),
            _field(function, "name"),
            _field(function, "arguments"),
        )
        pieces.append(
            ToolCallPiece(
                index=index,
                id=call_id if isinstance(call_id, str) and call_id else None,
                name=name if isinstance(name, str) and name else None,
                arguments=arguments if isinstance(arguments, str) else "",
            )
        )
    return tuple(pieces)


def _usage(usage: object) -> TokenUsage:
    return TokenUsage(
        prompt_tokens=_count(usage, "prompt_tokens"),
        completion_tokens=_count(usage, "completion_tokens"),
    )


def _field(item: object, name: str) -> Any:
    """``item[name]`` of a JSON object from the stream; None when absent or not an object."""
    return item.get(name) if isinstance(item, dict) else None


def _count(usage: object, name: str) -> int:
    """A token count of the stream's usage object (0 when absent or not a count)."""
    value = _field(usage, name)
    counted = isinstance(value, int) and not isinstance(value, bool) and value >= 0
    return value if counted else 0


async def _open_stream(
    client: openai.AsyncOpenAI, body: dict[str, Any]
) -> openai.AsyncStream[object]:
    """``client.chat.completions.create(**body)`` without the SDK's request transform.

    ``create`` walks the whole body against its TypedDicts before sending it (about a third of
    the SDK's CPU in inference under load, bench/README.md); ours is plain JSON already.
    ``post`` is the SDK's documented call for a raw body: the same retries, timeouts, auth
    header, errors and stream parsing as ``create``.
    """
    return await client.post(
        "/chat/completions",
        cast_to=ChatCompletion,
        body=body,
        # The SSE media type, as the SSE specification has clients ask for it.
        options={"security": {"bearer_auth": True}, "headers": {"Accept": "text/event-stream"}},
        stream=True,
        # Chunks as parsed JSON: the SDK's typed chunk objects cost more than the call itself.
        stream_cls=openai.AsyncStream[object],
    )


async def _ask_whole(
    client: openai.AsyncOpenAI, body: dict[str, Any], limits: httpx2.Timeout
) -> object:
    """A whole completion as parsed JSON (``cast_to=object``: no typed model built), through
    ``post`` as in ``_open_stream``; a non-JSON answer comes back as its text."""
    return await client.post(
        "/chat/completions",
        cast_to=object,
        body=body,
        options={"security": {"bearer_auth": True}, "timeout": limits},
    )
