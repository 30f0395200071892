"""The checked program: what the resolver produces and the engine consumes.

Every name is resolved (a reference says which level or dataset it belongs
to), and every operator parameter and inner-optimiser argument is explicit,
defaults included, so lowering never looks back at the source text. Data
source arguments are kept as written; their defaults belong to the loaders. Each statement keeps the
line it came from, for `# prog.blo:LINE` comments in generated code; expressions and the declarations
that give sizes (datasets, variables, models) keep their span too, for messages about the values
they make. `Program.model_dump_json(indent=2)` is `blodsl compile --emit ir`: spans are left out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field
from typing_extensions import TypeAliasType

from .syntax.source import Span


class Node(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


@dataclass(frozen=True, eq=False)
class Written(Span):
    """Where a node was written. Not part of what the program means: every position equals every
    other (and none), so programs that differ only in layout, or that were read back from JSON,
    compare equal."""

    def __eq__(self, other):
        return other is None or isinstance(other, Span)

    def __hash__(self):
        return hash(None)   # as a node without its span hashes

    @staticmethod
    def of(span: Span | None) -> "Written | None":
        return None if span is None else Written(span.line, span.col, span.end_line, span.end_col, span.origin)


# A node's span: out of the JSON, out of repr, and (by Written's equality) out of comparisons.
At = Annotated[Written | None, Field(default=None, exclude=True, repr=False)]


class Expression(Node):
    span: At = None


LevelName = Literal["upper", "lower"]

# --- expressions ---------------------------------------------------------------


class Const(Expression):
    kind: Literal["const"] = "const"
    value: bool | int | float | str | None


class DataRef(Expression):
    """A tensor of a dataset: `train.x`."""
    kind: Literal["data"] = "data"
    dataset: str
    field: str


class SizeRef(Expression):
    """A size of a dataset, known once it is loaded: `train.features`."""
    kind: Literal["size"] = "size"
    dataset: str
    size: str


class VarRef(Expression):
    kind: Literal["var"] = "var"
    level: LevelName
    name: str


class ModelRef(Expression):
    """A model as a value: all its weights (as in `sqnorm(net)`)."""
    kind: Literal["model"] = "model"
    level: LevelName
    name: str


class ParamRef(Expression):
    """One weight tensor of a model: `net.weight`."""
    kind: Literal["param"] = "param"
    level: LevelName
    model: str
    param: str


class Apply(Expression):
    """A model applied to inputs: `net(train.x)`."""
    kind: Literal["apply"] = "apply"
    level: LevelName
    model: str
    args: list[Expr]


class Call(Expression):
    """A built-in function (blodsl.catalogue.builtins.FUNCTIONS or METRICS)."""
    kind: Literal["call"] = "call"
    fn: str
    args: list[Expr]
    kwargs: dict[str, Expr] = {}


class UserCall(Expression):
    """A user function imported as "package.module:function"."""
    kind: Literal["user_call"] = "user_call"
    ref: str
    args: list[Expr]
    kwargs: dict[str, Expr] = {}


class BinOp(Expression):
    kind: Literal["binop"] = "binop"
    op: str
    left: Expr
    right: Expr


class Unary(Expression):
    kind: Literal["unary"] = "unary"
    op: str
    operand: Expr


class Compare(Expression):
    kind: Literal["compare"] = "compare"
    op: str
    left: Expr
    right: Expr


class ListOf(Expression):
    kind: Literal["list"] = "list"
    items: list[Expr]


class Index(Expression):
    kind: Literal["index"] = "index"
    obj: Expr
    index: Expr


Expr = Annotated[Union[Const, DataRef, SizeRef, VarRef, ModelRef, ParamRef, Apply, Call, UserCall,
                       BinOp, Unary, Compare, ListOf, Index], Field(discriminator="kind")]

# --- declarations ------------------------------------------------------------------

Dim = Union[int, SizeRef]


class LayerSpec(Node):
    """A model constructor: a built-in layer, Sequential, a user nn.Module, or input()."""
    kind: Literal["builtin", "sequential", "user", "input"]
    name: str                 # layer name, user reference "pkg.mod:Class", or "input"
    args: list[Arg] = []
    kwargs: dict[str, Arg] = {}


Arg = TypeAliasType("Arg", Union[SizeRef, LayerSpec, bool, int, float, str, None, list["Arg"]])


class Dataset(Node):
    name: str
    source: str               # digits, classification, ..., npz, csv, idx, input
    args: dict[str, Arg]      # every argument, defaults filled for split
    path: str | None = None   # files: relative to the program's folder
    split: int | None = None  # which part of `args["split"]` this dataset is
    fields: list[str]
    sizes: list[str]
    tasks: bool = False
    batch: int | None = None  # samples per read inside an objective (None: the whole dataset)
    line: int
    span: At = None           # the dataset's name


class Variable(Node):
    name: str
    level: LevelName
    init: str                 # zeros, ones, full, normal, uniform, input, like (args: model, value)
    shape: list[Dim]
    args: dict[str, Arg] = {}
    line: int
    span: At = None           # the whole declaration


class Model(Node):
    name: str
    level: LevelName
    spec: LayerSpec
    parameters: list[str]     # names reachable as `net.NAME` ([] when not known before run time)
    line: int
    span: At = None           # the whole declaration


class LearnedSetting(Node):
    """An inner-optimiser setting computed from upper variables at every step, as written."""
    expr: Expr
    text: str


class Optimizer(Node):
    name: str
    args: dict[str, Arg]
    line: int
    # lower level: the settings learned from upper variables (`args` holds the row's default in their place)
    learned: dict[str, LearnedSetting] = {}


class Scheduler(Node):
    """The upper optimiser's learning-rate schedule: a torch.optim.lr_scheduler class and its
    keyword arguments as written, with the defaults that follow the program filled in."""
    name: str
    args: dict[str, Arg]
    line: int


class Clip(Node):
    """The largest global norm of the hypergradient the upper optimiser is handed."""
    norm: float
    line: int


class Objective(Node):
    expr: Expr
    text: str                 # as written, for comments and messages
    line: int


class Start(Node):
    """How the lower level starts each outer step."""
    mode: Literal["warm", "reinit", "from", "learned"]   # learned: DI's, set by the pipeline
    source: str | None = None  # the upper model or variable, for mode "from"
    line: int | None = None


class LevelDecl(Node):
    level: LevelName
    variables: list[Variable]
    models: list[Model]
    objective: Objective
    optimizer: Optimizer
    scheduler: Scheduler | None = None  # upper level only
    clip: Clip | None = None            # upper level only
    steps: int | None = None  # lower level only
    start: Start | None = None
    line: int


class OperatorUse(Node):
    """One operator of the hypergradient pipeline, as the program uses it."""
    name: str
    stage: str
    params: dict[str, Arg]    # every parameter, defaults filled in
    implied: bool = False     # NGD when no dynamics core is written
    line: int


class OperatorChain(Node):
    """The hypergradient pipeline: `hypergradient = PTT -> RAD`."""
    operators: list[OperatorUse]
    text: str                 # canonical form, e.g. "NGD -> PTT -> RAD"
    line: int


class Metric(Node):
    name: str
    expr: Expr
    text: str
    rebind: dict[str, str] = {}   # dataset -> dataset, e.g. meta-test tasks
    line: int


class Baseline(Node):
    """What the program is compared with: the lower level trained with the upper
    variables fixed at their initial values (empty grid), or at each grid value."""
    grid: dict[str, list[float]] = {}


class Run(Node):
    outer_steps: int
    eval_every: int
    seed: int
    device: str
    dtype: Literal["float32", "float64"]
    checkpoint_every: int | None = None   # outer steps between checkpoints; None: by wall time
    baseline: Baseline | None = None
    metrics: list[Metric]


class Program(Node):
    path: str
    imports: dict[str, str]   # alias -> "package.module:name"
    datasets: list[Dataset]
    upper: LevelDecl
    lower: LevelDecl
    hypergradient: OperatorChain
    run: Run


def written(value) -> str:
    """A declaration's argument as a program writes it: `train.features`, `Linear(64, 10)`, `[32, 32]`."""
    if isinstance(value, SizeRef):
        return f"{value.dataset}.{value.size}"
    if isinstance(value, LayerSpec):
        return call_text(value.name, value.args, value.kwargs)
    if isinstance(value, list):
        return "[" + ", ".join(written(v) for v in value) + "]"
    if isinstance(value, LearnedSetting):
        return value.text
    return repr(value) if isinstance(value, str) else str(value)


def written_settings(optimizer: Optimizer) -> dict:
    """An optimiser's arguments with the learned ones as written."""
    return {**optimizer.args, **optimizer.learned}


def call_text(name: str, args: list, kwargs: dict) -> str:
    return f"{name}({', '.join([written(a) for a in args] + [f'{k}={written(v)}' for k, v in kwargs.items()])})"


def nodes(tree):
    """Every IR node in `tree` (a node, or lists and dicts of them), parents first."""
    if isinstance(tree, Node):
        yield tree
        tree = list(tree.__dict__.values())
    if isinstance(tree, dict):
        tree = list(tree.values())
    if isinstance(tree, (list, tuple)):
        for item in tree:
            yield from nodes(item)


def references(expr) -> set[tuple[str, str]]:
    """(level or 'data', name) of every variable, model and dataset an expression uses."""
    found = set()
    for node in nodes(expr):
        if isinstance(node, (VarRef, ModelRef)):
            found.add((node.level, node.name))
        elif isinstance(node, (ParamRef, Apply)):
            found.add((node.level, node.model))
        elif isinstance(node, (DataRef, SizeRef)):
            found.add(("data", node.dataset))
    return found


for _model in (Apply, Call, UserCall, BinOp, Unary, Compare, ListOf, Index, LayerSpec, Objective, Metric, LearnedSetting):
    _model.model_rebuild()
