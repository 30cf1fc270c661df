"""The edge's HTTP API. The tenant always comes from the verified token, never from input."""

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from http import HTTPStatus
from typing import Annotated, Any, Literal, Self

import httpx
from fastapi import (
    APIRouter,
    Depends,
    FastAPI,
    HTTPException,
    Path,
    Query,
    Request,
)
from fastapi.exception_handlers import (
    http_exception_handler,
    request_validation_exception_handler,
)
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)
from redis.exceptions import RedisError
from sqlalchemy.exc import DBAPIError, OperationalError
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException
from tenantry_common.auth import EDGE_ISSUER, Principal, Role, TokenVerifier, principal_dependency
from tenantry_common.csvsafe import csv_text
from tenantry_common.events import (
    MAX_END_USER_CHARS,
    MAX_MESSAGE_CHARS,
    MAX_QUESTION_CHARS,
    MAX_SCOPED_DOCUMENTS,
    MAX_SEARCH_RESULTS,
    AuditStatus,
    AuditType,
    ChatCompleted,
    ChatDelta,
    ChatFailed,
    ChatMessage,
    Citation,
    EndUserDailyTokens,
    EndUserRateLimit,
    FailureReason,
    FinishReason,
    FunctionCall,
    Passage,
    ResponseFormat,
    SamplingHints,
    SearchCompleted,
    TenantConfig,
    Tier,
    Tool,
    ToolCall,
    ToolFunction,
    ToolOptions,
)
from tenantry_common.ids import PLATFORM_TENANT_ID
from tenantry_common.settings import ModelSpec

from tenantry_auth import extract, service
from tenantry_auth import repository as repo
from tenantry_auth.models import DocumentStatus
from tenantry_auth.plain import PlainRoute
from tenantry_auth.replies import NoReplyPartition, PendingReply, ReplyRouter
from tenantry_auth.security import tenant_of_client

log = logging.getLogger("tenantry.auth.api")

#: An exception handler of the app (request, exception) -> response.
ErrorHandler = Callable[[Request, Exception], Awaitable[Response]]

#: What a document upload may be.
_ACCEPTED_FILES = "PDF, Word (.docx) and UTF-8 text files are accepted"

# --------------------------------------------------------------------------- errors

_STATUS: dict[type[service.EdgeError], int] = {
    service.NotFound: 404,
    service.Conflict: 409,
    service.Invalid: 422,
    service.Forbidden: 403,
    service.InvalidClient: 401,
    service.RateLimited: 429,
    service.BudgetRefused: 429,
    service.Unavailable: 503,
    service.TooLarge: 413,
}


def _edge_status(exc: service.EdgeError) -> int:
    return next((s for t, s in _STATUS.items() if isinstance(exc, t)), 400)


def install_error_handlers(app: FastAPI) -> None:
    """Refusals become 4xx with a reason; an unreachable store becomes 503, never a crash.

    The OpenAI-compatible routes (``is_openai_path``) answer the same refusals in OpenAI's
    error shape, so that OpenAI's SDKs and the tools built on them read them as their own.
    """

    async def on_edge_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, service.EdgeError)
        body: dict[str, Any] = {"detail": exc.detail}
        if isinstance(exc, service.InvalidClient):
            body = {"error": "invalid_client", "error_description": exc.detail}
        return JSONResponse(body, status_code=_edge_status(exc), headers=exc.headers)

    async def on_store_down(request: Request, exc: Exception) -> Response:
        if _is_data_error(exc):
            # Postgres refused a value (e.g. a NUL character in text): the input's fault.
            return JSONResponse({"detail": "the input holds characters that cannot be stored"}, 422)
        log.error("store unavailable", extra={"error_type": type(exc).__name__})
        return JSONResponse(
            {"detail": "a backing store is unavailable; try again shortly"},
            status_code=503,
            headers={"Retry-After": "5"},
        )

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        return await http_exception_handler(request, exc)

    async def on_invalid_body(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return await request_validation_exception_handler(request, exc)

    def openai_aware(handler: ErrorHandler) -> ErrorHandler:
        async def handle(request: Request, exc: Exception) -> Response:
            response = await handler(request, exc)
            if is_openai_path(request.url.path):
                return as_openai_error(exc, response)
            return response

        return handle

    app.add_exception_handler(service.EdgeError, openai_aware(on_edge_error))
    app.add_exception_handler(StarletteHTTPException, openai_aware(on_http_error))
    app.add_exception_handler(RequestValidationError, openai_aware(on_invalid_body))
    for exc_type in (RedisError, OperationalError, DBAPIError, ConnectionError, OSError):
        app.add_exception_handler(exc_type, openai_aware(on_store_down))


def _is_data_error(exc: Exception) -> bool:
    """Whether a database error is SQLSTATE class 22 (data exception: bad input value)."""
    orig = getattr(exc, "orig", None)
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    return isinstance(code, str) and code.startswith("22")


# --------------------------------------------------------------------------- schemas


class TokenResponse(BaseModel):
    access_token: str
    token_type: Literal["Bearer"] = "Bearer"  # noqa: S105 (a scheme name)
    expires_in: int
    role: Role


class TenantCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200, examples=["Acme Corp"])
    tier: Tier = Tier.FREE
    admin_contact: str = Field(
        min_length=3, max_length=320, pattern=r"^[^@\s]+@[^@\s]+$", examples=["admin@acme.test"]
    )


class TenantView(BaseModel):
    tenant_id: uuid.UUID
    name: str
    tier: str
    status: str
    status_detail: str
    config_version: int
    created_at: datetime
    updated_at: datetime


class TenantChanged(TenantView):
    changed: list[str] = Field(
        description="The configuration fields the change set, limits carried over to the new "
        "tier included (empty if it changed nothing)."
    )


class TenantCreated(TenantView):
    client_id: str = Field(description="The tenant admin's client id.")
    client_secret: str = Field(description="Shown once; stored only as a hash.")


class ClientCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(default="", max_length=200)
    role: Literal["member", "admin"] = "member"


class ClientView(BaseModel):
    client_id: str
    name: str
    role: str
    created_at: datetime
    revoked_at: datetime | None


class ClientCreated(ClientView):
    client_secret: str = Field(description="Shown once; stored only as a hash.")


class TenantConfigView(TenantConfig):
    """A tenant's configuration as the admin API shows it: every field, those at their "off"
    value too (events leave ``end_user_rate_limit_per_minute`` and
    ``end_user_daily_token_budget`` out at 0, to stay version 1)."""

    end_user_rate_limit_per_minute: EndUserRateLimit = 0
    end_user_daily_token_budget: EndUserDailyTokens = 0


class ConfigView(BaseModel):
    version: int
    config: TenantConfigView

    @classmethod
    def of(cls, config: TenantConfig, version: int) -> Self:
        return cls(version=version, config=TenantConfigView.model_validate(config.model_dump()))


#: The highest config version a path or query may name: one more still fits Postgres's integer.
MAX_CONFIG_VERSION = 2**31 - 2


class ConfigVersionSummary(BaseModel):
    version: int
    changed_by: str = Field(description="The client (subject) that made the change.")
    changed_at: datetime
    changed: list[str] = Field(
        description="The fields that differ from the version before (empty for the first)."
    )

    @classmethod
    def of(cls, record: service.ConfigVersionRecord) -> Self:
        return cls(
            version=record.version,
            changed_by=record.changed_by,
            changed_at=record.changed_at,
            changed=record.changed,
        )


class ConfigVersionList(BaseModel):
    versions: list[ConfigVersionSummary] = Field(description="Newest first.")
    next_before: int | None = Field(
        description="Pass as `before` for the older versions; null when there are none."
    )


class ConfigVersionView(ConfigVersionSummary):
    config: TenantConfigView

    @classmethod
    def of(cls, record: service.ConfigVersionRecord) -> Self:
        summary = ConfigVersionSummary.of(record).model_dump()
        return cls(**summary, config=TenantConfigView.model_validate(record.config.model_dump()))


class ConfigRestore(BaseModel):
    model_config = ConfigDict(extra="forbid")

    expected_version: int | None = Field(
        default=None, ge=1, description="Refuse (409) unless the current version is this one."
    )


class DocumentCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: str = Field(min_length=1, max_length=500)
    text: str = Field(min_length=1, description="Plain text (size limited; larger → 413).")


class DocumentAccepted(BaseModel):
    document_id: uuid.UUID
    status: str


#: The statuses a tenant's document is shown in (a deleted one is not shown).
ShownStatus = Literal["submitted", "indexed", "failed"]


class DocumentView(BaseModel):
    document_id: uuid.UUID
    title: str
    size_bytes: int
    content_type: str
    status: ShownStatus = Field(
        description="'submitted': queued for retrieval; 'indexed': stored, and searchable; "
        "'failed': retrieval could not store it (the platform's operators are alerted; delete "
        "it and submit it again, or wait for them to retry it)."
    )
    submitted_at: datetime
    chunks: int | None = Field(description="How many chunks it was stored as, once indexed.")
    indexed_at: datetime | None
    failed_at: datetime | None = Field(description="When retrieval gave up on it, if it did.")


class DocumentList(BaseModel):
    documents: list[DocumentView]
    total: int


#: OpenAI's ``user``: the client's id for the end user it asks for (recorded, never checked);
#: an empty one names no end user.
EndUser = Annotated[
    Annotated[str, Field(max_length=MAX_END_USER_CHARS)] | None,
    BeforeValidator(lambda user: user or None),
    Field(
        description="Your id for the end user the request is made for (a hash, say): "
        "recorded in the tenant's audit trail and usage events.",
    ),
]


#: Only these of the tenant's documents are searched for the request (each must be one of its
#: own, not deleted: else 404); all of them when absent.
DocumentScope = Annotated[
    list[uuid.UUID] | None,
    Field(
        default=None,
        min_length=1,
        max_length=MAX_SCOPED_DOCUMENTS,
        description="Only these of the tenant's documents are searched (at most "
        f"{MAX_SCOPED_DOCUMENTS}, each one of its own); all of them when absent. A chat "
        "request limited to some is never answered from the semantic cache.",
    ),
]


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    question: str = Field(min_length=1, max_length=MAX_QUESTION_CHARS)
    conversation_id: uuid.UUID | None = Field(
        default=None,
        description="A UUID of the caller's choosing: the conversation's earlier turns (kept by "
        "the edge for a while) go with the question, and this turn is kept for the next.",
    )
    stream: bool = False
    user: EndUser = None
    document_ids: DocumentScope = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatAnswer(BaseModel):
    request_id: uuid.UUID
    conversation_id: uuid.UUID | None = Field(
        description="The request's conversation, if it named one."
    )
    answer: str
    citations: list[Citation]
    cached: bool
    usage: Usage
    finish_reason: FinishReason = Field(
        description="'length' when the answer reached its token limit and is cut short."
    )


class FeedbackGiven(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request_id: uuid.UUID = Field(
        description="The answer rated: its request_id (the chat reply's, or X-Request-Id)."
    )
    value: int = Field(ge=-10, le=10, description="-10 (worst) to 10 (best); 1 and -1 for ±.")
    comment: str = Field(default="", max_length=2_000)
    user: EndUser = None


class FeedbackView(BaseModel):
    request_id: uuid.UUID
    subject: str = Field(description="Who rated it: the token's subject (a client id).")
    value: int
    comment: str
    end_user: str | None
    created_at: datetime
    updated_at: datetime


FEEDBACK_CSV_COLUMNS = tuple(FeedbackView.model_fields)


class FeedbackList(BaseModel):
    feedback: list[FeedbackView] = Field(description="The latest first.")
    count: int = Field(description="Ratings in the window asked (all of them, not only listed).")
    mean_value: float | None
    positive: int = Field(description="Ratings above 0.")
    negative: int = Field(description="Ratings below 0.")


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: str = Field(min_length=1, max_length=MAX_QUESTION_CHARS)
    top_k: int = Field(
        default=4,
        ge=1,
        le=MAX_SEARCH_RESULTS,
        description="How many passages to return at most (retrieval caps it at its "
        "TENANTRY_TOP_K_MAX, 20 unless the operator changed it).",
    )
    document_ids: DocumentScope = None

    @field_validator("query")
    @classmethod
    def _not_blank(cls, query: str) -> str:
        if not query.strip():
            raise ValueError("the query is blank")
        return query


class SearchResults(BaseModel):
    request_id: uuid.UUID
    corpus_version: int = Field(
        description="The version of the tenant's documents searched (it grows with each "
        "document added or deleted)."
    )
    results: list[Passage] = Field(description="Best first, with their cosine similarity.")


class TextPart(BaseModel):
    """A text part of a message's content, as OpenAI's newer clients send it."""

    type: Literal["text"]
    text: str = Field(max_length=MAX_MESSAGE_CHARS)


class OpenAIFunctionCall(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    arguments: str = Field(max_length=MAX_MESSAGE_CHARS)


class OpenAIToolCall(BaseModel):
    """A call an earlier answer made (sent back with the conversation)."""

    id: str = Field(min_length=1, max_length=200)
    type: Literal["function"] = "function"
    function: OpenAIFunctionCall

    def call(self) -> ToolCall:
        return ToolCall(
            id=self.id,
            function=FunctionCall(name=self.function.name, arguments=self.function.arguments),
        )


class OpenAIMessage(BaseModel):
    role: Literal["system", "developer", "user", "assistant", "tool"] = Field(
        description="`developer` is OpenAI's newer name for `system`, and is taken as one."
    )
    content: (
        Annotated[str, Field(max_length=MAX_MESSAGE_CHARS)]
        | Annotated[list[TextPart], Field(max_length=100)]
        | None
    ) = Field(default=None, description="Required, except on an assistant's tool calls.")
    tool_calls: list[OpenAIToolCall] | None = Field(
        default=None, max_length=128, description="An assistant message's calls of tools."
    )
    tool_call_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="A tool message's: the call it answers.",
    )

    @property
    def text(self) -> str:
        """The content as one text (parts joined by a blank line)."""
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        return "\n\n".join(part.text for part in self.content)

    def chat_message(self) -> ChatMessage:
        return ChatMessage(
            role="system" if self.role == "developer" else self.role,
            content=self.text,
            tool_calls=[call.call() for call in self.tool_calls] if self.tool_calls else None,
            tool_call_id=self.tool_call_id,
        )

    @model_validator(mode="after")
    def _well_formed(self) -> Self:
        if isinstance(self.content, list) and (size := len(self.text)) > MAX_MESSAGE_CHARS:
            raise ValueError(
                f"the content's parts come to {size:,} characters; at most {MAX_MESSAGE_CHARS:,}"
            )
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only an assistant message has tool_calls")
        if (self.role == "tool") != (self.tool_call_id is not None):
            raise ValueError("a tool message, and only a tool message, has a tool_call_id")
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError("content is required (it may be null only on tool calls)")
        return self


class OpenAIFunction(BaseModel):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str | None = Field(default=None, max_length=4_000)
    parameters: dict[str, Any] | None = Field(
        default=None, description="The arguments' JSON Schema."
    )
    strict: bool | None = None

    @field_validator("parameters")
    @classmethod
    def _parameters_are_json_schema(cls, schema: dict[str, Any] | None) -> dict[str, Any] | None:
        if schema is not None:
            _check_json_schema(schema)
        return schema


class OpenAITool(BaseModel):
    type: Literal["function"]
    function: OpenAIFunction


class NamedFunction(BaseModel):
    name: str = Field(min_length=1, max_length=64)


class NamedToolChoice(BaseModel):
    """``tool_choice`` naming the one function the model must call."""

    type: Literal["function"]
    function: NamedFunction


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = Field(
        default=False, description="End the stream with a chunk carrying the usage."
    )


StopSequence = Annotated[str, Field(min_length=1, max_length=200)]


class TextFormat(BaseModel):
    """OpenAI's ``response_format`` for a plain text answer (the default)."""

    type: Literal["text"]


def _remote_refs(schema: object) -> Iterator[str]:
    """Every ``$ref`` in a JSON Schema that points outside it (not ``#...``)."""
    if isinstance(schema, dict):
        ref = schema.get("$ref")
        if isinstance(ref, str) and not ref.startswith("#"):
            yield ref
        for value in schema.values():
            yield from _remote_refs(value)
    elif isinstance(schema, list):
        for item in schema:
            yield from _remote_refs(item)


def _check_json_schema(schema: dict[str, Any]) -> None:
    """Refuse what is not a JSON Schema, and references a server would fetch."""
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        raise ValueError(f"the schema is not a JSON Schema: {exc.message}") from None
    if remote := next(_remote_refs(schema), None):
        # A server resolving it would fetch a URL of the client's choosing;
        # llama-cpp-python's drops such a schema and holds the answer to any JSON.
        raise ValueError(f"only local $ref ('#/...') are supported, not {remote!r}")


class ChatCompletionRequest(BaseModel):
    """OpenAI's chat completion request: what the platform honours, and what it must refuse.

    Parameters that would change what kind of answer the client gets (several choices, log
    probabilities, audio, the deprecated ``functions``) are refused with OpenAI's
    ``unsupported_parameter`` or ``unsupported_value`` rather than ignored: a client relying on
    them would otherwise get a plain text answer and no sign of why. ``tools``,
    ``tool_choice`` and ``parallel_tool_calls`` go to the model as given (function calling;
    a model whose server does not take tools is refused once the model is known). The
    sampling parameters (``temperature``, ``top_p``,
    ``seed``, the penalties) go to the model as given; so does ``response_format`` (JSON mode
    or a JSON Schema; a schema that is not one is refused here, and a format the model's server
    does not take is refused once the model is known); ``user`` is recorded as the end user in
    audit and usage; ``document_ids`` (Tenantry's own, sent with the SDK's ``extra_body``)
    limits the documents searched; unknown fields are ignored.
    """

    model_config = ConfigDict(extra="ignore")

    model: str | None = Field(default=None, max_length=200)
    messages: list[OpenAIMessage] = Field(min_length=1, max_length=100)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1, le=32_768)
    max_completion_tokens: int | None = Field(
        default=None, ge=1, le=32_768, description="OpenAI's newer name for max_tokens."
    )
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    stop: StopSequence | Annotated[list[StopSequence], Field(max_length=4)] | None = Field(
        default=None, description="Up to 4 sequences where the model stops writing."
    )
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    user: EndUser = None
    tools: list[OpenAITool] | None = Field(
        default=None, max_length=128, description="Functions the model may call (JSON Schema)."
    )
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    document_ids: DocumentScope = None  # Tenantry's own: the openai SDK sends it in extra_body
    # Refused unless absent or harmless (see ``unsupported``).
    n: int | None = Field(default=None, ge=1, le=128)
    functions: list[dict[str, Any]] | None = None
    function_call: str | dict[str, Any] | None = None
    response_format: Annotated[TextFormat | ResponseFormat, Field(discriminator="type")] | None = (
        None
    )
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    modalities: list[str] | None = None
    audio: dict[str, Any] | None = None
    _tool_options: ToolOptions | None = PrivateAttr(default=None)

    @field_validator("response_format")
    @classmethod
    def _schema_is_json_schema(
        cls, form: TextFormat | ResponseFormat | None
    ) -> TextFormat | ResponseFormat | None:
        if isinstance(form, ResponseFormat) and form.json_schema is not None:
            _check_json_schema(form.json_schema.schema_)
        return form

    @model_validator(mode="after")
    def _tools_as_the_contract_takes_them(self) -> Self:
        # Built once, here: the contract's own checks (a tool_choice naming no tool, two tools
        # of one name, the size limit) are refused as the request's, not after it was taken.
        if self.tool_choice == "required" and not self.tools:
            raise ValueError("tool_choice 'required' needs tools")
        if isinstance(self.tool_choice, NamedToolChoice) and not self.tools:
            raise ValueError(
                f"tool_choice names {self.tool_choice.function.name!r}, which is not in tools"
            )
        try:
            self._tool_options = self._contract_tools()
        except ValidationError as exc:
            raise ValueError(exc.errors()[0]["msg"].removeprefix("Value error, ")) from None
        return self

    def _contract_tools(self) -> ToolOptions | None:
        if not self.tools:
            return None
        return ToolOptions(
            tools=[
                Tool(
                    function=ToolFunction.model_validate(
                        tool.function.model_dump(exclude_none=True)
                    )
                )
                for tool in self.tools
            ],
            choice=self.tool_choice if isinstance(self.tool_choice, str) else None,
            function=self.tool_choice.function.name
            if isinstance(self.tool_choice, NamedToolChoice)
            else None,
            parallel_tool_calls=self.parallel_tool_calls,
        )

    @property
    def tool_options(self) -> ToolOptions | None:
        """The tools offered and how the model may use them; None when none are offered."""
        return self._tool_options

    @property
    def answer_format(self) -> ResponseFormat | None:
        """The form the answer must take; None for text."""
        return self.response_format if isinstance(self.response_format, ResponseFormat) else None

    @property
    def completion_limit(self) -> int | None:
        """The answer's token limit, by either name (the smaller if both are given)."""
        given = [n for n in (self.max_tokens, self.max_completion_tokens) if n is not None]
        return min(given) if given else None

    @property
    def stop_sequences(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    @property
    def sampling(self) -> SamplingHints | None:
        """The sampling parameters beyond the temperature, if the request set any."""
        given = {
            name: value
            for name in SamplingHints.model_fields
            if (value := getattr(self, name)) is not None
        }
        return SamplingHints(**given) if given else None

    def unsupported(self) -> tuple[str, str, str] | None:
        """The first parameter asking for what the platform does not do, as
        (param, OpenAI's code, message); None when every parameter can be honoured."""
        if self.n not in (None, 1):
            return "n", "unsupported_value", "only one choice per request is supported (n=1)"
        if self.functions:
            return (
                "functions",
                "unsupported_parameter",
                "functions (the deprecated function calling) is not supported; use tools",
            )
        if self.function_call not in (None, "none", "auto"):
            return (
                "function_call",
                "unsupported_value",
                "function_call (the deprecated function calling) is not supported; use tool_choice",
            )
        if self.logprobs or self.top_logprobs:
            name = "logprobs" if self.logprobs else "top_logprobs"
            return name, "unsupported_parameter", "log probabilities are not supported"
        if self.audio is not None or set(self.modalities or ["text"]) != {"text"}:
            name = "audio" if self.audio is not None else "modalities"
            return name, "unsupported_value", "only text output is supported"
        return None


class ModelPricing(BaseModel):
    """What a model costs, in integer micro-dollars per million tokens (1 USD = 1,000,000)."""

    input_micros_per_mtok: int
    output_micros_per_mtok: int


class ModelCard(BaseModel):
    """One model a tenant may use, as OpenAI's ``GET /v1/models`` lists it, with its context
    window and price (fields OpenAI's SDKs keep in ``model_extra``)."""

    id: str
    object: Literal["model"] = "model"
    created: int = Field(default=0, description="Not tracked: always 0.")
    owned_by: str = Field(
        description="'tenantry' for a shared model; the tenant's id for its own (fine-tuned) one."
    )
    context_window: int = Field(description="Prompt and answer together, in tokens.")
    pricing: ModelPricing
    response_formats: list[str] = Field(
        description="The response_format types it answers in: text, and json_object and "
        "json_schema where its server takes them."
    )
    tool_calls: bool = Field(description="Whether it takes tools (function calling).")

    @classmethod
    def of(cls, model: str, spec: ModelSpec) -> Self:
        return cls(
            id=model,
            owned_by=str(spec.owner) if spec.owner is not None else "tenantry",
            context_window=spec.context_window,
            response_formats=spec.answer_formats,
            tool_calls=spec.tool_calls,
            pricing=ModelPricing(
                input_micros_per_mtok=spec.input_price_micros_per_mtok,
                output_micros_per_mtok=spec.output_price_micros_per_mtok,
            ),
        )


class CatalogueEntry(ModelCard):
    """A catalogue model as operators see it: also where it is served and its fallbacks."""

    base_url: str
    served_name: str | None
    api_key_env: str | None = Field(description="The environment variable inference reads.")
    fallbacks: list[str]
    owner: uuid.UUID | None = Field(
        description="The tenant whose own model this is (only it may use it); null: shared."
    )
    tiers: list[Tier] | None = Field(
        description="The tiers whose tenants may be allowed it; null: every tier."
    )

    @classmethod
    def of(cls, model: str, spec: ModelSpec) -> Self:
        card = ModelCard.of(model, spec)
        return cls(
            **card.model_dump(),
            base_url=spec.base_url,
            served_name=spec.served_name,
            api_key_env=spec.api_key_env,
            fallbacks=spec.fallbacks,
            owner=spec.owner,
            tiers=spec.tiers,
        )


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ConversationView(BaseModel):
    conversation_id: uuid.UUID
    messages: list[ChatMessage] = Field(
        description="The turns kept, oldest first: what goes with the conversation's next question."
    )


class Problem(BaseModel):
    detail: str


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIError(BaseModel):
    """A refusal of an OpenAI-compatible route, in OpenAI's shape."""

    error: OpenAIErrorDetail


#: What the OpenAI-compatible routes document for their refusals: every 4xx and 5xx in OpenAI's
#: error shape (a range, which also keeps FastAPI from documenting a 422 they never answer).
OPENAI_ERRORS: dict[int | str, dict[str, Any]] = {
    "4XX": {"model": OpenAIError, "description": "Refused (a bad body is 400)"},
    "5XX": {"model": OpenAIError, "description": "Not answered"},
}


@dataclass(frozen=True)
class CheckedAccess:
    """A verified principal allowed to act now, and its tenant's recorded config version."""

    principal: Principal
    config_version: int | None


# --------------------------------------------------------------------------- helpers


def client_ip(request: Request) -> str | None:
    return request.client.host if request.client else None


def _sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def _deadline_body(request_id: uuid.UUID, seconds: float) -> dict[str, Any]:
    return {
        "error": "deadline_exceeded",
        "detail": f"no answer within {seconds:g} s; the request was abandoned",
        "request_id": str(request_id),
    }


_FAILURE_STATUS = {
    FailureReason.MODEL_TIMEOUT: 504,
    FailureReason.TENANT_INACTIVE: 403,
    FailureReason.MODEL_NOT_ALLOWED: 400,
    FailureReason.REQUEST_REJECTED: 400,
    FailureReason.LEAKAGE_BLOCKED: 422,
    FailureReason.MODEL_UNAVAILABLE: 503,
    FailureReason.INTERNAL: 502,
}


def _failure_body(failed: ChatFailed) -> dict[str, Any]:
    return {
        "error": failed.reason.value,
        "detail": failed.message,
        "request_id": str(failed.request_id),
    }


# --------------------------------------------------------------------------- the router


@dataclass(frozen=True)
class EdgeRoutes:
    """The edge's routes: all of them for FastAPI, and the chat routes again as plain ASGI."""

    router: APIRouter
    plain: dict[str, PlainRoute]


def api_routes(
    *, edge: service.Edge, verifier: TokenVerifier, replies: ReplyRouter, http: httpx.AsyncClient
) -> EdgeRoutes:
    """Every route of the edge, bound to its ``Edge``."""
    router = APIRouter()
    settings = edge.settings
    external_tenants = {e.issuer: e.tenant_id for e in settings.external_issuers}

    async def deny(
        request: Request,
        reason: str,
        *,
        tenant_id: uuid.UUID = PLATFORM_TENANT_ID,
        actor: str | None = None,
    ) -> None:
        await service.record_audit(
            edge=edge,
            tenant_id=tenant_id,
            audit_type=AuditType.ACCESS_DENIED,
            action=f"{request.method} {request.url.path}",
            resource_type="endpoint",
            resource_id=request.url.path[:200],
            status=AuditStatus.FAILURE,
            actor=actor,
            error=reason[:500],
            ip_address=client_ip(request),
            user_agent=request.headers.get("user-agent"),
        )

    async def on_unverified(request: Request, reason: str) -> None:
        await deny(request, reason)

    verified = principal_dependency(verifier, on_unverified)

    async def checked_access(
        request: Request, principal: Annotated[Principal, Depends(verified)]
    ) -> CheckedAccess:
        reason: str | None = None
        config_version: int | None = None
        if principal.issuer == EDGE_ISSUER:
            if principal.client_id is None:
                reason = "token has no client_id"
            elif tenant_of_client(principal.client_id) != principal.tenant_id:
                reason = "token's client does not belong to its tenant"
        else:
            bound = external_tenants.get(principal.issuer)
            if bound != principal.tenant_id:
                reason = "external issuer may not speak for this tenant"
            elif principal.role is Role.OPERATOR:
                reason = "external issuers cannot grant the operator role"
        if reason is None:
            client = principal.client_id if principal.issuer == EDGE_ISSUER else None
            access = await edge.guard.check(tenant_id=principal.tenant_id, client_id=client)
            reason, config_version = access.refusal, access.config_version
        if reason is not None:
            await deny(request, reason, tenant_id=principal.tenant_id, actor=principal.subject)
            raise HTTPException(
                401,
                detail=f"invalid token: {reason}",
                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )
        return CheckedAccess(principal, config_version)

    async def current_principal(
        checked: Annotated[CheckedAccess, Depends(checked_access)],
    ) -> Principal:
        return checked.principal

    def requires(*roles: Role) -> Callable[..., Awaitable[Principal]]:
        async def check(
            request: Request, principal: Annotated[Principal, Depends(current_principal)]
        ) -> Principal:
            if principal.role not in roles:
                await deny(
                    request,
                    f"role {principal.role.value} may not do this",
                    tenant_id=principal.tenant_id,
                    actor=principal.subject,
                )
                raise HTTPException(
                    403, detail=f"requires role {' or '.join(r.value for r in roles)}"
                )
            return principal

        return check

    Operator = Annotated[Principal, Depends(requires(Role.OPERATOR))]
    TenantAdmin = Annotated[Principal, Depends(requires(Role.ADMIN))]
    require_user = requires(Role.MEMBER, Role.ADMIN)
    TenantUser = Annotated[Principal, Depends(require_user)]
    AnyPrincipal = Annotated[Principal, Depends(current_principal)]
    # The same check as the principal's (FastAPI runs a dependency once per request).
    Access = Annotated[CheckedAccess, Depends(checked_access)]

    async def forbid_other_tenant(
        request: Request, principal: Principal, tenant_id: uuid.UUID
    ) -> None:
        if principal.role is Role.OPERATOR or principal.tenant_id == tenant_id:
            return
        await deny(
            request,
            "another tenant's resource",
            tenant_id=principal.tenant_id,
            actor=principal.subject,
        )
        raise HTTPException(403, detail="this token may not act on another tenant")

    # ----------------------------------------------------------------- identity

    @router.get("/.well-known/jwks.json", tags=["identity"])
    async def jwks() -> dict[str, Any]:
        """The public keys of every token this edge issued that may still be valid."""
        return edge.keys.jwks()

    @router.post(
        "/v1/oauth/token",
        tags=["identity"],
        response_model=TokenResponse,
        responses={400: {"model": Problem}, 401: {"model": Problem}},
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    media: {
                        "schema": {
                            "type": "object",
                            "required": ["grant_type", "client_id", "client_secret"],
                            "properties": {
                                "grant_type": {"type": "string", "enum": ["client_credentials"]},
                                "client_id": {"type": "string", "maxLength": 100},
                                "client_secret": {"type": "string", "maxLength": 200},
                            },
                        }
                    }
                    for media in ("application/x-www-form-urlencoded", "application/json")
                },
            }
        },
    )
    async def token(request: Request) -> Response:
        """OAuth2 client-credentials grant (form or JSON body)."""
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        try:
            if content_type == "application/json":
                data = json.loads(await request.body() or b"null")
            elif content_type == "application/x-www-form-urlencoded":
                data = dict(await request.form())
            else:
                return _oauth_error("invalid_request", "send a form or JSON body", 400)
        except (ValueError, UnicodeDecodeError):
            return _oauth_error("invalid_request", "the body could not be parsed", 400)
        if not isinstance(data, dict):
            return _oauth_error("invalid_request", "the body must be an object", 400)
        grant, client_id, secret = (
            data.get(k) for k in ("grant_type", "client_id", "client_secret")
        )
        if grant != "client_credentials":
            return _oauth_error(
                "unsupported_grant_type", "only client_credentials is supported", 400
            )
        if (
            not isinstance(client_id, str)
            or not isinstance(secret, str)
            or not client_id
            or not secret
        ):
            return _oauth_error("invalid_request", "client_id and client_secret are required", 400)
        try:
            access, ttl, role = await service.issue_token(
                edge=edge, client_id=client_id, client_secret=secret
            )
        except service.InvalidClient as exc:
            await deny(request, f"token request refused: {exc.detail}", actor=client_id[:100])
            return _oauth_error("invalid_client", exc.detail, 401)
        body = TokenResponse(access_token=access, expires_in=ttl, role=role)
        return JSONResponse(body.model_dump(mode="json"), headers={"Cache-Control": "no-store"})

    # ----------------------------------------------------------------- tenants

    def tenant_view(tenant: Any) -> TenantView:
        return TenantView.model_validate(tenant, from_attributes=True)

    @router.post("/v1/tenants", tags=["tenants"], status_code=201, response_model=TenantCreated)
    async def create_tenant(body: TenantCreate, principal: Operator) -> TenantCreated:
        """Onboard a tenant: it becomes active when every service has acknowledged it."""
        made = await service.provision_tenant(
            edge=edge,
            name=body.name,
            tier=body.tier,
            admin_contact=body.admin_contact,
            actor=principal.subject,
        )
        view = tenant_view(made.tenant)
        return TenantCreated(
            **view.model_dump(), client_id=made.client_id, client_secret=made.client_secret
        )

    @router.get("/v1/tenants", tags=["tenants"], response_model=list[TenantView])
    async def list_tenants(principal: Operator) -> list[TenantView]:
        """Every tenant (operators)."""
        async with edge.sessions() as session:
            return [tenant_view(t) for t in await repo.list_all_tenants(session=session)]

    @router.get("/v1/tenants/{tenant_id}", tags=["tenants"], response_model=TenantView)
    async def get_tenant(
        tenant_id: uuid.UUID, request: Request, principal: AnyPrincipal
    ) -> TenantView:
        """A tenant's status (operators, or that tenant's own users)."""
        await forbid_other_tenant(request, principal, tenant_id)
        async with edge.sessions() as session:
            tenant = await repo.get_tenant(session=session, tenant_id=tenant_id)
        if tenant is None:
            raise HTTPException(404, detail="no such tenant")
        return tenant_view(tenant)

    @router.patch(
        "/v1/tenants/{tenant_id}",
        tags=["tenants"],
        response_model=TenantChanged,
        responses={404: {"model": Problem}, 409: {"model": Problem}, 422: {"model": Problem}},
    )
    async def change_tenant(
        tenant_id: uuid.UUID, body: service.TenantChange, principal: Operator
    ) -> TenantChanged:
        """Rename an active tenant or move it to another tier (a new configuration version:
        limits at the old tier's caps take the new tier's, lower ones stay, higher ones are
        lowered to the new caps; models the new tier does not serve are dropped)."""
        committed = await service.change_tenant(
            edge=edge, tenant_id=tenant_id, change=body, actor=principal.subject
        )
        return TenantChanged(
            **tenant_view(committed.tenant).model_dump(), changed=committed.changed
        )

    @router.delete(
        "/v1/tenants/{tenant_id}", tags=["tenants"], status_code=202, response_model=TenantView
    )
    async def offboard(tenant_id: uuid.UUID, principal: Operator) -> TenantView:
        """Offboard a tenant: every token and credential of it is refused from now on."""
        tenant = await service.offboard_tenant(
            edge=edge, tenant_id=tenant_id, actor=principal.subject, reason="offboarded by operator"
        )
        return tenant_view(tenant)

    # ----------------------------------------------------------------- clients

    def client_view(client: Any) -> ClientView:
        return ClientView.model_validate(client, from_attributes=True)

    @router.post("/v1/clients", tags=["clients"], status_code=201, response_model=ClientCreated)
    async def create_client(body: ClientCreate, principal: TenantAdmin) -> ClientCreated:
        """New client credentials for the caller's tenant (the secret is shown once)."""
        client, secret = await service.create_client(
            edge=edge, tenant_id=principal.tenant_id, role=Role(body.role), name=body.name
        )
        return ClientCreated(**client_view(client).model_dump(), client_secret=secret)

    @router.get("/v1/clients", tags=["clients"], response_model=list[ClientView])
    async def list_clients(principal: TenantAdmin) -> list[ClientView]:
        """The caller's tenant's clients."""
        async with edge.sessions() as session:
            clients = await repo.list_clients(session=session, tenant_id=principal.tenant_id)
        return [client_view(c) for c in clients]

    @router.delete("/v1/clients/{client_id}", tags=["clients"], status_code=204)
    async def revoke_client(
        client_id: Annotated[str, Field(max_length=100)], principal: TenantAdmin
    ) -> Response:
        """Revoke one of the caller's tenant's clients: its tokens are refused at once."""
        await service.revoke_client(
            edge=edge, tenant_id=principal.tenant_id, client_id=client_id, actor=principal.subject
        )
        return Response(status_code=204)

    @router.delete("/v1/tenants/{tenant_id}/clients/{client_id}", tags=["clients"], status_code=204)
    async def operator_revoke_client(
        tenant_id: uuid.UUID, client_id: Annotated[str, Field(max_length=100)], principal: Operator
    ) -> Response:
        """Revoke a client of any tenant (operators)."""
        await service.revoke_client(
            edge=edge, tenant_id=tenant_id, client_id=client_id, actor=principal.subject
        )
        return Response(status_code=204)

    # ----------------------------------------------------------------- configuration

    @router.get("/v1/config", tags=["config"], response_model=ConfigView)
    async def get_config(principal: TenantAdmin) -> ConfigView:
        """The caller's tenant's current configuration."""
        config, version = await service.load_config(edge=edge, tenant_id=principal.tenant_id)
        return ConfigView.of(config, version)

    @router.put(
        "/v1/config",
        tags=["config"],
        response_model=ConfigView,
        responses={409: {"model": Problem}, 422: {"model": Problem}},
    )
    async def put_config(body: service.ConfigUpdate, principal: TenantAdmin) -> ConfigView:
        """Change the configuration (validated, versioned, audited, published)."""
        config, version = await service.update_config(
            edge=edge, tenant_id=principal.tenant_id, update=body, actor=principal.subject
        )
        return ConfigView.of(config, version)

    @router.get("/v1/config/versions", tags=["config"], response_model=ConfigVersionList)
    async def list_config_versions(
        principal: TenantAdmin,
        limit: Annotated[int, Query(ge=1, le=100)] = 20,
        before: Annotated[
            int | None,
            Query(
                ge=2, le=MAX_CONFIG_VERSION, description="Only the versions older than this one."
            ),
        ] = None,
    ) -> ConfigVersionList:
        """The configuration's versions, newest first: who changed which fields, and when."""
        records = await service.config_versions(
            edge=edge, tenant_id=principal.tenant_id, limit=limit, before=before
        )
        older = records[-1].version if records and records[-1].version > 1 else None
        return ConfigVersionList(
            versions=[ConfigVersionSummary.of(r) for r in records], next_before=older
        )

    @router.get(
        "/v1/config/versions/{version}",
        tags=["config"],
        response_model=ConfigVersionView,
        responses={404: {"model": Problem}},
    )
    async def get_config_version(
        version: Annotated[int, Path(ge=1, le=MAX_CONFIG_VERSION)], principal: TenantAdmin
    ) -> ConfigVersionView:
        """One earlier (or the current) version of the configuration, in full."""
        record = await service.config_version(
            edge=edge, tenant_id=principal.tenant_id, version=version
        )
        return ConfigVersionView.of(record)

    @router.post(
        "/v1/config/versions/{version}/restore",
        tags=["config"],
        response_model=ConfigView,
        responses={404: {"model": Problem}, 409: {"model": Problem}, 422: {"model": Problem}},
    )
    async def restore_config_version(
        version: Annotated[int, Path(ge=1, le=MAX_CONFIG_VERSION)],
        principal: TenantAdmin,
        body: ConfigRestore | None = None,
    ) -> ConfigView:
        """Make an earlier version's settings current again, as a new version (checked by
        today's rules; the tenant's name and tier stay as they are)."""
        config, new_version = await service.restore_config(
            edge=edge,
            tenant_id=principal.tenant_id,
            version=version,
            actor=principal.subject,
            expected_version=body.expected_version if body is not None else None,
        )
        return ConfigView.of(config, new_version)

    # ----------------------------------------------------------------- documents

    @router.post(
        "/v1/documents",
        tags=["documents"],
        status_code=202,
        response_model=DocumentAccepted,
        responses={413: {"model": Problem}, 415: {"model": Problem}},
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": DocumentCreate.model_json_schema()},
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "required": ["file"],
                            "properties": {
                                "file": {"type": "string", "format": "binary"},
                                "title": {"type": "string", "maxLength": 500},
                            },
                        }
                    },
                },
            }
        },
    )
    async def submit_document(request: Request, principal: TenantAdmin) -> DocumentAccepted:
        """Submit a document (JSON text, or a file upload: UTF-8 text, PDF or Word .docx, whose
        text is read at the edge) for ingestion."""
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type == "application/json":
            try:
                body = DocumentCreate.model_validate_json(await request.body())
            except ValidationError as exc:
                raise HTTPException(
                    422, detail=exc.errors(include_input=False, include_url=False)
                ) from None
            title, text, kind = body.title, body.text, "text/plain"
        elif content_type == "multipart/form-data":
            title, text, kind = await _read_upload(request)
        else:
            raise HTTPException(415, detail="send application/json or multipart/form-data")
        if len(text.encode()) > settings.max_document_bytes:
            raise HTTPException(
                413, detail=f"document larger than {settings.max_document_bytes} bytes"
            )
        if not text.strip():
            raise HTTPException(422, detail="the document is empty")
        document = await service.submit_document(
            edge=edge, principal=principal, title=title, text=text, content_type=kind
        )
        return DocumentAccepted(document_id=document.document_id, status=document.status)

    reading_files = asyncio.Semaphore(settings.extract_concurrency)

    async def _read_upload(request: Request) -> tuple[str, str, str]:
        try:
            form = await request.form(max_files=1, max_fields=5)
        except Exception:
            raise HTTPException(400, detail="the multipart body could not be parsed") from None
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise HTTPException(422, detail="a 'file' part is required")
        limit = max(settings.max_document_bytes, settings.max_upload_bytes)
        raw = await upload.read(limit + 1)
        kind = extract.kind_of(raw)
        if kind is not None:
            text = await _file_text(raw, kind)
        else:
            if len(raw) > settings.max_document_bytes:
                raise HTTPException(
                    413, detail=f"document larger than {settings.max_document_bytes} bytes"
                )
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise HTTPException(415, detail=_ACCEPTED_FILES) from None
            if "\x00" in text:
                raise HTTPException(415, detail=_ACCEPTED_FILES)
        title_field = form.get("title")
        title = (
            title_field
            if isinstance(title_field, str) and title_field.strip()
            else (upload.filename or "")
        )
        title = title.strip()[:500] or "untitled"
        return title, text, kind or (upload.content_type or "text/plain")[:100]

    async def _file_text(raw: bytes, kind: str) -> str:
        """A PDF's or Word file's text, read in a child process (``extract``)."""
        if len(raw) > settings.max_upload_bytes:
            raise HTTPException(413, detail=f"file larger than {settings.max_upload_bytes} bytes")
        try:
            async with reading_files:  # children at once: their memory adds to the pod's
                text = await extract.extracted_text(
                    raw,
                    kind,
                    timeout_s=settings.extract_timeout_s,
                    max_pages=settings.max_upload_pages,
                    memory_bytes=settings.extract_memory_bytes,
                )
        except extract.Unreadable as exc:
            raise HTTPException(422, detail=str(exc)) from None
        if not text.strip():
            raise HTTPException(
                422,
                detail="no text could be read from the file (a scanned PDF's pages are images; "
                "Tenantry does not read text from images)",
            )
        return text

    @router.get("/v1/documents", tags=["documents"], response_model=DocumentList)
    async def list_documents(
        principal: TenantAdmin,
        limit: Annotated[int, Query(ge=1, le=500)] = 100,
        offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
        status: Annotated[
            ShownStatus | None,
            Query(description="Only the documents in this status (e.g. the failed ones)."),
        ] = None,
    ) -> DocumentList:
        """The caller's tenant's documents (not deleted), newest first."""
        async with edge.sessions() as session:
            rows, total = await repo.list_documents(
                session=session,
                tenant_id=principal.tenant_id,
                limit=limit,
                offset=offset,
                status=DocumentStatus(status) if status is not None else None,
            )
        return DocumentList(
            documents=[DocumentView.model_validate(r, from_attributes=True) for r in rows],
            total=total,
        )

    @router.get(
        "/v1/documents/{document_id}",
        tags=["documents"],
        response_model=DocumentView,
        responses={404: {"model": Problem}},
    )
    async def get_document(document_id: uuid.UUID, principal: TenantAdmin) -> DocumentView:
        """One of the caller's tenant's documents: whether it is indexed yet (404 if deleted)."""
        document = await service.get_document(
            edge=edge, principal=principal, document_id=document_id
        )
        return DocumentView.model_validate(document, from_attributes=True)

    @router.delete(
        "/v1/documents/{document_id}",
        tags=["documents"],
        status_code=202,
        response_model=DocumentAccepted,
    )
    async def delete_document(document_id: uuid.UUID, principal: TenantAdmin) -> DocumentAccepted:
        """Delete one of the caller's tenant's documents."""
        await service.delete_document(edge=edge, principal=principal, document_id=document_id)
        return DocumentAccepted(document_id=document_id, status="deleted")

    # ----------------------------------------------------------------- chat

    async def admit(
        principal: Principal,
        access: CheckedAccess,
        *,
        request_id: uuid.UUID,
        question: str,
        history: list[ChatMessage],
        conversation_id: uuid.UUID | None,
        stream: bool,
        model: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        stop: Sequence[str] = (),
        sampling: SamplingHints | None = None,
        response_format: ResponseFormat | None = None,
        end_user: str | None = None,
        tools: ToolOptions | None = None,
        tool_turns: Sequence[ChatMessage] = (),
        document_ids: Sequence[uuid.UUID] = (),
    ) -> service.AdmittedChat:
        return await service.admit_chat(
            edge=edge,
            principal=principal,
            request_id=request_id,
            question=question,
            history=history,
            conversation_id=conversation_id,
            stream=stream,
            reply_partition=reply_partition(),
            recorded_config_version=access.config_version,
            model=model,
            max_tokens=max_tokens,
            temperature=temperature,
            stop=stop,
            sampling=sampling,
            response_format=response_format,
            end_user=end_user,
            tools=tools,
            tool_turns=tool_turns,
            document_ids=document_ids,
        )

    def reply_partition() -> int:
        """The partition this replica reads answers from; 503 when it holds none."""
        try:
            return replies.reply_partition()
        except NoReplyPartition:
            raise service.Unavailable(
                "this replica cannot receive answers right now", {"Retry-After": "5"}
            ) from None

    def wants_stream(request: Request, stream: bool) -> bool:
        return stream or "text/event-stream" in request.headers.get("accept", "")

    async def first_event(
        pending: PendingReply, deadline: float
    ) -> tuple[ChatDelta | ChatCompleted | ChatFailed | None, AsyncIterator[Any]]:
        events = pending.events(timeout_s=deadline)
        return await next_event(events), events

    async def next_event(
        events: AsyncIterator[Any],
    ) -> ChatDelta | ChatCompleted | ChatFailed | None:
        """A chat request's next event; None at its deadline (a search's passages never name a
        chat request's id, and would be no answer to one)."""
        try:
            event: ChatDelta | ChatCompleted | ChatFailed | SearchCompleted = await anext(events)
        except (TimeoutError, StopAsyncIteration):
            return None
        return None if isinstance(event, SearchCompleted) else event

    async def search_outcome(
        pending: PendingReply, deadline: float
    ) -> SearchCompleted | ChatFailed | None:
        """A search's passages or failure; None at its deadline."""
        with contextlib.suppress(TimeoutError):
            async for event in pending.events(timeout_s=deadline):
                if isinstance(event, SearchCompleted | ChatFailed):
                    return event
        return None

    @router.post(
        "/v1/chat",
        tags=["chat"],
        response_model=ChatAnswer,
        responses={
            200: {"content": {"text/event-stream": {}}},
            429: {"model": Problem},
            503: {"model": Problem},
            504: {"model": Problem},
        },
    )
    async def chat(
        body: ChatRequest, request: Request, principal: TenantUser, access: Access
    ) -> Response:
        """Ask a question over the tenant's documents (JSON, or Server-Sent Events).

        With a ``conversation_id`` (a UUID of the caller's choosing) the conversation's earlier
        turns go with the question, and this turn is kept for the next one.
        """
        stream = wants_stream(request, body.stream)
        deadline = settings.chat_deadline_s
        conversation_id = body.conversation_id
        history: list[ChatMessage] = []
        if conversation_id is not None:
            history = await service.conversation_history(
                edge=edge, principal=principal, conversation_id=conversation_id
            )
        request_id = uuid.uuid4()
        pending = replies.register(request_id)
        handed_over = False

        async def answered(completed: ChatCompleted) -> dict[str, Any]:
            if conversation_id is not None:
                await service.remember_turn(
                    edge=edge,
                    principal=principal,
                    conversation_id=conversation_id,
                    question=body.question,
                    answer=completed.answer,
                )
            return service.answer_body(completed, conversation_id)

        try:
            admitted = await admit(
                principal,
                access,
                request_id=request_id,
                question=body.question,
                history=history,
                conversation_id=conversation_id,
                stream=stream,
                end_user=body.user,
                document_ids=body.document_ids or (),
            )
            headers = admitted.rate.headers() | {"X-Request-Id": str(request_id)}
            first, events = await first_event(pending, deadline)
            if first is None:
                return JSONResponse(
                    _deadline_body(request_id, deadline), status_code=504, headers=headers
                )
            if isinstance(first, ChatFailed):
                status = _FAILURE_STATUS[first.reason]
                return JSONResponse(_failure_body(first), status_code=status, headers=headers)
            if not stream:
                event: ChatDelta | ChatCompleted | ChatFailed | None = first
                while isinstance(event, ChatDelta):
                    event = await next_event(events)
                if isinstance(event, ChatCompleted):
                    return JSONResponse(await answered(event), headers=headers)
                if isinstance(event, ChatFailed):
                    status = _FAILURE_STATUS[event.reason]
                    return JSONResponse(_failure_body(event), status_code=status, headers=headers)
                return JSONResponse(
                    _deadline_body(request_id, deadline), status_code=504, headers=headers
                )

            async def sse() -> AsyncIterator[str]:
                try:
                    event: ChatDelta | ChatCompleted | ChatFailed | None = first
                    while True:
                        if isinstance(event, ChatDelta):
                            yield _sse(
                                "delta",
                                {
                                    "request_id": str(request_id),
                                    "seq": event.seq,
                                    "delta": event.delta,
                                },
                            )
                        elif isinstance(event, ChatCompleted):
                            yield _sse("completed", await answered(event))
                            return
                        elif isinstance(event, ChatFailed):
                            yield _sse("error", _failure_body(event))
                            return
                        else:
                            yield _sse("error", _deadline_body(request_id, deadline))
                            return
                        event = await next_event(events)
                finally:
                    replies.forget(request_id)

            handed_over = True
            return StreamingResponse(
                sse(),
                media_type="text/event-stream",
                headers=headers | {"Cache-Control": "no-cache"},
            )
        finally:
            if not handed_over:
                replies.forget(request_id)

    @router.post(
        "/v1/chat/completions",
        tags=["chat"],
        responses={200: {"content": {"text/event-stream": {}}}, **OPENAI_ERRORS},
    )
    async def chat_completions(
        body: ChatCompletionRequest, request: Request, principal: TenantUser, access: Access
    ) -> Response:
        """OpenAI-compatible chat completions (whole or streamed)."""
        if refused := body.unsupported():
            param, code, message = refused
            return _openai_error(message, 400, code=code, param=param)
        user_turns = [i for i, m in enumerate(body.messages) if m.role == "user"]
        if not user_turns or not body.messages[user_turns[-1]].text.strip():
            return _openai_error("the last user message is missing or empty", 400, param="messages")
        last = user_turns[-1]
        if unanswered := _tool_sequence_error(body.messages):
            index, message = unanswered
            return _openai_error(message, 400, code="invalid_value", param=f"messages.{index}")
        tool_turns = body.messages[last + 1 :]
        if tool_turns and (tool_turns[0].role != "assistant" or tool_turns[-1].role != "tool"):
            # An assistant prefill or a trailing system message: the platform asks the model
            # one question with the messages before it, so it would be dropped. What may follow
            # the question is the model's tool calls and their results.
            return _openai_error(
                "the messages must end with a user message (the question), or with the results "
                "of the tool calls that answered it; a message after it "
                f"({body.messages[-1].role}) is not supported",
                400,
                code="unsupported_value",
                param=f"messages.{last + 1}",
            )
        question = body.messages[last].text
        if len(question) > MAX_QUESTION_CHARS:
            return _openai_error(
                f"the last user message has {len(question):,} characters; "
                f"at most {MAX_QUESTION_CHARS:,} are supported",
                400,
                code="string_above_max_length",
                param=f"messages.{last}.content",
            )
        history = [m.chat_message() for m in body.messages[:last]]
        stream = wants_stream(request, body.stream)
        deadline = settings.chat_deadline_s
        request_id = uuid.uuid4()
        pending = replies.register(request_id)
        handed_over = False
        try:
            try:
                admitted = await admit(
                    principal,
                    access,
                    request_id=request_id,
                    question=question,
                    history=history,
                    conversation_id=None,
                    stream=stream,
                    model=body.model,
                    max_tokens=body.completion_limit,
                    temperature=body.temperature,
                    stop=body.stop_sequences,
                    sampling=body.sampling,
                    response_format=body.answer_format,
                    end_user=body.user,
                    tools=body.tool_options,
                    tool_turns=[m.chat_message() for m in tool_turns],
                    document_ids=body.document_ids or (),
                )
            except service.EdgeError as exc:
                return _openai_edge_error(exc)
            headers = admitted.rate.headers() | {"X-Request-Id": str(request_id)}
            timeout_detail = str(_deadline_body(request_id, deadline)["detail"])
            first, events = await first_event(pending, deadline)
            if first is None:
                return _openai_error(timeout_detail, 504, code="deadline_exceeded", headers=headers)
            if isinstance(first, ChatFailed):
                return _openai_failure(first, headers)
            chunk_id = f"chatcmpl-{request_id}"
            created = int(time.time())
            if not stream:
                event: ChatDelta | ChatCompleted | ChatFailed | None = first
                while isinstance(event, ChatDelta):
                    event = await next_event(events)
                if isinstance(event, ChatCompleted):
                    return JSONResponse(
                        _openai_completion(chunk_id, created, event), headers=headers
                    )
                if isinstance(event, ChatFailed):
                    return _openai_failure(event, headers)
                return _openai_error(timeout_detail, 504, code="deadline_exceeded", headers=headers)
            # The model that answers: the one asked, unless a fallback did (a stream's pieces
            # name it then; a fallback is asked only before any piece was written).
            model = first.model or admitted.request.options.model
            include_usage = body.stream_options is not None and body.stream_options.include_usage

            def chunk(delta: dict[str, Any], finish: str | None, **extra: Any) -> str:
                choice = {"index": 0, "delta": delta, "finish_reason": finish}
                return _data(_openai_chunk(chunk_id, created, model, [choice]) | extra)

            def error_chunk(message: str, status: int, code: str) -> str:
                return _data(_openai_error_body(message, status, code=code))

            async def sse() -> AsyncIterator[str]:
                try:
                    yield chunk({"role": "assistant"}, None)
                    event: ChatDelta | ChatCompleted | ChatFailed | None = first
                    streamed = False
                    while True:
                        if isinstance(event, ChatDelta):
                            streamed = True
                            yield chunk({"content": event.delta}, None)
                        elif isinstance(event, ChatCompleted):
                            if not streamed and (event.answer or not event.tool_calls):
                                yield chunk({"content": event.answer}, None)
                            if event.tool_calls:
                                # Whole calls in one piece: OpenAI's clients join a call's
                                # pieces by index, and one piece is a whole call to them.
                                yield chunk(
                                    {"tool_calls": _openai_tool_calls(event, index=True)}, None
                                )
                            citations = service.citations_body(event.citations)
                            yield chunk({}, event.finish_reason.value, citations=citations)
                            if include_usage:  # as OpenAI sends it: no choices, then [DONE]
                                usage = _openai_chunk(chunk_id, created, model, [])
                                yield _data(usage | {"usage": service.usage_body(event.usage)})
                            break
                        elif isinstance(event, ChatFailed):
                            status = _FAILURE_STATUS[event.reason]
                            yield error_chunk(event.message, status, event.reason.value)
                            break
                        else:
                            yield error_chunk(timeout_detail, 504, "deadline_exceeded")
                            break
                        event = await next_event(events)
                    yield "data: [DONE]\n\n"
                finally:
                    replies.forget(request_id)

            handed_over = True
            return StreamingResponse(
                sse(),
                media_type="text/event-stream",
                headers=headers | {"Cache-Control": "no-cache"},
            )
        finally:
            if not handed_over:
                replies.forget(request_id)

    @router.post("/v1/feedback", tags=["chat"], status_code=201, response_model=FeedbackView)
    async def give_feedback(
        body: FeedbackGiven, principal: TenantUser, access: Access
    ) -> FeedbackView:
        """Rate one of the tenant's answers (-10 to 10, with a comment if you like). Rating the
        same answer again replaces your rating; tenant admins read them at GET /v1/feedback."""
        given = await service.give_feedback(
            edge=edge,
            principal=principal,
            request_id=body.request_id,
            value=body.value,
            comment=body.comment,
            end_user=body.user,
            recorded_config_version=access.config_version,
        )
        return FeedbackView.model_validate(given, from_attributes=True)

    @router.get(
        "/v1/feedback",
        tags=["chat"],
        response_model=FeedbackList,
        responses={200: {"content": {"text/csv": {}}}},
    )
    async def list_feedback(
        principal: TenantAdmin,
        since: Annotated[
            AwareDatetime | None, Query(description="Given at or after this (with its zone).")
        ] = None,
        before: Annotated[AwareDatetime | None, Query(description="Given before this.")] = None,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
        format: Annotated[Literal["json", "csv"], Query()] = "json",
    ) -> Response:
        """The tenant's ratings of its answers, the latest first, with their count and mean (as
        JSON), or one CSV line per rating (comments a spreadsheet would run neutralised)."""
        async with edge.sessions() as session:
            rows = await repo.list_feedback(
                session=session,
                tenant_id=principal.tenant_id,
                since=since,
                before=before,
                limit=limit,
            )
            views = [FeedbackView.model_validate(r, from_attributes=True) for r in rows]
            if format == "csv":  # the lines only: a spreadsheet sums them itself
                return Response(
                    csv_text(
                        FEEDBACK_CSV_COLUMNS,
                        (view.model_dump(mode="json") for view in views),
                        numbers={"value"},
                    ),
                    media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": 'attachment; filename="feedback.csv"'},
                )
            count, mean, positive, negative = await repo.feedback_summary(
                session=session, tenant_id=principal.tenant_id, since=since, before=before
            )
        listed = FeedbackList(
            feedback=views, count=count, mean_value=mean, positive=positive, negative=negative
        )
        return JSONResponse(listed.model_dump(mode="json"))

    @router.post(
        "/v1/search",
        tags=["documents"],
        response_model=SearchResults,
        responses={
            429: {"model": Problem},
            502: {"model": Problem},
            503: {"model": Problem},
            504: {"model": Problem},
        },
    )
    async def search(body: SearchRequest, principal: TenantAdmin, access: Access) -> Response:
        """The passages of the tenant's documents nearest a query, best first: what a chat
        request would retrieve for it (tenant admin). No model is asked and nothing is billed;
        it counts against the tenant's request rate, and is audited."""
        partition = reply_partition()
        request_id = uuid.uuid4()
        pending = replies.register(request_id)
        deadline = settings.chat_deadline_s
        try:
            rate = await service.admit_search(
                edge=edge,
                principal=principal,
                request_id=request_id,
                query=body.query,
                top_k=body.top_k,
                document_ids=body.document_ids or (),
                reply_partition=partition,
                recorded_config_version=access.config_version,
            )
            headers = rate.headers() | {"X-Request-Id": str(request_id)}
            found = await search_outcome(pending, deadline)
            if isinstance(found, SearchCompleted):
                results = SearchResults(
                    request_id=request_id,
                    corpus_version=found.corpus_version,
                    results=found.passages,
                )
                return JSONResponse(results.model_dump(mode="json"), headers=headers)
            if isinstance(found, ChatFailed):
                status = _FAILURE_STATUS[found.reason]
                return JSONResponse(_failure_body(found), status_code=status, headers=headers)
            return JSONResponse(
                _deadline_body(request_id, deadline), status_code=504, headers=headers
            )
        finally:
            replies.forget(request_id)

    @router.get("/v1/models", tags=["chat"], response_model=ModelList, responses=OPENAI_ERRORS)
    async def list_models(principal: TenantUser, access: Access) -> ModelList:
        """The models this tenant may chat with, its default first (OpenAI-compatible)."""
        models = await service.tenant_models(
            edge=edge,
            tenant_id=principal.tenant_id,
            recorded_config_version=access.config_version,
        )
        return ModelList(data=[ModelCard.of(model, settings.models[model]) for model in models])

    @router.get(
        "/v1/models/{model_id:path}",
        tags=["chat"],
        response_model=ModelCard,
        responses=OPENAI_ERRORS,
    )
    async def get_model(model_id: str, principal: TenantUser, access: Access) -> ModelCard:
        """One model this tenant may chat with (OpenAI-compatible); 404 for any other."""
        models = await service.tenant_models(
            edge=edge,
            tenant_id=principal.tenant_id,
            recorded_config_version=access.config_version,
        )
        if model_id not in models:
            raise service.ModelNotAllowed(
                f"model {model_id!r} does not exist or this tenant may not use it"
            )
        return ModelCard.of(model_id, settings.models[model_id])

    @router.get("/v1/catalogue", tags=["tenants"], response_model=list[CatalogueEntry])
    async def catalogue(principal: Operator) -> list[CatalogueEntry]:
        """The platform's model catalogue as this edge holds it (operators): what tenants may
        be allowed, each model's window, price, provider and fallbacks."""
        return [CatalogueEntry.of(model, spec) for model, spec in sorted(settings.models.items())]

    @router.get(
        "/v1/conversations/{conversation_id}",
        tags=["chat"],
        response_model=ConversationView,
        responses={404: {"model": Problem}, 503: {"model": Problem}},
    )
    async def get_conversation(
        conversation_id: uuid.UUID, principal: TenantUser
    ) -> ConversationView:
        """The caller's own conversation so far (404 once it expired, or if it is not theirs)."""
        messages = await service.conversation_history(
            edge=edge, principal=principal, conversation_id=conversation_id
        )
        if not messages:
            raise service.NotFound("no such conversation (it may have expired)")
        return ConversationView(conversation_id=conversation_id, messages=messages)

    @router.delete(
        "/v1/conversations/{conversation_id}",
        tags=["chat"],
        status_code=204,
        responses={404: {"model": Problem}, 503: {"model": Problem}},
    )
    async def delete_conversation(conversation_id: uuid.UUID, principal: TenantUser) -> Response:
        """Forget the caller's conversation: its next question starts afresh."""
        await service.forget_conversation(
            edge=edge, principal=principal, conversation_id=conversation_id
        )
        return Response(status_code=204)

    async def chat_user(request: Request) -> tuple[Principal, CheckedAccess]:
        """A chat route's dependencies, solved in FastAPI's order: token, access, role."""
        access = await checked_access(request, await verified(request))
        return await require_user(request, access.principal), access

    plain = {
        path: PlainRoute(
            path=path,
            body_model=body_model,
            authorize=chat_user,
            endpoint=endpoint,
            body_limit=settings.max_json_body_bytes,
        )
        for path, body_model, endpoint in (
            ("/v1/chat", ChatRequest, chat),
            ("/v1/chat/completions", ChatCompletionRequest, chat_completions),
        )
    }

    # ----------------------------------------------------------------- forwarded queries

    async def forward(request: Request, url: str) -> Response:
        upstream_request = http.build_request(
            "GET",
            url,
            params=request.query_params,
            headers={
                "Authorization": request.headers.get("authorization", ""),
                "Accept": request.headers.get("accept", "*/*"),
            },
        )
        try:
            upstream = await http.send(upstream_request, stream=True)
        except httpx.HTTPError as exc:
            log.warning("forwarded query failed", extra={"error_type": type(exc).__name__})
            return JSONResponse({"detail": "the upstream service is unreachable"}, status_code=502)
        passed = {
            k: v
            for k, v in upstream.headers.items()
            if k.lower() in ("content-type", "content-disposition", "cache-control")
        }
        return StreamingResponse(
            upstream.aiter_raw(),
            status_code=upstream.status_code,
            headers=passed,
            background=BackgroundTask(upstream.aclose),
        )

    Period = Annotated[Literal["day", "month"] | None, Query()]
    Day = Annotated[str | None, Query(max_length=40)]

    @router.get("/v1/usage", tags=["forwarded"], responses={502: {"model": Problem}})
    async def usage(
        request: Request,
        principal: TenantAdmin,
        period: Period = None,
        start: Day = None,
        end: Day = None,
        format: Annotated[Literal["json", "csv"] | None, Query()] = None,
    ) -> Response:
        """The caller's tenant's usage (forwarded to metering)."""
        return await forward(request, f"{settings.metering_url}/v1/usage")

    EndUserLimit = Annotated[int | None, Query(ge=1, le=1000)]

    @router.get("/v1/usage/end-users", tags=["forwarded"], responses={502: {"model": Problem}})
    async def end_user_usage(
        request: Request,
        principal: TenantAdmin,
        start: Day = None,
        end: Day = None,
        limit: EndUserLimit = None,
        format: Annotated[Literal["json", "csv"] | None, Query()] = None,
    ) -> Response:
        """The caller's tenant's usage per end user its requests named, the costliest first
        (forwarded to metering)."""
        return await forward(request, f"{settings.metering_url}/v1/usage/end-users")

    @router.get("/v1/usage/tenants", tags=["forwarded"], responses={502: {"model": Problem}})
    async def every_tenant_usage(
        request: Request,
        principal: Operator,
        start: Day = None,
        end: Day = None,
        limit: Annotated[int | None, Query(ge=1, le=10_000)] = None,
        format: Annotated[Literal["json", "csv"] | None, Query()] = None,
    ) -> Response:
        """Every tenant's usage, the costliest first, with its name and tier (operators;
        forwarded to metering)."""
        return await forward(request, f"{settings.metering_url}/v1/usage/tenants")

    @router.get(
        "/v1/tenants/{tenant_id}/usage/end-users",
        tags=["forwarded"],
        responses={502: {"model": Problem}},
    )
    async def tenant_end_user_usage(
        tenant_id: uuid.UUID,
        request: Request,
        principal: Operator,
        start: Day = None,
        end: Day = None,
        limit: EndUserLimit = None,
        format: Annotated[Literal["json", "csv"] | None, Query()] = None,
    ) -> Response:
        """Any tenant's usage per end user (operators; forwarded to metering)."""
        return await forward(
            request, f"{settings.metering_url}/v1/tenants/{tenant_id}/usage/end-users"
        )

    @router.get(
        "/v1/tenants/{tenant_id}/usage", tags=["forwarded"], responses={502: {"model": Problem}}
    )
    async def tenant_usage(
        tenant_id: uuid.UUID,
        request: Request,
        principal: Operator,
        period: Period = None,
        start: Day = None,
        end: Day = None,
        format: Annotated[Literal["json", "csv"] | None, Query()] = None,
    ) -> Response:
        """Any tenant's usage (operators; forwarded to metering)."""
        return await forward(request, f"{settings.metering_url}/v1/tenants/{tenant_id}/usage")

    @router.get("/v1/audit/export", tags=["forwarded"], responses={502: {"model": Problem}})
    async def audit_export(
        request: Request,
        principal: TenantAdmin,
        start: Day = None,
        end: Day = None,
        format: Annotated[Literal["csv", "jsonl"] | None, Query()] = None,
    ) -> Response:
        """The caller's tenant's audit log (forwarded to audit)."""
        return await forward(request, f"{settings.audit_url}/v1/audit/export")

    @router.get("/v1/audit/verify", tags=["forwarded"], responses={502: {"model": Problem}})
    async def audit_verify(request: Request, principal: TenantAdmin) -> Response:
        """Verify the caller's tenant's audit hash chain (forwarded to audit)."""
        return await forward(request, f"{settings.audit_url}/v1/audit/verify")

    @router.get(
        "/v1/tenants/{tenant_id}/audit/export",
        tags=["forwarded"],
        responses={502: {"model": Problem}},
    )
    async def tenant_audit_export(
        tenant_id: uuid.UUID,
        request: Request,
        principal: Operator,
        start: Day = None,
        end: Day = None,
        format: Annotated[Literal["csv", "jsonl"] | None, Query()] = None,
    ) -> Response:
        """Any tenant's audit log (operators; forwarded to audit)."""
        return await forward(request, f"{settings.audit_url}/v1/tenants/{tenant_id}/audit/export")

    return EdgeRoutes(router, plain)


def _oauth_error(code: str, description: str, status: int) -> JSONResponse:
    headers = {"Cache-Control": "no-store"}
    if status == 401:
        headers["WWW-Authenticate"] = "Basic"
    return JSONResponse(
        {"error": code, "error_description": description}, status_code=status, headers=headers
    )


# --------------------------------------------------------------------------- OpenAI's shapes


def is_openai_path(path: str) -> bool:
    """Whether a route answers as OpenAI's API does, its errors included."""
    return path in ("/v1/chat/completions", "/v1/models") or path.startswith("/v1/models/")


def _data(payload: dict[str, Any]) -> str:
    """One server-sent event of an OpenAI stream."""
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"


def _openai_chunk(
    chunk_id: str, created: int, model: str, choices: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "id": chunk_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": choices,
    }


def _openai_completion(completion_id: str, created: int, event: ChatCompleted) -> dict[str, Any]:
    # ``citations`` is the platform's addition (as Perplexity's API adds one): OpenAI's SDKs
    # keep unknown fields, so a frontend on them can still show an answer's sources.
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": event.model,
        "choices": [
            {
                "index": 0,
                "message": _openai_message(event),
                "finish_reason": event.finish_reason.value,
            }
        ],
        "usage": service.usage_body(event.usage),
        "citations": service.citations_body(event.citations),
    }


def _openai_message(event: ChatCompleted) -> dict[str, Any]:
    """The answer as OpenAI's assistant message: its text, and its tool calls if it made any
    (with the text null when there is none, as OpenAI sends it)."""
    if not event.tool_calls:
        return {"role": "assistant", "content": event.answer}
    return {
        "role": "assistant",
        "content": event.answer or None,
        "tool_calls": _openai_tool_calls(event),
    }


def _openai_tool_calls(event: ChatCompleted, *, index: bool = False) -> list[dict[str, Any]]:
    """An answer's tool calls as OpenAI writes them (with their index in a stream's piece)."""
    return [
        call.model_dump(mode="json") | ({"index": i} if index else {})
        for i, call in enumerate(event.tool_calls)
    ]


def _tool_sequence_error(messages: Sequence[OpenAIMessage]) -> tuple[int, str] | None:
    """The first message breaking OpenAI's rule for tool results, as (index, why): a tool
    message answers a call of the assistant message before it (only tool results between),
    and every call of that message is answered before the conversation goes on."""
    open_calls: set[str] = set()
    for i, message in enumerate(messages):
        if message.role == "tool":
            if message.tool_call_id not in open_calls:
                return i, (
                    f"tool message {i} answers {message.tool_call_id!r}, which is not a call "
                    "of the assistant message before it (or was answered already)"
                )
            open_calls.discard(message.tool_call_id)
            continue
        if open_calls:
            return i, f"tool call(s) {sorted(open_calls)} have no tool message answering them"
        if message.tool_calls:
            open_calls = {call.id for call in message.tool_calls}
    if open_calls:
        return len(messages) - 1, (
            f"tool call(s) {sorted(open_calls)} have no tool message answering them"
        )
    return None


def _openai_type(status: int) -> str:
    """OpenAI's error type for an HTTP status (what its SDKs and the tools on them show)."""
    if status == 401:
        return "authentication_error"
    if status == 403:
        return "permission_error"
    if status == 429:
        return "rate_limit_error"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"


def _openai_error_body(
    message: str, status: int, *, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    kind = "insufficient_quota" if code == "insufficient_quota" else _openai_type(status)
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _openai_error(
    message: str,
    status: int,
    *,
    code: str | None = None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """An error as OpenAI's API answers it: ``{"error": {message, type, param, code}}``."""
    return JSONResponse(
        _openai_error_body(message, status, code=code, param=param),
        status_code=status,
        headers=headers,
    )


def _openai_edge_error(exc: service.EdgeError) -> JSONResponse:
    """A refusal of the edge, in OpenAI's shape (an unknown model is a 404, as there)."""
    if isinstance(exc, service.ModelNotAllowed):
        return _openai_error(
            exc.detail, 404, code="model_not_found", param="model", headers=exc.headers
        )
    if isinstance(exc, service.FormatNotTaken):
        return _openai_error(
            exc.detail, 400, code="unsupported_value", param=exc.param, headers=exc.headers
        )
    code = {
        service.RateLimited: "rate_limit_exceeded",
        service.BudgetRefused: "insufficient_quota",
        service.NotFound: "not_found",
        service.Unavailable: "service_unavailable",
    }.get(type(exc))
    return _openai_error(exc.detail, _edge_status(exc), code=code, headers=exc.headers)


def _openai_failure(event: ChatFailed, headers: dict[str, str]) -> JSONResponse:
    """A request the model side could not answer (the reason is the code)."""
    status = _FAILURE_STATUS[event.reason]
    return _openai_error(event.message, status, code=event.reason.value, headers=headers)


def _openai_validation_error(exc: RequestValidationError) -> JSONResponse:
    """A body that failed validation: 400 naming the first bad field, as OpenAI's API does."""
    errors = list(exc.errors())
    first: dict[str, Any] = dict(errors[0]) if errors else {}
    kind = str(first.get("type", "invalid"))
    # The location's first part is where the field is ("body"); the rest names the field.
    param = ".".join(str(part) for part in first.get("loc", ())[1:]) or None
    if kind == "json_invalid":
        param = None
        context = first.get("ctx")
        reason = context.get("error") if isinstance(context, dict) else None
        message = f"the body is not valid JSON: {reason or 'it cannot be parsed'}"
    else:
        said = str(first.get("msg", "invalid request"))
        message = f"{param}: {said}" if param else said
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more)"
    return _openai_error(message, 400, code=kind, param=param)


def as_openai_error(exc: Exception, response: Response) -> Response:
    """The app's answer to ``exc`` (``response``), reshaped as OpenAI's API would answer it."""
    if isinstance(exc, RequestValidationError):
        return _openai_validation_error(exc)
    if isinstance(exc, service.EdgeError):
        return _openai_edge_error(exc)
    status = response.status_code
    headers = {
        name: value
        for name, value in response.headers.items()
        if name.lower() not in ("content-length", "content-type")
    }
    raw = bytes(response.body) if isinstance(response, JSONResponse) else b""
    try:
        detail = json.loads(raw).get("detail") if raw else None
    except (ValueError, AttributeError):
        detail = None
    message = detail if isinstance(detail, str) else _http_reason(status)
    code = "invalid_api_key" if status == 401 else None
    return _openai_error(message, status, code=code, headers=headers)


def _http_reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return f"HTTP {status}"
