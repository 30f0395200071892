"""`blodsl run`: train a program into a run folder, with progress, checkpoints and a record;
or resume a run folder where its last checkpoint stopped.

A checkpoint (state.pt, written atomically) is taken every `checkpoint_every` outer steps
(by default after every minute of training), when Ctrl-C asks the run to stop, once the
last step is done (before the baseline, which can take as long as the training) and at the
end. The first non-finite value stops the run (the pipeline raises `Diverged`) and leaves
the last good checkpoint in place, so the run can be resumed with other settings.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path

from .. import ir
from ..api import load_module
from ..lowering.codegen import generate
from ..syntax.source import Source
from .folder import CODE, RunFolder, json_safe, now, program_hash, versions, write_atomically
from .plots import plot_curves

CHECKPOINT_SECONDS = 60   # without checkpoint_every, a checkpoint after every minute of training


class Interrupted(Exception):
    """Ctrl-C stopped the run; the message says where its last checkpoint is."""


class ResumeRefused(Exception):
    """The run folder cannot be resumed as asked; the message says why."""


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


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return str(v)


def run(program: ir.Program, source: Source, settings: list[str], *, compile: bool, out: Path | None,
        as_json: bool, baseline: bool, resume: RunFolder | None = None, tensorboard: str | None = None) -> dict:
    """Trains the checked program as its run block says; `settings` are the command line's (recorded).
    tensorboard: a folder for event files ("": the run folder's tensorboard/), or None. Raises
    BloError, located in `source`, for an objective or metric that cannot be computed."""
    say = (lambda text: print(text, file=sys.stderr)) if as_json else print
    started = time.perf_counter()
    pipeline, code = _build(program, source, compile)
    with (resume or RunFolder.create(out, Path(program.path).stem)).locked() as folder:
        record = Record(folder, pipeline, code, program, source, settings, compile, resumed=resume is not None)
        if record.already_done():
            say(f"the run in {folder.path} has done its {pipeline.steps_done} outer steps; "
                "give --outer-steps N to run longer")
            return record.summary
        say(f"{Path(program.path).name}: {program.hypergradient.text}, {program.run.outer_steps} outer steps of "
            f"{program.lower.steps} inner steps on {pipeline.device} ({str(pipeline.dtype).removeprefix('torch.')}"
            f"{', compiled' if compile else ', eager'})" + (f", resumed at step {pipeline.steps_done}" if resume else ""))
        if compile:
            say("compiling on the first step (a cold compile takes 5 to 40 s; a warm cache a few seconds)")
        with _StopOnCtrlC(say) as stop:
            try:
                last = _train(pipeline, program, record, stop, say, as_json, tensorboard, started)
                final, compared = _finish(pipeline, record, last, baseline and not stop.asked)
            except BaseException as e:
                record.ended(e)
                raise
            finally:
                plot_curves(folder)
    _report(say, final, compared, time.perf_counter() - started, record.summary, folder)
    if as_json:
        print(json.dumps(json_safe({**final, **({"baseline": compared} if compared is not None else {})})))
    return record.summary


def _build(program: ir.Program, source: Source, compile: bool):
    from ..runtime import shapes

    code = generate(program)
    pipeline = load_module(code, program).build(compile=compile)
    shapes.check(program, source, pipeline)     # before a run folder exists: nothing is left behind
    return pipeline, code


class Record:
    """The run folder's record (summary.json) and checkpoints, kept in step with the pipeline."""

    def __init__(self, folder: RunFolder, pipeline, code: str, program: ir.Program, source: Source,
                 settings: list[str], compile: bool, resumed: bool):
        self.folder, self.pipeline, self.started = folder, pipeline, time.perf_counter()
        self.total = program.run.outer_steps
        now_ = {"device": str(pipeline.device), "versions": versions(), "compiled": compile, "outer_steps": self.total}
        if resumed:
            self.summary = folder.summary()
            self._resume(settings)
            self.summary.update(now_, settings=settings)
            self.summary.pop("error", None)
        else:
            self.summary = {"program": program.path, "program_file": str(Path(program.path).resolve()),
                            "program_sha256": program_hash(source.text), "pipeline": program.hypergradient.text,
                            "settings": settings, "seed": pipeline.seed,
                            "dtype": str(pipeline.dtype).removeprefix("torch."), **now_, "started": now(),
                            "status": "running", "steps_done": 0, "seconds": 0.0, "folder": str(folder.path)}
        self.seconds_before = self.summary["seconds"]
        write_atomically(folder.file(CODE), lambda p: p.write_text(code))
        self.write()

    def _resume(self, settings: list[str]) -> None:
        from ..runtime import BuildError

        state = self.folder.load_state()
        if state is not None:
            try:
                self.pipeline.load_state_dict(state)
            except BuildError as e:
                raise ResumeRefused(f"the checkpoint in {self.folder.path} does not fit the program as it is set "
                                    f"now: {e}") from None
        done = self.pipeline.steps_done
        if self.total < done:
            raise ResumeRefused(f"the run in {self.folder.path} has done {done} outer steps; --outer-steps must "
                                f"be at least that")
        kept = self.folder.keep_records_until(done)
        if kept != list(range(1, done + 1)):
            self.summary["log_gaps"] = sorted(set(range(1, done + 1)) - set(kept))
        if self.summary.get("status") != "finished" or self.total > done:
            self.summary.setdefault("resumed", []).append({"time": now(), "at_step": done,
                                                          "settings": settings[len(self.summary["settings"]):]})

    def already_done(self) -> bool:
        return self.summary.get("status") == "finished" and self.pipeline.steps_done >= self.total

    def write(self, timed: bool = True, **changes) -> None:
        """The record with `changes`; `seconds` (the training time, over every segment) runs on while timed."""
        if timed:
            changes["seconds"] = round(self.seconds_before + time.perf_counter() - self.started, 3)
        self.summary.update(changes, steps_done=self.pipeline.steps_done)
        self.folder.write_summary(self.summary)

    def checkpoint(self, log, status: str = "running") -> float:
        log.sync()                      # the log reaches the disk before the checkpoint that relies on it
        self.folder.save_state(self.pipeline.state_dict())
        self.write(status=status, checkpoint_at=self.pipeline.steps_done)
        return time.monotonic()

    def ended(self, error: BaseException) -> None:
        """Why the run stopped early, in the record."""
        from ..runtime.guard import Diverged

        if isinstance(error, Diverged):
            at = self.summary.get("checkpoint_at")
            error.add_note(f"the last good checkpoint ({'outer step ' + str(at) if at else 'the start'}) is in "
                           f"{self.folder.path}; resume from it with other settings, e.g. `blodsl run --resume "
                           f"{self.folder.path} --set {error.setting}=...`")
            self.write(status="diverged", error=str(error))
        elif isinstance(error, (Interrupted, KeyboardInterrupt)):
            if self.summary.get("status") != "interrupted":
                self.write(status="interrupted")
        else:
            self.write(status="failed", error=f"{type(error).__name__}: {error}")


def _train(pipeline, program: ir.Program, record: Record, stop: _StopOnCtrlC, say, as_json: bool,
           tensorboard: str | None, started: float) -> dict:
    """The outer steps left; returns the last step's record."""
    from tqdm import tqdm

    folder, total, every = record.folder, record.total, program.run.checkpoint_every
    writer = None
    if tensorboard is not None:
        from torch.utils.tensorboard import SummaryWriter   # needs the tensorboard package (the CLI checks)

        writer = SummaryWriter(str(folder.file("tensorboard") if tensorboard == "" else Path(tensorboard)),
                               purge_step=pipeline.steps_done + 1)
    last, last_checkpoint = {}, time.monotonic()
    try:
        with folder.log() as log, tqdm(total=total, initial=pipeline.steps_done, desc=Path(program.path).name,
                                       unit="step", file=sys.stderr, leave=False, disable=None) as bar:
            while pipeline.steps_done < total:
                try:
                    last = pipeline.step()
                except KeyboardInterrupt:
                    raise Interrupted(f"stopped at once; the last checkpoint (outer step "
                                      f"{record.summary.get('checkpoint_at') or 0}) is in {folder.path}: resume with "
                                      f"`blodsl run --resume {folder.path}`") from None
                k = pipeline.steps_done
                if pipeline.evaluates_at(k, total):
                    last.update(pipeline.evaluate())
                    shown = "  ".join(f"{key} {_fmt(v)}" for key, v in last.items() if key != "step")
                    bar.write(f"step {k:>{len(str(total))}}/{total}  {shown}",
                              file=sys.stderr if as_json else sys.stdout)
                log.write({**last, "time": now()})
                if writer is not None:
                    _scalars(writer, last)
                record.summary.setdefault("first_step_s", round(time.perf_counter() - started, 3))
                bar.update(1)
                if stop.asked and k < total:
                    record.checkpoint(log, "interrupted")
                    raise Interrupted(f"stopped at outer step {k} with a checkpoint; resume with "
                                      f"`blodsl run --resume {folder.path}`")
                if (every and k % every == 0) or (not every and time.monotonic() - last_checkpoint >= CHECKPOINT_SECONDS):
                    last_checkpoint = record.checkpoint(log)
            record.checkpoint(log, "trained")    # before the baseline: the training is safe
    finally:
        if writer is not None:
            writer.close()
    return last


def _finish(pipeline, record: Record, last: dict, baseline: bool) -> tuple[dict, dict | None]:
    """The final metrics (the upper objective measured as the baseline's is) and the baseline."""
    final = last or {"step": pipeline.steps_done, **pipeline.evaluate()}   # resumed after its last step
    final["upper_objective"] = pipeline.upper_objective()
    record.write(final=final)
    compared, baseline_s = None, None
    if baseline:
        began = time.perf_counter()
        compared = pipeline.compare()
        baseline_s = round(time.perf_counter() - began, 3) if compared is not None else None
    record.write(timed=False, status="finished", finished=now(), baseline=compared, baseline_s=baseline_s)
    return final, compared


def _report(say, final: dict, compared: dict | None, seconds: float, summary: dict, folder: RunFolder) -> None:
    baseline_s = summary.get("baseline_s")
    say(f"done in {seconds:.1f} s (first step, including the compile: {summary.get('first_step_s', 0):.1f} s"
        f"{f'; baseline: {baseline_s:.1f} s' if baseline_s is not None else ''})")
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


def _scalars(writer, record: dict) -> None:
    for key, value in record.items():
        if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
            writer.add_scalar(key, value, record["step"])
