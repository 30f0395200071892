"""Rules over the whole checked program: which level each objective depends
on, IAD's and GAFFO's matching structures, DM's single inner step, RGT's
truncation, DI's restart, and datasets never used.

They run once every part has resolved, over the scope they are given.
"""

from __future__ import annotations

from .. import ir
from ..syntax import ast
from .pipeline import WrittenOp
from .scope import Scope


class ProgramRules:
    def __init__(self, scope: Scope, written_pipeline: list[WrittenOp]):
        self.scope = scope
        self.written_pipeline = written_pipeline

    def whole_program(self, upper: ir.LevelDecl, lower: ir.LevelDecl, blocks, datasets) -> ir.LevelDecl:
        """Checks rules across levels and the pipeline; returns the lower level with its start settled."""
        settings = {s.key.text: s for s in blocks["lower"].body if isinstance(s, ast.Setting)}
        upper_settings = {s.key.text: s for s in blocks["upper"].body if isinstance(s, ast.Setting)}
        ops = {w.op.name: w for w in self.written_pipeline}
        lower_obj = ir.references(lower.objective.expr)
        upper_obj = ir.references(upper.objective.expr)
        lower_names = {d.name for d in lower.variables + lower.models}
        upper_names = {d.name for d in upper.variables + upper.models}

        if not lower_obj & {("lower", n) for n in lower_names}:
            self.scope.error("the lower objective does not depend on the lower level's variables",
                             settings["objective"].value.span,
                             fix=f"use {', '.join(sorted(lower_names))} in it, e.g. apply the model to data")
        if not upper_obj & {("lower", n) for n in lower_names}:
            self.scope.error("the upper objective does not depend on the lower level: this is not a bilevel problem",
                             upper_settings["objective"].value.span,
                             fix=f"evaluate the lower level's solution, e.g. {_example_apply(lower)}")
        start_from = lower.start.source if lower.start.mode == "from" else None
        for decl in upper.variables + upper.models:
            iad_reports_it = "IAD" in ops and start_from is None
            if ("upper", decl.name) not in lower_obj | upper_obj and decl.name != start_from and not iad_reports_it:
                span = self.scope.symbols[decl.name].span
                self.scope.error(f"upper-level '{decl.name}' is never used: its hypergradient would be identically zero",
                                 span, fix=f"use {decl.name} in the lower objective (or the upper one), or remove it")

        if "ALTO" in ops and not upper_obj & {("upper", n) for n in upper_names}:
            self.scope.error("ALTO's hypergradient is only the direct gradient of the upper objective, which does not "
                             "depend on the upper variables here: it would be identically zero", ops["ALTO"].span,
                             fix="use a pipeline that differentiates through the lower level, e.g. RAD or CG")

        if "IAD" in ops and start_from is None:
            self.scope.error("IAD learns the lower level's initial value, but the lower level does not start from an "
                             "upper-level model", ops["IAD"].span,
                             fix="add `start = from(meta)` to the lower block, naming the upper model it starts from")
        if start_from is not None:
            if "IAD" not in ops:
                self.scope.error("the lower level starts from an upper-level model, which only IAD differentiates",
                                 settings["start"].value.span,
                                 fix="add IAD to the pipeline, e.g. `hypergradient = IAD`, or use `start = warm`")
            else:
                self.same_structure(upper, lower, [start_from], settings["start"].value.span, "IAD")
        if "GAFFO" in ops:
            self.same_structure(upper, lower, sorted(upper_names), ops["GAFFO"].span, "GAFFO")

        if "DM" in ops and lower.steps != 1:
            self.scope.error(f"DM is a single-loop method and needs one inner step per outer step, not {lower.steps}",
                             settings["steps"].value.span, fix="set `steps = 1` in the lower block")
        if "RGT" in ops:
            truncate = ops["RGT"].args["truncate"]
            if truncate >= lower.steps:
                self.scope.error(f"RGT(truncate={truncate}) must truncate fewer than the {lower.steps} inner steps",
                                 ops["RGT"].arg_spans["truncate"],
                                 fix=f"choose truncate between 1 and {lower.steps - 1}, or raise steps")
        if "DI" in ops:
            if lower.start.line is not None and lower.start.mode == "warm":
                self.scope.error("DI learns the lower level's initial value; a warm start would discard it",
                                 settings["start"].value.span, fix="remove `start = warm` (DI starts from its learned value)")
            lower = lower.model_copy(update={"start": ir.Start(mode="reinit", line=lower.start.line)})

        implicit = [op for op in ("CG", "NS", "NYSTROM", "FD", "IGA") if op in ops]
        trajectory_only = {"FOA": "approximates the derivative through the inner trajectory",
                           "RGT": "truncates the differentiated inner trajectory",
                           "DI": "learns the start through the inner trajectory"}
        for op, what in trajectory_only.items():
            if implicit and op in ops:
                self.scope.error(f"{op} {what}, but {implicit[0]} differentiates at the lower solution without "
                                 f"going through the trajectory: {op} would change nothing", ops[op].span,
                                 fix=f"remove {op}, or end the pipeline with RAD" + (" (or nothing after IAD)" if op == "FOA" else ""))
        if implicit and not lower_obj & {("upper", n) for n in upper_names}:
            op = implicit[0]
            fix = ("for implicit MAML, anchor the learner to the meta-model, e.g. "
                   f"`+ 0.5 * sqdist({next(iter(lower_names))}, {start_from})`, or use `hypergradient = IAD`"
                   if start_from else "use the upper variables in the lower objective, or use RAD")
            self.scope.error(f"{op} differentiates the lower solution through the lower objective's dependence on the "
                             "upper variables; this lower objective uses none, so the hypergradient would be zero",
                             ops[op].span, fix=fix)

        task_sets = {ds.name for ds in datasets if ds.tasks}
        if task_sets & {name for _, name in lower_obj if _ == "data"} and "IAD" not in ops:
            self.scope.error("few-shot task batches are learned with IAD-based (meta-learning) pipelines",
                             self.written_pipeline[0].span, fix="use `hypergradient = IAD` (or FOA -> IAD, IAD -> CG)")
        return lower

    def same_structure(self, upper, lower, upper_names, span, op):
        decls = {d.name: d for d in upper.variables + upper.models}
        ups = [decls[n] for n in upper_names]
        downs = lower.variables + lower.models
        if len(ups) != len(downs) or any(_structure(u) != _structure(d) for u, d in zip(ups, downs)):
            up_text = ", ".join(f"{d.name} = {_structure_text(d)}" for d in ups)
            down_text = ", ".join(f"{d.name} = {_structure_text(d)}" for d in downs)
            self.scope.error(f"{op} needs upper and lower variables of identical structure: upper {up_text}; "
                             f"lower {down_text}", span, fix="declare the lower model exactly as the upper one")

    def unused(self, datasets):
        for ds in datasets:
            if ds.name not in self.scope.used:
                self.scope.warn(f"dataset '{ds.name}' is never used", self.scope.symbols[ds.name].span,
                                fix="use it in an objective or a metric, or remove it")



def _structure(decl):
    if isinstance(decl, ir.Model):
        return ("model", decl.spec)
    return ("var", tuple(decl.shape))


def _structure_text(decl) -> str:
    if isinstance(decl, ir.Model):
        return decl.spec.name + "(...)" if decl.spec.kind != "input" else "input()"
    return f"{decl.init}({', '.join(str(d) if isinstance(d, int) else f'{d.dataset}.{d.size}' for d in decl.shape)})"


def _example_apply(lower: ir.LevelDecl) -> str:
    if lower.models:
        return f"mse({lower.models[0].name}(val.x), val.y)"
    return f"a loss of {lower.variables[0].name} on validation data"


