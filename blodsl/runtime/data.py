"""Datasets: the built-in sources, file loaders and tensors bound from Python.

A source returns one `Table` per part of its `split` (a seeded permutation
cut in order). Sizes (`n`, `features`, `classes`) are what programs use as
dimensions; `classes` is counted over the whole dataset, before splitting.
Sinusoid returns a `TaskSource`, which draws a new batch of tasks each step.
"""

from __future__ import annotations

import gzip
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path

import torch


class DataError(Exception):
    """A dataset that cannot be loaded; the message says which and why."""


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
    return Table({"x": x, "y": y, **extra}, sizes)


def _labels(y: torch.Tensor) -> tuple[torch.Tensor, int | None]:
    """Integer-valued targets are class labels; anything else is regression."""
    if y.dim() == 1 and (not y.is_floating_point() or bool(torch.all(y == y.round()))):
        if y.min() < 0:   # e.g. -1/+1 labels become 0/1
            values, y = torch.unique(y, return_inverse=True)
            return y, len(values)
        y = y.long()
        return y, int(y.max()) + 1
    return y, None


def _floating(t: torch.Tensor) -> torch.Tensor:
    # keep float64 data float64: the run's dtype is applied once, when the table is moved
    return t if t.is_floating_point() else t.to(torch.get_default_dtype())


def split_table(x, y, split, seed, label_noise=0.0, standardize=False) -> list[Table]:
    """Cut (x, y) into parts; flip `label_noise` of the first part's labels."""
    x = _floating(x)
    if len(x) != len(y):
        raise DataError(f"the inputs have {len(x)} rows but the targets {len(y)}")
    y, classes = _labels(y)
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
                raise DataError("label_noise needs class labels, and these targets are not integers")
            flip = torch.randperm(len(idx), generator=generator)[:round(label_noise * len(idx))]
            noisy[flip] = True
            shift = torch.randint(1, classes, (len(flip),), generator=generator)
            yi = yi.clone()
            yi[flip] = (yi[flip] + shift) % classes
        extra = {"y_clean": y[idx], "noisy": noisy} if classes is not None else {}
        tables.append(_table(xi, yi, classes, **extra))
    return tables


# --- built-in sources -----------------------------------------------------------------


def digits(split=(0.5, 0.25, 0.25), label_noise=0.0, seed=0, standardize=True):
    from sklearn.datasets import load_digits  # ships with scikit-learn: no download

    d = load_digits()
    return split_table(torch.tensor(d.data), torch.tensor(d.target), split, seed, label_noise, standardize)


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


@dataclass
class TaskSource:
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


def sinusoid(**args) -> TaskSource:
    return TaskSource(**{k: tuple(v) if isinstance(v, list) else v for k, v in args.items()})


# --- files the user has ----------------------------------------------------------------


def _open(path: Path):
    if not path.exists():
        raise DataError(f"'{path}' does not exist")
    return path


def npz(path, x="x", y="y", split=(1.0,), seed=0, label_noise=0.0):
    import numpy as np

    with np.load(_open(Path(path))) as arrays:
        missing = [k for k in (x, y) if k not in arrays.files]
        if missing:
            raise DataError(f"'{path}' has no array {missing[0]!r}; it holds {', '.join(arrays.files)}")
        return split_table(torch.from_numpy(arrays[x]), torch.from_numpy(arrays[y]), split, seed, label_noise)


def pt(path, x="x", y="y", split=(1.0,), seed=0, label_noise=0.0):
    saved = torch.load(_open(Path(path)), weights_only=True)
    if not isinstance(saved, dict) or x not in saved or y not in saved:
        held = ", ".join(saved) if isinstance(saved, dict) else type(saved).__name__
        raise DataError(f"'{path}' must hold a dict with tensors {x!r} and {y!r}; it holds {held}")
    return split_table(saved[x], saved[y], split, seed, label_noise)


def csv(path, target=-1, header=True, split=(1.0,), seed=0, label_noise=0.0):
    import csv as csvlib

    with open(_open(Path(path)), newline="") as f:
        rows = list(csvlib.reader(f))
    names = rows.pop(0) if header else [str(i) for i in range(len(rows[0]) if rows else 0)]
    if isinstance(target, str):
        if target not in names:
            raise DataError(f"'{path}' has no column {target!r}; its columns are {', '.join(names)}")
        target = names.index(target)
    try:
        table = torch.tensor([[float(v) for v in row] for row in rows if row], dtype=torch.float64)
    except ValueError as e:
        raise DataError(f"'{path}' has a value that is not a number ({e})") from None
    if table.numel() == 0:
        raise DataError(f"'{path}' has no rows")
    y = table[:, target]
    x = torch.cat([table[:, :target % table.shape[1]], table[:, target % table.shape[1] + 1:]], 1)
    return split_table(x, y, split, seed, label_noise)


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


def idx(folder, split=(1.0,), seed=0, label_noise=0.0):
    folder = _open(Path(folder))
    # a standard MNIST folder holds train-* and t10k-* files: the training set is the dataset
    images = sorted(folder.glob("*images*idx3*"), key=lambda p: "train" not in p.name)
    labels = sorted(folder.glob("*labels*idx1*"), key=lambda p: "train" not in p.name)
    if not images or not labels:
        raise DataError(f"'{folder}' needs an '*images-idx3-ubyte' and a '*labels-idx1-ubyte' file")
    x = _read_idx(images[0]).float().div(255).flatten(1)
    return split_table(x, _read_idx(labels[0]), split, seed, label_noise)


# --- tensors from Python -------------------------------------------------------------------


def bound(name: str, value, fields: list[str]) -> Table:
    """A dataset passed in `bindings`: a dict of tensors, an (x, y) pair or a TensorDataset."""
    if hasattr(value, "tensors"):
        value = tuple(value.tensors)
    if isinstance(value, (tuple, list)):
        value = dict(zip(("x", "y"), value))
    if not isinstance(value, dict):
        raise DataError(f"binding '{name}' must be a dict of tensors, an (x, y) pair or a TensorDataset, "
                        f"not {type(value).__name__}")
    value = {k: torch.as_tensor(v) for k, v in value.items()}
    missing = [f for f in fields if f not in value]
    if missing:
        raise DataError(f"binding '{name}' has no field {missing[0]!r}")
    if "x" not in value or "y" not in value:
        return Table(value, {})
    y, classes = _labels(value["y"])
    return _table(_floating(value["x"]), y, classes, **{k: v for k, v in value.items() if k not in ("x", "y")})
