"""PyTorch and Keras/TFLite models built from one `Arch`: parameter counts, output parity,
weight carry-over, block removal in the built network, and the ops the TFLite converter emits."""
from __future__ import annotations

import contextlib
import copy
import io
from collections import Counter

import numpy as np
import pytest
import torch

from models.arch import Arch, WidthError
from models.families import get_arch
from models.torch_builder import ArchNet, build_torch, carry_over, count_parameters, torch_key

TOL = 1e-4


def randomise(net: ArchNet, seed: int = 0) -> ArchNet:
    """Random BN affine parameters and dense biases, then BN statistics measured on random images
    (so BN is far from an identity, yet the activations stay in a range where the output depends
    on the input); eval mode."""
    g = torch.Generator().manual_seed(seed)
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.2)
                m.reset_running_stats()
                m.momentum = None  # cumulative average over the calibration batch
            elif isinstance(m, torch.nn.Linear):
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
        net.train()
        net(torch.randn(16, 3, net.arch.input_size, net.arch.input_size, generator=g))
    for m in bns:
        m.momentum = 0.1
        assert m.running_var.min() > 0 and not torch.allclose(m.running_var, torch.ones_like(m.running_var))
    return net.eval()


def images(arch: Arch, batch: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, 3, arch.input_size, arch.input_size)).astype(np.float32)


def run_torch(net: ArchNet, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return net(torch.from_numpy(x)).numpy()


# -- parameter counts -----------------------------------------------------------------------------
@pytest.mark.parametrize("name, expected", [("wrn-40-2", 2_243_546), ("wrn-16-1", 175_066), ("wrn-28-10", 36_479_194)])
def test_full_width_parameter_counts(name: str, expected: int) -> None:
    assert count_parameters(build_torch(get_arch(name))) == expected


def test_pruned_parameter_count_follows_the_widths() -> None:
    arch = get_arch("wrn-16-1")
    full = count_parameters(build_torch(arch))
    # s3b1 inner 64 -> 0 removes two 3x3 64x64 convs, the folded BN (2x64) and the pre-activation BN (2x64)
    assert count_parameters(build_torch(arch, {"s3b1": 0})) == full - 2 * 9 * 64 * 64 - 2 * 64 - 2 * 64
    # s3b1 inner 64 -> 10: conv1 64->10, BN 10, conv2 10->64
    assert count_parameters(build_torch(arch, {"s3b1": 10})) == full - 2 * 9 * 64 * 54 - 2 * 54


# -- PyTorch / Keras / TFLite parity --------------------------------------------------------------
PARITY_CASES = {
    "wrn-16-2-full": ("wrn-16-2", {}),
    # s1b0: a block with a shortcut conv pruned to zero; s2b1: an equal-width block pruned to zero
    "wrn-16-2-pruned": ("wrn-16-2", {"stem": 11, "s1": 20, "s1b0": 0, "s1b1": 13, "s2": 40, "s2b0": 30, "s2b1": 0,
                                     "s3": 100, "s3b1": 77}),
    "mbv2-tiny-full": ("mbv2-tiny", {}),
    "mbv2-tiny-pruned": ("mbv2-tiny", {"stem": 5, "s1": 6, "s1b0": 10, "s2": 9, "s2b1": 0, "s3b0": 20, "s3b1": 17,
                                       "last": 19}),
    "mbv2-se-tiny-full": ("mbv2-se-tiny", {}),
    "mbv2-se-tiny-pruned": ("mbv2-se-tiny", {"stem": 6, "s1b0": 11, "s1b0.se": 3, "s2": 10, "s2b1": 0, "s3b0.se": 5,
                                             "s3b1": 21, "s3b1.se": 1, "last": 20}),
}


@pytest.fixture(scope="module", params=list(PARITY_CASES))
def case(request):
    name, widths = PARITY_CASES[request.param]
    arch = get_arch(name)
    net = randomise(build_torch(arch, widths), seed=len(request.param))
    x = images(arch)
    return {"id": request.param, "arch": arch, "widths": widths, "net": net, "x": x, "y": run_torch(net, x)}


@pytest.fixture(scope="module")
def tflite_model(case):
    from models.keras_builder import to_tflite

    with contextlib.redirect_stdout(io.StringIO()):  # the converter's export chatter
        return to_tflite(case["arch"], case["widths"], case["net"])


def interpreter(flatbuffer: bytes):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    # the builtin kernels only: no XNNPACK delegate node in the op list
    it = Interpreter(model_content=flatbuffer,
                     experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    it.allocate_tensors()
    return it


def test_case_widths_are_what_the_case_says(case) -> None:
    arch, net = case["arch"], case["net"]
    assert net.widths == arch.validate(case["widths"])
    if case["widths"]:
        assert 0 in net.widths.values()  # every pruned case removes a block
        assert len(net.active) < len(arch.layers)


def test_keras_matches_torch(case) -> None:
    from models.keras_builder import keras_from_torch

    model = keras_from_torch(case["net"])
    nhwc = case["x"].transpose(0, 2, 3, 1)
    y_keras = np.asarray(model(nhwc, training=False))
    assert y_keras.shape == case["y"].shape == (2, 10)
    np.testing.assert_allclose(y_keras, case["y"], atol=TOL, rtol=0)
    # the outputs are not trivially close: the two images give different logits
    assert np.abs(case["y"][0] - case["y"][1]).max() > 100 * TOL
    # the Keras model has exactly the active layers of the architecture
    names = {l.name for l in model.layers}
    assert {a.layer.name for a in case["net"].active if a.layer.op in ("conv", "dwconv", "add")} <= names
    removed = {l.name for l in case["arch"].layers} - {a.layer.name for a in case["net"].active}
    assert bool(removed) == bool(case["widths"])
    assert not [n for n in names for r in removed if n == r or n.startswith(r + ".")]  # e.g. s2b1.bn.bn


def test_tflite_matches_torch(case, tflite_model) -> None:
    it = interpreter(tflite_model)
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    assert list(inp["shape"]) == [1, 32, 32, 3] and list(out["shape"]) == [1, 10]
    for i in range(2):
        it.set_tensor(inp["index"], np.ascontiguousarray(case["x"][i:i + 1].transpose(0, 2, 3, 1)))
        it.invoke()
        np.testing.assert_allclose(it.get_tensor(out["index"])[0], case["y"][i], atol=TOL, rtol=0)


def test_to_tflite_rejects_a_mismatched_network(case) -> None:
    from models.keras_builder import to_tflite

    arch, net = case["arch"], case["net"]
    other = {"s2": 5} if arch.full_widths()["s2"] != 5 else {"s2": 4}
    with pytest.raises(ValueError, match="does not match"):
        to_tflite(arch, other, net)
    if case["widths"]:
        with pytest.raises(ValueError, match="does not match"):
            to_tflite(arch, {}, net)  # {} means full widths, not "whatever the network has"
    with pytest.raises(ValueError, match="does not match"):
        to_tflite(get_arch("wrn-16-1"), None, net)


# -- the ops the converter emits ------------------------------------------------------------------
# What the TFLite converter (TensorFlow 2.21, float32) emits for each architecture layer, with
# the activation fused into the op (None: the op has no fused activation option):
#   conv   -> CONV_2D(act): the folded BN is in the weights and bias
#   dwconv -> DEPTHWISE_CONV_2D(act)
#   bn_act -> MUL, ADD(RELU): an unfoldable BN is a scale and a shift, the ReLU fuses into the ADD
#   add    -> ADD
#   se     -> MEAN, FULLY_CONNECTED(RELU), FULLY_CONNECTED, LOGISTIC, MUL
#   head   -> MEAN, FULLY_CONNECTED (dropout is gone at inference)
# Observed for wrn-16-2 at full width (36 ops):
#   CONV_2D(stem) CONV_2D CONV_2D CONV_2D(shortcut) ADD | MUL ADD CONV_2D CONV_2D ADD |
#   MUL ADD CONV_2D CONV_2D CONV_2D ADD | MUL ADD CONV_2D CONV_2D ADD | (stage 3 alike) |
#   MUL ADD (head.bn) MEAN FULLY_CONNECTED
# and for mbv2-se-tiny (46 ops): CONV_2D(stem), then per block CONV_2D DEPTHWISE_CONV_2D MEAN
#   FULLY_CONNECTED FULLY_CONNECTED LOGISTIC MUL CONV_2D [+ ADD for s2b1 and s3b1], CONV_2D(last),
#   MEAN FULLY_CONNECTED.
# Caveat: with the converter's constant folding, a BN whose shift is exactly zero (fresh Keras
# weights: beta = moving mean = 0) loses its ADD and a bn_act becomes a lone MUL(RELU); that is
# why `to_tflite` without a network gives the Keras model trained-like BN values first.
EMITTED = {
    "conv": lambda l: [("CONV_2D", ACT[l.act])],
    "dwconv": lambda l: [("DEPTHWISE_CONV_2D", ACT[l.act])],
    "bn_act": lambda l: [("MUL", "NONE"), ("ADD", ACT[l.act])],
    "add": lambda l: [("ADD", "NONE")],
    "se": lambda l: [("MEAN", None), ("FULLY_CONNECTED", "RELU"), ("FULLY_CONNECTED", "NONE"), ("LOGISTIC", None),
                     ("MUL", "NONE")],
    "head": lambda l: [("MEAN", None), ("FULLY_CONNECTED", "NONE")],
}
ACT = {None: "NONE", "relu": "RELU", "relu6": "RELU6"}


def expected_ops(arch: Arch, widths) -> list[tuple[str, str | None]]:
    return [op for a in arch.active_layers(widths) for op in EMITTED[a.layer.op](a.layer)]


def emitted_ops(flatbuffer: bytes) -> list[tuple[str, str | None]]:
    """(op name, fused activation) of every operator, in execution order."""
    from ai_edge_litert import schema_py_generated as schema

    op_names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    act_names = {v: k for k, v in vars(schema.ActivationFunctionType).items() if not k.startswith("_")}
    model = schema.ModelT.InitFromPackedBuf(bytearray(flatbuffer), 0)
    assert len(model.subgraphs) == 1
    ops = []
    for op in model.subgraphs[0].operators:
        code = model.operatorCodes[op.opcodeIndex]
        act = getattr(op.builtinOptions, "fusedActivationFunction", None)
        ops.append((op_names[max(code.builtinCode, code.deprecatedBuiltinCode)], act_names.get(act)))
    return ops


def test_tflite_ops_are_the_arch_layers(case, tflite_model) -> None:
    arch, widths = case["arch"], case["widths"]
    active = arch.active_layers(widths)
    ops = [d["op_name"] for d in interpreter(tflite_model)._get_ops_details()]
    count = {op: ops.count(op) for op in set(ops)}
    n = {op: sum(a.layer.op == op for a in active) for op in ("conv", "dwconv", "bn_act", "add", "se", "head")}
    assert n["conv"] > 0 and n["add"] > 0 and n["head"] == 1
    assert count["CONV_2D"] == n["conv"]  # one per active conv layer: BN and activation fold into it
    assert count.get("DEPTHWISE_CONV_2D", 0) == n["dwconv"]
    assert count["ADD"] == n["add"] + n["bn_act"]  # residual adds, and the shift of every unfoldable BN
    assert count.get("MUL", 0) == n["bn_act"] + n["se"]
    assert count["MEAN"] == n["se"] + n["head"]
    assert count["FULLY_CONNECTED"] == 2 * n["se"] + n["head"]
    assert count.get("LOGISTIC", 0) == n["se"]
    assert sum(count.values()) == len(expected_ops(arch, widths))  # nothing else (no RELU, PAD, RESHAPE)
    # in order, with the activations fused where the arch says
    assert emitted_ops(tflite_model) == expected_ops(arch, widths)
    assert [op for op, _ in emitted_ops(tflite_model)] == ops


def test_tflite_of_untrained_network_keeps_bn_add() -> None:
    from models.keras_builder import to_tflite

    arch = get_arch("wrn-16-1")
    widths = {"s2b1": 0}
    with contextlib.redirect_stdout(io.StringIO()):
        flatbuffer = to_tflite(arch, widths)
    ops = emitted_ops(flatbuffer)
    assert ops == expected_ops(arch, widths)
    n_bn = sum(a.layer.op == "bn_act" for a in arch.active_layers(widths))
    assert ops.count(("ADD", "RELU")) == n_bn == 6
    it = interpreter(flatbuffer)
    it.set_tensor(it.get_input_details()[0]["index"], images(arch, 1).transpose(0, 2, 3, 1).copy())
    it.invoke()
    assert np.isfinite(it.get_tensor(it.get_output_details()[0]["index"])).all()


@pytest.mark.parametrize("name", ["wrn-10-1", "mbv2-se-tiny"])
def test_timed_conversion_is_the_deployed_one_without_its_signature(name: str) -> None:
    """Timed models are converted from a frozen graph, deployed ones through Keras's SavedModel:
    the same operators, tensors and outputs; only the deployed one has a serving signature."""
    from models.keras_builder import to_tflite

    arch = get_arch(name)
    net = randomise(build_torch(arch), seed=2)
    with contextlib.redirect_stdout(io.StringIO()):
        timed, deployed = to_tflite(arch, None, net), to_tflite(arch, None, net, signature=True)
    assert emitted_ops(timed) == emitted_ops(deployed) == expected_ops(arch, arch.full_widths())
    x = images(arch, 1).transpose(0, 2, 3, 1).copy()
    outputs, shapes = [], []
    for flatbuffer in (timed, deployed):
        it = interpreter(flatbuffer)
        shapes.append(sorted(tuple(d["shape"]) for d in it.get_tensor_details()))
        it.set_tensor(it.get_input_details()[0]["index"], x)
        it.invoke()
        outputs.append(it.get_tensor(it.get_output_details()[0]["index"]))
    assert shapes[0] == shapes[1]
    np.testing.assert_allclose(outputs[0], outputs[1], rtol=1e-5, atol=1e-6)
    assert interpreter(deployed).get_signature_list() and not interpreter(timed).get_signature_list()


def test_tflite_prefixes_cut_the_network_after_each_named_layer() -> None:
    """Prefixes (tools.in_network_cost) hold the whole network's ops up to their last layer: the
    last prefix is the whole network, op for op."""
    from models.keras_builder import to_tflite, to_tflite_prefixes

    arch = get_arch("wrn-10-1")
    widths = {"s2b0": 0}
    active = arch.active_layers(widths)
    ends = [a.layer.name for a in active if a.layer.op == "add"] + [active[-1].layer.name]
    with contextlib.redirect_stdout(io.StringIO()):
        prefixes = to_tflite_prefixes(arch, widths, ends)
        whole = emitted_ops(to_tflite(arch, widths))
    assert list(prefixes) == ends
    cut = [emitted_ops(prefixes[e]) for e in ends]
    assert cut[-1] == whole
    for shorter, longer in zip(cut, cut[1:]):
        assert len(shorter) < len(longer) and not Counter(shorter) - Counter(longer)
    assert cut[0][-1][0] == "ADD"  # the first prefix ends with the first block's residual addition


# -- block removal in the built network -----------------------------------------------------------
@pytest.fixture(scope="module")
def wrn162_net() -> ArchNet:
    return randomise(build_torch(get_arch("wrn-16-2")), seed=1)


@pytest.fixture(scope="module")
def mbv2se_net() -> ArchNet:
    return randomise(build_torch(get_arch("mbv2-se-tiny")), seed=2)


def with_block_removed(net: ArchNet, block: str) -> ArchNet:
    """The network with `block`'s inner width 0, holding the source's weights (by layer name)."""
    pruned = build_torch(net.arch, {block: 0})
    source = net.state_dict()
    state = pruned.state_dict()
    assert set(state) <= set(source)
    pruned.load_state_dict({k: source[k] for k in state})
    return pruned.eval()


@pytest.mark.parametrize("block, branch_end", [("s1b0", "s1b0.conv2"), ("s2b1", "s2b1.conv2"), ("s3b0", "s3b0.conv2")])
def test_wrn_zero_block_equals_identity_residual(wrn162_net: ArchNet, block: str, branch_end: str) -> None:
    pruned = with_block_removed(wrn162_net, block)
    # reference: the full network with the block's residual branch contributing nothing, i.e. its
    # add passing the other input (the identity or the shortcut conv) through unchanged
    reference = copy.deepcopy(wrn162_net)
    with torch.no_grad():
        reference.unit(branch_end).conv.weight.zero_()
    x = images(wrn162_net.arch, seed=3)
    y = run_torch(pruned, x)
    np.testing.assert_allclose(y, run_torch(reference, x), atol=1e-5, rtol=0)
    assert np.abs(y - run_torch(wrn162_net, x)).max() > 1e-3  # removing the block does change the output
    # the block's modules are gone from the built network
    assert torch_key(f"{block}.conv1") not in pruned.units and torch_key(f"{block}.conv2") not in pruned.units
    assert torch_key(f"{block}.add") not in pruned.units


def test_wrn_zero_block_modules(wrn162_net: ArchNet) -> None:
    units = with_block_removed(wrn162_net, "s2b1").units
    # equal-width block: nothing of it is left, its pre-activation BN included
    assert not [k for k in units if k.startswith("s2b1_")]
    assert "s2b0_add" in units and "s3b0_bn" in units
    # first block of a stage of WRN-x-2 (a shortcut conv): the shortcut stays
    units = with_block_removed(wrn162_net, "s1b0").units
    assert [k for k in units if k.startswith("s1b0_")] == ["s1b0_shortcut"]
    units = with_block_removed(wrn162_net, "s2b0").units
    assert [k for k in units if k.startswith("s2b0_")] == ["s2b0_bn", "s2b0_shortcut"]
    assert list(units)[:3] == ["stem", "s1b0_conv1", "s1b0_conv2"]


def test_mbv2_zero_block_equals_identity_residual(mbv2se_net: ArchNet) -> None:
    pruned = with_block_removed(mbv2se_net, "s2b1")
    assert not [k for k in pruned.units if k.startswith("s2b1_")]
    reference = copy.deepcopy(mbv2se_net)
    with torch.no_grad():  # the projection's BN outputs zeros: the add passes its other input through
        bn = reference.unit("s2b1.project").bn
        bn.weight.zero_()
        bn.bias.zero_()
    x = images(mbv2se_net.arch, seed=4)
    y = run_torch(pruned, x)
    np.testing.assert_allclose(y, run_torch(reference, x), atol=1e-5, rtol=0)
    assert np.abs(y - run_torch(mbv2se_net, x)).max() > 1e-3


# -- carry-over -----------------------------------------------------------------------------------
def subset(n_full: int, n: int, seed: int) -> torch.Tensor:
    """n distinct indices in [0, n_full), in a shuffled (not sorted) order."""
    idx = torch.randperm(n_full, generator=torch.Generator().manual_seed(seed))[:n]
    assert n < 2 or not bool((idx[1:] > idx[:-1]).all())
    return idx


def rows(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return t.index_select(0, idx)


def cols(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return t.index_select(1, idx)


BN = ("weight", "bias", "running_mean", "running_var")


def check_carry_over(src: ArchNet, new: ArchNet, expected: dict[str, dict[str, torch.Tensor]], gone: set[str]) -> None:
    """`expected[layer][param]` for the layers the pruned groups touch; every other tensor of
    every other layer must equal the source's."""
    new_units, src_units = dict(new.units.items()), dict(src.units.items())
    assert not gone & {torch_key(n) for n in expected}
    assert set(new_units) == set(src_units) - {torch_key(n) for n in gone}
    for key, unit in new_units.items():
        layer = unit.layer.name
        state, src_state = unit.state_dict(), src_units[key].state_dict()
        for pname, value in state.items():
            want = expected.get(layer, {}).get(pname, src_state[pname])
            assert value.shape == want.shape, (layer, pname)
            assert torch.equal(value, want), (layer, pname)
        assert set(expected.get(layer, {})) <= set(state), layer


def test_carry_over_wrn(wrn162_net: ArchNet) -> None:
    src = {k: u.state_dict() for k, u in wrn162_net.units.items()}

    def s(layer: str, p: str) -> torch.Tensor:
        return src[torch_key(layer)][p]

    k1, kb = subset(32, 20, 0), subset(32, 10, 1)
    new = carry_over(wrn162_net, {"s1": 20, "s1b1": 10, "s2b1": 0}, {"s1": k1, "s1b1": kb.tolist(), "s2b1": []})
    w = "conv.weight"
    expected = {
        "s1b0.conv2": {w: rows(s("s1b0.conv2", w), k1)},
        "s1b0.shortcut": {w: rows(s("s1b0.shortcut", w), k1)},
        "s1b1.bn": {f"bn.{p}": rows(s("s1b1.bn", f"bn.{p}"), k1) for p in BN},
        "s1b1.conv1": {w: cols(rows(s("s1b1.conv1", w), kb), k1),
                       **{f"bn.{p}": rows(s("s1b1.conv1", f"bn.{p}"), kb) for p in BN}},
        "s1b1.conv2": {w: cols(rows(s("s1b1.conv2", w), k1), kb)},
        "s2b0.bn": {f"bn.{p}": rows(s("s2b0.bn", f"bn.{p}"), k1) for p in BN},
        "s2b0.conv1": {w: cols(s("s2b0.conv1", w), k1)},
        "s2b0.shortcut": {w: cols(s("s2b0.shortcut", w), k1)},
    }
    # the expectations cover every layer with parameters that the pruned groups touch
    arch = wrn162_net.arch
    touched = {l.name for g in ("s1", "s1b1") for l in arch.layers_of_group(g) if l.op != "add"}
    assert touched == set(expected)
    check_carry_over(wrn162_net, new, expected, {"s2b1.bn", "s2b1.conv1", "s2b1.conv2", "s2b1.add"})
    assert new.widths == arch.validate({"s1": 20, "s1b1": 10, "s2b1": 0})
    y = run_torch(new.eval(), images(arch))
    assert y.shape == (2, 10) and np.isfinite(y).all()


def test_carry_over_mbv2_se(mbv2se_net: ArchNet) -> None:
    src = {k: u.state_dict() for k, u in mbv2se_net.units.items()}

    def s(layer: str, p: str) -> torch.Tensor:
        return src[torch_key(layer)][p]

    ks, ke, kh, kl = subset(12, 7, 2), subset(16, 9, 3), subset(8, 3, 4), subset(24, 15, 5)
    widths = {"s2": 7, "s2b0": 9, "s2b0.se": 3, "last": 15, "s3b1": 0}
    new = carry_over(mbv2se_net, widths, {"s2": ks, "s2b0": ke, "s2b0.se": kh, "last": kl, "s3b1": []})
    w = "conv.weight"

    def bn(layer: str, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        return {f"bn.{p}": rows(s(layer, f"bn.{p}"), idx) for p in BN}

    expected = {
        "s2b0.expand": {w: rows(s("s2b0.expand", w), ke), **bn("s2b0.expand", ke)},
        "s2b0.dw": {w: rows(s("s2b0.dw", w), ke), **bn("s2b0.dw", ke)},
        "s2b0.se": {"fc1.weight": cols(rows(s("s2b0.se", "fc1.weight"), kh), ke),
                    "fc1.bias": rows(s("s2b0.se", "fc1.bias"), kh),
                    "fc2.weight": cols(rows(s("s2b0.se", "fc2.weight"), ke), kh),
                    "fc2.bias": rows(s("s2b0.se", "fc2.bias"), ke)},
        "s2b0.project": {w: cols(rows(s("s2b0.project", w), ks), ke), **bn("s2b0.project", ks)},
        "s2b1.expand": {w: cols(s("s2b1.expand", w), ks)},
        "s2b1.project": {w: rows(s("s2b1.project", w), ks), **bn("s2b1.project", ks)},
        "s3b0.expand": {w: cols(s("s3b0.expand", w), ks)},
        "last": {w: rows(s("last", w), kl), **bn("last", kl)},
        "head": {"fc.weight": cols(s("head", "fc.weight"), kl)},
    }
    arch = mbv2se_net.arch
    touched = {l.name for g in ("s2", "s2b0", "s2b0.se", "last") for l in arch.layers_of_group(g) if l.op != "add"}
    assert touched == set(expected)
    gone = {"s3b1.expand", "s3b1.dw", "s3b1.se", "s3b1.project", "s3b1.add"}
    check_carry_over(mbv2se_net, new, expected, gone)
    y = run_torch(new.eval(), images(arch))
    assert y.shape == (2, 10) and np.isfinite(y).all()


@pytest.mark.parametrize(
    "net_fixture, groups",
    [("wrn162_net", ("stem", "s1", "s1b0", "s2", "s2b1", "s3", "s3b0")),
     ("mbv2se_net", ("stem", "s1", "s2", "s2b0", "s2b0.se", "s2b1", "s3b1", "s3b1.se", "last"))],
)
def test_carry_over_permutation_keeps_the_function(request, net_fixture: str, groups: tuple[str, ...]) -> None:
    """Permuting a group's channels consistently in every layer it touches is the same network:
    any layer that carry-over missed (or indexed on the wrong axis) changes the output."""
    net = request.getfixturevalue(net_fixture)
    full = net.arch.full_widths()
    keep = {g: torch.randperm(full[g], generator=torch.Generator().manual_seed(i)) for i, g in enumerate(groups)}
    permuted = carry_over(net, net.widths, keep).eval()
    x = images(net.arch, seed=5)
    np.testing.assert_allclose(run_torch(permuted, x), run_torch(net, x), atol=1e-5, rtol=0)
    # and the permutation did move the weights: every tensor is the source's, indexed on each
    # permuted axis (checked here independently of the output)
    moved = 0
    for key, unit in permuted.units.items():
        src_state = net.units[key].state_dict()
        for pname, axes in unit.param_axes().items():
            want = src_state[pname]
            for axis, g in enumerate(axes):
                if g in keep:
                    want = want.index_select(axis, keep[g])
            got = unit.state_dict()[pname]
            assert torch.equal(got, want), (key, pname)
            moved += not torch.equal(got, src_state[pname])
    assert moved > 10


def test_carry_over_from_a_pruned_network(wrn162_net: ArchNet) -> None:
    k1 = subset(32, 24, 6)
    mid = carry_over(wrn162_net, {"s1": 24, "s2b1": 0}, {"s1": k1, "s2b1": []})
    k2 = subset(24, 16, 7)
    small = carry_over(mid, {"s1": 16, "s2b1": 0}, {"s1": k2})
    # two steps keep the composed indices of the original network
    w = small.unit("s1b1.conv1").conv.weight
    assert torch.equal(w, wrn162_net.unit("s1b1.conv1").conv.weight.index_select(1, k1[k2]))


def test_group_tensors(wrn162_net: ArchNet) -> None:
    found = {(name, axis) for name, axis, _ in wrn162_net.group_tensors("s1b1")}
    assert found == {("s1b1_conv1.conv.weight", 0), ("s1b1_conv2.conv.weight", 1)} | {
        (f"s1b1_conv1.bn.{p}", 0) for p in BN}
    for name, axis, tensor in wrn162_net.group_tensors("s2"):
        assert tensor.shape[axis] == 64, name


@pytest.mark.parametrize(
    "widths, keep, match",
    [
        ({"s1": 20}, {"s1": list(range(19))}, "keep\\['s1'\\] has 19 indices but the new width is 20"),
        ({"s1": 2}, {"s1": [0, 32]}, "keep\\['s1'\\] must be distinct indices in \\[0, 32\\)"),
        ({"s1": 2}, {"s1": [-1, 3]}, "keep\\['s1'\\] must be distinct"),
        ({"s1": 3}, {"s1": [4, 5, 4]}, "keep\\['s1'\\] must be distinct"),
        ({"s1": 20}, {}, "group 's1' changes from 32 to 20 channels but keep\\['s1'\\] is not given"),
        ({"s2b1": 0}, {"s1": list(range(32))}, "group 's2b1' changes"),
        ({"s1b0": 32}, {"s1b0": [], "s1": list(range(32))}, "keep\\['s1b0'\\] has 0 indices"),
    ],
)
def test_carry_over_errors(wrn162_net: ArchNet, widths, keep, match) -> None:
    with pytest.raises(ValueError, match=match):
        carry_over(wrn162_net, widths, keep)


def test_carry_over_invalid_widths_and_missing_source_layers(wrn162_net: ArchNet) -> None:
    with pytest.raises(WidthError, match="'s1'"):
        carry_over(wrn162_net, {"s1": 0}, {"s1": []})
    pruned = carry_over(wrn162_net, {"s2b1": 0}, {"s2b1": []})
    with pytest.raises(ValueError):  # a removed block cannot be brought back
        carry_over(pruned, {"s2b1": 4}, {"s2b1": [0, 1, 2, 3]})
