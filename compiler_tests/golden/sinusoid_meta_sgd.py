"""sinusoid_meta_sgd.blo, compiled by blodsl 0.1.0: `NGD -> IAD`.

Regenerate with `blodsl compile programs/sinusoid_meta_sgd.blo -o FILE`; edits here are lost.
"""

import torch

from blodsl import runtime as rt
from blodsl.runtime import functions as fn

DATA_FOLDER = "programs"  # data files are named relative to it


class Problem(rt.Problem):
    source = "sinusoid_meta_sgd.blo"
    pipeline = [rt.Op("NGD"), rt.Op("IAD", checkpoint=0)]  # sinusoid_meta_sgd.blo:34
    data_used = ["tasks"]
    lower_data = ["tasks"]
    metrics = {
        "meta_test_mse": rt.MetricSpec(rebind={"tasks": "test_tasks"}, datasets=("tasks",), per_sample=True),  # sinusoid_meta_sgd.blo:40
    }
    outer_steps, eval_every, seed = 2000, 200, 0
    baseline = {}  # upper values held fixed for comparison ({}: initial)
    device, dtype = "auto", "float32"

    def load_data(self):
        tasks = rt.data.sinusoid(tasks=25, shots=10, queries=10, seed=0)  # sinusoid_meta_sgd.blo:15
        test_tasks = rt.data.sinusoid(tasks=100, shots=10, queries=50, seed=1)  # sinusoid_meta_sgd.blo:16
        return {"tasks": tasks, "test_tasks": test_tasks}

    def upper_level(self):
        return rt.Level(  # sinusoid_meta_sgd.blo:19
            variables={
                "log_lrs": rt.Like(lambda: rt.layers.MLP(1, [40, 40], 1), value=-4.6),  # sinusoid_meta_sgd.blo:21
            },
            models={
                "meta": rt.layers.MLP(1, [40, 40], 1),  # sinusoid_meta_sgd.blo:20
            },
            optimizer=("Adam", {"lr": 0.001}),  # sinusoid_meta_sgd.blo:23
        )

    def lower_level(self):
        return rt.Level(  # sinusoid_meta_sgd.blo:26
            variables={},
            models={
                "learner": rt.layers.MLP(1, [40, 40], 1),  # sinusoid_meta_sgd.blo:27
            },
            optimizer=rt.inner.SGD(lr=0.001, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False),  # sinusoid_meta_sgd.blo:29
            steps=5, start="from", start_from="meta",  # sinusoid_meta_sgd.blo:31
        )

    def upper_objective(self, upper, lower, data):
        # sinusoid_meta_sgd.blo:22  mse(learner(tasks.query_x), tasks.query_y)
        tasks = data["tasks"]
        learner = self.model("learner", lower["learner"])
        return fn.mse(learner(tasks["query_x"]), tasks["query_y"])

    def lower_objective(self, upper, lower, data):
        # sinusoid_meta_sgd.blo:28  mse(learner(tasks.support_x), tasks.support_y)
        tasks = data["tasks"]
        learner = self.model("learner", lower["learner"])
        return fn.mse(learner(tasks["support_x"]), tasks["support_y"])

    def lower_optimizer_settings(self, upper):
        # sinusoid_meta_sgd.blo:29  lr=exp(log_lrs)
        log_lrs = upper["log_lrs"]
        return {"lr": {"learner": rt.trees.tree_map(lambda log_lrs: fn.exp(log_lrs), log_lrs)}}

    def metric_meta_test_mse(self, upper, lower, data):
        # sinusoid_meta_sgd.blo:40  mse(learner(tasks.query_x), tasks.query_y)
        tasks = data["tasks"]
        learner = self.model("learner", lower["learner"])
        return fn.mse(learner(tasks["query_x"]), tasks["query_y"])


def build(bindings=None, device=None, dtype=None, compile=True, seed=None, folder=None):
    """The pipeline of sinusoid_meta_sgd.blo: `.run()`, `.step()`, `.hypergradient()`."""
    folder = rt.program_folder(DATA_FOLDER, __file__) if folder is None else folder
    return rt.Pipeline(Problem(bindings, folder), source=rt.source_of(__file__), device=device,
                       dtype=dtype, compile=compile, seed=seed)
