"""SCN: spatial configuration network (SPEC module 3, after Payer et al. 2017/2018).

    MAUNet probabilities p (B, D, H, W, K) [+ image]
      local branch:   Conv3D(F) -- Conv3D(F) -- Conv3D(K)             -> local maps    L
      spatial branch: AvgPool(s) -- Conv3D(F, 9x9x5) x n -- Conv3D(K, tanh) -- Upsample(s)
                                                                       -> spatial maps S
      prediction:     softmax(L * S)        (element-wise, as Payer's network.py)
      residual option: softmax(log p + L * S), S's last kernel and bias zero at start, so a fresh
                      SCN returns p (beyond the paper, ``scn.residual``)

The large kernels of the spatial branch see the whole coarse ROI, so each class map can be
corrected by where the other substructures are. Kernels are given as (x, y, z) like the paper
(9x9x5) and applied in array order (z, y, x). Returns ``(prediction, local, spatial)`` when
asked, so the parts can be plotted. Channels-last ``(B, D, H, W, C)``.
"""
from __future__ import annotations

import keras
from keras import layers, ops

from ..config import SCNConfig

__all__ = ["SCN", "build_scn"]


class SCN(keras.Model):
    def __init__(self, cfg: SCNConfig, num_classes: int, **kwargs):
        super().__init__(**kwargs)
        if cfg.downsample < 1 or cfg.spatial_convs < 1:
            raise ValueError(f"SCN needs downsample >= 1 and spatial_convs >= 1, got "
                             f"{cfg.downsample}, {cfg.spatial_convs}")
        if cfg.residual and cfg.residual_floor <= 0:
            raise ValueError(f"scn.residual_floor must be > 0, got {cfg.residual_floor}")
        self.cfg, self.num_classes = cfg, num_classes
        conv = lambda f, k, act, name: layers.Conv3D(f, k, padding="same", activation=act, name=name)
        self.local = [conv(cfg.filters, 3, "leaky_relu", "local0"),
                      conv(cfg.filters, 3, "leaky_relu", "local1"),
                      conv(num_classes, 3, None, "local2")]
        kernel = tuple(cfg.kernel[::-1])                       # (x, y, z) -> (D, H, W)
        self.pool = layers.AveragePooling3D(cfg.downsample)
        self.spatial = [conv(cfg.filters, kernel, "leaky_relu", f"spatial{i}")
                        for i in range(cfg.spatial_convs)]
        # residual: S starts at zero, so a fresh SCN returns p (Keras' default otherwise)
        self.spatial_out = layers.Conv3D(
            num_classes, kernel, padding="same", activation="tanh", name="spatial_out",
            kernel_initializer="zeros" if cfg.residual else "glorot_uniform")
        self.upsample = layers.UpSampling3D(cfg.downsample)
        self.softmax = layers.Softmax(axis=-1, dtype="float32")

    def call(self, probs, image=None, training=False, return_parts=False):
        x = probs
        if self.cfg.use_image:
            if image is None:
                raise ValueError("SCN built with use_image=True needs the image")
            x = ops.concatenate([probs, ops.cast(image, probs.dtype)], axis=-1)
        for c in self.local:
            x = c(x)
        local = x                                              # (B, D, H, W, K)
        s = self.pool(local)                                   # (B, D/s, H/s, W/s, K)
        for c in self.spatial:
            s = c(s)
        spatial = self.upsample(self.spatial_out(s))           # (B, D, H, W, K) in [-1, 1]
        logits = local * spatial                               # Payer: L * S
        if self.cfg.residual:                                  # log p + L * S, p floored
            log_p = ops.log(ops.maximum(ops.cast(probs, "float32"), self.cfg.residual_floor))
            logits = log_p + ops.cast(logits, "float32")
        pred = self.softmax(logits)
        return (pred, local, spatial) if return_parts else pred


def build_scn(cfg: SCNConfig, num_classes: int, roi_size=(64, 64, 64)) -> SCN:
    model = SCN(cfg, num_classes, name="scn")
    image = keras.ops.zeros((1, *roi_size, 1)) if cfg.use_image else None
    model(keras.ops.zeros((1, *roi_size, num_classes)), image)
    return model
