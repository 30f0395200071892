"""The data block: each `name = source(...)` becomes one ir.Dataset per name."""

from __future__ import annotations

import math

from .. import ir
from ..catalogue.builtins import DATA_SOURCES, IMAGE_SIZES, INDEX, INPUT, DataSource, dataset_members
from ..syntax import ast
from ..syntax.diagnostics import suggest
from .calls import check_call
from .scope import Scope, Symbol


class DataBlock:
    def __init__(self, scope: Scope):
        self.scope = scope

    def resolve(self, block: ast.Block | None) -> list[ir.Dataset]:
        datasets: list[ir.Dataset] = []
        if block is None:
            return datasets
        for stmt in block.body:
            match stmt:
                case ast.Setting(key=name, value=value):
                    datasets += self.dataset([name], value) or self.broken([name])
                case ast.Destructure(names=names, value=value):
                    datasets += self.dataset(names, value) or self.broken(names)
                case ast.Declaration(keyword=kw, span=span):
                    self.scope.error(f"'{kw}' declarations do not belong in the data block", span,
                                     fix="declare datasets as `name = source(...)`, e.g. `train, test = digits(split=[0.8, 0.2])`")
        return datasets

    def broken(self, names: list[ast.Ident]) -> list:
        for name in names:
            self.scope.declare_broken(name)
        return []

    def dataset(self, names: list[ast.Ident], value: ast.Expr) -> list[ir.Dataset]:
        if not (isinstance(value, ast.Call) and isinstance(value.func, ast.Name)
                and (value.func.id in DATA_SOURCES or value.func.id == "input")):
            name = value.func.id if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) else None
            self.scope.error("expected a data source", value.span,
                             fix=(suggest(name, DATA_SOURCES) + " " if name and suggest(name, DATA_SOURCES) else "")
                             + "sources are: " + ", ".join(list(DATA_SOURCES) + ["input"]))
            return []
        batch_kw = next((kw for kw in value.kwargs if kw.name.text == "batch"), None)
        if batch_kw is not None:   # a setting of the reads, not of the source: checked here
            value = ast.Call(value.func, value.args, [kw for kw in value.kwargs if kw is not batch_kw],
                             span=value.span)
        if value.func.id == "input":
            return self.input_dataset(names, value, batch_kw)
        source = DATA_SOURCES[value.func.id]
        kwargs = check_call(self.scope, source.signature, value)
        if kwargs is None:
            return []
        args = kwargs
        path = None
        if source.path_arg:
            path = self.data_path(value.args[0])
            if path is None:
                return []
        if source.tasks:
            if len(names) > 1:
                self.scope.error(f"{value.func.id} yields task batches and is not split", names[1].span,
                                 fix=f"declare one name per call, e.g. `tasks = {value.func.id}()` and "
                                     f"`test_tasks = {value.func.id}(seed=1)`")
                return []
            if batch_kw is not None:
                self.scope.error(f"{value.func.id} draws a fresh batch of tasks every outer step; it takes no "
                                 "minibatch", batch_kw.span, fix=f"set the batch size with {value.func.id}(tasks=...)")
                return []
            return [self.make_dataset(names[0], source, args, path, None)]
        split = args.get("split")
        if split is None and len(names) > 1:
            if len(source.default_split) != len(names):
                self.scope.error(f"{len(names)} names need a split into {len(names)} parts", value.span,
                                 fix=f"add split=[...] with {len(names)} fractions")
                return []
            split = list(source.default_split)
            args["split"] = split
        if split is not None and len(split) != len(names):
            self.scope.error(f"split has {len(split)} parts but {len(names)} name{'s are' if len(names) > 1 else ' is'} "
                             "declared", value.span,
                             fix="declare one name per part, e.g. `train, val, test = ...` for three parts")
            return []
        batches = self.batches(batch_kw, len(names), source.signature.name, args)
        if batches is None:
            return []
        return [self.make_dataset(n, source, args, path, i if split is not None else None, batches[i])
                for i, n in enumerate(names)]

    def batches(self, kw: ast.Keyword | None, parts: int, source: str, args: dict) -> list | None:
        """The minibatch size of each part (None: whole), or None when that was reported.
        `batch=128` holds for every part; `batch=[128, 128, None]` names each."""
        if kw is None:
            return [None] * parts
        value = self.scope.const(kw.value, "batch")
        sizes = value if isinstance(value, list) else [value] * parts
        fix = "write batch=N (every part), or batch=[N, None, ...] with one size (or None: whole) per part"
        if len(sizes) != parts:
            self.scope.error(f"batch names {len(sizes)} sizes for {parts} part{'s' if parts > 1 else ''}",
                             kw.value.span, fix=fix)
            return None
        available = _samples(source, args)
        for i, size in enumerate(sizes):
            if size is None and isinstance(value, list):
                continue
            if isinstance(size, bool) or not isinstance(size, int) or size < 1:
                self.scope.error(f"batch must be a whole number of samples, at least 1, not {size!r}",
                                 kw.value.span, fix=fix)
                return None
            if available is not None and size > available[i]:
                self.scope.error(f"batch {size} is larger than the {available[i]} samples of "
                                 f"{'part ' + str(i + 1) if parts > 1 else 'the dataset'}", kw.value.span,
                                 fix=f"choose batch <= {available[i]}")
                return None
        return sizes

    def make_dataset(self, name, source: DataSource, args, path, split, batch=None) -> ir.Dataset:
        fields, sizes = dataset_members(source.signature.name, args)
        ds = ir.Dataset(name=name.text, source=source.signature.name, args=args, path=path, split=split,
                        fields=fields + ([] if source.tasks else [INDEX]), sizes=sizes, tasks=source.tasks,
                        batch=batch, line=name.span.line, span=ir.Written.of(name.span))
        self.scope.declare(name, Symbol("dataset", name.span, decl=ds))
        return ds

    def input_dataset(self, names, call, batch_kw: ast.Keyword | None) -> list[ir.Dataset]:
        kwargs = check_call(self.scope, INPUT, call)
        if kwargs is None:
            return []
        if kwargs.get("tasks") and batch_kw is not None:
            self.scope.error("a task batch bound from Python is read whole each outer step; it takes no "
                             "minibatch", batch_kw.span, fix="remove batch=...")
            return []
        batches = self.batches(batch_kw, 1, "input", kwargs)
        if batches is None:
            return []
        if len(names) > 1:
            self.scope.error("an input dataset is bound whole from Python and is not split", names[1].span,
                             fix="declare one input per name")
            return []
        tasks = kwargs.get("tasks", False)
        if tasks and "labels" in kwargs:
            written = next(kw for kw in call.kwargs if kw.name.text == "labels")
            self.scope.error("a task batch's fields are taken as they are bound; labels= is for a dataset of x "
                             "and y", written.span, fix="remove it")
            return []
        fields, sizes = dataset_members("input", kwargs)
        ds = ir.Dataset(name=names[0].text, source="input", args={"fields": fields, **kwargs},
                        fields=fields + ([] if tasks else [INDEX]), sizes=sizes, batch=batches[0], tasks=tasks,
                        line=names[0].span.line, span=ir.Written.of(names[0].span))
        self.scope.declare(names[0], Symbol("dataset", names[0].span, decl=ds))
        return [ds]

    def data_path(self, expr: ast.Expr) -> str | None:
        if not isinstance(expr, ast.String):
            self.scope.error("expected a file or folder path in quotes", expr.span, fix="write e.g. npz(\"data/train.npz\")")
            return None
        if self.scope.base_dir is not None and not (self.scope.base_dir / expr.value).exists():
            self.scope.error(f"no file or folder '{expr.value}'", expr.span,
                             fix="paths are relative to the folder of the .blo file")
            return None
        return expr.value


# Samples of the built-in sources whose size the program fixes (files are counted when loaded).
_DIGITS = 1797


def _samples(source: str, args: dict) -> list[int] | None:
    """How many samples each part holds, where the program alone says."""
    total = {"digits": _DIGITS, "classification": args.get("n", 1000), "regression": args.get("n", 1000)}.get(source)
    if total is None:
        return None
    return [int(math.floor(p * total)) for p in args.get("split") or [1.0]]


def image_size_fix(ds: ir.Dataset, size: str) -> str | None:
    """How to have image sizes (train.channels) where the dataset's x is not images."""
    if size not in IMAGE_SIZES:
        return None
    source = DATA_SOURCES.get(ds.source)
    if source is not None and source.images == "flag":
        return f"load images: {ds.source}(..., images=True) gives x as N x C x H x W, with channels, height and width"
    return f"{ds.source}'s x is not images (N x C x H x W), so {ds.name} has no {size}"
