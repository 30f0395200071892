"""Located messages: what went wrong, where, and how to fix it.

Every mistake in a .blo file reaches the user as

    prog.blo:12:24: error: unknown operator 'rad'
       12 | hypergradient = PTT -> rad
          |                        ^^^
      fix: did you mean 'RAD'? Operator names are upper case.

never as a Python traceback.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

from .source import Source, Span


@dataclass
class Diagnostic:
    message: str
    span: Span | None = None
    fix: str | None = None
    notes: list[tuple[Span, str]] = field(default_factory=list)
    severity: str = "error"


class BloError(Exception):
    """A program that is not valid: carries every diagnostic found."""

    def __init__(self, diagnostics: list[Diagnostic], source: Source):
        self.diagnostics = diagnostics
        self.source = source
        super().__init__(render_all(diagnostics, source))


def suggest(word: str | None, candidates, *, hint: str = "") -> str | None:
    """'did you mean ...?' for a misspelt name, or None when nothing is close."""
    if not word:
        return None
    candidates = list(candidates)
    exact_case = [c for c in candidates if c.lower() == word.lower()]
    close = exact_case or difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    if not close:
        return None
    return f"did you mean '{close[0]}'?" + (f" {hint}" if hint else "")


def possessive(name: str) -> str:
    """digits' split, CG's k."""
    return f"{name}'" if name.endswith("s") else f"{name}'s"


MAX_WIDTH = 120  # longer source lines are shown as a window around the caret


def _excerpt(source: Source, span: Span, gutter: int) -> list[str]:
    text = source.line(span.line).replace("\t", " ")
    end = span.end_col if span.end_line == span.line else len(text) + 1
    width = max(1, min(end, len(text) + 1) - span.col)
    caret = span.col - 1
    if len(text) > MAX_WIDTH:
        start = max(0, min(caret - MAX_WIDTH // 3, len(text) - MAX_WIDTH))
        prefix = "..." if start else ""
        suffix = "..." if start + MAX_WIDTH < len(text) else ""
        text = prefix + text[start:start + MAX_WIDTH] + suffix
        caret += len(prefix) - start
        width = max(1, min(width, len(text) - len(suffix) - caret))
    bar = " " * gutter
    return [
        f" {span.line:>{gutter}} | {text}",
        f" {bar} | {' ' * caret}{'^' * width}",
    ]


def _where(source: Source, span: Span) -> str:
    return f"{source.path}:{span.line}:{span.col}" + (f" ({span.origin})" if span.origin else "")


def render(diag: Diagnostic, source: Source) -> str:
    where = _where(source, diag.span) if diag.span else source.path
    out = [f"{where}: {diag.severity}: {diag.message}"]
    spans = [diag.span] + [s for s, _ in diag.notes]
    gutter = max((len(str(s.line)) for s in spans if s), default=1)
    if diag.span:
        out += _excerpt(source, diag.span, gutter)
    for span, note in diag.notes:
        out.append(f"{_where(source, span)}: note: {note}")
        out += _excerpt(source, span, gutter)
    if diag.fix:
        fix_lines = diag.fix.splitlines()
        out.append(f"  fix: {fix_lines[0]}")
        out += [f"       {rest}" for rest in fix_lines[1:]]
    return "\n".join(out)


def render_all(diagnostics: list[Diagnostic], source: Source) -> str:
    return "\n".join(render(d, source) for d in diagnostics)
