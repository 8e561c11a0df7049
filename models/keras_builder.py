"""Keras models built from an `Arch`: the models that are converted to TFLite and timed.

Layer for layer the same structure as `torch_builder.ArchNet` ('same' padding, BN epsilon,
block removal), so that weights copied from PyTorch give the same outputs.
"""
from __future__ import annotations

import os
from typing import Mapping, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # see latency.quiet: TensorFlow only converts here

import numpy as np  # noqa: E402

from .arch import INPUT, ActiveLayer, Arch  # noqa: E402
from .torch_builder import BN_EPS, ArchNet, torch_key  # noqa: E402


def _keras():
    import keras  # deferred: tensorflow takes seconds to import

    return keras


def _act(keras, name: str | None, layer_name: str):
    if name is None:
        return None
    return keras.layers.ReLU(max_value=6.0 if name == "relu6" else None, name=f"{layer_name}.{name}")


def keras_layer(a: ActiveLayer, inputs: list):
    """Applies one architecture layer to Keras tensors; the single-layer models timed for the
    latency tables are built with this same function."""
    keras = _keras()
    L = keras.layers
    layer, name = a.layer, a.layer.name
    if layer.op in ("conv", "dwconv"):
        if layer.op == "conv":
            x = L.Conv2D(a.c_out, layer.kernel, strides=layer.stride, padding="same", use_bias=False, name=name)(inputs[0])
        else:
            x = L.DepthwiseConv2D(layer.kernel, strides=layer.stride, padding="same", use_bias=False, name=name)(inputs[0])
        if layer.bn:
            x = L.BatchNormalization(epsilon=BN_EPS, name=f"{name}.bn")(x)
        act = _act(keras, layer.act, name)
        return act(x) if act is not None else x
    if layer.op == "bn_act":
        x = L.BatchNormalization(epsilon=BN_EPS, name=f"{name}.bn")(inputs[0])
        act = _act(keras, layer.act, name)
        return act(x) if act is not None else x
    if layer.op == "add":
        x = L.Add(name=name)(inputs)
        if layer.bn:  # an addition timed with the batch-norm that alone reads it (latency.fusion)
            x = L.BatchNormalization(epsilon=BN_EPS, name=f"{name}.bn")(x)
            act = _act(keras, layer.act, name)
            x = act(x) if act is not None else x
        return x
    if layer.op == "se":
        s = L.GlobalAveragePooling2D(keepdims=True, name=f"{name}.pool")(inputs[0])
        s = L.Dense(a.c_out, activation="relu", name=f"{name}.fc1")(s)
        s = L.Dense(a.c_in, activation="sigmoid", name=f"{name}.fc2")(s)
        return L.Multiply(name=name)([inputs[0], s])
    if layer.op == "head":
        x = L.GlobalAveragePooling2D(name=f"{name}.pool")(inputs[0])
        if layer.dropout:
            x = L.Dropout(layer.dropout, name=f"{name}.dropout")(x)
        return L.Dense(a.c_out, name=f"{name}.fc")(x)
    raise ValueError(f"no Keras layer for op {layer.op!r}")


def layer_input_shapes(a: ActiveLayer, arch: Arch, channels_of: Mapping[str, int]) -> list[tuple[int, int, int]]:
    """HWC shapes of the inputs of one layer (for single-layer models)."""
    return [(a.layer.in_size, a.layer.in_size, channels_of[s]) for s in a.inputs]


def _keras_outputs(arch: Arch, widths: Mapping[str, int] | None):
    """(image input, layer name -> its output tensor, active layers) of the functional graph."""
    keras = _keras()
    active = arch.active_layers(widths)
    image = keras.Input((arch.input_size, arch.input_size, 3), batch_size=1, name="image")
    outs = {INPUT: image}
    for a in active:
        outs[a.layer.name] = keras_layer(a, [outs[s] for s in a.inputs])
    return image, outs, active


def build_keras(arch: Arch, widths: Mapping[str, int] | None = None):
    """The Keras functional model of `arch` at `widths`, batch 1, NHWC."""
    image, outs, active = _keras_outputs(arch, widths)
    return _keras().Model(image, outs[active[-1].layer.name], name=arch.name)


def to_tflite_prefixes(arch: Arch, widths: Mapping[str, int] | None, ends: Sequence[str]) -> dict[str, bytes]:
    """The network cut after each layer named in `ends` (its output is that layer's), as
    `.tflite` with the weights `to_tflite` gives the whole network: the time a block takes
    inside the network is the difference of two consecutive prefixes."""
    keras = _keras()
    image, outs, _ = _keras_outputs(arch, widths)
    whole = keras.Model(image, [outs[e] for e in ends])
    _trained_like(whole)
    return {e: convert_keras(keras.Model(image, outs[e])) for e in ends}


def copy_torch_to_keras(net: ArchNet, model) -> None:
    """Copies every weight of the PyTorch network into the Keras model of the same widths."""
    for a in net.active:
        unit = net.units[torch_key(a.layer.name)]
        name = a.layer.name
        sd = {k: v.detach().cpu().numpy() for k, v in unit.state_dict().items()}

        def bn(keras_name: str, prefix: str = "bn.") -> None:
            model.get_layer(keras_name).set_weights(
                [sd[prefix + "weight"], sd[prefix + "bias"], sd[prefix + "running_mean"], sd[prefix + "running_var"]]
            )

        op = a.layer.op
        if op == "conv":
            model.get_layer(name).set_weights([sd["conv.weight"].transpose(2, 3, 1, 0)])
        elif op == "dwconv":
            model.get_layer(name).set_weights([sd["conv.weight"].transpose(2, 3, 0, 1)])
        if op in ("conv", "dwconv") and a.layer.bn or op == "bn_act":
            bn(f"{name}.bn")
        elif op == "se":
            model.get_layer(f"{name}.fc1").set_weights([sd["fc1.weight"].T, sd["fc1.bias"]])
            model.get_layer(f"{name}.fc2").set_weights([sd["fc2.weight"].T, sd["fc2.bias"]])
        elif op == "head":
            model.get_layer(f"{name}.fc").set_weights([sd["fc.weight"].T, sd["fc.bias"]])


def keras_from_torch(net: ArchNet):
    model = build_keras(net.arch, net.widths)
    copy_torch_to_keras(net, model)
    return model


def convert_keras(model, signature: bool = False) -> bytes:
    """Float32 TFLite flatbuffer of a Keras model (batch 1).

    By default its graph is frozen and converted directly: the operators, tensors and outputs
    are those of Keras's own path, and the model times the same, in a quarter of the time
    (`tools.bench_conversion`). That path writes a SavedModel first, and only it gives the model
    a serving signature: `signature=True` for a model that is deployed rather than timed."""
    import tensorflow as tf

    from latency.quiet import captured_output

    # the converter's chatter (its prints, native log lines) is shown only if it fails
    with captured_output("converting a Keras model to TFLite"):
        if signature:
            return bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
        from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

        specs = [tf.TensorSpec(x.shape, x.dtype) for x in model.inputs]
        call = tf.function(lambda *xs: model(list(xs) if len(xs) > 1 else xs[0]))
        frozen = convert_variables_to_constants_v2(call.get_concrete_function(*specs))
        return bytes(tf.lite.TFLiteConverter.from_concrete_functions([frozen]).convert())


def to_tflite(arch: Arch, widths: Mapping[str, int] | None = None, net: ArchNet | None = None,
              signature: bool = False) -> bytes:
    """The network as a `.tflite` flatbuffer; with `net`, its trained weights; with `signature`,
    a serving signature too (`convert_keras`)."""
    if net is not None:
        if net.arch.name != arch.name or net.widths != arch.validate(net.widths if widths is None else widths):
            raise ValueError("the PyTorch network does not match the requested architecture and widths")
        model = keras_from_torch(net)
    else:
        model = build_keras(arch, widths)
        _trained_like(model)
    return convert_keras(model, signature)


def _trained_like(model, seed: int = 0) -> None:
    """Fresh Keras weights are trivial (BN mean = beta = 0, zero biases), and the converter then
    drops every unfoldable BN's ADD (a `bn_act` becomes a lone MUL); seeded trained-like BN
    statistics and biases keep the graph the one a trained network converts to."""
    keras = _keras()
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.get_weights()[0].shape
            layer.set_weights([rng.uniform(0.5, 1.5, c).astype(np.float32), rng.normal(0, 0.1, c).astype(np.float32),
                               rng.normal(0, 0.1, c).astype(np.float32), rng.uniform(0.5, 1.5, c).astype(np.float32)])
        elif isinstance(layer, keras.layers.Dense):
            kernel, bias = layer.get_weights()
            layer.set_weights([kernel, rng.normal(0, 0.1, bias.shape).astype(np.float32)])


def random_input(arch: Arch, batch: int = 1, seed: int = 0) -> np.ndarray:
    """NCHW float32 images."""
    return np.random.default_rng(seed).standard_normal((batch, 3, arch.input_size, arch.input_size)).astype(np.float32)
