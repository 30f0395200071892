"""sinusoid_maml.blo, compiled by blodsl 0.1.0: `NGD -> IAD`.

Regenerate with `blodsl compile programs/sinusoid_maml.blo -o FILE`; edits here are lost.
"""

import torch

from blodsl import runtime as rt
from blodsl.runtime import functions as fn

DATA_FOLDER = "programs"  # data files are named relative to it


class Problem(rt.Problem):
    source = "sinusoid_maml.blo"
    pipeline = [rt.Op("NGD"), rt.Op("IAD", checkpoint=0)]  # sinusoid_maml.blo:39
    data_used = ["tasks"]
    lower_data = ["tasks"]
    metrics = {
        "meta_test_mse": rt.MetricSpec(rebind={"tasks": "test_tasks"}, datasets=("tasks",), per_sample=True),  # sinusoid_maml.blo:45
    }
    outer_steps, eval_every, seed = 2000, 200, 0
    baseline = {}  # upper values held fixed for comparison ({}: initial)
    device, dtype = "auto", "float32"

    def load_data(self):
        tasks = rt.data.sinusoid(tasks=25, shots=10, queries=10, seed=0)  # sinusoid_maml.blo:21
        test_tasks = rt.data.sinusoid(tasks=100, shots=10, queries=50, seed=1)  # sinusoid_maml.blo:22
        return {"tasks": tasks, "test_tasks": test_tasks}

    def upper_level(self):
        return rt.Level(  # sinusoid_maml.blo:25
            variables={},
            models={
                "meta": rt.layers.MLP(1, [40, 40], 1),  # sinusoid_maml.blo:26
            },
            optimizer=("Adam", {"lr": 0.001}),  # sinusoid_maml.blo:28
        )

    def lower_level(self):
        return rt.Level(  # sinusoid_maml.blo:31
            variables={},
            models={
                "learner": rt.layers.MLP(1, [40, 40], 1),  # sinusoid_maml.blo:32
            },
            optimizer=rt.inner.SGD(lr=0.01, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False),  # sinusoid_maml.blo:34
            steps=5, start="from", start_from="meta",  # sinusoid_maml.blo:36
        )

    def upper_objective(self, upper, lower, data):
        # sinusoid_maml.blo:27  mse(learner(tasks.query_x), tasks.query_y)
        tasks = data["tasks"]
        learner = self.model("learner", lower["learner"])
        return fn.mse(learner(tasks["query_x"]), tasks["query_y"])

    def lower_objective(self, upper, lower, data):
        # sinusoid_maml.blo:33  mse(learner(tasks.support_x), tasks.support_y)
        tasks = data["tasks"]
        learner = self.model("learner", lower["learner"])
        return fn.mse(learner(tasks["support_x"]), tasks["support_y"])

    def metric_meta_test_mse(self, upper, lower, data):
        # sinusoid_maml.blo:45  mse(learner(tasks.query_x), tasks.query_y)
        tasks = data["tasks"]
        learner = self.model("learner", lower["learner"])
        return fn.mse(learner(tasks["query_x"]), tasks["query_y"])


def build(bindings=None, device=None, dtype=None, compile=True, seed=None, folder=None):
    """The pipeline of sinusoid_maml.blo: `.run()`, `.step()`, `.hypergradient()`."""
    folder = rt.program_folder(DATA_FOLDER, __file__) if folder is None else folder
    return rt.Pipeline(Problem(bindings, folder), source=rt.source_of(__file__), device=device,
                       dtype=dtype, compile=compile, seed=seed)
