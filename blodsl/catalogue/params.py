"""Parameter rows, and the one check of a written value against its row.

Every setting a program (or `--set`) writes is checked here, from a row:
operator parameters, optimiser arguments, data-source and other built-in
keyword arguments, the run block's settings and the lower level's steps.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

REQUIRED = object()  # the default of a parameter that must be written


@dataclass(frozen=True)
class FromProgram:
    """A default taken from the program itself, e.g. the inner learning rate."""
    what: str  # "inner_lr", "steps" or "outer_steps"

    def __repr__(self):
        return {"inner_lr": "the inner learning rate", "steps": "the lower level's steps",
                "outer_steps": "the run's outer steps"}[self.what]


@dataclass(frozen=True)
class AtRunTime:
    """A default only the runtime knows; the checked program holds None."""
    words: str  # what it is, e.g. "the number of lower-level parameters"

    def __repr__(self):
        return self.words


@dataclass(frozen=True)
class Param:
    name: str
    type: type                     # int, float, bool, str (a choice or a pattern), list (of numbers), object (any constant)
    default: object = None         # REQUIRED, FromProgram, AtRunTime, a value; None: the callee's own default
    low: float | None = None       # bound below (of the value, or of each number of a list)
    low_open: bool = False         # True: value > low; False: value >= low
    high: float | None = None
    high_open: bool = False
    choices: tuple = ()            # str: the words it may be (written bare, strategy=s2, or quoted)
    quoted: bool = False           # choices are shown quoted, as a program usually writes them
    pattern: str | None = None     # str, or a list's str items: a regular expression the whole value matches
    item: type = float             # list: what its items are, numbers (bounded as above), int or str
    length: int | None = None      # list: exactly this many items
    ordered: bool = False          # list: a range [low, high] with low <= high
    increasing: bool = False       # list: each item greater than the one before
    total_at_most: float | None = None  # list: the numbers add up to at most this
    words: str | None = None       # how the row is described, where the generated words read badly
    quiet: bool = False            # left out of the pipeline's text while it has its default

    @property
    def bare_words(self) -> bool:
        """A bare name stands for itself (`strategy = s2`, `device = cuda`)."""
        return bool(self.choices) or (self.type is str and self.pattern is not None)

    def describe(self) -> str:
        """'an integer > 0', 'a number in [0, 1)', 'one of s1, s2, s3'."""
        if self.words:
            return self.words
        if self.choices:
            shown = [repr(c) if self.quoted else str(c) for c in self.choices]
            return f"{shown[0]} or {shown[1]}" if len(shown) == 2 else "one of " + ", ".join(shown)
        kind = {int: "an integer", float: "a number", bool: "True or False", list: "a list of numbers"}[self.type]
        if self.low is not None and self.high is not None:
            return f"{kind} in {'(' if self.low_open else '['}{_g(self.low)}, {_g(self.high)}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"{kind} {'>' if self.low_open else '>='} {_g(self.low)}"
        return kind

    def problem(self, value) -> str | None:
        """Why `value` is not acceptable ('must be ...'), or None."""
        return None if self._accepts(value) else "must be " + self.describe()

    def _accepts(self, value) -> bool:
        if self.type is object:
            return True
        if self.choices:
            return value in self.choices and type(value) is type(self.choices[0])
        if self.type is bool:
            return isinstance(value, bool)
        if self.type is str:
            return self._matches(value)
        if self.type is list:
            return (isinstance(value, list) and bool(value) and all(self._item_fits(v) for v in value)
                    and (self.length is None or len(value) == self.length)
                    and (not self.ordered or value == sorted(value))
                    and (not self.increasing or all(a < b for a, b in zip(value, value[1:])))
                    and (self.total_at_most is None or sum(value) <= self.total_at_most + 1e-9))
        if self.type is int and not isinstance(value, int):
            return False
        return self._in_bounds(value)

    def _matches(self, value) -> bool:
        return isinstance(value, str) and (self.pattern is None or re.fullmatch(self.pattern, value) is not None)

    def _item_fits(self, value) -> bool:
        if self.item is str:
            return self._matches(value)
        return self._in_bounds(value) and (self.item is not int or isinstance(value, int))

    def _in_bounds(self, value) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return False
        below = self.low is not None and (value <= self.low if self.low_open else value < self.low)
        above = self.high is not None and (value >= self.high if self.high_open else value > self.high)
        return not (below or above)

    def coerce(self, value):
        """An accepted value as the program holds it: a whole number for a float row becomes a float."""
        return float(value) if self.type is float else value


def _g(x) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


# --- shorthands for the rows below and in the other tables ---------------------------

def positive(name, default=None, type=float, **more):
    return Param(name, type, default, low=0, low_open=True, **more)


def nonnegative(name, default=None, type=float, **more):
    return Param(name, type, default, low=0, **more)


def count(name, default=None, **more):
    """A whole number of things, at least one."""
    return Param(name, int, default, low=1, **more)


def flag(name, default=None):
    return Param(name, bool, default)


def choice(name, *choices, default=None, quoted=False):
    return Param(name, str, default, choices=choices, quoted=quoted)


def anything(name, default=None):
    """Any constant: the callee checks it."""
    return Param(name, object, default)


def rows(*params: Param) -> dict[str, Param]:
    return {p.name: p for p in params}


# --- the settings of a program's blocks -------------------------------------------------

STEPS = count("steps", REQUIRED)   # the lower level's inner steps per outer step
CLIP = positive("clip")            # the largest global norm of the hypergradient the upper optimiser takes

RUN = rows(
    count("outer_steps", 100),
    count("eval_every", None),     # not written: a tenth of outer_steps
    nonnegative("seed", 0, type=int),
    Param("device", str, "auto", pattern=r"auto|cpu|cuda(:\d+)?", words="auto, cpu, cuda or cuda:N"),
    choice("dtype", "float32", "float64", default="float32"),
    count("checkpoint_every", None),   # not written: a checkpoint after every minute of training
)
