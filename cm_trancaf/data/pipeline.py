"""``tf.data`` training pipeline: ROI patches with on-the-fly 3D augmentation.

Each sample is drawn with its own generator ``default_rng([seed, i])`` where ``i`` counts samples
from the start of training, so the data order is the same however many parallel calls run, and a
resumed run continues with sample ``step * batch``. One resampling per sample: the ROI grid is
mapped into the working volume by  ``x = centre + shift + A (o - size // 2 + u(o))``  with
``A = S^-1 R Z F S`` (S spacing, R rotation about the three axes, Z scale, F flips) and ``u`` an
optional smooth elastic displacement of the ROI grid (cubic B-spline, ``elastic_offsets``),
sampled linearly for the image and by nearest neighbour for the label.

Batches: ``image (B, D, H, W, 1) float32`` in [-1, 1] and ``label (B, D, H, W, K) float32``
one-hot (K classes incl. background). Arrays are ``(D, H, W)``; spacings ``(x, y, z)``.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf
from scipy import ndimage, stats

from ..config import AugmentConfig
from .phantom import random_rotation
from .preprocess import Prepared, foreground_center

__all__ = ["augment_matrix", "elastic_offsets", "bspline_weights", "augment_appearance",
           "sample_roi", "roi_dataset", "patch_dataset", "localizer_input", "localizer_smooth",
           "rank_scale", "localizer_dataset", "heatmap"]


def augment_matrix(rng: np.random.Generator, aug: AugmentConfig, spacing_xyz) -> np.ndarray:
    """Voxel-space (D, H, W) matrix of a random rotation, scaling and flip done in mm."""
    sp = np.asarray(spacing_xyz, float)[::-1]            # (D, H, W) order
    rot = random_rotation(rng, aug.rotate_deg)
    zoom = np.diag(rng.uniform(1 - aug.scale, 1 + aug.scale, 3))
    flip = np.diag(np.where(rng.random(3) < aug.flip_prob, -1.0, 1.0))
    return np.diag(1 / sp) @ rot @ zoom @ flip @ np.diag(sp)


def bspline_weights(n_out: int, n_points: int) -> np.ndarray:
    """(n_out, n_points) cubic B-spline weights: control point k sits at output voxel
    k (n_out - 1) / (n_points - 1); each row is non-negative and sums to at most 1."""
    u = np.arange(n_out) * (n_points - 1) / max(n_out - 1, 1)        # output voxel -> knot units
    t = np.abs(u[:, None] - np.arange(n_points)[None, :])
    return np.where(t < 1, 2 / 3 - t ** 2 + t ** 3 / 2,
                    np.where(t < 2, (2 - t) ** 3 / 6, 0.0))


def elastic_offsets(rng: np.random.Generator, size, spacing_xyz, max_mm: float,
                    n_points: int) -> np.ndarray:
    """Smooth random displacement ``u`` of an ROI grid: (3, D, H, W) in voxels of each axis.

    Each of the n_points^3 control points moves by a uniform draw in [-max_mm, max_mm] mm per axis;
    the field between them is their cubic B-spline, so no voxel moves more than max_mm along an
    axis (Payer et al.'s MM-WHS augmentation: 8^3 points, 15 mm)."""
    if n_points < 4:
        raise ValueError(f"elastic_points must be >= 4, got {n_points}")
    sp = np.asarray(spacing_xyz, float)[::-1]                       # (D, H, W) order, mm
    w = [bspline_weights(int(s), n_points) for s in size]
    coef = rng.uniform(-max_mm, max_mm, (3, n_points, n_points, n_points))   # mm
    u = np.einsum("ai,bj,ck,xijk->xabc", w[0], w[1], w[2], coef, optimize=True)
    return (u / sp[:, None, None, None]).astype(np.float32)


def sample_roi(image: np.ndarray, label: np.ndarray | None, center, size, matrix=None,
               shift=None, fill: float = -1.0,
               offsets=None) -> tuple[np.ndarray, np.ndarray | None]:
    """Resample an ROI of ``size`` at ``center`` (voxel index) through ``matrix`` (one pass);
    ``offsets`` (3, D, H, W), a displacement of the ROI grid before ``matrix`` (elastic)."""
    size = np.asarray(size)
    matrix = np.eye(3) if matrix is None else matrix
    # ROI voxel size//2 sits on `center`, as in preprocess.crop
    o = np.indices(tuple(size), dtype=np.float32).reshape(3, -1) - (size // 2)[:, None]
    if offsets is not None:
        o = o + np.asarray(offsets, np.float32).reshape(3, -1)
    x = matrix.astype(np.float32) @ o + (np.asarray(center, np.float32) +
                                         (0 if shift is None else np.asarray(shift)))[:, None]
    img = ndimage.map_coordinates(image, x, order=1, mode="constant", cval=fill)
    img = img.reshape(tuple(size)).astype(np.float32)
    lab = None
    if label is not None:
        lab = ndimage.map_coordinates(label, x, order=0, mode="constant", cval=0)
        lab = lab.reshape(tuple(size)).astype(np.uint8)
    return img, lab


def _augment_intensity(img, rng, amount):
    if amount <= 0:
        return img
    return img * rng.uniform(1 - amount, 1 + amount) + rng.uniform(-amount, amount)


def augment_appearance(img: np.ndarray, rng: np.random.Generator,
                       aug: AugmentConfig) -> np.ndarray:
    """nnU-Net's appearance transforms on one ROI ``(D, H, W)``, each drawn with its probability
    (``AugmentConfig.gamma_prob`` ...); all probabilities 0 returns ``img`` unchanged."""
    img = img.astype(np.float32)
    if rng.random() < aug.gamma_prob:           # gamma on [min, max], then mean and std restored
        lo, hi, mean, std = img.min(), img.max(), img.mean(), img.std()
        if hi > lo:
            g = rng.uniform(*aug.gamma_range)
            img = ((img - lo) / (hi - lo)) ** g * (hi - lo) + lo
            img = (img - img.mean()) / max(float(img.std()), 1e-6) * std + mean
    if rng.random() < aug.contrast_prob:        # contrast about the mean, range preserved
        lo, hi, mean = img.min(), img.max(), img.mean()
        img = np.clip((img - mean) * rng.uniform(*aug.contrast_range) + mean, lo, hi)
    if rng.random() < aug.noise_prob:
        img = img + rng.normal(0.0, rng.uniform(0.0, aug.noise_std), img.shape)
    if rng.random() < aug.blur_prob:            # in-plane: the slice axis is often 3-6x coarser
        img = ndimage.gaussian_filter(img, (0.0,) + (rng.uniform(*aug.blur_sigma),) * 2)
    return img.astype(np.float32)


def roi_dataset(cases: list[Prepared], roi_size, num_classes: int, aug: AugmentConfig,
                batch_size: int, seed: int, start: int = 0, augment: bool = True,
                weights=None) -> tf.data.Dataset:
    """Infinite dataset of augmented ROI batches around each case's heart centre; each sample's
    case is drawn uniformly, or with probabilities ``weights`` (one per case, sum 1)."""
    if not cases or any(c.label is None for c in cases):
        raise ValueError("roi_dataset needs at least one case, all with labels")
    if weights is not None:
        weights = np.asarray(weights, np.float64)
        if weights.shape != (len(cases),) or (weights < 0).any() or abs(weights.sum() - 1) > 1e-6:
            raise ValueError(f"weights must be {len(cases)} probabilities summing to 1")
    if augment and aug.elastic_mm > 0 and aug.elastic_points < 4:
        raise ValueError(f"augment.elastic_points must be >= 4 (cubic B-spline), "
                         f"got {aug.elastic_points}")
    centers = [foreground_center(c.label) for c in cases]
    size = tuple(int(s) for s in roi_size)

    def draw(i):
        rng = np.random.default_rng([seed, int(i)])
        k = int(rng.integers(len(cases)) if weights is None else rng.choice(len(cases), p=weights))
        c = cases[k]
        if augment:
            sp = np.asarray(c.grid.spacing)[::-1]
            shift = rng.uniform(-aug.translate_mm, aug.translate_mm, 3) / sp
            m = augment_matrix(rng, aug, c.grid.spacing)
            # drawn only when on, so runs without it keep their exact samples
            u = (elastic_offsets(rng, size, c.grid.spacing, aug.elastic_mm, aug.elastic_points)
                 if aug.elastic_mm > 0 else None)
        else:
            shift, m, u = None, None, None
        center = centers[k]
        if augment and aug.anywhere > 0 and rng.random() < aug.anywhere:   # drawn only when on
            center = rng.uniform(0, np.asarray(c.image.shape[:3]) - 1)   # any voxel, not the heart
        img, lab = sample_roi(c.image, c.label, center, size, m, shift, offsets=u)
        if augment:
            img = augment_appearance(_augment_intensity(img, rng, aug.intensity), rng, aug)
        return img[..., None].astype(np.float32), lab

    def tf_draw(i):
        img, lab = tf.numpy_function(draw, [i], [tf.float32, tf.uint8])
        img = tf.ensure_shape(img, size + (1,))
        lab = tf.one_hot(tf.ensure_shape(lab, size), num_classes, dtype=tf.float32)
        return img, lab

    ds = tf.data.Dataset.range(start, 2 ** 62)
    ds = ds.map(tf_draw, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def patch_dataset(images: list[np.ndarray], patch_size, batch_size: int, seed: int,
                  start: int = 0, fill: float = -1.0, foreground: float = 0.0,
                  threshold: float = -0.8) -> tf.data.Dataset:
    """Random unaligned 3D patches ``(B, d, h, w, 1)`` of whole volumes (MTN: unpaired training),
    random flips; seeded by sample index. With probability ``foreground`` a patch is centred on a
    voxel above ``threshold`` (body tissue, not air or lung), else anywhere in the volume."""
    size = tuple(int(s) for s in patch_size)
    inside = [np.argwhere(img > threshold) if foreground > 0 else None for img in images]

    def draw(i):
        rng = np.random.default_rng([seed, int(i)])
        k = int(rng.integers(len(images)))
        img = images[k]
        center = rng.uniform(0, 1, 3) * (np.asarray(img.shape) - 1)
        if rng.random() < foreground and len(inside[k]):
            center = inside[k][int(rng.integers(len(inside[k])))].astype(float)
        patch, _ = sample_roi(img, None, center, size, fill=fill)
        for ax in range(3):
            if rng.random() < 0.5:
                patch = np.flip(patch, ax)
        return np.ascontiguousarray(patch[..., None], np.float32)

    ds = tf.data.Dataset.range(start, 2 ** 62)
    ds = ds.map(lambda i: tf.ensure_shape(tf.numpy_function(draw, [i], tf.float32), size + (1,)),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def heatmap(size, center, sigma_vox) -> np.ndarray:
    """Gaussian heatmap (peak 1) at ``center`` (voxel index) on a grid of ``size``."""
    g = np.indices(tuple(size), dtype=np.float32)
    d2 = sum((g[a] - center[a]) ** 2 for a in range(3))
    return np.exp(-d2 / (2 * sigma_vox ** 2)).astype(np.float32)


def localizer_input(case: Prepared, size, spacing_mm: float, center=None, matrix=None,
                    smooth: np.ndarray | None = None, ranks: bool = False):
    """Coarse view (``size`` voxels at ``spacing_mm``) of the working volume around ``center``
    (default: the volume centre); returns (image, zoom matrix used, centre). ``smooth``: the
    volume already low-passed for ``spacing_mm`` (:func:`localizer_smooth`, with the same
    ``ranks``), for several views."""
    sp = np.asarray(case.grid.spacing)[::-1]
    zoom = np.diag(spacing_mm / sp)
    m = zoom if matrix is None else matrix @ zoom
    if center is None:
        center = (np.asarray(case.image.shape) - 1) / 2
    if smooth is None:
        smooth = localizer_smooth(case, spacing_mm, ranks)
    img, _ = sample_roi(smooth, None, center, size, m)
    return img, m, np.asarray(center, float)


def localizer_smooth(case: Prepared, spacing_mm: float, ranks: bool = False) -> np.ndarray:
    """The working volume low-passed before sampling it at ``spacing_mm``; with ``ranks``, each
    voxel then replaced by its rank among the volume's voxels, scaled to [-1, 1] (ties share
    their mean rank), so a monotone change of the image's intensities changes nothing."""
    sp = np.asarray(case.grid.spacing)[::-1]
    smooth = ndimage.gaussian_filter(case.image, np.maximum(0.0, 0.4 * (spacing_mm / sp - 1)))
    return rank_scale(smooth) if ranks else smooth


def rank_scale(volume: np.ndarray) -> np.ndarray:
    """Each voxel's rank among ``volume``'s voxels (ties: their mean rank), scaled to [-1, 1]."""
    r = stats.rankdata(volume, method="average").reshape(volume.shape)
    return (2 * (r - 1) / max(volume.size - 1, 1) - 1).astype(np.float32)


def localizer_dataset(cases: list[Prepared], size, spacing_mm: float, sigma_mm: float,
                      aug: AugmentConfig, batch_size: int, seed: int, start: int = 0,
                      jitter_mm: float = 30.0, intensity: float = 0.0, ranks: bool = False):
    """Batches ``(coarse image (B, d, h, w, 1), heatmap (B, d, h, w, 1))`` of the heart centre;
    each view is centred up to ``jitter_mm`` off the volume centre (as a test volume's heart is),
    its intensities scaled and shifted by up to ``intensity`` (``_augment_intensity``);
    ``ranks``: the views read intensity ranks (:func:`localizer_smooth`)."""
    size = tuple(int(s) for s in size)
    targets = [foreground_center(c.label) for c in cases]
    # the low-pass (and the ranks' sort) is done once per case, not once per view
    cache = {}

    def smoothed(k):
        if k not in cache:
            cache[k] = localizer_smooth(cases[k], spacing_mm, ranks)
        return cache[k]

    def draw(i):
        rng = np.random.default_rng([seed, int(i)])
        k = int(rng.integers(len(cases)))
        c = cases[k]
        sp = np.asarray(c.grid.spacing)[::-1]
        center = (np.asarray(c.image.shape) - 1) / 2 + rng.uniform(-jitter_mm, jitter_mm, 3) / sp
        m = augment_matrix(rng, AugmentConfig(scale=aug.scale, rotate_deg=aug.rotate_deg,
                                              flip_prob=0.0), c.grid.spacing)
        img, mz, ctr = localizer_input(c, size, spacing_mm, center, m, smooth=smoothed(k))
        img = _augment_intensity(img, rng, intensity)
        # heart centre in coarse coordinates: invert x = ctr + mz (o - o_c)
        o = np.linalg.solve(mz, targets[k] - ctr) + np.asarray(size) // 2
        hm = heatmap(size, o, sigma_mm / spacing_mm)
        return img[..., None], hm[..., None]

    def tf_draw(i):
        img, hm = tf.numpy_function(draw, [i], [tf.float32, tf.float32])
        return tf.ensure_shape(img, size + (1,)), tf.ensure_shape(hm, size + (1,))

    ds = tf.data.Dataset.range(start, 2 ** 62)
    ds = ds.map(tf_draw, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
