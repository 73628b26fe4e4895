"""Layer tables and parameter counts for ``cellbench describe``."""

from __future__ import annotations

from typing import Any

from torch import nn


def count_params(module: nn.Module, *, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def layer_table(module: nn.Module) -> list[dict[str, Any]]:
    """One row per leaf layer that has parameters or changes shape: name, type, params, description."""
    rows = []
    for name, mod in module.named_modules():
        if list(mod.children()) or isinstance(mod, nn.Identity):
            continue
        own = sum(p.numel() for p in mod.parameters(recurse=False))
        rows.append({"name": name, "type": type(mod).__name__, "params": own, "layer": repr(mod)})
    return rows


def describe_network(module: nn.Module) -> dict[str, Any]:
    """``{"class": ..., "params": N, "layers": [...]}`` for one network."""
    return {"class": type(module).__name__, "params": count_params(module), "layers": layer_table(module)}
