"""A run folder: what a run leaves behind, written so that a process killed at any instant
leaves every file whole.

    program.py      the generated code that ran
    summary.json    the record: program and its hash, settings, seed, versions, device, dtype,
                    times, status, and at the end the final metrics and the baseline
    metrics.jsonl   one JSON object per outer step, with its wall-clock time
    state.pt        the last checkpoint, `Pipeline.state_dict()`
    curves.png      each metric and objective against the outer step
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import platform
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from .. import __version__

SUMMARY, METRICS, STATE, CODE, CURVES = "summary.json", "metrics.jsonl", "state.pt", "program.py", "curves.png"


class NotARunFolder(Exception):
    pass


def now() -> str:
    """Wall-clock time, UTC, as ISO 8601."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def json_safe(value):
    """JSON has no NaN or infinity: such a value is written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return value


def write_atomically(path: Path, write) -> None:
    """write(temporary path), flushed to disk, then renamed over `path`: readers see the old
    file or the new one, never a part."""
    temporary = path.with_name(f".{path.name}.tmp")
    write(temporary)
    with open(temporary, "rb") as f:
        os.fsync(f.fileno())
    os.replace(temporary, path)


def program_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def versions() -> dict:
    import torch

    return {"blodsl": __version__, "torch": torch.__version__, "python": platform.python_version()}


class RunFolder:
    def __init__(self, path: Path):
        self.path = Path(path)

    @classmethod
    def create(cls, out: Path | None, stem: str) -> "RunFolder":
        """A new folder: `out`, or the first free runs/STEM-NNN."""
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            return cls(out)
        root = Path("runs")
        for i in range(1, 100_000):
            try:
                (root / f"{stem}-{i:03d}").mkdir(parents=True)
                return cls(root / f"{stem}-{i:03d}")
            except FileExistsError:
                continue
        raise OSError(f"no free run folder name under '{root}'")

    @classmethod
    def open(cls, path: Path) -> "RunFolder":
        """An existing run folder, to resume."""
        folder = cls(path)
        if not (folder.path / SUMMARY).is_file():
            raise NotARunFolder(f"'{path}' is not a run folder: it has no {SUMMARY}")
        try:
            folder.summary()
        except (OSError, ValueError) as e:
            raise NotARunFolder(f"cannot read {folder.path / SUMMARY}: {e}") from None
        return folder

    def file(self, name: str) -> Path:
        return self.path / name

    @contextmanager
    def locked(self):
        """The folder for this process alone while it runs (a second resume would interleave writes)."""
        with open(self.path / ".lock", "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise NotARunFolder(f"another blodsl process is writing {self.path}") from None
            yield self

    # --- the record -------------------------------------------------------------------------

    def summary(self) -> dict:
        return json.loads(self.file(SUMMARY).read_text())

    def write_summary(self, summary: dict) -> None:
        text = json.dumps(json_safe(summary), indent=2) + "\n"
        write_atomically(self.file(SUMMARY), lambda p: p.write_text(text))

    # --- the steps ------------------------------------------------------------------------------

    def records(self) -> list[dict]:
        """The metrics log's records; a line cut short by a kill is dropped."""
        if not self.file(METRICS).is_file():
            return []
        records = []
        for line in self.file(METRICS).read_text().splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                break
        return records

    def keep_records_until(self, step: int) -> list[int]:
        """The log cut back to steps 1..step, those a resumed run continues after; the steps kept."""
        kept = [r for r in self.records() if r["step"] <= step]
        lines = "".join(json.dumps(r) + "\n" for r in kept)
        write_atomically(self.file(METRICS), lambda p: p.write_text(lines))
        return [r["step"] for r in kept]

    def log(self):
        """The metrics log, open for appending records (one JSON line each, flushed)."""
        return MetricsLog(self.file(METRICS))

    # --- the state ------------------------------------------------------------------------------

    def save_state(self, state: dict) -> None:
        import torch

        write_atomically(self.file(STATE), lambda p: torch.save(state, p))

    def load_state(self) -> dict | None:
        import torch

        path = self.file(STATE)
        return torch.load(path, weights_only=False) if path.is_file() else None


class MetricsLog:
    def __init__(self, path: Path):
        self._file = open(path, "a")

    def write(self, record: dict) -> None:
        self._file.write(json.dumps(json_safe(record)) + "\n")
        self._file.flush()

    def sync(self) -> None:
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
