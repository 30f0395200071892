"""Datasets: the built-in sources, file loaders and tensors bound from Python.

A source returns one `Table` per part of its `split` (a seeded permutation
cut in order). Sizes (`n`, `features`, `classes`, and for images N x C x H x W
`channels`, `height`, `width`) are what programs use as dimensions; `classes`
is counted over the whole dataset, before splitting. A target `y` is class
labels when its dtype is an integer one (or the source says labels=True) and a
regression target otherwise; labels are never renumbered.
Sinusoid, and a task batch bound from Python, are `TaskSource`s: one batch of
few-shot tasks per outer step.
"""

from __future__ import annotations

import gzip
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..catalogue.builtins import IMAGE_SIZES


class DataError(Exception):
    """A dataset that cannot be loaded; the message says which and why."""


# Why a dataset may lack a size a program names (the checker cannot tell before the data is loaded).
NO_SIZE_BECAUSE = {"classes": " (its y holds regression targets: a floating y does unless the source says labels=True)",
                   **dict.fromkeys(IMAGE_SIZES, " (its x is not images, N x C x H x W)")}


@dataclass
class Table:
    fields: dict[str, torch.Tensor]
    sizes: dict[str, int] = field(default_factory=dict)

    def to(self, device, dtype) -> "Table":
        return Table({k: _cast(v, device, dtype) for k, v in self.fields.items()}, self.sizes)


def _cast(t: torch.Tensor, device, dtype) -> torch.Tensor:
    return t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype)


def _table(x: torch.Tensor, y: torch.Tensor, classes: int | None, **extra) -> Table:
    sizes = {"n": x.shape[0], "features": math.prod(x.shape[1:])}
    if classes is not None:
        sizes["classes"] = classes
    if x.dim() == 4:
        sizes.update(zip(IMAGE_SIZES, x.shape[1:]))
    return Table({"x": x, "y": y, **extra}, sizes)


def _targets(y: torch.Tensor, labels: bool | None) -> tuple[torch.Tensor, int | None]:
    """(y, classes): class labels 0..classes-1, or regression targets (classes None). Unless
    `labels` says, an integer (or boolean) dtype means labels and a floating one regression:
    whole-valued floats are not guessed to be labels, and nothing is renumbered."""
    if labels is None:
        labels = not y.is_floating_point()
    if not labels:
        return _floating(y), None
    if y.dim() != 1:
        raise DataError(f"class labels are one number per sample, but y has shape {list(y.shape)}")
    if y.is_floating_point() and not bool(torch.all(y == y.round())):
        raise DataError("labels=True, but y holds values that are not whole numbers "
                        f"(e.g. {y[y != y.round()][0].item():g})")
    y = y.long()
    low, high = int(y.min()), int(y.max())
    if low < 0:
        raise DataError(f"class labels must be 0, 1, ..., classes - 1, but y holds labels from {low} to {high}: "
                        "renumber them, or pass labels=False if y holds regression targets")
    return y, high + 1


def _floating(t: torch.Tensor) -> torch.Tensor:
    # keep float64 data float64: the run's dtype is applied once, when the table is moved
    return t if t.is_floating_point() else t.to(torch.get_default_dtype())


def split_table(x, y, split, seed, label_noise=0.0, standardize=False, labels=None) -> list[Table]:
    """Cut (x, y) into parts; flip `label_noise` of the first part's labels."""
    x = _floating(x)
    if len(x) != len(y):
        raise DataError(f"the inputs have {len(x)} rows but the targets {len(y)}")
    y, classes = _targets(y, labels)
    n = x.shape[0]
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=generator)
    sizes = [int(math.floor(p * n)) for p in split]
    if min(sizes) == 0:
        raise DataError(f"split {list(split)} of {n} samples leaves a part empty")
    parts, start = [], 0
    for size in sizes:
        parts.append(order[start:start + size])
        start += size
    if standardize:
        first = x[parts[0]]
        std = first.std(0)
        # a feature constant in the first part (a blank pixel) is only centred: dividing by its
        # zero spread would blow up the other parts, where it may vary
        x = (x - first.mean(0)) / torch.where(std > 1e-6, std, torch.ones_like(std))
    tables = []
    for i, idx in enumerate(parts):
        xi, yi = x[idx], y[idx]
        noisy = torch.zeros(len(idx), dtype=torch.bool)
        if i == 0 and label_noise:
            if classes is None:
                raise DataError("label_noise needs class labels, and y holds regression targets")
            flip = torch.randperm(len(idx), generator=generator)[:round(label_noise * len(idx))]
            noisy[flip] = True
            shift = torch.randint(1, classes, (len(flip),), generator=generator)
            yi = yi.clone()
            yi[flip] = (yi[flip] + shift) % classes
        extra = {"y_clean": y[idx], "noisy": noisy} if classes is not None else {}
        tables.append(_table(xi, yi, classes, **extra))
    return tables


# --- built-in sources -----------------------------------------------------------------


def digits(split=(0.5, 0.25, 0.25), label_noise=0.0, seed=0, standardize=True, images=False):
    from sklearn.datasets import load_digits  # ships with scikit-learn: no download

    d = load_digits()
    x = torch.tensor(d.images).unsqueeze(1) if images else torch.tensor(d.data)   # N x 1 x 8 x 8, or N x 64
    return split_table(x, torch.tensor(d.target), split, seed, label_noise, standardize)


def classification(n=1000, features=20, informative=None, classes=2, separation=1.0,
                   split=(0.6, 0.2, 0.2), label_noise=0.0, seed=0, standardize=False):
    informative = features if informative is None else min(informative, features)
    g = torch.Generator().manual_seed(seed)
    centres = separation * torch.randn(classes, informative, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    x = torch.randn(n, features, generator=g)
    x[:, :informative] += centres[y]
    return split_table(x, y, split, seed, label_noise, standardize)


def regression(n=1000, features=20, noise=0.1, split=(0.6, 0.2, 0.2), seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=g)
    w = torch.randn(features, generator=g)
    y = x @ w + noise * torch.randn(n, generator=g)
    return split_table(x, y, split, seed)


class TaskSource:
    """Few-shot tasks: batch(k) is outer step k's, each field with a leading dimension of `tasks`."""
    tasks: int
    sizes: dict[str, int]

    def batch(self, k: int) -> Table:
        raise NotImplementedError


@dataclass
class Sinusoid(TaskSource):
    """Few-shot sinusoid tasks y = a sin(x - p); batch(k) is the same for the same k."""
    tasks: int = 25
    shots: int = 10
    queries: int = 10
    amplitude: tuple = (0.1, 5.0)
    phase: tuple = (0.0, math.pi)
    x_range: tuple = (-5.0, 5.0)
    seed: int = 0

    @property
    def sizes(self) -> dict[str, int]:
        return {"tasks": self.tasks, "shots": self.shots, "queries": self.queries}

    def batch(self, k: int) -> Table:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + k)

        def uniform(shape, low_high):
            low, high = low_high
            return low + (high - low) * torch.rand(shape, generator=g)

        a = uniform((self.tasks, 1, 1), self.amplitude)
        p = uniform((self.tasks, 1, 1), self.phase)
        xs = uniform((self.tasks, self.shots + self.queries, 1), self.x_range)
        ys = a * torch.sin(xs - p)
        s = self.shots
        return Table({"support_x": xs[:, :s], "support_y": ys[:, :s],
                      "query_x": xs[:, s:], "query_y": ys[:, s:]}, self.sizes)


def sinusoid(**args) -> Sinusoid:
    return Sinusoid(**{k: tuple(v) if isinstance(v, list) else v for k, v in args.items()})


# --- files the user has ----------------------------------------------------------------


def _open(path: Path):
    if not path.exists():
        raise DataError(f"'{path}' does not exist")
    return path


def _channels(x: torch.Tensor) -> torch.Tensor:
    """N x H x W images as N x 1 x H x W, the shape Conv2d takes; any other shape as it is."""
    return x.unsqueeze(1) if x.dim() == 3 else x


def _from_file(path, x, y, labels, split, seed, label_noise) -> list[Table]:
    try:
        return split_table(_channels(x), y, split, seed, label_noise, labels=labels)
    except DataError as e:
        raise DataError(f"'{path}': {e}") from None


def npz(path, x="x", y="y", split=(1.0,), seed=0, label_noise=0.0, labels=None):
    import numpy as np

    with np.load(_open(Path(path))) as arrays:
        missing = [k for k in (x, y) if k not in arrays.files]
        if missing:
            raise DataError(f"'{path}' has no array {missing[0]!r}; it holds {', '.join(arrays.files)}")
        return _from_file(path, torch.from_numpy(arrays[x]), torch.from_numpy(arrays[y]), labels, split, seed,
                          label_noise)


def pt(path, x="x", y="y", split=(1.0,), seed=0, label_noise=0.0, labels=None):
    saved = torch.load(_open(Path(path)), weights_only=True)
    if not isinstance(saved, dict) or x not in saved or y not in saved:
        held = ", ".join(saved) if isinstance(saved, dict) else type(saved).__name__
        raise DataError(f"'{path}' must hold a dict with tensors {x!r} and {y!r}; it holds {held}")
    return _from_file(path, saved[x], saved[y], labels, split, seed, label_noise)


def csv(path, target=-1, header=True, split=(1.0,), seed=0, label_noise=0.0, labels=None):
    """The target column is class labels when every value in it is written as a whole number
    (`3`, not `3.0`), unless `labels` says."""
    import csv as csvlib

    with open(_open(Path(path)), newline="") as f:
        rows = [row for row in csvlib.reader(f) if row]
    names = rows.pop(0) if header and rows else [str(i) for i in range(len(rows[0]) if rows else 0)]
    if isinstance(target, str):
        if target not in names:
            raise DataError(f"'{path}' has no column {target!r}; its columns are {', '.join(names)}")
        target = names.index(target)
    try:
        table = torch.tensor([[float(v) for v in row] for row in rows], dtype=torch.float64)
    except ValueError as e:
        raise DataError(f"'{path}' has a value that is not a number ({e})") from None
    if table.numel() == 0:
        raise DataError(f"'{path}' has no rows")
    column = target % table.shape[1]
    y = table[:, column]
    if all(row[column].strip().lstrip("+-").isdigit() for row in rows):
        y = y.long()   # written as whole numbers: an integer column, as a file's integer dtype
    x = torch.cat([table[:, :column], table[:, column + 1:]], 1)
    return _from_file(path, x, y, labels, split, seed, label_noise)


def _read_idx(path: Path) -> torch.Tensor:
    raw = (gzip.open if path.suffix == ".gz" else open)(path, "rb").read()
    if len(raw) < 4:
        raise DataError(f"'{path}' is truncated: {len(raw)} bytes")
    zero, kind, dims = struct.unpack(">HBB", raw[:4])
    if zero != 0 or kind != 0x08:
        raise DataError(f"'{path}' is not an IDX file of unsigned bytes")
    if len(raw) < 4 + 4 * dims:
        raise DataError(f"'{path}' is truncated: its header names {dims} dimensions")
    shape = struct.unpack(f">{dims}I", raw[4:4 + 4 * dims])
    data = torch.frombuffer(bytearray(raw[4 + 4 * dims:]), dtype=torch.uint8)
    if data.numel() != math.prod(shape):
        raise DataError(f"'{path}' is truncated: {data.numel()} bytes for shape {shape}")
    return data.reshape(shape)


def idx(folder, split=(1.0,), seed=0, label_noise=0.0, labels=None):
    """Images as N x 1 x H x W in [0, 1], and their labels."""
    folder = _open(Path(folder))
    # a standard MNIST folder holds train-* and t10k-* files: the training set is the dataset
    images = sorted(folder.glob("*images*idx3*"), key=lambda p: "train" not in p.name)
    targets = sorted(folder.glob("*labels*idx1*"), key=lambda p: "train" not in p.name)
    if not images or not targets:
        raise DataError(f"'{folder}' needs an '*images-idx3-ubyte' and a '*labels-idx1-ubyte' file")
    x = _read_idx(images[0]).float().div(255)
    return _from_file(folder, x, _read_idx(targets[0]), labels, split, seed, label_noise)


# --- tensors from Python -------------------------------------------------------------------


def bound(name: str, value, fields: list[str], labels: bool | None = None, tasks: bool = False):
    """A dataset passed in `bindings`: a dict of tensors, an (x, y) pair or a TensorDataset; with
    tasks=True, a task batch (a dict of tensors with a leading task dimension) or an object whose
    batch(k) gives outer step k's."""
    if tasks:
        return BoundTasks(name, value, fields)
    if hasattr(value, "tensors"):
        value = tuple(value.tensors)
    if isinstance(value, (tuple, list)):
        value = dict(zip(("x", "y"), value))
    if not isinstance(value, dict):
        raise DataError(f"binding '{name}' must be a dict of tensors, an (x, y) pair or a TensorDataset, "
                        f"not {type(value).__name__}")
    value = _tensors(name, value, fields)
    if "x" not in value or "y" not in value:
        return Table(value, {})
    try:
        y, classes = _targets(value["y"], labels)
    except DataError as e:
        raise DataError(f"binding '{name}': {e}") from None
    return _table(_floating(value["x"]), y, classes, **{k: v for k, v in value.items() if k not in ("x", "y")})


def _tensors(name: str, value: dict, fields: list[str]) -> dict[str, torch.Tensor]:
    value = {k: torch.as_tensor(v) for k, v in value.items()}
    missing = [f for f in fields if f not in value]
    if missing:
        raise DataError(f"binding '{name}' has no field {missing[0]!r}")
    return value


class BoundTasks(TaskSource):
    """Task batches from Python: one dict of tensors for every outer step, or an object whose
    batch(k) gives outer step k's (a dict of tensors, or a Table). Fields are kept as bound."""

    def __init__(self, name: str, value, fields: list[str]):
        self.name, self.fields, self.tasks = name, fields, None
        if hasattr(value, "batch"):
            self.source, self.fixed = value, None
        elif isinstance(value, dict):
            self.source, self.fixed = None, self._checked(value, 0)
        else:
            raise DataError(f"binding '{name}' must be a dict of tensors with a leading task dimension, or an "
                            f"object with batch(k), not {type(value).__name__}")
        first = self.batch(0).fields
        self.tasks = len(first[fields[0]])
        self.sizes = {"tasks": self.tasks, **{size: first[f].shape[1] for size, f in
                                              (("shots", "support_x"), ("queries", "query_x")) if f in first}}

    def batch(self, k: int) -> Table:
        if self.fixed is not None:
            return self.fixed
        drawn = self.source.batch(k)
        return self._checked(drawn.fields if isinstance(drawn, Table) else drawn, k)

    def _checked(self, value, k: int) -> Table:
        if not isinstance(value, dict):
            raise DataError(f"binding '{self.name}': batch({k}) must give a dict of tensors, "
                            f"not {type(value).__name__}")
        value = _tensors(self.name, value, self.fields)
        lead = value[self.fields[0]]
        tasks = self.tasks or (len(lead) if lead.dim() else 0)
        uneven = next((f for f, t in value.items() if t.dim() == 0 or len(t) != tasks), None)
        if uneven is not None:
            raise DataError(f"binding '{self.name}': every field of a task batch leads with its {tasks} tasks, "
                            f"but {uneven} of batch {k} has shape {list(value[uneven].shape)}")
        return Table(value)
