"""The operator catalogue: one row per operator, everything it means to the checker as data.

A row holds an operator's stage, its parameters (types, ranges, defaults) and
every rule it takes part in. blodsl.semantics.pipeline (the order and the
composition of a pipeline, one NetworkX pass) and blodsl.semantics.rules (the
rules against the rest of the program) compose these attributes; no other
module outside this catalogue and the runtime's registry tests an operator's
name. Adding an operator is one row here, one lowering in the runtime
registered under the same name, and one oracle test.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .params import REQUIRED, AtRunTime, FromProgram, Param, choice, count, flag, nonnegative, positive

# Stages, in the order a pipeline is written. Operators sharing a rank
# exclude each other (one dynamics core, one terminal).
DYNAMICS_MODIFIER = "dynamics modifier"
DYNAMICS_CORE = "dynamics core"
TRAJECTORY_MODIFIER = "trajectory modifier"
INITIALISATION = "initialisation"
TERMINAL = "hypergradient"
FIRST_ORDER = "first-order method"
ORDER = "dynamics, trajectory modifiers, IAD, then the hypergradient"  # the stages, as a message says them


@dataclass(frozen=True)
class Operator:
    name: str
    stage: str
    rank: int | None  # position in the canonical order; None for first-order methods
    summary: str
    params: tuple[Param, ...] = ()
    maths: str = ""                 # what it computes, in one line of the README's notation (`blodsl operators`)
    paper: str | None = None        # where it comes from
    # --- how it composes with the other operators (semantics/pipeline.py)
    needs_successor: bool = False   # it modifies what the next operator differentiates, so it cannot end a pipeline
    terminal: bool = False          # it may end a pipeline
    implied: bool = False           # in the pipeline when no operator of its stage (and no first-order method) is written
    excludes: dict[str, str] = field(default_factory=dict)   # other operator -> why the two cannot be combined
    requires: tuple[frozenset[str], str] | None = None       # (one of these operators, why)
    overrides: dict[str, str] = field(default_factory=dict)  # other operator -> why its parameters have no effect
    needs_for: dict[str, str] = field(default_factory=dict)  # own parameter -> the operator without which it has
                                                             # no effect
    ordered: tuple[tuple[str, str], ...] = ()                # (low, high): parameters whose values must not cross
    # --- what it differentiates, checked against the program (semantics/rules.py)
    differentiates: str | None = None        # "trajectory": back through the inner steps; "solution": at the lower
                                             # solution only, through the lower objective's dependence on x
    through_trajectory: str | None = None    # what it does through the differentiated trajectory (so nothing before
                                             # a "solution" terminal), as a message says it
    learns_start: bool = False      # the upper variable is the lower level's start: `start = from(x)`, identical structures
    restarts_lower: bool = False    # each outer step starts the lower level from the value it learns
    cuts_start: bool = False        # the differentiated trajectory no longer reaches the lower level's start
    direct_only: bool = False       # the upper variables (but a learned start) get only the direct gradient of
                                    # the upper objective, so each must be read by it
    keeps_lower: bool = False       # it moves the lower level (and its own variables) on from where it stands
    task_batches: bool = False      # it learns from few-shot task batches
    # --- what it takes from the lower level's steps and optimiser
    one_inner_step: bool = False    # a single-loop method: the lower level's steps must be 1
    bounded_by_steps: dict[str, str] = field(default_factory=dict)  # parameter -> what it does to that many inner
                                                                    # steps (a verb): it stays below the steps
    uses_steps: bool = True         # False: one lower step per outer step, whatever `steps` says
    inner_optimizer: str = "steps"  # "steps": the declared inner optimiser's steps; "lr": plain gradient steps at its lr
    optimizer_steps: str = "steps"  # the setting or own parameter that counts the inner optimiser's steps per outer step
    # --- inner-optimiser settings learned from upper variables (`SGD(lr=exp(log_lr))`)
    sees_settings: frozenset[str] | None = None  # which a hypergradient with it reaches; None: any (or not its say)
    settings_blind: str = ""        # why it reaches no other, as a message says it

    @property
    def whole_pipeline(self) -> bool:
        """A first-order method owns the whole outer step: nothing is combined with it."""
        return self.stage == FIRST_ORDER

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)


_TERMINAL_RANK = 7

# The reverse sweep's memory/time trade-off: keep the inner state every `checkpoint` steps and
# recompute the steps in between (one more forward pass); 0 keeps a state every compiled chunk.
CHECKPOINT = Param("checkpoint", int, 0, low=0, quiet=True)


# Why the implicit terminals see a learned weight decay and no other inner-optimiser setting.
_AT_FIXED_POINT = ("differentiates the lower level's fixed point, which the inner steps reach whatever their "
                   "{key}; only weight_decay moves it")


def _blind(why: str) -> dict:
    """An operator whose hypergradient reaches no learned inner-optimiser setting, and why."""
    return {"sees_settings": frozenset(), "settings_blind": why}


_FIRST_ORDER_BLIND = _blind("does not differentiate through the inner optimiser's steps")


def _drops_start(name: str) -> str:
    """Why FD and IGA have no meaning after IAD."""
    return (f"{name} differentiates at the final lower solution only, so it would drop the derivative through the "
            "start (dF/dy0) that IAD hands on")


CATALOGUE: tuple[Operator, ...] = (
    Operator("GDA", DYNAMICS_MODIFIER, 0, "inner steps descend a*F + (1-a)*f",
             (Param("alpha", float, 0.5, low=0, high=1, high_open=True),
              Param("alpha_decay", float, 0.9, low=0, low_open=True, high=1)),
             needs_successor=True,
             maths="inner step t descends a_t F + (1 - a_t) f, a_t = alpha * alpha_decay^t",
             paper="Liu, Mu, Yuan, Zeng, Zhang, ICML 2020 (BDA)"),
    Operator("DI", DYNAMICS_MODIFIER, 1, "learns the lower level's initial value too",
             (positive("lr", 0.01),), needs_successor=True,
             excludes={"IAD": "IAD already makes the lower level's initial value the upper-level variable"},
             through_trajectory="learns the start through the inner trajectory", restarts_lower=True,
             maths="y_0 is an upper variable too, moved by dF/dy_0 through the inner steps",
             paper="Liu, Liu, Yuan, Zeng, Zhang, NeurIPS 2021 (IAPTT-GM)"),
    Operator("NGD", DYNAMICS_CORE, 2, "plain inner steps of the lower optimiser", implied=True,
             maths="y_{t+1} = y_t - beta df/dy(x, y_t) (the lower optimiser's step), T times"),
    Operator("DM", DYNAMICS_CORE, 2, "single-loop dual-multiplier method",
             (positive("v_lr", 0.1), positive("tau", 0.01), positive("p", 100.0),
              Param("mu0", float, 0.9, low=0, low_open=True, high=1, high_open=True),
              choice("strategy", "s1", "s2", "s3", default="s1")),
             requires=(frozenset({"RAD", "CG"}), "the dual-multiplier method's upper gradient is defined for RAD or CG"),
             excludes={"DI": "DM moves the lower level one step from where it stands; there is no start for DI "
                             "to learn",
                       "PTT": "DM takes one lower step per outer step; there is no trajectory for PTT to pick a "
                              "step from",
                       "IAD": "DM keeps the lower level between outer steps; it does not start from the upper one",
                       "RGT": "DM takes one lower step per outer step; there is no trajectory for RGT to truncate"},
             overrides={"GDA": "DM mixes F into the lower objective by its own schedule, mu0 (k+1)^(-1/p)",
                        "RAD": "with DM, RAD only says that DM's multiplier moves by the fixed step v_lr",
                        "CG": "with DM, CG only says that DM's multiplier moves by the exact line-search step"},
             needs_for={"mu0": "GDA", "p": "GDA", "strategy": "GDA", "v_lr": "RAD"},
             one_inner_step=True, inner_optimizer="lr", keeps_lower=True,
             maths="x gets dF/dx - J_phi^T v; v moves along H_phi v - dF/dy; y takes one step on phi",
             paper="Liu, Liu, Yao, Zeng, Zhang, ICML 2023",
             **_blind("steps the lower level at a fixed rate without differentiating the step")),
    Operator("PTT", TRAJECTORY_MODIFIER, 3, "differentiates at the step of largest upper loss",
             needs_successor=True,
             maths="F differentiated at y_t*, t* = argmax_t F(x, y_t), instead of at y_T",
             paper="Liu, Liu, Yuan, Zeng, Zhang, NeurIPS 2021 (IAPTT-GM)"),
    Operator("FOA", TRAJECTORY_MODIFIER, 4, "first-order approximation (dy_T/dy_0 = I)",
             needs_successor=True,
             requires=(frozenset({"IAD"}), "without IAD the first-order hypergradient is identically zero"),
             excludes={"RGT": "FOA takes dy_T/dy_0 as the identity; there is no differentiated trajectory for RGT "
                              "to truncate"},
             through_trajectory="approximates the derivative through the inner trajectory",
             maths="dy_T/dy_0 taken as the identity, so dF/dy_0 = dF/dy_T",
             paper="Finn, Abbeel, Levine, ICML 2017 (first-order MAML)",
             **_blind("takes dy_T/dy_0 as the identity, dropping every derivative through the inner steps")),
    Operator("RGT", TRAJECTORY_MODIFIER, 5, "back-propagates through the last steps only",
             (positive("truncate", REQUIRED, type=int),), needs_successor=True,
             through_trajectory="truncates the differentiated inner trajectory", cuts_start=True,
             bounded_by_steps={"truncate": "truncate"},
             maths="the reverse sweep goes back through the last T - truncate inner steps only",
             paper="Shaban, Cheng, Hatch, Boots, AISTATS 2019"),
    Operator("IAD", INITIALISATION, 6, "the upper variable is the lower level's initial value (MAML)",
             (CHECKPOINT,), terminal=True, differentiates="trajectory", learns_start=True, task_batches=True,
             maths="y_0 = x, and dF/dx = dF/dy_T dy_T/dy_0 by reverse mode",
             paper="Finn, Abbeel, Levine, ICML 2017 (MAML)"),
    Operator("RAD", TERMINAL, _TERMINAL_RANK, "exact reverse mode through all inner steps", (CHECKPOINT,),
             terminal=True, differentiates="trajectory",
             maths="dF/dx by reverse mode through y_1, ..., y_T",
             paper="Franceschi, Donini, Frasconi, Pontil, ICML 2017"),
    Operator("FD", TERMINAL, _TERMINAL_RANK, "DARTS finite difference", (positive("r", 0.01),), terminal=True,
             excludes={"RGT": "FD differentiates at the final lower solution only; there is no back-propagated "
                              "trajectory for RGT to truncate",
                       "IAD": _drops_start("FD")},
             differentiates="solution",
             maths="dF/dx - beta (df/dx(y + e v) - df/dx(y - e v)) / 2e, e = r / |v|",
             paper="Liu, Simonyan, Yang, ICLR 2019 (DARTS)",
             **_blind("differentiates the lower solution through the lower objective alone")),
    Operator("IGA", TERMINAL, _TERMINAL_RANK, "implicit gradient approximation", terminal=True,
             excludes={"IAD": _drops_start("IGA")}, differentiates="solution",
             maths="dF/dx - (<v, g> / |g|^2) df/dx, g = df/dy",
             **_blind("differentiates the lower solution through the lower objective alone")),
    Operator("CG", TERMINAL, _TERMINAL_RANK, "implicit differentiation, conjugate gradient",
             (count("k", 10), positive("tol", 1e-10)), terminal=True, differentiates="solution",
             maths="dF/dx - J^T q, q = H^-1 v by k steps of conjugate gradient",
             paper="Pedregosa, ICML 2016 (HOAG)",
             sees_settings=frozenset({"weight_decay"}), settings_blind=_AT_FIXED_POINT),
    Operator("NS", TERMINAL, _TERMINAL_RANK, "implicit differentiation, Neumann series",
             (count("k", 10), positive("alpha", FromProgram("inner_lr"))), terminal=True, differentiates="solution",
             maths="dF/dx - J^T q, q = alpha sum_(i<=k) (I - alpha H)^i v",
             paper="Lorraine, Vicol, Duvenaud, AISTATS 2020",
             sees_settings=frozenset({"weight_decay"}), settings_blind=_AT_FIXED_POINT),
    Operator("NYSTROM", TERMINAL, _TERMINAL_RANK, "implicit differentiation, Nystrom sketch",
             (count("rank", 5), positive("rho", 0.1)), terminal=True, differentiates="solution",
             maths="dF/dx - J^T q, q = (H_k + rho I)^-1 v with H_k a rank-k Nystrom sketch of H",
             paper="Hataya, Yamada, AISTATS 2023",
             sees_settings=frozenset({"weight_decay"}), settings_blind=_AT_FIXED_POINT),
    Operator("VSO", FIRST_ORDER, None, "value-function sequential minimisation (BVFSM)",
             (count("z_loop", 5), positive("z_lr", 0.01), nonnegative("ll_l2_reg", 0.1),
              nonnegative("ul_l2_reg", 0.01), nonnegative("ul_ln_reg", 10.0), flag("reg_decay", True),
              positive("eps", AtRunTime("the number of lower-level parameters"), quiet=True)),
             keeps_lower=True, optimizer_steps="z_loop",
             maths="y descends F - sigma ln(phi + eps - f) + theta |y|^2, phi = min_z f + mu |z|^2 by z_loop steps",
             paper="Liu et al., ICML 2021 (BVFSM)",
             **_FIRST_ORDER_BLIND),
    Operator("VFO", FIRST_ORDER, None, "value-function first-order method (BOME)",
             (positive("u1", 0.1), positive("y_hat_lr", 0.01), count("y_hat_steps", FromProgram("steps"))),
             inner_optimizer="lr", keeps_lower=True,
             maths="x, y move along grad F + lam grad q, q = f(x, y) - f(x, y_hat), lam keeping q from growing",
             paper="Liu, Ye, Wright, Stone, Liu, NeurIPS 2022 (BOME)",
             **_FIRST_ORDER_BLIND),
    Operator("MESO", FIRST_ORDER, None, "Moreau-envelope single-loop method",
             (positive("eta", 0.001), positive("gamma_1", 0.01), positive("c0", 0.2)),
             uses_steps=False, inner_optimizer="lr", keeps_lower=True,
             maths="x gets dF/dx / c_k + df/dx(y) - df/dx(theta), theta a proximal step towards y",
             paper="Liu et al., ICML 2024 (MEHA)",
             **_FIRST_ORDER_BLIND),
    Operator("PGDO", FIRST_ORDER, None, "penalty-based bilevel gradient descent",
             (positive("y_hat_lr", 0.01), nonnegative("gamma_init", 0.0), nonnegative("gamma_max", 0.2),
              count("gamma_argmax_step", 30000),
              choice("penalty", "difference", "gradient", default="difference")),
             ordered=(("gamma_init", "gamma_max"),), inner_optimizer="lr", keeps_lower=True,
             maths="x, y descend l (F + gamma_k penalty), penalty f(x, y) - f(x, y_hat) or |df/dy|^2 / 2",
             paper="Shen, Chen, ICML 2023",
             **_FIRST_ORDER_BLIND),
    Operator("ALTO", FIRST_ORDER, None, "one lower step, then the direct upper gradient only",
             direct_only=True, uses_steps=False, inner_optimizer="lr", keeps_lower=True,
             maths="y -= beta df/dy, then x gets dF/dx at the new y",
             **_FIRST_ORDER_BLIND),
    Operator("GAFFO", FIRST_ORDER, None, "regularised gap function, from the upper variables each outer step",
             (positive("lambda", 1.0), positive("sigma", 0.01), positive("lower_step", FromProgram("inner_lr"))),
             learns_start=True, direct_only=True, task_batches=True, uses_steps=False, inner_optimizer="lr",
             maths="x gets (dF/dx + dF/dy)(y1) / lambda + df/dy(y1 + sigma b) - b, y1 = x - lower_step df/dy, "
                   "b = df/dy(y1)",
             paper="Yao, Yin, Zeng, Zhang, 2024",
             **_FIRST_ORDER_BLIND),
    # the stochastic solvers: each oracle may read its own minibatch (runtime/operators/stochastic.py)
    Operator("SOBA", FIRST_ORDER, None, "single loop: y, the linear system's v and x move together",
             (positive("rho", FromProgram("inner_lr")), flag("step_decay", True)),
             uses_steps=False, inner_optimizer="lr", keeps_lower=True,
             maths="y -= rho_k df/dy, v -= rho_k (H v - dF/dy), x gets dF/dx - J^T v; rho_k = rho / sqrt(k+1)",
             paper="Dagreou, Ablin, Vaiter, Moreau, NeurIPS 2022",
             **_FIRST_ORDER_BLIND),
    Operator("StocBiO", FIRST_ORDER, None, "T lower SGD steps, then a Q-term Neumann series for H^-1 dF/dy",
             (count("Q", 10), positive("eta", FromProgram("inner_lr"))),
             inner_optimizer="lr", keeps_lower=True,
             maths="y takes T steps on f; x gets dF/dx - J^T v, v = eta sum_(q<Q) (I - eta H)^q dF/dy",
             paper="Ji, Yang, Liang, ICML 2021",
             **_FIRST_ORDER_BLIND),
    Operator("AmIGO", FIRST_ORDER, None, "warm-started lower SGD, and SGD on the linear system from the last v",
             (count("M", FromProgram("steps")), positive("v_lr", FromProgram("inner_lr"))),
             inner_optimizer="lr", keeps_lower=True,
             maths="y takes T steps on f; v (kept) takes M steps v -= v_lr (H v - dF/dy); x gets dF/dx - J^T v",
             paper="Arbel, Mairal, ICLR 2022",
             **_FIRST_ORDER_BLIND),
    Operator("F2SA", FIRST_ORDER, None, "fully first-order: y descends F + lam f, z descends f, lam rises",
             (positive("lam0", 1.0), nonnegative("delta", 0.01), positive("lower_step", FromProgram("inner_lr")),
              flag("step_decay", True)),
             inner_optimizer="lr", keeps_lower=True,
             maths="x gets dF/dx + lam_k (df/dx(y) - df/dx(z)), y after T steps on F + lam_k f, z after T on f; "
                   "lam_k = lam0 + k delta",
             paper="Kwon, Kwon, Wright, Nowak, ICML 2023",
             **_FIRST_ORDER_BLIND),
)

BY_NAME: dict[str, Operator] = {op.name: op for op in CATALOGUE}
TERMINALS = tuple(op.name for op in CATALOGUE if op.stage == TERMINAL)


def rows_with(attribute: str) -> list[Operator]:
    """The rows for which `attribute` holds, in catalogue order."""
    return [op for op in CATALOGUE if getattr(op, attribute)]
