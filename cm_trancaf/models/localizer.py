"""Heart localizer (SPEC module 4): heatmap regression of the heart centre on a coarse volume.

    coarse image (B, 32, 32, 32, 1) at 10 mm
      Conv(F) x2 -- pool -- Conv(2F) x2 -- pool -- Conv(4F) x2 -- up -- Conv(2F) -- up -- Conv(F)
      -- 1x1x1 Conv -> heatmap (B, 32, 32, 32, 1)

Target: a Gaussian at the centre of the label map's foreground (Payer: 32^3 at 10 mm CT).
The centre estimate is the heatmap's argmax refined by a local centroid (:func:`heatmap_peak`).
"""
from __future__ import annotations

import keras
import numpy as np
from keras import layers, ops

from ..config import LocalizerConfig
from .blocks import ConvNormAct

__all__ = ["Localizer", "build_localizer", "heatmap_peak", "heatmap_peaks"]


class Localizer(keras.Model):
    def __init__(self, cfg: LocalizerConfig, **kwargs):
        super().__init__(**kwargs)
        self.cfg = cfg
        f = cfg.filters
        self.enc = [[ConvNormAct(f * 2 ** l), ConvNormAct(f * 2 ** l)] for l in range(3)]
        self.pool = layers.MaxPooling3D(2)
        self.up = [layers.UpSampling3D(2) for _ in range(2)]
        self.dec = [ConvNormAct(f * 2 ** l) for l in range(2)]
        self.head = layers.Conv3D(1, 1, dtype="float32")

    def call(self, x, training=False):
        skips = []
        for level, (a, b) in enumerate(self.enc):
            x = b(a(x, training=training), training=training)
            if level < 2:
                skips.append(x)
                x = self.pool(x)
        for level in (1, 0):
            x = ops.concatenate([self.up[level](x), skips[level]], axis=-1)
            x = self.dec[level](x, training=training)
        return self.head(x)                                   # (B, d, h, w, 1) heatmap


def build_localizer(cfg: LocalizerConfig) -> Localizer:
    model = Localizer(cfg, name="localizer")
    model(keras.ops.zeros((1, *cfg.size, 1)))
    return model


def heatmap_peak(hm: np.ndarray, radius: int = 2) -> np.ndarray:
    """Sub-voxel peak (D, H, W) of a heatmap ``(d, h, w)``: argmax, then the weighted centroid
    of the positive values within ``radius`` voxels."""
    hm = np.asarray(hm, np.float64)
    peak = np.array(np.unravel_index(np.argmax(hm), hm.shape))
    lo, hi = np.maximum(peak - radius, 0), np.minimum(peak + radius + 1, hm.shape)
    win = np.clip(hm[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]], 0, None)
    if win.sum() <= 0:
        return peak.astype(float)
    idx = np.indices(win.shape).reshape(3, -1) + lo[:, None]
    return (idx * win.ravel()).sum(1) / win.sum()


def heatmap_peaks(hm: np.ndarray, k: int, min_distance: float, radius: int = 2) -> list[np.ndarray]:
    """Up to ``k`` sub-voxel peaks (D, H, W) of a heatmap, highest first, each at least
    ``min_distance`` voxels from the ones before (the rest is suppressed around each peak)."""
    hm = np.array(hm, np.float64)
    grid = np.indices(hm.shape).reshape(3, -1).T
    peaks = []
    for _ in range(max(1, int(k))):
        if not np.isfinite(hm).any():
            break
        peak = heatmap_peak(np.where(np.isfinite(hm), hm, -np.inf), radius)
        peaks.append(peak)
        near = np.linalg.norm(grid - peak, axis=1) < min_distance
        hm.reshape(-1)[near] = -np.inf
    return peaks
