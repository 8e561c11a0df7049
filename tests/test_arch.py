"""The architecture description itself: width validation, width files, block removal in the
layer graph, the thesis width import and the family registry. No PyTorch or TensorFlow here."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from models.arch import INPUT, Arch, Layer, WidthError, WidthGroup, load_widths, widths_from_json, widths_to_json
from models.families import get_arch, mobilenet_v2, wide_resnet
from models.thesis_names import thesis_group, widths_from_thesis

ROOT = Path(__file__).resolve().parents[1]
THESIS_WIDTHS = ROOT / "tables" / "source" / "rpi3b-wrn-40-2-netadapt-pruned-widths.json"


@pytest.fixture(scope="module")
def wrn402() -> Arch:
    return get_arch("wrn-40-2")


@pytest.fixture(scope="module")
def wrn162() -> Arch:
    return get_arch("wrn-16-2")


@pytest.fixture(scope="module")
def mbv2se() -> Arch:
    return get_arch("mbv2-se-tiny")


def active_names(arch: Arch, widths=None) -> list[str]:
    return [a.layer.name for a in arch.active_layers(widths)]


def active_inputs(arch: Arch, widths=None) -> dict[str, tuple[str, ...]]:
    return {a.layer.name: a.inputs for a in arch.active_layers(widths)}


# -- the families ---------------------------------------------------------------------------------
def test_wrn_groups_and_full_widths(wrn402: Arch, wrn162: Arch) -> None:
    full = wrn402.full_widths()
    # k=2: the stem (16) differs from stage 1 (32), so it is its own group
    assert full["stem"] == 16 and full["s1"] == 32 and full["s2"] == 64 and full["s3"] == 128
    assert [g for g in full if g.startswith("s1b")] == [f"s1b{i}" for i in range(6)]
    assert all(full[f"s{x}b{i}"] == 16 * 2 ** x for x in (1, 2, 3) for i in range(6))
    assert "image" not in full and "classes" not in full  # fixed groups are not prunable
    assert {g.name for g in wrn402.groups if g.may_be_zero} == {f"s{x}b{i}" for x in (1, 2, 3) for i in range(6)}
    # k=1: the stem is stage 1's stream itself
    assert "stem" not in get_arch("wrn-16-1").group_by_name
    assert len(wrn162.layers) == 29 and wrn162.layers[-1].op == "head"


def spec(layer: Layer) -> tuple:
    return layer.op, layer.kernel, layer.stride, layer.bn, layer.act, layer.in_size, layer.c_in, layer.c_out


def test_wrn_layer_specs(wrn162: Arch) -> None:
    L = wrn162.layer_by_name
    # k=2: the stem carries the first block's BN-ReLU (its raw output has no other reader)
    assert spec(L["stem"]) == ("conv", 3, 1, True, "relu", 32, "image", "stem")
    assert spec(L["s1b0.conv1"]) == ("conv", 3, 1, True, "relu", 32, "stem", "s1b0")
    assert spec(L["s2b0.bn"]) == ("bn_act", 1, 1, False, "relu", 32, "s1", "s1")
    assert spec(L["s2b0.conv1"]) == ("conv", 3, 2, True, "relu", 32, "s1", "s2b0")
    assert spec(L["s2b0.conv2"]) == ("conv", 3, 1, False, None, 16, "s2b0", "s2")
    assert spec(L["s2b0.shortcut"]) == ("conv", 1, 2, False, None, 32, "s1", "s2")
    assert spec(L["s2b0.add"]) == ("add", 1, 1, False, None, 16, "s2", "s2")
    assert L["s2b0.add"].inputs == ("s2b0.conv2", "s2b0.shortcut")
    assert L["s2b1.add"].inputs == ("s2b1.conv2", "s2b0.add")
    assert spec(L["head.bn"]) == ("bn_act", 1, 1, False, "relu", 8, "s3", "s3")
    assert spec(L["head"])[0::5] == ("head", 8) and L["head"].dropout == 0.0
    # k=1: the stem is a plain conv and the first block has its own pre-activation
    L1 = get_arch("wrn-16-1").layer_by_name
    assert spec(L1["stem"]) == ("conv", 3, 1, False, None, 32, "image", "s1")
    assert L1["s1b0.bn"].inputs == ("stem",) and "s1b0.shortcut" not in L1


def test_mbv2_layer_specs(mbv2se: Arch) -> None:
    L = mbv2se.layer_by_name
    assert spec(L["stem"]) == ("conv", 3, 1, True, "relu6", 32, "image", "stem")
    assert spec(L["s2b0.expand"]) == ("conv", 1, 1, True, "relu6", 32, "s1", "s2b0")
    assert spec(L["s2b0.dw"]) == ("dwconv", 3, 2, True, "relu6", 32, "s2b0", "s2b0")
    assert spec(L["s2b0.se"]) == ("se", 1, 1, False, None, 16, "s2b0", "s2b0.se")
    assert spec(L["s2b0.project"]) == ("conv", 1, 1, True, None, 16, "s2b0", "s2")
    assert L["s2b1.add"].inputs == ("s2b1.project", "s2b0.project")
    assert spec(L["last"]) == ("conv", 1, 1, True, "relu6", 8, "s3", "last")
    assert L["head"].dropout == 0.2 and L["head"].inputs == ("last",)
    assert "s2b0.se" not in get_arch("mbv2-tiny").layer_by_name


def test_mbv2_residual_blocks_are_the_only_zeroable_ones(mbv2se: Arch) -> None:
    zeroable = {g.name for g in mbv2se.groups if g.may_be_zero}
    assert zeroable == {"s2b1", "s3b1"}  # stride-1 blocks whose input is already the stage's stream
    assert mbv2se.group_by_name["s2b1"].full == 24 * 4 and mbv2se.group_by_name["s2b1.se"].full == 48
    with pytest.raises(WidthError, match="'s2b0'"):
        mbv2se.validate({"s2b0": 0})  # a stride-2 block has no identity to fall back on


def test_get_arch_unknown_names() -> None:
    with pytest.raises(ValueError, match="unknown architecture 'resnet-50'") as exc:
        get_arch("resnet-50")
    assert "mbv2-tiny" in str(exc.value) and "wrn-" in str(exc.value)  # lists what is known
    with pytest.raises(ValueError, match="unknown architecture"):
        get_arch("mbv2-huge")
    assert get_arch(" WRN-16-1 ").name == "wrn-16-1"


@pytest.mark.parametrize("name", ["wrn-41-2", "wrn-12-2", "wrn-4-1", "wrn-0-1"])
def test_get_arch_invalid_wrn_depth(name: str) -> None:
    with pytest.raises(ValueError, match="6n\\+4"):
        get_arch(name)


def test_invalid_family_parameters() -> None:
    with pytest.raises(ValueError, match="widening factor"):
        get_arch("wrn-16-0")
    with pytest.raises(ValueError, match="expansion"):
        mobilenet_v2(expansion=1)
    with pytest.raises(ValueError, match="at least one block"):
        mobilenet_v2(blocks=(1, 0, 1))


def test_arch_rejects_malformed_layer_graphs() -> None:
    groups = (WidthGroup("image", 3, prunable=False), WidthGroup("classes", 10, prunable=False), WidthGroup("c", 8))
    conv = Layer("conv", "conv", (INPUT,), "image", "c", 32, 3)
    head = Layer("head", "head", ("conv",), "c", "classes", 32)
    Arch("ok", groups, (conv, head))
    with pytest.raises(ValueError, match="reads 'conv' before it exists"):
        Arch("order", groups, (head, conv))
    with pytest.raises(ValueError, match="unknown group 'd'"):
        Arch("group", groups, (conv, Layer("head", "head", ("conv",), "d", "classes", 32)))
    with pytest.raises(ValueError, match="unknown op"):
        Arch("op", groups, (Layer("conv", "pool", (INPUT,), "image", "c", 32),))
    with pytest.raises(ValueError, match="duplicate layer name"):
        Arch("dup", groups, (conv, Layer("conv", "head", ("conv",), "c", "classes", 32)))
    with pytest.raises(ValueError, match="duplicate width group"):
        Arch("dupgroup", groups + (WidthGroup("c", 4),), (conv, head))


# -- validation -----------------------------------------------------------------------------------
def test_validate_completes_with_full_widths(wrn162: Arch) -> None:
    widths = wrn162.validate({"s2": 40, "s3b1": 0})
    assert widths == {**wrn162.full_widths(), "s2": 40, "s3b1": 0}
    assert wrn162.validate({}) == wrn162.full_widths()
    # fixed groups may be named at their own value; they are not part of the assignment
    assert wrn162.validate({"image": 3, "classes": 10}) == wrn162.full_widths()


def test_validate_accepts_whole_numbers_of_other_types(wrn162: Arch) -> None:
    widths = wrn162.validate({"s1": 8.0, "s2": np.int64(40), "s3": np.int32(100)})
    assert widths["s1"] == 8 and widths["s2"] == 40 and widths["s3"] == 100
    assert all(type(v) is int for v in widths.values())


@pytest.mark.parametrize(
    "widths, group, words",
    [
        ({"s9": 4}, "s9", "unknown width group"),
        ({"S1": 4}, "S1", "unknown width group"),
        ({"s2": 65}, "s2", "above its full width 64"),
        ({"s1b0": 33}, "s1b0", "above its full width 32"),
        ({"s1": 0}, "s1", "may not be pruned to zero"),
        ({"stem": 0}, "stem", "may not be pruned to zero"),
        ({"s2": -1}, "s2", "negative"),
        ({"s1b1": -4}, "s1b1", "negative"),
        ({"s1": 2.5}, "s1", "whole number"),
        ({"s1": "8"}, "s1", "whole number"),
        ({"s1": True}, "s1", "whole number"),
        ({"s1b0": False}, "s1b0", "whole number"),
        ({"s1": None}, "s1", "whole number"),
        ({"s1": np.float32(2.5)}, "s1", "whole number"),
        ({"image": 4}, "image", "fixed at 3"),
        ({"classes": 100}, "classes", "fixed at 10"),
    ],
)
def test_invalid_assignments_name_the_group(wrn162: Arch, widths: dict, group: str, words: str) -> None:
    with pytest.raises(WidthError) as exc:
        wrn162.validate(widths)
    message = str(exc.value)
    assert repr(group) in message, message
    assert words in message, message
    # every entry point that takes widths rejects it the same way
    with pytest.raises(WidthError, match=words):
        wrn162.active_layers(widths)


def test_mbv2_invalid_assignments(mbv2se: Arch) -> None:
    with pytest.raises(WidthError, match="'s2b1.se'.*may not be pruned to zero"):
        mbv2se.validate({"s2b1.se": 0})
    with pytest.raises(WidthError, match="'last'.*above its full width 64"):
        mbv2se.validate({"last": 65})
    assert mbv2se.validate({"s2b1": 0, "s3b1": 0})["s2b1"] == 0


def test_validate_rejects_non_mappings(wrn162: Arch) -> None:
    with pytest.raises(WidthError, match="mapping"):
        wrn162.validate([("s1", 8)])


# -- width files ----------------------------------------------------------------------------------
def test_widths_json_round_trip(wrn162: Arch, tmp_path: Path) -> None:
    widths = wrn162.validate({"stem": 9, "s1": 20, "s1b0": 0, "s2b1": 17, "s3": 99})
    text = widths_to_json(widths)
    assert json.loads(text) == widths
    assert widths_from_json(wrn162, text) == widths
    path = tmp_path / "w.json"
    path.write_text(text)
    assert load_widths(wrn162, path) == widths
    assert load_widths(wrn162, str(path)) == widths
    # numpy integers serialise as plain JSON numbers
    assert json.loads(widths_to_json({"s1": np.int64(20)})) == {"s1": 20}


def test_widths_json_wrapper_and_partial_files(wrn162: Arch, tmp_path: Path) -> None:
    widths = wrn162.validate({"s2": 40, "s3b0": 0})
    wrapped = json.dumps({"widths": {"s2": 40, "s3b0": 0}, "latency_ms": 12.5, "arch": "wrn-16-2"})
    assert widths_from_json(wrn162, wrapped) == widths  # missing groups come back at full width
    path = tmp_path / "run" / "widths.json"
    path.parent.mkdir()
    path.write_text(wrapped)
    assert load_widths(wrn162, path) == widths


def test_widths_json_errors(wrn162: Arch, tmp_path: Path) -> None:
    with pytest.raises(WidthError, match="not valid JSON"):
        widths_from_json(wrn162, "{s1: 3}")
    with pytest.raises(WidthError, match="expected a JSON object"):
        widths_from_json(wrn162, "[1, 2]")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"widths": {"s2": 65}}))
    with pytest.raises(WidthError) as exc:
        load_widths(wrn162, bad)
    assert str(bad) in str(exc.value) and "'s2'" in str(exc.value)  # names the file and the group
    with pytest.raises(WidthError, match="cannot read widths file"):
        load_widths(wrn162, tmp_path / "missing.json")


# -- block removal in the layer graph -------------------------------------------------------------
def test_full_widths_keep_every_layer(wrn162: Arch, mbv2se: Arch) -> None:
    for arch in (wrn162, mbv2se, get_arch("wrn-16-1")):
        assert active_names(arch) == [l.name for l in arch.layers]
        inputs = active_inputs(arch)
        assert all(inputs[l.name] == l.inputs for l in arch.layers)


def test_zero_inner_equal_block_becomes_identity(wrn162: Arch) -> None:
    names = active_names(wrn162, {"s2b1": 0})
    # the convs, the add and the pre-activation BN (whose only reader was conv1) all go
    assert [n for n in names if n.startswith("s2b1")] == []
    assert names == [l.name for l in wrn162.layers if not l.name.startswith("s2b1.")]
    inputs = active_inputs(wrn162, {"s2b1": 0})
    assert inputs["s3b0.bn"] == ("s2b0.add",)  # the next block reads the previous stream
    # the same in stage 1
    inputs = active_inputs(wrn162, {"s1b1": 0})
    assert "s1b1.bn" not in inputs and inputs["s2b0.bn"] == ("s1b0.add",)


def test_zero_inner_block_with_shortcut_keeps_the_shortcut(wrn162: Arch) -> None:
    # s1b0 of WRN-x-2 goes 16 -> 32 channels: its 1x1 shortcut conv is the block's output
    inputs = active_inputs(wrn162, {"s1b0": 0})
    assert [n for n in inputs if n.startswith("s1b0")] == ["s1b0.shortcut"]
    assert inputs["s1b0.shortcut"] == ("stem",)
    assert inputs["s1b1.bn"] == ("s1b0.shortcut",)
    assert inputs["s1b1.add"] == ("s1b1.conv2", "s1b0.shortcut")
    # s2b0 (stride 2, 32 -> 64): its pre-activation BN stays, the shortcut still reads it
    inputs = active_inputs(wrn162, {"s2b0": 0})
    assert [n for n in inputs if n.startswith("s2b0")] == ["s2b0.bn", "s2b0.shortcut"]
    assert inputs["s2b0.shortcut"] == ("s2b0.bn",)
    assert inputs["s2b1.add"] == ("s2b1.conv2", "s2b0.shortcut")


def test_zero_blocks_in_wrn_x_1(wrn162: Arch) -> None:
    arch = get_arch("wrn-16-1")
    inputs = active_inputs(arch, {"s1b0": 0, "s1b1": 0})
    # all of stage 1 is gone: stage 2's pre-activation reads the stem directly
    assert [n for n in inputs if n.startswith("s1")] == []
    assert inputs["s2b0.bn"] == ("stem",)


def test_zero_mbv2_residual_block(mbv2se: Arch) -> None:
    inputs = active_inputs(mbv2se, {"s2b1": 0})
    assert [n for n in inputs if n.startswith("s2b1")] == []  # expand, dw, se, project, add
    assert inputs["s3b0.expand"] == ("s2b0.project",)
    inputs = active_inputs(mbv2se, {"s3b1": 0})
    assert inputs["last"] == ("s3b0.project",)


def test_active_layer_channels(wrn162: Arch, mbv2se: Arch) -> None:
    active = {a.layer.name: a for a in wrn162.active_layers({"stem": 5, "s1": 20, "s1b1": 7})}
    assert (active["stem"].c_in, active["stem"].c_out) == (3, 5)
    assert (active["s1b0.shortcut"].c_in, active["s1b0.shortcut"].c_out) == (5, 20)
    assert (active["s1b1.conv1"].c_in, active["s1b1.conv1"].c_out) == (20, 7)
    assert (active["head"].c_in, active["head"].c_out) == (128, 10)
    active = {a.layer.name: a for a in mbv2se.active_layers({"s2b0": 9, "s2b0.se": 3})}
    assert (active["s2b0.se"].c_in, active["s2b0.se"].c_out) == (9, 3)
    assert (active["s2b0.dw"].c_in, active["s2b0.dw"].c_out) == (9, 9)


def test_removing_the_output_is_an_error() -> None:
    # no assignment of the real families can do it (streams may not be zero), so a toy graph
    groups = (WidthGroup("image", 3, prunable=False), WidthGroup("classes", 10, prunable=False),
              WidthGroup("a", 8, may_be_zero=True), WidthGroup("b", 8, may_be_zero=True), WidthGroup("s", 8))
    chain = Arch("chain", groups, (
        Layer("conv", "conv", (INPUT,), "image", "a", 32, 3),
        Layer("head", "head", ("conv",), "a", "classes", 32),
    ))
    with pytest.raises(WidthError, match="removes the network's output"):
        chain.active_layers({"a": 0})
    both = Arch("both", groups, (
        Layer("ca", "conv", (INPUT,), "image", "a", 32, 3),
        Layer("cb", "conv", (INPUT,), "image", "b", 32, 3),
        Layer("pa", "conv", ("ca",), "a", "s", 32, 1),
        Layer("pb", "conv", ("cb",), "b", "s", 32, 1),
        Layer("add", "add", ("pa", "pb"), "s", "s", 32),
        Layer("head", "head", ("add",), "s", "classes", 32),
    ))
    assert [a.layer.name for a in both.active_layers({"a": 0})] == ["cb", "pb", "head"]
    assert both.active_layers({"a": 0})[-1].inputs == ("pb",)
    assert both.output_name({"b": 0}) == "head"
    with pytest.raises(WidthError, match="removes the network's output"):
        both.active_layers({"a": 0, "b": 0})


def test_plan_depends_only_on_the_zero_set(wrn162: Arch) -> None:
    zero = frozenset({"s2b1"})
    plan = wrn162.plan(zero)
    assert [wrn162.layers[i].name for i, _ in plan] == active_names(wrn162, {"s2b1": 0, "s1": 3})
    assert wrn162.plan(frozenset()) == tuple((i, l.inputs) for i, l in enumerate(wrn162.layers))


def _plan_by_names(arch: Arch, zero: frozenset[str]) -> tuple[tuple[int, tuple[str, ...]], ...]:
    """Which layers run, derived directly on layer names: the oracle for Arch.plan's integer form."""
    alias: dict[str, str | None] = {INPUT: INPUT}
    alive = []
    for i, layer in enumerate(arch.layers):
        srcs = [alias[s] for s in layer.inputs]
        live = tuple(s for s in srcs if s is not None)
        if layer.c_in in zero or layer.c_out in zero or not live:
            alias[layer.name] = None
        elif layer.op == "add" and len(live) == 1:
            alias[layer.name] = live[0]
        elif len(live) != len(srcs):
            raise WidthError(f"{arch.name}: layer {layer.name} lost an input to a zero width")
        else:
            alias[layer.name] = layer.name
            alive.append((i, live))
    output = alias[arch.layers[-1].name]
    if output is None:
        raise WidthError(f"{arch.name}: the width assignment removes the network's output")
    needed, kept = {output}, []
    for i, srcs in reversed(alive):
        if arch.layers[i].name in needed:
            kept.append((i, srcs))
            needed.update(srcs)
    return tuple(reversed(kept))


def _folds_by_names(arch: Arch, plan) -> list[tuple[int, int | None]]:
    """The batch-norms the converter folds, derived directly: a bn_act whose input is a conv
    that nothing else reads (and that is not the output layer) folds into it."""
    from collections import Counter

    from latency.fusion import can_fuse

    readers = Counter(src for _, inputs in plan for src in inputs)
    index = {arch.layers[i].name: i for i, _ in plan}
    folded = {}
    for i, inputs in plan:
        if arch.layers[i].op == "bn_act" and inputs[0] in index:
            j = index[inputs[0]]
            if readers[inputs[0]] == 1 and j != len(arch.layers) - 1 and can_fuse(arch.layers[j], arch.layers[i]):
                folded[j] = i
    return [(i, folded.get(i)) for i, _ in plan if i not in folded.values()]


@pytest.mark.parametrize("name", ["wrn-10-1", "wrn-40-2", "mbv2-cifar", "mbv2-se-tiny"])
def test_plan_matches_a_derivation_by_names(name: str) -> None:
    """Arch.plan (from plan_positions) and latency.fusion's runtime plan equal the direct
    derivations above, errors included, for removable groups and for any groups."""
    import random

    from latency.fusion import RuntimePlanner, runtime_plan

    arch = get_arch(name)
    names = [g.name for g in arch.groups]
    droppable = [g.name for g in arch.groups if g.may_be_zero]
    rng = random.Random(name)
    sets = [frozenset()] + [frozenset(rng.sample(droppable, rng.randint(1, len(droppable)))) for _ in range(150)]
    sets += [frozenset(rng.sample(names, rng.randint(1, len(names)))) for _ in range(50)] + [frozenset(names)]
    planner = RuntimePlanner(arch)
    folds = errors = 0
    for zero in sets:
        try:
            expected = _plan_by_names(arch, zero)
        except WidthError as exc:
            errors += 1
            for call in (lambda: arch.plan(zero), lambda: runtime_plan(arch, zero),
                         lambda: planner(arch.zero_flags(zero))):
                with pytest.raises(WidthError) as got:
                    call()
                assert str(got.value) == str(exc)
            continue
        assert arch.plan(zero) == expected
        steps = _folds_by_names(arch, expected)
        assert runtime_plan(arch, zero) == steps == planner(arch.zero_flags(zero))
        folds += sum(f is not None for _, f in steps)
    assert errors > 0
    if name.startswith("wrn"):
        assert folds > 0  # the sets tried include folded batch-norms


def test_layers_of_group(wrn162: Arch) -> None:
    assert [l.name for l in wrn162.layers_of_group("s1b1")] == ["s1b1.conv1", "s1b1.conv2"]
    assert [l.name for l in wrn162.layers_of_group("stem")] == ["stem", "s1b0.conv1", "s1b0.shortcut"]
    s1 = [l.name for l in wrn162.layers_of_group("s1")]
    assert s1 == ["s1b0.conv2", "s1b0.shortcut", "s1b0.add", "s1b1.bn", "s1b1.conv1", "s1b1.conv2", "s1b1.add",
                  "s2b0.bn", "s2b0.conv1", "s2b0.shortcut"]


def test_describe_lists_groups_and_layers(wrn162: Arch) -> None:
    text = wrn162.describe()
    assert text.splitlines()[0] == "wrn-16-2: 29 layers, 10 prunable width groups"
    assert any(line.split()[:3] == ["s1b0", "32", "may"] for line in text.splitlines())
    assert any(line.split()[:2] == ["s2b0.conv1", "conv"] and "s1->s2b0" in line for line in text.splitlines())


# -- the thesis widths ----------------------------------------------------------------------------
def test_thesis_widths_import(wrn402: Arch) -> None:
    per_layer = json.loads(THESIS_WIDTHS.read_text())
    widths = widths_from_thesis(wrn402, per_layer)
    expected = {**wrn402.full_widths(), "stem": 16, "s1": 25, "s2": 46, "s3": 97}
    assert widths == expected
    assert all(widths[f"s{x}b{i}"] == 16 * 2 ** x for x in (1, 2, 3) for i in range(6))  # inner widths full
    assert wrn402.validate(widths) == widths
    active = wrn402.active_layers(widths)
    assert len(active) == len(wrn402.layers)  # nothing removed
    channels = {a.layer.name: (a.c_in, a.c_out) for a in active}
    assert channels["s1b0.shortcut"] == (16, 25) and channels["s2b0.shortcut"] == (25, 46)
    assert channels["s3b5.conv2"] == (128, 97) and channels["head"] == (97, 10)


def test_thesis_group_names() -> None:
    assert thesis_group("Conv_0") == "stem"
    assert thesis_group("Skip_2") == "s2"
    assert thesis_group("Conv_3_5_1") == "s3b5"
    assert thesis_group("Conv_3_5_2") == "s3"
    for bad in ("Conv_1_0_3", "conv_0", "Skip_", "Conv_1_0", "Dense"):
        with pytest.raises(WidthError, match="not a thesis layer name"):
            thesis_group(bad)


def test_thesis_conflicting_layers_sharing_a_group(wrn402: Arch) -> None:
    with pytest.raises(WidthError) as exc:
        widths_from_thesis(wrn402, {"Skip_1": 25, "Conv_1_0_2": 25, "Conv_1_3_2": 24})
    message = str(exc.value)
    assert "'s1'" in message and "Conv_1_3_2" in message and "Skip_1" in message
    with pytest.raises(WidthError, match="'s2'"):
        widths_from_thesis(wrn402, {"Conv_2_0_2": 46, "Skip_2": 47})
    # invalid widths are still rejected after the mapping
    with pytest.raises(WidthError, match="'s3'.*above its full width"):
        widths_from_thesis(wrn402, {"Skip_3": 129})
    with pytest.raises(WidthError, match="'stem'.*which wrn-16-1 does not have"):
        widths_from_thesis(get_arch("wrn-16-1"), {"Conv_0": 16})
    with pytest.raises(WidthError, match="'s4b0'.*does not have"):
        widths_from_thesis(wrn402, {"Conv_4_0_1": 16})
