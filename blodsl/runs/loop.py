"""`blodsl run`: train a program into a run folder, with progress, checkpoints and a record;
or resume a run folder where its last checkpoint stopped.

A checkpoint (state.pt, written atomically) is taken every `checkpoint_every` outer steps
(by default after every minute of training), when Ctrl-C asks the run to stop, and at the
end. The first non-finite value stops the run (the pipeline raises `Diverged`) and leaves
the last good checkpoint in place, so the run can be resumed with other settings.
"""

from __future__ import annotations

import hashlib
import signal
import sys
import time
from pathlib import Path

from .. import ir
from ..api import load_module
from ..lowering.codegen import generate
from ..syntax.source import Source
from .folder import CODE, RunFolder, now, versions
from .plots import plot_curves

CHECKPOINT_SECONDS = 60   # without checkpoint_every, a checkpoint after every minute of training


def program_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return str(v)


class Interrupted(Exception):
    """Ctrl-C stopped the run; the folder holds a checkpoint to resume from."""

    def __init__(self, message: str):
        super().__init__(message)


class _StopOnCtrlC:
    """The first Ctrl-C lets the outer step finish and asks for a stop; a second stops at once."""

    def __init__(self, say):
        self.asked, self.say = False, say

    def __enter__(self):
        self.previous = signal.signal(signal.SIGINT, self)
        return self

    def __call__(self, signum, frame):
        if self.asked:
            raise KeyboardInterrupt
        self.asked = True
        self.say("\nstopping after this outer step, with a checkpoint (Ctrl-C again to stop at once)")

    def __exit__(self, *exc):
        signal.signal(signal.SIGINT, self.previous)


def run(program: ir.Program, source: Source, settings: list[str], *, compile: bool, out: Path | None,
        as_json: bool, baseline: bool, resume: RunFolder | None = None, tensorboard: str | None = None) -> dict:
    """Trains the checked program as its run block says; `settings` are the command line's (recorded).
    tensorboard: a folder for event files ("": the run folder's tensorboard/), or None. Raises
    BloError, located in `source`, for an objective or metric that cannot be computed."""
    from tqdm import tqdm

    from ..runtime import shapes
    from ..runtime.guard import Diverged

    say = (lambda text: print(text, file=sys.stderr)) if as_json else print
    name = Path(program.path).name
    code = generate(program)
    module = load_module(code, program)
    started = time.perf_counter()
    pipeline = module.build(compile=compile)
    shapes.check(program, source, pipeline)     # before a run folder exists: nothing is left behind
    total = program.run.outer_steps

    if resume is not None:
        folder, summary = resume, resume.summary()
        state = folder.load_state()
        if state is not None:
            pipeline.load_state_dict(state)
        folder.keep_records_until(pipeline.steps_done)
        summary.setdefault("resumed", []).append({"time": now(), "at_step": pipeline.steps_done,
                                                  "settings": settings[len(summary["settings"]):]})
        summary.update(settings=settings, outer_steps=total, status="running", compiled=compile)
    else:
        folder = RunFolder.create(out, Path(program.path).stem)
        summary = {"program": program.path, "program_file": str(Path(program.path).resolve()),
                   "program_sha256": program_hash(source.text), "pipeline": program.hypergradient.text,
                   "settings": settings, "seed": pipeline.seed, "device": str(pipeline.device),
                   "dtype": str(pipeline.dtype).removeprefix("torch."), "compiled": compile, "outer_steps": total,
                   "versions": versions(), "started": now(), "status": "running", "steps_done": 0,
                   "seconds": 0.0, "folder": str(folder.path)}
    folder.file(CODE).write_text(code)
    folder.write_summary(summary)
    done_before = pipeline.steps_done
    say(f"{name}: {program.hypergradient.text}, {total} outer steps of {program.lower.steps} inner steps "
        f"on {pipeline.device} ({str(pipeline.dtype).removeprefix('torch.')}{', compiled' if compile else ', eager'})"
        + (f", resumed at step {done_before}" if resume is not None else ""))
    if compile:
        say("compiling on the first step (a cold compile takes 5 to 40 s; a warm cache a few seconds)")

    seconds_before = summary["seconds"]     # of the segments before this one, when resumed

    def checkpoint(status: str = "running"):
        folder.save_state(pipeline.state_dict())
        summary.update(status=status, steps_done=pipeline.steps_done, checkpoint_at=pipeline.steps_done,
                       seconds=round(seconds_before + time.perf_counter() - segment_started, 3))
        folder.write_summary(summary)
        return time.monotonic()

    every = program.run.checkpoint_every
    writer = None
    if tensorboard is not None:
        from torch.utils.tensorboard import SummaryWriter   # needs the tensorboard package (the CLI checks)

        writer = SummaryWriter(str(folder.file("tensorboard") if tensorboard == "" else Path(tensorboard)),
                               purge_step=done_before + 1 if resume is not None else None)
    first_step_done = None
    segment_started = time.perf_counter()
    last_checkpoint = time.monotonic()
    record: dict = {}
    try:
        with folder.log() as log, _StopOnCtrlC(say) as stop, \
                tqdm(total=total, initial=done_before, desc=name, unit="step", file=sys.stderr, leave=False,
                     disable=None) as bar:
            while pipeline.steps_done < total:
                record = pipeline.step()
                k = pipeline.steps_done
                if k % program.run.eval_every == 0 or k == total:
                    record.update(pipeline.evaluate())
                log.write({**record, "time": now()})
                if writer is not None:
                    _scalars(writer, record)
                first_step_done = first_step_done or time.perf_counter()
                bar.update(1)
                if any(name in record for name in pipeline.problem.metrics):   # evaluated at this step
                    shown = "  ".join(f"{key} {_fmt(v)}" for key, v in record.items() if key != "step")
                    bar.write(f"step {k:>{len(str(total))}}/{total}  {shown}",
                              file=sys.stderr if as_json else sys.stdout)
                if stop.asked and k < total:
                    checkpoint("interrupted")
                    raise Interrupted(f"stopped at outer step {k} with a checkpoint; resume with "
                                      f"`blodsl run --resume {folder.path}`")
                if (every and k % every == 0) or (not every and time.monotonic() - last_checkpoint >= CHECKPOINT_SECONDS):
                    last_checkpoint = checkpoint()
    except Diverged as e:
        summary.update(status="diverged", error=str(e))
        folder.write_summary(summary)
        at = summary.get("checkpoint_at")
        e.add_note(f"the last good checkpoint ({'outer step ' + str(at) if at else 'the start'}) is in {folder.path}; "
                   f"resume from it with other settings, e.g. `blodsl run --resume {folder.path} --set "
                   f"{e.setting}=...`")
        raise
    except KeyboardInterrupt:
        summary.update(status="interrupted")
        folder.write_summary(summary)
        raise Interrupted(f"stopped at once; the last checkpoint (outer step {summary.get('checkpoint_at', 0)}) "
                          f"is in {folder.path}: resume with `blodsl run --resume {folder.path}`") from None
    finally:
        if writer is not None:
            writer.close()

    training_done = time.perf_counter()
    final = record or {"step": pipeline.steps_done, **pipeline.evaluate()}   # resumed after its last step
    # the final state's upper objective, measured as the baseline's is (a step's value is on its own batch)
    final["upper_objective"] = pipeline.upper_objective()
    compared, baseline_s = None, None
    if baseline:
        compared = pipeline.compare()
        baseline_s = round(time.perf_counter() - training_done, 3) if compared is not None else None
    checkpoint("finished")
    summary.update(finished=now(), first_step_s=round((first_step_done or training_done) - started, 3),
                   final=final, baseline=compared, baseline_s=baseline_s)
    folder.write_summary(summary)
    plot_curves(folder)

    say(f"done in {time.perf_counter() - started:.1f} s (first step, including the compile: "
        f"{summary['first_step_s']:.1f} s{f'; baseline: {baseline_s:.1f} s' if baseline_s is not None else ''})")
    width = max([len(key) for key in final] + [6])
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
            + (", ".join(f"{key} = {_fmt(v)}" for key, v in held.items()) + " (the best of the grid)" if held
               else "their initial values"))
    say(f"run folder: {folder.path}")
    if as_json:
        import json

        from .folder import json_safe

        print(json.dumps(json_safe({**final, **({"baseline": compared} if compared is not None else {})})))
    return summary


def _scalars(writer, record: dict) -> None:
    for key, value in record.items():
        if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
            writer.add_scalar(key, value, record["step"])
