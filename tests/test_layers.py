"""The package's layering, read from the source: a lower layer never imports a higher one, and no
module imports another module's private (``_x``) names.

Every ``import`` and ``from ... import`` of every module under ``cellbench/`` counts, also those
inside functions (a lazy import is still a dependency; the ``data`` <-> ``sim`` cycle of issue #12
was one); only imports under ``if TYPE_CHECKING:`` are skipped (they never run).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "cellbench"

#: Lowest first (the layout agreed for issue #12). The foundation modules form one layer: they may
#: import each other, nothing above them. ``segmentation`` (colour segmentation of cell images)
#: needs only the data layer and serves the simulator's re-simulation and the HM method, so it sits
#: below ``sim``. ``transform`` (apply a saved normalizer to folders) uses the methods and sits with
#: the evaluation that does the same.
LAYERS: list[tuple[str, ...]] = [
    ("__init__", "errors", "registry", "fs", "options", "io", "tensors", "colourspace", "presets", "results",
     "_presets", "threads"),
    ("data",),
    ("segmentation",),
    ("sim",),
    ("nets",),
    ("train",),
    ("methods",),
    ("eval", "transform"),
    ("bench",),
    ("report",),
    ("cli", "__main__"),
]
LEVEL = {name: i for i, names in enumerate(LAYERS) for name in names}


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1] if len(parts) > 1 else parts
    return ".".join(parts)


def top(module: str) -> str:
    """``cellbench.data.sets`` -> ``data``; ``cellbench`` (the package itself) -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                skip.update(id(n) for n in ast.walk(child))
    return skip


def imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """``(line, imported cellbench module, imported names)`` for every import in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    skip = _type_checking_nodes(tree)
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name, []) for a in node.names if a.name.split(".")[0] == "cellbench"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "cellbench":
                continue
            names = []
            for alias in node.names:
                sub = ROOT.parent / (target.replace(".", "/") + "/" + alias.name)
                if sub.with_suffix(".py").is_file() or sub.is_dir():  # `from .pkg import module`
                    out.append((node.lineno, f"{target}.{alias.name}", []))
                else:
                    names.append(alias.name)
            if names:
                out.append((node.lineno, target, names))
    return out


def sources() -> list[Path]:
    return sorted(p for p in ROOT.rglob("*.py") if "__pycache__" not in p.parts)


def test_every_module_has_a_layer():
    unknown = sorted({top(module_name(p)) for p in sources()} - set(LEVEL))
    assert not unknown, f"modules outside the layer list of tests/test_layers.py: {unknown}"


def test_the_layer_check_sees_imports():
    """The checker itself: it finds relative, absolute, lazy and `from . import` imports."""
    found = {m for p in sources() for _, m, _ in imports(p)}
    assert "cellbench.errors" in found and "cellbench.data.sets" in found
    cli = {m for _, m, _ in imports(ROOT / "cli" / "core.py")}
    assert "cellbench.sim" in cli  # a lazy import inside cmd_fit
    methods = {m for _, m, _ in imports(ROOT / "methods" / "__init__.py")}
    assert {"cellbench.methods.ccgan", "cellbench.methods.pcnet"} <= methods


def test_no_lower_layer_imports_a_higher_one():
    bad = []
    for path in sources():
        me = module_name(path)
        for line, target, _ in imports(path):
            if LEVEL.get(top(target), -1) > LEVEL[top(me)]:
                bad.append(f"{path.relative_to(ROOT.parent)}:{line}: {top(me)} imports {target} ({top(target)})")
    assert not bad, "a lower layer imports a higher one:\n" + "\n".join(bad)


def test_no_private_name_is_imported_across_modules():
    bad = []
    for path in sources():
        me = module_name(path)
        for line, target, names in imports(path):
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if target != me and private:
                bad.append(f"{path.relative_to(ROOT.parent)}:{line}: from {target} import {', '.join(private)}")
            if any(part.startswith("_") and not part.startswith("__") and part != "_presets"
                   for part in target.split(".")[1:]):
                bad.append(f"{path.relative_to(ROOT.parent)}:{line}: imports private module {target}")
    assert not bad, "private names imported across modules:\n" + "\n".join(bad)


@pytest.mark.parametrize("low, high", [("data", "sim"), ("nets", "eval"), ("train", "methods")])
def test_the_layers_named_in_issue_12_are_ordered(low, high):
    assert LEVEL[low] < LEVEL[high]
