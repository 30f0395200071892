"""The operator catalogue as data (see OPERATORS.md in the project's reference).

Each row says an operator's stage, its parameters (types, ranges, defaults)
and its composition constraints. blodsl.semantics.pipeline is the one checker over
this table; adding an operator is one row here, one lowering in the engine
and one oracle test.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .params import REQUIRED, FromProgram, Param, choice, count, flag, nonnegative, positive

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
              positive("eta0", 0.5), choice("strategy", "s1", "s2", "s3", default="s1")),
             requires=(frozenset({"RAD", "CG"}), "the dual-multiplier method's upper gradient is defined for RAD or CG")),
    Operator("PTT", TRAJECTORY_MODIFIER, 3, "differentiates at the step of largest upper loss",
             needs_successor=True),
    Operator("FOA", TRAJECTORY_MODIFIER, 4, "first-order approximation (dy_T/dy_0 = I)",
             needs_successor=True,
             requires=(frozenset({"IAD"}), "without IAD the first-order hypergradient is identically zero")),
    Operator("RGT", TRAJECTORY_MODIFIER, 5, "back-propagates through the last steps only",
             (positive("truncate", REQUIRED, type=int),), needs_successor=True),
    Operator("IAD", INITIALISATION, 6, "the upper variable is the lower level's initial value (MAML)",
             (CHECKPOINT,), terminal=True),
    Operator("RAD", TERMINAL, _TERMINAL_RANK, "exact reverse mode through all inner steps", (CHECKPOINT,),
             terminal=True),
    Operator("FD", TERMINAL, _TERMINAL_RANK, "DARTS finite difference", (positive("r", 0.01),), terminal=True,
             excludes={"RGT": "FD differentiates at the final lower solution only; there is no back-propagated "
                              "trajectory for RGT to truncate"}),
    Operator("IGA", TERMINAL, _TERMINAL_RANK, "implicit gradient approximation", terminal=True),
    Operator("CG", TERMINAL, _TERMINAL_RANK, "implicit differentiation, conjugate gradient",
             (count("k", 10), positive("tol", 1e-10)), terminal=True),
    Operator("NS", TERMINAL, _TERMINAL_RANK, "implicit differentiation, Neumann series",
             (count("k", 10), positive("alpha", FromProgram("inner_lr"))), terminal=True),
    Operator("NYSTROM", TERMINAL, _TERMINAL_RANK, "implicit differentiation, Nystrom sketch",
             (count("rank", 5), positive("rho", 0.1)), terminal=True),
    Operator("VSO", FIRST_ORDER, None, "value-function sequential minimisation (BVFSM)",
             (count("z_loop", 5), positive("z_lr", 0.01), nonnegative("ll_l2_reg", 0.1),
              nonnegative("ul_l2_reg", 0.01), nonnegative("ul_ln_reg", 10.0), flag("reg_decay", True))),
    Operator("VFO", FIRST_ORDER, None, "value-function first-order method (BOME)",
             (positive("u1", 0.1), positive("y_hat_lr", 0.01), count("y_hat_steps", FromProgram("steps")))),
    Operator("MESO", FIRST_ORDER, None, "Moreau-envelope single-loop method",
             (positive("eta", 0.001), positive("gamma_1", 0.01), positive("c0", 0.2), positive("y_hat_lr", 0.1))),
    Operator("PGDO", FIRST_ORDER, None, "penalty-based bilevel gradient descent",
             (positive("y_hat_lr", 0.01), nonnegative("gamma_init", 0.0), nonnegative("gamma_max", 0.2),
              count("gamma_argmax_step", 30000),
              choice("penalty", "difference", "gradient", default="difference"))),
    Operator("ALTO", FIRST_ORDER, None, "one lower step, then the direct upper gradient only"),
    Operator("GAFFO", FIRST_ORDER, None, "regularised gap function",
             (positive("lambda", 1.0), positive("sigma", 0.01), positive("lower_step", FromProgram("inner_lr")),
              flag("maximize", True))),
)

BY_NAME: dict[str, Operator] = {op.name: op for op in CATALOGUE}
TERMINALS = tuple(op.name for op in CATALOGUE if op.stage == TERMINAL)
FIRST_ORDER_METHODS = tuple(op.name for op in CATALOGUE if op.stage == FIRST_ORDER)
