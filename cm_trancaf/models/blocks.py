"""Shared 3D building blocks (channels-last ``(B, D, H, W, C)``), Keras layers and keras.ops only.

    ConvNormAct:    Conv3D -- InstanceNorm -- activation
    ResidualBlock:  x -- ConvNormAct -- Conv3D -- InstanceNorm --(+)-- activation
                    \\-- 1x1x1 Conv3D + InstanceNorm (when channels change) --/

Instance normalisation is ``GroupNormalization(groups=-1)`` (Keras 3; no tensorflow-addons).
"""
from __future__ import annotations

import keras
from keras import layers

__all__ = ["instance_norm", "ConvNormAct", "ResidualBlock"]


def instance_norm(name=None) -> layers.Layer:
    return layers.GroupNormalization(groups=-1, epsilon=1e-5, name=name)


class ConvNormAct(layers.Layer):
    def __init__(self, filters: int, kernel=3, strides=1, activation="leaky_relu", norm=True,
                 **kwargs):
        super().__init__(**kwargs)
        self.filters, self.kernel, self.strides = filters, kernel, strides
        self.activation, self.norm = activation, norm
        self.conv = layers.Conv3D(filters, kernel, strides=strides, padding="same", use_bias=not norm)
        self.bn = instance_norm() if norm else None
        self.act = layers.Activation(activation) if activation else None

    def call(self, x, training=False):
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x, training=training)
        return self.act(x) if self.act is not None else x

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "kernel": self.kernel,
                "strides": self.strides, "activation": self.activation, "norm": self.norm}


class ResidualBlock(layers.Layer):
    """Two 3x3x3 convolutions with a (projected) identity shortcut (SPEC MAUNet encoder);
    ``residual=False`` drops the shortcut: the plain U-Net double convolution."""

    def __init__(self, filters: int, residual: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.filters, self.residual = filters, residual
        self.conv1 = ConvNormAct(filters)
        self.conv2 = ConvNormAct(filters, activation=None)
        self.act = layers.Activation("leaky_relu")
        self.project = None

    def build(self, input_shape):
        if self.residual and input_shape[-1] != self.filters:
            self.project = ConvNormAct(self.filters, kernel=1, activation=None)

    def call(self, x, training=False):
        y = self.conv2(self.conv1(x, training=training), training=training)
        if not self.residual:
            return self.act(y)
        shortcut = self.project(x, training=training) if self.project is not None else x
        return self.act(y + shortcut)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "residual": self.residual}
