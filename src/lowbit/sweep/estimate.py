"""Time estimates of probe cells before a sweep starts (``lowbit.probe.estimate`` per parent grid).

Cells that split one probe grid share its timing: the grid is timed once and
each cell's figure is the sum over its own units.
"""

from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple

from lowbit.config import from_dict, to_dict


def estimate_probe_cells(configs: Sequence[Any]) -> Tuple[float, List[str]]:
    """(estimated seconds of all ``configs``, what the estimate leaves out)."""
    from lowbit.probe import ProbeConfig
    from lowbit.probe.estimate import estimate_run
    from lowbit.probe.plan import plan_units

    groups: Dict[str, Tuple[Any, List[Any]]] = {}
    for config in configs:
        data = to_dict(config)
        data["probe"]["select"] = {}
        groups.setdefault(repr(data), (data, []))[1].append(config)
    seconds, left_out = 0.0, []
    for data, members in groups.values():
        estimate = estimate_run(from_dict(ProbeConfig, data))
        seconds += sum(estimate.seconds(plan_units(c, estimate.layers)) for c in members)
        left_out += [x for x in estimate.left_out if x not in left_out]
    return seconds, left_out
