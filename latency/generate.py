"""Single-layer models of every cell of a layer type.

The Keras snippet of a cell is built by the same `keras_layer` that builds whole networks, so
the timed op is the op the network runs. The converter is run once per type (at marker
channel counts) and its output is rewritten for every other cell (`tflite_rewrite`). A type's
template is converted once per process, whichever `CellModels` asks for it: a conversion costs
about 0.4 s of TensorFlow, and a build or a report asks for every type two or three times (the
context's partners, the cells, the op check). A table stores the templates its cells were
rendered from; a process that continues or checks it adopts them (`adopt_templates`).
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Mapping

from models.arch import INPUT, ActiveLayer, Layer
from .keras_snippets import randomise_weights
from .layer_types import LayerType
from .tflite_rewrite import ModelTemplate

MARKERS = (37, 41, 43, 47, 53, 59, 61, 67)

# templates (and directly converted models) of this process, by layer type: shared by every
# CellModels, under one lock, since the converter is not thread-safe whoever calls it
_TEMPLATES: dict[LayerType, ModelTemplate] = {}
_DIRECT: dict[tuple[LayerType, int, int], bytes] = {}
_CONVERTER_LOCK = threading.Lock()


def _markers(t: LayerType) -> dict[str, int]:
    taken = {1, 2, 3, 4, t.in_size, -(-t.in_size // t.stride), t.kernel, t.stride, 10}
    taken |= {t.in_lo} if t.in_lo == t.in_hi else set()
    taken |= {t.out_lo} if t.two_axes and t.out_lo == t.out_hi else set()
    free = [m for m in MARKERS if m not in taken]
    marks = {}
    if t.in_lo < t.in_hi:
        marks["c_in"] = free.pop(0)
    if t.two_axes and t.out_lo < t.out_hi:
        marks["c_out"] = free.pop(0)
    return marks


def _layer_of(t: LayerType) -> Layer:
    inputs = (INPUT, INPUT) if t.op == "add" else (INPUT,)
    return Layer("cell", t.op, inputs, "a", "b", t.in_size, t.kernel, t.stride, t.bn, t.act)


def single_layer_keras(t: LayerType, c_in: int, c_out: int, seed: int = 0):
    """Keras model of one cell (batch 1). One-axis types ignore c_out."""
    import keras

    from models.keras_builder import keras_layer

    if not t.two_axes:
        c_out = c_in
    layer = _layer_of(t)
    inputs = [keras.Input((t.in_size, t.in_size, c_in), batch_size=1, name=f"x{i}") for i in range(len(layer.inputs))]
    y = keras_layer(ActiveLayer(layer, layer.inputs, c_in, c_out), inputs)
    model = keras.Model(inputs if len(inputs) > 1 else inputs[0], y)
    randomise_weights(model, seed)  # untrained weights are trivial and the converter drops them
    return model


def convert_cell(t: LayerType, c_in: int, c_out: int, seed: int = 0) -> bytes:
    """The converter's output for one cell (the slow reference path)."""
    from models.keras_builder import convert_keras

    return convert_keras(single_layer_keras(t, c_in, c_out, seed))


def adopt_templates(types: Mapping[str, LayerType], stored: Mapping[str, tuple[Mapping[str, int], bytes]]) -> int:
    """Makes the templates a table stored (`TableStore.templates`, keyed like `types`, the table's
    layer types) the ones this process renders those types' cells from: a resumed build, a
    report's check cells and its op check then render the models the table timed, whatever
    converter this process has, and convert nothing. Returns how many were adopted."""
    adopted = 0
    with _CONVERTER_LOCK:
        for key, (markers, model) in stored.items():
            if key not in types:
                continue
            held = _TEMPLATES.get(types[key])
            # `build-tables` adopts before its partners and `build_table` again: parse a template once
            if held is None or held.template_bytes != model or held.markers != dict(markers):
                _TEMPLATES[types[key]] = ModelTemplate(model, markers)
            adopted += 1
    return adopted


def adopt_table_templates(path: str | Path, arch_name: str | None = None) -> int:
    """`adopt_templates` of the table file at `path` (read-only); 0 where there is no file yet,
    it stores no templates, or it is a table of another architecture than `arch_name`."""
    from .store import TableStore

    if not Path(path).is_file():
        return 0
    store = TableStore.open(path)
    try:
        if arch_name is not None and store.meta().get("arch") != arch_name:
            return 0  # the build refuses the file; nothing of it is used
        return adopt_templates(store.layer_types(), store.templates())
    finally:
        store.close()


def converter_version() -> str:
    """The TensorFlow converter's version, as a stored template records it."""
    from importlib import metadata

    try:
        return "tensorflow " + metadata.version("tensorflow")
    except metadata.PackageNotFoundError:
        return "tensorflow (version unknown)"


class CellModels:
    """Renders the model of any cell of the given layer types; templates on first use."""

    def __init__(self, types: dict[str, LayerType]):
        self.types = types

    def template(self, key: str) -> ModelTemplate:
        t = self.types[key]
        with _CONVERTER_LOCK:
            if t not in _TEMPLATES:
                marks = _markers(t)
                c_in = marks.get("c_in", t.in_lo)
                c_out = marks.get("c_out", t.out_lo if t.two_axes else c_in)
                _TEMPLATES[t] = ModelTemplate(convert_cell(t, c_in, c_out), marks)
            return _TEMPLATES[t]

    def stored_form(self, keys: list[str]) -> dict[str, tuple[dict[str, int], bytes]]:
        """Type key -> (markers, converted model) of each of `keys`' templates, as a table stores
        them (`TableStore.add_templates`)."""
        held = {k: self.template(k) for k in keys}
        return {k: (dict(t.markers), t.template_bytes) for k, t in held.items()}

    def render(self, key: str, c_in: int, c_out: int, seed: int = 0) -> bytes:
        t = self.types[key]
        if not t.contains(c_in, c_out):
            raise ValueError(f"cell ({c_in}, {c_out}) is outside layer type {key}")
        if t.op == "se" and c_in == 1:
            # the converter emits an extra RESHAPE for a single-channel excite: convert it
            cache = (t, c_in, c_out)
            with _CONVERTER_LOCK:
                if cache not in _DIRECT:
                    _DIRECT[cache] = convert_cell(t, c_in, c_out, seed)
                return _DIRECT[cache]
        marks = self.template(key).markers
        channels = {}
        if "c_in" in marks:
            channels["c_in"] = c_in
        if "c_out" in marks:
            channels["c_out"] = c_out
        return self.template(key).render(channels, seed=seed)
