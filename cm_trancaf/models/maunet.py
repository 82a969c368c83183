"""MAUNet: U-shaped multi-attention network (SPEC module 2), the segmenter of the cascade.

    x (B, 64, 64, 64, 1)        (input_norm: z-scored over its voxels above -1, roi_zscore)
    level 0  ResidualBlock(F)   ------------------------------- AG -- concat -- Res(F) -- 1x1 -- softmax
      | maxpool (first_pool, 2^3 unless set)                     ^ g
    level 1  ResidualBlock(2F)  -------------------- AG -- concat -- Res(2F) -- up
      | maxpool                                       ^ g
    level 2  ResidualBlock(4F)  ---------- AG -- concat -- Res(4F) -- up
      | maxpool                             ^ g
    level 3  ResidualBlock(8F) -- PAB -- up                          (bottleneck, 8^3 positions)

AG, additive attention gate (Oktay et al. 2018): alpha = sigmoid(psi(relu(theta(x) + phi(g))))
in [0, 1] per voxel; the skip is replaced by alpha * x. PAB, position attention block (DANet,
Fu et al. 2019): Q, K = 1x1x1 convs to C/8, V to C; A = softmax_j(Q_i . K_j) over the N = D*H*W
positions; out = gamma * (A V) + x with gamma a scalar initialised to 0. Output: class
probabilities (float32). Tensors are channels-last ``(B, D, H, W, C)``.
"""
from __future__ import annotations

import keras
import numpy as np
from keras import layers, ops

from ..config import MAUNetConfig
from .blocks import ResidualBlock

__all__ = ["AttentionGate", "PositionAttention", "MAUNet", "build_maunet", "roi_zscore"]


class AttentionGate(layers.Layer):
    """Additive attention gate on a skip connection; returns (alpha * x, alpha)."""

    def __init__(self, inter_filters: int, **kwargs):
        super().__init__(**kwargs)
        self.inter_filters = inter_filters
        self.theta = layers.Conv3D(inter_filters, 1, use_bias=False)   # on the skip x
        self.phi = layers.Conv3D(inter_filters, 1)                     # on the gating signal g
        self.psi = layers.Conv3D(1, 1)

    def call(self, x, g):
        q = ops.relu(self.theta(x) + self.phi(g))          # (B, D, H, W, F_int)
        alpha = ops.sigmoid(self.psi(q))                   # (B, D, H, W, 1) in [0, 1]
        return x * alpha, alpha

    def get_config(self):
        return {**super().get_config(), "inter_filters": self.inter_filters}


class PositionAttention(layers.Layer):
    """DANet position attention: out = gamma * (V A^T) + x, gamma initialised to 0."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)

    def build(self, input_shape):
        c = int(input_shape[-1])
        self.query = layers.Conv3D(max(1, c // 8), 1)
        self.key = layers.Conv3D(max(1, c // 8), 1)
        self.value = layers.Conv3D(c, 1)
        self.gamma = self.add_weight(name="gamma", shape=(), initializer="zeros")

    def call(self, x):
        b = ops.shape(x)[0]
        d, h, w, c = x.shape[1], x.shape[2], x.shape[3], x.shape[4]
        n = d * h * w
        q = ops.reshape(self.query(x), (b, n, -1))           # (B, N, C/8)
        k = ops.reshape(self.key(x), (b, n, -1))             # (B, N, C/8)
        v = ops.reshape(self.value(x), (b, n, c))            # (B, N, C)
        attn = ops.softmax(ops.matmul(q, ops.transpose(k, (0, 2, 1))), axis=-1)  # (B, N, N)
        out = ops.reshape(ops.matmul(attn, v), (b, d, h, w, c))
        return ops.cast(self.gamma, out.dtype) * out + x


def roi_zscore(x, floor: float = -1.0, eps: float = 1e-6):
    """Each sample of ``x`` (B, D, H, W, 1) minus the mean, over the std, of its voxels above
    ``floor`` (the ROI's padding and the volume's clipped darkest percent are -1), which take the
    darkest of those values; so the output does not change when the voxels above the floor are
    scaled and shifted. A sample with no voxel above the floor becomes 0."""
    dtype = x.dtype
    x = ops.cast(x, "float32")
    inside = x > floor + 1e-3
    mask = ops.cast(inside, "float32")
    axes = (1, 2, 3, 4)
    n = ops.maximum(ops.sum(mask, axis=axes, keepdims=True), 1.0)
    mean = ops.sum(x * mask, axis=axes, keepdims=True) / n
    var = ops.sum(mask * ops.square(x - mean), axis=axes, keepdims=True) / n
    z = (x - mean) / ops.sqrt(var + eps)
    darkest = ops.min(ops.where(inside, z, 1e9), axis=axes, keepdims=True)
    darkest = ops.where(darkest > 1e8, 0.0, darkest)
    return ops.cast(ops.where(inside, z, darkest), dtype)


class MAUNet(keras.Model):
    """MAUNet for inputs ``(B, D, H, W, 1)``, each axis divisible by its pooling."""

    def __init__(self, cfg: MAUNetConfig, num_classes: int, **kwargs):
        super().__init__(**kwargs)
        if cfg.levels < 2 or cfg.base_filters < 1 or num_classes < 2:
            raise ValueError(f"MAUNet needs levels >= 2, base_filters >= 1, num_classes >= 2; "
                             f"got {cfg.levels}, {cfg.base_filters}, {num_classes}")
        if not 0 <= cfg.deep_supervision <= cfg.levels - 2:
            raise ValueError(f"maunet.deep_supervision must be 0 .. levels - 2 = {cfg.levels - 2} "
                             f"(decoder levels above the finest), got {cfg.deep_supervision}")
        self.cfg, self.num_classes = cfg, num_classes
        f = [cfg.base_filters * 2 ** level for level in range(cfg.levels)]
        self.encoder = [ResidualBlock(f[l], cfg.residual, name=f"enc{l}")
                        for l in range(cfg.levels)]
        # pool_sizes[l]: level l -> l + 1, (D, H, W); the up-convolution up[l] undoes it
        self.pool_sizes = [tuple(cfg.first_pool)] + [(2, 2, 2)] * (cfg.levels - 2)
        self.pool = [layers.MaxPooling3D(p, name=f"pool{l}")
                     for l, p in enumerate(self.pool_sizes)]
        self.pab = PositionAttention(name="pab") if cfg.pab else None
        self.up = [layers.Conv3DTranspose(f[l], p, strides=p, name=f"up{l}")
                   for l, p in enumerate(self.pool_sizes)]
        self.gates = [AttentionGate(max(1, f[l] // 2), name=f"ag{l}") if cfg.attention_gates
                      else None for l in range(cfg.levels - 1)]
        self.decoder = [ResidualBlock(f[l], cfg.residual, name=f"dec{l}")
                        for l in range(cfg.levels - 1)]
        self.drop = layers.Dropout(cfg.dropout) if cfg.dropout > 0 else None
        self.head = layers.Conv3D(num_classes, 1, name="head")
        # deep supervision: heads of decoder levels 1 .. deep_supervision (level 0 is `head`)
        self.deep_heads = [layers.Conv3D(num_classes, 1, name=f"head{l}")
                           for l in range(1, cfg.deep_supervision + 1)]
        self.softmax = layers.Softmax(axis=-1, dtype="float32")

    def call(self, x, training=False, return_attention=False, return_deep=False):
        """Class probabilities (B, D, H, W, K); with ``return_deep`` a list, finest first, of the
        probabilities of decoder levels 0 .. deep_supervision, level l (B, D/2^l, .., K)."""
        if self.cfg.input_norm:
            x = roi_zscore(x)                                 # (B, D, H, W, 1), mean 0, std 1
        skips = []
        for level, block in enumerate(self.encoder):          # encoder, level l: (B, D/2^l, ..)
            x = block(x, training=training)
            if level < len(self.encoder) - 1:
                skips.append(x)
                x = self.pool[level](x)
        if self.pab is not None:                              # bottleneck (B, D/8, H/8, W/8, 8F)
            x = self.pab(x)
        alphas, deep = [], []
        for level in reversed(range(len(skips))):             # decoder, coarse to fine
            g = self.up[level](x)                             # (B, D/2^l, .., F_l)
            skip = skips[level]
            if self.gates[level] is not None:
                skip, alpha = self.gates[level](skip, g)
                alphas.append(alpha)
            x = self.decoder[level](ops.concatenate([g, skip], axis=-1), training=training)
            if return_deep and 1 <= level <= len(self.deep_heads):
                deep.append(self.softmax(self.deep_heads[level - 1](x)))  # (B, D/2^l, .., K)
        if self.drop is not None:
            x = self.drop(x, training=training)
        probs = self.softmax(self.head(x))                    # (B, D, H, W, K)
        if return_deep:
            return [probs] + deep[::-1]
        return (probs, alphas[::-1]) if return_attention else probs


def build_maunet(cfg: MAUNetConfig, num_classes: int, roi_size=(64, 64, 64)) -> MAUNet:
    model = MAUNet(cfg, num_classes, name="maunet")
    total = tuple(int(t) for t in np.prod(model.pool_sizes, axis=0))  # (D, H, W)
    if any(int(s) % t for s, t in zip(roi_size, total)):
        raise ValueError(f"ROI size {tuple(roi_size)} (D, H, W) must be divisible by {total}, the "
                         f"MAUNet's pooling over {cfg.levels} levels (first_pool "
                         f"{tuple(cfg.first_pool)})")
    model(keras.ops.zeros((1, *roi_size, 1)), return_deep=cfg.deep_supervision > 0)
    return model
