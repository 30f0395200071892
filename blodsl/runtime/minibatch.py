"""Which samples each read of a dataset declared with `batch=N` takes.

Every read is a draw from a stream: the lower objective's inner steps draw one
minibatch per step (stream "inner", draw number outer_step * steps + inner_step);
everything else an outer step reads (the upper objective, an implicit solve, a
first-order method's update) reads that outer step's minibatch (stream "outer",
draw number outer_step), and a method that wants a fresh minibatch per oracle call
asks for another stream ("outer:1", "outer:2", ...). Each stream shuffles the
dataset once per epoch, from the run's seed, the dataset, the stream and the epoch,
and cuts the shuffle into n // N minibatches (the last partial one is dropped, so
every read has the same shape and compiled kernels never recompile). A draw is a
function of those numbers alone: a resumed run draws what the uninterrupted one drew,
and a reverse sweep that recomputes a chunk reads the chunk's own minibatches.
"""

from __future__ import annotations

import zlib

import torch


class Minibatches:
    def __init__(self, tables: dict[str, dict], batches: dict[str, int], seed: int, device,
                 fields_read: dict[str, list[str]]):
        self.tables, self.batches, self.seed, self.device = tables, batches, seed, device
        self.fields_read = fields_read   # dataset -> the fields the objectives read; only they are gathered
        self._shuffles: dict[tuple[str, str], tuple[int, torch.Tensor]] = {}   # (dataset, stream) -> (epoch, order)

    def indices(self, name: str, stream: str, draws: list[int]) -> torch.Tensor:
        """The sample indices of the given draws of a stream: [len(draws), N]."""
        size, n = self.batches[name], rows(self.tables[name])
        per_epoch = n // size
        epochs = {k // per_epoch for k in draws}
        first = draws[0] % per_epoch
        if len(epochs) == 1 and draws == list(range(draws[0], draws[0] + len(draws))):
            # the usual case, consecutive draws of one epoch: a view of its order, nothing copied
            order = self._shuffle(name, stream, epochs.pop(), n)[:per_epoch * size].view(per_epoch, size)
            return order[first:first + len(draws)]
        return torch.cat([self.indices(name, stream, [k]) for k in draws])

    def _shuffle(self, name: str, stream: str, epoch: int, n: int) -> torch.Tensor:
        """This epoch's order of the samples, made once and kept on the run's device."""
        kept = self._shuffles.get((name, stream))
        if kept is None or kept[0] != epoch:
            key = zlib.crc32(f"{self.seed}/{name}/{stream}/{epoch}".encode())
            order = torch.randperm(n, generator=torch.Generator().manual_seed(key)).to(self.device)
            kept = self._shuffles[(name, stream)] = (epoch, order)
        return kept[1]

    def read(self, names, stream: str, draw: int) -> dict:
        """The data an objective reads: one minibatch of each batched dataset, the others whole."""
        return {n: (self._take(n, self.indices(n, stream, [draw])[0]) if n in self.batches else self.tables[n])
                for n in names}

    def step_indices(self, names, outer_step: int, steps: int, first: int, length: int) -> dict:
        """The samples inner steps first .. first + length - 1 of an outer step read ([length, N]), with
        the tables they come from: the compiled chunk gathers them itself. Steps past the last are
        switched off; they read on into the next outer step's draws, which keeps the draws
        consecutive (and takes none away)."""
        draws = [outer_step * steps + t for t in range(first, first + length)]
        return {n: (self._fields_read(n), self.indices(n, "inner", draws)) for n in names if n in self.batches}

    def _fields_read(self, name: str) -> dict:
        read = self.fields_read.get(name)   # a dataset only metrics read has none listed: all its fields
        return {f: t for f, t in self.tables[name].items() if read is None or f in read}

    def _take(self, name: str, index: torch.Tensor) -> dict:
        return {f: t[index] if torch.is_tensor(t) and t.dim() > 0 else t for f, t in self._fields_read(name).items()}


def rows(fields: dict) -> int:
    """How many samples a table holds."""
    return next(len(t) for t in fields.values() if torch.is_tensor(t) and t.dim() > 0)


# The key under which a chunk's data carries its per-step minibatches (not a name a program can write).
STEPS = "@steps"


def with_steps(d: dict, stacked: dict) -> dict:
    """A chunk's data: the outer step's reads, and for each dataset read per inner step its table
    and the chunk's sample indices."""
    return {**d, STEPS: stacked} if stacked else d


def at_step(d: dict, i: int) -> dict:
    """Inside a chunk: the data inner step i reads, gathered here from the whole table (inside the
    compiled kernel, where the gather fuses with what reads it)."""
    if STEPS not in d:
        return d
    step = {n: {f: t[index[i]] for f, t in fields.items()} for n, (fields, index) in d[STEPS].items()}
    return {**{n: v for n, v in d.items() if n != STEPS}, **step}
