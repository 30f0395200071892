"""The benchmark problems written with BOAT (`boat-torch` 1.1.1).

BOAT composes a solver from operation names: gradient-mapping operations (`gm_op`,
the inner dynamics) and numerical-approximation operations (`na_op`, the
hypergradient). As in BOAT's data hyper-cleaning, L2 and meta-learning examples, the
objectives are plain functions `loss(feed_dict, upper_model, lower_model, **kwargs)`
that BOAT loads by dotted name from a loss config; `Problem.run_iter` then runs the
inner loop (through `higher`), the hypergradient and the upper optimiser's step.

Where BOAT's operation differs from blodsl's definition (the README's) we keep BOAT's behaviour:
  - FD: BOAT takes the finite difference of grad_x f around the lower model's own
    weights, i.e. the inner loop's start y_0 (as DARTS does for its one-step unroll),
    not around y_T; v = grad_y F is taken at y_T. On hyper_cleaning (T = 5, first outer
    step) this differs from blodsl's FD at y_T by about 5% (relative norm); it
    matches the same formula evaluated at y_0 to 1e-5.
  - NS: BOAT's NS has no parameters of its own: it reads k and tol from the CG entry
    of the config and alpha from the inner optimiser's lr, which are ours (k=10, lr).
Everything else (RAD, CG, IGA, DI, PTT, IAD, FOA) matches blodsl's definitions to float32 round-off.

The first-order methods are BOAT's `fo_op` (one name, the whole outer step) and DM is a
`gm_op` run after NGD with RAD or CG as `na_op`, as in BOAT's data hyper-cleaning example
and its tests. Where they depart from the papers is in DEPARTURES below (the report
prints it under the figures).

Costs BOAT adds to every run_iter that config cannot turn off: host syncs (.item() of
the upper loss, PTT's per-step upper losses, CG's and NS's per-iteration stopping test),
and one extra evaluation of f and F appended to a loss history that is rewritten in
full to `loss_log_path` as JSON each iteration (here os.devnull).
"""

from __future__ import annotations

import os

import boat_torch as boat
import torch
import torch.nn.functional as F

from bench import problems
from bench.problems import Case, Unsupported

# our method -> (BOAT gm_op, BOAT na_op); BOAT orders the operations itself.
OPS = {
    "RAD": (["NGD"], ["RAD"]),
    "CG": (["NGD"], ["CG"]),
    "NS": (["NGD"], ["NS"]),
    "FD": (["NGD"], ["FD"]),
    "IGA": (["NGD"], ["IGA"]),
    "DI->RAD": (["NGD", "DI"], ["RAD"]),
    "PTT->RAD": (["NGD"], ["PTT", "RAD"]),
    "IAD": (["NGD"], ["IAD"]),
    "FOA->IAD": (["NGD"], ["FOA", "IAD"]),
    # DM runs after one NGD step on higher's copy of the lower model (BOAT's tests: gm_op DM, NGD)
    "DM->RAD": (["NGD", "DM"], ["RAD"]),
    "DM->CG": (["NGD", "DM"], ["CG"]),
}
FO_OPS = ("VFO", "VSO", "MESO", "PGDO", "ALTO")   # BOAT's fo_op names, the same as ours

# BOAT's method parameters have no defaults in code (a missing key is a KeyError): these are
# the values of its data hyper-cleaning example, examples/data_hyper_cleaning/configs/
# boat_config_dhl.json, the same as blodsl's defaults; problems.FIRST_ORDER_PARAMS overrides.
METHOD_CONFIG = {
    "VSO": {"z_loop": 5, "z_lr": 0.01, "ll_l2_reg": 0.1, "ul_l2_reg": 0.01, "ul_ln_reg": 10.0, "reg_decay": True},
    "VFO": {"eta": 0.5, "u1": 0.1, "y_hat_lr": 0.01},   # eta is read but never used
    "MESO": {"eta": 0.001, "gamma_1": 0.01, "c0": 0.2, "y_hat_lr": 0.1},
    "PGDO": {"y_hat_lr": 0.01, "gamma_init": 0.0, "gamma_max": 0.2, "gamma_argmax_step": 30000,
             "update_y_ahead": False, "penalty": "difference"},
    "DM": {"auxiliary_v_lr": 0.1, "tau": 0.01, "p": 100, "mu0": 0.9, "eta0": 0.5, "strategy": "s1"},
}

# Where BOAT 1.1.1 departs from the paper a method cites (files under boat_torch/), so that a
# reader knows why its figures differ from blodsl's. ALTO and RAD follow the definition.
DEPARTURES = {
    "VFO": "BOAT first trains y for T steps of the lower optimiser (fo_ol/vfo.py:109-116) and starts y_hat "
           "from y's value before them, with momentum 0.5 (:93-94); y's own step then adds d_y to the last "
           "inner gradient still in .grad (:174-176)",
    "VSO": "BOAT's log barrier is ln(f(y).item() + phi - f(y)) (fo_ol/vso.py:117, :134): eps is dropped and "
           "its value is ln(phi) wherever y is; y restarts from z every outer step (:103) and repeats its last "
           "step (:124); the lower model it keeps, and which is scored, is z",
    "MESO": "BOAT steps y before x (fo_ol/meso.py:123-134, x's direction at the new y :136-142) and "
            "differentiates y's penalty through theta', itself a function of y, which scales it by (1 - eta gamma_1) "
            "(:115-122)",
    "PGDO": "BOAT matches the paper for the difference penalty used here; its gradient penalty is "
            "detached and so adds nothing (fo_ol/pgdo.py:138-142)",
    "DM->RAD": "BOAT evaluates every quantity at the look-ahead y1 = y - beta grad f(y) (NGD runs first, "
               "gm_ol/ngd.py:163) and moves y to y - beta grad f(y1) (gm_ol/dm.py:242-243); y1 is on higher's "
               "tape, so x's direction also carries dF(y1)/dx, a one-step unrolled hypergradient (:229-231; "
               "it is all of the first direction, where v = 0); the upper lr is set to lr beta (k+1)^-tau, "
               "beta = 0.1 times blodsl's (:184-197), and v's step to eta0 beta (k+1)^(-tau/2) = 0.05, not "
               "auxiliary_v_lr = 0.1 (:189-195)",
    "DM->CG": "BOAT evaluates at the look-ahead y1 = y - beta grad f(y) as for DM->RAD; its Cauchy step "
              "squares the sum of per-tensor norms (gm_ol/dm.py:263) and divides by <r, H r> + 1e-12 "
              "unchecked (:274); the upper lr keeps no schedule (set in the RAD branch only, :179-197)",
}
LINEAR_METHODS = ("RAD", "CG", "NS", "FD", "IGA", "DI->RAD", "PTT->RAD")


# --- objectives, loaded by BOAT from the loss config ------------------------------------------
# kwargs carries `params=` when BOAT evaluates higher's functional model at given weights.

def weighted_ce(feed, upper_model, lower_model, l2=0.0, **kwargs):
    ce = F.cross_entropy(lower_model(feed["data"], **kwargs), feed["target"], reduction="none")
    weights = kwargs.get("params", list(lower_model.parameters()))
    return upper_model(ce) + l2 * sum(p.pow(2).sum() for p in weights)


def decayed_ce(feed, upper_model, lower_model, **kwargs):
    weight = kwargs.get("params", list(lower_model.parameters()))[0]
    ce = F.cross_entropy(lower_model(feed["data"], **kwargs), feed["target"])
    return ce + 0.5 * (upper_model().exp() * weight.pow(2)).sum()


def val_ce(feed, upper_model, lower_model, **kwargs):
    return F.cross_entropy(lower_model(feed["data"], **kwargs), feed["target"])


def task_mse(feed, upper_model, lower_model, scale=1.0, **kwargs):
    return scale * F.mse_loss(lower_model(feed["data"], **kwargs), feed["target"])


def _loss(name, **params):
    return {"function": f"{__name__}.{name}", "params": params}


# --- upper models ----------------------------------------------------------------------------

class SampleWeights(torch.nn.Module):
    """hyper_cleaning: one weight logit per training sample, applied to the per-sample losses."""

    def __init__(self, n):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(n))

    def forward(self, losses):
        return (torch.sigmoid(self.w) * losses).mean()


class LogDecay(torch.nn.Module):
    """l2_logreg: a per-feature log weight decay."""

    def __init__(self, p):
        super().__init__()
        self.log_decay = torch.nn.Parameter(torch.full((p,), problems.L2_LOGREG["init"]))

    def forward(self):
        return self.log_decay


def make(case: Case, device: str = "cpu"):
    if case.problem == "minibatch_cleaning":
        raise Unsupported(problems.NOT_MINIBATCHED)
    if case.method not in OPS and case.method not in FO_OPS:
        raise Unsupported(f"{case.method} is not a BOAT operation combination")
    if case.problem == "meta_sgd":
        raise Unsupported("BOAT has no learned inner-optimiser settings: higher copies its torch.optim "
                          "inner optimiser with the config's fixed lr (no override)")
    if (case.problem == "maml") != (case.method in ("IAD", "FOA->IAD")):
        raise Unsupported(f"{case.method} is not defined for {case.problem}")
    return _Runner(case, device, _feeds(case, device))


def _feeds(case, device):
    """(ll_feed_dict, ul_feed_dict) per outer step: one pair, or maml's 4 batches as
    lists of per-task dicts (BOAT's accumulate_grad format)."""
    if case.problem == "maml":
        def tasks(batch, part):
            return [{"data": x, "target": y} for x, y in zip(batch[f"{part}_x"], batch[f"{part}_y"])]
        batches = [problems.maml_batch(i, device) for i in range(4)]
        return [(tasks(b, "support"), tasks(b, "query")) for b in batches]
    if case.problem == "l2_logreg":
        d = problems.l2_logreg_data(case.features, device)
    else:
        d = problems.hyper_cleaning_data(device)
    return [({"data": d["train_x"], "target": d["train_y"]}, {"data": d["val_x"], "target": d["val_y"]})]


class _Runner:
    def __init__(self, case: Case, device: str, feeds, return_grad: bool = False):
        self.case, self.device, self.feeds, self.i = case, device, feeds, 0
        fo_op = case.method if case.method in FO_OPS else None
        gm_op, na_op = OPS.get(case.method, (None, None))
        maml = case.problem == "maml"
        if maml:
            # MAML as in BOAT's meta-learning example: one model is both levels; the inner
            # optimiser runs on (a functional copy of) the meta-model's weights.
            h = problems.MAML["hidden"]
            lower = torch.nn.Sequential(torch.nn.Linear(1, h), torch.nn.ReLU(), torch.nn.Linear(h, h),
                                        torch.nn.ReLU(), torch.nn.Linear(h, 1))
            lower.load_state_dict(problems.maml_init())
            upper = lower = lower.to(device)
            tasks = len(feeds[0][0])
            # BOAT sums the tasks' hypergradients; F is their mean, so each query loss is scaled.
            losses = {"lower_level_loss": _loss("task_mse"), "upper_level_loss": _loss("task_mse", scale=1 / tasks)}
        else:
            if case.problem == "l2_logreg":
                lower, upper = torch.nn.Linear(case.features, 2), LogDecay(case.features)
                f = _loss("decayed_ce")
            else:
                c = problems.HYPER_CLEANING
                lower, upper = torch.nn.Linear(c["features"], c["classes"]), SampleWeights(c["train"])
                f = _loss("weighted_ce", l2=c["l2"])
            torch.nn.init.zeros_(lower.weight)
            torch.nn.init.zeros_(lower.bias)
            lower, upper = lower.to(device), upper.to(device)
            losses = {"lower_level_loss": f, "upper_level_loss": _loss("val_ce")}
        self.lower, self.upper = lower, upper
        config = {
            "fo_op": fo_op,
            "gm_op": gm_op,
            "na_op": na_op,
            "fo_ol_batch_input": False,  # one feed dict per run_iter, not a list of task batches
            "lower_iters": case.steps,
            "device": device,
            "return_grad": return_grad,  # True: run_iter returns the hypergradient, no upper step
            "accumulate_grad": maml,  # maml: one feed dict per task, gradients accumulated
            # warm start: the lower model takes y_T after each step; with DI it holds the learned y0
            # instead (BOAT's DI optimiser steps these same tensors), so it must not be overwritten.
            "copy_last_param": "DI" not in (gm_op or ()),
            "loss_log_path": os.devnull,  # BOAT dumps its loss history every iteration
            "DI": {"lr": problems.METHODS["DI"]["lr"]},
            "GDA": {"alpha_init": 0.5, "alpha_decay": 0.9},  # unused (no GDA), required by BOAT
            "RGT": {"truncate_iter": 0},
            "CG": {"k": problems.METHODS["CG"]["k"], "tolerance": problems.METHODS["CG"]["tol"]},  # NS reads these too
            "FD": {"r": problems.METHODS["FD"]["r"]},
            **{name: {**params, **problems.FIRST_ORDER_PARAMS.get(name, {})} for name, params in METHOD_CONFIG.items()},
            "lower_level_model": lower,
            "upper_level_model": upper,
            "lower_level_var": list(lower.parameters()),
            "upper_level_var": list(upper.parameters()),
            # fresh SGD state each outer step: higher copies this (stateless) SGD into its inner loop
            "lower_level_opt": torch.optim.SGD(lower.parameters(), lr=case.inner_lr),
            "upper_level_opt": torch.optim.Adam(upper.parameters(), lr=case.outer_lr),
        }
        self.problem = boat.Problem(config, losses)
        self.problem.build_ll_solver()
        self.problem.build_ul_solver()

    def _run_iter(self):
        ll, ul = self.feeds[self.i % len(self.feeds)]
        out = self.problem.run_iter(ll, ul, current_iter=self.i)
        self.i += 1
        return out

    def hypergradient(self) -> list[torch.Tensor]:
        # A fresh twin with return_grad=True, so that this runner's models stay untouched
        # (run_iter also advances the lower model).
        grads, _ = _Runner(self.case, self.device, self.feeds, return_grad=True)._run_iter()
        return [g.detach().clone() for g in grads]

    def step(self) -> None:
        self._run_iter()

    def lower_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.lower.weight, self.lower.bias

    def sample_weights(self) -> torch.Tensor:
        return self.upper.w
