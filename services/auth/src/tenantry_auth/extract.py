"""The text of an uploaded PDF or Word (.docx) file, read in a process of its own.

A document's file is parsed by a library (pypdf, python-docx) on bytes a tenant sent: a hostile
or broken file may take much CPU or memory. The edge runs each extraction as
``python -m tenantry_auth.extract <kind> <max pages> <memory bytes>`` with the file on stdin, so
that it can be killed at its deadline (a thread cannot be stopped) and its memory is bounded by
an rlimit on its address space and returned when it ends; the edge itself never imports the
libraries (its memory at rest is unchanged). The child answers one JSON object on stdout:
``{"text": …}`` or ``{"error": …}``.
"""

from __future__ import annotations

import asyncio
import io
import json
import sys
import zipfile
from typing import Any

PDF = "application/pdf"
DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"


class Unreadable(Exception):
    """The file's text cannot be read; the message says why in words a user can act on."""


def kind_of(data: bytes) -> str | None:
    """PDF or DOCX by the file's first bytes (never by its name or declared type), else None."""
    if data.startswith(b"%PDF-"):
        return PDF
    if data.startswith(b"PK\x03\x04"):  # a ZIP container: a .docx is one
        return DOCX
    return None


def pdf_text(data: bytes, *, max_pages: int) -> str:
    import pypdf.filters
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    pypdf.filters.JBIG2DEC_BINARY = None  # never run an external decoder on a tenant's file
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise Unreadable("the PDF is encrypted with a password; upload it without one")
        pages = len(reader.pages)
        if pages > max_pages:
            raise Unreadable(f"the PDF has {pages} pages; at most {max_pages} are read")
        return "\n\n".join((page.extract_text() or "").strip() for page in reader.pages)
    except (PyPdfError, ValueError, KeyError, TypeError) as exc:
        raise Unreadable(f"the file could not be read as a PDF ({type(exc).__name__})") from None


def docx_text(data: bytes) -> str:
    import docx
    from docx.opc.exceptions import PackageNotFoundError

    try:
        document = docx.Document(io.BytesIO(data))
    except (PackageNotFoundError, zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise Unreadable(
            f"the file could not be read as a Word document ({type(exc).__name__}); "
            "PDF, .docx and UTF-8 text are accepted"
        ) from None
    parts = [paragraph.text for paragraph in document.paragraphs]
    for table in document.tables:
        for row in table.rows:
            parts.append(" | ".join(cell.text for cell in row.cells))
    return "\n".join(part for part in parts if part.strip())


def text_of(data: bytes, kind: str, *, max_pages: int) -> str:
    """The file's text (in this process: the child's side), without NUL characters."""
    if kind == PDF:
        text = pdf_text(data, max_pages=max_pages)
    elif kind == DOCX:
        text = docx_text(data)
    else:
        raise Unreadable(f"no reader for {kind}")
    return text.replace("\x00", "")


async def extracted_text(
    data: bytes, kind: str, *, timeout_s: float, max_pages: int, memory_bytes: int
) -> str:
    """The file's text, read by a child process that is killed at ``timeout_s`` and may use
    ``memory_bytes`` of address space."""
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tenantry_auth.extract",
        kind,
        str(max_pages),
        str(memory_bytes),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        out, _ = await asyncio.wait_for(child.communicate(data), timeout_s)
    except TimeoutError:
        child.kill()
        await child.wait()
        raise Unreadable(f"reading the file took longer than {timeout_s:g} s") from None
    try:
        answer: dict[str, Any] = json.loads(out)
    except ValueError:
        answer = {}
    if "text" in answer:
        return str(answer["text"])
    raise Unreadable(str(answer.get("error") or "the file could not be read (its reader failed)"))


def main() -> None:
    import resource

    kind, max_pages, memory_bytes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    data = sys.stdin.buffer.read()
    try:
        answer = {"text": text_of(data, kind, max_pages=max_pages)}
    except Unreadable as exc:
        answer = {"error": str(exc)}
    except MemoryError:
        answer = {"error": "reading the file needed more memory than it may use"}
    except RecursionError:
        answer = {"error": "the file is nested too deeply to be read"}
    sys.stdout.write(json.dumps(answer))


if __name__ == "__main__":
    main()
