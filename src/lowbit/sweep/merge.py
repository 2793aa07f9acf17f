"""A split probe put back together: the cells' records in the single run's order, and its report.

Each cell of a split probe measures the units its ``probe.select`` keeps, with
the whole grid's unit ids and seeds, so the union of the cells' rows *is* the
single run's ``records.csv``: ``merge_probe_cells`` writes it (rows in the
single run's unit order, the header the single run would have) into
``merged/`` with the unsplit config, and builds the probe report over it.
Rows are copied as text, so no number is re-parsed or re-formatted.
"""

from __future__ import annotations

import copy
import csv
import io
import re
import shutil
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import yaml

from lowbit.runs import atomic_write_text
from lowbit.sweep.spec import PROBE_AXES, SweepSpec

RECORDS = "records.csv"


def merge_probe_cells(spec: SweepSpec, cells: Sequence[Any], sweep_dir: Path) -> List[Tuple[Path, int, int]]:
    """Write ``merged/`` (one folder per unsplit probe); return (folder, cells merged, cells in all) for each."""
    from lowbit.probe.report import write_probe_report

    split = {PROBE_AXES.get(name, name) for name in spec.split}
    groups: Dict[str, List[Any]] = {}
    for cell in cells:
        rest = {k: v for k, v in cell.state.values.items() if k not in split}
        groups.setdefault(repr(rest), []).append(cell)
    results = []
    for index, (key, members) in enumerate(groups.items()):
        finished = [c for c in members if c.done and (c.run_dir / RECORDS).is_file() and c.config]
        if not finished:
            continue
        label = re.sub(r"[^A-Za-z0-9._=+-]+", "_", members[0].state.label) if len(groups) > 1 else ""
        folder = sweep_dir / "merged" / (f"{index:02d}-{label}"[:80] if len(groups) > 1 else "")
        folder.mkdir(parents=True, exist_ok=True)
        parent = unsplit_config(finished[0].config, split)
        atomic_write_text(folder / "config.yaml", yaml.safe_dump(parent, sort_keys=False))
        shutil.copyfile(finished[0].run_dir / "meta.yaml", folder / "meta.yaml")
        header, rows = merged_rows(parent, [c.run_dir / RECORDS for c in finished])
        atomic_write_text(folder / RECORDS, _csv_text(header, rows))
        write_probe_report(folder)
        results.append((folder, len(finished), len(members)))
    return results


def unsplit_config(config: Dict[str, Any], split: set) -> Dict[str, Any]:
    """A cell's config without the selection its split added: the single run's config."""
    parent = copy.deepcopy(config)
    select = parent.get("probe", {}).get("select") or {}
    parent["probe"]["select"] = {k: v for k, v in select.items() if k not in split}
    return parent


def merged_rows(parent: Dict[str, Any], paths: Sequence[Path]) -> Tuple[List[str], List[Dict[str, str]]]:
    """(header, rows) of the cells' records in the unit order of ``parent``'s plan."""
    from lowbit.config import from_dict
    from lowbit.probe import ProbeConfig
    from lowbit.probe.plan import plan_units, probed_layers

    config = from_dict(ProbeConfig, parent)
    order = {u.id: i for i, u in enumerate(plan_units(config, probed_layers(config)))}
    header: List[str] = []
    by_unit: Dict[str, List[Dict[str, str]]] = {}
    for path in paths:
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            header += [name for name in (reader.fieldnames or []) if name not in header]
            for row in reader:
                by_unit.setdefault(row["unit"], []).append(row)
    units = sorted(by_unit, key=lambda unit: order.get(unit, len(order)))
    return header, [row for unit in units for row in by_unit[unit]]


def _csv_text(header: List[str], rows: List[Dict[str, str]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=header, restval="")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()
