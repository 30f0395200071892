"""Metrics and baselines: what a run reports beside its objectives."""

import math

import pytest

import blodsl
from helpers import maml, program


def test_a_rebound_metric_equals_the_same_metric_written_directly():
    text = program(after_objective="") .replace(
        "    metric test_accuracy = accuracy(net(test.x), test.y)",
        "    metric direct = cross_entropy(net(test.x), test.y)\n"
        "    metric rebound = cross_entropy(net(val.x), val.y) with val = test\n"
        "    metric direct_mean = sum(cross_entropy(net(test.x), test.y, reduction=\"none\")) / test.n\n"
        "    metric rebound_mean = sum(cross_entropy(net(val.x), val.y, reduction=\"none\")) / val.n with val = test")
    pipeline = blodsl.compile(text.replace("steps = 20", "steps = 3"), compile=False)
    pipeline.run(outer_steps=2)
    m = pipeline.evaluate()
    assert m["rebound"] == pytest.approx(m["direct"], rel=1e-6)
    assert m["rebound_mean"] == pytest.approx(m["direct_mean"], rel=1e-5)   # sizes follow the swap too


def test_meta_learning_metrics_with_and_without_rebinding():
    pipeline = blodsl.compile(maml("    metric train_tasks = mse(learner(tasks.query_x), tasks.query_y)\n"),
                              compile=False)
    m = pipeline.evaluate()
    assert math.isfinite(m["meta_test"]) and math.isfinite(m["train_tasks"]) and m["meta_test"] != m["train_tasks"]


def test_the_baseline_of_a_meta_learner_adapts_from_the_initial_meta_model():
    pipeline = blodsl.compile(maml(), compile=False)
    baseline = pipeline.baseline()
    first = pipeline.step()   # the first step adapts from the same initial meta-model, on the same batch
    assert baseline["upper_objective"] == pytest.approx(first["upper_objective"], rel=1e-5)
