"""The Keras twin of an item's PyTorch reference module, with the torch weights copied in.

TFLite is reached through Keras (the converter's front door), so the TFLite
backend rebuilds each torch module as a Keras functional model that computes
the same thing in eval mode, layer for layer. The torch modules are translated
by type (`_apply`); the glue of each architecture (normalisation, reshapes,
concatenations, the mean over time) is written out per architecture, following
the torch `forward`s.

Layout: Keras convolutions are channels-last. A conv1d layer item's Keras
model takes [instances, length, channels] (the runner transposes); a model
item's Keras model takes the torch layout [1, *input_shape] and transposes
inside, as the torch model's own reshapes demand.

Recurrent layers are unrolled over their fixed sequence length: the
converted graph is then plain matmuls and element-wise ops that the XNNPACK
delegate takes whole, and int8 conversion works (a looped GRU crashes the
int8 converter, see STACK.md), so what is profiled is what gets deployed.

Importing this module imports Keras and TensorFlow (seconds, hundreds of MB):
only conversion code imports it.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers, ops
from torch import nn

from components.models.base import Bypass
from components.profiling.items import Item, layer_input_shape


def _np(tensor) -> np.ndarray:
    return tensor.detach().cpu().numpy().astype(np.float32)


# ---- one torch module -> (an unbuilt Keras layer, its weights in Keras' order) ----------------------------------

def _conv1d(conv: nn.Conv1d) -> tuple[layers.Layer, list[np.ndarray]]:
    if conv.padding != (0,) or conv.dilation != (1,) or conv.groups != 1:
        raise ValueError(f"Conv1d with padding/dilation/groups is not translated: {conv}")
    layer = layers.Conv1D(conv.out_channels, conv.kernel_size[0], strides=conv.stride[0], padding="valid",
                          use_bias=conv.bias is not None)
    weights = [_np(conv.weight).transpose(2, 1, 0)]  # torch [out, in, k] -> Keras [k, in, out]
    if conv.bias is not None:
        weights.append(_np(conv.bias))
    return layer, weights


def _batch_norm(bn: nn.BatchNorm1d) -> tuple[layers.Layer, list[np.ndarray]]:
    layer = layers.BatchNormalization(axis=-1, epsilon=bn.eps)
    return layer, [_np(bn.weight), _np(bn.bias), _np(bn.running_mean), _np(bn.running_var)]


def _linear(linear: nn.Linear) -> tuple[layers.Layer, list[np.ndarray]]:
    layer = layers.Dense(linear.out_features, use_bias=linear.bias is not None)
    weights = [_np(linear.weight).T]
    if linear.bias is not None:
        weights.append(_np(linear.bias))
    return layer, weights


def _check_recurrent(rnn: nn.RNNBase) -> None:
    if rnn.num_layers != 1 or rnn.bidirectional or not rnn.batch_first or not rnn.bias or rnn.proj_size:
        raise ValueError(f"only single-layer, unidirectional, batch-first recurrent layers are translated: {rnn}")


def _gru(gru: nn.GRU) -> tuple[layers.Layer, list[np.ndarray]]:
    """Keras GRU(reset_after=True) is torch's GRU; torch's gates are (r, z, n), Keras' (z, r, h)."""
    def reorder(w: np.ndarray) -> np.ndarray:
        r, z, n = np.split(w, 3, axis=0)
        return np.concatenate([z, r, n], axis=0)

    _check_recurrent(gru)
    layer = layers.GRU(gru.hidden_size, return_sequences=True, reset_after=True, unroll=True)
    bias = np.stack([reorder(_np(gru.bias_ih_l0)), reorder(_np(gru.bias_hh_l0))])  # (2, 3H): input, recurrent
    return layer, [reorder(_np(gru.weight_ih_l0)).T, reorder(_np(gru.weight_hh_l0)).T, bias]


def _lstm(lstm: nn.LSTM) -> tuple[layers.Layer, list[np.ndarray]]:
    """Torch's gates (i, f, g, o) are Keras' (i, f, c, o); Keras has one bias, the sum of torch's two."""
    _check_recurrent(lstm)
    layer = layers.LSTM(lstm.hidden_size, return_sequences=True, unroll=True)
    bias = _np(lstm.bias_ih_l0) + _np(lstm.bias_hh_l0)
    return layer, [_np(lstm.weight_ih_l0).T, _np(lstm.weight_hh_l0).T, bias]


_TRANSLATORS = {nn.Conv1d: _conv1d, nn.BatchNorm1d: _batch_norm, nn.Linear: _linear, nn.GRU: _gru,
                nn.LSTM: _lstm}
_IDENTITY_IN_EVAL = (nn.Dropout, nn.Dropout1d)


def _apply(module: nn.Module, h):
    """Apply `module`'s Keras twin to the (channels-last) Keras tensor `h`; Sequentials are followed in order."""
    if isinstance(module, nn.Sequential):
        for child in module:
            h = _apply(child, h)
        return h
    if isinstance(module, _IDENTITY_IN_EVAL):
        return h
    if isinstance(module, Bypass):  # a removed layer: its input, cut along the length (axis 1, channels-last)
        return h if module.kernel == 1 else layers.Cropping1D(module.cut)(h)
    if isinstance(module, nn.ReLU):
        return layers.ReLU()(h)
    translate = _TRANSLATORS.get(type(module))
    if translate is None:
        raise ValueError(f"no Keras translation for torch module {type(module).__name__}")
    layer, weights = translate(module)
    out = layer(h)  # builds the layer, so its weights can be set
    layer.set_weights(weights)
    return out


# ---- whole items ---------------------------------------------------------------------------------------------

def _normalize(x, model: nn.Module):
    """(x - input_mean) / input_std, the buffers the torch model carries."""
    return ops.divide(ops.subtract(x, _np(model.input_mean)), _np(model.input_std))


def _deepsense(x, model: nn.Module):
    """DeepSense.forward without `lengths` (every interval real): x is [B, T, sensors, axes, 2, F]."""
    b, t, sensors, axes, _, freq = x.shape
    # 4-D from here on: TFLite's reference kernels (int8 calibration runs them) slice at most 5-D tensors
    x = ops.reshape(x, (b, t, sensors, axes * 2 * freq))
    mean, std = (_np(buffer).reshape(t, sensors, -1) for buffer in (model.input_mean, model.input_std))
    x = ops.divide(ops.subtract(x, mean), std)
    per_sensor = []
    for s, stack in enumerate(model.sensor_convs):
        xs = ops.reshape(x[:, :, s], (b * t, axes * 2, freq))  # torch's [B*T, axes*2, F]
        per_sensor.append(_apply(stack, ops.transpose(xs, (0, 2, 1))))  # channels-last: [B*T, F, axes*2]
    h = per_sensor[0] if len(per_sensor) == 1 else ops.concatenate(per_sensor, axis=-1)
    h = _apply(model.merge, h)  # [B*T, L, C]
    h = ops.reshape(ops.transpose(h, (0, 2, 1)), (b, t, -1))  # torch flattens [C, L] channel-major
    for rnn in model.rnns:  # the dropout between them is the identity in eval
        h = _apply(rnn, h)
    return _apply(model.output, ops.mean(h, axis=1))


def _plain_cnn(x, model: nn.Module):
    """PlainCNN.forward: every spectral feature a channel, convolutions over the intervals."""
    b, t = x.shape[:2]
    h = ops.reshape(_normalize(x, model), (b, t, -1))  # channels-last already: [B, T, features]
    h = _apply(model.convs, h)
    return _apply(model.output, ops.mean(h, axis=1))


def _mlp(x, model: nn.Module):
    """MLP.forward: the flattened window through the dense layers (ReLU after each hidden one)."""
    h = ops.reshape(_normalize(x, model), (x.shape[0], -1))
    return _apply(model.output, _apply(model.hidden, h))


_ARCHITECTURES = {"deepsense": _deepsense, "cnn": _plain_cnn, "mlp": _mlp}


def keras_input_shape(item: Item) -> tuple[int, ...]:
    """The Keras model's input shape, batch included: the torch layout except channels-last for a conv1d layer."""
    if item.model is not None:
        return (1, *item.model.input_shape)
    shape = layer_input_shape(item.layer)
    if item.layer.kind == "conv1d":
        instances, channels, length = shape
        return (instances, length, channels)
    return shape


def keras_model(item: Item, module: nn.Module) -> keras.Model:
    """A Keras functional model computing `module` (the item's eval-mode torch module) with its weights."""
    shape = keras_input_shape(item)
    x = keras.Input(shape=shape[1:], batch_size=shape[0], name="x")
    if item.model is not None:
        build = _ARCHITECTURES.get(item.model.arch)
        if build is None:
            raise ValueError(f"no Keras build for architecture {item.model.arch!r}")
        y = build(x, module)
    elif item.layer.kind in ("gru", "lstm"):
        y = _apply(module.rnn, x)  # reference.RecurrentLayer: the output sequence
    else:
        y = _apply(module, x)
    return keras.Model(x, y, name=f"item_{item.key}")
