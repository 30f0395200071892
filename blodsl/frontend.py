"""The front end as one straight line: file -> source -> AST -> checked IR."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from . import ir
from .semantics.resolve import check
from .syntax import ast
from .syntax.diagnostics import Diagnostic
from .syntax.parser import decode, parse
from .syntax.source import Source


@dataclass
class Checked:
    source: Source
    tree: ast.File
    program: ir.Program
    warnings: list[Diagnostic] = field(default_factory=list)


def read_source(path: str | Path) -> Source:
    """The file's text; OSError (missing, unreadable) is the caller's to report."""
    return decode(Path(path).read_bytes(), str(path))


def check_source(source: Source, base_dir: Path | None = None) -> Checked:
    """Parses and checks; raises BloError with every problem found."""
    tree = parse(source)
    program, warnings = check(tree, source, base_dir)
    return Checked(source, tree, program, warnings)


def check_file(path: str | Path) -> Checked:
    return check_source(read_source(path), Path(path).parent)
