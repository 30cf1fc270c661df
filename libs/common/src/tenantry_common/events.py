"""Event contracts: one pydantic model per event, past tense, versioned.

Every event carries ``event_id`` (the idempotency key), ``event_type``, ``schema_version``,
``tenant_id`` and ``occurred_at`` (UTC). Topics that carry several event types decode through
the ``*Event`` unions below, discriminated by ``event_type``. A change to a contract bumps its
``schema_version``; consumers refuse versions they do not know with a clear error.
"""

from __future__ import annotations

import enum
import json
import uuid
from datetime import date, datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    field_validator,
    model_validator,
)

from tenantry_common.ids import utcnow

SCHEMA_VERSION = 1


class UnsupportedSchemaVersion(ValueError):
    """An event declares a schema version this code does not understand."""


class Contract(BaseModel):
    """Base of every payload model: strict about unknown fields, immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Event(Contract):
    """Fields every event carries."""

    supported_versions: ClassVar[frozenset[int]] = frozenset({SCHEMA_VERSION})

    event_id: uuid.UUID = Field(
        default_factory=uuid.uuid4,
        description="Unique id of this event; consumers deduplicate on it.",
    )
    event_type: str
    schema_version: int = Field(
        default=SCHEMA_VERSION,
        description="Version of this contract: the oldest one that carries what the event holds.",
    )
    tenant_id: uuid.UUID = Field(
        description="The tenant the event belongs to (from a verified token)."
    )
    occurred_at: AwareDatetime = Field(
        default_factory=utcnow, description="When it happened (UTC)."
    )

    def model_post_init(self, context: Any, /) -> None:
        # An event built here (not read) is written as the oldest version that carries it.
        if "schema_version" not in self.model_fields_set:
            version = self.written_version()
            if version != SCHEMA_VERSION:
                object.__setattr__(self, "schema_version", version)

    def written_version(self) -> int:
        """The oldest version of this contract that carries everything this event holds.

        A field added in a later version is left out of the JSON while it holds its default
        (``exclude_if``), and the event is then written as the older version: consumers not
        yet upgraded read it, so a rolling upgrade refuses only events that use what is new.
        """
        return SCHEMA_VERSION

    @field_validator("schema_version")
    @classmethod
    def _refuse_unknown_version(cls, version: int) -> int:
        # A field validator, not a "before" model validator: that one makes pydantic build a
        # Python dict of the whole JSON first and loses its direct JSON path (7.6 vs 3.3 us
        # per usage event, measured on 2026-12-02).
        if version not in cls.supported_versions:
            raise UnsupportedSchemaVersion(
                f"unsupported schema_version {version!r} for {cls.__name__}; "
                f"this consumer understands {sorted(cls.supported_versions)}"
            )
        return version


# --------------------------------------------------------------------------- shared parts


class Tier(enum.StrEnum):
    FREE = "free"
    PRO = "pro"
    ENTERPRISE = "enterprise"


class LeakagePolicy(enum.StrEnum):
    BLOCK = "block"
    REDACT = "redact"


class FeatureFlags(Contract):
    """Per-tenant switches."""

    rag: bool = True
    streaming: bool = True
    semantic_cache: bool = True
    fine_tuning: bool = Field(
        default=False,
        description="The tenant may use its own models (fine-tuned ones the catalogue names it "
        "the owner of); enterprise tier only.",
    )


#: A tenant's rate per end user (``TenantConfig.end_user_rate_limit_per_minute``), as events
#: and the admin API's view of a config both declare it.
EndUserRateLimit = Annotated[
    int,
    Field(
        ge=0,
        le=1_000_000,
        description="Chat requests per minute each end user a request names (OpenAI's `user`) "
        "may make, within the tenant's own rate; 0: no such limit. Written only when set "
        "(config events version 2).",
    ),
]


#: A tenant's daily token budget per end user (``TenantConfig.end_user_daily_token_budget``).
EndUserDailyTokens = Annotated[
    int,
    Field(
        ge=0,
        le=10**12,
        description="Tokens each end user a request names (OpenAI's `user`) may use per UTC "
        "day, within the tenant's own daily budget; 0: no such budget. Written only when set "
        "(config events version 3).",
    ),
]


class TenantConfig(Contract):
    """A tenant's whole configuration, as the edge validated and versioned it."""

    tenant_name: str = Field(min_length=1, max_length=200)
    tier: Tier
    model: str = Field(min_length=1, max_length=200)
    allowed_models: list[str] = Field(min_length=1)
    temperature: float = Field(ge=0.0, le=2.0)
    max_tokens_per_request: int = Field(ge=1, le=32_768)
    system_prompt_template: str = Field(max_length=8_000)
    custom_instructions: str = Field(default="", max_length=4_000)
    features: FeatureFlags = Field(default_factory=FeatureFlags)
    rate_limit_per_minute: int = Field(ge=1, le=1_000_000)
    end_user_rate_limit_per_minute: EndUserRateLimit = Field(
        default=0, exclude_if=lambda limit: limit == 0
    )
    daily_token_budget: int = Field(ge=0)
    end_user_daily_token_budget: EndUserDailyTokens = Field(
        default=0, exclude_if=lambda budget: budget == 0
    )
    monthly_spend_budget_micros: int = Field(
        ge=0, description="Monthly spend budget, micro-dollars."
    )
    cache_similarity_threshold: float = Field(ge=0.0, le=1.0)
    leakage_policy: LeakagePolicy = LeakagePolicy.BLOCK

    @model_validator(mode="after")
    def _model_is_allowed(self) -> TenantConfig:
        if self.model not in self.allowed_models:
            raise ValueError(f"model {self.model!r} is not in allowed_models")
        return self


class ReplyTo(Contract):
    """Where the answer to a chat request must go: the partition its edge replica reads."""

    topic: str
    partition: int = Field(ge=0)


class SamplingHints(Contract):
    """A request's own sampling parameters beyond the temperature, sent to the model as given.

    Each is OpenAI's parameter of the same name; one left out is the provider's default.
    """

    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)

    def given(self) -> dict[str, float | int]:
        """The parameters the request set, by name."""
        return {name: value for name, value in self if value is not None}


#: The most a response format's JSON Schema may take, as JSON: it rides on every event of the
#: request and goes to the model with it.
MAX_RESPONSE_SCHEMA_BYTES = 32_768


class JsonSchemaFormat(Contract):
    """OpenAI's ``response_format.json_schema``: the schema an answer must follow."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, validate_by_name=True, serialize_by_alias=True
    )

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str | None = Field(
        default=None, max_length=2_000, exclude_if=lambda text: text is None
    )
    schema_: dict[str, Any] = Field(
        default_factory=dict, alias="schema", description="The JSON Schema, as the client sent it."
    )
    strict: bool | None = Field(default=None, exclude_if=lambda strict: strict is None)

    @field_validator("schema_")
    @classmethod
    def _bounded(cls, schema: dict[str, Any]) -> dict[str, Any]:
        size = len(json.dumps(schema, separators=(",", ":")).encode())
        if size > MAX_RESPONSE_SCHEMA_BYTES:
            raise ValueError(
                f"the schema takes {size} bytes as JSON; at most {MAX_RESPONSE_SCHEMA_BYTES}"
            )
        return schema


class ResponseFormat(Contract):
    """The form a request asked its answer in (OpenAI's ``response_format``), other than text:
    any JSON object, or one that follows a JSON Schema. Sent to the model as its catalogue entry
    says it takes it (``ModelSpec.response_formats``)."""

    type: Literal["json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = Field(default=None, exclude_if=lambda spec: spec is None)

    @model_validator(mode="after")
    def _schema_iff_json_schema(self) -> ResponseFormat:
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError("json_schema is required with type json_schema, and only then")
        return self


#: The most a request's tool definitions may take, as JSON: they ride on every event of the
#: request and go to the model with it.
MAX_TOOLS_BYTES = 65_536


class ToolFunction(Contract):
    """A function the model may call (OpenAI's ``tools[].function``)."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str | None = Field(
        default=None, max_length=4_000, exclude_if=lambda text: text is None
    )
    parameters: dict[str, Any] | None = Field(
        default=None,
        description="Its arguments' JSON Schema, as the client sent it.",
        exclude_if=lambda schema: schema is None,
    )
    strict: bool | None = Field(default=None, exclude_if=lambda strict: strict is None)


class Tool(Contract):
    type: Literal["function"] = "function"
    function: ToolFunction


class ToolOptions(Contract):
    """The tools a request offered the model and how it may use them (OpenAI's ``tools``,
    ``tool_choice`` and ``parallel_tool_calls``), sent to the model as given."""

    tools: list[Tool] = Field(min_length=1, max_length=128)
    choice: Literal["auto", "required", "none"] | None = Field(
        default=None,
        description="OpenAI's tool_choice as a word; None with `function` or for the default.",
        exclude_if=lambda choice: choice is None,
    )
    function: str | None = Field(
        default=None,
        max_length=64,
        description="The one tool the model must call (tool_choice naming a function).",
        exclude_if=lambda name: name is None,
    )
    parallel_tool_calls: bool | None = Field(
        default=None, exclude_if=lambda parallel: parallel is None
    )

    @model_validator(mode="after")
    def _checked(self) -> ToolOptions:
        names = [tool.function.name for tool in self.tools]
        if len(set(names)) != len(names):
            raise ValueError("two tools have the same name")
        if self.function is not None and self.function not in names:
            raise ValueError(f"tool_choice names {self.function!r}, which is not in tools")
        if self.choice is not None and self.function is not None:
            raise ValueError("tool_choice is a word or a function, not both")
        size = len(self.model_dump_json(exclude={"choice", "function"}).encode())
        if size > MAX_TOOLS_BYTES:
            raise ValueError(f"the tools take {size} bytes as JSON; at most {MAX_TOOLS_BYTES}")
        return self

    def body(self) -> dict[str, Any]:
        """As OpenAI's API takes them."""
        body: dict[str, Any] = {"tools": [tool.model_dump(mode="json") for tool in self.tools]}
        if self.function is not None:
            body["tool_choice"] = {"type": "function", "function": {"name": self.function}}
        elif self.choice is not None:
            body["tool_choice"] = self.choice
        if self.parallel_tool_calls is not None:
            body["parallel_tool_calls"] = self.parallel_tool_calls
        return body


#: The most documents a request may limit its search to.
MAX_SCOPED_DOCUMENTS = 20


class ChatOptions(Contract):
    """What the edge resolved from the tenant's config for one request (a snapshot)."""

    model: str
    max_tokens: int = Field(ge=1, description="Worst-case completion tokens reserved for it.")
    temperature: float = Field(ge=0.0, le=2.0)
    config_version: int = Field(ge=0, description="Tenant config version; keys the semantic cache.")
    rag: bool = True
    semantic_cache: bool = True
    cache_similarity_threshold: float = Field(ge=0.0, le=1.0)
    top_k: int = Field(default=4, ge=1, le=50)
    stop: list[Annotated[str, Field(min_length=1, max_length=200)]] = Field(
        default_factory=list,
        max_length=4,
        description="Sequences where the model stops writing, the request's own (version 2).",
        exclude_if=lambda stop: not stop,
    )
    sampling: SamplingHints | None = Field(
        default=None,
        description="The request's own top_p, seed and penalties, if it set any (version 3).",
        exclude_if=lambda sampling: sampling is None,
    )
    response_format: ResponseFormat | None = Field(
        default=None,
        description="The form the answer must take, if not text (version 4).",
        exclude_if=lambda form: form is None,
    )
    tools: ToolOptions | None = Field(
        default=None,
        description="The functions the model may call instead of answering (version 5).",
        exclude_if=lambda tools: tools is None,
    )
    document_ids: list[uuid.UUID] = Field(
        default_factory=list,
        max_length=MAX_SCOPED_DOCUMENTS,
        description="Only these of the tenant's documents are searched; all when empty "
        "(version 6).",
        exclude_if=lambda ids: not ids,
    )


class Reservation(Contract):
    """The budget reservation the edge made for a request, to be settled by metering."""

    reserved_tokens: int = Field(ge=0)
    period_day: date = Field(description="UTC day whose budget key holds the reservation.")


#: The longest end-user id a client may name (OpenAI's ``user``).
MAX_END_USER_CHARS = 256

#: The longest message a chat request's history may carry.
MAX_MESSAGE_CHARS = 32_000

#: The longest question (the last user message) a chat request may carry.
MAX_QUESTION_CHARS = 16_000


class FunctionCall(Contract):
    name: str = Field(min_length=1, max_length=200)
    arguments: str = Field(max_length=MAX_MESSAGE_CHARS, description="JSON, as the model wrote it.")


class ToolCall(Contract):
    """A call the model made of one of the request's tools (OpenAI's ``tool_calls[]``)."""

    id: str = Field(min_length=1, max_length=200)
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(Contract):
    """One message of a conversation. ``tool`` messages and an assistant's ``tool_calls`` are
    version 5 of the chat request (a request offering tools, and the turns that answer them)."""

    role: Literal["system", "user", "assistant", "tool"]
    content: str = Field(max_length=MAX_MESSAGE_CHARS)
    tool_calls: list[ToolCall] | None = Field(
        default=None,
        max_length=128,
        description="An assistant message's calls of the request's tools.",
        exclude_if=lambda calls: calls is None,
    )
    tool_call_id: str | None = Field(
        default=None,
        max_length=200,
        description="A tool message's: the call it is the result of.",
        exclude_if=lambda call: call is None,
    )

    @property
    def of_tools(self) -> bool:
        """Whether it is a tool's result or an assistant's tool calls."""
        return self.role == "tool" or self.tool_calls is not None


class Passage(Contract):
    """A retrieved chunk of one of the tenant's documents."""

    document_id: uuid.UUID
    chunk_index: int = Field(ge=0)
    title: str
    text: str
    score: float


class Citation(Contract):
    document_id: uuid.UUID
    chunk_index: int = Field(ge=0)
    title: str
    score: float


class TokenUsage(Contract):
    prompt_tokens: int = Field(ge=0)
    completion_tokens: int = Field(ge=0)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


# --------------------------------------------------------------------------- chat


class _ChatRequestFields(Event):
    """A chat request's fields, as ChatRequested and ContextRetrieved carry them.

    Version 2 added ``options.stop``, version 3 ``options.sampling`` and ``end_user``, version 4
    ``options.response_format``, version 5 ``options.tools``, ``tool_turns`` and tool messages
    in ``history``, version 6 ``options.document_ids``. A request is written as the oldest
    version that carries what it uses (see ``Event.written_version``): one without any of them
    is version 1, so only requests that use them need consumers that know them.
    """

    supported_versions: ClassVar[frozenset[int]] = frozenset({1, 2, 3, 4, 5, 6})

    request_id: uuid.UUID
    user_id: str = Field(min_length=1, max_length=200, description="The token's subject.")
    end_user: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_END_USER_CHARS,
        description="The end user the client named (OpenAI's `user`), for audit and usage "
        "(version 3).",
        exclude_if=lambda end_user: end_user is None,
    )
    conversation_id: uuid.UUID | None = None
    question: str = Field(min_length=1, max_length=MAX_QUESTION_CHARS)
    history: list[ChatMessage] = Field(default_factory=list, max_length=100)
    tool_turns: list[ChatMessage] = Field(
        default_factory=list,
        max_length=100,
        description="What followed the question: the assistant's calls of the request's tools "
        "and the tools' results, in order (version 5).",
        exclude_if=lambda turns: not turns,
    )
    stream: bool = False
    reply_to: ReplyTo
    options: ChatOptions
    reservation: Reservation
    deadline_at: AwareDatetime | None = Field(
        default=None, description="After this the edge has given up; later work is wasted."
    )

    def written_version(self) -> int:
        if self.options.document_ids:
            return 6
        if (
            self.options.tools is not None
            or self.tool_turns
            or any(message.of_tools for message in self.history)
        ):
            return 5
        if self.options.response_format is not None:
            return 4
        if self.options.sampling is not None or self.end_user is not None:
            return 3
        return 2 if self.options.stop else 1


class ChatRequested(_ChatRequestFields):
    """A frontend asked a question (edge → retrieval, when RAG or the semantic cache is on)."""

    event_type: Literal["ChatRequested"] = "ChatRequested"


class ContextRetrieved(_ChatRequestFields):
    """The passages for a request (retrieval → inference).

    In gateway mode (RAG and semantic cache off) the edge publishes it itself, with no passages.
    """

    event_type: Literal["ContextRetrieved"] = "ContextRetrieved"
    passages: list[Passage] = Field(default_factory=list)
    corpus_version: int = Field(ge=0)


class ChatDelta(Event):
    """A piece of a streamed answer.

    Version 2 added ``model``, set only when a fallback answers (see ``Event.written_version``).
    """

    supported_versions: ClassVar[frozenset[int]] = frozenset({1, 2})

    event_type: Literal["ChatDelta"] = "ChatDelta"
    request_id: uuid.UUID
    seq: int = Field(ge=0, description="Position of this piece; the edge orders by it.")
    delta: str
    model: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="The model writing the answer when it is not the one the request asked "
        "(a catalogue fallback); absent otherwise (version 2).",
        exclude_if=lambda model: model is None,
    )

    def written_version(self) -> int:
        return 1 if self.model is None else 2


class FinishReason(enum.StrEnum):
    """Why the model stopped writing an answer."""

    STOP = "stop"  # it finished (or reached a stop sequence)
    LENGTH = "length"  # it reached the answer's token limit: the answer is cut short
    TOOL_CALLS = "tool_calls"  # it called tools of the request's (version 3 of ChatCompleted)


class ChatCompleted(Event):
    """The final answer to a request (inference, or retrieval on a cache hit).

    Version 2 added ``finish_reason``; a version-1 answer reads as "stop", and an answer that
    stopped is written as version 1 (see ``Event.written_version``). Version 3 added
    ``tool_calls`` and the finish reason "tool_calls".
    """

    supported_versions: ClassVar[frozenset[int]] = frozenset({1, 2, 3})

    event_type: Literal["ChatCompleted"] = "ChatCompleted"
    request_id: uuid.UUID
    user_id: str
    question: str = Field(description="Kept so the semantic cache can be filled from the answer.")
    answer: str
    citations: list[Citation] = Field(default_factory=list)
    model: str
    usage: TokenUsage
    cached: bool = False
    config_version: int = Field(ge=0)
    corpus_version: int = Field(ge=0)
    semantic_cache: bool = Field(default=True, description="Whether the tenant allows caching it.")
    finish_reason: FinishReason = Field(
        default=FinishReason.STOP,
        description="Why the model stopped: 'length' when the answer reached its token limit "
        "and is cut short (a cache hit says what the cached answer's did). Version 2.",
        exclude_if=lambda reason: reason is FinishReason.STOP,
    )
    tool_calls: list[ToolCall] = Field(
        default_factory=list,
        description="The calls the model made of the request's tools, if it made any (version 3).",
        exclude_if=lambda calls: not calls,
    )

    def written_version(self) -> int:
        if self.tool_calls or self.finish_reason is FinishReason.TOOL_CALLS:
            return 3
        return 1 if self.finish_reason is FinishReason.STOP else 2

    @property
    def cacheable(self) -> bool:
        """Whether the semantic cache may keep this answer for later questions (never tool
        calls: they answer the tools a request offered, not the question)."""
        return self.semantic_cache and not self.cached and not self.tool_calls


class FailureReason(enum.StrEnum):
    MODEL_UNAVAILABLE = "model_unavailable"
    MODEL_TIMEOUT = "model_timeout"
    MODEL_NOT_ALLOWED = "model_not_allowed"
    LEAKAGE_BLOCKED = "leakage_blocked"
    TENANT_INACTIVE = "tenant_inactive"
    INTERNAL = "internal"
    #: The model's provider refused the request itself as invalid (HTTP 400, 413 or 422: a
    #: prompt over its limit, a parameter it does not take). Asking again, or a fallback, with
    #: the same request would not help. Added in ``ChatFailed`` version 2.
    REQUEST_REJECTED = "request_rejected"


class ChatFailed(Event):
    """A request could not be answered; ``message`` says why in words a user can read.

    Version 2 added the reason ``request_rejected``; a failure for any other reason is written
    as version 1 (see ``Event.written_version``).
    """

    supported_versions: ClassVar[frozenset[int]] = frozenset({1, 2})

    event_type: Literal["ChatFailed"] = "ChatFailed"
    request_id: uuid.UUID
    reason: FailureReason
    message: str

    def written_version(self) -> int:
        return 2 if self.reason is FailureReason.REQUEST_REJECTED else 1


# --------------------------------------------------------------------------- search

#: The most passages a search may ask for (retrieval may cap it lower: ``TENANTRY_TOP_K_MAX``).
MAX_SEARCH_RESULTS = 50


class SearchRequested(Event):
    """A tenant admin searched the tenant's documents, with no model asked (edge → retrieval).

    It travels on ``chat.requests.v1`` beside the chat requests (keyed by tenant like them), so
    that retrieval embeds it in the same batches. Answered by ``SearchCompleted`` on the
    ``reply_to`` partition, like a chat request; a request past ``deadline_at`` is dropped.
    """

    event_type: Literal["SearchRequested"] = "SearchRequested"
    request_id: uuid.UUID
    user_id: str = Field(min_length=1, max_length=200, description="The token's subject.")
    query: str = Field(min_length=1, max_length=MAX_QUESTION_CHARS)
    top_k: int = Field(ge=1, le=MAX_SEARCH_RESULTS)
    document_ids: list[uuid.UUID] = Field(
        default_factory=list,
        max_length=MAX_SCOPED_DOCUMENTS,
        description="Only these of the tenant's documents are searched; all when empty.",
        exclude_if=lambda ids: not ids,
    )
    reply_to: ReplyTo
    deadline_at: AwareDatetime | None = Field(
        default=None, description="After this the edge has given up; later work is wasted."
    )


class SearchCompleted(Event):
    """The passages a search found in the tenant's documents, best first (retrieval → edge)."""

    event_type: Literal["SearchCompleted"] = "SearchCompleted"
    request_id: uuid.UUID
    passages: list[Passage] = Field(default_factory=list, max_length=MAX_SEARCH_RESULTS)
    corpus_version: int = Field(ge=0, description="The tenant's corpus version searched.")


#: What ``chat.requests.v1`` carries.
QuestionEvent = Annotated[ChatRequested | SearchRequested, Field(discriminator="event_type")]

#: What ``chat.responses.v1`` carries (a search's answer or failure included).
ChatResponseEvent = Annotated[
    ChatDelta | ChatCompleted | ChatFailed | SearchCompleted, Field(discriminator="event_type")
]

# --------------------------------------------------------------------------- documents


class DocumentSubmitted(Event):
    """A tenant submitted (or re-submitted, replacing) a document."""

    event_type: Literal["DocumentSubmitted"] = "DocumentSubmitted"
    document_id: uuid.UUID
    title: str = Field(min_length=1, max_length=500)
    text: str = Field(min_length=1)
    content_type: str = "text/plain"
    submitted_by: str


class DocumentDeleted(Event):
    event_type: Literal["DocumentDeleted"] = "DocumentDeleted"
    document_id: uuid.UUID
    deleted_by: str


DocumentEvent = Annotated[DocumentSubmitted | DocumentDeleted, Field(discriminator="event_type")]


class DocumentIndexed(Event):
    """Retrieval stored a submitted document: its chunks are searchable from now on."""

    event_type: Literal["DocumentIndexed"] = "DocumentIndexed"
    document_id: uuid.UUID
    chunks: int = Field(ge=0, description="How many chunks it was stored as (0: no text in it).")
    corpus_version: int = Field(ge=0, description="The tenant's corpus version that has it.")


# --------------------------------------------------------------------------- tenants


class _CarriesConfig(Event):
    """An event carrying a tenant's whole config.

    Version 2 added ``config.end_user_rate_limit_per_minute``, version 3
    ``config.end_user_daily_token_budget``; a config without them is written as version 1 (see
    ``Event.written_version``).
    """

    supported_versions: ClassVar[frozenset[int]] = frozenset({1, 2, 3})

    config: TenantConfig

    def written_version(self) -> int:
        if self.config.end_user_daily_token_budget:
            return 3
        return 2 if self.config.end_user_rate_limit_per_minute else 1


class TenantConfigChanged(_CarriesConfig):
    """The latest configuration of a tenant (compacted topic: one per tenant survives)."""

    event_type: Literal["TenantConfigChanged"] = "TenantConfigChanged"
    version: int = Field(ge=1)
    changed_by: str


class TenantProvisioned(_CarriesConfig):
    event_type: Literal["TenantProvisioned"] = "TenantProvisioned"
    tenant_name: str
    tier: Tier
    config_version: int = Field(ge=1)


class TenantOffboarded(Event):
    event_type: Literal["TenantOffboarded"] = "TenantOffboarded"
    tenant_name: str
    reason: str = ""


class LifecycleAction(enum.StrEnum):
    PROVISIONED = "provisioned"
    OFFBOARDED = "offboarded"


class TenantLifecycleAcknowledged(Event):
    """A service finished (or failed) its part of onboarding or offboarding a tenant."""

    event_type: Literal["TenantLifecycleAcknowledged"] = "TenantLifecycleAcknowledged"
    service: str
    action: LifecycleAction
    succeeded: bool
    detail: str = ""


LifecycleEvent = Annotated[
    TenantProvisioned | TenantOffboarded | TenantLifecycleAcknowledged,
    Field(discriminator="event_type"),
]

# --------------------------------------------------------------------------- usage and budgets


class UsageRecorded(Event):
    """Tokens one request used. ``event_id`` is derived from the request id: billed once.

    Version 2 added ``end_user``; usage without one is written as version 1 (see
    ``Event.written_version``).
    """

    supported_versions: ClassVar[frozenset[int]] = frozenset({1, 2})

    event_type: Literal["UsageRecorded"] = "UsageRecorded"
    request_id: uuid.UUID
    user_id: str
    end_user: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_END_USER_CHARS,
        description="The end user the request named, if it named one (version 2).",
        exclude_if=lambda end_user: end_user is None,
    )
    model: str
    prompt_tokens: int = Field(ge=0)
    completion_tokens: int = Field(ge=0)
    cached: bool = False
    reservation: Reservation
    source: str = Field(description="The service that recorded it.")

    def written_version(self) -> int:
        return 1 if self.end_user is None else 2


class BudgetKind(enum.StrEnum):
    DAILY_TOKENS = "daily_tokens"
    MONTHLY_SPEND = "monthly_spend"


class _BudgetFields(Event):
    kind: BudgetKind
    period: str = Field(description="The UTC period: YYYY-MM-DD for days, YYYY-MM for months.")
    used: int = Field(ge=0, description="Tokens, or micro-dollars for spend.")
    limit: int = Field(ge=0)


class BudgetThresholdCrossed(_BudgetFields):
    event_type: Literal["BudgetThresholdCrossed"] = "BudgetThresholdCrossed"
    threshold_percent: int = Field(ge=1, le=100)


class BudgetExhausted(_BudgetFields):
    event_type: Literal["BudgetExhausted"] = "BudgetExhausted"


BudgetEvent = Annotated[BudgetThresholdCrossed | BudgetExhausted, Field(discriminator="event_type")]


class UsageRolledUp(Event):
    """One tenant's usage of one model on one UTC day, for analysts (replaces earlier ones)."""

    event_type: Literal["UsageRolledUp"] = "UsageRolledUp"
    day: date
    model: str
    requests: int = Field(ge=0)
    cached_requests: int = Field(ge=0)
    prompt_tokens: int = Field(ge=0)
    completion_tokens: int = Field(ge=0)
    cost_micros: int = Field(ge=0)


# --------------------------------------------------------------------------- audit


class AuditType(enum.StrEnum):
    API_CALL = "api_call"
    DATA_ACCESS = "data_access"
    CONFIGURATION_CHANGE = "configuration_change"
    DELETION = "deletion"
    ACCESS_DENIED = "access_denied"
    LEAKAGE_BLOCKED = "leakage_blocked"
    BUDGET = "budget"
    EXPORT = "export"
    LIFECYCLE = "lifecycle"
    RETENTION = "retention"


class AuditStatus(enum.StrEnum):
    SUCCESS = "success"
    FAILURE = "failure"


AuditDetail = str | int | float | bool | None


class AuditRecorded(Event):
    """Something worth a compliance record happened. Never carries document or answer text."""

    event_type: Literal["AuditRecorded"] = "AuditRecorded"
    audit_type: AuditType
    source: str = Field(description="The service that saw it.")
    actor: str | None = Field(default=None, description="User or client id, when known.")
    resource_type: str
    resource_id: str
    action: str
    status: AuditStatus
    error: str | None = None
    ip_address: str | None = None
    user_agent: str | None = None
    details: dict[str, AuditDetail] = Field(default_factory=dict)

    @field_validator("details")
    @classmethod
    def _small_details(cls, value: dict[str, AuditDetail]) -> dict[str, AuditDetail]:
        if len(value) > 50:
            raise ValueError("details may hold at most 50 entries")
        return value


class AuditChainAnchored(Event):
    """The head of a tenant's audit hash chain, published so it can be anchored elsewhere."""

    event_type: Literal["AuditChainAnchored"] = "AuditChainAnchored"
    sequence: int = Field(ge=0)
    head_hash: str = Field(pattern=r"^[0-9a-f]{64}$")
    anchored_at: datetime


# --------------------------------------------------------------------------- registry

ALL_EVENTS: tuple[type[Event], ...] = (
    ChatRequested,
    ContextRetrieved,
    ChatDelta,
    ChatCompleted,
    ChatFailed,
    SearchRequested,
    SearchCompleted,
    DocumentSubmitted,
    DocumentDeleted,
    DocumentIndexed,
    TenantConfigChanged,
    TenantProvisioned,
    TenantOffboarded,
    TenantLifecycleAcknowledged,
    UsageRecorded,
    BudgetThresholdCrossed,
    BudgetExhausted,
    UsageRolledUp,
    AuditRecorded,
    AuditChainAnchored,
)

EVENTS_BY_TYPE: dict[str, type[Event]] = {
    cls.model_fields["event_type"].default: cls for cls in ALL_EVENTS
}


def parse_event(raw: bytes | str) -> Event:
    """Decode any known event from JSON, choosing the model by ``event_type``."""
    data = TypeAdapter(dict[str, Any]).validate_json(raw)
    event_type = data.get("event_type")
    model = EVENTS_BY_TYPE.get(str(event_type))
    if model is None:
        raise ValueError(f"unknown event_type {event_type!r}")
    return model.model_validate(data)
