"""Datasets read in minibatches (`batch=N`): which samples each read takes, the hypergradient
through minibatched inner steps against autograd over the same samples in float64, resuming,
and the checker's located errors."""

import pytest
import torch
from torch.func import functional_call

from helpers import report_of
from oracles import D, assert_close, build

CLEANING = """data {
    train, val = classification(n=300, features=5, classes=3, split=[0.6, 0.4], seed=1, batch=BATCHES)
}
upper {
    var w = zeros(train.n)
    objective = cross_entropy(net(val.x), val.y)
    optimizer = Adam(lr=0.1)
}
lower {
    model net = Linear(train.features, train.classes)
    objective = mean(sigmoid(w[train.index]) * cross_entropy(net(train.x), train.y, reduction="none"))
    optimizer = SGD(lr=0.3, momentum=0.5)
    steps = STEPS
}
hypergradient = PIPELINE
"""


def cleaning(batches="[32, 40]", steps=7, pipeline="RAD") -> str:
    return CLEANING.replace("BATCHES", batches).replace("STEPS", str(steps)).replace("PIPELINE", pipeline)


def test_each_epoch_of_a_stream_reads_every_sample_once():
    pipeline = build(cleaning())
    n, size = 180, 32
    draws = pipeline.minibatches.indices("train", "inner", list(range(n // size)))
    assert draws.shape == (n // size, size)
    assert len(set(draws.reshape(-1).tolist())) == (n // size) * size     # no sample twice in an epoch
    again = pipeline.minibatches.indices("train", "inner", list(range(n // size)))
    assert torch.equal(draws, again)
    next_epoch = pipeline.minibatches.indices("train", "inner", list(range(n // size, 2 * (n // size))))
    assert not torch.equal(draws, next_epoch)                            # shuffled again
    outer = pipeline.minibatches.indices("train", "outer", list(range(n // size)))
    assert not torch.equal(draws, outer)                                 # streams are independent


def unrolled_hypergradient(pipeline, steps: int, lr=0.3, momentum=0.5):
    """dF/dw through `steps` SGD steps, each on the minibatch the pipeline's draws name, F on the
    outer step's validation minibatch: autograd over a loop written here."""
    module = pipeline.problem.modules["net"]
    train, val = pipeline.tables["train"], pipeline.tables["val"]
    w = pipeline.x["w"].detach().clone().requires_grad_()
    params = {k: v.detach().clone().requires_grad_() for k, v in pipeline.y["net"].items()}
    buffers = {k: torch.zeros_like(v) for k, v in params.items()}
    inner = pipeline.minibatches.indices("train", "inner", list(range(steps)))
    for t in range(steps):
        idx = inner[t]
        logits = functional_call(module, params, (train["x"][idx],))
        per_sample = torch.nn.functional.cross_entropy(logits, train["y"][idx], reduction="none")
        loss = (torch.sigmoid(w[idx]) * per_sample).mean()
        grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
        for (k, p), g in zip(list(params.items()), grads):
            buffers[k] = g if t == 0 else momentum * buffers[k] + g
            params[k] = p - lr * buffers[k]
    idx = pipeline.minibatches.indices("val", "outer", [0])[0]
    F = torch.nn.functional.cross_entropy(functional_call(module, params, (val["x"][idx],)), val["y"][idx])
    return torch.autograd.grad(F, w)[0]


@pytest.mark.parametrize("steps", [3, 7])
def test_rad_over_minibatches_is_autograd_over_the_same_samples(steps):
    pipeline = build(cleaning(steps=steps))
    got = pipeline.hypergradient()["w"]
    expected = unrolled_hypergradient(pipeline, steps)
    assert_close(got, expected)
    assert int((got != 0).sum()) <= steps * 32       # only the samples the inner steps read move


def test_a_reverse_sweep_over_checkpointed_chunks_replays_the_same_minibatches():
    plain = build(cleaning(steps=7)).hypergradient()["w"]
    kept_every_2 = build(cleaning(steps=7, pipeline="RAD(checkpoint=2)")).hypergradient()["w"]
    assert_close(kept_every_2, plain)


def test_implicit_and_first_order_pipelines_run_on_minibatches():
    for pipeline in ("CG(k=5)", "PTT -> RAD", "DM -> RAD"):
        p = build(cleaning(steps=1 if pipeline.startswith("DM") else 5, pipeline=pipeline))
        records = [p.step() for _ in range(4)]
        assert all(torch.isfinite(torch.tensor(r["upper_objective"])) for r in records)
        assert max(r["hypergradient_norm"] for r in records) > 0, pipeline


def test_a_resumed_pipeline_draws_what_the_uninterrupted_one_drew():
    whole = build(cleaning())
    for _ in range(6):
        whole.step()
    first = build(cleaning())
    for _ in range(3):
        first.step()
    resumed = build(cleaning())
    resumed.load_state_dict(first.state_dict())
    for _ in range(3):
        resumed.step()
    assert torch.equal(resumed.x["w"], whole.x["w"])
    for k in whole.y["net"]:
        assert torch.equal(resumed.y["net"][k], whole.y["net"][k])


def test_metrics_read_whole_datasets():
    source = cleaning().replace("hypergradient = RAD", "hypergradient = RAD\nrun {\n    metric val_acc = "
                                "accuracy(net(val.x), val.y)\n    metric seen = sum(val.index >= 0)\n}")
    values = build(source).evaluate()
    assert values["seen"] == 120 and 0 <= values["val_acc"] <= 1


@pytest.mark.parametrize("batches, words", [
    ("[200, 40]", "p.blo:2:95: error: batch 200 is larger than the 180 samples of part 1"),
    ("0", "batch must be a whole number of samples, at least 1, not 0"),
    ("-5", "batch must be a whole number of samples, at least 1, not -5"),
    ("[32]", "batch names 1 sizes for 2 parts"),
    ("2.5", "batch must be a whole number of samples, at least 1, not 2.5"),
])
def test_bad_batches_are_located(batches, words):
    assert words in report_of(cleaning(batches))


def test_task_batches_take_no_minibatch():
    text = report_of("data {\n    tasks = sinusoid(tasks=4, batch=2)\n}\n")
    assert "sinusoid draws a fresh batch of tasks every outer step; it takes no minibatch" in text


def test_a_file_smaller_than_its_batch_is_refused_when_loaded(tmp_path):
    import numpy as np

    np.savez(tmp_path / "d.npz", x=np.random.rand(10, 3), y=np.arange(10) % 2)
    source = cleaning().replace(
        "train, val = classification(n=300, features=5, classes=3, split=[0.6, 0.4], seed=1, batch=[32, 40])",
        'train, val = npz("d.npz", split=[0.5, 0.5], batch=[8, 2])').replace("train.classes", "2")
    (tmp_path / "p.blo").write_text(source)
    from blodsl.runtime.data import DataError

    with pytest.raises(DataError, match="dataset 'train' has 5 samples, fewer than its batch=8"):
        import blodsl
        blodsl.compile(str(tmp_path / "p.blo"), compile=False)


def test_per_sample_weights_over_a_minibatch_are_located_before_training(tmp_path, monkeypatch):
    from conftest import run_cli

    source = cleaning().replace("sigmoid(w[train.index])", "sigmoid(w)")
    (tmp_path / "p.blo").write_text(source)
    monkeypatch.chdir(tmp_path)
    status, _, err = run_cli("run", "p.blo", "--no-compile", "--outer-steps", "1", "--out", "run")
    assert status == 1 and "Traceback" not in err
    assert "p.blo:11:22: error: sigmoid(w) * cross_entropy(...): sigmoid(w) has 180 entries but " \
           "cross_entropy(...) has 32 entries" in err
    assert "note: train is read in minibatches of 32 samples (batch=32); a variable with one entry per sample " \
           "takes a minibatch's as w[train.index]" in err
    assert not (tmp_path / "run").exists()


def test_a_mean_over_samples_is_measured_in_chunks_to_the_same_value(monkeypatch):
    from blodsl.runtime import pipeline as runtime

    source = cleaning().replace("hypergradient = RAD", "hypergradient = RAD\nrun {\n"
                                "    metric val_loss = cross_entropy(net(val.x), val.y)\n"
                                "    metric val_acc = accuracy(net(val.x), val.y)\n"
                                "    metric spread = sum(net(val.x)) / val.n\n}")
    p = build(source)
    assert [s.per_sample for s in p.problem.metrics.values()] == [True, True, False]
    for _ in range(2):
        p.step()
    whole = p.evaluate()
    monkeypatch.setattr(runtime, "METRIC_CHUNK", 50)   # 120 samples: chunks of 50, 50 and 20
    chunked = p.evaluate()
    assert chunked["val_acc"] == pytest.approx(whole["val_acc"], rel=1e-12)
    assert chunked["val_loss"] == pytest.approx(whole["val_loss"], rel=1e-12)


def test_check_says_which_datasets_are_read_in_minibatches():
    from blodsl.cli import summary
    from helpers import check_text

    line = summary(check_text(cleaning()).program).splitlines()[1]
    assert line == "  data      train (classification part 1, minibatches of 32), " \
                   "val (classification part 2, minibatches of 40)"


def test_data_bound_from_python_is_read_in_minibatches_too():
    from oracles import program, randn

    source = program(data='train = input(batch=16)\nval = input()',
                     upper="var w = zeros(40)\nobjective = mse(val.x @ y, val.y)\noptimizer = SGD(lr=0.1)",
                     lower="var y = zeros(3)\nobjective = mean(exp(w[train.index]) * (train.x @ y - train.y) ** 2)\n"
                           "optimizer = SGD(lr=0.1)\nsteps = 4",
                     pipeline="RAD")
    data = {"train": {"x": randn(40, 3, seed=1), "y": randn(40, seed=2)},
            "val": {"x": randn(20, 3, seed=3), "y": randn(20, seed=4)}}
    pipeline = build(source, **data)
    read = pipeline.minibatches.indices("train", "inner", [0, 1, 2, 3])
    moved = pipeline.hypergradient()["w"] != 0
    assert set(moved.nonzero().reshape(-1).tolist()) <= set(read.reshape(-1).tolist())
    assert "a task batch bound from Python is read whole" in report_of(
        "data {\n    tasks = input(tasks=True, batch=4)\n}\n")


def test_task_batches_beside_a_dataset_read_in_minibatches():
    from helpers import META

    source = (META.replace("    tasks = sinusoid(tasks=4, shots=5, queries=5)",
                           "    tasks = sinusoid(tasks=4, shots=5, queries=5)\n"
                           "    extra = regression(n=100, features=1, batch=10)")
              .replace("objective = mse(learner(tasks.support_x), tasks.support_y)",
                       "objective = mse(learner(tasks.support_x), tasks.support_y) + 0.01 * mse(learner(extra.x), extra.y)"))
    assert "extra = regression" in source and "mse(learner(extra.x), extra.y)" in source
    pipeline = build(source)
    records = [pipeline.step() for _ in range(2)]
    assert all(r["hypergradient_norm"] > 0 for r in records)
