"""embedded.blo, compiled by blodsl 0.1.0: `NGD -> RGT(truncate=20) -> RAD`.

Regenerate with `blodsl compile programs/embedded.blo -o FILE`; edits here are lost.
"""

import torch

from blodsl import runtime as rt
from blodsl.runtime import functions as fn

DATA_FOLDER = "programs"  # data files are named relative to it


class Problem(rt.Problem):
    source = "embedded.blo"
    pipeline = [rt.Op("NGD"), rt.Op("RGT", truncate=20), rt.Op("RAD", checkpoint=0)]  # embedded.blo:31
    data_used = ["train", "val"]
    lower_data = ["train"]
    metrics = {
        "val_accuracy": rt.MetricSpec(rebind={}, datasets=("val",), per_sample=True),  # embedded.blo:35
    }
    outer_steps, eval_every, seed = 20, 2, 0
    baseline = None  # upper values held fixed for comparison ({}: initial)
    device, dtype = "auto", "float32"

    def load_data(self):
        train = rt.data.bound("train", self.bound("train", "a dataset"), ["x", "y"])  # embedded.blo:13
        val = rt.data.bound("val", self.bound("val", "a dataset"), ["x", "y"])  # embedded.blo:14
        return {"train": train, "val": val}

    def upper_level(self):
        return rt.Level(  # embedded.blo:17
            variables={
                "log_decay": rt.Init("full", (), {"value": -4.0}),  # embedded.blo:18
            },
            models={},
            optimizer=("SGD", {"lr": 0.1, "momentum": 0.9}),  # embedded.blo:20
        )

    def lower_level(self):
        return rt.Level(  # embedded.blo:23
            variables={},
            models={
                "net": self.bound("net", "an nn.Module"),  # embedded.blo:24
            },
            optimizer=rt.inner.Adam(lr=0.001, betas=[0.9, 0.999], eps=1e-08, weight_decay=0.0),  # embedded.blo:26
            steps=30, start="reinit",  # embedded.blo:28
        )

    def upper_objective(self, upper, lower, data):
        # embedded.blo:19  cross_entropy(net(val.x), val.y)
        val = data["val"]
        net = self.model("net", lower["net"])
        return fn.cross_entropy(net(val["x"]), val["y"])

    def lower_objective(self, upper, lower, data):
        # embedded.blo:25  cross_entropy(net(train.x), train.y) + exp(log_decay) * sqnorm(net)
        train = data["train"]
        net = self.model("net", lower["net"])
        log_decay = upper["log_decay"]
        return fn.cross_entropy(net(train["x"]), train["y"]) + fn.exp(log_decay) * fn.sqnorm(lower["net"])

    def metric_val_accuracy(self, upper, lower, data):
        # embedded.blo:35  accuracy(net(val.x), val.y)
        val = data["val"]
        net = self.model("net", lower["net"])
        return fn.accuracy(net(val["x"]), val["y"])


def build(bindings=None, device=None, dtype=None, compile=True, seed=None, folder=None):
    """The pipeline of embedded.blo: `.run()`, `.step()`, `.hypergradient()`."""
    folder = rt.program_folder(DATA_FOLDER, __file__) if folder is None else folder
    return rt.Pipeline(Problem(bindings, folder), source=rt.source_of(__file__), device=device,
                       dtype=dtype, compile=compile, seed=seed)
