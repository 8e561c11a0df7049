"""Fast generation of single-layer `.tflite` models by rewriting one converter template.

Timing a layer type means timing one model per (c_in, c_out) cell -- tens of thousands of
models for a WideResNet. The TFLite converter needs ~0.4 s per model, so instead we convert
ONE template per layer type at "marker" channel counts (values that occur nowhere else in the
model, e.g. 37 and 41) and rewrite it for every other cell:

* every tensor dimension (shape and shape_signature) equal to a marker is a channel axis;
* every int32 shape operand (RESHAPE new_shape tensor or option) holding a marker is too;
* every float32 constant whose shape holds a marker (weights, folded BN, biases) is
  re-allocated at the new size and filled with small seeded random values.

The template is unpacked once, its constant data moved out ("skeleton"), and re-packed; after
that a render is a copy of the small skeleton, an int32 scatter of the new dimensions and an
append of the buffer payloads (16-byte aligned, as the converter writes them) with their
offsets patched -- no flatbuffer building in the hot path.

The flatbuffer is read through `latency.tflite_schema`; reference Keras snippets to convert
templates from are in `latency.keras_snippets`.
"""
from __future__ import annotations

import functools
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import flatbuffers
import numpy as np

from .tflite_schema import FILE_IDENTIFIER, TYPE_NAMES, builtin_code, fb

__all__ = ["ModelTemplate"]

_ALIGN = 16  # the converter aligns buffer data to 16 bytes; some kernels/delegates rely on it
_WEIGHT_STD = 0.1
_POOL_FLOATS = 1 << 21  # 8 MiB: comfortably above the largest buffer of a WRN-40-2 (128*128*9)
_POOL_SEED = 0x5EED_7F1E

# Inputs of these ops are shapes, so a marker inside them is a channel count to rewrite.
# (op code -> input indices). Any other integer constant holding a marker is a collision.
_SHAPE_OPERANDS: dict[int, tuple[int, ...]] = {
    fb.BuiltinOperator.RESHAPE: (1,),
    fb.BuiltinOperator.BROADCAST_TO: (1,),
    fb.BuiltinOperator.FILL: (0,),
}


# --------------------------------------------------------------------------------------------
# random weights: one pre-generated pool, sliced at seeded offsets
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _random_pool() -> bytes:
    # Generating ~150k normals per render would cost more than the whole rewrite; a fixed pool
    # sliced at a seeded offset is deterministic across processes and practically free.
    pool = np.random.default_rng(_POOL_SEED).standard_normal(_POOL_FLOATS, dtype=np.float32)
    pool *= np.float32(_WEIGHT_STD)
    pool[pool == 0] = np.float32(1e-3)  # "never all-zero", even for a 1-element buffer
    return pool.tobytes()


_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    # Cheap, well-mixed, process-independent hash (Python's hash() is salted per process).
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _random_floats(n: int, seed: int, slot: int) -> bytes | memoryview:
    if n <= _POOL_FLOATS:
        start = _splitmix64(_splitmix64(seed & _MASK64) ^ slot) % (_POOL_FLOATS - n + 1)
        return memoryview(_random_pool())[4 * start : 4 * (start + n)]
    # Beyond the pool (huge layers only): draw directly; slower but still seeded.
    values = np.random.default_rng([seed & _MASK64, slot]).standard_normal(n, dtype=np.float32)
    values *= np.float32(_WEIGHT_STD)
    values[values == 0] = np.float32(1e-3)
    return values.tobytes()


# --------------------------------------------------------------------------------------------
# the template
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Payload:
    """How to produce one buffer's data in a render."""

    field_word: int  # int32 index (byte offset / 4) of the Buffer table's `data` uoffset
    fixed: bytes | None = None  # copied verbatim
    float_dims: tuple[int, ...] | None = None  # random float32 of this shape; -1-k = marker k
    int_values: np.ndarray | None = None  # shape operand: template values...
    int_slots: np.ndarray | None = None  # ...whose positions...
    int_markers: np.ndarray | None = None  # ...are replaced by these markers' channels


class ModelTemplate:
    """A converted single-layer model whose marker channel counts can be rewritten.

    `markers` maps an axis name ("c_in", "c_out", "c", "h", ...) to the channel count the
    template was converted at. Marker values must be distinct, >= 2 and must not occur as
    any other dimension or integer constant of the model (pick e.g. 37, 41, 43: odd primes that
    are not spatial sizes, kernel sizes or class counts); ambiguity raises ValueError.

    Build once per layer type (a few ms), then `render(channels, seed)` per cell: ~25 us plus
    a memcpy of the weights (~50 us for a 128x128 3x3 conv). Instances pickle compactly (as
    the template bytes and markers), so they can be shipped to worker processes.
    """

    def __init__(self, template_bytes: bytes, markers: Mapping[str, int]) -> None:
        self.markers: dict[str, int] = {str(k): int(v) for k, v in markers.items()}
        self.axes: tuple[str, ...] = tuple(self.markers)
        self._validate_markers()
        if not fb.Model.ModelBufferHasIdentifier(template_bytes, 0):
            raise ValueError("template is not a TFLite flatbuffer (missing 'TFL3' identifier)")
        # Kept for pickling (workers rebuild from it) and for callers who want the original.
        self.template_bytes = bytes(template_bytes)
        model = fb.ModelT.InitFromPackedBuf(self.template_bytes, 0)
        plans = self._plan(model)
        self._build_skeleton(model, plans)

    # -- construction ------------------------------------------------------------------------

    def _validate_markers(self) -> None:
        # No markers is allowed: a type with fixed channel counts renders as a re-laid-out copy.
        values = list(self.markers.values())
        for name, value in self.markers.items():
            if value < 2:
                raise ValueError(f"marker {name}={value} must be >= 2 (1 is the batch/broadcast size)")
        if len(set(values)) != len(values):
            raise ValueError(f"marker values must be distinct, got {self.markers}")

    def _collision(self, what: str, value: int) -> ValueError:
        name = next(k for k, v in self.markers.items() if v == value)
        return ValueError(
            f"marker {name}={value} is ambiguous: it also occurs as {what}; "
            "convert the template at channel counts that occur nowhere else in the model"
        )

    def _check_not_derived(self, d: int, what: str) -> None:
        # A dimension that is a multiple of a marker (e.g. a flattened H*W*c) depends on the
        # channel count but cannot be rewritten by value substitution; refuse rather than emit
        # an inconsistent model. Prime markers make false alarms practically impossible.
        for name, m in self.markers.items():
            if d > m and d % m == 0:
                raise ValueError(
                    f"{what}: {d} is a multiple of marker {name}={m}, i.e. it looks derived from a "
                    "channel count (e.g. a flatten) and cannot be rewritten; if it is not, pick "
                    "another marker value"
                )

    def _plan(self, model: Any) -> dict[int, tuple[str, Any]]:
        """Classify buffers, check where marker values occur; returns per-buffer plans."""
        by_value = {v: i for i, v in enumerate(self.markers.values())}
        seen: set[int] = set()
        codes = [builtin_code(c) for c in model.operatorCodes or []]
        buffers = model.buffers or []
        for buf in buffers:
            if int(getattr(buf, "offset", 0) or 0) > 1:  # data stored after the flatbuffer
                raise ValueError("templates with external buffer data (offset/size) are not supported")
        plans: dict[int, tuple[str, Any]] = {}
        for sg in model.subgraphs or []:
            tensors = sg.tensors or []
            shape_operands: set[int] = set()
            for op in sg.operators or []:
                for k in _SHAPE_OPERANDS.get(codes[op.opcodeIndex], ()):
                    if op.inputs is not None and k < len(op.inputs) and op.inputs[k] >= 0:
                        shape_operands.add(int(op.inputs[k]))
                opts = op.builtinOptions
                if isinstance(opts, fb.ReshapeOptionsT) and opts.newShape is not None:
                    for v in (int(v) for v in opts.newShape):
                        if v in by_value:
                            seen.add(by_value[v])
                        else:
                            self._check_not_derived(v, f"RESHAPE option new_shape {list(opts.newShape)}")
            for ti, t in enumerate(tensors):
                name = (t.name or b"").decode(errors="replace") if isinstance(t.name, bytes) else str(t.name)
                data = buffers[t.buffer].data if 0 < t.buffer < len(buffers) else None
                is_const = data is not None and len(data) > 0
                dims = [int(d) for d in (t.shape if t.shape is not None else [])]
                sig = [int(d) for d in (t.shapeSignature if t.shapeSignature is not None else [])]
                marker_dims = []
                for axis, d in enumerate(dims):
                    if d not in by_value:
                        self._check_not_derived(d, f"axis {axis} of tensor {ti} '{name}' shape {dims}")
                        continue
                    # NHWC activations carry channels only on the last axis; constants (conv
                    # filters OHWI, depthwise 1HWC, FC weights OI) also on axis 0. Inner axes of
                    # rank>=3 tensors are spatial or kernel axes.
                    inner = len(dims) >= 3 and 0 < axis < len(dims) - 1
                    if inner or (not is_const and axis != len(dims) - 1):
                        raise self._collision(f"axis {axis} of tensor {ti} '{name}' shape {dims}", d)
                    marker_dims.append(axis)
                    seen.add(by_value[d])
                for axis, d in enumerate(sig):
                    if d in by_value and axis not in marker_dims:
                        raise self._collision(f"axis {axis} of the shape_signature of tensor '{name}'", d)
                if not is_const:
                    continue
                if t.type == fb.TensorType.FLOAT32 and marker_dims:
                    shape = tuple(-1 - by_value[d] if d in by_value else d for d in dims)
                    self._add_plan(plans, t.buffer, ("float", shape), name)
                elif t.type in (fb.TensorType.INT32, fb.TensorType.INT64):
                    values = np.frombuffer(bytes(np.asarray(data, np.uint8)),
                                           np.int32 if t.type == fb.TensorType.INT32 else np.int64)
                    hits = [i for i, v in enumerate(values) if int(v) in by_value]
                    if ti in shape_operands:
                        for v in values:
                            if int(v) not in by_value:
                                self._check_not_derived(int(v), f"a value of shape operand '{name}' {values.tolist()}")
                    if hits and (ti not in shape_operands or t.type != fb.TensorType.INT32):
                        what = f"a value of integer constant '{name}' {values.tolist()}"
                        raise self._collision(what, int(values[hits[0]]))
                    if hits:
                        slots = np.array(hits, np.int64)
                        mk = np.array([by_value[int(values[i])] for i in hits], np.int64)
                        seen.update(mk.tolist())
                        self._add_plan(plans, t.buffer, ("shape", (values.copy(), slots, mk)), name)
                elif marker_dims:
                    raise ValueError(
                        f"constant '{name}' of type {TYPE_NAMES.get(t.type, t.type)} has a channel "
                        "axis; only float32 weights can be re-generated"
                    )
        missing = [n for i, n in enumerate(self.axes) if i not in seen]
        if missing:
            raise ValueError(
                f"marker(s) {', '.join(f'{n}={self.markers[n]}' for n in missing)} occur nowhere "
                "in the template; was it converted at these channel counts?"
            )
        return plans

    @staticmethod
    def _add_plan(plans: dict[int, tuple[str, Any]], buf: int, plan: tuple[str, Any], name: str) -> None:
        old = plans.get(buf)
        if old is not None and (old[0] != plan[0] or (plan[0] == "float" and old[1] != plan[1])):
            raise ValueError(f"buffer {buf} is shared by tensors of different shapes ('{name}')")
        plans[buf] = plan

    def _build_skeleton(self, model: Any, plans: dict[int, tuple[str, Any]]) -> None:
        """Re-pack without buffer data, then record the byte positions a render patches."""
        by_value = {v: i for i, v in enumerate(self.markers.values())}
        datas: dict[int, bytes] = {}
        for bi, buf in enumerate(model.buffers or []):
            if buf.data is not None and len(buf.data) > 0:
                datas[bi] = bytes(np.asarray(buf.data, np.uint8))
                # An empty vector keeps the `data` field present so its offset can be redirected
                # to the payload appended after the flatbuffer.
                buf.data = np.zeros(0, np.uint8)
        builder = flatbuffers.Builder(4096)
        builder.Finish(model.Pack(builder), file_identifier=FILE_IDENTIFIER)
        skel = bytes(builder.Output())
        # Appended payloads start at a 16-byte boundary relative to the file start.
        skel += b"\0" * (-len(skel) % _ALIGN)

        root = fb.Model.GetRootAs(skel, 0)
        words: list[int] = []
        marks: list[int] = []

        def collect(tab: Any, slot: int) -> None:
            o = tab.Offset(slot)
            if not o:
                return
            start, n = tab.Vector(o), tab.VectorLen(o)
            for j in range(n):
                v = struct.unpack_from("<i", skel, start + 4 * j)[0]
                if v in by_value:
                    words.append((start + 4 * j) // 4)
                    marks.append(by_value[v])

        for s in range(root.SubgraphsLength()):
            sg = root.Subgraphs(s)
            for ti in range(sg.TensorsLength()):
                tab = sg.Tensors(ti)._tab
                collect(tab, 4)  # Tensor.shape
                collect(tab, 18)  # Tensor.shape_signature
            for oi in range(sg.OperatorsLength()):
                op = sg.Operators(oi)
                if op.BuiltinOptionsType() == fb.BuiltinOptions.ReshapeOptions:
                    collect(op.BuiltinOptions(), 4)  # ReshapeOptions.new_shape
        self._shape_words = np.array(words, np.int64)
        self._shape_markers = np.array(marks, np.int64)

        payloads: list[_Payload] = []
        for bi in sorted(datas):
            tab = root.Buffers(bi)._tab
            o = tab.Offset(4)  # Buffer.data
            if not o:
                raise RuntimeError(f"re-packed buffer {bi} lost its data field")
            field_pos = tab.Pos + o
            plan = plans.get(bi)
            if plan is None:
                payloads.append(_Payload(field_pos // 4, fixed=datas[bi]))
            elif plan[0] == "float":
                payloads.append(_Payload(field_pos // 4, float_dims=plan[1]))
            else:
                values, slots, mk = plan[1]
                payloads.append(_Payload(field_pos // 4, int_values=values, int_slots=slots, int_markers=mk))
        self._payloads = payloads
        self._field_words = np.array([p.field_word for p in payloads], np.int64)
        self._skeleton = skel

    # -- pickling: workers get the compact state, not the parsed objects ----------------------

    def __reduce__(self) -> tuple[Any, ...]:
        return (ModelTemplate, (self.template_bytes, self.markers))

    # -- rendering ---------------------------------------------------------------------------

    def render(self, channels: Mapping[str, int], seed: int = 0) -> bytes:
        """A complete .tflite model for one cell: `channels` gives a count for every marker."""
        if channels.keys() != self.markers.keys():
            raise ValueError(f"channels must name exactly {sorted(self.markers)}, got {sorted(channels)}")
        vals = [int(channels[a]) for a in self.axes]
        if vals and min(vals) < 1:
            raise ValueError(f"channel counts must be >= 1, got {dict(channels)}")
        out = bytearray(self._skeleton)
        words = np.frombuffer(out, np.int32)
        varr = np.array(vals, np.int32)
        words[self._shape_words] = varr[self._shape_markers]

        parts: list[Any] = [out]
        pos = len(out)
        offsets = np.empty(len(self._payloads), np.int64)
        for k, p in enumerate(self._payloads):
            if p.fixed is not None:
                data: Any = p.fixed
            elif p.float_dims is not None:
                n = 1
                for d in p.float_dims:
                    n *= vals[-1 - d] if d < 0 else d
                data = _random_floats(n, seed, k)
            else:
                v = p.int_values.copy()
                v[p.int_slots] = varr[p.int_markers]
                data = v.tobytes()
            # vector = uint32 length prefix, then the bytes; the bytes start 16-byte aligned
            pad = -(pos + 4) % _ALIGN
            if pad:
                parts.append(b"\0" * pad)
            offsets[k] = pos + pad - 4 * int(self._field_words[k])  # uoffset: relative, forward
            parts.append(struct.pack("<I", len(data)))
            parts.append(data)
            pos += pad + 4 + len(data)
        if pos >= 1 << 31:
            raise ValueError("rendered model exceeds the 2 GiB flatbuffer limit")
        words[self._field_words] = offsets
        return b"".join(parts)

    def __repr__(self) -> str:
        return f"ModelTemplate(markers={self.markers}, skeleton={len(self._skeleton)} B)"
