"""Chunking: paragraphs kept whole where they fit, bounded size, overlap, nothing lost."""

from __future__ import annotations

import itertools
import re

import pytest
from tenantry_retrieval.chunking import chunk_text

pytestmark = pytest.mark.unit


def _words(text: str) -> list[str]:
    return re.findall(r"\S+", text)


def test_short_text_is_one_chunk() -> None:
    assert chunk_text("Hello world.", size=100, overlap=10) == ["Hello world."]


def test_empty_or_blank_text_has_no_chunks() -> None:
    assert chunk_text("", size=100, overlap=10) == []
    assert chunk_text(" \n\n \t\n", size=100, overlap=10) == []


def test_paragraphs_are_packed_whole_and_chunks_break_between_them() -> None:
    paragraphs = [f"Paragraph {i} says something short about topic {i}." for i in range(12)]
    text = "\n\n".join(paragraphs)
    chunks = chunk_text(text, size=160, overlap=0)
    assert len(chunks) > 1
    for chunk in chunks:
        assert len(chunk) <= 160
        # Without overlap every chunk is a run of whole paragraphs.
        assert all(part in paragraphs for part in chunk.split("\n\n"))
    assert [p for chunk in chunks for p in chunk.split("\n\n")] == paragraphs


def test_each_chunk_starts_with_the_tail_of_the_previous_one() -> None:
    paragraphs = [f"Section {i}: " + " ".join(f"word{i}x{j}" for j in range(12)) for i in range(8)]
    chunks = chunk_text("\n\n".join(paragraphs), size=200, overlap=40)
    assert len(chunks) > 2
    for previous, current in itertools.pairwise(chunks):
        head = current.split("\n\n", 1)[0]
        assert previous.endswith(head), "the overlap is the previous chunk's tail"
        assert 0 < len(head) <= 40
        assert not head.startswith(" ")
        assert head == head.strip()


def test_overlap_starts_at_a_word_boundary() -> None:
    text = "\n\n".join(["alpha beta gamma delta epsilon zeta eta theta iota kappa"] * 6)
    chunks = chunk_text(text, size=120, overlap=25)
    vocabulary = set(text.split())
    assert len(chunks) > 2
    for chunk in chunks[1:]:
        head = chunk.split("\n\n", 1)[0]
        assert set(head.split()) <= vocabulary, "no word is cut in half"


def test_a_paragraph_longer_than_a_chunk_is_split_at_sentences() -> None:
    sentences = [f"This is sentence number {i} of a long paragraph." for i in range(20)]
    paragraph = " ".join(sentences)
    chunks = chunk_text(paragraph, size=200, overlap=0)
    assert len(chunks) > 1
    for chunk in chunks:
        assert len(chunk) <= 200
        assert chunk.endswith("."), "a split falls after a sentence"
    assert " ".join(chunks) == paragraph


def test_every_chunk_fits_and_no_word_is_lost() -> None:
    blob = "x" * 450
    text = (
        "Intro paragraph.\n\n" + " ".join(f"w{i}" for i in range(300)) + "\n\n" + blob + "\n\nEnd."
    )
    chunks = chunk_text(text, size=120, overlap=30)
    assert all(len(c) <= 120 for c in chunks)
    words_out = [w for c in chunks for w in _words(c)]
    assert {w for w in _words(text) if w != blob} <= set(words_out)
    # The 450-character "word" is cut hard into pieces, none dropped (overlap may repeat some).
    assert sum(len(w) for w in words_out if set(w) == {"x"}) >= 450


def test_invalid_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="overlap"):
        chunk_text("text", size=10, overlap=10)
