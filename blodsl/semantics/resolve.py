"""Syntax tree -> checked program (blodsl.ir), or every problem found.

The driver of the semantic stage: it sorts a file into blocks, declares every
name, and hands each part to the module that checks it, all sharing one Scope:
the data block (data.py), the levels (levels.py), the run block (run.py), the
pipeline (pipeline.py) and the rules over the whole program (rules.py). It
never imports torch or user code.
"""

from __future__ import annotations

from pathlib import Path

from .. import ir
from ..syntax import ast
from ..syntax.diagnostics import BloError, Diagnostic, suggest
from ..syntax.source import Source, Span
from .blocks import BLOCKS, RUN_SETTINGS, TOP_SETTINGS
from .data import DataBlock
from .expressions import Expressions
from .levels import LevelBlock
from .pipeline import operator_chain, written_pipeline
from .rules import Facts, check_program
from .run import RunBlock
from .scope import Scope, Symbol

SKELETON = """data {
    train, val, test = digits(label_noise=0.4)
}
upper {
    var w = zeros(train.n)
    objective = cross_entropy(net(val.x), val.y)
    optimizer = Adam(lr=0.1)
}
lower {
    model net = Linear(train.features, train.classes)
    objective = mean(sigmoid(w) * cross_entropy(net(train.x), train.y, reduction="none"))
    optimizer = SGD(lr=0.1)
    steps = 10
}
hypergradient = RAD"""


def check(file: ast.File, source: Source, base_dir: Path | None = None) -> tuple[ir.Program, list[Diagnostic]]:
    """The checked program and its warnings, or BloError with every problem found."""
    scope = Scope(source, base_dir)
    program = _program(scope, file)
    problems = sorted(scope.problems, key=_position)
    if program is None or scope.has_errors():
        raise BloError(problems, source)
    return program, problems


def _position(d: Diagnostic):
    return (d.span.line, d.span.col) if d.span else (0, 0)


def _program(scope: Scope, file: ast.File) -> ir.Program | None:
    if not file.items:
        scope.error("the program is empty", Span.point(1, 1),
                     fix="a .blo program declares data, an upper and a lower level and a pipeline, "
                         "for example:\n" + SKELETON)
        return None
    blocks, top, imports = _sort(scope, file)
    expressions = Expressions(scope)
    datasets = DataBlock(scope).resolve(blocks.get("data"))
    levels = {kind: LevelBlock(scope, expressions, kind) for kind in ("upper", "lower") if kind in blocks}
    for kind, level in levels.items():
        level.declare(blocks[kind])
    for stmt in blocks["run"].body if "run" in blocks else []:
        if isinstance(stmt, ast.Declaration) and stmt.keyword == "metric":
            scope.declare(stmt.name, Symbol("metric", stmt.name.span))
    upper, lower = (levels[kind].resolve(blocks[kind]) if kind in levels else None for kind in ("upper", "lower"))
    written = written_pipeline(scope, top["hypergradient"].value) if "hypergradient" in top else None
    run = RunBlock(scope, expressions).resolve(blocks.get("run"))
    if None in (upper, lower, written, run) or scope.has_errors():
        return None
    upper = levels["upper"].follow_run(upper, run)
    if upper is None:
        return None
    lower = check_program(scope, Facts(upper, lower, written, blocks, datasets))
    chain = operator_chain(written, lower, top["hypergradient"].span.line)
    return ir.Program(path=scope.source.path, imports=imports, datasets=datasets, upper=upper, lower=lower,
                      hypergradient=chain, run=run)


def _sort(scope: Scope, prog: ast.File):
    """The blocks, top-level settings and imports of a file, each checked for place and repetition."""
    blocks: dict[str, ast.Block] = {}
    top: dict[str, ast.Setting] = {}
    imports: dict[str, str] = {}
    for item in prog.items:
        match item:
            case ast.Import():
                _import(scope, item, imports)
            case ast.Block(kind=kind):
                if kind.text not in BLOCKS:
                    scope.error(f"unknown block '{kind.text}'", kind.span,
                                fix=suggest(kind.text, BLOCKS) or "blocks are: " + ", ".join(BLOCKS))
                    scope.misspelt |= {("top", b) for b in BLOCKS if suggest(kind.text, [b])}
                    for stmt in item.body:
                        for name in _declared_names(stmt):
                            scope.declare_broken(name)
                elif kind.text in blocks:
                    scope.error(f"a second '{kind.text}' block", kind.span,
                                notes=[(blocks[kind.text].kind.span, "the first is here")],
                                fix="merge them into one block")
                else:
                    blocks[kind.text] = item
            case ast.Setting(key=key):
                if key.text not in TOP_SETTINGS:
                    fix = suggest(key.text, TOP_SETTINGS + RUN_SETTINGS + ("objective", "optimizer", "steps"))
                    scope.error(f"'{key.text}' cannot be set at the top level", key.span,
                                fix=(fix + " " if fix else "") + "Only the pipeline, `hypergradient = ...`, "
                                "stands outside a block.")
                elif key.text in top:
                    scope.error(f"'{key.text}' is set twice", key.span,
                                notes=[(top[key.text].key.span, "first set here")])
                else:
                    top[key.text] = item
            case ast.Declaration(keyword="metric"):
                scope.error("declarations belong inside a block", item.span, fix="move this into the run block")
            case ast.Declaration():
                scope.error("declarations belong inside a block", item.span,
                            fix="move this into the upper or lower block")
            case ast.Destructure():
                scope.error("declarations belong inside a block", item.span, fix="move this into the data block")

    missing_fix = {
        "upper": "add an upper block with the variables being learned, an objective and an optimizer",
        "lower": "add a lower block with a model, an objective, an optimizer and steps",
    }
    for kind in ("upper", "lower"):
        if kind not in blocks and ("top", kind) not in scope.misspelt:
            scope.error(f"the program has no {kind} block", Span.point(1, 1), fix=missing_fix[kind])
    if "hypergradient" not in top:
        scope.error("the program has no hypergradient pipeline", Span.point(1, 1),
                    fix="add a line such as `hypergradient = RAD` (or CG(k=10), PTT -> RAD, ...)")
    return blocks, top, imports


def _import(scope: Scope, item: ast.Import, imports: dict[str, str]):
    ref = item.ref.value
    module, _, attr = ref.partition(":")
    if not attr or not all(part.isidentifier() for part in module.split(".")) or not attr.isidentifier():
        scope.error(f"'{ref}' is not a reference of the form \"package.module:name\"", item.ref.span,
                    fix='write e.g. import "mypkg.losses:focal_loss" as focal_loss')
        return
    if scope.declare(item.alias, Symbol("import", item.alias.span, decl=ref)):
        imports[item.alias.text] = ref


def _declared_names(stmt) -> list[ast.Ident]:
    if isinstance(stmt, ast.Destructure):
        return stmt.names
    if isinstance(stmt, ast.Declaration):
        return [stmt.name]
    return [stmt.key] if isinstance(stmt, ast.Setting) else []
