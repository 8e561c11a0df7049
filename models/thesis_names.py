"""The layer names of the thesis's WRN-40-2 code (N. Greffe, 2019) and our width groups.

`Conv_0` is the stem, `Skip_x` the shortcut of stage x, `Conv_x_i_1` the first conv of block i
of stage x (its inner width) and `Conv_x_i_2` the second (the stage's residual stream).
"""
from __future__ import annotations

import re
from typing import Mapping

from .arch import Arch, WidthError

_NAME = re.compile(r"Conv_0|Skip_(\d)|Conv_(\d)_(\d+)_([12])")


def thesis_group(name: str) -> str:
    m = _NAME.fullmatch(name)
    if not m:
        raise WidthError(f"{name!r} is not a thesis layer name (Conv_0, Skip_x, Conv_x_i_1, Conv_x_i_2)")
    if name == "Conv_0":
        return "stem"
    if m.group(1):
        return f"s{m.group(1)}"
    stage, block, which = m.group(2), m.group(3), m.group(4)
    return f"s{stage}b{block}" if which == "1" else f"s{stage}"


def widths_from_thesis(arch: Arch, per_layer: Mapping[str, int]) -> dict[str, int]:
    """Output channels per thesis layer name -> a validated width assignment of `arch`.

    Layers that share a width group (a stage's second convs and its shortcut) must agree."""
    widths: dict[str, int] = {}
    origin: dict[str, str] = {}
    for name, channels in per_layer.items():
        group = thesis_group(name)
        if group not in arch.group_by_name:
            raise WidthError(f"{name} maps to group {group!r}, which {arch.name} does not have")
        if group in widths and widths[group] != channels:
            raise WidthError(
                f"{name} has {channels} channels but {origin[group]} has {widths[group]}: both are group {group!r}"
            )
        widths[group] = channels
        origin.setdefault(group, name)
    return arch.validate(widths)


def load_widths_any(arch: Arch, path) -> dict[str, int]:
    """A width assignment file in our format, or per-layer thesis names (`Conv_0`, ...)."""
    import json
    from pathlib import Path

    from .arch import load_widths

    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return load_widths(arch, path)  # reports the error in the usual words
    if isinstance(data, dict) and data and all(isinstance(k, str) and _NAME.fullmatch(k) for k in data):
        return widths_from_thesis(arch, data)
    return load_widths(arch, path)
