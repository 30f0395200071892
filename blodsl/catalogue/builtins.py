"""What a program can name without declaring it: functions, layers, variable
initialisers, data sources and optimisers. Tables of data, each keyword argument
a parameter row (params.py); the resolver checks calls against them and the
runtime gives each row its meaning.
Nothing here imports torch: `blodsl check` stays fast and torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from .params import REQUIRED, FromProgram, Param, anything, choice, count, flag, nonnegative, positive, rows


@dataclass(frozen=True)
class Signature:
    name: str
    summary: str
    min_args: int = 0
    max_args: int | None = None         # None: any number
    keywords: dict[str, Param] = field(default_factory=dict)


def _sig(name, summary, min_args=0, max_args=None, *keywords: Param):
    return Signature(name, summary, min_args, max_args, rows(*keywords))


def _reduction():
    return choice("reduction", "mean", "sum", "none", quoted=True)


# --- functions usable in objectives ----------------------------------------

FUNCTIONS: dict[str, Signature] = {s.name: s for s in (
    _sig("cross_entropy", "cross_entropy(logits, labels, reduction='mean')", 2, 2,
         _reduction(), Param("label_smoothing", float, low=0, high=1)),
    _sig("binary_cross_entropy", "binary_cross_entropy(logits, targets, reduction='mean')", 2, 2, _reduction()),
    _sig("mse", "mse(prediction, target, reduction='mean')", 2, 2, _reduction()),
    _sig("mae", "mae(prediction, target, reduction='mean')", 2, 2, _reduction()),
    _sig("mean", "mean(x, dim=None)", 1, 1, anything("dim")),
    _sig("sum", "sum(x, dim=None)", 1, 1, anything("dim")),
    _sig("sigmoid", "sigmoid(x)", 1, 1),
    _sig("exp", "exp(x)", 1, 1),
    _sig("log", "log(x)", 1, 1),
    _sig("tanh", "tanh(x)", 1, 1),
    _sig("relu", "relu(x)", 1, 1),
    _sig("softplus", "softplus(x)", 1, 1),
    _sig("abs", "abs(x)", 1, 1),
    _sig("sqrt", "sqrt(x)", 1, 1),
    _sig("softmax", "softmax(x, dim=-1)", 1, 1, anything("dim")),
    _sig("log_softmax", "log_softmax(x, dim=-1)", 1, 1, anything("dim")),
    _sig("clamp", "clamp(x, min=None, max=None)", 1, 1, anything("min"), anything("max")),
    _sig("sqnorm", "sqnorm(x or model): sum of squares of a tensor or of all a model's weights", 1, 1),
    _sig("norm", "norm(x or model): Euclidean norm of a tensor or of all a model's weights", 1, 1),
    _sig("sqdist", "sqdist(a, b): squared distance between two tensors or two models of one structure", 2, 2),
    _sig("mix", "mix(logits, [a, b, ...]): softmax(logits)-weighted sum of candidates", 2, 2),
    _sig("reshape", "reshape(x, [dim, ...]): the same values in another shape; -1 stands for what is left, "
         "e.g. reshape(train.x, [-1, 1, 8, 8])", 2, 2),
    _sig("flatten", "flatten(x, start_dim=1): the dimensions from start_dim on as one; the first, the samples, "
         "is kept", 1, 1, Param("start_dim", int)),
)}

# Functions that accept a model (meaning all its weights) as their argument.
TAKES_MODEL = {"sqnorm", "norm", "sqdist"}

# Not differentiable: only in `metric` declarations.
METRICS: dict[str, Signature] = {s.name: s for s in (
    _sig("accuracy", "accuracy(logits, labels): fraction of argmax predictions that match", 2, 2),
    _sig("f1", "f1(flags, truth): F1 score of boolean flags against the true flags", 2, 2),
    _sig("precision", "precision(flags, truth)", 2, 2),
    _sig("recall", "recall(flags, truth)", 2, 2),
)}

# --- layers and models -----------------------------------------------------

_ACTIVATION = choice("activation", "relu", "tanh", "sigmoid", "gelu", quoted=True)


@dataclass(frozen=True)
class Layer:
    signature: Signature
    parameters: tuple[str, ...] = ()   # names reachable as `net.weight`
    positional: tuple[Param, ...] = ()  # what each positional argument must be, where written as a constant
    widths: tuple[int, int] | None = None  # which positional arguments are its input and output widths
    axis: int = -1                     # the dimension those widths size (a Conv2d's channels: -3)
    elementwise: bool = False          # keeps its input's shape (an activation)


# A layer's sizes: whole numbers (or dataset sizes, checked when the data is loaded).
_LAYER_ARGS = rows(*(count(name) for name in ("in_features", "out_features", "in_channels", "out_channels",
                                               "kernel_size")),
                   Param("hidden", list, low=1, item=int, words="a list of whole numbers >= 1, e.g. [32, 32]"))


def _layer(name, summary, positional=(), parameters=(), *keywords: Param, **shape):
    n = len(positional)
    return Layer(_sig(name, summary, n, n, *keywords), parameters, tuple(_LAYER_ARGS[a] for a in positional), **shape)


LAYERS: dict[str, Layer] = {layer.signature.name: layer for layer in (
    _layer("Linear", "Linear(in_features, out_features, bias=True)", ("in_features", "out_features"),
           ("weight", "bias"), flag("bias"), widths=(0, 1)),
    _layer("MLP", "MLP(in_features, [hidden, ...], out_features, activation='relu')",
           ("in_features", "hidden", "out_features"), (), _ACTIVATION, flag("bias"), widths=(0, 2)),
    _layer("Conv2d", "Conv2d(in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True)",
           ("in_channels", "out_channels", "kernel_size"), ("weight", "bias"),
           anything("stride"), anything("padding"), flag("bias"), widths=(0, 1), axis=-3),
    _layer("MaxPool2d", "MaxPool2d(kernel_size)", ("kernel_size",)),
    _layer("Flatten", "Flatten()"),
    *(_layer(name, f"{name}()", elementwise=True) for name in ("ReLU", "Tanh", "Sigmoid", "GELU")),
)}
SEQUENTIAL = _sig("Sequential", "Sequential(layer, layer, ...)", 1, None)

# --- variable initialisers ---------------------------------------------------

INITIALISERS: dict[str, Signature] = {s.name: s for s in (
    _sig("zeros", "zeros(dim, ...)"),
    _sig("ones", "ones(dim, ...)"),
    _sig("full", "full(dim, ..., value=v)", 0, None, Param("value", float, REQUIRED)),
    _sig("normal", "normal(dim, ..., mean=0, std=1)", 0, None, Param("mean", float), nonnegative("std")),
    _sig("uniform", "uniform(dim, ..., low=0, high=1)", 0, None, Param("low", float), Param("high", float)),
)}

# `var lrs = like(net, value=0.01)`: one number per weight of a model (per-weight inner learning rates).
LIKE = _sig("like", "like(model, value=v): one number per weight of a model, each starting at v", 1, 1,
            Param("value", float, 0.0))

# `input()` in place of a dataset, a variable's initialiser or a model: bound from Python. Its
# keywords describe a dataset; a variable's or model's input() takes none.
INPUT = _sig("input", "input(): a dataset, tensor or module supplied from Python at run time; a dataset's may "
             "say fields=[\"x\", \"y\"], labels=True or False (default: by y's dtype) and tasks=True (a batch "
             "of few-shot tasks)", 0, 0,
             Param("fields", list, item=str, pattern=r"[A-Za-z_]\w*", words='a list of names, e.g. fields=["x", "y"]'),
             flag("labels"), flag("tasks"))
INPUT_VALUE = replace(INPUT, keywords={})

# --- data sources ------------------------------------------------------------


@dataclass(frozen=True)
class DataSource:
    signature: Signature
    fields: tuple[str, ...]              # tensors: train.x
    sizes: tuple[str, ...]               # numbers usable as dimensions: train.features
    tasks: bool = False                  # yields batches of few-shot tasks
    path_arg: bool = False               # first positional argument is a file or folder
    default_split: tuple[float, ...] = ()
    # when `x` holds images (N x C x H x W), with the sizes channels, height and width:
    # "never", "always", "flag" (with images=True) or "file" (when the file's array does)
    images: str = "never"


_TABLE_SIZES = ("n", "features", "classes")
IMAGE_SIZES = ("channels", "height", "width")
TASK_SIZES = ("tasks", "shots", "queries")
TASK_FIELDS = ("support_x", "support_y", "query_x", "query_y")

# Every table's field of sample numbers: `w[train.index]` reads the weights of a minibatch's samples.
INDEX = "index"

# What each data-source argument must be, whichever source takes it; a loader owns the defaults.
DATA_ARGS = rows(
    Param("split", list, low=0, low_open=True, total_at_most=1,
          words="a list of positive fractions that add up to at most 1"),
    Param("label_noise", float, low=0, high=1, high_open=True, words="a fraction in [0, 1)"),
    nonnegative("seed", type=int),
    *(count(name) for name in ("n", "features", "informative", "classes", "tasks", "shots", "queries")),
    *(Param(name, list, length=2, ordered=True, words="a range [low, high]") for name in ("amplitude", "phase", "x_range")),
    nonnegative("noise"), nonnegative("separation"),
    flag("standardize"), flag("header"), flag("images"), flag("labels"),
    anything("x"), anything("y"), anything("target"),
)


def _source(name, summary, min_args, *args: str):
    return _sig(name, summary, min_args, min_args, *(DATA_ARGS[a] for a in args))


_COMMON = ("split", "seed", "label_noise")
_FILE = ("labels", *_COMMON)   # a file's y: class labels or regression targets, by its dtype unless labels= says

DATA_SOURCES: dict[str, DataSource] = {d.signature.name: d for d in (
    DataSource(_source("digits", "digits(split=[0.5, 0.25, 0.25], label_noise=0, seed=0, images=False): "
                       "scikit-learn's 8x8 digits, x flat (N x 64) or, with images=True, N x 1 x 8 x 8; "
                       "label_noise flips that fraction of the first split's labels", 0,
                       "standardize", "images", *_COMMON),
               ("x", "y", "y_clean", "noisy"), _TABLE_SIZES + IMAGE_SIZES, default_split=(0.5, 0.25, 0.25),
               images="flag"),
    DataSource(_source("classification", "classification(n=1000, features=20, informative=features, classes=2, "
                       "split=..., seed=0): Gaussian clusters; only the first `informative` features carry signal",
                       0, "n", "features", "informative", "classes", "separation", *_COMMON),
               ("x", "y", "y_clean", "noisy"), _TABLE_SIZES, default_split=(0.6, 0.2, 0.2)),
    DataSource(_source("regression", "regression(n=1000, features=20, noise=0.1, split=..., seed=0)",
                       0, "n", "features", "noise", "split", "seed"),
               ("x", "y"), ("n", "features"), default_split=(0.6, 0.2, 0.2)),
    DataSource(_source("sinusoid", "sinusoid(tasks=25, shots=10, queries=10, amplitude=[0.1, 5], "
                       "phase=[0, 3.1416], x_range=[-5, 5], seed=0): a fresh batch of few-shot "
                       "regression tasks every outer step", 0,
                       "tasks", "shots", "queries", "amplitude", "phase", "x_range", "seed"),
               TASK_FIELDS, TASK_SIZES, tasks=True),
    DataSource(_source("npz", "npz('file.npz', x='x', y='y', labels=by dtype, split=...): arrays of any shape; "
                       "N x H x W images gain a channel axis", 1, "x", "y", *_FILE),
               ("x", "y"), _TABLE_SIZES + IMAGE_SIZES, path_arg=True, images="file"),
    DataSource(_source("pt", "pt('file.pt', x='x', y='y', labels=by dtype, split=...): a torch.save'd dict of "
                       "tensors, shaped as npz's", 1, "x", "y", *_FILE),
               ("x", "y"), _TABLE_SIZES + IMAGE_SIZES, path_arg=True, images="file"),
    DataSource(_source("csv", "csv('file.csv', target='label', labels=..., split=...): numeric columns; target "
                       "is a column name or index (default: the last), class labels when every value in it is "
                       "written as a whole number", 1, "target", "header", *_FILE),
               ("x", "y"), _TABLE_SIZES, path_arg=True),
    DataSource(_source("idx", "idx('folder', split=...): MNIST-format IDX files, images as N x 1 x H x W and "
                       "their labels", 1, *_FILE),
               ("x", "y"), _TABLE_SIZES + IMAGE_SIZES, path_arg=True, images="always"),
)}


def dataset_members(source: str, args: dict) -> tuple[list[str], list[str]]:
    """A dataset's fields and sizes, as its source and the call's constant arguments make them."""
    if source == "input":
        tasks = bool(args.get("tasks"))
        fields = args.get("fields")
        fields = fields if isinstance(fields, list) and fields else TASK_FIELDS if tasks else ("x", "y")
        return [str(f) for f in fields], list(TASK_SIZES if tasks else _TABLE_SIZES + IMAGE_SIZES)
    row = DATA_SOURCES[source]
    images = row.images != "never" and (row.images != "flag" or bool(args.get("images")))
    return list(row.fields), [s for s in row.sizes if images or s not in IMAGE_SIZES]


# --- optimisers --------------------------------------------------------------
# What optimiser arguments must be; an argument not named here takes any constant.

OPTIMIZER_ARGS = rows(
    positive("lr"),
    *(flag(name) for name in ("nesterov", "amsgrad", "maximize", "centered", "decoupled_weight_decay")),
    *(nonnegative(name) for name in ("momentum", "weight_decay", "dampening", "eps", "lr_decay", "rho", "alpha",
                                     "lambd", "initial_accumulator_value", "momentum_decay", "t0")),
    Param("betas", list, low=0, high=1, high_open=True, length=2, words="two numbers in [0, 1), e.g. [0.9, 0.999]"),
)


def _optimizer(*names: str, **defaults) -> dict[str, Param]:
    return {n: replace(OPTIMIZER_ARGS.get(n) or anything(n), default=defaults.get(n)) for n in names}


# Upper level: any torch.optim optimiser; its keyword arguments as of torch 2.13
# (implementation switches such as foreach/fused left out).
TORCH_OPTIMIZERS: dict[str, dict[str, Param]] = {
    "ASGD": _optimizer("lr", "lambd", "alpha", "t0", "weight_decay", "maximize"),
    "Adadelta": _optimizer("lr", "rho", "eps", "weight_decay", "maximize"),
    "Adafactor": _optimizer("lr", "beta2_decay", "eps", "d", "weight_decay", "maximize"),
    "Adagrad": _optimizer("lr", "lr_decay", "weight_decay", "initial_accumulator_value", "eps", "maximize"),
    "Adam": _optimizer("lr", "betas", "eps", "weight_decay", "amsgrad", "maximize", "decoupled_weight_decay"),
    "AdamW": _optimizer("lr", "betas", "eps", "weight_decay", "amsgrad", "maximize"),
    "Adamax": _optimizer("lr", "betas", "eps", "weight_decay", "maximize"),
    "NAdam": _optimizer("lr", "betas", "eps", "weight_decay", "momentum_decay", "decoupled_weight_decay",
                        "maximize"),
    "RAdam": _optimizer("lr", "betas", "eps", "weight_decay", "decoupled_weight_decay", "maximize"),
    "RMSprop": _optimizer("lr", "alpha", "eps", "weight_decay", "momentum", "centered", "maximize"),
    "Rprop": _optimizer("lr", "etas", "step_sizes", "maximize"),
    "SGD": _optimizer("lr", "momentum", "dampening", "weight_decay", "nesterov", "maximize"),
}

# torch.optim optimisers that cannot take a hypergradient step, and why.
NOT_UPPER_OPTIMIZERS = {
    "LBFGS": "it re-evaluates the upper objective through a closure, and a hypergradient step has none",
    "SparseAdam": "it takes sparse gradients, and a hypergradient is dense",
}

# Those that keep a momentum (or Adam's betas) a cyclic scheduler can cycle (torch's own test).
HAS_MOMENTUM = {name for name, args in TORCH_OPTIMIZERS.items() if "momentum" in args or "betas" in args}

# Lower level: optimisers whose steps blodsl differentiates through, with the defaults the IR spells out.
# torch's defaults; no maximize or amsgrad.
_ADAM = {"betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0}
INNER_OPTIMIZERS: dict[str, dict[str, Param]] = {
    "SGD": _optimizer("lr", "momentum", "dampening", "weight_decay", "nesterov",
                      lr=0.001, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False),
    "Adam": _optimizer("lr", "betas", "eps", "weight_decay", **_ADAM, lr=0.001),
    "AdamW": _optimizer("lr", "betas", "eps", "weight_decay", **{**_ADAM, "weight_decay": 0.01}, lr=0.001),
    "Adamax": _optimizer("lr", "betas", "eps", "weight_decay", **_ADAM, lr=0.002),
    "RMSprop": _optimizer("lr", "alpha", "eps", "weight_decay", "momentum", "centered",
                          lr=0.01, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False),
    "Adagrad": _optimizer("lr", "lr_decay", "weight_decay", "initial_accumulator_value", "eps",
                          lr=0.01, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0, eps=1e-10),
    "Adadelta": _optimizer("lr", "rho", "eps", "weight_decay", lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.0),
    "ASGD": _optimizer("lr", "lambd", "alpha", "t0", "weight_decay",
                       lr=0.01, lambd=1e-4, alpha=0.75, t0=1e6, weight_decay=0.0),
}

# Inner optimisers whose weight decay shrinks the weights apart from the gradient (not an L2 term),
# so their fixed point is not a stationary point of the lower objective.
DECOUPLED_DECAY = {"AdamW"}


# --- learning-rate schedulers of the upper level --------------------------------
# Any torch.optim.lr_scheduler class a call of numbers builds, stepped once per outer step
# (ReduceLROnPlateau on that step's upper objective). Keyword arguments as of torch 2.13, less
# last_epoch (a resumed run restores its schedule from the saved state) and one list per
# parameter group (the upper level is one group).

def _scheduler(name, summary, *keywords: Param) -> Signature:
    return _sig(name, summary, 0, 0, *keywords)


_CYCLE_MOMENTUM = (flag("cycle_momentum"), nonnegative("base_momentum"), nonnegative("max_momentum"))

SCHEDULERS: dict[str, Signature] = {s.name: s for s in (
    _scheduler("StepLR", "StepLR(step_size=..., gamma=0.1): the lr times gamma every step_size outer steps",
               count("step_size", REQUIRED), positive("gamma")),
    _scheduler("MultiStepLR", "MultiStepLR(milestones=[...], gamma=0.1): the lr times gamma at each milestone",
               Param("milestones", list, REQUIRED, low=1, item=int, increasing=True,
                     words="a list of increasing whole numbers >= 1, e.g. [30, 80]"), positive("gamma")),
    _scheduler("ExponentialLR", "ExponentialLR(gamma=...): the lr times gamma every outer step",
               positive("gamma", REQUIRED)),
    _scheduler("CosineAnnealingLR", "CosineAnnealingLR(T_max=..., eta_min=0): half a cosine from the lr down "
               "to eta_min over T_max outer steps", count("T_max", REQUIRED), nonnegative("eta_min")),
    _scheduler("CosineAnnealingWarmRestarts", "CosineAnnealingWarmRestarts(T_0=..., T_mult=1, eta_min=0): "
               "cosine annealing restarted after T_0, then T_0 * T_mult, ... outer steps",
               count("T_0", REQUIRED), count("T_mult"), nonnegative("eta_min")),
    _scheduler("LinearLR", "LinearLR(start_factor=1/3, end_factor=1, total_iters=5): the lr's factor moves "
               "linearly from start_factor to end_factor", Param("start_factor", float, low=0, low_open=True, high=1),
               Param("end_factor", float, low=0, high=1), count("total_iters")),
    _scheduler("ConstantLR", "ConstantLR(factor=1/3, total_iters=5): the lr times factor for total_iters outer steps",
               Param("factor", float, low=0, high=1), count("total_iters")),
    _scheduler("PolynomialLR", "PolynomialLR(total_iters=5, power=1): the lr decays polynomially to 0",
               count("total_iters"), nonnegative("power")),
    _scheduler("OneCycleLR", "OneCycleLR(max_lr=..., total_steps=the run's outer steps, pct_start=0.3, ...): "
               "up to max_lr, then down far below the start", positive("max_lr", REQUIRED),
               count("total_steps", FromProgram("outer_steps")), Param("pct_start", float, low=0, high=1),
               choice("anneal_strategy", "cos", "linear", quoted=True), *_CYCLE_MOMENTUM,
               positive("div_factor"), positive("final_div_factor"), flag("three_phase")),
    _scheduler("CyclicLR", "CyclicLR(base_lr=..., max_lr=..., step_size_up=2000, mode='triangular', ...): "
               "the lr cycles between base_lr and max_lr", positive("base_lr", REQUIRED), positive("max_lr", REQUIRED),
               count("step_size_up"), count("step_size_down"),
               choice("mode", "triangular", "triangular2", "exp_range", quoted=True), positive("gamma"),
               *_CYCLE_MOMENTUM),
    _scheduler("ReduceLROnPlateau", "ReduceLROnPlateau(factor=0.1, patience=10, ...): the lr times factor once "
               "the upper objective has not improved for patience outer steps",
               Param("factor", float, low=0, low_open=True, high=1, high_open=True),
               nonnegative("patience", type=int), nonnegative("threshold"),
               choice("threshold_mode", "rel", "abs", quoted=True), nonnegative("cooldown", type=int),
               nonnegative("min_lr"), nonnegative("eps")),
)}

# torch.optim.lr_scheduler classes a program cannot build, and why.
_TAKES_FUNCTION = "it takes a Python function of the step (lr_lambda), which a .blo file cannot write"
_TAKES_SCHEDULERS = "it chains scheduler objects, which a .blo file cannot build"
NOT_SCHEDULERS = {"LambdaLR": _TAKES_FUNCTION, "MultiplicativeLR": _TAKES_FUNCTION,
                  "SequentialLR": _TAKES_SCHEDULERS, "ChainedScheduler": _TAKES_SCHEDULERS}


def builtin_kind(name: str) -> str | None:
    """What a built-in name is, or None for a name blodsl does not define."""
    if name in FUNCTIONS:
        return "function"
    if name in METRICS:
        return "metric"
    if name in LAYERS or name == "Sequential":
        return "layer"
    if name in INITIALISERS:
        return "initialiser"
    if name in DATA_SOURCES:
        return "data source"
    if name in TORCH_OPTIMIZERS:
        return "optimiser"
    if name in SCHEDULERS:
        return "scheduler"
    if name in ("input", "from", "like"):
        return "keyword"
    return None
