"""The operator catalogue as data (see OPERATORS.md in the project's reference).

Each row says an operator's stage, its parameters (types, ranges, defaults)
and its composition constraints. blodsl.semantics.pipeline is the one checker over
this table; adding an operator is one row here, one lowering in the engine
and one oracle test.
"""

from __future__ import annotations

from dataclasses import dataclass, field

REQUIRED = object()


@dataclass(frozen=True)
class FromProgram:
    """A default taken from the program itself, e.g. the inner learning rate."""
    what: str  # "inner_lr" or "steps"

    def __repr__(self):
        return {"inner_lr": "the inner learning rate", "steps": "the lower level's steps"}[self.what]


@dataclass(frozen=True)
class Param:
    name: str
    type: type  # int, float, bool or str (a choice)
    default: object = REQUIRED
    low: float | None = None       # bound below
    low_open: bool = False         # True: value > low; False: value >= low
    high: float | None = None
    high_open: bool = False
    choices: tuple[str, ...] = ()
    quiet: bool = False            # left out of the pipeline's text while it has its default

    def describe(self) -> str:
        """'an integer > 0', 'a number in [0, 1)', 'one of s1, s2, s3'."""
        if self.choices:
            return "one of " + ", ".join(self.choices)
        kind = {int: "an integer", float: "a number", bool: "True or False"}[self.type]
        if self.low is not None and self.high is not None:
            return f"{kind} in {'(' if self.low_open else '['}{_g(self.low)}, {_g(self.high)}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"{kind} {'>' if self.low_open else '>='} {_g(self.low)}"
        return kind

    def problem(self, value) -> str | None:
        """Why `value` is not acceptable, or None."""
        if self.choices:
            return None if value in self.choices else "must be " + self.describe()
        if self.type is bool:
            return None if isinstance(value, bool) else "must be True or False"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return "must be " + self.describe()
        if self.type is int and not isinstance(value, int):
            return "must be " + self.describe()
        below = self.low is not None and (value <= self.low if self.low_open else value < self.low)
        above = self.high is not None and (value >= self.high if self.high_open else value > self.high)
        return "must be " + self.describe() if below or above else None


def _g(x) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def positive(name, default=REQUIRED, type=float):
    return Param(name, type, default, low=0, low_open=True)


def nonnegative(name, default=REQUIRED, type=float):
    return Param(name, type, default, low=0)


# Stages, in the order a pipeline is written. Operators sharing a rank
# exclude each other (one dynamics core, one terminal).
DYNAMICS_MODIFIER = "dynamics modifier"
DYNAMICS_CORE = "dynamics core"
TRAJECTORY_MODIFIER = "trajectory modifier"
INITIALISATION = "initialisation"
TERMINAL = "hypergradient"
FIRST_ORDER = "first-order method"


@dataclass(frozen=True)
class Operator:
    name: str
    stage: str
    rank: int | None  # position in the canonical order; None for first-order methods
    summary: str
    params: tuple[Param, ...] = ()
    needs_successor: bool = False
    terminal: bool = False
    implied: bool = False  # in the pipeline when no operator of its stage (and no first-order method) is written
    excludes: dict[str, str] = field(default_factory=dict)        # other op -> why
    requires: tuple[frozenset[str], str] | None = None             # (any of these, why)

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)


_TERMINAL_RANK = 7

# The reverse sweep's memory/time trade-off: keep the inner state every `checkpoint` steps and
# recompute the steps in between (one more forward pass); 0 keeps a state every compiled chunk.
CHECKPOINT = Param("checkpoint", int, 0, low=0, quiet=True)

CATALOGUE: tuple[Operator, ...] = (
    Operator("GDA", DYNAMICS_MODIFIER, 0, "inner steps descend a*F + (1-a)*f",
             (Param("alpha", float, 0.5, low=0, high=1, high_open=True),
              Param("alpha_decay", float, 0.9, low=0, low_open=True, high=1)),
             needs_successor=True),
    Operator("DI", DYNAMICS_MODIFIER, 1, "learns the lower level's initial value too",
             (positive("lr", 0.01),), needs_successor=True,
             excludes={"IAD": "IAD already makes the lower level's initial value the upper-level variable"}),
    Operator("NGD", DYNAMICS_CORE, 2, "plain inner steps of the lower optimiser", implied=True),
    Operator("DM", DYNAMICS_CORE, 2, "single-loop dual-multiplier method",
             (positive("v_lr", 0.1), positive("tau", 0.01), positive("p", 100.0),
              Param("mu0", float, 0.9, low=0, low_open=True, high=1, high_open=True),
              positive("eta0", 0.5), Param("strategy", str, "s1", choices=("s1", "s2", "s3"))),
             requires=(frozenset({"RAD", "CG"}), "the dual-multiplier method's upper gradient is defined for RAD or CG")),
    Operator("PTT", TRAJECTORY_MODIFIER, 3, "differentiates at the step of largest upper loss",
             needs_successor=True),
    Operator("FOA", TRAJECTORY_MODIFIER, 4, "first-order approximation (dy_T/dy_0 = I)",
             needs_successor=True,
             requires=(frozenset({"IAD"}), "without IAD the first-order hypergradient is identically zero")),
    Operator("RGT", TRAJECTORY_MODIFIER, 5, "back-propagates through the last steps only",
             (positive("truncate", type=int),), needs_successor=True),
    Operator("IAD", INITIALISATION, 6, "the upper variable is the lower level's initial value (MAML)",
             (CHECKPOINT,), terminal=True),
    Operator("RAD", TERMINAL, _TERMINAL_RANK, "exact reverse mode through all inner steps", (CHECKPOINT,),
             terminal=True),
    Operator("FD", TERMINAL, _TERMINAL_RANK, "DARTS finite difference", (positive("r", 0.01),), terminal=True,
             excludes={"RGT": "FD differentiates at the final lower solution only; there is no back-propagated "
                              "trajectory for RGT to truncate"}),
    Operator("IGA", TERMINAL, _TERMINAL_RANK, "implicit gradient approximation", terminal=True),
    Operator("CG", TERMINAL, _TERMINAL_RANK, "implicit differentiation, conjugate gradient",
             (Param("k", int, 10, low=1), positive("tol", 1e-10)), terminal=True),
    Operator("NS", TERMINAL, _TERMINAL_RANK, "implicit differentiation, Neumann series",
             (Param("k", int, 10, low=1), positive("alpha", FromProgram("inner_lr"))), terminal=True),
    Operator("NYSTROM", TERMINAL, _TERMINAL_RANK, "implicit differentiation, Nystrom sketch",
             (Param("rank", int, 5, low=1), positive("rho", 0.1)), terminal=True),
    Operator("VSO", FIRST_ORDER, None, "value-function sequential minimisation (BVFSM)",
             (Param("z_loop", int, 5, low=1), positive("z_lr", 0.01), nonnegative("ll_l2_reg", 0.1),
              nonnegative("ul_l2_reg", 0.01), nonnegative("ul_ln_reg", 10.0), Param("reg_decay", bool, True))),
    Operator("VFO", FIRST_ORDER, None, "value-function first-order method (BOME)",
             (positive("u1", 0.1), positive("y_hat_lr", 0.01), Param("y_hat_steps", int, FromProgram("steps"), low=1))),
    Operator("MESO", FIRST_ORDER, None, "Moreau-envelope single-loop method",
             (positive("eta", 0.001), positive("gamma_1", 0.01), positive("c0", 0.2), positive("y_hat_lr", 0.1))),
    Operator("PGDO", FIRST_ORDER, None, "penalty-based bilevel gradient descent",
             (positive("y_hat_lr", 0.01), nonnegative("gamma_init", 0.0), nonnegative("gamma_max", 0.2),
              Param("gamma_argmax_step", int, 30000, low=1),
              Param("penalty", str, "difference", choices=("difference", "gradient")))),
    Operator("ALTO", FIRST_ORDER, None, "one lower step, then the direct upper gradient only"),
    Operator("GAFFO", FIRST_ORDER, None, "regularised gap function",
             (positive("lambda", 1.0), positive("sigma", 0.01), positive("lower_step", FromProgram("inner_lr")),
              Param("maximize", bool, True))),
)

BY_NAME: dict[str, Operator] = {op.name: op for op in CATALOGUE}
TERMINALS = tuple(op.name for op in CATALOGUE if op.stage == TERMINAL)
FIRST_ORDER_METHODS = tuple(op.name for op in CATALOGUE if op.stage == FIRST_ORDER)
