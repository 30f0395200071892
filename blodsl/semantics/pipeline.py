"""The pipeline checker: one NetworkX pass over the operator rows.

The rows (blodsl.catalogue.operators) become two graphs: `precedes`, whose edges say
which operator may directly follow which (from the stage order), and
`constraints`, whose edges carry the excludes/requires rules with their
reasons. A written pipeline is a path; it is valid when each of its edges is
in `precedes` and no constraint edge is broken. Nothing is reordered: a
pipeline in the wrong order is an error whose fix shows the canonical order.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import networkx as nx

from .. import ir
from ..catalogue.operators import BY_NAME, ORDER, TERMINALS, Operator
from ..catalogue.params import REQUIRED, AtRunTime, FromProgram
from ..syntax import ast
from ..syntax.diagnostics import Diagnostic, possessive, suggest
from ..syntax.source import Span
from .calls import checked_value
from .scope import NO_VALUE, Scope


@dataclass
class WrittenOp:
    """An operator as the user wrote it, with its arguments checked."""
    op: Operator
    args: dict[str, object]
    span: Span
    arg_spans: dict[str, Span]


@functools.lru_cache(maxsize=1)
def rule_graphs() -> tuple[nx.DiGraph, nx.MultiDiGraph]:
    precedes = nx.DiGraph()
    constraints = nx.MultiDiGraph()
    for op in BY_NAME.values():
        precedes.add_node(op.name, rank=op.rank)
        constraints.add_node(op.name)
    ranked = [op for op in BY_NAME.values() if op.rank is not None]
    for a in ranked:
        for b in ranked:
            if a.rank < b.rank:
                precedes.add_edge(a.name, b.name)
    for op in BY_NAME.values():
        for other, why in op.excludes.items():
            constraints.add_edge(op.name, other, kind="excludes", why=why)
        if op.requires:
            any_of, why = op.requires
            for other in any_of:
                constraints.add_edge(op.name, other, kind="requires", why=why, any_of=any_of)
    return precedes, constraints


def _op_text(name: str, args: dict) -> str:
    op = BY_NAME.get(name)
    quiet = {p.name for p in op.params if p.quiet and args.get(p.name) == _unwritten(p.default)} if op else set()
    args = {k: v for k, v in args.items() if k not in quiet}
    if not args:
        return name
    return f"{name}(" + ", ".join(f"{k}={_value_text(v)}" for k, v in args.items()) + ")"


def _value_text(v) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def written_pipeline(scope: Scope, expr: ast.Expr) -> list[WrittenOp] | None:
    """The operators as written, or None when a name, an argument or the composition is wrong."""
    before = len(scope.problems)
    items = expr.items if isinstance(expr, ast.Chain) else [expr]
    ops = [w for w in (_read_op(scope, item) for item in items) if w]
    if len(scope.problems) == before:
        scope.problems += check_composition(ops)
    return ops if len(scope.problems) == before else None


def _read_op(scope: Scope, item: ast.Expr) -> WrittenOp | None:
    """An operator's name and arguments; unknown names and bad arguments are reported."""
    match item:
        case ast.Name(id=name):
            args_ast, kwargs, name_span = [], [], item.span
        case ast.Call(func=ast.Name(id=name) as func, args=args_ast, kwargs=kwargs):
            name_span = func.span
        case _:
            scope.error("expected an operator name such as RAD or CG(k=10)", item.span,
                        fix="write the pipeline as operators joined by '->', e.g. `hypergradient = PTT -> RAD`")
            return None
    op = BY_NAME.get(name)
    if op is None:
        hint = "Operator names are upper case." if name.upper() in BY_NAME else ""
        scope.error(f"unknown operator '{name}'", name_span,
                    fix=suggest(name, BY_NAME, hint=hint) or "known operators: " + ", ".join(BY_NAME))
        return None
    for a in args_ast:
        example = f"{name}({op.params[0].name}=...)" if op.params else name
        scope.error(f"{name} takes keyword arguments only", a.span,
                    fix=f"name the parameter, e.g. {example}" if op.params else f"{name} takes no parameters; write {name}")
    args, spans = {}, {}
    for kw in kwargs:
        key = kw.name.text
        param = op.param(key)
        if param is None:
            names = [p.name for p in op.params]
            scope.error(f"{name} has no parameter '{key}'", kw.name.span,
                        fix=suggest(key, names) or (f"{name} takes: {', '.join(names)}" if names
                                                    else f"{name} takes no parameters"))
        elif key in spans:
            scope.error(f"parameter '{key}' is given twice", kw.name.span)
        else:
            spans[key] = kw.value.span
            value = checked_value(scope, param, kw.value, f"{possessive(name)} {key}")
            if value is not NO_VALUE:
                args[key] = value
    for param in op.params:
        if param.default is REQUIRED and param.name not in spans:
            scope.error(f"{name} needs its parameter '{param.name}'", item.span,
                        fix=f"write {name}({param.name}=...), {param.name} being {param.describe()}")
    ordered = {p.name: args[p.name] for p in op.params if p.name in args}
    return WrittenOp(op, ordered, item.span, spans)


def check_composition(ops: list[WrittenOp]) -> list[Diagnostic]:
    """The order and the excludes/requires rules of the rows, each violation with its own message."""
    if not ops:
        return []
    precedes, constraints = rule_graphs()
    names = [w.op.name for w in ops]
    problems: list[Diagnostic] = []

    whole = [w for w in ops if w.op.whole_pipeline]
    if whole and len(ops) > 1:
        lead = whole[0]
        for w in ops:
            if w is not lead:
                problems.append(Diagnostic(
                    f"{lead.op.name} is a first-order method and is the whole pipeline; "
                    f"{w.op.name} cannot be combined with it", w.span,
                    fix=f"write `hypergradient = {lead.op.name}` alone, or drop {lead.op.name}"))
        return problems

    seen: dict[str, WrittenOp] = {}
    for w in ops:
        if w.op.name in seen:
            problems.append(Diagnostic(f"{w.op.name} appears twice in the pipeline", w.span,
                                       notes=[(seen[w.op.name].span, "first written here")],
                                       fix="keep one"))
        seen.setdefault(w.op.name, w)
    by_rank: dict[int, WrittenOp] = {}
    for w in seen.values():
        other = by_rank.get(w.op.rank)
        if other:
            kind = "terminal operators; a pipeline ends in exactly one" if w.op.terminal \
                else f"{w.op.stage}s; a pipeline has at most one"
            problems.append(Diagnostic(f"{other.op.name} and {w.op.name} are both {kind}", w.span,
                                       notes=[(other.span, f"{other.op.name} is here")],
                                       fix=f"keep either {other.op.name} or {w.op.name}"))
        by_rank.setdefault(w.op.rank, w)
    if problems:
        return problems

    in_order = True
    for a, b in zip(ops, ops[1:]):
        if not precedes.has_edge(a.op.name, b.op.name):
            in_order = False
            ordered = list(nx.lexicographical_topological_sort(
                precedes.subgraph(names), key=lambda n: precedes.nodes[n]["rank"]))
            fixed = " -> ".join(_op_text(n, seen[n].args) for n in ordered)
            problems.append(Diagnostic(
                f"{b.op.name} cannot come after {a.op.name}: operators are written in the order {ORDER}", b.span,
                fix=f"write `hypergradient = {fixed}`"))
            break

    last = ops[-1]
    if not in_order:
        pass  # the fix above already shows where each operator goes
    elif last.op.needs_successor:
        problems.append(Diagnostic(
            f"{last.op.name} modifies what the next operator differentiates, so it cannot end the pipeline",
            last.span, fix=f"end with a hypergradient operator, e.g. `... -> {last.op.name} -> RAD`"))
    elif not last.op.terminal and not last.op.whole_pipeline:
        problems.append(Diagnostic(
            "the pipeline has no hypergradient operator", last.span,
            fix=f"end it with one of {', '.join(TERMINALS)}, e.g. `{last.op.name} -> RAD`"))

    for w in ops:
        for _, other, rule in constraints.out_edges(w.op.name, data=True):
            if rule["kind"] == "excludes" and other in seen:
                later = max(w, seen[other], key=lambda x: ops.index(x))
                earlier = seen[other] if later is w else w
                problems.append(Diagnostic(
                    f"{w.op.name} and {other} cannot be combined: {rule['why']}", later.span,
                    notes=[(earlier.span, f"{earlier.op.name} is here")],
                    fix=f"remove {later.op.name} or {earlier.op.name}"))
        if w.op.requires and not (w.op.requires[0] & seen.keys()):
            any_of, why = w.op.requires
            if any_of <= set(TERMINALS) and not any(s.op.terminal for s in ops):
                continue  # already reported: the pipeline has no hypergradient operator
            options = " or ".join(sorted(any_of))
            problems.append(Diagnostic(f"{w.op.name} needs {options} in the pipeline: {why}", w.span,
                                       fix=f"add {options}" if len(any_of) == 1
                                       else f"use {options} as the hypergradient operator"))
    return problems


def operator_chain(written: list[WrittenOp], lower: ir.LevelDecl, line: int) -> ir.OperatorChain:
    """The pipeline as the IR holds it: implied operators added, every parameter
    explicit, defaults that follow the program (the inner lr, the steps) filled in."""
    rows = [w.op for w in written]
    for row in BY_NAME.values():
        if row.implied and not any(r.stage == row.stage or r.whole_pipeline for r in rows):
            at = next((i for i, r in enumerate(rows) if (r.rank or 0) > row.rank), len(rows))
            rows.insert(at, row)
    uses = []
    for row in rows:
        w = next((w for w in written if w.op is row), None)
        params = {}
        for p in row.params:
            value = w.args.get(p.name, p.default) if w else p.default
            params[p.name] = _from_program(value, lower) if isinstance(value, FromProgram) else _unwritten(value)
        uses.append(ir.OperatorUse(name=row.name, stage=row.stage, params=params, implied=w is None,
                                   line=w.span.line if w else line))
    text = " -> ".join(_op_text(u.name, u.params) for u in uses)
    return ir.OperatorChain(operators=uses, text=text, line=line)


def _from_program(default: FromProgram, lower: ir.LevelDecl):
    return lower.optimizer.args["lr"] if default.what == "inner_lr" else lower.steps


def _unwritten(default):
    """What the IR holds for a parameter left at `default`: None where only the runtime knows it."""
    return None if isinstance(default, AtRunTime) else default
