"""The built-in functions and metrics programs call, against independent computations."""

import torch
from sklearn.metrics import f1_score, precision_score, recall_score

from blodsl.runtime import functions as fn


def test_metrics_agree_with_scikit_learn():
    g = torch.Generator().manual_seed(0)
    flags, truth = torch.rand(200, generator=g) < 0.4, torch.rand(200, generator=g) < 0.3
    for ours, theirs in ((fn.f1, f1_score), (fn.precision, precision_score), (fn.recall, recall_score)):
        assert abs(ours(flags, truth).item() - theirs(truth.numpy(), flags.numpy())) < 1e-6
    nothing = torch.zeros(5, dtype=torch.bool)
    assert fn.f1(nothing, nothing).item() == 0 and fn.precision(nothing, truth[:5]).item() == 0


def test_accuracy_of_logits_and_of_binary_scores():
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0]])
    assert abs(fn.accuracy(logits, torch.tensor([0, 1, 1])).item() - 2 / 3) < 1e-7
    assert fn.accuracy(torch.tensor([0.5, -1.0]), torch.tensor([1, 1])).item() == 0.5


def test_mix_sqdist_and_norms():
    a, b = torch.tensor([1.0, 2.0]), torch.tensor([3.0, 5.0])
    logits = torch.tensor([0.0, torch.log(torch.tensor(3.0))])   # weights 1/4 and 3/4
    torch.testing.assert_close(fn.mix(logits, [a, b]), 0.25 * a + 0.75 * b)
    assert fn.sqdist(a, b).item() == 13
    assert fn.sqdist({"w": a, "b": a}, {"w": b, "b": a}).item() == 13   # two models' weights
    assert fn.sqnorm({"w": a, "b": b}).item() == 39 and abs(fn.norm(a).item() - 5 ** 0.5) < 1e-6
    torch.testing.assert_close(fn.mse(torch.tensor([[1.0], [2.0]]), torch.tensor([0.0, 0.0])), torch.tensor(2.5))


def test_reshape_and_flatten_keep_the_values_in_order():
    images = torch.arange(2 * 3 * 4.0).reshape(2, 1, 3, 4)
    assert fn.flatten(images).shape == (2, 12) and fn.flatten(images)[1, 0].item() == 12
    assert fn.flatten(images, start_dim=2).shape == (2, 1, 12)
    assert torch.equal(fn.reshape(fn.flatten(images), [-1, 1, 3, 4]), images)
    assert fn.reshape(images, [4, 6])[3].tolist() == [18, 19, 20, 21, 22, 23]
