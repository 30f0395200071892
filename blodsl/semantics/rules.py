"""Rules over the whole program, composed from the attributes of the operator rows.

Each rule is a function of one `Facts` view (the two levels, the operators as
written, the settings' places in the source) that reports to the scope; the
rules run once every part has resolved. None of them tests an operator's name:
what an operator means to a rule is an attribute of its row.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .. import ir
from ..catalogue.builtins import DECOUPLED_DECAY
from ..catalogue.operators import TERMINAL, Operator, rows_with
from ..syntax import ast
from ..syntax.source import Span
from .pipeline import WrittenOp
from .scope import Scope


@dataclass
class Facts:
    """What the rules read: the resolved levels, the operators as written, and where each setting is."""
    upper: ir.LevelDecl
    lower: ir.LevelDecl
    ops: list[WrittenOp]
    blocks: dict[str, ast.Block]
    datasets: list[ir.Dataset]
    upper_reads: set = field(init=False)  # (level or 'data', name) the upper objective reads
    lower_reads: set = field(init=False)
    settings_reads: dict = field(init=False)  # learned inner-optimiser setting -> what it reads

    def __post_init__(self):
        self.upper_reads = ir.references(self.upper.objective.expr)
        self.lower_reads = ir.references(self.lower.objective.expr)
        self.settings_reads = {k: ir.references(s.expr) for k, s in self.lower.optimizer.learned.items()}

    @property
    def steps_read(self) -> set:
        """What the inner steps read: the lower objective and the learned optimiser settings."""
        return self.lower_reads.union(*self.settings_reads.values())

    def having(self, attribute: str) -> list[WrittenOp]:
        """The operators of the pipeline whose row has `attribute`, in the order written."""
        return [w for w in self.ops if getattr(w.op, attribute)]

    def setting(self, level: str, key: str) -> ast.Setting | None:
        return next((s for s in self.blocks[level].body if isinstance(s, ast.Setting) and s.key.text == key), None)

    def at(self, level: str, key: str) -> Span:
        return self.setting(level, key).value.span

    @property
    def start_from(self) -> str | None:
        return self.lower.start.source if self.lower.start.mode == "from" else None

    def reads(self, reads: set, level: str) -> bool:
        """Whether an objective (its `reads`) uses a variable or model of `level`."""
        decl = self.upper if level == "upper" else self.lower
        return any((level, d.name) in reads for d in decl.variables + decl.models)

    @property
    def solution_terminal(self) -> WrittenOp | None:
        return next((w for w in self.ops if w.op.differentiates == "solution"), None)


def check_program(scope: Scope, program: Facts) -> ir.LevelDecl:
    """Every rule; returns the lower level with its start settled by the pipeline."""
    for rule in RULES:
        rule(scope, program)
    if program.having("restarts_lower"):
        return program.lower.model_copy(update={"start": ir.Start(mode="learned", line=program.lower.start.line)})
    return program.lower


# --- what the objectives depend on ------------------------------------------------------

def lower_objective_reads_lower(scope: Scope, p: Facts):
    if not p.reads(p.lower_reads, "lower"):
        names = sorted(d.name for d in p.lower.variables + p.lower.models)
        scope.error("the lower objective does not depend on the lower level's variables", p.at("lower", "objective"),
                    fix=f"use {', '.join(names)} in it, e.g. apply the model to data")


def upper_objective_reads_lower(scope: Scope, p: Facts):
    if not p.reads(p.upper_reads, "lower"):
        scope.error("the upper objective does not depend on the lower level: this is not a bilevel problem",
                    p.at("upper", "objective"), fix=f"evaluate the lower level's solution, e.g. {_example_apply(p.lower)}")


def upper_variables_used(scope: Scope, p: Facts):
    if p.having("learns_start") and p.start_from is None:
        return  # reported as the missing start
    for decl in p.upper.variables + p.upper.models:
        if ("upper", decl.name) not in p.steps_read | p.upper_reads and decl.name != p.start_from:
            scope.error(f"upper-level '{decl.name}' is never used: its hypergradient would be identically zero",
                        scope.symbols[decl.name].span,
                        fix=f"use {decl.name} in the lower objective (or the upper one, or the inner optimiser's "
                            "settings), or remove it")


def direct_only(scope: Scope, p: Facts):
    """Upper variables that get only the direct gradient of the upper objective must be read by it."""
    for w in p.having("direct_only"):
        for decl in p.upper.variables + p.upper.models:
            if decl.name != p.start_from and ("upper", decl.name) not in p.upper_reads:
                scope.error(f"{w.op.name} gives upper-level '{decl.name}' only the direct gradient of the upper "
                            "objective, which does not read it: its hypergradient would be identically zero", w.span,
                            notes=[(scope.symbols[decl.name].span, f"{decl.name} is declared here")],
                            fix="use a pipeline that differentiates through the lower level, e.g. RAD or CG")


# --- how the lower level starts ------------------------------------------------------------

def learned_start(scope: Scope, p: Facts):
    """An operator that learns the start needs `start = from(x)`, from an x of the lower level's structure;
    `start = from(x)` needs such an operator."""
    learners = p.having("learns_start")
    if learners and p.start_from is None:
        scope.error(f"{learners[0].op.name} learns the lower level's initial value, but the lower level does not "
                    "start from an upper-level model", learners[0].span,
                    fix="add `start = from(meta)` to the lower block, naming the upper model it starts from")
    elif p.start_from is not None and not learners:
        names = [op.name for op in rows_with("learns_start")]
        scope.error(f"the lower level starts from an upper-level model, which only {' or '.join(names)} learns",
                    p.at("lower", "start"),
                    fix=f"learn the start with {' or '.join(names)}, e.g. `hypergradient = {names[0]}`, "
                        "or use `start = warm`")
    elif learners:
        _same_structure(scope, p, learners[0].op)


def _same_structure(scope: Scope, p: Facts, op: Operator):
    ups = [d for d in p.upper.variables + p.upper.models if d.name == p.start_from]
    downs = p.lower.variables + p.lower.models
    if len(ups) != len(downs) or any(_structure(u) != _structure(d) for u, d in zip(ups, downs)):
        up_text = ", ".join(f"{d.name} = {_structure_text(d)}" for d in ups)
        down_text = ", ".join(f"{d.name} = {_structure_text(d)}" for d in downs)
        scope.error(f"{op.name} needs upper and lower variables of identical structure: upper {up_text}; "
                    f"lower {down_text}", p.at("lower", "start"), fix="declare the lower model exactly as the upper one")


# why a written start cannot stand beside an operator that restarts the lower level from what it learns
_RESTART_OVERRIDES = {"warm": "a warm start would discard it",
                      "reinit": "each outer step starts from it, not from a reinitialisation"}


def restarted_lower(scope: Scope, p: Facts):
    written = p.setting("lower", "start")
    for w in p.having("restarts_lower"):
        if written is not None and p.lower.start.mode in _RESTART_OVERRIDES:
            mode = p.lower.start.mode
            scope.error(f"{w.op.name} learns the lower level's initial value; {_RESTART_OVERRIDES[mode]}",
                        written.value.span, fix=f"remove `start = {mode}` ({w.op.name} starts from its learned value)")


def kept_lower(scope: Scope, p: Facts):
    """A method that moves the lower level on from where it stands cannot restart it every outer step."""
    written = p.setting("lower", "start")
    for w in p.having("keeps_lower"):
        if written is not None and p.lower.start.mode == "reinit":
            scope.error(f"{w.op.name} moves the lower level on from where it stands each outer step (with any "
                        "variables of its own): `start = reinit` would throw that away", written.value.span,
                        fix="remove `start = reinit`")


# --- the lower level's steps -------------------------------------------------------------------

def one_inner_step(scope: Scope, p: Facts):
    for w in p.having("one_inner_step"):
        if p.lower.steps != 1:
            scope.error(f"{w.op.name} is a single-loop method and needs one inner step per outer step, "
                        f"not {p.lower.steps}", p.at("lower", "steps"), fix="set `steps = 1` in the lower block")


def bounded_by_steps(scope: Scope, p: Facts):
    steps = p.lower.steps
    for w in p.having("bounded_by_steps"):
        for name, verb in w.op.bounded_by_steps.items():
            value = w.args[name]
            if value >= steps:
                scope.error(f"{w.op.name}({name}={value}) must {verb} fewer than the {steps} inner steps",
                            w.arg_spans[name], fix=f"choose {name} between 1 and {steps - 1}, or raise steps"
                            if steps > 1 else f"raise steps: {w.op.name} needs at least 2")


# --- what the pipeline differentiates -------------------------------------------------------------

def through_trajectory(scope: Scope, p: Facts):
    """Operators that act through the differentiated trajectory change nothing when the
    terminal differentiates at the lower solution."""
    terminal = p.solution_terminal
    if terminal is None:
        return
    ends = " or ".join(op.name for op in rows_with("terminal") if op.stage == TERMINAL and op.differentiates == "trajectory")
    alone = [w.op.name for w in p.ops if w.op.terminal and w is not p.ops[-1]]  # it could end the pipeline itself
    for w in p.having("through_trajectory"):
        scope.error(f"{w.op.name} {w.op.through_trajectory}, but {terminal.op.name} differentiates at the lower "
                    f"solution without going through the trajectory: {w.op.name} would change nothing", w.span,
                    fix=f"remove {w.op.name}, or end the pipeline with {ends}"
                        + (f" (or nothing after {alone[0]})" if alone else ""))


def cut_start(scope: Scope, p: Facts):
    """Cut off from its start, the trajectory carries no derivative to a start that is
    learned (an identically zero step) or that is the only way x reaches the lower objective."""
    if p.solution_terminal is not None:
        return  # reported: operators acting through the trajectory change nothing there
    for cut in p.having("cuts_start"):
        what = f"{cut.op.name} cuts the differentiated trajectory off from the lower level's start"
        for w in p.having("restarts_lower"):
            scope.error(f"{what}, so the start {w.op.name} learns would never move", cut.span,
                        notes=[(w.span, f"{w.op.name} is here")], fix=f"remove {cut.op.name} or {w.op.name}")
        for w in p.having("learns_start"):
            if ("upper", p.start_from) not in p.lower_reads:
                scope.error(f"{what}, and the lower objective does not read {p.start_from}: the start is its only path "
                            "to the lower solution, so its hypergradient would be identically zero",
                            cut.span, notes=[(w.span, f"{w.op.name} is here")],
                            fix=f"remove {cut.op.name}, or use the upper variables in the lower objective, e.g. "
                                f"`+ 0.5 * sqdist({(p.lower.variables + p.lower.models)[0].name}, {p.start_from})`")


def solution_needs_upper_in_lower(scope: Scope, p: Facts):
    """At the lower solution, x acts only through the lower objective: a learned start must be read
    by it (implicit MAML), and otherwise some upper variable must."""
    terminal = p.solution_terminal
    if terminal is None:
        return
    why = f"{terminal.op.name} differentiates the lower solution through the lower objective's dependence on the upper "
    if p.start_from is not None and ("upper", p.start_from) not in p.lower_reads:
        learner = next(op.name for op in rows_with("learns_start") if op.terminal)
        scope.error(why + f"variables, and this lower objective does not read {p.start_from}, which the lower level "
                    "starts from: its hypergradient would be zero", terminal.span,
                    fix=f"for implicit MAML, anchor the learner to the meta-model, e.g. `+ 0.5 * sqdist("
                        f"{(p.lower.variables + p.lower.models)[0].name}, {p.start_from})`, or use "
                        f"`hypergradient = {learner}`")
    elif not p.reads(p.lower_reads | p.settings_reads.get("weight_decay", set()), "upper"):
        trajectory = next(op.name for op in rows_with("terminal") if op.differentiates == "trajectory" and op.stage == TERMINAL)
        scope.error(why + "variables; this lower objective uses none, so the hypergradient would be zero",
                    terminal.span, fix=f"use the upper variables in the lower objective, or use {trajectory}")


def learned_settings(scope: Scope, p: Facts):
    """A learned inner-optimiser setting needs a pipeline whose hypergradient reaches it."""
    optimizer = p.lower.optimizer
    written = {kw.name.text: kw for kw in _keywords(p.setting("lower", "optimizer").value)}
    trajectory = " or ".join(op.name for op in rows_with("terminal") if op.differentiates == "trajectory")
    for key in optimizer.learned:
        blind = next((w for w in p.ops if w.op.sees_settings is not None and key not in w.op.sees_settings), None)
        if blind is not None:
            scope.error(f"{blind.op.name} {blind.op.settings_blind.format(key=key)}: the learned {key} would get an "
                        "identically zero hypergradient", written[key].value.span,
                        notes=[(blind.span, f"{blind.op.name} is here")],
                        fix=f"write a constant {key}, or learn it through the inner steps with {trajectory}")
    terminal = p.solution_terminal
    decays = "weight_decay" in optimizer.learned or optimizer.args.get("weight_decay")
    if terminal is not None and optimizer.name in DECOUPLED_DECAY and decays:
        span = written["weight_decay"].value.span if "weight_decay" in written else p.at("lower", "optimizer")
        scope.error(f"{optimizer.name}'s weight decay shrinks the weights apart from the gradient, so the lower "
                    f"level's fixed point is not a stationary point of the lower objective, which {terminal.op.name} "
                    "differentiates", span, notes=[(terminal.span, f"{terminal.op.name} is here")],
                    fix="use Adam(weight_decay=...) (an L2 term of the gradient), or write weight_decay=0")


def task_batches(scope: Scope, p: Facts):
    task_sets = {ds.name for ds in p.datasets if ds.tasks}
    read = {name for kind, name in p.lower_reads | p.upper_reads if kind == "data"}
    if task_sets & read and not p.having("task_batches"):
        names = [op.name for op in rows_with("task_batches")]
        scope.error(f"few-shot task batches are learned by meta-learning pipelines, with {' or '.join(names)}",
                    p.ops[0].span, fix="use " + " or ".join(f"`hypergradient = {n}`" for n in names))


# --- settings that cannot matter (warnings) ------------------------------------------------------

def datasets_used(scope: Scope, p: Facts):
    for ds in p.datasets:
        if ds.name not in scope.used:
            scope.warn(f"dataset '{ds.name}' is never used", scope.symbols[ds.name].span,
                       fix="use it in an objective or a metric, or remove it")


def steps_unused(scope: Scope, p: Facts):
    for w in p.ops:
        if not w.op.uses_steps and p.lower.steps != 1:
            scope.warn(f"{w.op.name} takes one lower step per outer step: `steps = {p.lower.steps}` has no effect",
                       p.at("lower", "steps"), fix="set `steps = 1`")


def inner_optimizer_unused(scope: Scope, p: Facts):
    """Operators that step the lower variables by plain gradient steps read only the inner lr."""
    plain = next((w for w in p.ops if w.op.inner_optimizer == "lr"), None)
    if plain is None:
        return
    why = f"{plain.op.name} steps the lower variables by plain gradient steps at the inner learning rate"
    optimizer = p.setting("lower", "optimizer").value
    if p.lower.optimizer.name != "SGD":
        scope.warn(f"{why}: {p.lower.optimizer.name}'s own update is not used", optimizer.span,
                   fix=f"write `optimizer = SGD(lr={p.lower.optimizer.args['lr']:g})`")
        return
    for kw in _keywords(optimizer):
        if kw.name.text != "lr":
            scope.warn(f"{why}: {kw.name.text} has no effect", kw.span, fix=f"remove {kw.name.text}={scope.source.text_of(kw.value.span)}")


def one_step_from_a_fresh_state(scope: Scope, p: Facts):
    """The inner optimiser's state starts at zero every outer step: with one step, momentum (without
    nesterov) and Adam's betas cannot change that step."""
    if any(w.op.inner_optimizer == "lr" for w in p.ops) or optimizer_steps(p) != 1:
        return
    args = p.lower.optimizer.args
    cannot_matter = {"momentum": not args.get("nesterov"), "betas": p.lower.optimizer.name == "Adam"}
    for kw in _keywords(p.setting("lower", "optimizer").value):
        if cannot_matter.get(kw.name.text):
            scope.warn(f"{kw.name.text} has no effect with one inner step: the optimiser's state starts at zero "
                       "every outer step, so its first step does not depend on it", kw.span,
                       fix=f"remove {kw.name.text}={scope.source.text_of(kw.value.span)}")


def parameters_overridden(scope: Scope, p: Facts):
    """An operator that takes over another's job leaves that one's written parameters without effect."""
    for w in p.ops:
        for other in p.ops:
            why = w.op.overrides.get(other.op.name)
            for name, span in (other.arg_spans.items() if why else ()):
                scope.warn(f"{other.op.name}'s {name} has no effect beside {w.op.name}: {why}", span,
                           fix=f"remove {name}={scope.source.text_of(span)}")


def optimizer_steps(p: Facts) -> int:
    """How many steps the declared inner optimiser takes per outer step (its state starts afresh each)."""
    counter = next((w for w in p.ops if w.op.optimizer_steps != "steps"), None)
    if counter is None:
        return p.lower.steps
    name = counter.op.optimizer_steps
    return counter.args.get(name, counter.op.param(name).default)


def parameters_needing(scope: Scope, p: Facts):
    """A parameter that only matters beside another operator has no effect without it."""
    present = {w.op.name for w in p.ops}
    for w in p.ops:
        for name, other in w.op.needs_for.items():
            if name in w.arg_spans and other not in present:
                scope.warn(f"{w.op.name}'s {name} has no effect without {other}", w.arg_spans[name],
                           fix=f"remove {name}={scope.source.text_of(w.arg_spans[name])}, or add {other}")


def ordered_parameters(scope: Scope, p: Facts):
    for w in p.ops:
        for low, high in w.op.ordered:
            values = {n: w.args.get(n, w.op.param(n).default) for n in (low, high)}
            if values[low] > values[high]:
                span = w.arg_spans.get(low) or w.arg_spans.get(high) or w.span
                scope.error(f"{w.op.name}'s {low} ({values[low]:g}) is above its {high} ({values[high]:g})", span,
                            fix=f"choose {low} <= {high}")


def _keywords(optimizer: ast.Expr) -> list[ast.Keyword]:
    return optimizer.kwargs if isinstance(optimizer, ast.Call) else []


RULES = (lower_objective_reads_lower, upper_objective_reads_lower, upper_variables_used, direct_only,
         learned_start, restarted_lower, one_inner_step, bounded_by_steps, through_trajectory, cut_start,
         solution_needs_upper_in_lower, learned_settings, task_batches, datasets_used, steps_unused,
         inner_optimizer_unused, one_step_from_a_fresh_state, parameters_overridden, parameters_needing, ordered_parameters, kept_lower)


# --- words ----------------------------------------------------------------------------------------

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
