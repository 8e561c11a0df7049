"""Cell models rendered from templates are the models the converter would have produced."""
from __future__ import annotations

import pytest

from latency.generate import CellModels, convert_cell
from latency.layer_types import network_layer_types
from latency.op_map import OpMappingError, check_network_ops
from latency.tflite_schema import describe_model
from models.families import get_arch


@pytest.fixture(scope="module")
def generator():
    return CellModels(network_layer_types([get_arch("wrn-10-2"), get_arch("mbv2-se-tiny")]))


def sample_cells(t):
    out = t.out_lo if t.two_axes else 0
    out_hi = t.out_hi if t.two_axes else 0
    mid_in, mid_out = (t.in_lo + t.in_hi) // 2, (out + out_hi) // 2
    return {(t.in_lo, out), (t.in_hi, out_hi), (mid_in, mid_out)}


def test_rendered_cells_equal_converter_output(generator):
    checked = 0
    for key, t in generator.types.items():
        for c_in, c_out in sample_cells(t):
            rendered = describe_model(generator.render(key, c_in, c_out))
            assert rendered == describe_model(convert_cell(t, c_in, c_out)), (key, c_in, c_out)
            checked += 1
    assert checked >= 3 * len(generator.types) - 10


def test_render_rejects_cells_outside_the_type(generator):
    key = "conv-k3-s1-m32-bn-relu"
    t = generator.types[key]
    with pytest.raises(ValueError, match="outside layer type"):
        generator.render(key, t.in_hi + 1, 1)


def test_whole_network_ops_map_to_layer_types(generator):
    for name in ("wrn-10-2", "mbv2-se-tiny"):
        ops = check_network_ops(get_arch(name), generator)
        assert ops["CONV_2D"] > 0
    ops = check_network_ops(get_arch("wrn-10-2"), generator, {"s2b0": 0})
    assert ops["CONV_2D"] == sum(1 for a in get_arch("wrn-10-2").active_layers({"s2b0": 0}) if a.layer.op == "conv")


def test_unmapped_ops_are_reported(generator):
    # a generator whose head type is mis-keyed would miss the head's MEAN and FULLY_CONNECTED
    arch = get_arch("wrn-10-2")
    def batch_norm(k: str) -> bool:  # its own type, or timed with the addition before it
        return k.startswith("bn_act") or (k.startswith("add") and "-bn" in k)

    class Broken(CellModels):
        def template(self, key: str):  # ADD only for the batch-norms: their MULs are left unmapped
            return super().template("add-m32" if batch_norm(key) else key)

    broken = Broken(dict(generator.types))
    with pytest.raises(OpMappingError, match="MUL"):
        check_network_ops(arch, broken)


def test_a_type_is_converted_once_per_process(generator):
    # the context's partners, the build's cells and the op check each make a CellModels: a second
    # one of the same types reuses the first's templates, and other types are not confused with them
    again = CellModels(network_layer_types([get_arch("wrn-10-2")]))
    shared = sorted(set(again.types) & set(generator.types))
    assert shared
    for key in shared:
        assert again.template(key) is generator.template(key)
    other = CellModels(network_layer_types([get_arch("wrn-16-1")]))
    for key in set(other.types) & set(generator.types):
        if other.types[key] != generator.types[key]:  # same key, another channel range or input size
            assert other.template(key) is not generator.template(key)
