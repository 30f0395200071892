"""Resuming: a run continued from its state_dict() goes on as if never stopped, and starts are reproducible."""

import torch

import blodsl
from conftest import ROOT
from helpers import maml, program


def test_source_text_and_state_dict_round_trip(in_root):
    text = (ROOT / "programs" / "hyper_cleaning.blo").read_text().replace("steps = 20", "steps = 3")
    a = blodsl.compile(text, compile=False)
    a.run(outer_steps=2)
    saved = a.state_dict()
    b = blodsl.compile(text, compile=False)
    b.load_state_dict(saved)
    assert b.steps_done == 2 and torch.equal(a.upper["w"], b.upper["w"])
    a.step()
    b.step()
    assert torch.equal(a.upper["w"], b.upper["w"]) and torch.equal(a.lower["net.weight"], b.lower["net.weight"])


def test_a_meta_learning_run_resumes_from_its_state_dict():
    a = blodsl.compile(maml(), compile=False)
    a.step()
    b = blodsl.compile(maml(), compile=False)
    b.load_state_dict(a.state_dict())
    assert a.step() == b.step()
    assert all(torch.equal(a.upper[k], b.upper[k]) for k in a.upper)


def test_reinit_starts_are_reproducible():
    text = program(after_steps="start = reinit").replace("steps = 20", "steps = 3")
    a = blodsl.compile(text, compile=False)
    assert torch.equal(a.hypergradient()["w"], a.hypergradient()["w"])   # changes nothing
    first = a.hypergradient()["w"]
    b = blodsl.compile(text, compile=False)
    b.step()
    a.step()
    assert torch.equal(a.upper["w"], b.upper["w"]) and first.abs().sum() > 0
    saved = a.state_dict()
    after = [a.step() for _ in range(2)]
    c = blodsl.compile(text, compile=False)
    c.load_state_dict(saved)
    assert [c.step() for _ in range(2)] == after
