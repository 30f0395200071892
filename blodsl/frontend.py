"""The front end as one straight line: file -> source -> AST (-> settings applied) -> checked IR."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from . import ir
from .semantics import settings as command_line
from .semantics.resolve import check
from .syntax import ast
from .syntax.diagnostics import BloError, Diagnostic
from .syntax.parser import decode, parse
from .syntax.source import Source


@dataclass
class Checked:
    source: Source
    tree: ast.File          # with the settings applied
    program: ir.Program
    warnings: list[Diagnostic] = field(default_factory=list)


def read_source(path: str | Path) -> Source:
    """The file's text; OSError (missing, unreadable) is the caller's to report."""
    return decode(Path(path).read_bytes(), str(path))


def check_source(source: Source, base_dir: Path | None = None, settings=None) -> Checked:
    """Parses, applies `settings` ("KEY=VALUE" strings or a dict, as `--set`) and checks.

    Raises BloError with every problem found (of the program as written, when it is invalid
    without the settings too), SettingsRejected when it checks without them, and BadSetting
    for a setting that names nothing to set."""
    written = parse(source)
    given = command_line.overrides(settings)
    tree, placed = command_line.apply(written, given)
    try:
        program, warnings = check(tree, source, base_dir)
    except BloError as e:
        if given:
            check(written, source, base_dir)  # an invalid program is reported as written
            raise command_line.rejected(e, placed) from None
        raise
    return Checked(source, tree, program, warnings)


def check_file(path: str | Path, settings=None) -> Checked:
    return check_source(read_source(path), Path(path).parent, settings)
