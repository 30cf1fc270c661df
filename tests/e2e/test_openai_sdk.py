"""The edge's OpenAI-compatible API through the real ``openai`` SDK, as a frontend built on it
would call it: the tenant's models, whole and streamed answers from the local model (with the
stream's usage chunk), stop sequences, seeds, JSON mode and structured outputs, the end user in
the audit trail, and refusals (among them parameters the platform does not support) arriving as
the SDK's own typed errors."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from pydantic import BaseModel

from tests.e2e.harness import (
    OFFLINE_MODEL,
    OVERSTATED_MODEL,
    System,
    client_token,
    onboard,
    wait_until,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def sdk(system: System, operator_secret_file: Path) -> openai.OpenAI:
    """An OpenAI client holding a new tenant member's token, pointed at the edge."""
    http = httpx.Client(base_url=system.edge.url, timeout=120)
    operator = client_token(http, "operator", operator_secret_file.read_text())
    _, admin = onboard(http, operator, name="SDK Frontend", tier="pro")
    # Short answers from the local model; no cache, so every question reaches the model.
    r = http.put(
        "/v1/config",
        json={
            "allowed_models": ["smollm2-135m", OFFLINE_MODEL, OVERSTATED_MODEL],
            "max_tokens_per_request": 24,
            "features": {
                "rag": False,
                "streaming": True,
                "semantic_cache": False,
                "fine_tuning": False,
            },
        },
        headers={"Authorization": f"Bearer {admin}"},
    )
    assert r.status_code == 200, r.text
    return openai.OpenAI(base_url=f"{system.edge.url}/v1", api_key=admin, max_retries=0)


def test_models_are_the_tenants_own(sdk: openai.OpenAI) -> None:
    models = [model.id for model in sdk.models.list()]
    assert models == ["smollm2-135m", OFFLINE_MODEL, OVERSTATED_MODEL]  # its default first
    card = sdk.models.retrieve("smollm2-135m")
    assert (card.model_extra or {})["context_window"] == 2048
    assert (card.model_extra or {})["pricing"] == {
        "input_micros_per_mtok": 50_000,
        "output_micros_per_mtok": 100_000,
    }
    assert sdk.models.retrieve("smollm2-135m").id == "smollm2-135m"
    with pytest.raises(openai.NotFoundError) as refused:
        sdk.models.retrieve("gpt-4o-mini")
    assert refused.value.code == "model_not_found"


def test_whole_and_streamed_answers_carry_text_and_usage(sdk: openai.OpenAI) -> None:
    whole = sdk.chat.completions.create(
        model="smollm2-135m",
        messages=[{"role": "user", "content": "Name one colour of the sky."}],
        max_tokens=12,
    )
    assert whole.choices[0].message.content
    assert whole.usage is not None
    assert whole.usage.completion_tokens > 0
    # The platform's addition is kept by the SDK (this tenant has RAG off: no sources).
    assert (whole.model_extra or {}).get("citations") == []

    text: list[str] = []
    usage = None
    with sdk.chat.completions.create(
        model="smollm2-135m",
        messages=[{"role": "user", "content": "Name one animal that can fly."}],
        max_completion_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
    ) as stream:
        for chunk in stream:
            if chunk.usage is not None:
                usage = chunk.usage
            text.extend(choice.delta.content or "" for choice in chunk.choices)
    assert "".join(text).strip()
    assert usage is not None
    assert usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_the_answer_ends_at_the_requests_stop_sequence(sdk: openai.OpenAI) -> None:
    answer = sdk.chat.completions.create(
        model="smollm2-135m",
        messages=[{"role": "user", "content": "Describe the sea in three sentences."}],
        stop=["."],
    )
    # (Not its finish_reason: whether this tiny model ends a sentence within the tenant's
    # 24 tokens is up to it.)
    assert "." not in (answer.choices[0].message.content or "")


def test_a_seed_makes_a_sampled_answer_repeatable(sdk: openai.OpenAI) -> None:
    """At a high temperature the local model's answers vary; with the same seed (sent on to the
    model with top_p) they are the same."""

    def ask(seed: int) -> str:
        answer = sdk.chat.completions.create(
            model="smollm2-135m",
            messages=[{"role": "user", "content": "Invent a name for a new colour."}],
            temperature=1.5,
            top_p=0.95,
            seed=seed,
        )
        return answer.choices[0].message.content or ""

    first = ask(1234)
    assert first
    assert ask(1234) == first
    # Other seeds give other answers (any one of them might repeat the first by chance).
    assert {ask(seed) for seed in (1, 2, 3)} - {first}


def test_the_end_user_a_request_names_is_in_the_tenants_audit_trail_and_usage(
    sdk: openai.OpenAI, system: System
) -> None:
    """OpenAI's ``user`` reaches inference's audit record of the call, which the tenant's
    admin exports, and the tenant's usage per end user."""
    end_user = f"end-user-{uuid.uuid4().hex[:12]}"
    sdk.chat.completions.create(
        model="smollm2-135m",
        messages=[{"role": "user", "content": "Say hi."}],
        max_tokens=4,
        user=end_user,
    )
    http = httpx.Client(base_url=system.edge.url, timeout=30)
    admin = {"Authorization": f"Bearer {sdk.api_key}"}

    def audited() -> list[dict[str, Any]]:
        r = http.get("/v1/audit/export", params={"format": "jsonl"}, headers=admin)
        assert r.status_code == 200, r.text
        records = [json.loads(line) for line in r.text.splitlines() if line.strip()]
        return [rec for rec in records if end_user in json.dumps(rec)]

    def used() -> list[dict[str, Any]]:
        r = http.get("/v1/usage/end-users", headers=admin)
        assert r.status_code == 200, r.text
        return [u for u in r.json()["end_users"] if u["end_user"] == end_user]

    wait_until(audited, 60, "the end user in the audit trail")
    assert [rec["action"] for rec in audited()] == ["chat.completion"]
    wait_until(used, 60, "the end user's usage")
    [mine] = used()
    assert mine["requests"] == 1
    assert mine["completion_tokens"] > 0


def test_a_model_whose_provider_is_down_is_answered_by_its_fallback(sdk: openai.OpenAI) -> None:
    """The offline provider refuses connections; after the SDK's retries inference asks the
    catalogue's fallback, the local model, and the answer says which model gave it."""
    answer = sdk.chat.completions.create(
        model=OFFLINE_MODEL,
        messages=[{"role": "user", "content": "Name one colour of the sea."}],
        max_tokens=8,
    )
    assert answer.choices[0].message.content
    assert answer.model == "smollm2-135m"
    assert answer.usage is not None
    assert answer.usage.completion_tokens > 0
    # Streamed, every chunk names the model that answers.
    chunks = list(
        sdk.chat.completions.create(
            model=OFFLINE_MODEL,
            messages=[{"role": "user", "content": "Name one colour of the sky."}],
            max_tokens=8,
            stream=True,
        )
    )
    assert len(chunks) > 2
    assert {chunk.model for chunk in chunks} == {"smollm2-135m"}


def test_a_request_the_model_server_refuses_as_invalid_reaches_the_sdk_as_a_400(
    sdk: openai.OpenAI,
) -> None:
    """The catalogue says the model's window is 32k tokens; its server has 2k and refuses a
    prompt of ≈ 3,900 tokens with a 400 (context_length_exceeded). The client gets a 400
    (which the SDKs do not retry, where they retry a 503 twice), naming the server's code but
    not echoing its text."""
    # ≈ 5,000 characters (within the edge's 16,000 for a question), ≈ 3,900 tokens: the
    # tokenizer splits digits one by one.
    words = " ".join(f"w{i}" for i in range(1_000))
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.chat.completions.create(
            model=OVERSTATED_MODEL,
            messages=[{"role": "user", "content": f"Count these: {words}"}],
            max_tokens=8,
        )
    assert refused.value.code == "request_rejected"
    message = refused.value.message
    assert "rejected the request as invalid (HTTP 400: context_length_exceeded)" in message
    assert "w999" not in message
    assert "maximum context length" not in message
    # The same model answers a prompt its server can hold.
    answer = sdk.chat.completions.create(
        model=OVERSTATED_MODEL,
        messages=[{"role": "user", "content": "Name one colour of the sea."}],
        max_tokens=8,
    )
    assert answer.choices[0].message.content


class Refund(BaseModel):
    """The client's own type for a structured answer."""

    days: int


def test_structured_outputs_parse_into_the_clients_own_type(sdk: openai.OpenAI) -> None:
    """The SDK's ``parse`` sends the type as a strict JSON Schema; inference hands it to the
    local llama-cpp-python server as that server takes a schema (inside JSON mode), whose
    grammar holds the model to it: whole and streamed, the answer parses into the type."""
    question = "Refunds are accepted within 30 days of purchase. Within how many days?"
    completion = sdk.chat.completions.parse(
        model="smollm2-135m",
        messages=[{"role": "user", "content": question}],
        response_format=Refund,
        temperature=0,
    )
    refund = completion.choices[0].message.parsed
    assert isinstance(refund, Refund), completion.choices[0].message.content
    assert completion.model == "smollm2-135m"

    schema = Refund.model_json_schema() | {"additionalProperties": False}
    streamed = sdk.chat.completions.create(
        model="smollm2-135m",
        messages=[{"role": "user", "content": question}],
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "refund", "schema": schema, "strict": True},
        },
        temperature=0,
        stream=True,
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in streamed if chunk.choices)
    Refund.model_validate_json(text)


def test_json_mode_answers_a_json_object(sdk: openai.OpenAI) -> None:
    """JSON mode reaches the local model's server, whose grammar holds it to JSON; asked the
    same without it, the model answers in prose."""

    def ask(**form: Any) -> Any:
        return sdk.chat.completions.create(
            model="smollm2-135m",
            messages=[
                {
                    "role": "user",
                    "content": "What colour is the sea? "
                    'Answer as a JSON object with one key, "colour".',
                }
            ],
            temperature=0,
            **form,
        ).choices[0]

    shaped = ask(response_format={"type": "json_object"})
    content = shaped.message.content or ""
    assert shaped.finish_reason == "stop", content
    assert isinstance(json.loads(content), dict), content
    prose = ask().message.content or ""
    with pytest.raises(json.JSONDecodeError):
        json.loads(prose)


def test_refusals_arrive_as_the_sdks_typed_errors(sdk: openai.OpenAI, system: System) -> None:
    with pytest.raises(openai.NotFoundError) as not_allowed:
        sdk.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )
    assert (not_allowed.value.code, not_allowed.value.param) == ("model_not_found", "model")

    with pytest.raises(openai.BadRequestError) as invalid:
        sdk.chat.completions.create(model="smollm2-135m", messages=[])
    assert invalid.value.param == "messages"

    with pytest.raises(openai.BadRequestError) as hot:
        sdk.chat.completions.create(
            model="smollm2-135m", messages=[{"role": "user", "content": "hi"}], temperature=7
        )
    assert hot.value.param == "temperature"

    with pytest.raises(openai.BadRequestError) as tools:
        sdk.chat.completions.create(
            model="smollm2-135m",
            messages=[{"role": "user", "content": "What is the weather?"}],
            tools=[{"type": "function", "function": {"name": "weather", "parameters": {}}}],
            tool_choice={"type": "function", "function": {"name": "forecast"}},
        )
    assert "not in tools" in tools.value.message

    stranger = openai.OpenAI(base_url=f"{system.edge.url}/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as unknown:
        stranger.models.list()
    assert unknown.value.code == "invalid_api_key"


WEATHER_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "enum": ["Paris", "Berlin", "Rome"]}},
            "required": ["city"],
        },
    },
}
MUST_CALL: Any = {"type": "function", "function": {"name": "get_weather"}}


def test_the_local_model_calls_the_tool_it_must_and_answers_from_its_result(
    sdk: openai.OpenAI,
) -> None:
    """Function calling through the SDK against the real local model (its server holds a
    forced call to the tool's JSON Schema): the call whole and streamed, then an answer from
    the tool's result."""
    question: Any = {"role": "user", "content": "What is the weather in Paris?"}
    whole = sdk.chat.completions.create(
        model="smollm2-135m",
        messages=[question],
        tools=[WEATHER_TOOL],
        tool_choice=MUST_CALL,
        max_tokens=48,
    )
    [choice] = whole.choices
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls or []
    assert call.type == "function"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments)["city"] in {"Paris", "Berlin", "Rome"}

    named: dict[int, list[str]] = {}
    finish = None
    for chunk in sdk.chat.completions.create(
        model="smollm2-135m",
        messages=[question],
        tools=[WEATHER_TOOL],
        tool_choice=MUST_CALL,
        max_tokens=48,
        stream=True,
    ):
        for delta_call in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            parts = named.setdefault(delta_call.index, ["", ""])
            if delta_call.function is not None:
                parts[0] += delta_call.function.name or ""
                parts[1] += delta_call.function.arguments or ""
        if chunk.choices and chunk.choices[0].finish_reason:
            finish = chunk.choices[0].finish_reason
    assert finish == "tool_calls"
    assert named[0][0] == "get_weather"
    assert json.loads(named[0][1])["city"] in {"Paris", "Berlin", "Rome"}

    turns: Any = [
        question,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": call.id, "type": "function", "function": call.function.model_dump()}
            ],
        },
        {"role": "tool", "tool_call_id": call.id, "content": "Sunny and 21 degrees."},
    ]
    answered = sdk.chat.completions.create(
        model="smollm2-135m", messages=turns, tools=[WEATHER_TOOL], max_tokens=32
    )
    assert answered.choices[0].message.content
    assert answered.choices[0].finish_reason in {"stop", "length"}
