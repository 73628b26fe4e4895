"""docs/run-folder.md against a real run folder: paths, record fields, metadata keys and metric names."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from cellbench.cli import main
from cellbench.results import Record

DOC = Path(__file__).resolve().parents[1] / "docs" / "run-folder.md"
#: Documented paths that a tiny synthetic run without trained methods does not produce.
OPTIONAL = {"compare-<a>-<b>.html", "artifacts/curves/<method>.jsonl", "stages/resim-<hash>/",
            "stages/resim-<hash>/pairs/", "stages/test-masks-<hash>/", "stages/cross-data-<hash>/"}


def _tree(block: str, prefix: str = "") -> dict[str, bool]:
    """``{path pattern: is a leaf}`` of an indented tree in a code block."""
    out: dict[str, bool] = {}
    stack: list[tuple[int, str]] = []
    for line in block.splitlines():
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        token = line.split()[0]
        if '"' in token or token.endswith(":") or token[0] in "({[":
            continue  # a continuation line of a description
        while stack and stack[-1][0] >= indent:
            stack.pop()
        if stack:
            out[stack[-1][1]] = False
        path = (stack[-1][1] if stack else prefix) + token
        out[path] = True
        if token.endswith("/"):
            stack.append((indent, path))
    return out


def _regex(pattern: str) -> re.Pattern:
    rx = re.escape(pattern)
    rx = re.sub(r"\\\{([^}]*)\\\}", lambda m: "(" + m.group(1).replace(",", "|") + ")", rx)
    rx = re.sub(r"<[^>]*>", "[^/]+", rx)
    return re.compile(rx)


def documented_paths() -> dict[str, bool]:
    text = DOC.read_text(encoding="utf-8")
    blocks = re.findall(r"\n((?:    .*\n|\n)+)", text)
    run_block = next(b for b in blocks if "RUN_DIR/" in b)
    stage_block = next(b for b in blocks if b.strip().startswith("stages/"))
    tree = _tree("\n".join(line for line in run_block.splitlines() if "RUN_DIR/" not in line))
    tree.update(_tree(stage_block))
    tree["stages/"] = False  # its content is the second tree
    for p in list(tree):  # "artifacts/confusion/<method>.json" documents "artifacts/confusion/" too
        parts = p.rstrip("/").split("/")
        for i in range(1, len(parts)):
            tree.setdefault("/".join(parts[:i]) + "/", False)
    return tree


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("doc") / "run"
    assert main(["run-all", "--out", str(d), "--methods", "identity,affine", "--set", "synthetic_n=80",
                 "--set", "size=64", "--set", 'classifier_preset="tiny"', "--set", "speed_seconds=1.0",
                 "--set", "speed_batch_sizes=[1]", "--set", "speed_repeats=1", "-q"]) == 0
    return d


def test_every_file_of_a_run_is_documented_and_every_documented_path_exists(run):
    tree = documented_paths()
    patterns = {p: _regex(p.rstrip("/")) for p in tree}
    leaves = [p for p, leaf in tree.items() if leaf and p.endswith("/")]
    undocumented = []
    for f in sorted(run.rglob("*")):
        rel = f.relative_to(run).as_posix()
        if any(patterns[p].fullmatch(rel) for p in tree):
            continue
        if any(patterns[p].fullmatch("/".join(rel.split("/")[: p.count("/")])) for p in leaves):
            continue  # inside a folder whose content the document leaves to its module
        undocumented.append(rel)
    assert not undocumented, f"in the run folder but not in docs/run-folder.md: {undocumented}"
    rels = [f.relative_to(run).as_posix() for f in run.rglob("*")]
    missing = [p for p in tree if p not in OPTIONAL and not any(patterns[p].fullmatch(r) for r in rels)]
    assert not missing, f"in docs/run-folder.md but not written by run-all: {missing}"


def test_record_fields_metadata_and_metrics_are_documented(run):
    text = DOC.read_text(encoding="utf-8")
    fields_doc = text[text.index("## Record fields"):text.index("## Metric names")]
    documented = set(re.findall(r"`([a-z_]+)`", fields_doc))
    assert {f.name for f in dataclasses.fields(Record)} <= documented
    payload = json.loads((run / "results.json").read_text())
    meta_doc = text[text.index("## results.json metadata"):text.index("## Record fields")]
    assert set(payload["metadata"]) <= set(re.findall(r"`([a-z_]+)`", meta_doc))
    for rec in payload["records"]:
        assert set(rec) == {f.name for f in dataclasses.fields(Record)}
    metrics_doc = set(re.findall(r"`([A-Za-z0-9_]+)`", text[text.index("Metric names:"):]))
    metrics_doc |= {f"lab_{c}_{s}" for c in "Lab" for s in ("mean", "std")}
    used = {r["metric"] for r in payload["records"]}
    assert used <= metrics_doc, f"metrics written but not documented: {sorted(used - metrics_doc)}"
    config = json.loads((run / "config.json").read_text())
    assert config == payload["metadata"]["config"]
    stage = json.loads(next((run / "stages").glob("eval-affine-*/stage.json")).read_text())
    assert {"name", "key", "config", "files"} <= set(stage)
