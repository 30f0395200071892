"""What a program can name without declaring it: functions, layers, variable
initialisers, data sources and optimisers. Tables of data; the resolver
checks calls against them and the engine gives each row its meaning.
Nothing here imports torch: `blodsl check` stays fast and torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass, field

ANY = ()  # a keyword that takes any constant


@dataclass(frozen=True)
class Signature:
    name: str
    summary: str
    min_args: int = 0
    max_args: int | None = None         # None: any number
    keywords: dict[str, tuple] = field(default_factory=dict)  # name -> allowed choices (ANY)
    required_keywords: tuple[str, ...] = ()

    def usage(self) -> str:
        return f"{self.name}: {self.summary}"


def _sig(name, summary, min_args=0, max_args=None, required=(), **keywords):
    return Signature(name, summary, min_args, max_args, keywords, tuple(required))


_REDUCTION = ("mean", "sum", "none")

# --- functions usable in objectives ----------------------------------------

FUNCTIONS: dict[str, Signature] = {s.name: s for s in (
    _sig("cross_entropy", "cross_entropy(logits, labels, reduction='mean')", 2, 2,
         reduction=_REDUCTION, label_smoothing=ANY),
    _sig("binary_cross_entropy", "binary_cross_entropy(logits, targets, reduction='mean')", 2, 2,
         reduction=_REDUCTION),
    _sig("mse", "mse(prediction, target, reduction='mean')", 2, 2, reduction=_REDUCTION),
    _sig("mae", "mae(prediction, target, reduction='mean')", 2, 2, reduction=_REDUCTION),
    _sig("mean", "mean(x, dim=None)", 1, 1, dim=ANY),
    _sig("sum", "sum(x, dim=None)", 1, 1, dim=ANY),
    _sig("sigmoid", "sigmoid(x)", 1, 1),
    _sig("exp", "exp(x)", 1, 1),
    _sig("log", "log(x)", 1, 1),
    _sig("tanh", "tanh(x)", 1, 1),
    _sig("relu", "relu(x)", 1, 1),
    _sig("softplus", "softplus(x)", 1, 1),
    _sig("abs", "abs(x)", 1, 1),
    _sig("sqrt", "sqrt(x)", 1, 1),
    _sig("softmax", "softmax(x, dim=-1)", 1, 1, dim=ANY),
    _sig("log_softmax", "log_softmax(x, dim=-1)", 1, 1, dim=ANY),
    _sig("clamp", "clamp(x, min=None, max=None)", 1, 1, min=ANY, max=ANY),
    _sig("sqnorm", "sqnorm(x or model): sum of squares of a tensor or of all a model's weights", 1, 1),
    _sig("norm", "norm(x or model): Euclidean norm of a tensor or of all a model's weights", 1, 1),
    _sig("sqdist", "sqdist(a, b): squared distance between two tensors or two models of one structure", 2, 2),
    _sig("mix", "mix(logits, [a, b, ...]): softmax(logits)-weighted sum of candidates", 2, 2),
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

_ACTIVATIONS = ("relu", "tanh", "sigmoid", "gelu")


@dataclass(frozen=True)
class Layer:
    signature: Signature
    parameters: tuple[str, ...] = ()   # names reachable as `net.weight`


def _layer(name, summary, positional=(), optional=0, parameters=(), **keywords):
    n = len(positional)
    return Layer(_sig(name, summary, n - optional, n, **keywords), parameters)


LAYERS: dict[str, Layer] = {layer.signature.name: layer for layer in (
    _layer("Linear", "Linear(in_features, out_features, bias=True)", ("in_features", "out_features"),
           parameters=("weight", "bias"), bias=(True, False)),
    _layer("MLP", "MLP(in_features, [hidden, ...], out_features, activation='relu')",
           ("in_features", "hidden", "out_features"), activation=_ACTIVATIONS, bias=(True, False)),
    _layer("Conv2d", "Conv2d(in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True)",
           ("in_channels", "out_channels", "kernel_size"), parameters=("weight", "bias"),
           stride=ANY, padding=ANY, bias=(True, False)),
    _layer("MaxPool2d", "MaxPool2d(kernel_size)", ("kernel_size",)),
    _layer("Flatten", "Flatten()"),
    _layer("ReLU", "ReLU()"),
    _layer("Tanh", "Tanh()"),
    _layer("Sigmoid", "Sigmoid()"),
    _layer("GELU", "GELU()"),
)}
SEQUENTIAL = _sig("Sequential", "Sequential(layer, layer, ...)", 1, None)

# --- variable initialisers ---------------------------------------------------

INITIALISERS: dict[str, Signature] = {s.name: s for s in (
    _sig("zeros", "zeros(dim, ...)"),
    _sig("ones", "ones(dim, ...)"),
    _sig("full", "full(dim, ..., value=v)", required=("value",), value=ANY),
    _sig("normal", "normal(dim, ..., mean=0, std=1)", mean=ANY, std=ANY),
    _sig("uniform", "uniform(dim, ..., low=0, high=1)", low=ANY, high=ANY),
)}

# `input()` in place of a dataset, a variable's initialiser or a model: bound from Python.
INPUT = _sig("input", "input(): a dataset, tensor or module supplied from Python at run time", 0, 0,
             fields=ANY)

# --- data sources ------------------------------------------------------------


@dataclass(frozen=True)
class DataSource:
    signature: Signature
    fields: tuple[str, ...]              # tensors: train.x
    sizes: tuple[str, ...]               # numbers usable as dimensions: train.features
    tasks: bool = False                  # yields batches of few-shot tasks
    path_arg: bool = False               # first positional argument is a file or folder
    default_split: tuple[float, ...] = ()


_TABLE_SIZES = ("n", "features", "classes")
_COMMON = dict(split=ANY, seed=ANY, batch=ANY, label_noise=ANY)

DATA_SOURCES: dict[str, DataSource] = {d.signature.name: d for d in (
    DataSource(_sig("digits", "digits(split=[0.5, 0.25, 0.25], label_noise=0, seed=0): scikit-learn's "
                    "8x8 digits; label_noise flips that fraction of the first split's labels", 0, 0,
                    standardize=(True, False), **_COMMON),
               ("x", "y", "y_clean", "noisy"), _TABLE_SIZES, default_split=(0.5, 0.25, 0.25)),
    DataSource(_sig("classification", "classification(n=1000, features=20, informative=features, classes=2, split=..., seed=0): "
                    "Gaussian clusters; only the first `informative` features carry signal",
                    0, 0, n=ANY, features=ANY, informative=ANY, classes=ANY, separation=ANY, **_COMMON),
               ("x", "y", "y_clean", "noisy"), _TABLE_SIZES, default_split=(0.6, 0.2, 0.2)),
    DataSource(_sig("regression", "regression(n=1000, features=20, noise=0.1, split=..., seed=0)",
                    0, 0, n=ANY, features=ANY, noise=ANY, split=ANY, seed=ANY, batch=ANY),
               ("x", "y"), ("n", "features"), default_split=(0.6, 0.2, 0.2)),
    DataSource(_sig("sinusoid", "sinusoid(tasks=25, shots=10, queries=10, amplitude=[0.1, 5], "
                    "phase=[0, 3.1416], x_range=[-5, 5], seed=0): a fresh batch of few-shot "
                    "regression tasks every outer step", 0, 0,
                    tasks=ANY, shots=ANY, queries=ANY, amplitude=ANY, phase=ANY, x_range=ANY, seed=ANY),
               ("support_x", "support_y", "query_x", "query_y"), ("tasks", "shots", "queries"), tasks=True),
    DataSource(_sig("npz", "npz('file.npz', x='x', y='y', split=...)", 1, 1, x=ANY, y=ANY, **_COMMON),
               ("x", "y"), _TABLE_SIZES, path_arg=True),
    DataSource(_sig("pt", "pt('file.pt', x='x', y='y', split=...): a torch.save'd dict of tensors",
                    1, 1, x=ANY, y=ANY, **_COMMON),
               ("x", "y"), _TABLE_SIZES, path_arg=True),
    DataSource(_sig("csv", "csv('file.csv', target='label', split=...): numeric columns; target is "
                    "a column name or index (default: the last)", 1, 1, target=ANY, header=(True, False),
                    **_COMMON),
               ("x", "y"), _TABLE_SIZES, path_arg=True),
    DataSource(_sig("idx", "idx('folder', split=...): MNIST-format IDX files (images and labels)",
                    1, 1, **_COMMON),
               ("x", "y"), _TABLE_SIZES, path_arg=True),
)}

# --- optimisers --------------------------------------------------------------
# Upper level: any torch.optim optimiser; its keyword arguments as of torch 2.13
# (implementation switches such as foreach/fused left out).

TORCH_OPTIMIZERS: dict[str, tuple[str, ...]] = {
    "ASGD": ("lr", "lambd", "alpha", "t0", "weight_decay", "maximize"),
    "Adadelta": ("lr", "rho", "eps", "weight_decay", "maximize"),
    "Adafactor": ("lr", "beta2_decay", "eps", "d", "weight_decay", "maximize"),
    "Adagrad": ("lr", "lr_decay", "weight_decay", "initial_accumulator_value", "eps", "maximize"),
    "Adam": ("lr", "betas", "eps", "weight_decay", "amsgrad", "maximize", "decoupled_weight_decay"),
    "AdamW": ("lr", "betas", "eps", "weight_decay", "amsgrad", "maximize"),
    "Adamax": ("lr", "betas", "eps", "weight_decay", "maximize"),
    "LBFGS": ("lr", "max_iter", "max_eval", "tolerance_grad", "tolerance_change", "history_size",
              "line_search_fn"),
    "NAdam": ("lr", "betas", "eps", "weight_decay", "momentum_decay", "decoupled_weight_decay", "maximize"),
    "RAdam": ("lr", "betas", "eps", "weight_decay", "decoupled_weight_decay", "maximize"),
    "RMSprop": ("lr", "alpha", "eps", "weight_decay", "momentum", "centered", "maximize"),
    "Rprop": ("lr", "etas", "step_sizes", "maximize"),
    "SGD": ("lr", "momentum", "dampening", "weight_decay", "nesterov", "maximize"),
    "SparseAdam": ("lr", "betas", "eps", "maximize"),
}

# Lower level: optimisers whose steps blodsl differentiates through, with defaults.
INNER_OPTIMIZERS: dict[str, dict[str, object]] = {
    "SGD": {"lr": 0.001, "momentum": 0.0, "weight_decay": 0.0, "nesterov": False},
    "Adam": {"lr": 0.001, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0},
}


# What optimiser arguments must be; an argument not named here takes any constant.
_FLAGS = ("nesterov", "amsgrad", "maximize", "centered", "decoupled_weight_decay", "differentiable")
_NON_NEGATIVE = ("momentum", "weight_decay", "dampening", "eps", "lr_decay", "rho", "alpha", "lambd",
                 "initial_accumulator_value", "momentum_decay", "t0")


def optimizer_arg_problem(key: str, v) -> str | None:
    """Why `v` cannot be optimiser argument `key`, or None."""
    number = isinstance(v, (int, float)) and not isinstance(v, bool) and abs(v) != float("inf") and v == v
    if key == "lr":
        return None if number and v > 0 else "must be a number > 0"
    if key in _FLAGS:
        return None if isinstance(v, bool) else "must be True or False"
    if key in _NON_NEGATIVE:
        return None if number and v >= 0 else "must be a number >= 0"
    if key == "betas":
        ok = isinstance(v, list) and len(v) == 2 and all(
            isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1 for b in v)
        return None if ok else "must be two numbers in [0, 1), e.g. [0.9, 0.999]"
    return None


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
    if name in ("input", "from"):
        return "keyword"
    return None
