"""The benchmark harness: blodsl against the hand-written reference and the peer libraries.

    python -m bench quick            # a few minutes on a laptop CPU
    python -m bench full             # every problem and size, and the first-order suite
    python -m bench first-order      # VFO, VSO, MESO, PGDO, ALTO, DM on problem 1: time and test accuracy
    python -m bench quick --only maml --impls blodsl,higher
    python -m bench full --only minibatch_cleaning   # problem 6 (minibatches) alone

Each (case, implementation) is measured in a fresh process (bench/worker.py). Compiled
implementations run twice: once with an empty compile cache (the cold start) and once
with the cache it left (the warm start, and the timed steps). Writes results.json,
results.md and results.png to --out and prints the markdown.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench import problems, report
from bench.worker import IMPLS

COMPILED = ("blodsl", "reference")
PEERS = ("BOAT", "higher", "TorchOpt", "Betty")
TIMEOUT_S = 1200


def run_worker(impl: str, case: problems.Case, args, cache: Path, grad: Path | None, repeats: int) -> dict:
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache),
           # big tensors come from mmap and go back on free, so the resident set follows live tensors
           "MALLOC_MMAP_THRESHOLD_": "65536"}
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        command = [sys.executable, "-m", "bench.worker", impl, json.dumps(dataclasses.asdict(case)), out.name,
                   "--repeats", str(repeats), "--budget", str(args.budget), "--device", args.device]
        if grad:
            command += ["--grad", str(grad)]
        try:
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=TIMEOUT_S,
                                  cwd=Path(__file__).resolve().parent.parent)
        except subprocess.TimeoutExpired:
            return {"failed": f"timed out after {TIMEOUT_S} s"}
        if done.returncode != 0:
            lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
            return {"failed": lines[-1] if lines else f"exit code {done.returncode}"}
        return json.loads(Path(out.name).read_text())


def measure_case(case: problems.Case, impls: list[str], args, work: Path) -> dict:
    results = {}
    for impl in impls:
        print(f"  {case.name:32} {impl:10}", end="", flush=True, file=sys.stderr)
        started = time.perf_counter()
        slug = f"{impl}-" + re.sub(r"[^A-Za-z0-9]+", "_", case.name)
        cache, grad = work / "cache" / slug, work / f"{slug}.pt"
        if impl in COMPILED:
            cold = run_worker(impl, case, args, cache, grad, repeats=0)
            result = run_worker(impl, case, args, cache, None, args.repeats) if "start_s" in cold else cold
            if "start_s" in cold:
                result["cold_start_s"], result["warm_start_s"] = cold["start_s"], result.get("start_s")
        else:
            result = run_worker(impl, case, args, cache, grad, args.repeats)
        if grad.exists():
            result["grad_file"] = str(grad)
        results[impl] = result
        print(f" {report.cell_status(result)}  ({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    return results


def hypergradient_differences(results: dict) -> None:
    """||g - g_blodsl|| / ||g_blodsl|| for every implementation with a hypergradient."""
    mine = results.get("blodsl", {}).get("grad_file")
    if not mine:
        return
    ours = torch.cat([g.reshape(-1) for g in torch.load(mine)])
    for impl, result in results.items():
        path = result.pop("grad_file", None)
        if path:
            theirs = torch.cat([g.reshape(-1) for g in torch.load(path)])
            diff, size = float((theirs - ours).norm()), float(ours.norm())
            result["grad_norm"] = float(theirs.norm())
            if size > 0:
                result["rel_diff"] = diff / size
            elif diff == 0:     # both zero, as a first direction can be (DM's, from v = 0)
                result["rel_diff"] = 0.0


def machine(device: str) -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown") if Path("/proc/cpuinfo").exists() else "unknown"
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "python": sys.version.split()[0]}
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name()
    for name, module in (("boat-torch", "boat_torch"), ("higher", "higher"), ("torchopt", "torchopt"),
                         ("betty-ml", "betty")):
        try:
            from importlib.metadata import version
            info[name] = version(name)
        except Exception:
            info[name] = "not installed"
    return info


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("suite", choices=problems.SUITES)
    parser.add_argument("--only", default="", help="run the cases whose name contains this text")
    parser.add_argument("--impls", default=",".join(COMPILED + PEERS), help="comma-separated implementations")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=20,
                        help="timed outer steps per measurement (at most); a first-order case runs its own number")
    parser.add_argument("--budget", type=float, default=30.0, help="seconds of timed steps per measurement")
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads per process (0: torch's default); 1 keeps figures steady on a busy machine")
    parser.add_argument("--outer-steps", type=int, default=0,
                        help=f"outer steps of a first-order case before its test accuracy (default "
                             f"{problems.ACCURACY_STEPS}; at least 3: the first, a warm-up, one timed), "
                             "for smoke tests")
    parser.add_argument("--out", default="bench/results", help="folder for results.json/.md/.png")
    args = parser.parse_args(argv)
    impls = [i.strip() for i in args.impls.split(",") if i.strip()]
    unknown = [i for i in impls if i not in IMPLS]
    if unknown:
        parser.error(f"unknown implementation {unknown[0]!r}; choose from {', '.join(IMPLS)}")
    if args.outer_steps and args.outer_steps < 3:
        parser.error("--outer-steps must be at least 3")
    cases = [dataclasses.replace(c, outer_steps=args.outer_steps) if c.outer_steps and args.outer_steps else c
             for c in problems.suite(args.suite)]
    cases = [c for c in cases if args.only in c.name]
    if not cases:
        parser.error(f"no case of the {args.suite} suite matches {args.only!r}")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = {"suite": args.suite, "device": args.device, "machine": machine(args.device), "cases": [],
            "threads": args.threads or torch.get_num_threads()}
    with tempfile.TemporaryDirectory(prefix="blodsl-bench-") as work:
        for case in cases:
            results = measure_case(case, impls, args, Path(work))
            hypergradient_differences(results)
            data["cases"].append({"case": dataclasses.asdict(case), "name": case.name, "results": results,
                                  "note": problems.NOTES.get(case.method) if case.outer_steps else None})
            (out / "results.json").write_text(json.dumps(data, indent=1))
    # what the accuracy column means without cleaning, for each inner-step count it has
    data["baselines"] = [{"steps": t, "outer_steps": n, "accuracy": problems.noisy_labels_accuracy(t, n)}
                         for t, n in sorted({(c.steps, c.outer_steps) for c in cases if c.outer_steps})]
    text = report.markdown(data)
    (out / "results.md").write_text(text)
    report.plot(data, out / "results.png")
    print(text)


if __name__ == "__main__":
    main()
