"""l2_regularisation.blo, compiled by blodsl 0.1.0: `NGD -> CG(k=20, tol=1e-08)`.

Regenerate with `blodsl compile programs/l2_regularisation.blo -o FILE`; edits here are lost.
"""

import torch

from blodsl import runtime as rt
from blodsl.runtime import functions as fn

DATA_FOLDER = "programs"  # data files are named relative to it


class Problem(rt.Problem):
    source = "l2_regularisation.blo"
    pipeline = [rt.Op("NGD"), rt.Op("CG", k=20, tol=1e-08)]  # l2_regularisation.blo:31
    data_used = ["train", "val"]
    lower_data = ["train"]
    metrics = {
        "val_loss": rt.MetricSpec(rebind={}, datasets=("val",), per_sample=True),  # l2_regularisation.blo:37
        "test_accuracy": rt.MetricSpec(rebind={}, datasets=("test",), per_sample=True),  # l2_regularisation.blo:38
    }
    outer_steps, eval_every, seed = 50, 5, 0
    baseline = {"log_decay": [-8.0, -6.0, -5.0, -4.0, -3.0, -2.0, -1.0, 0.0]}  # upper values held fixed for comparison ({}: initial)
    device, dtype = "auto", "float32"

    def load_data(self):
        train, val, test = rt.data.classification(n=1500, features=100, informative=10, classes=2, split=[0.1, 0.3, 0.6], seed=0)  # l2_regularisation.blo:13
        return {"train": train, "val": val, "test": test}

    def upper_level(self):
        return rt.Level(  # l2_regularisation.blo:17
            variables={
                "log_decay": rt.Init("full", (self.sizes["train.features"],), {"value": -3.0}),  # l2_regularisation.blo:18
            },
            models={},
            optimizer=("Adam", {"lr": 0.05}),  # l2_regularisation.blo:20
        )

    def lower_level(self):
        return rt.Level(  # l2_regularisation.blo:23
            variables={},
            models={
                "net": rt.layers.Linear(self.sizes["train.features"], self.sizes["train.classes"]),  # l2_regularisation.blo:24
            },
            optimizer=rt.inner.SGD(lr=0.5, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False),  # l2_regularisation.blo:26
            steps=100, start="warm",  # l2_regularisation.blo:28
        )

    def upper_objective(self, upper, lower, data):
        # l2_regularisation.blo:19  cross_entropy(net(val.x), val.y)
        val = data["val"]
        net = self.model("net", lower["net"])
        return fn.cross_entropy(net(val["x"]), val["y"])

    def lower_objective(self, upper, lower, data):
        # l2_regularisation.blo:25  cross_entropy(net(train.x), train.y) + 0.5 * sum(exp(log_decay) * net.weight ** 2)
        train = data["train"]
        net = self.model("net", lower["net"])
        log_decay = upper["log_decay"]
        return fn.cross_entropy(net(train["x"]), train["y"]) + 0.5 * fn.sum(fn.exp(log_decay) * lower["net"]["weight"] ** 2)

    def metric_val_loss(self, upper, lower, data):
        # l2_regularisation.blo:37  cross_entropy(net(val.x), val.y)
        val = data["val"]
        net = self.model("net", lower["net"])
        return fn.cross_entropy(net(val["x"]), val["y"])

    def metric_test_accuracy(self, upper, lower, data):
        # l2_regularisation.blo:38  accuracy(net(test.x), test.y)
        test = data["test"]
        net = self.model("net", lower["net"])
        return fn.accuracy(net(test["x"]), test["y"])


def build(bindings=None, device=None, dtype=None, compile=True, seed=None, folder=None):
    """The pipeline of l2_regularisation.blo: `.run()`, `.step()`, `.hypergradient()`."""
    folder = rt.program_folder(DATA_FOLDER, __file__) if folder is None else folder
    return rt.Pipeline(Problem(bindings, folder), source=rt.source_of(__file__), device=device,
                       dtype=dtype, compile=compile, seed=seed)
