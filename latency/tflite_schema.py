"""Reading TFLite flatbuffers: the schema bindings, op and tensor-type names, and the ops of a
model with their shapes as the file states them.
"""
from __future__ import annotations

from typing import Any

# The bindings generated from the TFLite schema ship with ai-edge-litert (and TensorFlow);
# the litert copy is importable without TensorFlow, which keeps worker processes cheap.
try:
    from ai_edge_litert import schema_py_generated as fb
except ImportError:  # pragma: no cover - older installs only have the TensorFlow copy
    from tensorflow.lite.python import schema_py_generated as fb  # type: ignore[no-redef]

__all__ = ["FILE_IDENTIFIER", "OP_NAMES", "TYPE_NAMES", "builtin_code", "describe_model", "fb"]

FILE_IDENTIFIER = b"TFL3"

OP_NAMES: dict[int, str] = {
    v: k for k, v in vars(fb.BuiltinOperator).items() if not k.startswith("_") and isinstance(v, int)
}
TYPE_NAMES: dict[int, str] = {
    v: k for k, v in vars(fb.TensorType).items() if not k.startswith("_") and isinstance(v, int)
}


def builtin_code(code: Any) -> int:
    """The op code of an OperatorCode (object API)."""
    # Schema v3a keeps small codes in the deprecated int8 field; the real one is the max.
    return max(int(code.builtinCode), int(code.deprecatedBuiltinCode))


def describe_model(model_bytes: bytes) -> list[tuple[str, list[list[int]]]]:
    """Ops in execution order, each with the shapes of its inputs then outputs.

    Missing optional inputs (e.g. a FULLY_CONNECTED without bias) are left out. Parsed from the
    flatbuffer rather than the interpreter so that no delegate can fuse or hide nodes.
    """
    model = fb.Model.GetRootAs(model_bytes, 0)
    codes = []
    for i in range(model.OperatorCodesLength()):
        c = model.OperatorCodes(i)
        code = max(c.BuiltinCode(), c.DeprecatedBuiltinCode())
        custom = c.CustomCode()
        if code == fb.BuiltinOperator.CUSTOM and custom:
            codes.append(custom.decode())
        else:
            codes.append(OP_NAMES.get(code, str(code)))
    sg = model.Subgraphs(0)
    out: list[tuple[str, list[list[int]]]] = []
    for i in range(sg.OperatorsLength()):
        op = sg.Operators(i)
        idx = [op.Inputs(j) for j in range(op.InputsLength())]
        idx += [op.Outputs(j) for j in range(op.OutputsLength())]
        shapes = [sg.Tensors(t).ShapeAsNumpy() for t in idx if t >= 0]
        out.append((codes[op.OpcodeIndex()], [[int(d) for d in s] if not isinstance(s, int) else [] for s in shapes]))
    return out
