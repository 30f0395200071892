"""The built-in functions and metrics a program can call (blodsl.builtins lists them)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import trees


def _reduce(t: torch.Tensor, reduction: str) -> torch.Tensor:
    return {"mean": t.mean, "sum": t.sum}.get(reduction, lambda: t)()


def cross_entropy(logits, labels, reduction="mean", label_smoothing=0.0):
    return F.cross_entropy(logits, labels, reduction=reduction, label_smoothing=label_smoothing)


def binary_cross_entropy(logits, targets, reduction="mean"):
    logits = logits.squeeze(-1) if logits.dim() == targets.dim() + 1 else logits
    return F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype), reduction=reduction)


def mse(prediction, target, reduction="mean"):
    return _reduce((prediction - target.reshape(prediction.shape)) ** 2, reduction)


def mae(prediction, target, reduction="mean"):
    return _reduce((prediction - target.reshape(prediction.shape)).abs(), reduction)


def mean(x, dim=None):
    return x.mean() if dim is None else x.mean(dim)


def sum(x, dim=None):  # noqa: A001 - the name programs use
    return x.sum() if dim is None else x.sum(dim)


sigmoid, exp, log, tanh, relu = torch.sigmoid, torch.exp, torch.log, torch.tanh, torch.relu
softplus, abs, sqrt = F.softplus, torch.abs, torch.sqrt  # noqa: A001


def softmax(x, dim=-1):
    return torch.softmax(x, dim)


def log_softmax(x, dim=-1):
    return torch.log_softmax(x, dim)


def clamp(x, min=None, max=None):  # noqa: A002
    return torch.clamp(x, min, max)


def sqnorm(x):
    """Sum of squares of a tensor, or of every weight of a model (a dict of tensors)."""
    return trees.sqnorm(x) if isinstance(x, dict) else (x * x).sum()


def norm(x):
    return torch.sqrt(sqnorm(x))


def sqdist(a, b):
    """Squared distance between two tensors or two models of the same structure."""
    return sqnorm(trees.sub(a, b)) if isinstance(a, dict) else ((a - b) ** 2).sum()


def reshape(x, shape):
    return x.reshape(shape)


def flatten(x, start_dim=1):
    return x.flatten(start_dim)


def mix(logits, candidates):
    weights = torch.softmax(logits, -1)
    return torch.stack(candidates, -1) @ weights


# --- metrics: reported, never differentiated ---------------------------------------


def accuracy(logits, labels):
    predicted = logits.argmax(-1) if logits.dim() > labels.dim() else (logits > 0).long()
    return (predicted == labels).to(torch.get_default_dtype()).mean()


def _counts(flags, truth):
    flags, truth = flags.bool(), truth.bool()
    tp = (flags & truth).sum()
    return tp, flags.sum() - tp, truth.sum() - tp


def _ratio(num, den):
    # an empty denominator scores 0 rather than NaN
    return torch.where(den > 0, num / den.clamp(min=1), 0.0).float()


def precision(flags, truth):
    tp, fp, _ = _counts(flags, truth)
    return _ratio(tp, tp + fp)


def recall(flags, truth):
    tp, _, fn = _counts(flags, truth)
    return _ratio(tp, tp + fn)


def f1(flags, truth):
    tp, fp, fn = _counts(flags, truth)
    return _ratio(2 * tp, 2 * tp + fp + fn)
