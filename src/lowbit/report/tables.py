"""Small helpers to aggregate flat records and print Markdown tables."""

from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from typing import Any, Callable, Dict, Hashable, Iterable, List, Mapping, Sequence, Tuple


def mean_se(values: Sequence[float]) -> Tuple[float, float, int]:
    """Mean, standard error of the mean (sample std / √n; NaN for n = 1) and n, ignoring NaNs."""
    xs = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    n = len(xs)
    if n == 0:
        return math.nan, math.nan, 0
    mean = sum(xs) / n
    if n == 1:
        return mean, math.nan, 1
    var = sum((x - mean) ** 2 for x in xs) / (n - 1)
    return mean, math.sqrt(var / n), n


def group(records: Iterable[Mapping[str, Any]], key: Callable[[Mapping[str, Any]], Hashable]) -> Dict[Hashable, List]:
    """Records by ``key(record)``, in first-seen order."""
    groups: Dict[Hashable, List] = defaultdict(list)
    for r in records:
        groups[key(r)].append(r)
    return dict(groups)


def format_number(x: float, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if x == 0:
        return "0"
    if abs(x) >= 1e4 or abs(x) < 1e-3:
        return f"{x:.{digits - 1}e}"
    return f"{x:.{digits}g}"


def format_mean_se(mean: float, se: float) -> str:
    if math.isnan(mean):
        return "–"
    if math.isnan(se):
        return format_number(mean)
    return f"{format_number(mean)} ± {format_number(se, 2)}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table, first column left-aligned, the rest right-aligned."""
    lines = ["| " + " | ".join(str(h) for h in header) + " |"]
    lines.append("|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|")
    for row in rows:
        lines.append("| " + " | ".join(str(c) for c in row) + " |")
    return "\n".join(lines)


def sort_key(value: Any) -> Tuple:
    """An order for mixed config values: None first, then booleans and numbers by value, then text."""
    if value is None:
        return (0, 0, "")
    if isinstance(value, bool):
        return (1, int(value), "")
    if isinstance(value, (int, float)):
        return (1, float(value), "")
    return (2, 0, str(value))


def csv_text(rows: Sequence[Mapping[str, Any]]) -> str:
    """Rows as CSV text, columns in first-seen order, NaN as an empty cell."""
    names = list(dict.fromkeys(k for r in rows for k in r))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=names, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in rows)
    return buffer.getvalue()
