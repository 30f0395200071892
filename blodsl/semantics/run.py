"""The run block: run settings, the baseline and the metrics."""

from __future__ import annotations

from .. import ir
from ..syntax import ast
from ..syntax.diagnostics import suggest
from ..catalogue.params import RUN, Param
from .blocks import RUN_SETTINGS
from .calls import checked_value
from .expressions import Expressions
from .scope import NO_VALUE, Scope


_GRID = Param("grid", list, words="a non-empty list of numbers")  # the values a baseline holds a variable at


class RunBlock:
    def __init__(self, scope: Scope, expressions: Expressions):
        self.scope = scope
        self.expressions = expressions

    def resolve(self, block: ast.Block | None) -> ir.Run | None:
        values = {key: row.default for key, row in RUN.items()}
        metrics: list[ir.Metric] = []
        seen: dict[str, ast.Setting] = {}
        ok = True
        for stmt in block.body if block else []:
            if isinstance(stmt, ast.Declaration) and stmt.keyword == "metric":
                m = self.metric(stmt)
                ok &= m is not None
                metrics += [m] if m else []
            elif isinstance(stmt, ast.Setting):
                key = stmt.key.text
                if key not in RUN_SETTINGS:
                    self.scope.error(f"unknown setting '{key}' in the run block", stmt.key.span,
                                     fix=suggest(key, RUN_SETTINGS) or "the run block sets: " + ", ".join(RUN_SETTINGS)
                                     + ", and declares `metric name = ...`")
                    ok = False
                    continue
                if key in seen:
                    self.scope.error(f"'{key}' is set twice", stmt.key.span, notes=[(seen[key].key.span, "first set here")])
                    ok = False
                    continue
                seen[key] = stmt
                if key == "baseline":
                    values["baseline"] = self.baseline(stmt.value)
                    ok &= values["baseline"] is not None
                    continue
                values[key] = checked_value(self.scope, RUN[key], stmt.value, key)
                ok &= values[key] is not NO_VALUE
            else:
                self.scope.error("the run block holds settings and `metric name = ...` declarations", stmt.span)
                ok = False
        if not ok:
            return None
        if values["eval_every"] is None:
            values["eval_every"] = max(1, values["outer_steps"] // 10)
        return ir.Run(metrics=metrics, **values)

    def baseline(self, e: ast.Expr) -> ir.Baseline | None:
        """`initial`, or `grid(var=[v, ...])`: the lower level trained with the upper one held fixed."""
        usage = "write `baseline = initial` or `baseline = grid(name=[value, ...])` with an upper variable"
        if isinstance(e, ast.Name) and e.id == "initial":
            return ir.Baseline()
        if not (isinstance(e, ast.Call) and isinstance(e.func, ast.Name) and e.func.id == "grid"
                and not e.args and e.kwargs):
            self.scope.error("a baseline is the upper level held at its initial values or at each value of a grid",
                             e.span, fix=usage)
            return None
        grid = {}
        for kw in e.kwargs:
            sym = self.scope.symbols.get(kw.name.text)
            if sym is None or sym.kind != "var" or sym.level != "upper":
                self.scope.error(f"'{kw.name.text}' is not an upper-level variable", kw.name.span, fix=usage)
                return None
            values = checked_value(self.scope, _GRID, kw.value, f"the grid of {kw.name.text}")
            if values is NO_VALUE:
                return None
            grid[kw.name.text] = [float(x) for x in values]
        return ir.Baseline(grid=grid)

    def metric(self, stmt: ast.Declaration) -> ir.Metric | None:
        rebind = {}
        for r in stmt.rebinds:
            pair = [self.scope.symbols.get(r.name.text), self.scope.symbols.get(r.to.text)]
            for ident, sym in zip((r.name, r.to), pair):
                if sym is None or sym.kind != "dataset":
                    self.scope.error(f"'{ident.text}' is not a dataset; `with` swaps one dataset for another",
                                     ident.span, fix="write e.g. `with tasks = test_tasks`")
                    return None
            if pair[0].decl.tasks != pair[1].decl.tasks:
                self.scope.error(f"'{r.to.text}' and '{r.name.text}' are not the same kind of dataset", r.span)
                return None
            self.scope.used.add(r.to.text)
            rebind[r.name.text] = r.to.text
        resolved = self.expressions.expr(stmt.value, metric=True)
        if resolved is None:
            return None
        return ir.Metric(name=stmt.name.text, expr=resolved[0], text=self.scope.source.text_of(stmt.value.span),
                         rebind=rebind, line=stmt.span.line)
