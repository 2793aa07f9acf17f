"""Imports go one way (DESIGN.md, "The layout is the architecture"): building blocks below commands.

Every ``import lowbit.X`` / ``from lowbit.X import`` in the source, at module level or inside
a function (lazy imports count: they are cycles all the same), is an edge between top-level
units (``quant``, ``nn``, ..., or a single module such as ``runs``). The rules below are the
ones the layout promises; a new edge against them fails here with the file that makes it.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Set, Tuple

import lowbit

ROOT = Path(lowbit.__file__).resolve().parent
BLOCKS = {"quant", "nn", "models", "data", "estimators", "optim", "native", "registry"}
COMMANDS = {"probe", "train", "analysis", "sweep", "deploy", "report", "cli", "tracking"}


def import_edges() -> Dict[Tuple[str, str], List[str]]:
    """(importing unit, imported unit) -> the files that import it."""
    edges: Dict[Tuple[str, str], List[str]] = defaultdict(list)
    for path in sorted(ROOT.rglob("*.py")):
        unit = path.relative_to(ROOT).with_suffix("").parts[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                parts = name.split(".")
                if parts[0] == "lowbit" and len(parts) > 1 and parts[1] != unit:
                    edges[(unit, parts[1])].append(str(path.relative_to(ROOT)))
    return edges


def violations(edges: Dict[Tuple[str, str], List[str]], importers: Set[str], forbidden: Set[str]) -> List[str]:
    return [f"{a} -> {b} ({', '.join(sorted(set(files)))})" for (a, b), files in edges.items() if a in importers and b in forbidden]


def test_the_scan_sees_the_known_edges():
    edges = import_edges()
    assert ("nn", "quant") in edges and ("train", "estimators") in edges and ("probe", "estimators") in edges


def test_building_blocks_import_no_command():
    assert violations(import_edges(), BLOCKS, COMMANDS) == []


def test_quantizers_know_nothing_of_layers_or_models():
    edges = import_edges()
    assert violations(edges, {"quant"}, {"nn", "models", "estimators", "optim", "data"}) == []
    assert violations(edges, {"nn"}, {"models", "estimators", "data"}) == []
    assert violations(edges, {"estimators"}, {"models", "data", "optim"}) == []


def test_training_imports_no_other_command():
    # train uses the probe's measurements through lowbit.estimators; deploy reads trained models, not the reverse
    assert violations(import_edges(), {"train"}, {"probe", "analysis", "sweep", "deploy"}) == []


def test_the_probe_imports_neither_sweeps_analyses_nor_deploy():
    assert violations(import_edges(), {"probe"}, {"analysis", "sweep", "deploy"}) == []
