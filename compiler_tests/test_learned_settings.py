"""Inner-optimiser settings learned as upper variables: hypergradients through the optimiser's
steps against closed forms and autograd through loops written here, in float64; the checker's
rules on which pipelines can see them."""

import pytest
import torch
from torch.func import functional_call

from helpers import check_text, report_of
from oracles import D, assert_close, build, program, randn, spd

N = 4
A = spd([0.5, 1.0, 2.0, 3.0], seed=7)
B = randn(N, seed=8)
C = randn(N, seed=9)
QUADRATIC = {"train": {"A": A, "b": B}, "val": {"c": C}}


def quadratic(settings: str, upper: str = "var log_lr = -1.5", pipeline: str = "RAD", steps: int = 6) -> str:
    """f = 1/2 y'Ay - b'y from y0 = 0 and F = 1/2 |y - c|^2, the inner optimiser's settings as given."""
    return program(
        data='train = input(fields=["A", "b"])\nval = input(fields=["c"])',
        upper=f"{upper}\nobjective = 0.5 * sqnorm(y - val.c)\noptimizer = SGD(lr=0.1)",
        lower=f"var y = zeros({N})\nobjective = 0.5 * sum(y * (train.A @ y)) - sum(train.b * y)\n"
              f"optimizer = {settings}\nsteps = {steps}",
        pipeline=pipeline)


def test_learned_lr_matches_the_closed_form():
    # y_T = sum_k<T (I - lr A)^k lr b, so dy_T/dlr = T (I - lr A)^(T-1) b
    T, lr = 6, torch.exp(torch.tensor(-1.5, dtype=D))
    pipeline = build(quadratic("SGD(lr=exp(log_lr))", steps=T), **QUADRATIC)
    M = torch.eye(N, dtype=D) - lr * A
    y_T = sum(torch.linalg.matrix_power(M, k) for k in range(T)) @ (lr * B)
    dy_dlr = T * torch.linalg.matrix_power(M, T - 1) @ B
    assert_close(pipeline.hypergradient()["log_lr"], lr * (y_T - C) @ dy_dlr)


def unrolled_sgd(settings: dict, steps: int):
    """F(y_T) and its gradient in the learned settings, by autograd through torch.optim.SGD's
    update written out (dampening 0): the reference for momentum and weight decay."""
    leaves = {k: torch.tensor(v, dtype=D, requires_grad=True) for k, v in settings.items()}
    lr, momentum, decay = (torch.exp(leaves["log_lr"]), torch.sigmoid(leaves["m"]), torch.exp(leaves["log_wd"]))
    y, buf = torch.zeros(N, dtype=D), None
    for _ in range(steps):
        g = A @ y - B + decay * y
        buf = g if buf is None else momentum * buf + g
        y = y - lr * buf
    F = 0.5 * ((y - C) ** 2).sum()
    return dict(zip(leaves, torch.autograd.grad(F, list(leaves.values()))))


def test_learned_momentum_and_weight_decay_match_autograd_through_the_loop():
    upper = "var log_lr = -1.5\nvar m = 0.4\nvar log_wd = -2.0"
    pipeline = build(quadratic("SGD(lr=exp(log_lr), momentum=sigmoid(m), weight_decay=exp(log_wd))", upper,
                               steps=7), **QUADRATIC)
    expected = unrolled_sgd({"log_lr": -1.5, "m": 0.4, "log_wd": -2.0}, steps=7)
    got = pipeline.hypergradient()
    for name in expected:
        assert_close(got[name], expected[name])


def test_learned_beta_matches_autograd_through_adam():
    b1 = torch.tensor(1.0, dtype=D, requires_grad=True)
    beta1, beta2, lr, eps = torch.sigmoid(b1), 0.999, 0.05, 1e-8
    y, m, v = torch.zeros(N, dtype=D), torch.zeros(N, dtype=D), torch.zeros(N, dtype=D)
    for t in range(1, 6):   # torch.optim.Adam's update, written out
        g = A @ y - B
        m, v = beta1 * m + (1 - beta1) * g, beta2 * v + (1 - beta2) * g * g
        y = y - lr * (m / (1 - beta1 ** t)) / ((v / (1 - beta2 ** t)).sqrt() + eps)
    (expected,) = torch.autograd.grad(0.5 * ((y - C) ** 2).sum(), b1)
    source = quadratic("Adam(lr=0.05, betas=[sigmoid(b1), 0.999])", "var b1 = 1.0", steps=5)
    assert_close(build(source, **QUADRATIC).hypergradient()["b1"], expected)


# --- one learning rate per weight (Meta-SGD) ----------------------------------------------------


META_SGD = """data {
    tasks = sinusoid(tasks=3, shots=5, queries=5, seed=0)
}
upper {
    model meta = MLP(1, [6], 1)
    var lrs = like(meta, value=LR)
    objective = mse(learner(tasks.query_x), tasks.query_y)
    optimizer = Adam(lr=1e-3)
}
lower {
    model learner = MLP(1, [6], 1)
    objective = mse(learner(tasks.support_x), tasks.support_y)
    optimizer = SGD(lr=lrs)
    steps = 3
    start = from(meta)
}
hypergradient = IAD
"""


def meta_sgd_reference(pipeline, steps=3):
    """The meta-gradient of the mean query loss in the meta-weights and the per-weight rates, by
    autograd through each task's adaptation written here."""
    module = pipeline.problem.modules["learner"]
    meta = {k: v.detach().clone().requires_grad_() for k, v in pipeline.x["meta"].items()}
    lrs = {k: v.detach().clone().requires_grad_() for k, v in pipeline.x["lrs"].items()}
    batch = pipeline.sources["tasks"].batch(0).to(pipeline.device, pipeline.dtype).fields
    losses = []
    for task in range(batch["support_x"].shape[0]):
        w = dict(meta)
        for _ in range(steps):
            out = functional_call(module, w, (batch["support_x"][task],))
            loss = ((out - batch["support_y"][task]) ** 2).mean()
            grads = torch.autograd.grad(loss, list(w.values()), create_graph=True)
            w = {k: p - lrs[k] * g for (k, p), g in zip(w.items(), grads)}
        out = functional_call(module, w, (batch["query_x"][task],))
        losses.append(((out - batch["query_y"][task]) ** 2).mean())
    total = torch.stack(losses).mean()
    grads = torch.autograd.grad(total, list(meta.values()) + list(lrs.values()))
    names = [f"meta.{k}" for k in meta] + [f"lrs.{k}" for k in lrs]
    return dict(zip(names, grads))


def test_per_weight_rates_match_autograd_through_each_task():
    pipeline = build(META_SGD.replace("LR", "0.05"))
    with torch.no_grad():   # rates that differ from weight to weight
        for k, v in pipeline.x["lrs"].items():
            v.copy_(0.02 + 0.06 * torch.rand(v.shape, generator=torch.Generator().manual_seed(len(k)), dtype=D))
    got = pipeline.hypergradient()
    expected = meta_sgd_reference(pipeline)
    assert set(got) == set(expected)
    for name in expected:
        assert_close(got[name], expected[name], rtol=1e-9)


def test_equal_per_weight_rates_are_the_scalar_rate():
    per_weight = build(META_SGD.replace("LR", "0.05")).hypergradient()
    scalar = build(META_SGD.replace("var lrs = like(meta, value=LR)", "var lr = 0.05")
                   .replace("SGD(lr=lrs)", "SGD(lr=lr)")).hypergradient()
    for name, g in scalar.items():
        if name.startswith("meta."):
            assert_close(per_weight[name], g)
    # d/dlr of one shared rate is the sum of the per-weight derivatives
    total = sum(g.sum() for name, g in per_weight.items() if name.startswith("lrs."))
    assert_close(total, scalar["lr"])


def test_per_weight_log_rates_are_the_chain_rule_of_the_rates():
    rates = build(META_SGD.replace("LR", "0.05"))
    logs = build(META_SGD.replace("var lrs = like(meta, value=LR)", "var log_lrs = like(meta, value=LOG")
                 .replace("LOG", repr(float(torch.log(torch.tensor(0.05, dtype=D))))  + ")")
                 .replace("SGD(lr=lrs)", "SGD(lr=exp(log_lrs))"))
    by_rate, by_log = rates.hypergradient(), logs.hypergradient()
    for name, g in by_rate.items():
        if name.startswith("lrs."):   # d/dlog = lr * d/dlr
            assert_close(by_log["log_" + name], 0.05 * g, rtol=1e-9)
        else:
            assert_close(by_log[name], g, rtol=1e-9)


def test_per_weight_rates_run_and_move():
    pipeline = build(META_SGD.replace("LR", "0.05"))
    before = {k: v.clone() for k, v in pipeline.x["lrs"].items()}
    for _ in range(3):
        pipeline.step()
    moved = [not torch.equal(before[k], v) for k, v in pipeline.x["lrs"].items()]
    assert all(moved)


# --- implicit terminals see a learned weight decay ------------------------------------------------


def test_cg_differentiates_a_learned_weight_decay_at_the_fixed_point():
    # at the fixed point A y + wd y = b: dF/dwd = -(y - c)' (A + wd I)^-1 y, and dwd/da = wd
    source = quadratic("SGD(lr=0.2, weight_decay=exp(a))", "var a = -1.0", pipeline="CG(k=20)", steps=400)
    pipeline = build(source, **QUADRATIC)
    wd = torch.exp(torch.tensor(-1.0, dtype=D))
    H = A + wd * torch.eye(N, dtype=D)
    y = torch.linalg.solve(H, B)
    for _ in range(2):   # warm start: the second step's inner loop starts at the first's solution
        pipeline.hypergradient()
    assert_close(pipeline.hypergradient()["a"], -wd * (y - C) @ torch.linalg.solve(H, y), rtol=1e-8)


# --- what the checker says ---------------------------------------------------------------------


@pytest.mark.parametrize("pipeline, words", [
    ("CG", "CG differentiates the lower level's fixed point, which the inner steps reach whatever their lr"),
    ("FD", "FD differentiates the lower solution through the lower objective alone: the learned lr"),
    ("IGA", "IGA differentiates the lower solution"),
])
def test_solution_terminals_cannot_see_a_learned_rate(pipeline, words):
    text = report_of(quadratic("SGD(lr=exp(log_lr))", pipeline=pipeline).replace(
        "objective = 0.5 * sum(y", "objective = log_lr * 0 + 0.5 * sum(y"))
    assert words in text and "identically zero hypergradient" in text
    assert "fix: write a constant lr, or learn it through the inner steps with IAD or RAD" in text


def test_first_order_maml_cannot_see_learned_rates():
    text = report_of(META_SGD.replace("LR", "0.05").replace("hypergradient = IAD", "hypergradient = FOA -> IAD"))
    assert "p.blo:13:24: error: FOA takes dy_T/dy_0 as the identity" in text


def test_first_order_methods_and_dm_cannot_see_learned_rates():
    for pipeline in ("VFO", "DM -> RAD"):
        text = report_of(quadratic("SGD(lr=exp(log_lr))", pipeline=pipeline, steps=1)
                      .replace("objective = 0.5 * sum(y", "objective = log_lr * 0 + 0.5 * sum(y"))
        assert "the learned lr would get an identically zero hypergradient" in text, pipeline


def test_rad_and_unrolled_variants_accept_learned_settings():
    for pipeline in ("RAD", "PTT -> RAD", "RGT(truncate=2) -> RAD", "GDA -> RAD"):
        assert report_of(quadratic("SGD(lr=exp(log_lr), momentum=sigmoid(log_lr))", pipeline=pipeline)) == ""


def test_weight_decay_alone_is_seen_by_cg():
    assert report_of(quadratic("SGD(lr=0.1, weight_decay=exp(log_lr))", pipeline="CG")) == ""


def test_adamw_decay_under_an_implicit_terminal_is_refused():
    text = report_of(quadratic("AdamW(lr=0.1)", pipeline="CG").replace(
        "objective = 0.5 * sum(y", "objective = log_lr * 0.5 * sum(y")) if _has("AdamW") else "skip"
    if text == "skip":
        pytest.skip("AdamW is not an inner optimiser yet")
    assert "AdamW's weight decay shrinks the weights apart from the gradient" in text


def _has(name: str) -> bool:
    from blodsl.catalogue.builtins import INNER_OPTIMIZERS
    return name in INNER_OPTIMIZERS


@pytest.mark.parametrize("settings, upper, words", [
    ("SGD(lr=exp(v))", "var v = zeros(3)", "SGD's lr must be a constant or an expression of scalar upper-level "
                                           "variables: it reads v, which is not a scalar upper-level variable"),
    ("SGD(lr=exp(y))", "var log_lr = 0.0", "it reads y, which is not a scalar upper-level variable"),
    ("SGD(lr=exp(2))", "var log_lr = 0.0", "it reads no upper-level variable"),
    ("SGD(lr=0.1, nesterov=log_lr)", "var log_lr = 0.0", "SGD's nesterov must be a constant"),
])
def test_bad_learned_settings_are_located(settings, upper, words):
    assert words in report_of(quadratic(settings, upper))


def test_per_weight_rates_need_one_lower_model_of_that_structure():
    text = report_of(META_SGD.replace("LR", "0.05").replace("like(meta", "like(mismatch")
                  .replace("model meta = MLP(1, [6], 1)", "model meta = MLP(1, [6], 1)\n    model mismatch = MLP(1, [7], 1)"))
    assert "'lrs' mirrors the weights of mismatch, and the lower level's variables are not one model" in text


def test_per_weight_rates_take_elementwise_functions_only():
    text = report_of(META_SGD.replace("LR", "0.05").replace("SGD(lr=lrs)", "SGD(lr=sum(lrs))"))
    assert "SGD's lr per weight is 'lrs' itself or an elementwise function of it and numbers" in text
    text = report_of(META_SGD.replace("LR", "0.05").replace("SGD(lr=lrs)", "SGD(lr=0.1, momentum=sigmoid(lrs))"))
    assert "SGD's momentum is one number; 'lrs' holds one per weight" in text


def test_per_weight_rates_are_not_values():
    text = report_of(META_SGD.replace("LR", "0.05").replace("mse(learner(tasks.query_x), tasks.query_y)",
                                                         "mse(learner(tasks.query_x), tasks.query_y) + sum(lrs)", 1))
    assert "'lrs' holds one number per weight of meta; it is a setting of the inner optimiser" in text


def test_summary_shows_learned_settings_as_written():
    from blodsl.cli import summary

    checked = check_text(quadratic("SGD(lr=exp(log_lr), momentum=0.5)")).program
    assert "SGD(lr=exp(log_lr), momentum=0.5," in summary(checked)


# --- each inner optimiser under RAD against torch.optim's own steps ----------------------------------


def torch_optim_central_difference(name: str, kwargs: dict, x: torch.Tensor, weights: torch.Tensor, steps: int):
    """dF/dx, F = |y_T|^2, by central differences of `steps` steps of torch.optim.NAME itself on
    f = 1/2 sum(weights * (y - x)^2) from y = 0. (torch's `differentiable=True` paths are no
    oracle: SGD's detaches its first momentum buffer.)"""

    def F(x):
        y = torch.zeros_like(x, requires_grad=True)
        optimizer = getattr(torch.optim, name)([y], **kwargs)
        for _ in range(steps):
            y.grad = (weights * (y - x)).detach()
            optimizer.step()
        return float((y.detach() ** 2).sum())

    h = 1e-5
    return torch.tensor([(F(x + h * e) - F(x - h * e)) / (2 * h) for e in torch.eye(len(x), dtype=D)], dtype=D)


@pytest.mark.parametrize("name, kwargs", [
    ("SGD", dict(lr=0.1, momentum=0.9, dampening=0.1, weight_decay=0.01)),
    ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True)),
    ("Adam", dict(lr=0.1, weight_decay=0.01)),
    ("AdamW", dict(lr=0.1, betas=[0.8, 0.99])),
    ("Adamax", dict(lr=0.1, weight_decay=0.01)),
    ("RMSprop", dict(lr=0.05, momentum=0.5, centered=True, weight_decay=0.01)),
    ("Adagrad", dict(lr=0.3, lr_decay=0.01, initial_accumulator_value=0.1)),
    ("Adadelta", dict(lr=1.0, rho=0.8)),
    ("ASGD", dict(lr=0.1, lambd=0.01, t0=2.0)),
])
def test_rad_through_each_inner_optimiser_differentiates_torch_optims_steps(name, kwargs):
    x, weights = torch.tensor([1.0, -2.0, 0.5], dtype=D), torch.tensor([1.0, 2.0, 3.0], dtype=D)
    written = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    source = program(data='train = input(fields=["w"])',
                     upper="var x = input()\nobjective = sqnorm(y)\noptimizer = SGD(lr=0.1)",
                     lower=f"var y = zeros(3)\nobjective = 0.5 * sum(train.w * (y - x) ** 2)\n"
                           f"optimizer = {name}({written})\nsteps = 6",
                     pipeline="RAD")
    got = build(source, train={"w": weights}, x=x).hypergradient()["x"]
    as_torch = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
    assert_close(got, torch_optim_central_difference(name, as_torch, x, weights, steps=6), rtol=1e-7)
