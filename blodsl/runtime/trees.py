"""Arithmetic on pytrees: nested dicts of tensors, the shape of every variable set.

Upper variables, lower variables, optimiser states and their cotangents are all
pytrees, so the operators read like the maths on vectors.
"""

from __future__ import annotations

import torch
from torch.utils import _pytree as pytree

tree_map = pytree.tree_map


def leaves(tree) -> list[torch.Tensor]:
    return pytree.tree_leaves(tree)


def zeros_like(tree):
    return tree_map(torch.zeros_like, tree)


def add(a, b):
    return tree_map(torch.add, a, b)


def sub(a, b):
    return tree_map(torch.sub, a, b)


def per_leaf(c, like):
    """`c` as a pytree like `like`: a number or a tensor repeated at every leaf, a pytree
    (one value per leaf already, e.g. one learning rate per weight) as it is."""
    if isinstance(c, (int, float, torch.Tensor)):
        return tree_map(lambda _: c, like)
    return c


def scale(a, c):
    """c * a, elementwise; c a number, a tensor, or a pytree like a."""
    return tree_map(lambda t, c: t * c, a, per_leaf(c, a))


def axpy(alpha, x, y):
    """alpha * x + y"""
    return tree_map(lambda u, v: alpha * u + v, x, y)


def dot(a, b) -> torch.Tensor:
    return sum((u * v).sum() for u, v in zip(leaves(a), leaves(b)))


def sqnorm(a) -> torch.Tensor:
    return dot(a, a)


def detach(tree):
    return tree_map(lambda t: t.detach(), tree)


def clone(tree):
    return tree_map(lambda t: t.detach().clone(), tree)


def flat_names(tree, prefix: str = "") -> dict[str, torch.Tensor]:
    """{'net': {'weight': W}} -> {'net.weight': W}: the names users see."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_names(value, name + "."))
        else:
            out[name] = value
    return out


def by_name(like: dict, flat: dict[str, torch.Tensor], prefix: str = "") -> dict:
    """`like`'s structure with each leaf taken from flat[its flat name] (shapes may differ)."""
    return {key: by_name(value, flat, f"{prefix}{key}.") if isinstance(value, dict) else flat[f"{prefix}{key}"]
            for key, value in like.items()}
