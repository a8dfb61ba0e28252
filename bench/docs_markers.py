"""Rewrite the generated part of a docs page: the text between a benchmark's two HTML-comment markers."""

from __future__ import annotations

from pathlib import Path


def replace_between_markers(doc: Path, start: str, end: str, body: str) -> None:
    """Put `body` between the `start` and `end` markers of `doc`, keeping the markers and everything else."""
    text = doc.read_text()
    if start not in text or end not in text:
        raise SystemExit(f"{doc}: markers {start} / {end} not found")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    doc.write_text(f"{head}{start}\n{body}\n{end}{tail}")
