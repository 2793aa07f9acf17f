"""Weight memory of a packed model against its source: per binary layer and in total."""

from __future__ import annotations

from typing import Any, Dict, List

from torch import nn

from lowbit.deploy.pack import PackedModel

FLOAT32_BYTES = 4


def _state_bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


def packed_summary(model: nn.Module, packed: PackedModel) -> Dict[str, Any]:
    """{"layers": [per binary layer: name, shape, float32 bytes, packed bytes, extras], "total": {...}}.

    "float32 bytes" of a binary layer is its latent weight as float32 (what a float
    deployment stores); "packed" its sign bits in int64 words (64 per word, each
    output channel's words padded to 64 bits); "extras" the per-channel float scale,
    bias, thresholds and padding table. "model" compares the whole state dicts.
    """
    source = dict(model.named_modules())
    rows: List[Dict[str, Any]] = []
    for name, layer in packed.layers().items():
        original = source[name]
        sizes = layer.packed_bytes()
        rows.append(
            {
                "layer": name,
                "shape": "x".join(str(s) for s in original.weight.shape),
                "float32_bytes": original.weight.numel() * FLOAT32_BYTES,
                "packed_bytes": sizes["weights"],
                "extras_bytes": sizes["extras"],
                "input": "bits" if layer.input_is_bits else "float",
                "output": "bits" if layer.output_bits else "float",
            }
        )
    float_weights = sum(r["float32_bytes"] for r in rows)
    packed_weights = sum(r["packed_bytes"] for r in rows)
    total = {
        "binary_float32_bytes": float_weights,
        "binary_packed_bytes": packed_weights,
        "binary_extras_bytes": sum(r["extras_bytes"] for r in rows),
        "model_float32_bytes": _state_bytes(model),
        "model_packed_bytes": _state_bytes(packed),
    }
    return {"layers": rows, "total": total}


def _kib(n: int) -> str:
    return f"{n / 1024:,.1f}"


def format_packed_summary(summary: Dict[str, Any]) -> str:
    """The summary as a Markdown table (KiB) with the totals and ratios under it."""
    lines = [
        "| layer | weight | in -> out | float32 KiB | packed KiB | scale/thresholds KiB | ratio |",
        "|:--|:--|:--|--:|--:|--:|--:|",
    ]
    for r in summary["layers"]:
        lines.append(
            f"| {r['layer']} | {r['shape']} | {r['input']} -> {r['output']} | {_kib(r['float32_bytes'])} | "
            f"{_kib(r['packed_bytes'])} | {_kib(r['extras_bytes'])} | {r['float32_bytes'] / r['packed_bytes']:.1f}x |"
        )
    t = summary["total"]
    lines += [
        "",
        f"Binary layers' weights: {_kib(t['binary_float32_bytes'])} KiB as float32 -> {_kib(t['binary_packed_bytes'])} KiB "
        f"packed ({t['binary_float32_bytes'] / max(1, t['binary_packed_bytes']):.1f}x smaller; "
        f"{_kib(t['binary_extras_bytes'])} KiB of scales and thresholds besides).",
        f"Whole model (state dict, float layers included): {_kib(t['model_float32_bytes'])} KiB -> "
        f"{_kib(t['model_packed_bytes'])} KiB ({t['model_float32_bytes'] / max(1, t['model_packed_bytes']):.1f}x).",
    ]
    return "\n".join(lines)


__all__ = ["format_packed_summary", "packed_summary"]
