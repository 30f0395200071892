"""What the oracle tests share: small programs built from their blocks, built eagerly in
float64 through the public API, and float64 data with a known structure."""

import torch

import blodsl

D = torch.float64


def program(data: str, upper: str, lower: str, pipeline: str) -> str:
    """A .blo program from the bodies of its blocks (one statement per line)."""

    def block(name, body):
        lines = "\n".join("    " + line.strip() for line in body.strip().splitlines())
        return f"{name} {{\n{lines}\n}}\n"

    return block("data", data) + block("upper", upper) + block("lower", lower) + f"hypergradient = {pipeline}\n"


def build(source: str, **bindings):
    return blodsl.compile(source, bindings=bindings, compile=False, dtype="float64", seed=0)


def randn(*shape, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=D)


def spd(eigenvalues, seed: int) -> torch.Tensor:
    """A symmetric positive definite matrix with the given spectrum."""
    q, _ = torch.linalg.qr(randn(len(eigenvalues), len(eigenvalues), seed=seed))
    return q @ torch.diag(torch.tensor(eigenvalues, dtype=D)) @ q.T


def assert_close(actual, expected, rtol=1e-10):
    """Relative agreement, with the absolute slack scaled by the size of `expected`."""
    assert torch.isfinite(actual).all(), actual
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * float(expected.abs().max()))
