"""`blodsl operators [NAME]`: the operators' cheat sheet, written from the catalogue rows the
checker composes its rules from, so that it says what the checker enforces.

Each row attribute has one sentence here (the rules in semantics/pipeline.py and
semantics/rules.py say the same as errors and warnings); the operator names and the reasons
come from the rows.
"""

from __future__ import annotations

import sys

from ..catalogue import operators as catalogue
from ..catalogue.params import REQUIRED, Param
from ..syntax.diagnostics import Diagnostic, render, suggest
from ..syntax.source import Source, Span

SUMMARY_COLUMN = 36   # where an operator's summary starts in the overview


def default_text(param: Param) -> str:
    """A parameter's default as the cheat sheet and the editor show it."""
    if param.default is REQUIRED:
        return "required"
    if isinstance(param.default, float):
        return f"{param.default:g}"
    return str(param.default)


def signature(op: catalogue.Operator) -> str:
    """`CG(k=10, tol=1e-10)`; a parameter without a fixed default shows its name alone."""
    if not op.params:
        return op.name
    shown = [p.name if p.default is REQUIRED or not isinstance(p.default, (int, float, str, bool))
             else f"{p.name}={default_text(p)}" for p in op.params]
    return f"{op.name}({', '.join(shown)})"


def _names(ops, joined: str = "or") -> str:
    names = [op if isinstance(op, str) else op.name for op in ops]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} {joined} {names[-1]}"


def _stages() -> list[tuple[str, list[catalogue.Operator]]]:
    stages: dict[str, list[catalogue.Operator]] = {}
    for op in sorted(catalogue.CATALOGUE, key=lambda op: (op.rank is None, op.rank or 0)):
        stages.setdefault(op.stage, []).append(op)
    return list(stages.items())


def _stage_note(ops: list[catalogue.Operator]) -> str:
    if ops[0].whole_pipeline:
        return "each alone is the whole pipeline"
    if all(op.terminal for op in ops) and len(ops) > 1:
        return "exactly one ends the pipeline"
    implied = [op.name for op in ops if op.implied]
    ranks = {op.rank for op in ops}
    notes = ["at most one" if len(ranks) == 1 and len(ops) > 1 else "each at most once"]
    if implied:
        notes.append(f"{_names(implied)} when none is written")
    return ", ".join(notes)


def overview() -> str:
    lines = [f"The hypergradient pipeline: operators joined by '->', written in the order {catalogue.ORDER}; "
             "or one first-order method alone.",
             "`blodsl operators NAME` shows an operator's maths, parameters, paper and rules."]
    for stage, ops in _stages():
        lines += ["", f"{stage}s: {_stage_note(ops)}"]
        for op in ops:
            head = f"  {signature(op)}"
            if len(head) + 2 > SUMMARY_COLUMN:
                lines += [head, " " * SUMMARY_COLUMN + op.summary]
            else:
                lines.append(head.ljust(SUMMARY_COLUMN) + op.summary)
    return "\n".join(lines)


def card(op: catalogue.Operator) -> str:
    """Everything the catalogue says of one operator."""
    lines = [f"{op.name}: {op.summary}", f"  stage     {op.stage}"]
    if op.maths:
        lines.append(f"  computes  {op.maths}")
    if op.paper:
        lines.append(f"  paper     {op.paper}")
    if op.params:
        width = max(len(p.name) for p in op.params)
        described = [p.describe() for p in op.params]
        column = max(len(d) for d in described)
        lines += ["", "parameters"]
        lines += [f"  {p.name:<{width}}  {d:<{column}}  default {default_text(p)}"
                  for p, d in zip(op.params, described)]
    lines += ["", "in a pipeline"] + [f"  - {rule}" for rule in rules(op)]
    return "\n".join(lines)


def rules(op: catalogue.Operator) -> list[str]:
    """One sentence per attribute of the row that constrains where and how the operator is used."""
    rows = catalogue.CATALOGUE
    out = _place(op, rows)
    if op.implied:
        out.append(f"in every pipeline that writes no {op.stage} and no first-order method")
    if op.needs_successor:
        out.append("cannot end the pipeline: it modifies what the next operator differentiates")
    elif op.terminal:
        out.append("may end the pipeline")
    reasons = {other: why for other, why in op.excludes.items()}
    reasons.update({other.name: other.excludes[op.name] for other in rows
                    if op.name in other.excludes and other.name not in reasons})
    out += [f"not with {other}: {why}" for other, why in reasons.items()]
    if op.requires:
        any_of, why = op.requires
        out.append(f"needs {_names(sorted(any_of))} in the pipeline: {why}")
    out += [f"{other.name} needs it (or {_names(sorted(other.requires[0] - {op.name}))}): {other.requires[1]}"
            if len(other.requires[0]) > 1 else f"{other.name} needs it: {other.requires[1]}"
            for other in rows if other.requires and op.name in other.requires[0]]
    out += [f"beside it, {other}'s parameters have no effect: {why}" for other, why in op.overrides.items()]
    out += [f"beside {other.name} its parameters have no effect: {other.overrides[op.name]}"
            for other in rows if op.name in other.overrides]
    out += [f"its {param} has no effect without {other}" for param, other in op.needs_for.items()]
    out += [f"its {low} may not exceed its {high}" for low, high in op.ordered]
    out += _differentiation(op, rows) + _lower_level(op, rows)
    return out


def _place(op: catalogue.Operator, rows) -> list[str]:
    if op.whole_pipeline:
        return ["is the whole pipeline: written alone, combined with no other operator"]
    before = [o.name for o in rows if o.rank is not None and o.rank < op.rank]
    after = [o.name for o in rows if o.rank is not None and o.rank > op.rank]
    rivals = [o.name for o in rows if o.rank == op.rank and o is not op]
    place = "written " + " and ".join(filter(None, [f"after any of {_names(before)}" if before else "",
                                                     f"before any of {_names(after)}" if after else ""]))
    out = [place]
    if rivals:
        out.append(f"not with {_names(rivals, 'and')}: a pipeline has one {op.stage}")
    return out


def _differentiation(op: catalogue.Operator, rows) -> list[str]:
    out = []
    acting = [o for o in rows if o.through_trajectory]
    at_solution = [o for o in rows if o.differentiates == "solution"]
    if op.differentiates == "trajectory":
        out.append("differentiates back through the inner steps")
    elif op.differentiates == "solution":
        out.append("differentiates at the lower solution, through the lower objective's dependence on the upper "
                   f"variables: the lower objective must read one; {_names(acting)} would change nothing before it")
    if op.through_trajectory:
        out.append(f"{op.through_trajectory}: before {_names(at_solution)}, which differentiate at the lower "
                   "solution, it would change nothing")
    if op.cuts_start:
        restarting = [o for o in rows if o.restarts_lower]
        learning = [o for o in rows if o.learns_start]
        out.append(f"cuts the differentiated trajectory off from the lower level's start: not with "
                   f"{_names(restarting)} before a trajectory terminal, and beside {_names(learning)} the lower "
                   "objective must read the start")
    if op.sees_settings is not None:
        seen = f" but {_names(sorted(op.sees_settings))}" if op.sees_settings else ""
        out.append(f"learns no inner-optimiser setting{seen} (`SGD(lr=exp(log_lr))`): it "
                   + op.settings_blind.format(key="settings"))
    elif op.differentiates == "trajectory":
        out.append("learns inner-optimiser settings written from upper variables (`SGD(lr=exp(log_lr))`, "
                   "`SGD(lr=lrs)` per weight) through the steps they make")
    if op.direct_only:
        out.append("gives the upper variables (but a learned start) only the direct gradient of the upper objective: "
                   "the upper objective must read each of them")
    return out


def _lower_level(op: catalogue.Operator, rows) -> list[str]:
    out = []
    if op.learns_start:
        out.append("learns the lower level's start: needs `start = from(meta)`, meta an upper-level model of the "
                   "lower level's structure")
    if op.task_batches:
        out.append("learns from few-shot task batches (`sinusoid`), which only "
                   f"{_names([o for o in rows if o.task_batches])} learn")
    if op.restarts_lower:
        out.append("restarts the lower level from the value it learns each outer step: a written `start = warm` or "
                   "`start = reinit` is an error")
    if op.keeps_lower:
        out.append("moves the lower level on from where it stands: `start = reinit` is an error")
    if op.one_inner_step:
        out.append("a single-loop method: the lower level's `steps` must be 1")
    out += [f"its {param} must {verb} fewer than the lower level's steps" for param, verb in op.bounded_by_steps.items()]
    if not op.uses_steps:
        out.append("takes one lower step per outer step: `steps` other than 1 has no effect (a warning)")
    if op.inner_optimizer == "lr":
        out.append("moves the lower variables by plain gradient steps at the inner optimiser's lr: its other "
                   "arguments, or Adam, have no effect (warnings)")
    if op.optimizer_steps != "steps":
        out.append(f"its {op.optimizer_steps} counts the inner optimiser's steps per outer step")
    return out


def operators_main(name: str | None) -> int:
    """`blodsl operators [NAME]`: 0, or 2 with a located message for a name the catalogue lacks."""
    if name is None:
        print(overview())
        return 0
    op = next((op for op in catalogue.CATALOGUE if op.name == name), None)
    if op is not None:
        print(card(op))
        return 0
    names = [op.name for op in catalogue.CATALOGUE]
    line = f"blodsl operators {name}"
    hint = "Operator names are upper case." if name.upper() in names else ""
    where = Span(1, len(line) - len(name) + 1, 1, len(line) + 1)
    fix = suggest(name, names, hint=hint) or "known operators: " + ", ".join(names)
    print(render(Diagnostic(f"unknown operator '{name}'", where, fix=fix), Source("command line", line)),
          file=sys.stderr)
    return 2
