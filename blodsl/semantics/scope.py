"""What the resolver's parts share, passed to each of them: the source, every
declared name, the names used so far, and the problems found."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..catalogue.builtins import builtin_kind
from ..syntax import ast
from ..syntax.diagnostics import Diagnostic
from ..syntax.source import Source, Span
from ..syntax.values import NotConstant, constant

NO_VALUE = object()  # a value that was wrong and has been reported: callers skip it


@dataclass
class Symbol:
    """What a declared name stands for."""
    kind: str                 # dataset, var, model, import, metric, or broken (declared wrongly)
    span: Span
    level: str | None = None  # for var and model
    decl: object = None       # ir.Dataset, ir.Variable, ir.Model, or the import's reference


@dataclass
class Scope:
    source: Source
    base_dir: Path | None = None  # where data files are looked for; None: not checked
    symbols: dict[str, Symbol] = field(default_factory=dict)
    used: set[str] = field(default_factory=set)
    problems: list[Diagnostic] = field(default_factory=list)
    misspelt: set[tuple[str, str]] = field(default_factory=set)  # (block, key) a misspelling was taken for

    def error(self, message: str, span: Span | None, fix: str | None = None, notes=()):
        self.problems.append(Diagnostic(message, span, fix=fix, notes=list(notes)))

    def warn(self, message: str, span: Span | None, fix: str | None = None):
        self.problems.append(Diagnostic(message, span, fix=fix, severity="warning"))

    def has_errors(self) -> bool:
        return any(d.severity == "error" for d in self.problems)

    def const(self, expr: ast.Expr, what: str, words: bool = False):
        """The constant `expr` stands for, or NO_VALUE (reported) when it is not one."""
        try:
            return constant(expr, what=what, words=words)
        except NotConstant as e:
            self.problems.append(e.diagnostic)
            return NO_VALUE

    def declare(self, name: ast.Ident, symbol: Symbol) -> bool:
        if name.text in self.symbols and self.symbols[name.text].kind == "broken":
            self.symbols[name.text] = symbol
            return True
        if name.text in self.symbols:
            first = self.symbols[name.text]
            self.error(f"'{name.text}' is already declared", name.span,
                       notes=[(first.span, "first declared here")], fix="give it another name")
            return False
        builtin = builtin_kind(name.text)
        if builtin:
            self.error(f"'{name.text}' is the name of a built-in {builtin}", name.span,
                       fix="choose another name")
            return False
        self.symbols[name.text] = symbol
        return True

    def declare_broken(self, name: ast.Ident):
        """A declaration already reported as wrong: its name exists, so uses raise no more errors."""
        self.symbols.setdefault(name.text, Symbol("broken", name.span))
