"""Measures one implementation on one case, in a process of its own.

    python -m bench.worker IMPL CASE_JSON OUT_JSON [--grad FILE] [--repeats N] [--budget S] [--device D]

A fresh process per measurement keeps the figures independent: peak memory is this
process's alone, and a cold compile is cold. Writes one JSON object to OUT_JSON.

A case with outer_steps > 0 runs exactly that many outer steps (--repeats and --budget
do not apply), times every step after the warm-up, and reads the lower model's test
accuracy at the end.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import importlib
import json
import statistics
import time
from pathlib import Path

import torch

from bench.problems import Case, Unsupported, flagged_f1, test_accuracy

IMPLS = {"blodsl": "blodsl_impl", "reference": "reference", "BOAT": "boat_peer", "higher": "higher_peer",
         "TorchOpt": "torchopt_peer", "Betty": "betty_peer"}


class Memory:
    """Peak memory above the level when `reset` was called: the CUDA allocator's own count on
    a GPU; on the CPU the process's peak resident set (Linux's VmHWM, which clear_refs resets)."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")

    def reset(self):
        gc.collect()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            return
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)     # return freed heap pages, so the base is honest
        except OSError:
            pass
        Path("/proc/self/clear_refs").write_text("5")
        self.base = _status("VmRSS")

    def peak_mb(self) -> float:
        if self.cuda:
            return (torch.cuda.max_memory_allocated() - self.base) / 2**20
        return (_status("VmHWM") - self.base) / 2**10


def _status(field: str) -> int:
    """A /proc/self/status field in kB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"no {field} in /proc/self/status")


def measure(impl: str, case: Case, device: str, repeats: int, budget: float, grad_file: str | None) -> dict:
    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    try:
        module = importlib.import_module(f"bench.impls.{IMPLS[impl]}")
    except ImportError as e:
        return {"unsupported": f"not installed ({e.name}); pip install -e '.[bench]'"}
    started = time.perf_counter()
    try:
        runner = module.make(case, device)
    except Unsupported as e:
        return {"unsupported": str(e)}
    built = time.perf_counter()
    grads = runner.hypergradient()
    sync()
    first_grad = time.perf_counter()
    if grad_file:
        torch.save([g.detach().cpu().double() for g in grads], grad_file)
    runner.step()
    sync()
    first_step = time.perf_counter()
    if repeats == 0:
        return {"build_s": built - started, "first_hypergradient_s": first_grad - built,
                "start_s": first_step - started}

    runner.step()       # warm-up: optimiser state allocated, caches filled
    sync()
    memory = Memory(device)
    memory.reset()
    times = []
    deadline = time.perf_counter() + budget

    def more() -> bool:
        if case.outer_steps:    # the first step and the warm-up are two of them
            return len(times) < case.outer_steps - 2
        return len(times) < repeats and (len(times) < 3 or time.perf_counter() < deadline)

    while more():
        t = time.perf_counter()
        runner.step()
        sync()
        times.append(time.perf_counter() - t)
    result = {"build_s": built - started, "first_hypergradient_s": first_grad - built,
              "start_s": first_step - started, "ms": 1e3 * statistics.median(times),
              "ms_all": [1e3 * t for t in times], "peak_mb": memory.peak_mb()}
    if case.outer_steps:
        weight, bias = runner.lower_weights()
        if bool(torch.isfinite(weight).all() and torch.isfinite(bias).all()):
            result["accuracy"] = test_accuracy(weight, bias)
            if hasattr(runner, "sample_weights"):
                result["flagged_f1"] = flagged_f1(runner.sample_weights())
        else:               # a NaN model would score as a constant guess; say what happened instead
            result["accuracy_failed"] = f"NaN or inf in the lower model after {case.outer_steps} outer steps"
    note = getattr(module, "DEPARTURES", {}).get(case.method)
    if note:                # where this implementation's method departs from the paper's
        result["departs"] = note
    return result


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("impl", choices=sorted(IMPLS))
    parser.add_argument("case")
    parser.add_argument("out")
    parser.add_argument("--grad")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--budget", type=float, default=20.0)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    case = Case(**json.loads(args.case))
    result = measure(args.impl, case, args.device, args.repeats, args.budget, args.grad)
    Path(args.out).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
