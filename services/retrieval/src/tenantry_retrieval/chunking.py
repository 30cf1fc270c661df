"""Splitting a document into overlapping chunks that break at paragraphs where they can."""

from __future__ import annotations

import re
from dataclasses import dataclass

_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_WHITESPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class _Piece:
    text: str
    starts_paragraph: bool


def chunk_text(text: str, *, size: int, overlap: int) -> list[str]:
    """Chunks of at most ``size`` characters; each after the first repeats the previous one's tail.

    Paragraphs are packed whole into a chunk while they fit, so a chunk boundary falls between
    paragraphs; a paragraph longer than ``size`` is split at sentences (then words). The next
    chunk starts with up to ``overlap`` characters from the end of the previous one, cut at a
    word boundary, so a passage that straddles a boundary is still found whole in one chunk.
    """
    if size <= 0 or overlap < 0 or overlap >= size:
        raise ValueError("need 0 <= overlap < size")
    pieces = [
        piece
        for paragraph in _PARAGRAPH_BREAK.split(text)
        if (clean := _normalise(paragraph))
        for piece in _split_paragraph(clean, size)
    ]
    chunks: list[str] = []
    current = ""
    for piece in pieces:
        joiner = "\n\n" if piece.starts_paragraph else " "
        if current and len(current) + len(joiner) + len(piece.text) <= size:
            current += joiner + piece.text
            continue
        if current:
            chunks.append(current)
            tail = _tail(current, min(overlap, size - len(joiner) - len(piece.text)))
            current = tail + joiner + piece.text if tail else piece.text
        else:
            current = piece.text
    if current:
        chunks.append(current)
    return chunks


def _normalise(paragraph: str) -> str:
    """One paragraph on one line: inner newlines and runs of spaces become single spaces."""
    return _WHITESPACE.sub(" ", paragraph).strip()


def _split_paragraph(paragraph: str, size: int) -> list[_Piece]:
    if len(paragraph) <= size:
        return [_Piece(paragraph, True)]
    units: list[str] = []
    for sentence in _SENTENCE_END.split(paragraph):
        units.extend(_split_words(sentence, size) if len(sentence) > size else [sentence])
    packed: list[str] = []
    for unit in units:
        if packed and len(packed[-1]) + 1 + len(unit) <= size:
            packed[-1] += " " + unit
        else:
            packed.append(unit)
    return [_Piece(text, index == 0) for index, text in enumerate(packed)]


def _split_words(sentence: str, size: int) -> list[str]:
    parts: list[str] = []
    for word in sentence.split(" "):
        # A "word" longer than a chunk (a URL, a base64 blob) is cut hard; nothing is dropped.
        while len(word) > size:
            parts.append(word[:size])
            word = word[size:]
        if parts and len(parts[-1]) + 1 + len(word) <= size:
            parts[-1] += " " + word
        elif word:
            parts.append(word)
    return parts


def _tail(chunk: str, limit: int) -> str:
    """The last ``limit`` characters of a chunk, starting at a word boundary."""
    if limit <= 0:
        return ""
    if len(chunk) <= limit:
        return chunk
    tail = chunk[-limit:]
    cut = tail.find(" ")
    if chunk[-limit - 1].isspace():
        return tail.strip()
    return tail[cut + 1 :].strip() if cut >= 0 else ""
