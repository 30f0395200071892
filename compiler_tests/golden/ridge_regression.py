"""ridge_regression.blo, compiled by blodsl 0.1.0: `NGD -> NS(k=50, alpha=0.1)`.

Regenerate with `blodsl compile programs/ridge_regression.blo -o FILE`; edits here are lost.
"""

import torch

from blodsl import runtime as rt
from blodsl.runtime import functions as fn

DATA_FOLDER = "programs"  # data files are named relative to it


class Problem(rt.Problem):
    source = "ridge_regression.blo"
    pipeline = [rt.Op("NGD"), rt.Op("NS", k=50, alpha=0.1)]  # ridge_regression.blo:26
    data_used = ["train", "val"]
    lower_data = ["train"]
    metrics = {
        "val_mse": rt.MetricSpec(rebind={}, datasets=("val",)),  # ridge_regression.blo:31
    }
    outer_steps, eval_every, seed = 100, 10, 0
    baseline = None  # upper values held fixed for comparison ({}: initial)
    device, dtype = "auto", "float32"

    def load_data(self):
        train, val = rt.data.regression(n=400, features=20, noise=0.5, split=[0.5, 0.5], seed=0)  # ridge_regression.blo:9
        return {"train": train, "val": val}

    def upper_level(self):
        return rt.Level(  # ridge_regression.blo:12
            variables={
                "log_lam": rt.Init("zeros", (self.sizes["train.features"],)),  # ridge_regression.blo:13
            },
            models={},
            optimizer=("Adam", {"lr": 0.05}),  # ridge_regression.blo:15
        )

    def lower_level(self):
        return rt.Level(  # ridge_regression.blo:18
            variables={
                "w": rt.Init("zeros", (self.sizes["train.features"],)),  # ridge_regression.blo:19
            },
            models={},
            optimizer=rt.inner.SGD(lr=0.1, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False),  # ridge_regression.blo:21
            steps=200, start="warm",  # ridge_regression.blo:23
        )

    def upper_objective(self, upper, lower, data):
        # ridge_regression.blo:14  0.5 * mean((val.x @ w - val.y) ** 2)
        val = data["val"]
        w = lower["w"]
        return 0.5 * fn.mean((val["x"] @ w - val["y"]) ** 2)

    def lower_objective(self, upper, lower, data):
        # ridge_regression.blo:20  0.5 * mean((train.x @ w - train.y) ** 2) + 0.5 * sum(exp(log_lam) * w ** 2) / train.n
        train = data["train"]
        w = lower["w"]
        log_lam = upper["log_lam"]
        return 0.5 * fn.mean((train["x"] @ w - train["y"]) ** 2) + 0.5 * fn.sum(fn.exp(log_lam) * w ** 2) / self.sizes["train.n"]

    def metric_val_mse(self, upper, lower, data):
        # ridge_regression.blo:31  mean((val.x @ w - val.y) ** 2)
        val = data["val"]
        w = lower["w"]
        return fn.mean((val["x"] @ w - val["y"]) ** 2)


def build(bindings=None, device=None, dtype=None, compile=True, seed=None, folder=None):
    """The pipeline of ridge_regression.blo: `.run()`, `.step()`, `.hypergradient()`."""
    folder = rt.program_folder(DATA_FOLDER, __file__) if folder is None else folder
    return rt.Pipeline(Problem(bindings, folder), source=rt.source_of(__file__), device=device,
                       dtype=dtype, compile=compile, seed=seed)
