"""The shape check: every objective and metric evaluated once before training starts.

`blodsl run` and `blodsl.compile` run it right after the pipeline is built, eagerly, on the
real data and the initial variables, before anything is compiled (evaluation.py). A node
that fails, or an objective that is not one number, is a located error at that expression,
with notes at the declarations that made the sizes that clash and, where the data says what
a declaration should have written, a fix.
"""

from __future__ import annotations

import math

import torch

from .. import ir
from ..catalogue.builtins import DATA_SOURCES
from ..syntax.diagnostics import BloError, Diagnostic
from ..syntax.source import Source
from .evaluation import Evaluation, Origin, Traced, argument, model_width

# Built-ins whose first two arguments pair up sample by sample, and of those the ones that
# compare values (not scores with labels), so that each sample holds as many on both sides.
PAIRED = {"cross_entropy", "accuracy", "binary_cross_entropy", "mse", "mae", "sqdist", "f1", "precision", "recall"}
VALUEWISE = PAIRED - {"cross_entropy", "accuracy"}


class Failed(Exception):
    """A node that cannot be computed, as the located message that says why."""

    def __init__(self, diagnostic: Diagnostic):
        self.diagnostic = diagnostic


def check(program: ir.Program, source: Source, pipeline) -> None:
    """Raises BloError with a located message for each objective and metric that cannot be computed."""
    shapes = Shapes(program, source, pipeline)
    shapes.lower_objective = program.lower.objective.expr
    found = [shapes.objective(program.upper), shapes.objective(program.lower)]
    found += [shapes.metric(m) for m in program.run.metrics]
    problems = [d for d in found if d is not None]
    if problems:
        raise BloError(sorted(problems, key=lambda d: (d.span.line, d.span.col)), source)


class Shapes(Evaluation):
    def objective(self, level: ir.LevelDecl) -> Diagnostic | None:
        expr = level.objective.expr
        try:
            shape = self.evaluate(expr, {}, minibatch=True).shape
        except Failed as e:
            return e.diagnostic
        if shape:
            return Diagnostic(f"the {level.level} objective must be a single number, but it gives a tensor of shape "
                              f"{list(shape)}", expr.span, fix="reduce it with mean(...) or sum(...)")
        return None

    def metric(self, metric: ir.Metric) -> Diagnostic | None:
        """The metric under its `with` swaps; where they swap data the lower objective reads, the
        lower level is trained again on it, so the lower objective is evaluated so too."""
        retrains = set(metric.rebind) & set(self.problem.lower_data)
        with self.pipeline._sizes_rebound(metric.rebind):   # `val.n` is test's n under `with val = test`
            try:
                if retrains:
                    self.evaluate(self.lower_objective, metric.rebind)
                self.evaluate(metric.expr, metric.rebind)
            except Failed as e:
                if not metric.rebind:
                    return e.diagnostic
                swaps = ", ".join(f"{a} = {b}" for a, b in metric.rebind.items())
                # a fix would name the declarations as written, which the swap makes misleading
                return Diagnostic(e.diagnostic.message, e.diagnostic.span, notes=e.diagnostic.notes + [
                    (metric.expr.span, f"under metric {metric.name}'s `with {swaps}`"
                     + (", which trains the lower level again on the swapped data" if retrains else ""))])
        return None

    def call(self, node: ir.Expr, fn, operands: list[Traced], kwargs: dict):
        if isinstance(node, ir.Call) and node.fn == "cross_entropy":
            self.labels(node, *operands)
        try:
            return super().call(node, fn, operands, kwargs)
        except Exception as error:   # torch's, or a user function's: said at the node that raised it
            raise Failed(self.clash(node, operands) or self.failure(node, error)) from error

    # --- what went wrong -------------------------------------------------------------------------

    def clash(self, node: ir.Expr, operands: list[Traced]) -> Diagnostic | None:
        """Two sizes that had to agree and do not, said with the declarations that made them."""
        match node:
            case ir.BinOp(op="@"):
                a, b = operands
                j = 0 if len(b.shape) == 1 else -2
                if a.shape and b.shape and a.shape[-1] != b.shape[j]:
                    return self.differ(node, a, -1, b, j)
            case ir.BinOp() | ir.Compare():
                return self.broadcast(node, *operands)
            case ir.Apply(model=m):
                model = self.declared[m]
                return self.model_input(node, model, operands[0]) or self.inside(node, model, operands[0])
            case ir.Call(fn="reshape"):
                return self.reshaped(node, *operands)
            case ir.Call(fn=fn) if fn in PAIRED:
                a, b = operands[:2]
                if a.shape and b.shape and a.shape[0] != b.shape[0]:
                    return self.differ(node, a, 0, b, 0)
                if fn in VALUEWISE:
                    return self.per_sample(node, a, b) or self.broadcast(node, a, b)
        return None

    def differ(self, node, a: Traced, i: int, b: Traced, j: int) -> Diagnostic:
        mine, theirs = a.dims[i], b.dims[j]
        return Diagnostic(f"{self.shown(node)}: {self.sized(a, i)} but {self.sized(b, j)}", node.span,
                          fix=self.fix(mine, theirs), notes=self.notes(mine, theirs))

    def broadcast(self, node, a: Traced, b: Traced) -> Diagnostic | None:
        for k in range(1, min(len(a.shape), len(b.shape)) + 1):
            if a.shape[-k] != b.shape[-k] and 1 not in (a.shape[-k], b.shape[-k]):
                return self.differ(node, a, -k, b, -k)
        return None

    def per_sample(self, node, a: Traced, b: Traced) -> Diagnostic | None:
        """Values compared sample by sample: as many per sample on both sides (a 1-D tensor holds one)."""
        each = [math.prod(t.shape[1:]) for t in (a, b)]
        if each[0] == each[1]:
            return None
        mine, theirs = (t.dims[-1] if len(t.shape) > 1 else None for t in (a, b))
        fix = None
        for wrong, right, size in ((mine, theirs, each[1]), (theirs, mine, each[0])):
            if fix is None and wrong is not None and wrong.slot is not None and isinstance(wrong.decl, ir.Model):
                fix = f"declare {self.redeclared(wrong, right.named if right and right.named is not None else size)}"
        return Diagnostic(f"{self.shown(node)}: {self.shown(a.node)} has {each[0]} values per sample but "
                          f"{self.shown(b.node)} has {each[1]}", node.span, fix=fix, notes=self.notes(mine, theirs))

    def model_input(self, node, model: ir.Model, given: Traced) -> Diagnostic | None:
        width = model_width(model.spec, "input")
        if width is None:
            return None
        path, axis = width
        declared = argument(model.spec, path)
        size = self.size_of(declared)
        what = "inputs" if axis == -1 else "input channels"
        mine = Origin(model, f"{self.declaration(model)} declares {size} {what}", declared, path)
        theirs = given.dims[axis] if len(given.dims) >= -axis else None
        if axis == -3 and len(given.shape) < 3:
            return Diagnostic(f"{self.shown(node)}: {model.name} takes images (N x C x H x W) but "
                              f"{self.shown(given.node)} has shape {list(given.shape)}", node.span,
                              fix=self.as_images(given), notes=self.notes(given.dims[-1] if given.dims else None))
        if len(given.shape) < -axis or given.shape[axis] == size:
            return None
        if axis == -1 and len(given.shape) > 2:   # images into a Linear: flattened, they may fit
            fits = math.prod(given.shape[1:]) == size
            return Diagnostic(f"{self.shown(node)}: {model.name} takes {size} inputs but {self.shown(given.node)} has "
                              f"shape {list(given.shape)}", node.span, notes=self.notes(mine),
                              fix=f"flatten the images first: {model.name}(flatten({self.shown(given.node)}))"
                              if fits else None)
        return Diagnostic(f"{self.shown(node)}: {model.name} takes {size} {what} but {self.sized(given, axis)}",
                          node.span, fix=self.fix(mine, theirs), notes=self.notes(mine, theirs))

    def as_images(self, given: Traced) -> str:
        made = given.dims[0].decl if given.dims and given.dims[0] else None
        source = DATA_SOURCES.get(made.source) if isinstance(made, ir.Dataset) else None
        if source is not None and source.images == "flag":
            return f"load images: {made.source}(..., images=True)"
        return f"reshape it: reshape({self.shown(given.node)}, [-1, channels, height, width])"

    def inside(self, node, model: ir.Model, given: Traced) -> Diagnostic | None:
        """A layer of a Sequential that does not take what the layers before it give (a Linear
        after a convolution, declared for another image size)."""
        if model.spec.kind != "sequential" or not torch.is_tensor(given.value):
            return None
        x = given.value
        for i, (spec, layer) in enumerate(zip(model.spec.args, self.problem.modules[model.name])):
            width = model_width(spec, "input")
            if width is not None:
                path, axis = width
                size = self.size_of(argument(spec, path))
                if x.dim() < -axis or x.shape[axis] != size:
                    return self.layer_clash(node, model, i, (i, *path), size, axis, x.shape)
            try:
                with torch.no_grad():
                    x = layer(x)
            except Exception:   # torch's own message says it, at the application
                return None
        return None

    def layer_clash(self, node, model: ir.Model, i: int, slot, size: int, axis: int, shape) -> Diagnostic:
        layer = model.spec.args[i]
        mine = Origin(model, f"{model.name}'s layer {i + 1} is {ir.written(layer)}", argument(model.spec, slot), slot)
        said = f"{self.shown(node)}: {ir.written(layer)}, layer {i + 1} of {model.name}, takes"
        if axis == -1 and len(shape) > 2:
            return Diagnostic(f"{said} {size} inputs but the layers before it give shape {list(shape)}", node.span,
                              fix="put Flatten() before it", notes=self.notes(mine))
        if len(shape) < -axis:
            return Diagnostic(f"{said} images but the layers before it give shape {list(shape)}", node.span,
                              notes=self.notes(mine))
        what = "inputs" if axis == -1 else "input channels"
        return Diagnostic(f"{said} {size} {what} but the layers before it give {shape[axis]}", node.span,
                          fix=f"declare {self.redeclared(mine, shape[axis])}", notes=self.notes(mine))

    def reshaped(self, node, given: Traced, shape: Traced) -> Diagnostic | None:
        """A shape that the values do not fill, said per sample where the first dimension is -1."""
        if not torch.is_tensor(given.value):
            return None
        dims, values = shape.value, given.value.numel()
        known = math.prod(d for d in dims if d != -1)
        if not known or (values % known == 0 if -1 in dims else values == known):
            return None
        x = self.shown(given.node)
        written = [self.shown(item.node) for item in shape.items]
        notes = [self.size_origin(self.rebind.get(item.node.dataset, item.node.dataset), item.value, item.node.size)
                 for item in shape.items if isinstance(item.node, ir.SizeRef)]
        per_sample = math.prod(given.shape[1:]) if len(given.shape) > 1 else None
        if dims[0] == -1 and per_sample is not None:
            made = given.dims[0].decl if given.dims and given.dims[0] else None
            if isinstance(made, ir.Dataset) and self.pipeline.sources[made.name].sizes.get("features") == per_sample:
                notes.insert(0, self.size_origin(made.name, per_sample, "features"))
            return Diagnostic(f"{self.shown(node)}: {x} holds {per_sample} values per sample but "
                              f"{' x '.join(map(str, dims[1:]))} is {math.prod(dims[1:])}", node.span,
                              notes=self.notes(*notes))
        fix = None
        if per_sample is not None and -1 not in dims and math.prod(dims[1:]) == per_sample:
            fix = f"write -1 for the samples: reshape({x}, [-1, {', '.join(written[1:])}])"
        held = (f"which {' x '.join(map(str, (d for d in dims if d != -1)))} does not divide" if -1 in dims
                else f"but {' x '.join(map(str, dims))} is {known}")
        return Diagnostic(f"{self.shown(node)}: {x} holds {values} values ({' x '.join(map(str, given.shape))}), "
                          f"{held}", node.span, fix=fix, notes=self.notes(*notes))

    def size_of(self, declared) -> int:
        """A layer's width as declared: a number, or a dataset's size."""
        return self.problem.sizes[f"{declared.dataset}.{declared.size}"] if isinstance(declared, ir.SizeRef) else declared

    def labels(self, node, logits: Traced, labels: Traced, *_):
        """Class labels beyond the scores' count: torch's error for them is an index deep inside (on a GPU,
        a device-side assert), so they are found before the call."""
        if not (torch.is_tensor(logits.value) and torch.is_tensor(labels.value) and logits.shape
                and not labels.value.is_floating_point() and labels.value.numel()):
            return
        k = 1 if len(logits.shape) > 1 else 0
        scores, top = logits.shape[k], int(labels.value.max())
        if top < scores:
            return
        made = logits.dims[k]
        who = made.decl.name if made and isinstance(made.decl, ir.Model) else self.shown(logits.node)
        fix = None
        if made is not None and made.slot is not None:
            fix = f"declare {self.redeclared(made, self.classes(labels) or top + 1)}"
        raise Failed(Diagnostic(f"{self.shown(node)}: {who} gives {scores} scores per sample but "
                                f"{self.shown(labels.node)} holds class labels up to {top}", node.span,
                                fix=fix, notes=self.notes(made)))

    def classes(self, labels: Traced) -> ir.SizeRef | None:
        """`val.classes` for labels of a dataset that counts them."""
        source = labels.dims[0].decl if labels.dims and labels.dims[0] else None
        if isinstance(source, ir.Dataset) and f"{source.name}.classes" in self.problem.sizes:
            return ir.SizeRef(dataset=source.name, size="classes")
        return None

    def failure(self, node, error: Exception) -> Diagnostic:
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return Diagnostic(f"{self.shown(node)} failed: {message}", node.span)

    # --- saying it -------------------------------------------------------------------------------

    def fix(self, *origins: Origin | None) -> str | None:
        """A variable's or model's declaration rewritten to the size the data gives, when one side is
        the data's and the other's declaration writes its size."""
        for wrong, right in (origins, origins[::-1]):
            if wrong and right and wrong.slot is not None and isinstance(right.decl, ir.Dataset) and right.named:
                return f"declare {self.redeclared(wrong, right.named)}"
        if all(o and isinstance(o.decl, ir.Dataset) for o in origins) and origins[0].decl != origins[1].decl:
            return "use tensors of one dataset on both sides"
        return None

    def redeclared(self, origin: Origin, size: ir.SizeRef | int) -> str:
        decl = origin.decl
        if isinstance(size, ir.SizeRef):
            size = self.preferred(size, decl)
        if isinstance(decl, ir.Variable):
            shape = [size if i == origin.slot[0] else d for i, d in enumerate(decl.shape)]
            return f"{decl.name} = {ir.call_text(decl.init, shape, decl.args)}"
        return f"{decl.name} = {ir.written(_replaced(decl.spec, origin.slot, size))}"

    def preferred(self, size: ir.SizeRef, decl) -> ir.SizeRef:
        """The same size of a dataset the declaration already names, if one has it (the splits of one
        source share their features and classes): `Linear(train.features, train.classes)`."""
        value = self.problem.sizes[f"{size.dataset}.{size.size}"]
        for ref in ir.nodes(decl):
            if isinstance(ref, ir.SizeRef) and self.problem.sizes.get(f"{ref.dataset}.{size.size}") == value:
                return ir.SizeRef(dataset=ref.dataset, size=size.size)
        return size

    def notes(self, *origins: Origin | None) -> list:
        seen = {(o.decl.span, o.note): None for o in origins if o is not None and o.decl.span is not None}
        return list(seen)

    def sized(self, t: Traced, i: int) -> str:
        """`val.x has 64 columns`"""
        n = len(t.shape)
        unit = ("entries" if n == 1 else "rows" if i % n == 0 else "columns" if i % n == n - 1
                else f"in dimension {i % n}")
        return f"{self.shown(t.node)} has {t.shape[i]} {unit}"

    def shown(self, node: ir.Expr) -> str:
        """The expression as written, a long call's arguments left out: `cross_entropy(...)`."""
        text = self.source.text_of(node.span) if node.span else ""
        if len(text) <= 40:
            return text
        if isinstance(node, (ir.BinOp, ir.Compare)):
            for side in (node.left, node.right):
                text = text.replace(self.source.text_of(side.span), self.shown(side), 1)
            return text
        return text[:text.index("(")] + "(...)" if "(" in text else text


def _replaced(spec: ir.LayerSpec, path: tuple[int, ...], value) -> ir.LayerSpec:
    """The layer with the argument at `path` replaced."""
    first, rest = path[0], path[1:]
    new = _replaced(spec.args[first], rest, value) if rest else value
    return spec.model_copy(update={"args": [new if i == first else a for i, a in enumerate(spec.args)]})
