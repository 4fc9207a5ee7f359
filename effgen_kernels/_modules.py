"""Finding and swapping submodules by name, for the functions that replace layers in place
(quantize_, convert, parallelize)."""

from __future__ import annotations

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
