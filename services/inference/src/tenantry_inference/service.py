"""Answering one chat request: resolve the tenant's prompt and model, check for leakage, call the
model, and emit the answer (streamed), the usage and the audit record.

Every output id is derived from the request id, so a redelivered ContextRetrieved produces the
same events again and consumers deduplicate them: the final response (ChatCompleted or ChatFailed,
one id for both), each ChatDelta (by seq), the UsageRecorded (``derived_id(request_id,
"usage")``, billed once by metering) and the audit records.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from tenantry_common.events import (
    AuditDetail,
    AuditRecorded,
    AuditStatus,
    AuditType,
    ChatCompleted,
    ChatDelta,
    ChatFailed,
    ChatMessage,
    Citation,
    ContextRetrieved,
    FailureReason,
    FinishReason,
    FunctionCall,
    LeakagePolicy,
    Passage,
    ReplyTo,
    TenantConfig,
    TenantConfigChanged,
    TenantOffboarded,
    TenantProvisioned,
    TokenUsage,
    ToolCall,
    UsageRecorded,
)
from tenantry_common.ids import derived_id, utcnow
from tenantry_common.settings import ModelSpec

from tenantry_inference.leakage import (
    Finding,
    LeakageBlocked,
    LeakageDetector,
    StreamGuard,
    TenantRegistry,
    kinds,
    redact,
)
from tenantry_inference.llm import ModelCallError, ModelGateway, ToolCallPiece
from tenantry_inference.metrics import InferenceMetrics
from tenantry_inference.prompts import (
    DEFAULT_TEMPLATE,
    PromptTooLong,
    build_prompt,
    resolve_template,
    system_message,
    tool_tokens,
)
from tenantry_inference.tokens import EstimatingCounter, TokenCounter

log = logging.getLogger("tenantry.inference")

SOURCE = "inference"
UNKNOWN_TENANT_NAME = "this organisation"


class Outbox(Protocol):
    """Where the service's events go (the broker in production, a list in unit tests)."""

    async def response(
        self, event: ChatDelta | ChatCompleted | ChatFailed, reply_to: ReplyTo
    ) -> None: ...

    async def usage(self, event: UsageRecorded) -> None: ...

    async def audit(self, event: AuditRecorded) -> None: ...


# --------------------------------------------------------------------------- tenant state


@dataclass
class TenantDirectory:
    """Each tenant's latest config and the registry of names, kept in memory from the topics."""

    registry: TenantRegistry = field(default_factory=TenantRegistry)
    configs: dict[uuid.UUID, tuple[int, TenantConfig]] = field(default_factory=dict)
    offboarded: set[uuid.UUID] = field(default_factory=set)
    #: Set when a tenant's next config is kept; requests waiting for a newer one wait on it.
    arrivals: dict[uuid.UUID, asyncio.Event] = field(default_factory=dict)

    def config(self, tenant_id: uuid.UUID) -> tuple[int, TenantConfig] | None:
        """The latest known (version, config) of a tenant, if any."""
        return self.configs.get(tenant_id)

    def holds(self, tenant_id: uuid.UUID, version: int) -> bool:
        """Whether the config held for the tenant is at least ``version``."""
        held = self.configs.get(tenant_id)
        return held is not None and held[0] >= version

    async def wait_for(self, tenant_id: uuid.UUID, version: int, *, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` until the tenant's config is at least ``version``; returns
        whether it is. An offboarded tenant's never comes."""
        try:
            async with asyncio.timeout(timeout_s):
                while not self.holds(tenant_id, version) and tenant_id not in self.offboarded:
                    await self.arrivals.setdefault(tenant_id, asyncio.Event()).wait()
        except TimeoutError:
            pass
        return self.holds(tenant_id, version)

    def apply_config(self, *, tenant_id: uuid.UUID, version: int, config: TenantConfig) -> bool:
        """Keep a config if it is newer than the one held; returns whether it was kept."""
        if tenant_id in self.offboarded:
            return False  # the compacted topic still holds configs of offboarded tenants
        current = self.configs.get(tenant_id)
        if current is not None and current[0] > version:
            return False
        self.configs[tenant_id] = (version, config)
        self.registry.upsert(tenant_id, config.tenant_name)
        if (arrived := self.arrivals.pop(tenant_id, None)) is not None:
            arrived.set()
        return True


def apply_config_changed(*, directory: TenantDirectory, event: TenantConfigChanged) -> bool:
    """Record a tenant's new configuration."""
    return directory.apply_config(
        tenant_id=event.tenant_id, version=event.version, config=event.config
    )


def apply_provisioned(*, directory: TenantDirectory, event: TenantProvisioned) -> None:
    """Register a new tenant's name and id (and its first config) for leakage checks."""
    directory.offboarded.discard(event.tenant_id)
    directory.registry.upsert(event.tenant_id, event.tenant_name)
    directory.apply_config(
        tenant_id=event.tenant_id, version=event.config_version, config=event.config
    )


def apply_offboarded(*, directory: TenantDirectory, event: TenantOffboarded) -> None:
    """Forget an offboarded tenant: its config, name and id."""
    directory.offboarded.add(event.tenant_id)
    directory.configs.pop(event.tenant_id, None)
    directory.registry.remove(event.tenant_id)
    if (waiting := directory.arrivals.pop(event.tenant_id, None)) is not None:
        waiting.set()  # what waits for its config stops waiting


# --------------------------------------------------------------------------- answering


@dataclass
class InferenceDeps:
    """What answering needs; built once by the app (or by a test)."""

    catalogue: dict[str, ModelSpec]
    directory: TenantDirectory
    gateway: ModelGateway
    counters: dict[str, TokenCounter]
    metrics: InferenceMetrics
    min_completion_tokens: int = 16
    holdback_chars: int = 24
    total_timeout_s: float = 300.0
    config_wait_s: float = 2.0

    @property
    def detector(self) -> LeakageDetector:
        return LeakageDetector(self.directory.registry)

    def counter(self, model: str) -> TokenCounter:
        return self.counters.get(model) or EstimatingCounter()


@dataclass
class _Resolved:
    model: str
    spec: ModelSpec
    tenant_name: str
    system: ChatMessage
    max_tokens: int
    policy: LeakagePolicy
    config_version: int
    semantic_cache: bool


@dataclass
class _Run:
    """What is known about a request as it goes; the final events are built from it."""

    request: ContextRetrieved
    started: float
    model: str
    messages: list[ChatMessage] = field(default_factory=list)
    question: str = ""
    raw_answer: str = ""
    answer: str = ""
    reported: TokenUsage | None = None
    usage: TokenUsage = field(
        default_factory=lambda: TokenUsage(prompt_tokens=0, completion_tokens=0)
    )
    usage_source: str = "none"
    redactions: int = 0
    passages: list[Passage] = field(default_factory=list)
    passages_dropped: int = 0
    ttft_s: float | None = None
    deltas: int = 0
    finish: str | None = None
    #: The model asked first, when a fallback answered instead.
    fallback_from: str | None = None
    #: The tools the model called, as they arrive, by index.
    calls: dict[int, ToolCallPiece] = field(default_factory=dict)
    #: Those calls once complete and checked for leakage.
    tool_calls: list[ToolCall] = field(default_factory=list)

    @property
    def generated(self) -> str:
        """Everything the model wrote: the answer's text and its tool calls' arguments."""
        return self.raw_answer + "".join(call.arguments for call in self.calls.values())

    def take(self, piece: ToolCallPiece) -> None:
        """Join a piece of a tool call to the call of its index."""
        held = self.calls.get(piece.index)
        if held is not None:
            piece = replace(
                held,
                id=held.id or piece.id,
                name=held.name or piece.name,
                arguments=held.arguments + piece.arguments,
            )
        self.calls[piece.index] = piece

    def fall_back(self, model: str) -> None:
        """Start again with a fallback model, forgetting the failed attempt (which generated
        nothing and reported nothing)."""
        self.fallback_from = self.fallback_from or self.model
        self.model = model
        self.question = self.request.question
        self.messages, self.passages = [], []
        self.passages_dropped = self.redactions = 0
        self.finish = None
        self.calls, self.tool_calls = {}, []


def sha256_text(text: str) -> str:
    """Hex SHA-256 of UTF-8 text (what audit records carry instead of the text)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def prompt_digest(messages: Sequence[ChatMessage]) -> str:
    """SHA-256 of the messages exactly as sent (canonical JSON)."""
    canonical = json.dumps(
        [{"role": m.role, "content": m.content} for m in messages],
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return sha256_text(canonical)


def _resolve(
    *, request: ContextRetrieved, deps: InferenceDeps, model: str | None = None
) -> _Resolved:
    """The tenant's model (the request's, or ``model``), limits, prompt and policy (from the
    request's options if the tenant's config is unknown)."""
    options = request.options
    known = deps.directory.config(request.tenant_id)
    model = model or options.model
    spec = deps.catalogue.get(model)
    # Another tenant's own model is not in the catalogue as far as this tenant is told.
    if spec is None or not spec.visible_to(request.tenant_id):
        raise ModelCallError(
            FailureReason.MODEL_NOT_ALLOWED, f"model {model} is not in the platform's catalogue"
        )
    # The edge checked the model the request names with its config as of
    # options.config_version. A config held here that is older (the change did not arrive
    # within the wait) does not overrule that check; a fallback, which the edge never checked,
    # is checked with the config held, however old.
    if (
        known is not None
        and (model != options.model or known[0] >= options.config_version)
        and (model not in known[1].allowed_models or not spec.serves(request.tenant_id, known[1]))
    ):
        raise ModelCallError(
            FailureReason.MODEL_NOT_ALLOWED, f"model {model} is not allowed for this tenant"
        )
    if (form := options.response_format) is not None and not spec.takes(form):
        raise ModelCallError(
            FailureReason.MODEL_NOT_ALLOWED,
            f"model {model} cannot answer in response_format {form.type!r}",
        )
    if options.tools is not None and not spec.tool_calls:
        raise ModelCallError(FailureReason.MODEL_NOT_ALLOWED, f"model {model} cannot call tools")
    if known is None:
        # Config not here yet (a replica just started): the edge's snapshot and a safe template.
        name = deps.directory.registry.name(request.tenant_id) or UNKNOWN_TENANT_NAME
        resolved = resolve_template(
            DEFAULT_TEMPLATE, tenant_name=name, tier="standard", custom_instructions=""
        )
        return _Resolved(
            model=model,
            spec=spec,
            tenant_name=name,
            system=system_message(resolved_template=resolved, tenant_name=name),
            max_tokens=options.max_tokens,
            policy=LeakagePolicy.BLOCK,
            config_version=options.config_version,
            semantic_cache=options.semantic_cache,
        )
    version, config = known
    template = config.system_prompt_template.strip() or DEFAULT_TEMPLATE
    resolved = resolve_template(
        template,
        tenant_name=config.tenant_name,
        tier=config.tier.value,
        custom_instructions=config.custom_instructions,
    )
    return _Resolved(
        model=model,
        spec=spec,
        tenant_name=config.tenant_name,
        system=system_message(resolved_template=resolved, tenant_name=config.tenant_name),
        # Never more than the edge reserved, nor more than the tenant's current limit.
        max_tokens=min(options.max_tokens, config.max_tokens_per_request),
        policy=config.leakage_policy,
        config_version=version,
        semantic_cache=options.semantic_cache and config.features.semantic_cache,
    )


async def _await_config(*, request: ContextRetrieved, deps: InferenceDeps) -> None:
    """Wait, bounded, for the config the edge admitted the request with.

    The edge publishes a change before it commits it, and admits requests with the committed
    version, so a request can arrive before the change it was admitted under (a tenant that
    changes its prompt and asks at once). Answering with the config held would use the old
    template, policy and limits. A replica still reading the compacted topic after a start
    waits here too. Past the bound (or the deadline) it answers with what it holds, as before.
    """
    version = request.options.config_version
    if deps.directory.holds(request.tenant_id, version):
        return
    bound = deps.config_wait_s
    if request.deadline_at is not None:
        bound = min(bound, (request.deadline_at - utcnow()).total_seconds())
    arrived = bound > 0 and await deps.directory.wait_for(
        request.tenant_id, version, timeout_s=bound
    )
    deps.metrics.config_waits.labels("arrived" if arrived else "timed_out").inc()
    if not arrived:
        held = deps.directory.config(request.tenant_id)
        log.warning(
            "the request's config version has not arrived; answering with the config held",
            extra={
                "tenant_id": str(request.tenant_id),
                "request_id": str(request.request_id),
                "config_version": version,
                "held_version": held[0] if held is not None else None,
            },
        )


async def answer_request(*, request: ContextRetrieved, deps: InferenceDeps, outbox: Outbox) -> str:
    """Answer one request; returns the outcome ("success" or a failure reason)."""
    run = _Run(request=request, started=time.monotonic(), model=request.options.model)
    run.question = request.question
    resolved: _Resolved | None = None
    try:
        await _await_config(request=request, deps=deps)
        resolved = _resolve(request=request, deps=deps)
        if request.deadline_at is not None and utcnow() >= request.deadline_at:
            raise ModelCallError(
                FailureReason.MODEL_TIMEOUT,
                "the request's deadline passed before the model could be called",
            )
        resolved = await _generate_or_fall_back(
            run=run, resolved=resolved, deps=deps, outbox=outbox
        )
    except ModelCallError as exc:
        return await _fail(
            run=run, deps=deps, outbox=outbox, reason=exc.reason, message=exc.message
        )
    except PromptTooLong as exc:
        return await _fail(
            run=run, deps=deps, outbox=outbox, reason=FailureReason.INTERNAL, message=str(exc)
        )
    except LeakageBlocked as exc:
        deps.metrics.leakage.labels(exc.stage, "blocked").inc()
        await outbox.audit(_leakage_audit(request=request, model=run.model, blocked=exc))
        stage_words = "question or context" if exc.stage == "prompt" else "generated answer"
        return await _fail(
            run=run,
            deps=deps,
            outbox=outbox,
            reason=FailureReason.LEAKAGE_BLOCKED,
            message=(
                f"the {stage_words} contained data that must not be shared "
                f"({kinds(exc.findings)}); the tenant's policy blocks it"
            ),
        )
    completed = ChatCompleted(
        event_id=derived_id(request.request_id, "response"),
        tenant_id=request.tenant_id,
        request_id=request.request_id,
        user_id=request.user_id,
        question=run.question,
        answer=run.answer,
        citations=[
            Citation(
                document_id=p.document_id, chunk_index=p.chunk_index, title=p.title, score=p.score
            )
            for p in run.passages
        ],
        model=resolved.model,
        usage=run.usage,
        config_version=resolved.config_version,
        corpus_version=request.corpus_version,
        semantic_cache=resolved.semantic_cache,
        # Cut short at the token limit (the model's word for it): the client is told.
        finish_reason=_finish_reason(run),
        tool_calls=run.tool_calls,
    )
    await _finish(run=run, deps=deps, outbox=outbox, final=completed, status="success", error=None)
    return "success"


def _finish_reason(run: _Run) -> FinishReason:
    """Why the model stopped, as the platform says it: tool calls whenever it made any."""
    if run.tool_calls:
        return FinishReason.TOOL_CALLS
    return FinishReason.LENGTH if run.finish == "length" else FinishReason.STOP


#: Failures a fallback model may answer instead (not a refusal of the tenant's own request).
_FALLBACK_REASONS = frozenset({FailureReason.MODEL_UNAVAILABLE, FailureReason.MODEL_TIMEOUT})


async def _generate_or_fall_back(
    *, run: _Run, resolved: _Resolved, deps: InferenceDeps, outbox: Outbox
) -> _Resolved:
    """Generate with the resolved model; if it cannot answer, with its catalogue fallbacks in
    turn. Returns the resolution of the model that answered.

    A fallback is asked only while nothing was generated or reported (no text, no usage: the
    failed provider billed nothing and the client saw nothing), the request's deadline has not
    passed, and the tenant's config is known and allows the fallback. A fallback whose window
    is too small for the request is passed over like one that fails; if none is left, the
    request fails as the model asked did.
    """
    candidates = iter(resolved.spec.fallbacks)
    failed: ModelCallError | None = None  # the model asked, once it could not answer
    while True:
        try:
            await _generate(run=run, resolved=resolved, deps=deps, outbox=outbox)
            return resolved
        except PromptTooLong:
            if failed is None:
                raise  # the model asked: its window is the tenant's to fit
            error = failed
        except ModelCallError as exc:
            error = exc
            failed = failed or exc
        fallback = _next_fallback(run=run, deps=deps, error=error, candidates=candidates)
        if fallback is None:
            raise error
        deps.metrics.fallbacks.labels(resolved.model, fallback.model, error.reason.value).inc()
        log.warning(
            "model failed; asking its fallback",
            extra={
                "request_id": str(run.request.request_id),
                "model": resolved.model,
                "fallback": fallback.model,
                "reason": error.reason.value,
            },
        )
        run.fall_back(fallback.model)
        resolved = fallback


def _next_fallback(
    *, run: _Run, deps: InferenceDeps, error: ModelCallError, candidates: Iterator[str]
) -> _Resolved | None:
    request = run.request
    if error.reason not in _FALLBACK_REASONS or run.generated or run.reported is not None:
        return None
    if deps.directory.config(request.tenant_id) is None:
        return None  # which models the tenant allows is not known here yet
    for candidate in candidates:
        if request.deadline_at is not None and utcnow() >= request.deadline_at:
            return None
        try:
            return _resolve(request=request, deps=deps, model=candidate)
        except ModelCallError:
            continue  # not allowed for this tenant, or not in the response format asked
    return None


async def _generate(*, run: _Run, resolved: _Resolved, deps: InferenceDeps, outbox: Outbox) -> None:
    request = run.request
    counter = deps.counter(resolved.model)
    built = build_prompt(
        system=resolved.system,
        history=request.history,
        question=request.question,
        passages=request.passages,
        tenant_name=resolved.tenant_name,
        counter=counter,
        context_window=resolved.spec.context_window,
        max_tokens=resolved.max_tokens,
        min_completion_tokens=deps.min_completion_tokens,
        tool_turns=request.tool_turns,
        tools=request.options.tools,
    )
    run.passages = built.passages
    run.passages_dropped = built.dropped_passages

    detector = deps.detector
    # Each message scanned, and redacted where anything was found (used under `redact`).
    scanned = [_scanned(m, detector=detector, tenant_id=request.tenant_id) for m in built.messages]
    messages = list(built.messages)
    findings = [found for _, found in scanned]
    # Without passages (gateway mode, or a search that found nothing) the user message is the
    # question itself: its findings are the question's, not scanned twice.
    last = messages[-1]
    question_findings = (
        findings[-1]
        if last.role == "user" and last.content == request.question
        else detector.scan(request.question, tenant_id=request.tenant_id)
    )
    if any(findings) or question_findings:
        every = [f for per_message in findings for f in per_message] + question_findings
        if resolved.policy is LeakagePolicy.BLOCK:
            raise LeakageBlocked(every, "prompt")
        messages = [redacted for redacted, _ in scanned]
        run.question = redact(request.question, question_findings)
        run.redactions += sum(len(f) for f in findings)
        if run.fallback_from is None:  # a fallback's prompt holds the same findings again
            deps.metrics.leakage.labels("prompt", "redacted").inc(sum(len(f) for f in findings))
    run.messages = messages

    guard = StreamGuard(
        detector=detector,
        tenant_id=request.tenant_id,
        policy=resolved.policy,
        holdback=deps.holdback_chars,
    )
    called = time.monotonic()
    seq = 0
    # Named on each piece only when a fallback writes the answer: the edge's stream says so.
    fallback = resolved.model if resolved.model != request.options.model else None

    async def release(text: str) -> None:
        nonlocal seq
        if text and request.stream:
            delta = ChatDelta(
                event_id=derived_id(request.request_id, f"delta:{seq}"),
                tenant_id=request.tenant_id,
                request_id=request.request_id,
                seq=seq,
                delta=text,
                model=fallback,
            )
            await outbox.response(delta, request.reply_to)
            seq += 1
            run.deltas = seq

    try:
        async with _timeout(deps.total_timeout_s, request):
            async for piece in deps.gateway.generate(
                model=resolved.model,
                messages=messages,
                max_tokens=built.max_tokens,
                # As the edge resolved them: the request's own, else the config's when admitted.
                temperature=request.options.temperature,
                stop=request.options.stop,
                sampling=request.options.sampling,
                response_format=request.options.response_format,
                tools=request.options.tools,
                # A client that waits for the whole answer gets it from one whole response.
                stream=request.stream,
            ):
                if piece.usage is not None:
                    run.reported = piece.usage
                for call in piece.tool_calls:
                    run.take(call)
                if piece.finish is not None:
                    run.finish = piece.finish
                if piece.text:
                    if run.ttft_s is None:
                        run.ttft_s = time.monotonic() - called
                        if request.stream:  # a whole answer's first text is its last
                            deps.metrics.time_to_first_token.labels(resolved.model).observe(
                                run.ttft_s
                            )
                    run.raw_answer += piece.text
                    await release(guard.feed(piece.text))
        await release(guard.finish())
    except TimeoutError as exc:
        _settle_usage(run=run, counter=counter, guard=guard)
        raise ModelCallError(
            FailureReason.MODEL_TIMEOUT, f"the model {resolved.model} did not finish in time"
        ) from exc
    except (ModelCallError, LeakageBlocked):
        _settle_usage(run=run, counter=counter, guard=guard)
        raise
    run.answer = guard.answer
    if guard.findings:
        run.redactions += len(guard.findings)
        deps.metrics.leakage.labels("answer", "redacted").inc(len(guard.findings))
    _settle_usage(run=run, counter=counter, guard=guard)
    run.tool_calls = _checked_calls(run=run, detector=detector, policy=resolved.policy, deps=deps)


def _scanned(
    message: ChatMessage, *, detector: LeakageDetector, tenant_id: uuid.UUID
) -> tuple[ChatMessage, list[Finding]]:
    """A prompt message scanned (its text, and the arguments of an earlier answer's tool
    calls, which go to the model too), with what was found redacted; and the findings."""
    # The system prompt is the same for every request of a tenant's config: scanned once.
    scan = detector.scan_repeated if message.role == "system" else detector.scan
    found = scan(message.content, tenant_id=tenant_id)
    calls = [
        _scanned_call(c, detector=detector, tenant_id=tenant_id) for c in message.tool_calls or ()
    ]
    in_calls = [f for _, hits in calls for f in hits]
    if not found and not in_calls:
        return message, []
    content = redact(message.content, found) if found else message.content
    redacted_calls = [call for call, _ in calls] if message.tool_calls is not None else None
    redacted = message.model_copy(update={"content": content, "tool_calls": redacted_calls})
    return redacted, [*found, *in_calls]


def _scanned_call(
    call: ToolCall, *, detector: LeakageDetector, tenant_id: uuid.UUID
) -> tuple[ToolCall, list[Finding]]:
    """A tool call with what a scan of its arguments found redacted; and the findings."""
    hits = detector.scan(call.function.arguments, tenant_id=tenant_id)
    if not hits:
        return call, []
    arguments = redact(call.function.arguments, hits)
    function = call.function.model_copy(update={"arguments": arguments})
    return call.model_copy(update={"function": function}), hits


def _checked_calls(
    *, run: _Run, detector: LeakageDetector, policy: LeakagePolicy, deps: InferenceDeps
) -> list[ToolCall]:
    """The model's tool calls, whole, with their arguments scanned as an answer is: blocked
    or redacted as the tenant's policy says. A call the server sent no id for is given one
    (the client cannot answer a call without an id); a call without a name is not a call the
    client could make, and fails the request."""
    calls: list[ToolCall] = []
    for index, piece in sorted(run.calls.items()):
        name = piece.name
        if not name:
            raise ModelCallError(
                FailureReason.MODEL_UNAVAILABLE,
                f"the model {run.model} called a tool it did not name",
            )
        call, found = _scanned_call(
            ToolCall(
                id=piece.id or f"call_{run.request.request_id.hex[:12]}_{index}",
                function=FunctionCall(name=name, arguments=piece.arguments),
            ),
            detector=detector,
            tenant_id=run.request.tenant_id,
        )
        if found and policy is LeakagePolicy.BLOCK:
            raise LeakageBlocked(found, "answer")
        if found:
            run.redactions += len(found)
            deps.metrics.leakage.labels("answer", "redacted").inc(len(found))
        calls.append(call)
    return calls


def _timeout(total_s: float, request: ContextRetrieved) -> asyncio.Timeout:
    """The whole answer's time limit: the service's bound, or the request's deadline if sooner."""
    limit = total_s
    if request.deadline_at is not None:
        limit = min(limit, max((request.deadline_at - utcnow()).total_seconds(), 0.0))
    return asyncio.timeout(limit)


def _settle_usage(*, run: _Run, counter: TokenCounter, guard: StreamGuard | None) -> None:
    """Tokens actually consumed: the server's report, else counted; zero if nothing was generated.

    A report of zero completion tokens for a non-empty answer is not believed (some gateways
    report that when streaming).
    """
    reported = run.reported
    generated = run.generated
    if reported is not None and (reported.completion_tokens > 0 or not generated):
        run.usage, run.usage_source = reported, "server"
    elif generated:
        # The tools offered and earlier calls are prompt too, though no template renders them.
        tools = tool_tokens(counter, run.messages, run.request.options.tools)
        run.usage = TokenUsage(
            prompt_tokens=counter.count_messages(run.messages) + tools,
            completion_tokens=counter.count_text(generated),
        )
        run.usage_source = "tokenizer" if counter.exact else "estimate"


async def _fail(
    *, run: _Run, deps: InferenceDeps, outbox: Outbox, reason: FailureReason, message: str
) -> str:
    request = run.request
    failed = ChatFailed(
        # The same id as a ChatCompleted would have: one final response per request, even if a
        # redelivery ends differently from the first attempt.
        event_id=derived_id(request.request_id, "response"),
        tenant_id=request.tenant_id,
        request_id=request.request_id,
        reason=reason,
        message=message,
    )
    await _finish(
        run=run, deps=deps, outbox=outbox, final=failed, status=reason.value, error=message
    )
    return reason.value


async def _finish(
    *,
    run: _Run,
    deps: InferenceDeps,
    outbox: Outbox,
    final: ChatCompleted | ChatFailed,
    status: str,
    error: str | None,
) -> None:
    """Metrics, then the final response, the usage event (always exactly one id per request)
    and the audit record, published together.

    Sent together, the three records leave in one produce request (one broker round trip
    instead of three); the message's offset is committed only once all three are acknowledged.
    """
    request = run.request
    elapsed = time.monotonic() - run.started
    deps.metrics.requests.labels(str(request.tenant_id), run.model, status).inc()
    deps.metrics.latency.labels(run.model).observe(elapsed)
    for kind, amount in (
        ("prompt", run.usage.prompt_tokens),
        ("completion", run.usage.completion_tokens),
    ):
        if amount:
            deps.metrics.tokens.labels(str(request.tenant_id), run.model, kind).inc(amount)
    usage = UsageRecorded(
        event_id=derived_id(request.request_id, "usage"),
        tenant_id=request.tenant_id,
        request_id=request.request_id,
        user_id=request.user_id,
        end_user=request.end_user,
        model=run.model,
        prompt_tokens=run.usage.prompt_tokens,
        completion_tokens=run.usage.completion_tokens,
        cached=False,
        reservation=request.reservation,
        source=SOURCE,
    )
    prompt_text = "".join(m.content for m in run.messages)
    details: dict[str, AuditDetail] = {
        "request_id": str(request.request_id),
        "end_user": request.end_user,
        "model": run.model,
        "fallback_from": run.fallback_from,
        "outcome": status,
        "streamed": request.stream,
        "deltas": run.deltas,
        "prompt_messages": len(run.messages),
        "prompt_chars": len(prompt_text),
        "answer_chars": len(run.answer),
        "prompt_tokens": run.usage.prompt_tokens,
        "completion_tokens": run.usage.completion_tokens,
        "usage_source": run.usage_source,
        "finish_reason": run.finish,
        "tool_calls": len(run.tool_calls),
        # Which tools it called (never their arguments, which may hold personal data).
        "tools_called": ",".join(call.function.name for call in run.tool_calls)[:500] or None,
        "passages_used": len(run.passages),
        "passages_dropped": run.passages_dropped,
        "redactions": run.redactions,
        "latency_ms": round(elapsed * 1000),
        "ttft_ms": round(run.ttft_s * 1000) if run.ttft_s is not None else None,
        "prompt_sha256": prompt_digest(run.messages) if run.messages else None,
        "answer_sha256": sha256_text(run.answer) if status == "success" else None,
    }
    audit = _chat_audit(
        request,
        kind="api_call",
        audit_type=AuditType.API_CALL,
        status=AuditStatus.SUCCESS if status == "success" else AuditStatus.FAILURE,
        error=error,
        details=details,
    )
    await asyncio.gather(
        outbox.response(final, request.reply_to), outbox.usage(usage), outbox.audit(audit)
    )
    log.info(
        "chat answered" if status == "success" else "chat failed",
        extra={
            "request_id": str(request.request_id),
            "model": run.model,
            "outcome": status,
            "prompt_tokens": run.usage.prompt_tokens,
            "completion_tokens": run.usage.completion_tokens,
            "latency_ms": round(elapsed * 1000),
        },
    )


def _chat_audit(
    request: ContextRetrieved,
    *,
    kind: str,
    audit_type: AuditType,
    status: AuditStatus,
    error: str | None,
    details: dict[str, AuditDetail],
) -> AuditRecorded:
    """An audit record of one chat request (its id derived from the request and ``kind``)."""
    return AuditRecorded(
        event_id=derived_id(request.request_id, f"audit.{kind}"),
        tenant_id=request.tenant_id,
        audit_type=audit_type,
        source=SOURCE,
        actor=request.user_id,
        resource_type="chat_request",
        resource_id=str(request.request_id),
        action="chat.completion",
        status=status,
        error=error,
        details=details,
    )


def _leakage_audit(
    *, request: ContextRetrieved, model: str, blocked: LeakageBlocked
) -> AuditRecorded:
    """The ``leakage_blocked`` record: where and what kind, never the matched text."""
    return _chat_audit(
        request,
        kind="leakage",
        audit_type=AuditType.LEAKAGE_BLOCKED,
        status=AuditStatus.FAILURE,
        error=f"leakage in the {blocked.stage}",
        details={
            "request_id": str(request.request_id),
            "model": model,
            "stage": blocked.stage,
            "kinds": kinds(blocked.findings),
            "findings": len(blocked.findings),
        },
    )


def count_findings(findings: Sequence[Finding]) -> int:
    """How many findings (for metrics)."""
    return len(findings)
