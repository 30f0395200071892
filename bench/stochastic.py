"""The stochastic solvers against each other, and against RAD, at the same number of samples read.

    python -m bench.stochastic [--samples 300000] [--program programs/hyper_cleaning_minibatch.blo]

Each pipeline replaces the program's `hypergradient = ...` line and trains (eagerly, in this
process) until its reads of the minibatched datasets add up to the budget; then the program's
metrics are measured. Prints a markdown table: outer steps taken, time per outer step, and the
metrics reached.
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

import blodsl

# Each with the lower block's steps it is meant for (SOBA and the single-loop methods take one).
PIPELINES = {"RAD": None, "SOBA": 1, "StocBiO": None, "AmIGO": None, "F2SA": None}


def variant(text: str, pipeline: str, steps: int | None) -> str:
    text = re.sub(r"(?m)^hypergradient = .*$", f"hypergradient = {pipeline}", text)
    text = re.sub(r"(?m)^\s*baseline = .*\n", "", text)
    return text if steps is None else re.sub(r"(?m)^(\s*)steps = \d+", rf"\g<1>steps = {steps}", text)


def counting(pipeline) -> list[int]:
    """Counts the samples every minibatch read of the pipeline takes."""
    seen = [0]
    draw = pipeline.minibatches.indices

    def indices(name, stream, draws):
        out = draw(name, stream, draws)
        if stream != "inner" or name in pipeline.problem.lower_data:
            seen[0] += out.numel()
        return out

    pipeline.minibatches.indices = indices
    return seen


def measure(text: str, budget: int) -> dict:
    pipeline = blodsl.compile(text, compile=False)   # the program generates its data: no files to find
    seen = counting(pipeline)
    started, steps = time.perf_counter(), 0
    while seen[0] < budget:
        pipeline.step()
        steps += 1
    seconds = time.perf_counter() - started
    return {"outer steps": steps, "ms per outer step": 1000 * seconds / steps, **pipeline.evaluate()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=300_000, help="samples each pipeline reads in all")
    parser.add_argument("--program", default="programs/hyper_cleaning_minibatch.blo")
    args = parser.parse_args()
    path = Path(args.program)
    rows = {name: measure(variant(path.read_text(), name, steps), args.samples)
            for name, steps in PIPELINES.items()}
    columns = list(next(iter(rows.values())))
    print(f"{path.name}, {args.samples:,} samples read by each pipeline (eager):\n")
    print("| pipeline | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for name, row in rows.items():
        print(f"| {name} | " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row.values()) + " |")


if __name__ == "__main__":
    main()
