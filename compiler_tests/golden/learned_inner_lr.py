"""learned_inner_lr.blo, compiled by blodsl 0.1.0: `NGD -> RAD`.

Regenerate with `blodsl compile programs/learned_inner_lr.blo -o FILE`; edits here are lost.
"""

import torch

from blodsl import runtime as rt
from blodsl.runtime import functions as fn

DATA_FOLDER = "programs"  # data files are named relative to it


class Problem(rt.Problem):
    source = "learned_inner_lr.blo"
    pipeline = [rt.Op("NGD"), rt.Op("RAD", checkpoint=0)]  # learned_inner_lr.blo:30
    data_used = ["train", "val"]
    lower_data = ["train"]
    metrics = {
        "inner_lr": rt.MetricSpec(rebind={}, datasets=()),  # learned_inner_lr.blo:36
        "val_loss": rt.MetricSpec(rebind={}, datasets=("val",), per_sample=True),  # learned_inner_lr.blo:37
        "test_accuracy": rt.MetricSpec(rebind={}, datasets=("test",), per_sample=True),  # learned_inner_lr.blo:38
    }
    outer_steps, eval_every, seed = 60, 10, 0
    baseline = {"log_lr": [-5.0, -4.0, -3.0, -2.0, -1.0, 0.0]}  # upper values held fixed for comparison ({}: initial)
    device, dtype = "auto", "float32"

    def load_data(self):
        train, val, test = rt.data.digits(split=[0.3, 0.2, 0.5], seed=0)  # learned_inner_lr.blo:13
        return {"train": train, "val": val, "test": test}

    def upper_level(self):
        return rt.Level(  # learned_inner_lr.blo:16
            variables={
                "log_lr": rt.Init("full", (), {"value": -5.0}),  # learned_inner_lr.blo:17
            },
            models={},
            optimizer=("Adam", {"lr": 0.1}),  # learned_inner_lr.blo:19
        )

    def lower_level(self):
        return rt.Level(  # learned_inner_lr.blo:22
            variables={},
            models={
                "net": rt.layers.MLP(self.sizes["train.features"], [32], self.sizes["train.classes"]),  # learned_inner_lr.blo:23
            },
            optimizer=rt.inner.SGD(lr=0.001, momentum=0.9, dampening=0.0, weight_decay=0.0, nesterov=False),  # learned_inner_lr.blo:25
            steps=30, start="reinit",  # learned_inner_lr.blo:27
        )

    def upper_objective(self, upper, lower, data):
        # learned_inner_lr.blo:18  cross_entropy(net(val.x), val.y)
        val = data["val"]
        net = self.model("net", lower["net"])
        return fn.cross_entropy(net(val["x"]), val["y"])

    def lower_objective(self, upper, lower, data):
        # learned_inner_lr.blo:24  cross_entropy(net(train.x), train.y)
        train = data["train"]
        net = self.model("net", lower["net"])
        return fn.cross_entropy(net(train["x"]), train["y"])

    def lower_optimizer_settings(self, upper):
        # learned_inner_lr.blo:25  lr=exp(log_lr)
        log_lr = upper["log_lr"]
        return {"lr": fn.exp(log_lr)}

    def metric_inner_lr(self, upper, lower, data):
        # learned_inner_lr.blo:36  exp(log_lr)
        log_lr = upper["log_lr"]
        return fn.exp(log_lr)

    def metric_val_loss(self, upper, lower, data):
        # learned_inner_lr.blo:37  cross_entropy(net(val.x), val.y)
        val = data["val"]
        net = self.model("net", lower["net"])
        return fn.cross_entropy(net(val["x"]), val["y"])

    def metric_test_accuracy(self, upper, lower, data):
        # learned_inner_lr.blo:38  accuracy(net(test.x), test.y)
        test = data["test"]
        net = self.model("net", lower["net"])
        return fn.accuracy(net(test["x"]), test["y"])


def build(bindings=None, device=None, dtype=None, compile=True, seed=None, folder=None):
    """The pipeline of learned_inner_lr.blo: `.run()`, `.step()`, `.hypergradient()`."""
    folder = rt.program_folder(DATA_FOLDER, __file__) if folder is None else folder
    return rt.Pipeline(Problem(bindings, folder), source=rt.source_of(__file__), device=device,
                       dtype=dtype, compile=compile, seed=seed)
