"""`--set key=value`: changing a checked program from the command line.

Each key names one setting of the IR; the value is checked as the checker
would check it in a .blo file, and the rules that tie settings together
(RGT's truncate below the lower level's steps) are checked again.
"""

from __future__ import annotations

import ast as pyast

from .. import ir
from ..catalogue.builtins import INNER_OPTIMIZERS, TORCH_OPTIMIZERS
from ..catalogue.operators import BY_NAME, FromProgram

KEYS = ("lower.steps", "upper.optimizer.ARG", "lower.optimizer.ARG", "run.outer_steps", "run.eval_every",
        "run.seed", "OPERATOR.PARAM (e.g. CG.k)")


class OverrideError(Exception):
    pass


def parse_value(text: str):
    try:
        return pyast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _positive_int(key, v, low=1):
    if not isinstance(v, int) or isinstance(v, bool) or v < low:
        raise OverrideError(f"{key} must be an integer >= {low}, not {v!r}")
    return v


def apply(program: ir.Program, assignments: list[str]) -> ir.Program:
    for item in assignments:
        key, eq, text = item.partition("=")
        if not eq or not key:
            raise OverrideError(f"--set takes key=value, not {item!r}")
        program = _apply_one(program, key.strip(), parse_value(text.strip()))
    for op in program.hypergradient.operators:
        for name in BY_NAME[op.name].bounded_by_steps:
            if not 0 < op.params[name] < program.lower.steps:
                raise OverrideError(f"{op.name}'s {name} ({op.params[name]}) must stay below lower.steps "
                                    f"({program.lower.steps})")
    return program


def _apply_one(p: ir.Program, key: str, v) -> ir.Program:
    parts = key.split(".")
    if key == "lower.steps":
        changed = p.model_copy(update={"lower": p.lower.model_copy(update={"steps": _positive_int(key, v)})})
        return _follow_defaults(changed, "steps", p.lower.steps, v)
    if parts[0] in ("upper", "lower") and len(parts) == 3 and parts[1] == "optimizer":
        level = getattr(p, parts[0])
        name = level.optimizer.name
        allowed = INNER_OPTIMIZERS[name] if parts[0] == "lower" else TORCH_OPTIMIZERS[name]
        if parts[2] not in allowed:
            raise OverrideError(f"{key}: {'the inner ' if parts[0] == 'lower' else ''}{name} has no argument "
                                f"'{parts[2]}'; it has " + ", ".join(allowed))
        problem = allowed[parts[2]].problem(v)
        if problem:
            raise OverrideError(f"{key} {problem}, not {v!r}")
        opt = level.optimizer.model_copy(update={"args": {**level.optimizer.args, parts[2]: v}})
        changed = p.model_copy(update={parts[0]: level.model_copy(update={"optimizer": opt})})
        if parts[0] == "lower" and parts[2] == "lr":
            changed = _follow_defaults(changed, "inner_lr", level.optimizer.args["lr"], v)
        return changed
    if parts[0] == "run" and len(parts) == 2 and parts[1] in ("outer_steps", "eval_every", "seed"):
        v = _positive_int(key, v, low=0 if parts[1] == "seed" else 1)
        return p.model_copy(update={"run": p.run.model_copy(update={parts[1]: v})})
    if len(parts) == 2 and parts[0] in BY_NAME:
        ops = list(p.hypergradient.operators)
        found = [i for i, op in enumerate(ops) if op.name == parts[0]]
        if not found:
            raise OverrideError(f"{key}: the pipeline `{p.hypergradient.text}` has no {parts[0]}")
        param = next((q for q in BY_NAME[parts[0]].params if q.name == parts[1]), None)
        if param is None:
            names = ", ".join(q.name for q in BY_NAME[parts[0]].params) or "none"
            raise OverrideError(f"{key}: {parts[0]} has no parameter '{parts[1]}' (it has: {names})")
        problem = param.problem(v)
        if problem:
            raise OverrideError(f"{key} {problem}, not {v!r}")
        i = found[0]
        ops[i] = ops[i].model_copy(update={"params": {**ops[i].params, parts[1]: v}})
        return p.model_copy(update={"hypergradient": p.hypergradient.model_copy(update={"operators": ops})})
    raise OverrideError(f"unknown setting '{key}'; --set accepts " + ", ".join(KEYS))


def _follow_defaults(p: ir.Program, what: str, old, new) -> ir.Program:
    """Operator parameters that default to the inner lr or steps follow a change to it,
    unless the program set them (a value other than the old default)."""
    ops = []
    for op in p.hypergradient.operators:
        params = dict(op.params)
        for q in BY_NAME[op.name].params:
            if isinstance(q.default, FromProgram) and q.default.what == what and params.get(q.name) == old:
                params[q.name] = new
        ops.append(op.model_copy(update={"params": params}))
    return p.model_copy(update={"hypergradient": p.hypergradient.model_copy(update={"operators": ops})})
