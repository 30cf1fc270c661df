"""Event contracts: every event round-trips through JSON, and bad events are refused clearly."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, date, datetime
from typing import Any

import pytest
from pydantic import ValidationError
from tenantry_common import events as ev
from tenantry_common.ids import derived_id

pytestmark = pytest.mark.unit

TENANT = uuid.uuid4()
CONFIG = ev.TenantConfig(
    tenant_name="Acme",
    tier=ev.Tier.PRO,
    model="smollm2-135m",
    allowed_models=["smollm2-135m"],
    temperature=0.2,
    max_tokens_per_request=256,
    system_prompt_template="You help {{tenant_name}}.",
    rate_limit_per_minute=60,
    daily_token_budget=500_000,
    monthly_spend_budget_micros=10_000_000,
    cache_similarity_threshold=0.9,
)
OPTIONS = ev.ChatOptions(
    model="smollm2-135m",
    max_tokens=256,
    temperature=0.2,
    config_version=3,
    cache_similarity_threshold=0.9,
)
RESERVATION = ev.Reservation(reserved_tokens=400, period_day=date(2026, 11, 23))
REPLY = ev.ReplyTo(topic="chat.responses.v1", partition=3)
REQ = uuid.uuid4()
DOC = uuid.uuid4()


def _request_fields() -> dict[str, object]:
    return {
        "tenant_id": TENANT,
        "request_id": REQ,
        "user_id": "client-1",
        "question": "What is the refund policy?",
        "reply_to": REPLY,
        "options": OPTIONS,
        "reservation": RESERVATION,
    }


EXAMPLES: list[ev.Event] = [
    ev.ChatRequested(**_request_fields()),
    ev.ContextRetrieved(
        **_request_fields(),
        passages=[
            ev.Passage(document_id=DOC, chunk_index=0, title="Refunds", text="30 days", score=0.8)
        ],
        corpus_version=5,
    ),
    ev.ChatDelta(tenant_id=TENANT, request_id=REQ, seq=0, delta="Hel"),
    ev.ChatCompleted(
        tenant_id=TENANT,
        request_id=REQ,
        user_id="c",
        question="q",
        answer="a",
        citations=[ev.Citation(document_id=DOC, chunk_index=0, title="Refunds", score=0.8)],
        model="smollm2-135m",
        usage=ev.TokenUsage(prompt_tokens=10, completion_tokens=5),
        config_version=3,
        corpus_version=5,
    ),
    ev.ChatFailed(
        tenant_id=TENANT, request_id=REQ, reason=ev.FailureReason.MODEL_TIMEOUT, message="slow"
    ),
    ev.SearchRequested(
        tenant_id=TENANT,
        request_id=REQ,
        user_id="admin-1",
        query="refunds",
        top_k=8,
        reply_to=REPLY,
    ),
    ev.SearchCompleted(
        tenant_id=TENANT,
        request_id=REQ,
        passages=[
            ev.Passage(document_id=DOC, chunk_index=2, title="Refunds", text="30 days", score=0.7)
        ],
        corpus_version=5,
    ),
    ev.DocumentSubmitted(
        tenant_id=TENANT, document_id=DOC, title="Refunds", text="Text", submitted_by="c"
    ),
    ev.DocumentDeleted(tenant_id=TENANT, document_id=DOC, deleted_by="c"),
    ev.DocumentIndexed(tenant_id=TENANT, document_id=DOC, chunks=3, corpus_version=4),
    ev.TenantConfigChanged(tenant_id=TENANT, version=3, config=CONFIG, changed_by="admin"),
    ev.TenantProvisioned(
        tenant_id=TENANT, tenant_name="Acme", tier=ev.Tier.PRO, config_version=1, config=CONFIG
    ),
    ev.TenantOffboarded(tenant_id=TENANT, tenant_name="Acme"),
    ev.TenantLifecycleAcknowledged(
        tenant_id=TENANT, service="retrieval", action=ev.LifecycleAction.PROVISIONED, succeeded=True
    ),
    ev.UsageRecorded(
        event_id=derived_id(REQ, "usage"),
        tenant_id=TENANT,
        request_id=REQ,
        user_id="c",
        model="smollm2-135m",
        prompt_tokens=10,
        completion_tokens=5,
        reservation=RESERVATION,
        source="inference",
    ),
    ev.BudgetThresholdCrossed(
        tenant_id=TENANT,
        kind=ev.BudgetKind.DAILY_TOKENS,
        period="2026-11-23",
        used=80,
        limit=100,
        threshold_percent=80,
    ),
    ev.BudgetExhausted(
        tenant_id=TENANT, kind=ev.BudgetKind.MONTHLY_SPEND, period="2026-11", used=1, limit=1
    ),
    ev.UsageRolledUp(
        tenant_id=TENANT,
        day=date(2026, 11, 23),
        model="m",
        requests=2,
        cached_requests=1,
        prompt_tokens=3,
        completion_tokens=4,
        cost_micros=5,
    ),
    ev.AuditRecorded(
        tenant_id=TENANT,
        audit_type=ev.AuditType.API_CALL,
        source="inference",
        resource_type="chat",
        resource_id=str(REQ),
        action="complete",
        status=ev.AuditStatus.SUCCESS,
        details={"tokens": 15},
    ),
    ev.AuditChainAnchored(
        tenant_id=TENANT, sequence=9, head_hash="ab" * 32, anchored_at=datetime.now(UTC)
    ),
]


def test_every_event_type_has_an_example() -> None:
    assert {type(e) for e in EXAMPLES} == set(ev.ALL_EVENTS)


@pytest.mark.parametrize("event", EXAMPLES, ids=lambda e: e.event_type)
def test_event_round_trips_through_json(event: ev.Event) -> None:
    raw = event.model_dump_json()
    again = ev.parse_event(raw)
    assert again == event
    assert type(again) is type(event)
    data = json.loads(raw)
    for field in ("event_id", "event_type", "schema_version", "tenant_id", "occurred_at"):
        assert field in data
    assert data["occurred_at"].endswith("Z") or data["occurred_at"].endswith("+00:00")


def test_unknown_schema_version_is_refused_with_a_clear_error() -> None:
    data = json.loads(EXAMPLES[0].model_dump_json()) | {"schema_version": 99}
    with pytest.raises(ValidationError, match="unsupported schema_version 99 for ChatRequested"):
        ev.ChatRequested.model_validate(data)


def _fields(model: type[ev.Contract]) -> set[str]:
    return set(model.model_fields)


def test_chat_completed_that_stopped_is_written_as_version_1_and_a_cut_one_as_version_2() -> None:
    """ChatCompleted version 2 added finish_reason. An answer that stopped carries nothing
    version 1 lacks, so it is written as version 1: a consumer not yet upgraded reads it."""
    [completed] = [e for e in EXAMPLES if isinstance(e, ev.ChatCompleted)]
    assert completed.finish_reason is ev.FinishReason.STOP
    assert completed.schema_version == 1
    written = json.loads(completed.model_dump_json())
    assert set(written) <= _fields(ev.ChatCompleted) - {"finish_reason"}  # version 1's fields
    assert written["schema_version"] == 1

    cut = ev.ChatCompleted(
        **completed.model_dump(exclude={"event_id", "schema_version", "finish_reason"}),
        finish_reason=ev.FinishReason.LENGTH,
    )
    assert cut.schema_version == 2
    written = json.loads(cut.model_dump_json())
    assert (written["schema_version"], written["finish_reason"]) == (2, "length")
    again = ev.parse_event(cut.model_dump_json().encode())
    assert again == cut


def test_chat_completed_reads_version_1_as_stop_and_refuses_version_4() -> None:
    [completed] = [e for e in EXAMPLES if isinstance(e, ev.ChatCompleted)]
    old = json.loads(completed.model_dump_json())
    assert old["schema_version"] == 1
    parsed = ev.parse_event(json.dumps(old).encode())
    assert isinstance(parsed, ev.ChatCompleted)
    assert parsed.finish_reason is ev.FinishReason.STOP
    with pytest.raises(ValidationError, match="unsupported schema_version 4 for ChatCompleted"):
        ev.ChatCompleted.model_validate(old | {"schema_version": 4})


@pytest.mark.parametrize("kind", [ev.ChatRequested, ev.ContextRetrieved])
def test_a_chat_request_without_stop_sequences_is_version_1_and_with_them_version_2(
    kind: type[ev.ChatRequested] | type[ev.ContextRetrieved],
) -> None:
    """Version 2 added options.stop: only a request that has some needs an upgraded consumer."""
    [plain] = [e for e in EXAMPLES if type(e) is kind]
    written = json.loads(plain.model_dump_json())
    assert written["schema_version"] == 1
    assert set(written["options"]) <= _fields(ev.ChatOptions) - {"stop"}  # version 1's fields

    fields = plain.model_dump(exclude={"event_id", "schema_version", "options"})
    options = OPTIONS.model_copy(update={"stop": ["\n\n", "END"]})
    stopping = kind.model_validate(fields | {"options": options})
    assert stopping.schema_version == 2
    written = json.loads(stopping.model_dump_json())
    assert (written["schema_version"], written["options"]["stop"]) == (2, ["\n\n", "END"])
    assert ev.parse_event(stopping.model_dump_json().encode()) == stopping
    # Read as written: a version-1 request stays version 1, and reads as having no stop.
    again = ev.parse_event(plain.model_dump_json().encode())
    assert (again.schema_version, again.options.stop) == (1, [])  # type: ignore[attr-defined]
    with pytest.raises(ValidationError, match=f"unsupported schema_version 7 for {kind.__name__}"):
        kind.model_validate(json.loads(stopping.model_dump_json()) | {"schema_version": 7})


@pytest.mark.parametrize("kind", [ev.ChatRequested, ev.ContextRetrieved])
def test_a_chat_request_with_sampling_hints_is_version_3_and_carries_only_those_given(
    kind: type[ev.ChatRequested] | type[ev.ContextRetrieved],
) -> None:
    """Version 3 added options.sampling: written only when the request set some, with or
    without stop sequences, and only the parameters it set."""
    [plain] = [e for e in EXAMPLES if type(e) is kind]
    assert "sampling" not in json.loads(plain.model_dump_json())["options"]
    fields = plain.model_dump(exclude={"event_id", "schema_version", "options"})
    for stop in ([], ["END"]):
        hints = ev.SamplingHints(top_p=0.5, seed=7)
        options = OPTIONS.model_copy(update={"stop": stop, "sampling": hints})
        sampled = kind.model_validate(fields | {"options": options})
        assert sampled.schema_version == 3
        written = json.loads(sampled.model_dump_json())
        assert written["schema_version"] == 3
        assert {k: v for k, v in written["options"]["sampling"].items() if v is not None} == {
            "top_p": 0.5,
            "seed": 7,
        }
        again = ev.parse_event(sampled.model_dump_json().encode())
        assert again == sampled
        assert again.options.sampling.given() == {"top_p": 0.5, "seed": 7}  # type: ignore[attr-defined,union-attr]


ANSWER_SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "string"}},
    "required": ["answer"],
}


@pytest.mark.parametrize("kind", [ev.ChatRequested, ev.ContextRetrieved])
@pytest.mark.parametrize(
    "form",
    [
        {"type": "json_object"},
        {"type": "json_schema", "json_schema": {"name": "answer", "schema": ANSWER_SCHEMA}},
        {
            "type": "json_schema",
            "json_schema": {
                "name": "answer",
                "description": "one answer",
                "schema": ANSWER_SCHEMA,
                "strict": True,
            },
        },
    ],
)
def test_a_chat_request_with_a_response_format_is_version_4_and_carries_it_as_openai_writes_it(
    kind: type[ev.ChatRequested] | type[ev.ContextRetrieved], form: dict[str, Any]
) -> None:
    """Version 4 added options.response_format, written (with the schema under OpenAI's own
    key, ``schema``) only when the request asked for one; the same with sampling hints."""
    [plain] = [e for e in EXAMPLES if type(e) is kind]
    assert "response_format" not in json.loads(plain.model_dump_json())["options"]
    fields = plain.model_dump(exclude={"event_id", "schema_version", "options"})
    for sampling in (None, ev.SamplingHints(seed=7)):
        options = OPTIONS.model_copy(
            update={"sampling": sampling, "response_format": ev.ResponseFormat(**form)}
        )
        formed = kind.model_validate(fields | {"options": options})
        written = json.loads(formed.model_dump_json())
        assert (written["schema_version"], written["options"]["response_format"]) == (4, form)
        assert ev.parse_event(formed.model_dump_json().encode()) == formed
        # As retrieval passes a request on: its fields, dumped and validated again.
        assert kind.model_validate(formed.model_dump()) == formed


@pytest.mark.parametrize(
    ("form", "complaint"),
    [
        ({"type": "json_schema"}, "json_schema is required"),
        (
            {"type": "json_object", "json_schema": {"name": "a", "schema": {}}},
            "json_schema is required",
        ),
        ({"type": "text"}, "type"),
        ({"type": "json_schema", "json_schema": {"name": "no spaces", "schema": {}}}, "name"),
        ({"type": "json_schema", "json_schema": {"name": "a", "schema": {}, "x": 1}}, "x"),
        (
            {
                "type": "json_schema",
                "json_schema": {
                    "name": "big",
                    "schema": {"description": "x" * ev.MAX_RESPONSE_SCHEMA_BYTES},
                },
            },
            "at most 32768",
        ),
    ],
)
def test_a_malformed_response_format_is_refused(form: dict[str, Any], complaint: str) -> None:
    with pytest.raises(ValidationError, match=complaint):
        ev.ResponseFormat.model_validate(form)


@pytest.mark.parametrize("kind", [ev.ChatRequested, ev.ContextRetrieved])
def test_a_chat_request_naming_its_end_user_is_version_3(
    kind: type[ev.ChatRequested] | type[ev.ContextRetrieved],
) -> None:
    [plain] = [e for e in EXAMPLES if type(e) is kind]
    assert "end_user" not in json.loads(plain.model_dump_json())
    fields = plain.model_dump(exclude={"event_id", "schema_version"})
    named = kind.model_validate(fields | {"end_user": "user-7f3a"})
    written = json.loads(named.model_dump_json())
    assert (written["schema_version"], written["end_user"]) == (3, "user-7f3a")
    assert ev.parse_event(named.model_dump_json().encode()) == named
    for bad in ("", "x" * (ev.MAX_END_USER_CHARS + 1)):
        with pytest.raises(ValidationError, match="end_user"):
            kind.model_validate(fields | {"end_user": bad})


WEATHER = ev.Tool(
    function=ev.ToolFunction(
        name="get_weather", parameters={"type": "object", "properties": {"city": {}}}
    )
)
CALL = ev.ToolCall(id="call_1", function=ev.FunctionCall(name="get_weather", arguments="{}"))


@pytest.mark.parametrize("kind", [ev.ChatRequested, ev.ContextRetrieved])
def test_a_chat_request_limited_to_some_documents_is_version_6(
    kind: type[ev.ChatRequested] | type[ev.ContextRetrieved],
) -> None:
    [plain] = [e for e in EXAMPLES if type(e) is kind]
    assert "document_ids" not in json.loads(plain.model_dump_json())["options"]
    fields = plain.model_dump(exclude={"event_id", "schema_version", "options"})
    scoped = OPTIONS.model_copy(update={"document_ids": [DOC], "stop": ["END"]})
    made = kind.model_validate(fields | {"options": scoped})
    written = json.loads(made.model_dump_json())
    assert (written["schema_version"], written["options"]["document_ids"]) == (6, [str(DOC)])
    assert ev.parse_event(made.model_dump_json().encode()) == made
    assert kind.model_validate(made.model_dump()) == made  # as retrieval passes it on
    too_many = [uuid.uuid4() for _ in range(ev.MAX_SCOPED_DOCUMENTS + 1)]
    with pytest.raises(ValidationError, match="document_ids"):
        ev.ChatOptions.model_validate(OPTIONS.model_dump() | {"document_ids": too_many})


def test_a_search_names_its_documents_only_when_limited_to_some() -> None:
    search = next(e for e in EXAMPLES if isinstance(e, ev.SearchRequested))
    assert "document_ids" not in json.loads(search.model_dump_json())
    scoped = search.model_copy(update={"document_ids": [DOC]})
    assert json.loads(scoped.model_dump_json())["document_ids"] == [str(DOC)]
    assert ev.parse_event(scoped.model_dump_json()) == scoped


@pytest.mark.parametrize("kind", [ev.ChatRequested, ev.ContextRetrieved])
def test_a_chat_request_offering_tools_or_carrying_their_results_is_version_5(
    kind: type[ev.ChatRequested] | type[ev.ContextRetrieved],
) -> None:
    """Version 5 added options.tools, tool_turns and tool messages in history: each alone
    makes a request version 5, and what it holds round-trips as written."""
    [plain] = [e for e in EXAMPLES if type(e) is kind]
    written = json.loads(plain.model_dump_json())
    assert "tools" not in written["options"]
    assert "tool_turns" not in written
    fields = plain.model_dump(exclude={"event_id", "schema_version"})
    tools = ev.ToolOptions(tools=[WEATHER], function="get_weather", parallel_tool_calls=False)
    turns = [
        ev.ChatMessage(role="assistant", content="", tool_calls=[CALL]),
        ev.ChatMessage(role="tool", content="Sunny", tool_call_id="call_1"),
    ]
    for change in (
        {"options": OPTIONS.model_copy(update={"tools": tools})},
        {"tool_turns": turns},
        {"history": turns},
    ):
        made = kind.model_validate(fields | change)
        assert made.schema_version == 5, change
        again = ev.parse_event(made.model_dump_json().encode())
        assert again == made
        assert kind.model_validate(made.model_dump()) == made  # as retrieval passes it on
    assert tools.body() == {
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "parameters": {"type": "object", "properties": {"city": {}}},
                },
            }
        ],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "parallel_tool_calls": False,
    }


@pytest.mark.parametrize(
    ("options", "complaint"),
    [
        ({"tools": []}, "at least 1"),
        ({"tools": [WEATHER, WEATHER]}, "same name"),
        ({"tools": [WEATHER], "function": "get_time"}, "not in tools"),
        ({"tools": [WEATHER], "function": "get_weather", "choice": "auto"}, "not both"),
        ({"tools": [{"function": {"name": "no spaces"}}]}, "pattern"),
        (
            {
                "tools": [
                    {
                        "function": {
                            "name": "f",
                            "description": "x" * 4_000,
                            "parameters": {"d": "x" * ev.MAX_TOOLS_BYTES},
                        }
                    }
                ]
            },
            "at most 65536",
        ),
    ],
)
def test_malformed_tools_are_refused(options: dict[str, Any], complaint: str) -> None:
    with pytest.raises(ValidationError, match=complaint):
        ev.ToolOptions.model_validate(options)


def test_an_answer_calling_tools_is_version_3_of_chat_completed() -> None:
    [completed] = [e for e in EXAMPLES if isinstance(e, ev.ChatCompleted)]
    calling = ev.ChatCompleted(
        **completed.model_dump(exclude={"event_id", "schema_version", "finish_reason"}),
        finish_reason=ev.FinishReason.TOOL_CALLS,
        tool_calls=[CALL],
    )
    written = json.loads(calling.model_dump_json())
    assert (written["schema_version"], written["finish_reason"]) == (3, "tool_calls")
    assert written["tool_calls"] == [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
    ]
    assert ev.parse_event(calling.model_dump_json().encode()) == calling
    assert "tool_calls" not in json.loads(completed.model_dump_json())


def test_a_piece_naming_no_model_is_version_1_and_a_fallbacks_version_2() -> None:
    piece = ev.ChatDelta(tenant_id=TENANT, request_id=uuid.uuid4(), seq=0, delta="Hel")
    written = json.loads(piece.model_dump_json())
    assert written["schema_version"] == 1
    assert "model" not in written
    named = ev.ChatDelta(**piece.model_dump(exclude={"schema_version"}) | {"model": "fallback"})
    written = json.loads(named.model_dump_json())
    assert (written["schema_version"], written["model"]) == (2, "fallback")
    assert ev.parse_event(named.model_dump_json().encode()) == named
    with pytest.raises(ValidationError, match="unsupported schema_version 3 for ChatDelta"):
        ev.ChatDelta.model_validate(written | {"schema_version": 3})


def test_a_failure_is_version_1_and_a_rejected_request_version_2() -> None:
    """ChatFailed version 2 added the reason request_rejected: an edge that does not know it
    refuses the event by its version instead of failing on an unknown reason."""
    [failed] = [e for e in EXAMPLES if isinstance(e, ev.ChatFailed)]
    assert failed.reason is not ev.FailureReason.REQUEST_REJECTED
    assert json.loads(failed.model_dump_json())["schema_version"] == 1
    rejected = ev.ChatFailed(
        **failed.model_dump(exclude={"event_id", "schema_version", "reason"}),
        reason=ev.FailureReason.REQUEST_REJECTED,
    )
    written = json.loads(rejected.model_dump_json())
    assert (written["schema_version"], written["reason"]) == (2, "request_rejected")
    assert ev.parse_event(rejected.model_dump_json().encode()) == rejected
    with pytest.raises(ValidationError, match="unsupported schema_version 3 for ChatFailed"):
        ev.ChatFailed.model_validate(written | {"schema_version": 3})


@pytest.mark.parametrize("kind", [ev.TenantConfigChanged, ev.TenantProvisioned])
def test_a_config_limiting_its_end_users_is_written_as_version_2(
    kind: type[ev.TenantConfigChanged] | type[ev.TenantProvisioned],
) -> None:
    [plain] = [e for e in EXAMPLES if type(e) is kind]
    written = json.loads(plain.model_dump_json())
    assert written["schema_version"] == 1
    assert "end_user_rate_limit_per_minute" not in written["config"]
    fields = plain.model_dump(exclude={"event_id", "schema_version", "config"})
    limited = kind.model_validate(
        fields | {"config": CONFIG.model_copy(update={"end_user_rate_limit_per_minute": 10})}
    )
    written = json.loads(limited.model_dump_json())
    assert (written["schema_version"], written["config"]["end_user_rate_limit_per_minute"]) == (
        2,
        10,
    )
    assert ev.parse_event(limited.model_dump_json().encode()) == limited
    with pytest.raises(ValidationError, match=f"unsupported schema_version 4 for {kind.__name__}"):
        kind.model_validate(written | {"schema_version": 4})


@pytest.mark.parametrize("kind", [ev.TenantConfigChanged, ev.TenantProvisioned])
def test_a_config_budgeting_its_end_users_is_written_as_version_3(
    kind: type[ev.TenantConfigChanged] | type[ev.TenantProvisioned],
) -> None:
    [plain] = [e for e in EXAMPLES if type(e) is kind]
    assert "end_user_daily_token_budget" not in json.loads(plain.model_dump_json())["config"]
    fields = plain.model_dump(exclude={"event_id", "schema_version", "config"})
    for rate in (0, 10):  # with or without the version-2 field
        config = CONFIG.model_copy(
            update={"end_user_daily_token_budget": 5_000, "end_user_rate_limit_per_minute": rate}
        )
        budgeted = kind.model_validate(fields | {"config": config})
        written = json.loads(budgeted.model_dump_json())
        assert (written["schema_version"], written["config"]["end_user_daily_token_budget"]) == (
            3,
            5_000,
        )
        assert ev.parse_event(budgeted.model_dump_json().encode()) == budgeted


def test_usage_without_an_end_user_is_version_1_and_with_one_version_2() -> None:
    [usage] = [e for e in EXAMPLES if isinstance(e, ev.UsageRecorded)]
    written = json.loads(usage.model_dump_json())
    assert written["schema_version"] == 1
    assert "end_user" not in written
    named = ev.UsageRecorded(
        **usage.model_dump(exclude={"event_id", "schema_version"}), end_user="user-7f3a"
    )
    written = json.loads(named.model_dump_json())
    assert (written["schema_version"], written["end_user"]) == (2, "user-7f3a")
    assert ev.parse_event(named.model_dump_json().encode()) == named
    with pytest.raises(ValidationError, match="unsupported schema_version 3 for UsageRecorded"):
        ev.UsageRecorded.model_validate(written | {"schema_version": 3})
    for bad in ("", "x" * (ev.MAX_END_USER_CHARS + 1)):
        with pytest.raises(ValidationError, match="end_user"):
            ev.UsageRecorded.model_validate(written | {"end_user": bad})


@pytest.mark.parametrize(
    ("name", "value"),
    [("top_p", 1.5), ("top_p", -0.1), ("presence_penalty", 2.5), ("frequency_penalty", -3.0)],
)
def test_sampling_hints_out_of_range_are_refused(name: str, value: float) -> None:
    with pytest.raises(ValidationError, match=name):
        ev.SamplingHints.model_validate({name: value})


def test_a_chat_request_takes_at_most_4_stop_sequences() -> None:
    with pytest.raises(ValidationError, match="stop"):
        OPTIONS.model_validate(OPTIONS.model_dump() | {"stop": ["a", "b", "c", "d", "e"]})
    with pytest.raises(ValidationError, match="stop"):
        OPTIONS.model_validate(OPTIONS.model_dump() | {"stop": [""]})


def test_unknown_event_type_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown event_type 'Nope'"):
        ev.parse_event(b'{"event_type": "Nope"}')


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"tenant_id": "not-a-uuid"}, "tenant_id"),
        ({"occurred_at": "2026-01-01T00:00:00"}, "timezone"),
        ({"question": ""}, "question"),
        ({"surprise": 1}, "Extra inputs are not permitted"),
        ({"event_type": "ChatCompleted"}, "event_type"),
    ],
)
def test_malformed_events_are_refused(change: dict[str, object], message: str) -> None:
    data = json.loads(EXAMPLES[0].model_dump_json()) | change
    with pytest.raises(ValidationError, match=message):
        ev.ChatRequested.model_validate(data)


def test_missing_tenant_is_refused() -> None:
    data = json.loads(EXAMPLES[0].model_dump_json())
    del data["tenant_id"]
    with pytest.raises(ValidationError, match="tenant_id"):
        ev.ChatRequested.model_validate(data)


def test_tenant_config_refuses_a_model_outside_allowed_models() -> None:
    with pytest.raises(ValidationError, match="not in allowed_models"):
        CONFIG.model_copy(update={}).model_validate(CONFIG.model_dump() | {"model": "gpt-4o-mini"})


@pytest.mark.parametrize(
    ("change", "cacheable"),
    [
        ({}, True),
        ({"semantic_cache": False}, False),  # the tenant does not allow it
        ({"cached": True}, False),  # already the cache's answer
        ({"finish_reason": ev.FinishReason.LENGTH}, True),  # cut short: cached, and says so
        (  # a call of the client's tools answers its tools, not the question
            {
                "tool_calls": [
                    ev.ToolCall(id="c", function=ev.FunctionCall(name="f", arguments="{}"))
                ]
            },
            False,
        ),
    ],
)
def test_a_fresh_answer_the_tenant_allows_is_cacheable(
    change: dict[str, object], cacheable: bool
) -> None:
    [answer] = [e for e in EXAMPLES if isinstance(e, ev.ChatCompleted)]
    assert answer.finish_reason is ev.FinishReason.STOP  # older producers send none
    assert answer.model_copy(update=change).cacheable is cacheable


def test_response_union_decodes_by_event_type() -> None:
    from pydantic import TypeAdapter

    adapter: TypeAdapter[ev.ChatDelta | ev.ChatCompleted | ev.ChatFailed | ev.SearchCompleted] = (
        TypeAdapter(ev.ChatResponseEvent)
    )
    responses = [e for e in EXAMPLES if isinstance(e, ev.ChatDelta | ev.ChatCompleted)]
    responses += [e for e in EXAMPLES if isinstance(e, ev.ChatFailed | ev.SearchCompleted)]
    assert len(responses) == 4
    for event in responses:
        assert adapter.validate_json(event.model_dump_json()) == event


def test_question_union_takes_chat_requests_and_searches() -> None:
    from pydantic import TypeAdapter

    adapter: TypeAdapter[ev.ChatRequested | ev.SearchRequested] = TypeAdapter(ev.QuestionEvent)
    questions = [e for e in EXAMPLES if isinstance(e, ev.ChatRequested | ev.SearchRequested)]
    assert len(questions) == 2
    for event in questions:
        assert adapter.validate_json(event.model_dump_json()) == event
    context = next(e for e in EXAMPLES if isinstance(e, ev.ContextRetrieved))
    with pytest.raises(ValidationError):
        adapter.validate_json(context.model_dump_json())


@pytest.mark.parametrize(
    "change",
    [{"top_k": 0}, {"top_k": ev.MAX_SEARCH_RESULTS + 1}, {"query": ""}, {"query": "q" * 16_001}],
)
def test_a_search_outside_the_contract_is_refused(change: dict[str, object]) -> None:
    search = next(e for e in EXAMPLES if isinstance(e, ev.SearchRequested))
    raw = json.loads(search.model_dump_json()) | change
    with pytest.raises(ValidationError):
        ev.SearchRequested.model_validate(raw)


def test_derived_ids_are_stable_and_distinct_per_purpose() -> None:
    assert derived_id(REQ, "usage") == derived_id(REQ, "usage")
    assert derived_id(REQ, "usage") != derived_id(REQ, "completed")


def test_json_schemas_are_exported_for_every_event(tmp_path) -> None:
    from tenantry_common.schemas import export_schemas

    written = export_schemas(tmp_path)
    assert {p.stem for p in written} == {cls.__name__ for cls in ev.ALL_EVENTS} | {"topics"}
    usage = json.loads((tmp_path / "UsageRecorded.json").read_text())
    assert usage["properties"]["schema_version"]
    assert "tenant_id" in usage["required"]


def test_committed_json_schemas_match_the_contracts(tmp_path) -> None:
    from pathlib import Path

    from tenantry_common.schemas import export_schemas

    committed = Path(__file__).resolve().parents[4] / "docs" / "schemas"
    for path in export_schemas(tmp_path):
        assert (committed / path.name).read_text() == path.read_text(), (
            f"docs/schemas/{path.name} is stale: run `make schemas`"
        )
