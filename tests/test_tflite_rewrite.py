"""Rendered single-layer models must be indistinguishable (ops, options, shapes) from what the
TFLite converter produces directly for the same cell, and must load and run."""
from __future__ import annotations

import os
import pickle
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import pytest

pytest.importorskip("tensorflow")
from ai_edge_litert import schema_py_generated as fb
from ai_edge_litert.interpreter import Interpreter

from latency.keras_snippets import KINDS, build_template, choose_markers, convert_keras, keras_layer_model
from latency.tflite_rewrite import ModelTemplate
from latency.tflite_schema import describe_model

# (id, kind, geometry, cells as tuples in KINDS[kind] order)
CASES = [
    ("conv_bn_relu_3x3", "conv_bn_relu", dict(input_hw=32, stride=1, kernel=3), [(1, 5), (16, 32), (64, 3)]),
    ("conv_bn_relu_3x3_s2", "conv_bn_relu", dict(input_hw=32, stride=2, kernel=3), [(1, 5), (32, 64)]),
    ("conv_3x3", "conv", dict(input_hw=16, stride=1, kernel=3), [(1, 5), (64, 3)]),
    ("conv_1x1_s2", "conv", dict(input_hw=16, stride=2, kernel=1), [(16, 32), (64, 3)]),
    ("dwconv_bn_relu6", "dwconv_bn_relu6", dict(input_hw=16, stride=1, kernel=3), [(1,), (16,), (64,)]),
    ("bn_relu", "bn_relu", dict(input_hw=8, stride=1, kernel=1), [(1,), (16,), (128,)]),
    ("add", "add", dict(input_hw=8, stride=1, kernel=1), [(1,), (64,)]),
    ("head", "head", dict(input_hw=8, stride=1, kernel=1), [(1,), (16,), (128,)]),
    # c == 1 is excluded here: the converter adds a RESHAPE there (see test_se_c1_quirk)
    ("se", "se", dict(input_hw=16, stride=1, kernel=1), [(2, 5), (16, 32), (64, 3)]),
]

_templates: dict[str, ModelTemplate] = {}


def _template(case_id: str) -> ModelTemplate:
    if case_id not in _templates:
        _, kind, geo, _ = next(c for c in CASES if c[0] == case_id)
        _templates[case_id] = build_template(kind, **geo)
    return _templates[case_id]


def _structure(model_bytes: bytes) -> list[tuple]:
    """Op codes, versions, builtin options and tensor types: what describe_model leaves out."""
    m = fb.ModelT.InitFromPackedBuf(model_bytes, 0)
    sg = m.subgraphs[0]
    out = []
    for op in sg.operators:
        code = m.operatorCodes[op.opcodeIndex]
        opts = op.builtinOptions
        out.append((
            max(code.builtinCode, code.deprecatedBuiltinCode),
            code.version,
            type(opts).__name__,
            sorted(vars(opts).items()) if opts is not None else None,
            [sg.tensors[i].type if i >= 0 else None for i in list(op.inputs) + list(op.outputs)],
            [None if i < 0 or sg.tensors[i].shapeSignature is None else sg.tensors[i].shapeSignature.tolist()
             for i in list(op.inputs) + list(op.outputs)],
        ))
    return out


def _io_shapes(model_bytes: bytes) -> tuple[list[list[int]], list[list[int]]]:
    it = Interpreter(model_content=model_bytes)
    return ([d["shape"].tolist() for d in it.get_input_details()],
            [d["shape"].tolist() for d in it.get_output_details()])


def _run(model_bytes: bytes) -> list[np.ndarray]:
    it = Interpreter(model_content=model_bytes, num_threads=1)
    it.allocate_tensors()
    rng = np.random.default_rng(0)
    for d in it.get_input_details():
        it.set_tensor(d["index"], rng.standard_normal(d["shape"]).astype(np.float32))
    it.invoke()
    return [it.get_tensor(d["index"]).copy() for d in it.get_output_details()]


def _const_float_buffers(model_bytes: bytes) -> list[tuple[list[int], np.ndarray]]:
    m = fb.ModelT.InitFromPackedBuf(model_bytes, 0)
    out = []
    for t in m.subgraphs[0].tensors:
        data = m.buffers[t.buffer].data
        if t.type == fb.TensorType.FLOAT32 and data is not None and len(data):
            out.append((list(t.shape), np.frombuffer(bytes(np.asarray(data, np.uint8)), np.float32)))
    return out


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_render_matches_direct_conversion(case):
    case_id, kind, geo, cells = case
    tpl = _template(case_id)
    assert set(tpl.markers) == set(KINDS[kind])
    for cell in cells:
        channels = dict(zip(KINDS[kind], cell))
        rendered = tpl.render(channels, seed=7)
        direct = convert_keras(keras_layer_model(kind, channels, **geo))

        assert describe_model(rendered) == describe_model(direct), channels
        assert _structure(rendered) == _structure(direct), channels
        assert _io_shapes(rendered) == _io_shapes(direct), channels

        outs = _run(rendered)
        assert [o.shape for o in outs] == [tuple(s) for s in _io_shapes(direct)[1]]
        assert all(np.isfinite(o).all() for o in outs), channels

        # every float constant is re-allocated at its new size and is small, random, non-zero
        for shape, values in _const_float_buffers(rendered):
            assert values.size == int(np.prod(shape)), (channels, shape)
            assert np.all(values != 0) and np.abs(values).max() < 1.0
            if values.size >= 256:
                assert 0.07 < values.std() < 0.13


def test_template_itself_roundtrips():
    """Rendering at the marker values reproduces the converter's description of the template."""
    tpl = _template("conv_bn_relu_3x3")
    assert describe_model(tpl.render(tpl.markers)) == describe_model(tpl.template_bytes)
    assert _structure(tpl.render(tpl.markers)) == _structure(tpl.template_bytes)


def test_conv_ops_and_fusions():
    """Documents what the converter makes of each snippet (BN folded, activations fused)."""
    names = {cid: [op for op, _ in describe_model(_template(cid).template_bytes)] for cid, *_ in CASES}
    assert names["conv_bn_relu_3x3"] == ["CONV_2D"]
    assert names["conv_bn_relu_3x3_s2"] == ["CONV_2D"]
    assert names["conv_1x1_s2"] == ["CONV_2D"]
    assert names["dwconv_bn_relu6"] == ["DEPTHWISE_CONV_2D"]
    assert names["bn_relu"] == ["MUL", "ADD"]
    assert names["add"] == ["ADD"]
    assert names["head"] == ["MEAN", "FULLY_CONNECTED"]
    assert names["se"] == ["MEAN", "FULLY_CONNECTED", "FULLY_CONNECTED", "LOGISTIC", "MUL"]
    act = fb.ActivationFunctionType

    def fused_activations(case_id: str) -> list:
        ops = fb.ModelT.InitFromPackedBuf(_template(case_id).template_bytes, 0).subgraphs[0].operators
        return [getattr(op.builtinOptions, "fusedActivationFunction", None) for op in ops]

    fused = {cid: fused_activations(cid) for cid in ("conv_bn_relu_3x3", "conv_3x3", "dwconv_bn_relu6", "bn_relu")}
    assert fused["conv_bn_relu_3x3"] == [act.RELU]
    assert fused["conv_3x3"] == [act.NONE]
    assert fused["dwconv_bn_relu6"] == [act.RELU6]
    assert fused["bn_relu"] == [act.NONE, act.RELU]


def test_se_c1_quirk():
    """At c == 1 the converter inserts RESHAPE(1,1,1,1) before the MUL; the render keeps the
    broadcasting MUL of the template. Same ops otherwise, and the render is valid."""
    tpl = _template("se")
    rendered = tpl.render({"c": 1, "h": 5})
    direct = convert_keras(keras_layer_model("se", {"c": 1, "h": 5}, input_hw=16))
    ops_r = [op for op, _ in describe_model(rendered)]
    ops_d = [op for op, _ in describe_model(direct)]
    assert [op for op in ops_d if op != "RESHAPE"] == ops_r
    assert all(np.isfinite(o).all() for o in _run(rendered))


def _keras_reshape_model(c: int, flat: bool) -> bytes:
    import keras

    x = keras.Input((32, 32, c), batch_size=1)
    y = keras.layers.Reshape((32 * 32 * c,) if flat else (32 * 32, c))(x)
    return convert_keras(keras.Model(x, keras.layers.ReLU()(y)))


def test_reshape_shape_operand_is_rewritten():
    tpl = ModelTemplate(_keras_reshape_model(37, flat=False), {"c": 37})
    for c in (1, 8, 100):
        rendered = tpl.render({"c": c})
        assert describe_model(rendered) == describe_model(_keras_reshape_model(c, flat=False))
        (out,) = _run(rendered)
        assert out.shape == (1, 1024, c)


def _keras_dynamic_batch_conv(c_in: int, c_out: int) -> bytes:
    import keras

    x = keras.Input((16, 16, c_in))  # no batch_size: the converter writes shape_signature -1
    return convert_keras(keras.Model(x, keras.layers.Conv2D(c_out, 3, padding="same")(x)))


def test_shape_signature_is_rewritten():
    template = _keras_dynamic_batch_conv(37, 41)
    assert fb.ModelT.InitFromPackedBuf(template, 0).subgraphs[0].tensors[0].shapeSignature.tolist() == [-1, 16, 16, 37]
    tpl = ModelTemplate(template, {"c_in": 37, "c_out": 41})
    rendered = tpl.render({"c_in": 8, "c_out": 24})
    direct = _keras_dynamic_batch_conv(8, 24)
    assert describe_model(rendered) == describe_model(direct)
    assert _structure(rendered) == _structure(direct)
    (out,) = _run(rendered)
    assert out.shape == (1, 16, 16, 24)


def test_buffers_are_16_byte_aligned():
    """Weights are appended like the converter writes them: data starts on 16-byte boundaries."""
    rendered = _template("se").render({"c": 13, "h": 7})
    m = fb.Model.GetRootAs(rendered, 0)
    n = 0
    for i in range(m.BuffersLength()):
        tab = m.Buffers(i)._tab
        o = tab.Offset(4)
        if o and tab.VectorLen(o):
            assert tab.Vector(o) % 16 == 0
            n += 1
    assert n >= 5  # 2 FC weights, 2 biases, MEAN axes (+ metadata)


def test_marker_collisions_raise():
    conv = convert_keras(keras_layer_model("conv_bn_relu", {"c_in": 16, "c_out": 32}, input_hw=32))
    with pytest.raises(ValueError, match="c_out=32 is ambiguous.*axis 1"):
        ModelTemplate(conv, {"c_in": 16, "c_out": 32})  # 32 is also the spatial size
    kernel3 = convert_keras(keras_layer_model("conv", {"c_in": 37, "c_out": 3}, input_hw=16))
    with pytest.raises(ValueError, match="c_out=3 is ambiguous"):
        ModelTemplate(kernel3, {"c_in": 37, "c_out": 3})  # 3 is also the kernel size
    tpl_bytes = _template("conv_bn_relu_3x3").template_bytes
    with pytest.raises(ValueError, match="distinct"):
        ModelTemplate(tpl_bytes, {"c_in": 37, "c_out": 37})
    with pytest.raises(ValueError, match=">= 2"):
        ModelTemplate(tpl_bytes, {"c_in": 1, "c_out": 41})
    with pytest.raises(ValueError, match="occur nowhere"):
        ModelTemplate(tpl_bytes, {"c_in": 37, "c_out": 43})
    # odd sizes so that nothing else is a multiple of 2
    head2 = convert_keras(keras_layer_model("head", {"c_in": 2}, input_hw=7, classes=9))
    with pytest.raises(ValueError, match="c_in=2 is ambiguous.*integer constant"):
        ModelTemplate(head2, {"c_in": 2})  # MEAN's axes constant is [1, 2]
    with pytest.raises(ValueError, match="multiple of marker c=37"):
        ModelTemplate(_keras_reshape_model(37, flat=True), {"c": 37})  # 32*32*37 cannot be rewritten
    with pytest.raises(ValueError, match="TFLite flatbuffer"):
        ModelTemplate(b"\0" * 64, {"c": 37})


def test_no_markers_renders_the_template():
    """A type whose channel counts are all fixed: the render is the template, re-laid out."""
    tpl_bytes = _template("conv_bn_relu_3x3").template_bytes
    tpl = ModelTemplate(tpl_bytes, {})
    rendered = tpl.render({})
    assert describe_model(rendered) == describe_model(tpl_bytes)
    assert _structure(rendered) == _structure(tpl_bytes)
    weights = [v.tolist() for _, v in _const_float_buffers(rendered)]
    assert weights == [v.tolist() for _, v in _const_float_buffers(tpl_bytes)]


def test_render_rejects_bad_channels():
    tpl = _template("conv_bn_relu_3x3")
    with pytest.raises(ValueError, match="exactly"):
        tpl.render({"c_in": 4})
    with pytest.raises(ValueError, match=">= 1"):
        tpl.render({"c_in": 0, "c_out": 4})


def test_choose_markers_avoid_geometry():
    m = choose_markers("conv_bn_relu", input_hw=37, stride=1, kernel=3)
    assert 37 not in m.values() and len(set(m.values())) == 2


def test_render_is_deterministic_per_seed():
    tpl = _template("conv_bn_relu_3x3")
    ch = {"c_in": 24, "c_out": 40}
    a = tpl.render(ch, seed=3)
    assert a == tpl.render(ch, seed=3)
    assert a != tpl.render(ch, seed=4)
    # a fresh instance (e.g. in a worker process, via pickle) renders the same bytes
    assert ModelTemplate(tpl.template_bytes, tpl.markers).render(ch, seed=3) == a
    assert pickle.loads(pickle.dumps(tpl)).render(ch, seed=3) == a
    # weights differ between seeds but shapes do not
    assert describe_model(a) == describe_model(tpl.render(ch, seed=4))


def test_render_is_fast():
    tpl = _template("conv_bn_relu_3x3")
    ch = {"c_in": 128, "c_out": 128}  # the largest cell of a WRN-40-2: 147k weights
    tpl.render(ch)
    n = 50
    t = time.perf_counter()
    for s in range(n):
        tpl.render(ch, seed=s)
    per_model = (time.perf_counter() - t) / n
    assert per_model < 0.01, f"{per_model * 1e3:.2f} ms per render"
