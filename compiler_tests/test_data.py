"""Data sources: the built-in generators and loaders for files users have."""

import gzip
import struct

import numpy as np
import pytest
import torch

import blodsl
from blodsl.runtime import data
from blodsl.runtime.data import DataError


def features_and_labels(n=40, features=3, classes=4):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, features, generator=g), torch.arange(n) % classes


def test_digits_splits_flips_and_marks_labels():
    train, val, test = data.digits(split=[0.5, 0.2, 0.3], label_noise=0.4, seed=0)
    assert [t.sizes["n"] for t in (train, val, test)] == [898, 359, 539]
    assert train.sizes["features"] == 64 and train.sizes["classes"] == 10
    noisy = train.fields["noisy"]
    assert noisy.sum().item() == round(0.4 * 898)
    # exactly the marked labels differ from the clean ones; the other splits are clean
    assert torch.equal(train.fields["y"] != train.fields["y_clean"], noisy)
    assert torch.equal(val.fields["y"], val.fields["y_clean"]) and not val.fields["noisy"].any()
    # standardised with the first split's statistics
    assert train.fields["x"].mean().abs() < 1e-5


def test_same_seed_same_split_other_seed_other_split():
    a, b = data.classification(n=100, features=5, seed=3)[0], data.classification(n=100, features=5, seed=3)[0]
    c = data.classification(n=100, features=5, seed=4)[0]
    assert torch.equal(a.fields["x"], b.fields["x"]) and not torch.equal(a.fields["x"], c.fields["x"])


def test_sinusoid_batches_are_reproducible_and_shaped_per_task():
    tasks = data.sinusoid(tasks=3, shots=4, queries=6, seed=0)
    first, again, second = tasks.batch(0), tasks.batch(0), tasks.batch(1)
    assert first.fields["support_x"].shape == (3, 4, 1) and first.fields["query_y"].shape == (3, 6, 1)
    assert torch.equal(first.fields["query_y"], again.fields["query_y"])
    assert not torch.equal(first.fields["query_y"], second.fields["query_y"])
    assert first.fields["support_x"].abs().max() <= 5


def test_npz_pt_and_csv_files(tmp_path):
    x, y = features_and_labels()
    np.savez(tmp_path / "d.npz", features=x.numpy(), labels=y.numpy())
    torch.save({"x": x, "y": y}, tmp_path / "d.pt")
    rows = ["a,b,c,label"] + [",".join(f"{v:.6f}" for v in row) + f",{int(t)}" for row, t in zip(x.tolist(), y)]
    (tmp_path / "d.csv").write_text("\n".join(rows) + "\n")
    loaded = [data.npz(tmp_path / "d.npz", x="features", y="labels", split=[1.0])[0],
              data.pt(tmp_path / "d.pt", split=[1.0])[0],
              data.csv(tmp_path / "d.csv", target="label", split=[1.0])[0]]
    for table in loaded:
        assert table.sizes == {"n": 40, "features": 3, "classes": 4}
        order = torch.argsort(table.fields["x"][:, 0])
        torch.testing.assert_close(table.fields["x"][order], x[torch.argsort(x[:, 0])], atol=1e-5, rtol=0,
                                   check_dtype=False)
        assert table.fields["y"].dtype == torch.long


def test_idx_files(tmp_path):
    images = torch.randint(0, 256, (12, 4, 4), dtype=torch.uint8)
    labels = torch.arange(12, dtype=torch.uint8) % 3
    (tmp_path / "train-images-idx3-ubyte").write_bytes(struct.pack(">HBB3I", 0, 8, 3, 12, 4, 4) + images.numpy().tobytes())
    with gzip.open(tmp_path / "train-labels-idx1-ubyte.gz", "wb") as f:
        f.write(struct.pack(">HBBI", 0, 8, 1, 12) + labels.numpy().tobytes())
    table, = data.idx(tmp_path, split=[1.0])
    assert table.sizes == {"n": 12, "features": 16, "classes": 3} and table.fields["x"].max() <= 1


@pytest.mark.parametrize("make,message", [
    (lambda p: data.npz(p / "missing.npz"), "does not exist"),
    (lambda p: (np.savez(p / "d.npz", a=np.zeros(3)), data.npz(p / "d.npz"))[1], "has no array 'x'; it holds a"),
    (lambda p: ((p / "d.csv").write_text("a,b\n1,x\n"), data.csv(p / "d.csv"))[1], "not a number"),
    (lambda p: ((p / "images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03\x00\x00\x00\x09"),
                (p / "labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x09"),
                data.idx(p))[2], "truncated"),
    (lambda p: data.split_table(torch.zeros(3, 2), torch.zeros(3), [0.1, 0.9], 0), "leaves a part empty"),
])
def test_bad_files_say_what_is_wrong(tmp_path, make, message):
    with pytest.raises(DataError, match=message):
        make(tmp_path)


def test_a_program_reads_a_file_beside_it(tmp_path):
    x, y = features_and_labels(n=60, classes=2)
    np.savez(tmp_path / "d.npz", x=x.numpy(), y=y.numpy())
    (tmp_path / "p.blo").write_text("""
data {
    train, val = npz("d.npz", split=[0.5, 0.5], seed=0)
}
upper {
    var log_decay = -2.0
    objective = cross_entropy(net(val.x), val.y)
    optimizer = Adam(lr=0.1)
}
lower {
    model net = Linear(train.features, train.classes)
    objective = cross_entropy(net(train.x), train.y) + exp(log_decay) * sqnorm(net)
    optimizer = SGD(lr=0.1)
    steps = 5
}
hypergradient = RAD
""")
    pipeline = blodsl.compile(tmp_path / "p.blo", compile=False)
    assert pipeline.problem.sizes == {"train.n": 30, "train.features": 3, "train.classes": 2,
                                      "val.n": 30, "val.features": 3, "val.classes": 2}
    assert pipeline.hypergradient()["log_decay"].abs() > 0


def test_labels_of_minus_one_and_one_and_misaligned_files(tmp_path):
    from blodsl.runtime import data

    x = torch.randn(10, 2)
    table, = data.split_table(x, torch.tensor([-1, 1] * 5), [1.0], 0)
    assert table.sizes["classes"] == 2 and set(table.fields["y"].tolist()) == {0, 1}
    with pytest.raises(data.DataError, match="10 rows but the targets 8"):
        data.split_table(x, torch.zeros(8), [1.0], 0)
