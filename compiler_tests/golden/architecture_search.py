"""architecture_search.blo, compiled by blodsl 0.1.0: `NGD -> FD(r=0.01)`.

Regenerate with `blodsl compile programs/architecture_search.blo -o FILE`; edits here are lost.
"""

import torch

from blodsl import runtime as rt
from blodsl.runtime import functions as fn

DATA_FOLDER = "programs"  # data files are named relative to it


class Problem(rt.Problem):
    source = "architecture_search.blo"
    pipeline = [rt.Op("NGD"), rt.Op("FD", r=0.01)]  # architecture_search.blo:31
    data_used = ["train", "val"]
    lower_data = ["train"]
    metrics = {
        "mixing_weights": rt.MetricSpec(rebind={}, datasets=()),  # architecture_search.blo:37
        "test_accuracy": rt.MetricSpec(rebind={}, datasets=("test",)),  # architecture_search.blo:38
    }
    outer_steps, eval_every, seed = 300, 30, 0
    baseline = {}  # upper values held fixed for comparison ({}: initial)
    device, dtype = "auto", "float32"

    def load_data(self):
        train, val, test = rt.data.digits(split=[0.4, 0.3, 0.3], seed=0)  # architecture_search.blo:12
        return {"train": train, "val": val, "test": test}

    def upper_level(self):
        return rt.Level(  # architecture_search.blo:15
            variables={
                "alpha": rt.Init("zeros", (3,)),  # architecture_search.blo:16
            },
            models={},
            optimizer=("Adam", {"lr": 0.03}),  # architecture_search.blo:18
        )

    def lower_level(self):
        return rt.Level(  # architecture_search.blo:21
            variables={},
            models={
                "linear": rt.layers.Linear(self.sizes["train.features"], self.sizes["train.classes"]),  # architecture_search.blo:22
                "shallow": rt.layers.MLP(self.sizes["train.features"], [32], self.sizes["train.classes"]),  # architecture_search.blo:23
                "deep": rt.layers.MLP(self.sizes["train.features"], [64, 64], self.sizes["train.classes"], activation="tanh"),  # architecture_search.blo:24
            },
            optimizer=rt.inner.SGD(lr=0.1, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False),  # architecture_search.blo:26
            steps=1, start="warm",  # architecture_search.blo:28
        )

    def upper_objective(self, upper, lower, data):
        # architecture_search.blo:17  cross_entropy(mix(alpha, [linear(val.x), shallow(val.x), deep(val.x)]), val.y)
        val = data["val"]
        deep = self.model("deep", lower["deep"])
        linear = self.model("linear", lower["linear"])
        shallow = self.model("shallow", lower["shallow"])
        alpha = upper["alpha"]
        return fn.cross_entropy(fn.mix(alpha, [linear(val["x"]), shallow(val["x"]), deep(val["x"])]), val["y"])

    def lower_objective(self, upper, lower, data):
        # architecture_search.blo:25  cross_entropy(mix(alpha, [linear(train.x), shallow(train.x), deep(train.x)]), train.y)
        train = data["train"]
        deep = self.model("deep", lower["deep"])
        linear = self.model("linear", lower["linear"])
        shallow = self.model("shallow", lower["shallow"])
        alpha = upper["alpha"]
        return fn.cross_entropy(fn.mix(alpha, [linear(train["x"]), shallow(train["x"]), deep(train["x"])]), train["y"])

    def metric_mixing_weights(self, upper, lower, data):
        # architecture_search.blo:37  softmax(alpha)
        alpha = upper["alpha"]
        return fn.softmax(alpha)

    def metric_test_accuracy(self, upper, lower, data):
        # architecture_search.blo:38  accuracy(mix(alpha, [linear(test.x), shallow(test.x), deep(test.x)]), test.y)
        test = data["test"]
        deep = self.model("deep", lower["deep"])
        linear = self.model("linear", lower["linear"])
        shallow = self.model("shallow", lower["shallow"])
        alpha = upper["alpha"]
        return fn.accuracy(fn.mix(alpha, [linear(test["x"]), shallow(test["x"]), deep(test["x"])]), test["y"])


def build(bindings=None, device=None, dtype=None, compile=True, seed=None, folder=None):
    """The pipeline of architecture_search.blo: `.run()`, `.step()`, `.hypergradient()`."""
    folder = rt.program_folder(DATA_FOLDER, __file__) if folder is None else folder
    return rt.Pipeline(Problem(bindings, folder), source=rt.source_of(__file__), device=device,
                       dtype=dtype, compile=compile, seed=seed)
