"""An IR expression evaluated node by node, each value with the declarations its sizes came from.

Each node calls what its generated code calls (blodsl.runtime.functions, the Problem's
model() and imported(), Python's operators), so this evaluation and the generated module
cannot disagree. A value keeps, for each dimension, the declaration that made its size: a
dataset (`val.n`), a `var` (its declared shape), a model (its declared output width). The
shape check (shapes.py) evaluates every objective and metric this way before training.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch

from .. import ir
from ..catalogue.builtins import IMAGE_SIZES, LAYERS
from ..syntax.source import Source
from . import functions
from .data import TaskSource

OPERATORS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv, "@": operator.matmul,
             "%": operator.mod, "**": operator.pow, "<": operator.lt, "<=": operator.le, ">": operator.gt,
             ">=": operator.ge, "==": operator.eq, "!=": operator.ne}
UNARY = {"-": operator.neg, "+": operator.pos}
SIZE_WORDS = {"n": "samples", "shots": "support points per task", "queries": "query points per task",
              "height": "rows of pixels", "width": "columns of pixels"}
IMAGE_AXES = ("n", *IMAGE_SIZES)   # what each dimension of N x C x H x W images is


@dataclass(frozen=True)
class Origin:
    """The declaration that made one dimension's size."""
    decl: ir.Dataset | ir.Variable | ir.Model
    note: str                               # "w = zeros(val.n) declares 359 entries"
    named: ir.SizeRef | int | None = None   # the size as the declaration writes it
    slot: tuple[int, ...] | None = None     # where: a variable's shape index, a path into a model's layers


@dataclass(frozen=True)
class Traced:
    """A node's value, with the Origin of each of its dimensions (None where not known)."""
    node: ir.Expr
    value: object
    dims: tuple[Origin | None, ...] = ()
    items: tuple[Traced, ...] = ()          # a list's items

    @property
    def shape(self) -> tuple[int, ...]:
        return _shape(self.value)


class Evaluation:
    """The program's expressions over a built pipeline's initial variables and first data."""

    def __init__(self, program: ir.Program, source: Source, pipeline):
        self.source, self.pipeline, self.problem = source, pipeline, pipeline.problem
        self.datasets = {d.name: d for d in program.datasets}
        self.declared = {d.name: d for level in (program.upper, program.lower) for d in level.variables + level.models}
        self.levels = {"upper": pipeline.x, "lower": pipeline.y}
        self.data: dict = {}
        self.rebind: dict[str, str] = {}
        self.minibatch = False

    def evaluate(self, expr: ir.Expr, rebind: dict[str, str], minibatch: bool = False) -> Traced:
        """`expr` on the data of the first outer step (one task of a task batch, as the runtime vmaps
        over tasks; with `minibatch`, the minibatch an objective reads), with the datasets `rebind`
        names swapped in."""
        self.rebind, self.data, self.minibatch = rebind, {}, minibatch
        for ref in ir.nodes(expr):
            if isinstance(ref, ir.DataRef):
                name = rebind.get(ref.dataset, ref.dataset)
                fields = self.pipeline._data([name], 0)[name] if minibatch else self.pipeline._fields(name, 0)
                one_task = isinstance(self.pipeline.sources[name], TaskSource)
                self.data[ref.dataset] = {f: t[0] for f, t in fields.items()} if one_task else fields
        return self.value(expr)

    def call(self, node: ir.Expr, fn, operands: list[Traced], kwargs: dict):
        """Where every node's function runs: the shape check wraps it to say why one fails."""
        return fn(*[o.value for o in operands], **kwargs)

    def value(self, node: ir.Expr) -> Traced:
        match node:
            case ir.Const(value=v):
                return Traced(node, v)
            case ir.SizeRef(dataset=ds, size=size):
                return Traced(node, self.problem.sizes[f"{ds}.{size}"])
            case ir.DataRef(dataset=ds, field=f):
                t = self.data[ds][f]
                return Traced(node, t, self.data_dims(self.rebind.get(ds, ds), t))
            case ir.VarRef(level=level, name=name):
                t = self.levels[level][name]
                return Traced(node, t, self.variable_dims(self.declared[name], t))
            case ir.ModelRef(level=level, name=name):
                return Traced(node, self.levels[level][name])
            case ir.ParamRef(level=level, model=m, param=p):
                t = self.levels[level][m][p]
                model = self.declared[m]
                return Traced(node, t, (Origin(model, f"{self.declaration(model)} gives {m}.{p} of shape "
                                                      f"{list(t.shape)}"),) * t.dim())
            case ir.Apply(level=level, model=m, args=args):
                inputs = [self.value(a) for a in args]
                out = self.call(node, self.problem.model(m, self.levels[level][m]), inputs, {})
                return Traced(node, out, self.applied_dims(self.declared[m], out, inputs))
            case ir.Call(fn=fn, args=args, kwargs=kwargs):
                return self.applied(node, getattr(functions, fn), args, kwargs)
            case ir.UserCall(ref=ref, args=args, kwargs=kwargs):
                return self.applied(node, self.problem.imported(ref), args, kwargs)
            case ir.BinOp(op=op, left=left, right=right) | ir.Compare(op=op, left=left, right=right):
                operands = [self.value(left), self.value(right)]
                out = self.call(node, OPERATORS[op], operands, {})
                return Traced(node, out, _matmul_dims(out, *operands) if op == "@" else _inherit(out, operands))
            case ir.Unary(op=op, operand=operand):
                inner = self.value(operand)
                return Traced(node, self.call(node, UNARY[op], [inner], {}), inner.dims)
            case ir.Index(obj=obj, index=index):
                operands = [self.value(obj), self.value(index)]
                out = self.call(node, operator.getitem, operands, {})
                return Traced(node, out, _inherit(out, operands))
            case ir.ListOf(items=items):
                traced = tuple(self.value(i) for i in items)
                return Traced(node, [t.value for t in traced], items=traced)
        raise ValueError(f"cannot evaluate {node!r}")

    def applied(self, node: ir.Expr, fn, args: list[ir.Expr], kwargs: dict[str, ir.Expr]) -> Traced:
        operands = [self.value(a) for a in args]
        kwargs = {k: self.value(v).value for k, v in kwargs.items()}
        out = self.call(node, fn, operands, kwargs)
        if isinstance(node, ir.Call) and node.fn in ("reshape", "flatten"):
            return Traced(node, out, self.reshaped_dims(out, operands, kwargs.get("start_dim", 1)))
        return Traced(node, out, _inherit(out, operands))

    # --- where sizes come from ------------------------------------------------------------------

    def data_dims(self, name: str, t: torch.Tensor) -> tuple[Origin, ...]:
        """A dataset's sizes, each named as the program can write it (val.n, val.features) where one matches:
        an image's dimensions by their place (8 x 8 pixels are a height and a width)."""
        sizes = self.pipeline.sources[name].sizes
        places = IMAGE_AXES if t.dim() == 4 and "channels" in sizes else ()
        dims = tuple(self.size_origin(name, size, places[i] if places else None) for i, size in enumerate(t.shape))
        decl = self.datasets[name]
        if dims and self.minibatch and decl.batch is not None:
            dims = (Origin(decl, f"{name} is read in minibatches of {t.shape[0]} samples (batch={t.shape[0]}); a "
                                 f"variable with one entry per sample takes a minibatch's as w[{name}.index]"),) + dims[1:]
        return dims

    def size_origin(self, name: str, size: int, key: str | None = None) -> Origin:
        """Dataset `name`'s declaration as the origin of a dimension of `size` (its size `key` if given)."""
        decl, sizes = self.datasets[name], self.pipeline.sources[name].sizes
        if sizes.get(key) != size:
            key = next((k for k, v in sizes.items() if v == size), None)
        if key is None:
            return Origin(decl, f"{name} is declared here")
        words = SIZE_WORDS.get(key, key)
        return Origin(decl, f"{name} holds {size} {words} ({name}.{key})", ir.SizeRef(dataset=name, size=key))

    def reshaped_dims(self, out, operands: list[Traced], start_dim: int) -> tuple[Origin | None, ...]:
        """reshape and flatten keep the leading dimensions they do not touch (the samples), and a
        dimension written as a dataset's size (`train.height`) comes from that dataset."""
        given, shape = operands[0], _shape(out)
        written = operands[1].items if len(operands) > 1 else ()
        kept = 1 if written else start_dim % max(len(given.shape), 1)   # flatten keeps those before start_dim
        dims = []
        for i, size in enumerate(shape):
            item = written[i].node if i < len(written) else None
            if isinstance(item, ir.SizeRef):
                dims.append(self.size_origin(self.rebind.get(item.dataset, item.dataset), size, item.size))
            elif i < min(kept, len(given.dims)) and given.shape[i] == size:
                dims.append(given.dims[i])
            else:
                dims.append(None)
        return tuple(dims)

    def variable_dims(self, decl: ir.Variable, t: torch.Tensor) -> tuple[Origin, ...]:
        if decl.init == "input" or len(decl.shape) != t.dim():
            return (Origin(decl, f"{self.declaration(decl)} gives shape {list(t.shape)}"),) * t.dim()
        says = f"{t.shape[0]} entries" if t.dim() == 1 else f"shape {list(t.shape)}"
        return tuple(Origin(decl, f"{self.declaration(decl)} declares {says}", d, (i,)) for i, d in enumerate(decl.shape))

    def applied_dims(self, model: ir.Model, out, inputs: list[Traced]) -> tuple[Origin | None, ...]:
        """The leading dimensions from the input, the last from the model: its declared output width
        for a Linear or MLP (or a Sequential ending in one)."""
        if not _shape(out):
            return ()
        size, width = _shape(out)[-1], model_width(model.spec, "output")
        if width and width[1] == -1:
            path = width[0]
            last = Origin(model, f"{self.declaration(model)} declares {size} outputs", argument(model.spec, path), path)
        else:
            last = Origin(model, f"{self.declaration(model)} gives {size} outputs")
        leading = _inherit(out, inputs)[:-1]
        if leading and leading[0] is None and inputs and inputs[0].shape[:1] == _shape(out)[:1]:
            leading = inputs[0].dims[:1] + leading[1:]   # the samples, through a model that reshapes them (a CNN)
        return leading + (last,)

    def declaration(self, decl) -> str:
        """`w = zeros(val.n)`: the declaration as written, without its keyword."""
        written = self.source.text_of(decl.span) if decl.span else decl.name
        return written.split(None, 1)[1] if written.startswith(("var ", "model ")) else written


def model_width(spec: ir.LayerSpec, end: str) -> tuple[tuple[int, ...], int] | None:
    """Where a model's declaration writes its input or output width (`end`), as a path into its
    layers' arguments, and the dimension that width sizes; None when it does not say."""
    if spec.kind == "sequential":
        layers = [(i, s) for i, s in enumerate(spec.args) if not (s.kind == "builtin" and LAYERS[s.name].elementwise)]
        if not layers:
            return None
        i, layer = layers[0] if end == "input" else layers[-1]
        inner = model_width(layer, end)
        return None if inner is None else ((i, *inner[0]), inner[1])
    row = LAYERS.get(spec.name) if spec.kind == "builtin" else None
    if row is None or row.widths is None:
        return None
    return (row.widths[0 if end == "input" else 1],), row.axis


def argument(spec: ir.LayerSpec, path: tuple[int, ...]):
    """The layer argument at `path` (as model_width gives it)."""
    for i in path[:-1]:
        spec = spec.args[i]
    return spec.args[path[-1]]


def _shape(value) -> tuple[int, ...]:
    return tuple(value.shape) if torch.is_tensor(value) else ()


def _inherit(out, operands: list[Traced]) -> tuple[Origin | None, ...]:
    """Each dimension's origin from an operand (or a listed item) of the same size in the same place,
    counted from the last as broadcasting counts; None where none matches."""
    candidates = [item for o in operands for item in (o.items or (o,))]
    shape = _shape(out)
    return tuple(next((c.dims[-k] for c in candidates if len(c.shape) >= k and c.shape[-k] == shape[-k]), None)
                 for k in range(len(shape), 0, -1))


def _matmul_dims(out, a: Traced, b: Traced) -> tuple[Origin | None, ...]:
    """a @ b: the rows from a, the columns from b."""
    dims = (a.dims[:-1] if len(a.shape) > 1 else ()) + (b.dims[-1:] if len(b.shape) > 1 else ())
    n = len(_shape(out))
    return ((None,) * n + dims)[-n:] if n else ()
