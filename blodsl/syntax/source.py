"""Source text and positions in it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Span:
    """1-based line and column of the first character; end_col is one past the last."""
    line: int
    col: int
    end_line: int
    end_col: int
    origin: str | None = None  # what put a node there when the file did not: "--set lower.steps=5"

    @staticmethod
    def point(line: int, col: int) -> "Span":
        return Span(line, col, line, col + 1)


@dataclass
class Source:
    path: str
    text: str

    def line(self, number: int) -> str:
        # Only '\n' ends a line, as for the parser (str.splitlines also splits on form feeds).
        lines = self.text.split("\n")
        return lines[number - 1].removesuffix("\r") if 0 < number <= len(lines) else ""

    def text_of(self, span: Span) -> str:
        """The text under `span`, its lines joined by spaces; for a value from `--set KEY=VALUE`, VALUE."""
        if span.origin:
            return span.origin.partition("=")[2]
        lines = self.text.split("\n")[span.line - 1: span.end_line]
        if not lines:
            return ""
        if len(lines) == 1:
            return lines[0][span.col - 1: span.end_col - 1]
        lines[0], lines[-1] = lines[0][span.col - 1:], lines[-1][: span.end_col - 1]
        return " ".join(part.strip() for part in lines)
