"""Reading an uploaded PDF's or Word file's text (``tenantry_auth.extract``)."""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
import zipfile

import docx
import pytest
from pypdf import PdfReader, PdfWriter
from tenantry_auth import extract
from tenantry_common.testing.files import pdf_with_text

pytestmark = pytest.mark.unit


def _pages(count: int) -> bytes:
    writer = PdfWriter()
    for _ in range(count):
        writer.add_blank_page(100, 100)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def test_the_kind_comes_from_the_first_bytes() -> None:
    assert extract.kind_of(pdf_with_text("x")) == extract.PDF
    assert extract.kind_of(b"PK\x03\x04rest") == extract.DOCX
    assert extract.kind_of(b"plain text that mentions %PDF-") is None


def test_a_pdfs_text_is_read_page_by_page_within_the_page_limit() -> None:
    assert extract.text_of(
        pdf_with_text("Refund policy (Acme)", "Returns within 30 days."), extract.PDF, max_pages=1
    ) == ("Refund policy (Acme)\nReturns within 30 days.")
    with pytest.raises(extract.Unreadable, match="has 3 pages; at most 2 are read"):
        extract.text_of(_pages(3), extract.PDF, max_pages=2)
    assert extract.text_of(_pages(2), extract.PDF, max_pages=2).strip() == ""


def test_an_encrypted_or_broken_pdf_is_unreadable_with_a_reason() -> None:
    locked = PdfWriter(clone_from=PdfReader(io.BytesIO(pdf_with_text("Secret"))))
    locked.encrypt("password")
    out = io.BytesIO()
    locked.write(out)
    with pytest.raises(extract.Unreadable, match="encrypted with a password"):
        extract.text_of(out.getvalue(), extract.PDF, max_pages=5)
    with pytest.raises(extract.Unreadable, match="could not be read as a PDF"):
        extract.text_of(b"%PDF-1.7\nnothing after", extract.PDF, max_pages=5)


def test_a_word_files_paragraphs_and_tables_are_read() -> None:
    document = docx.Document()
    document.add_paragraph("Shipping policy")
    document.add_paragraph("")
    table = document.add_table(rows=1, cols=2)
    table.cell(0, 0).text = "Zone A"
    table.cell(0, 1).text = "3 days"
    out = io.BytesIO()
    document.save(out)
    assert extract.text_of(out.getvalue(), extract.DOCX, max_pages=1) == (
        "Shipping policy\nZone A | 3 days"
    )


def test_a_zip_that_is_no_word_file_is_unreadable() -> None:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("notes.txt", "hello")
    for data in (out.getvalue(), b"PK\x03\x04 truncated"):
        with pytest.raises(extract.Unreadable, match="could not be read as a Word document"):
            extract.text_of(data, extract.DOCX, max_pages=1)


def test_the_child_process_answers_the_text_or_why_not_and_is_killed_at_its_deadline() -> None:
    async def run(data: bytes, timeout_s: float = 30.0) -> str:
        return await extract.extracted_text(
            data, extract.PDF, timeout_s=timeout_s, max_pages=10, memory_bytes=256 * 2**20
        )

    assert asyncio.run(run(pdf_with_text("From the child"))) == "From the child"
    with pytest.raises(extract.Unreadable, match="could not be read as a PDF"):
        asyncio.run(run(b"%PDF-1.4 broken"))
    with pytest.raises(extract.Unreadable, match=r"took longer than 0\.001 s"):
        asyncio.run(run(pdf_with_text("slow"), timeout_s=0.001))


def test_the_child_process_is_held_to_its_memory_limit() -> None:
    """With too little address space to load the PDF reader, the child says so (here the limit
    is far below the 256 MiB default, so that an ordinary file reaches it)."""
    with pytest.raises(extract.Unreadable, match="needed more memory than it may use"):
        asyncio.run(
            extract.extracted_text(
                pdf_with_text("hi"),
                extract.PDF,
                timeout_s=30.0,
                max_pages=10,
                memory_bytes=50 * 2**20,
            )
        )


def test_the_edge_itself_never_loads_the_parsers() -> None:
    """Only the child process imports pypdf and python-docx (and lxml): the edge's memory at
    rest does not carry them. Checked in a fresh interpreter (this one imported them above)."""
    code = (
        "import sys, tenantry_auth.app, tenantry_auth.api\n"
        "print(sorted(m for m in ('pypdf', 'docx', 'lxml') if m in sys.modules))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert loaded.stdout.strip() == "[]"
