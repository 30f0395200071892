"""The operator registry, and the plan a pipeline lowers to.

Every operator of the catalogue has one lowering here, registered under its
name: a function `(plan, params) -> plan` that adds what the operator means to
the plan. Dynamics and trajectory modifiers set fields of the plan (GDA's
schedule, PTT, a truncation); terminals and first-order methods hand the plan
the `Method` that owns the outer step. The trainer reads the plan and calls the
method; it knows no operator by name.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

REGISTRY: dict[str, Callable] = {}

CHUNK = 5    # inner steps per compiled call: amortises the call, bounds the compile


def register(name: str):
    """Registers a lowering under an operator's name: a function (plan, params) -> plan, or
    a class whose `lower` classmethod is one."""

    def add(entry):
        REGISTRY[name] = entry.lower if isinstance(entry, type) else entry
        return entry

    return add


@dataclass(frozen=True)
class Plan:
    """What a pipeline lowers to: printed by `blodsl compile --emit plan` and `print(pipeline.plan)`."""
    operators: tuple[str, ...] = ()          # as lowered, with every parameter
    steps: int = 1                           # inner steps per outer step
    inner_lr: float = 0.0
    method: type | None = None               # the Method that owns the outer step
    core: type | None = None                 # a dynamics core that owns it whatever the terminal (DM)
    params: dict = field(default_factory=dict)   # its parameters
    gda: tuple[float, float] | None = None   # (alpha, alpha_decay): inner steps descend a_t F + (1 - a_t) f
    learned_start_lr: float | None = None    # DI: the lower level's start is learned, at this lr
    ptt: bool = False                        # differentiate at each task's worst step
    foa: bool = False                        # dy_T/dy_0 taken as the identity
    truncate: int = 0                        # steps run without a graph before the differentiated part
    checkpoint: int = 0                      # keep the inner state every this many steps (0: every chunk)
    chunk: int = CHUNK                       # inner steps per compiled call
    notes: tuple[str, ...] = ()              # what each operator does, in order

    def with_note(self, note: str, **changes) -> "Plan":
        return replace(self, notes=self.notes + (note,), **changes)

    def __str__(self) -> str:
        method = self.method
        lines = [f"pipeline  {' -> '.join(self.operators)}"]
        lines += [f"  {note}" for note in self.notes]
        if method is not None:
            kernels = method.kernel_names(self)
            lines.append(f"kernels   {', '.join(kernels)}" if kernels else "kernels   none")
            if any(name.startswith(("chunk", "descend")) for name in kernels):
                lines.append(f"chunks    {self.chunk} inner step{'s' if self.chunk != 1 else ''} per compiled call"
                             + (" (1 on a CPU when a step reads 2^20 data elements or more)" if self.chunk > 1 else ""))
            lines.append(f"reverse   {method.keeps(self)}")
            state = method.state_names(self)
            lines.append(f"state     {', '.join(state) + ', carried across outer steps' if state else 'none'}")
        return "\n".join(lines)


def operator_text(name: str, params: dict) -> str:
    """NAME(k=v, ...) with every parameter but those settled at run time (None)."""
    shown = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items() if v is not None)
    return f"{name}({shown})" if shown else name


def lower(operators: list[tuple[str, dict]], steps: int, inner_lr: float) -> Plan:
    """The plan of a checked pipeline: each operator's lowering applied in the written order."""
    plan = Plan(operators=tuple(operator_text(name, params) for name, params in operators),
                steps=steps, inner_lr=inner_lr)
    for name, params in operators:
        if name not in REGISTRY:
            raise KeyError(f"no lowering is registered for operator {name}")
        before = len(plan.notes)
        plan = REGISTRY[name](plan, dict(params))
        plan = replace(plan, notes=plan.notes[:before] + tuple(f"{name:<8}{n}" for n in plan.notes[before:]))
    differentiated = steps - (plan.truncate if plan.method and plan.method.unrolled(plan) else 0)
    longest = plan.checkpoint or CHUNK
    return replace(plan, chunk=max(1, min(CHUNK, differentiated, longest)))
