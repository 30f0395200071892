"""hyper_cleaning_minibatch.blo, compiled by blodsl 0.1.0: `NGD -> RAD`.

Regenerate with `blodsl compile programs/hyper_cleaning_minibatch.blo -o FILE`; edits here are lost.
"""

import torch

from blodsl import runtime as rt
from blodsl.runtime import functions as fn

DATA_FOLDER = "programs"  # data files are named relative to it


class Problem(rt.Problem):
    source = "hyper_cleaning_minibatch.blo"
    pipeline = [rt.Op("NGD"), rt.Op("RAD", checkpoint=0)]  # hyper_cleaning_minibatch.blo:32
    data_used = ["train", "val"]
    lower_data = ["train"]
    batches = {"train": 256, "val": 1000}  # samples per read of these datasets in an objective
    batch_fields = {"train": ["index", "x", "y"], "val": ["x", "y"]}  # what they read
    metrics = {
        "test_accuracy": rt.MetricSpec(rebind={}, datasets=("test",), per_sample=True),  # hyper_cleaning_minibatch.blo:38
        "flagged_f1": rt.MetricSpec(rebind={}, datasets=("train",)),  # hyper_cleaning_minibatch.blo:39
    }
    outer_steps, eval_every, seed = 600, 100, 0
    baseline = {}  # upper values held fixed for comparison ({}: initial)
    device, dtype = "auto", "float32"

    def load_data(self):
        train, val, test = rt.data.classification(n=60000, features=100, informative=20, classes=10, separation=0.8, split=[0.8333, 0.0833, 0.0834], label_noise=0.5, seed=0)  # hyper_cleaning_minibatch.blo:14
        return {"train": train, "val": val, "test": test}

    def upper_level(self):
        return rt.Level(  # hyper_cleaning_minibatch.blo:19
            variables={
                "w": rt.Init("zeros", (self.sizes["train.n"],)),  # hyper_cleaning_minibatch.blo:20
            },
            models={},
            optimizer=("Adam", {"lr": 0.3}),  # hyper_cleaning_minibatch.blo:22
        )

    def lower_level(self):
        return rt.Level(  # hyper_cleaning_minibatch.blo:25
            variables={},
            models={
                "net": rt.layers.Linear(self.sizes["train.features"], self.sizes["train.classes"]),  # hyper_cleaning_minibatch.blo:26
            },
            optimizer=rt.inner.SGD(lr=0.1, momentum=0.9, dampening=0.0, weight_decay=0.0, nesterov=False),  # hyper_cleaning_minibatch.blo:28
            steps=5, start="warm",
        )

    def upper_objective(self, upper, lower, data):
        # hyper_cleaning_minibatch.blo:21  cross_entropy(net(val.x), val.y)
        val = data["val"]
        net = self.model("net", lower["net"])
        return fn.cross_entropy(net(val["x"]), val["y"])

    def lower_objective(self, upper, lower, data):
        # hyper_cleaning_minibatch.blo:27  mean(sigmoid(w[train.index]) * cross_entropy(net(train.x), train.y, reduction="none"))
        train = data["train"]
        net = self.model("net", lower["net"])
        w = upper["w"]
        return fn.mean(fn.sigmoid(w[train["index"]]) * fn.cross_entropy(net(train["x"]), train["y"], reduction="none"))

    def metric_test_accuracy(self, upper, lower, data):
        # hyper_cleaning_minibatch.blo:38  accuracy(net(test.x), test.y)
        test = data["test"]
        net = self.model("net", lower["net"])
        return fn.accuracy(net(test["x"]), test["y"])

    def metric_flagged_f1(self, upper, lower, data):
        # hyper_cleaning_minibatch.blo:39  f1(sigmoid(w) < 0.5, train.noisy)
        train = data["train"]
        w = upper["w"]
        return fn.f1(fn.sigmoid(w) < 0.5, train["noisy"])


def build(bindings=None, device=None, dtype=None, compile=True, seed=None, folder=None):
    """The pipeline of hyper_cleaning_minibatch.blo: `.run()`, `.step()`, `.hypergradient()`."""
    folder = rt.program_folder(DATA_FOLDER, __file__) if folder is None else folder
    return rt.Pipeline(Problem(bindings, folder), source=rt.source_of(__file__), device=device,
                       dtype=dtype, compile=compile, seed=seed)
