"""tools.producer_cost: real batch-norm models converted and timed by LiteRT."""
from __future__ import annotations

import re

import pytest

from tools import producer_cost


def test_the_models_are_what_the_rows_say() -> None:
    from latency.tflite_schema import describe_model

    def ops(producer, with_bn):
        return [op for op, _ in describe_model(producer_cost.build(producer, 6, 8, with_bn))]

    assert ops(None, True) == ["MUL", "ADD"]
    assert ops("add", True) == ["ADD", "MUL", "ADD"] and ops("add", False) == ["ADD"]
    assert ops("relu, also an output", True) == ["RELU", "MUL", "ADD"]
    assert ops("conv3x3+relu", True) == ["CONV_2D", "MUL", "ADD"]  # the batch-norm does not fold after a ReLU
    with pytest.raises(ValueError, match="unknown producer"):
        producer_cost.build("pool", 6, 8, True)


def test_prints_one_row_per_producer(capsys: pytest.CaptureFixture[str]) -> None:
    assert producer_cost.main(["--shapes", "6x8", "--rounds", "1"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.lstrip().startswith("6x8")]
    assert len(rows) == len(producer_cost.PRODUCERS)
    for row in rows:
        before, both, adds, alone = (float(re.sub("us$", "", v)) for v in row[-5:-1])
        assert before > 0 and both > 0 and alone > 0 and adds == pytest.approx(both - before, abs=0.011)


def test_bad_shapes_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        producer_cost.main(["--shapes", "6by32"])
    assert exc.value.code == 2 and "CHANNELSxSIZE" in capsys.readouterr().err
