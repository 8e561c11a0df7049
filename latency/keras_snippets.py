"""Reference single-layer Keras models of the op kinds the product times, and templates
converted from them.

`keras_layer_model` builds the Keras model of one kind and cell, `build_template` converts it
once at marker channel counts into a `ModelTemplate`. TensorFlow is imported lazily, so that
render workers stay light.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from .tflite_rewrite import ModelTemplate

__all__ = ["KINDS", "build_template", "choose_markers", "convert_keras", "keras_layer_model", "randomise_weights"]


#: op kind -> its channel axes, in the order the marker values are assigned
KINDS: dict[str, tuple[str, ...]] = {
    "conv_bn_relu": ("c_in", "c_out"),  # Conv2D(no bias) + BN + ReLU -> CONV_2D (fused)
    "conv": ("c_in", "c_out"),  # plain Conv2D with bias
    "dwconv_bn_relu6": ("c",),  # DepthwiseConv2D + BN + ReLU6 -> DEPTHWISE_CONV_2D
    "bn_relu": ("c",),  # standalone BN + ReLU -> MUL + ADD(relu)
    "add": ("c",),  # residual add of two inputs -> ADD
    "head": ("c_in",),  # GAP + Dense(classes) -> MEAN + FULLY_CONNECTED
    "se": ("c", "h"),  # squeeze-excite -> MEAN, FC(relu), FC, LOGISTIC, MUL
}

_MARKER_CANDIDATES = (37, 41, 43, 47, 53, 59, 61, 67, 71, 73, 79, 83, 89, 97)


def choose_markers(
    kind: str, *, input_hw: int = 32, stride: int = 1, kernel: int = 3, classes: int = 10
) -> dict[str, int]:
    """Marker values for `kind` that cannot collide with its spatial, kernel or class sizes."""
    out_hw = math.ceil(input_hw / stride)
    taken = {1, 2, 4, input_hw, out_hw, kernel, stride, classes}
    free = [m for m in _MARKER_CANDIDATES if m not in taken]
    return dict(zip(KINDS[kind], free))


def randomise_weights(model: Any, seed: int) -> None:
    # Fresh Keras weights are trivial (zero biases, unit BN statistics) and the converter drops
    # an all-zero FULLY_CONNECTED bias; random "trained-like" weights keep the graph realistic.
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        ws = layer.get_weights()
        if not ws:
            continue
        if layer.__class__.__name__ == "BatchNormalization":
            gamma, beta, mean, var = ws
            c = gamma.shape
            layer.set_weights([
                rng.uniform(0.5, 1.5, c).astype(np.float32),
                rng.normal(0, 0.1, c).astype(np.float32),
                rng.normal(0, 0.1, c).astype(np.float32),
                rng.uniform(0.5, 1.5, c).astype(np.float32),
            ])
        else:
            layer.set_weights([rng.normal(0, 0.1, w.shape).astype(np.float32) for w in ws])


def keras_layer_model(
    kind: str,
    channels: Mapping[str, int],
    *,
    input_hw: int = 32,
    stride: int = 1,
    kernel: int = 3,
    classes: int = 10,
    seed: int = 0,
) -> Any:
    """The single-layer Keras model of one op kind and cell (batch 1, NHWC float32)."""
    import keras

    L = keras.layers
    ch = {k: int(channels[k]) for k in KINDS[kind]}
    hw = (input_hw, input_hw)
    if kind in ("conv_bn_relu", "conv"):
        x = keras.Input((*hw, ch["c_in"]), batch_size=1)
        bn = kind == "conv_bn_relu"
        y = L.Conv2D(ch["c_out"], kernel, strides=stride, padding="same", use_bias=not bn)(x)
        if bn:
            y = L.ReLU()(L.BatchNormalization()(y))
        inputs: Any = x
    elif kind == "dwconv_bn_relu6":
        x = keras.Input((*hw, ch["c"]), batch_size=1)
        y = L.DepthwiseConv2D(kernel, strides=stride, padding="same", use_bias=False)(x)
        y = L.ReLU(6.0)(L.BatchNormalization()(y))
        inputs = x
    elif kind == "bn_relu":
        x = keras.Input((*hw, ch["c"]), batch_size=1)
        y = L.ReLU()(L.BatchNormalization()(x))
        inputs = x
    elif kind == "add":
        a = keras.Input((*hw, ch["c"]), batch_size=1)
        b = keras.Input((*hw, ch["c"]), batch_size=1)
        y = L.Add()([a, b])
        inputs = [a, b]
    elif kind == "head":
        x = keras.Input((*hw, ch["c_in"]), batch_size=1)
        y = L.Dense(classes)(L.GlobalAveragePooling2D()(x))
        inputs = x
    elif kind == "se":
        x = keras.Input((*hw, ch["c"]), batch_size=1)
        s = L.GlobalAveragePooling2D()(x)
        s = L.Dense(ch["h"], activation="relu")(s)
        s = L.Dense(ch["c"], activation="sigmoid")(s)
        # (1, c) broadcasts against (1, H, W, c): the converter emits a plain MUL, except at
        # c == 1 where it inserts a RESHAPE to (1, 1, 1, 1) first (so does an explicit Reshape).
        y = L.Multiply()([x, s])
        inputs = x
    else:
        raise ValueError(f"unknown kind {kind!r}; known: {sorted(KINDS)}")
    model = keras.Model(inputs, y)
    randomise_weights(model, seed)
    return model


def convert_keras(model: Any) -> bytes:
    """float32 TFLite bytes of a Keras model (the converter's export chatter is swallowed)."""
    from models.keras_builder import convert_keras as convert

    return convert(model)


def build_template(
    kind: str,
    *,
    input_hw: int = 32,
    stride: int = 1,
    kernel: int = 3,
    classes: int = 10,
    markers: Mapping[str, int] | None = None,
) -> ModelTemplate:
    """Convert `kind` once at marker channel counts and wrap it as a template."""
    marks = dict(markers) if markers is not None else choose_markers(
        kind, input_hw=input_hw, stride=stride, kernel=kernel, classes=classes
    )
    model = keras_layer_model(kind, marks, input_hw=input_hw, stride=stride, kernel=kernel, classes=classes)
    return ModelTemplate(convert_keras(model), marks)

