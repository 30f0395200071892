"""The lower level's differentiable optimisers: torch.optim's steps, settings that are
tensors (to learn, or traced by torch.func), one learning rate per weight, no NaN
from a zero state, task batches under vmap."""

import dataclasses
import inspect

import pytest
import torch
from torch.func import grad, vjp, vmap

from blodsl.catalogue.builtins import INNER_OPTIMIZERS
from blodsl.runtime import inner, trees
from blodsl.runtime.kernels import Objectives

D = torch.float64
STEPS = 12     # against torch.optim
SHORT = 6      # derivatives and task batches
H = 1e-6    # central differences: every differentiated setting is >= 1e-3 or 0


def tree(seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return {"a": scale * torch.randn(3, generator=g, dtype=D),
            "net": {"w": scale * torch.randn(2, 2, generator=g, dtype=D)}}


SHIFT, WEIGHTS = tree(1), tree(2)
# where the shift is 0 and y starts at 0 the gradient stays exactly 0
SPARSE_SHIFT = {"a": torch.tensor([0.0, 1.0, 0.0], dtype=D), "net": {"w": torch.tensor([[0.0, -0.5], [0.3, 0.0]], dtype=D)}}


def objective(y, shift=SHIFT):
    """Not quadratic, so the gradients the steps see change nonlinearly along the way."""
    return sum((s * t + 0.5 * t ** 2 + 0.25 * t ** 4).sum() for t, s in zip(trees.leaves(y), trees.leaves(shift)))


def final(optimizer, y, shift=SHIFT, steps=STEPS):
    state = optimizer.init(y)
    for _ in range(steps):
        y, state = optimizer.update(y, state, grad(objective)(y, shift))
    return y


def loss(optimizer, y0=None, shift=SHIFT):
    return trees.dot(WEIGHTS, final(optimizer, tree(0) if y0 is None else y0, shift, SHORT))


def settings(optimizer) -> dict[str, float]:
    """Its numeric settings, one name each (betas as beta1, beta2); t0 changes no step."""
    out = {}
    for field in dataclasses.fields(optimizer):
        value = getattr(optimizer, field.name)
        if field.name == "betas":
            out["beta1"], out["beta2"] = value
        elif not isinstance(value, bool) and field.name != "t0":
            out[field.name] = value
    return out


def with_settings(optimizer, values: dict):
    values = dict(values)
    if "beta1" in values:
        values["betas"] = [values.pop("beta1"), values.pop("beta2")]   # a list, as the IR spells it
    return dataclasses.replace(optimizer, **values)


def as_tensors(values: dict) -> dict:
    return {k: torch.tensor(float(v), dtype=D) for k, v in values.items()}


def assert_trees_close(actual, expected, rtol):
    for a, e in zip(trees.leaves(actual), trees.leaves(expected), strict=True):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, e, rtol=rtol, atol=rtol * float(e.abs().max()))


CASES = [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.1, momentum=0.9)),
    ("SGD", dict(lr=0.1, momentum=0.9, dampening=0.3, weight_decay=0.05)),
    ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.05)),
    ("Adam", dict(lr=0.05)),
    ("Adam", dict(lr=0.05, betas=(0.8, 0.95), eps=1e-3, weight_decay=0.1)),
    ("AdamW", dict(lr=0.05)),
    ("AdamW", dict(lr=0.05, betas=(0.8, 0.95), eps=1e-3, weight_decay=0.3)),
    ("Adamax", dict(lr=0.05)),
    ("Adamax", dict(lr=0.05, betas=(0.8, 0.95), eps=1e-3, weight_decay=0.1)),
    ("RMSprop", dict(lr=0.01)),
    ("RMSprop", dict(lr=0.01, momentum=0.9, eps=1e-3, weight_decay=0.1)),
    ("RMSprop", dict(lr=0.01, alpha=0.9, eps=1e-3, centered=True)),
    ("RMSprop", dict(lr=0.01, alpha=0.9, eps=1e-3, centered=True, momentum=0.5, weight_decay=0.1)),
    ("Adagrad", dict(lr=0.1)),
    ("Adagrad", dict(lr=0.1, lr_decay=0.1, weight_decay=0.05, initial_accumulator_value=0.2, eps=1e-3)),
    ("Adadelta", dict()),
    ("Adadelta", dict(lr=0.5, rho=0.8, eps=1e-3, weight_decay=0.1)),
    ("ASGD", dict(lr=0.05)),
    ("ASGD", dict(lr=0.05, lambd=0.05, alpha=0.6, t0=3.0, weight_decay=0.1)),
]
IDS = [f"{name}({', '.join(f'{k}={v}' for k, v in kwargs.items())})" for name, kwargs in CASES]
# a central difference of width H needs every setting well away from 0 or at it
SMOOTH = [(c, i) for c, i in zip(CASES, IDS)
          if all(v == 0 or v >= 1e-3 for v in settings(getattr(inner, c[0])(**c[1])).values())]
RICHEST = [(c, i) for c, i, after in zip(CASES, IDS, CASES[1:] + [("", {})]) if after[0] != c[0]]  # each one's last


def make(name, kwargs):
    return getattr(inner, name)(**kwargs)


@pytest.fixture
def float64_default():
    """torch's ASGD keeps its step size in the default dtype."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(D)
    yield
    torch.set_default_dtype(previous)


@pytest.mark.parametrize("name, kwargs", CASES, ids=IDS)
def test_steps_are_torch_optims(name, kwargs, float64_default):
    optimizer = make(name, kwargs)
    y = tree(0)
    params = trees.tree_map(lambda t: t.clone().requires_grad_(), y)
    reference = getattr(torch.optim, name)(trees.leaves(params), **kwargs, foreach=False)
    state = optimizer.init(y)
    for _ in range(STEPS):
        g = grad(objective)(y)
        y, state = optimizer.update(y, state, g)
        for p, gp in zip(trees.leaves(params), trees.leaves(grad(objective)(trees.detach(params)))):
            p.grad = gp
        reference.step()
        assert_trees_close(y, trees.detach(params), rtol=1e-12)


@pytest.mark.parametrize("name", INNER_OPTIMIZERS)
def test_catalogue_defaults_are_the_classes_and_torchs(name):
    """The IR spells out the row's defaults; the generated call builds the class with them."""
    row = {k: p.default for k, p in INNER_OPTIMIZERS[name].items()}
    fields = {f.name: f.default for f in dataclasses.fields(getattr(inner, name))}
    torch_defaults = inspect.signature(getattr(torch.optim, name)).parameters
    assert list(row) == list(fields)
    for key, value in row.items():
        assert fields[key] == (tuple(value) if key == "betas" else value)
        assert torch_defaults[key].default == fields[key]
    assert make(name, row) == getattr(inner, name)()


@pytest.mark.parametrize("name, kwargs", CASES, ids=IDS)
def test_tensor_settings_step_as_numbers(name, kwargs):
    """0-dim tensors, even those equal to 0 (so their state exists), give the numbers' trajectory."""
    optimizer = make(name, kwargs)
    tensors = with_settings(optimizer, as_tensors(settings(optimizer)))
    assert_trees_close(final(tensors, tree(0)), final(optimizer, tree(0)), rtol=1e-13)


@pytest.mark.parametrize("name, kwargs", [c for c, _ in SMOOTH], ids=[i for _, i in SMOOTH])
def test_derivatives_in_the_settings_are_central_differences(name, kwargs):
    optimizer = make(name, kwargs)
    values = as_tensors(settings(optimizer))
    derivatives = grad(lambda v: loss(with_settings(optimizer, v)))(values)
    for key, value in values.items():
        plus, minus = (loss(with_settings(optimizer, {**values, key: value + step})) for step in (H, -H))
        torch.testing.assert_close(derivatives[key], (plus - minus) / (2 * H), rtol=1e-6, atol=1e-9, msg=key)


@pytest.mark.parametrize("name, kwargs", [c for c, _ in SMOOTH], ids=[i for _, i in SMOOTH])
def test_one_rate_per_weight(name, kwargs):
    """Equal rates are the scalar rate; the derivative in the rates (vjp) along a direction
    is the central difference along it."""
    optimizer = make(name, kwargs)
    rates = trees.tree_map(lambda t: torch.full_like(t, optimizer.lr), tree(0))
    assert_trees_close(final(dataclasses.replace(optimizer, lr=rates), tree(0)), final(optimizer, tree(0)), rtol=1e-14)

    direction = tree(3, scale=optimizer.lr)
    value, pull = vjp(lambda lr: loss(dataclasses.replace(optimizer, lr=lr)), rates)
    (cotangent,) = pull(torch.ones_like(value))
    plus, minus = (loss(dataclasses.replace(optimizer, lr=trees.axpy(step, direction, rates))) for step in (H, -H))
    torch.testing.assert_close(trees.dot(cotangent, direction), (plus - minus) / (2 * H), rtol=1e-6, atol=1e-9)


def test_one_rate_per_weight_scales_each_weights_step():
    y, g, rates = tree(0), tree(1), tree(2, scale=0.1)
    stepped, _ = inner.SGD(lr=rates, weight_decay=0.1).update(y, {}, g)
    expected = {"a": y["a"] - rates["a"] * (g["a"] + 0.1 * y["a"]),
                "net": {"w": y["net"]["w"] - rates["net"]["w"] * (g["net"]["w"] + 0.1 * y["net"]["w"])}}
    assert_trees_close(stepped, expected, rtol=1e-15)


@pytest.mark.parametrize("name, kwargs", CASES, ids=IDS)
def test_no_nan_from_a_zero_state(name, kwargs):
    """From y0 = 0 with gradients exactly 0 in some coordinates (zero second moments, ties
    in Adamax's maximum), the derivatives in y0 and in every setting are finite."""
    optimizer = make(name, kwargs)
    zeros = trees.zeros_like(SHIFT)

    def of(y0, values):
        return loss(with_settings(optimizer, values), y0, SPARSE_SHIFT)

    dy0, dsettings = grad(of, argnums=(0, 1))(zeros, as_tensors(settings(optimizer)))
    for derivative in trees.leaves(dy0) + list(dsettings.values()):
        assert torch.isfinite(derivative).all()


@pytest.mark.parametrize("name, kwargs", [c for c, _ in RICHEST], ids=[i for _, i in RICHEST])
def test_task_batches_under_vmap(name, kwargs):
    """vmap over a leading task dimension of y, settings shared: each task's own
    trajectory, and the derivative in the shared settings is the sum of the tasks'."""
    optimizer = make(name, kwargs)
    starts = [tree(seed) for seed in (0, 4, 5)]
    batch = trees.tree_map(lambda *ts: torch.stack(ts), *starts)
    values = as_tensors(settings(optimizer))

    def batched(values):
        opt = with_settings(optimizer, values)
        y, state = batch, vmap(opt.init)(batch)
        for _ in range(SHORT):
            y, state = vmap(opt.update)(y, state, vmap(grad(objective))(y))
        return y

    def total(values):
        return sum(loss(with_settings(optimizer, values), y0) for y0 in starts)

    ys, derivatives = batched(values), grad(lambda v: trees.dot(WEIGHTS, trees.tree_map(
        lambda t: t.sum(0), batched(v))))(values)
    for i, y0 in enumerate(starts):
        assert_trees_close(trees.tree_map(lambda t: t[i], ys), final(optimizer, y0, steps=SHORT), rtol=1e-13)
    expected = grad(total)(values)
    for key in values:
        torch.testing.assert_close(derivatives[key], expected[key], rtol=1e-12, atol=1e-14)


def test_weight_decay_in_the_gradient():
    """What implicit differentiation adds to the Hessian: AdamW's decoupled decay is not an L2
    term; ASGD's lambd is one (y (1 - lambd eta) - eta g = y - eta (g + lambd y))."""
    assert inner.AdamW.decoupled_decay and inner.AdamW(weight_decay=0.1).l2_decay == 0.0
    assert inner.ASGD(lambd=0.01, weight_decay=0.1).l2_decay == pytest.approx(0.11)
    for name in INNER_OPTIMIZERS.keys() - {"AdamW", "ASGD"}:
        assert not getattr(inner, name).decoupled_decay
        assert make(name, {"weight_decay": 0.1}).l2_decay == 0.1


def test_objectives_add_a_tensor_decay_to_the_hessian():
    decay = torch.tensor(0.1, dtype=D)
    objectives = Objectives(lambda x, y, d: objective(y), None, inner.SGD(weight_decay=decay))
    y, v = tree(0), tree(3)
    hessian = {"a": 1 + 3 * y["a"] ** 2, "net": {"w": 1 + 3 * y["net"]["w"] ** 2}}   # diagonal
    expected = trees.tree_map(lambda h, v: (h + decay) * v, hessian, v)
    assert_trees_close(objectives.hvp(None, y, None, v), expected, rtol=1e-14)
