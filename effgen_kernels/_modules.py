"""Finding and swapping submodules by name, for the functions that replace layers in place
(quantize_, convert, parallelize)."""

from __future__ import annotations

import ast
import functools
import inspect
import textwrap
import types
from collections.abc import Iterator
from typing import NamedTuple

from torch import nn


def names_by_module(model: nn.Module) -> dict[nn.Module, list[str]]:
    """Every submodule with all the names it has. A module used at several places (a shared
    layer) is one module to replace, swapped in under each name: named_modules' default gives
    only its first name, and the other places would keep the old layer."""
    names: dict[nn.Module, list[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        names.setdefault(module, []).append(name)
    return names


def swap_module(model: nn.Module, names: list[str], replacement: nn.Module) -> None:
    """Puts ``replacement`` at each of ``names`` (dotted submodule paths) of ``model``."""
    for name in names:
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, replacement)


def _weight_expression(node: ast.AST) -> tuple[str, str] | None:
    """("self", "a.b") for the expression self.a.b.weight ((name, path) for any name.path.weight),
    else None."""
    if not (isinstance(node, ast.Attribute) and node.attr == "weight"):
        return None
    names, node = [], node.value
    while isinstance(node, ast.Attribute):
        names.append(node.attr)
        node = node.value
    return (node.id, ".".join(reversed(names))) if names and isinstance(node, ast.Name) else None


def _in_place_on_weight(node: ast.AST) -> tuple[str, str] | None:
    """(name, path) for a call name.path.weight.<op>_(...), which changes the weight in place."""
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
        return None
    op = node.func.attr
    return _weight_expression(node.func.value) if op.endswith("_") and not op.startswith("_") else None


def _always_run(statements: list[ast.stmt]) -> Iterator[ast.AST]:
    """The parts of a function body that run whenever it runs: statements, the tests of its
    ifs and loops, the bodies of with and try blocks; not what an if, a loop or an except
    runs only sometimes (Bloom reads a layer's weight only when pretraining_tp > 1, Mamba
    hands its weights to a fused kernel only in training)."""
    for statement in statements:
        if isinstance(statement, ast.If | ast.While):
            yield statement.test
        elif isinstance(statement, ast.For | ast.AsyncFor):
            yield statement.iter
        elif isinstance(statement, ast.With | ast.AsyncWith):
            yield from statement.items
            yield from _always_run(statement.body)
        elif isinstance(statement, ast.Try):
            yield from _always_run(statement.body + statement.finalbody)
        elif not isinstance(statement, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Match):
            yield statement


def _mentions_weight(code: types.CodeType) -> bool:
    """Whether compiled code (or code nested in it) reads an attribute named weight: cheaper
    than reading and parsing the source of every method of a large class."""
    return "weight" in code.co_names or any(
        _mentions_weight(const) for const in code.co_consts if isinstance(const, types.CodeType))


class _WeightUse(NamedTuple):
    """How the methods of a class use their submodules' weights: ``reads`` of
    self.<path>.weight where a method runs them whenever it runs, by path, with the method
    and its source; ``writes``, in place anywhere in a method (RWKV rescales layers in a loop
    over its blocks: block.attention.output.weight.div_), by path, with the method and the
    name the path starts from."""

    reads: dict[str, list[tuple[str, str]]]
    writes: dict[str, list[tuple[str, str]]]


@functools.cache
def _weight_use(cls: type) -> _WeightUse:
    """What the methods ``cls`` defines do with weights; those that initialize or tie them
    apart (``__init__``, ``_init_weights``, ``init_mamba_weights``, ``tie_weights``): they
    run before any layer is swapped."""
    use = _WeightUse({}, {})
    for attribute, function in vars(cls).items():
        if not inspect.isfunction(function) or attribute.lstrip("_").startswith(("init", "tie")):
            continue
        function = inspect.unwrap(function)  # a decorator's wrapper reads nothing itself
        if not _mentions_weight(function.__code__):
            continue
        try:
            source = textwrap.dedent(inspect.getsource(function))
            body = ast.parse(source).body[0].body
        except (OSError, TypeError, SyntaxError, IndexError, AttributeError):  # made at run time: no source
            continue
        method = f"{cls.__name__}.{attribute}"
        reads = {found for part in _always_run(body) for node in ast.walk(part) if (found := _weight_expression(node))}
        for path in sorted(path for name, path in reads if name == "self"):
            use.reads.setdefault(path, []).append((method, source))
        writes = {found for statement in body for node in ast.walk(statement) if (found := _in_place_on_weight(node))}
        for name, path in sorted(writes):
            use.writes.setdefault(path, []).append((method, name))
    return use


def _model_code(module: nn.Module) -> list[type]:
    """The classes of ``module`` (its MRO) whose methods are the model's code, not torch's."""
    return [cls for cls in type(module).__mro__ if cls is not object and not cls.__module__.startswith("torch.")]


def weight_used_by_owner(model: nn.Module, name: str, int8_weight: bool) -> str | None:
    """Which method of a module above layer ``name`` reads the layer's weight itself instead
    of calling the layer (Mamba's ``self.dt_proj.weight @ time_step``, ``x.to(self.lm_head
    .weight.dtype)``) or changes it in place (RWKV's rescaling), said with the expression;
    None if none does. Such a layer cannot be swapped: a quantized layer holds no float
    weight to read or change. With ``int8_weight`` (the new layer keeps an int8 ``weight``),
    a method that checks ``self.wo.weight.dtype != torch.int8`` (T5 and its kin, written for
    int8 quantizers) knows what it reads.

    Found in the source of the model's classes: a read in a branch, or by a function the
    module passes itself to, is not seen."""
    parts = name.split(".")
    owner = model
    for depth, part in enumerate(parts):
        below = parts[depth:]  # the layer's path from owner
        path = ".".join(below)
        # Paths a loop over a container of owner's reaches the layer by (blocks.3.attention.output:
        # block.attention.output), as code names them: layers[0] is not written layers.0.
        from_an_item = {".".join(below[i:]) for i in range(1, len(below)) if below[i - 1].isdigit()}
        for cls in _model_code(owner):
            use = _weight_use(cls)
            for written in [path, *sorted(from_an_item)]:
                for method, start in use.writes.get(written, ()):
                    if (start == "self") == (written == path):
                        return (f"{method} changes {start}.{written}.weight in place (a quantized layer has no "
                                "float weight)")
            if all(p.isidentifier() for p in below):
                guard = f"self.{path}.weight.dtype != torch.int8"
                for method, source in use.reads.get(path, ()):
                    if not (int8_weight and guard in source):
                        return f"{method} reads self.{path}.weight itself (a quantized layer has no float weight)"
        owner = owner._modules[part]
    return None
