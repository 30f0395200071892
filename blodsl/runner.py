"""`blodsl run`: train a program, show progress, and keep a run folder.

The run folder holds metrics.jsonl (one JSON object per outer step),
summary.json (final metrics, the baseline, timings and settings), state.pt
(`Pipeline.state_dict()`) and program.py (the generated code that ran).
An existing folder is never written into: each run gets a new one.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

from . import ir
from .api import load_module
from .lowering.codegen import generate


def new_folder(root: Path, stem: str) -> Path:
    for i in range(1, 100_000):
        folder = root / f"{stem}-{i:03d}"
        try:
            folder.mkdir(parents=True)
            return folder
        except FileExistsError:
            continue
    raise OSError(f"no free run folder name under '{root}'")


def json_safe(value):
    """JSON has no NaN or infinity: a diverged value is written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return value


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return str(v)


def run(program: ir.Program, *, compile: bool, out: Path | None, as_json: bool, baseline: bool) -> dict:
    """Trains the checked program as its run block says (command-line settings are part of it)."""
    import torch
    from tqdm import tqdm

    say = (lambda text: print(text, file=sys.stderr)) if as_json else print
    name = Path(program.path).name
    code = generate(program)
    module = load_module(code, program)
    started = time.perf_counter()
    pipeline = module.build(compile=compile)
    total = program.run.outer_steps
    say(f"{name}: {program.hypergradient.text}, {total} outer steps of {program.lower.steps} inner steps "
        f"on {pipeline.device} ({str(pipeline.dtype).removeprefix('torch.')}"
        f"{', compiled' if compile else ', eager'})")
    if compile:
        say("compiling on the first step (a cold compile takes 5 to 40 s; a warm cache a few seconds)")

    folder = out if out is not None else new_folder(Path("runs"), Path(program.path).stem)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "program.py").write_text(code)
    first_step_done = None
    with open(folder / "metrics.jsonl", "w") as log, \
            tqdm(total=total, desc=name, unit="step", file=sys.stderr, leave=False, disable=None) as bar:
        def on_step(record):
            nonlocal first_step_done
            first_step_done = first_step_done or time.perf_counter()
            log.write(json.dumps(json_safe(record)) + "\n")
            bar.update(1)
            if any(name in record for name in pipeline.problem.metrics):   # evaluated at this step
                shown = "  ".join(f"{k} {_fmt(v)}" for k, v in record.items() if k != "step")
                bar.write(f"step {record['step']:>{len(str(total))}}/{total}  {shown}",
                          file=sys.stderr if as_json else sys.stdout)

        final = pipeline.run(total, callback=on_step)
    # the final state's upper objective, measured as the baseline's is (a step's value is on its own batch)
    final["upper_objective"] = pipeline.upper_objective()
    finished = time.perf_counter()
    compared = pipeline.compare() if baseline else None
    torch.save(pipeline.state_dict(), folder / "state.pt")
    summary = {
        "program": program.path, "pipeline": program.hypergradient.text, "outer_steps": total,
        "device": str(pipeline.device), "dtype": str(pipeline.dtype).removeprefix("torch."), "compiled": compile,
        "first_step_s": round((first_step_done or finished) - started, 3),
        "seconds": round(finished - started, 3), "final": final, "baseline": compared, "folder": str(folder),
    }
    (folder / "summary.json").write_text(json.dumps(json_safe(summary), indent=2) + "\n")

    say(f"done in {summary['seconds']:.1f} s (first step, including the compile: {summary['first_step_s']:.1f} s)")
    width = max([len(k) for k in final] + [6])
    for key, value in final.items():
        if key == "step":
            continue
        line = f"  {key:<{width}}  {_fmt(value)}"
        if compared and key in compared:
            line += f"   baseline {_fmt(compared[key])}"
        say(line)
    if compared is not None:
        held = compared.get("held")
        say("  baseline: the lower level trained as long with the upper variables held at "
            + (", ".join(f"{k} = {_fmt(v)}" for k, v in held.items()) + " (the best of the grid)" if held
               else "their initial values"))
    say(f"run folder: {folder}")
    if as_json:
        print(json.dumps(json_safe({**final, **({"baseline": compared} if compared is not None else {})})))
    return summary
