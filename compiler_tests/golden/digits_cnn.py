"""digits_cnn.blo, compiled by blodsl 0.1.0: `NGD -> RAD`.

Regenerate with `blodsl compile programs/digits_cnn.blo -o FILE`; edits here are lost.
"""

import torch

from blodsl import runtime as rt
from blodsl.runtime import functions as fn

DATA_FOLDER = "programs"  # data files are named relative to it


class Problem(rt.Problem):
    source = "digits_cnn.blo"
    pipeline = [rt.Op("NGD"), rt.Op("RAD", checkpoint=0)]  # digits_cnn.blo:32
    data_used = ["train", "val"]
    lower_data = ["train"]
    metrics = {
        "test_accuracy": rt.MetricSpec(rebind={}, datasets=("test",), per_sample=True),  # digits_cnn.blo:39
        "flagged_f1": rt.MetricSpec(rebind={}, datasets=("train",)),  # digits_cnn.blo:40
    }
    outer_steps, eval_every, seed = 100, 10, 0
    baseline = {}  # upper values held fixed for comparison ({}: initial)
    device, dtype = "auto", "float32"

    def load_data(self):
        train, val, test = rt.data.digits(split=[0.5, 0.2, 0.3], label_noise=0.45, images=True, seed=0)  # digits_cnn.blo:15
        return {"train": train, "val": val, "test": test}

    def upper_level(self):
        return rt.Level(  # digits_cnn.blo:18
            variables={
                "w": rt.Init("zeros", (self.sizes["train.n"],)),  # digits_cnn.blo:19
            },
            models={},
            optimizer=("Adam", {"lr": 0.1}),  # digits_cnn.blo:21
        )

    def lower_level(self):
        return rt.Level(  # digits_cnn.blo:24
            variables={},
            models={
                "net": rt.layers.Sequential(rt.layers.Conv2d(self.sizes["train.channels"], 8, 3), rt.layers.ReLU(), rt.layers.MaxPool2d(2), rt.layers.Flatten(), rt.layers.Linear(72, self.sizes["train.classes"])),  # digits_cnn.blo:25
            },
            optimizer=rt.inner.SGD(lr=0.1, momentum=0.9, dampening=0.0, weight_decay=0.0, nesterov=False),  # digits_cnn.blo:27
            steps=10, start="warm",  # digits_cnn.blo:29
        )

    def upper_objective(self, upper, lower, data):
        # digits_cnn.blo:20  cross_entropy(net(val.x), val.y)
        val = data["val"]
        net = self.model("net", lower["net"])
        return fn.cross_entropy(net(val["x"]), val["y"])

    def lower_objective(self, upper, lower, data):
        # digits_cnn.blo:26  mean(sigmoid(w) * cross_entropy(net(train.x), train.y, reduction="none"))
        train = data["train"]
        net = self.model("net", lower["net"])
        w = upper["w"]
        return fn.mean(fn.sigmoid(w) * fn.cross_entropy(net(train["x"]), train["y"], reduction="none"))

    def metric_test_accuracy(self, upper, lower, data):
        # digits_cnn.blo:39  accuracy(net(test.x), test.y)
        test = data["test"]
        net = self.model("net", lower["net"])
        return fn.accuracy(net(test["x"]), test["y"])

    def metric_flagged_f1(self, upper, lower, data):
        # digits_cnn.blo:40  f1(sigmoid(w) < 0.5, train.noisy)
        train = data["train"]
        w = upper["w"]
        return fn.f1(fn.sigmoid(w) < 0.5, train["noisy"])


def build(bindings=None, device=None, dtype=None, compile=True, seed=None, folder=None):
    """The pipeline of digits_cnn.blo: `.run()`, `.step()`, `.hypergradient()`."""
    folder = rt.program_folder(DATA_FOLDER, __file__) if folder is None else folder
    return rt.Pipeline(Problem(bindings, folder), source=rt.source_of(__file__), device=device,
                       dtype=dtype, compile=compile, seed=seed)
