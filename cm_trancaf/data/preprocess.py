"""Preprocessing (SPEC "Data pipeline") and its exact inverse.

    source image (any grid, any orientation)
      -> (optional, ``data.antialias``) Gaussian low-pass of the axes the working grid coarsens
      -> resample onto the working grid: identity direction (ITK LPS axes, the one canonical
         orientation; ``data.grid_axes=image``: the image's own axes), configured spacing (3 mm
         CT, SPEC "spacing index 3"), covering the whole source extent; linear for images,
         nearest or one-hot linear + argmax for labels
      -> texture enhancement (SimpleITK): unsharp masking (default) or CLAHE or none
      -> intensity normalisation to [-1, 1]: CT HU window, MRI per-volume percentiles
      -> ROI crop of ``roi_size`` voxels around a centre (padded outside the volume)
    prediction on the ROI
      -> paste back into the working grid -> resample onto the source grid (same size, spacing,
         origin, direction) -> label codes of the dataset.

Why unsharp masking: the paper's "texture enhancement" is unspecified; CLAHE on a 3D volume is
slow in ITK (minutes at 1 mm) and changes the HU scale non-linearly per neighbourhood, which breaks
the fixed CT window. Unsharp masking (``sitk.UnsharpMask``, sigma one working voxel, amount 0.5)
sharpens chamber walls blurred by the downsampling and keeps intensities comparable across cases.
``enhance="clahe"`` and ``"none"`` are there for the ablation.

Arrays are ``(D, H, W) = (z, y, x)``; spacings and centres in mm are ``(x, y, z)``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from ..config import DataConfig
from .io import Geometry

__all__ = ["Prepared", "working_grid", "resample", "resample_labels", "antialias", "enhance", "normalize",
           "prepare", "crop", "paste", "foreground_center", "to_source", "probs_to_source",
           "source_box", "argmax_resample", "index_to_mm",
           "mm_to_index"]

IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


@dataclass
class Prepared:
    """A case on the working grid, with what is needed to go back to its source grid."""
    image: np.ndarray            # (D, H, W) float32 in [-1, 1]
    label: np.ndarray | None     # (D, H, W) uint8 classes, or None
    grid: Geometry               # working grid (``data.grid_axes``)
    source: Geometry             # the input's grid
    case_id: str = ""


def working_grid(image: sitk.Image, spacing: tuple[float | None, ...] | None,
                 axes: str = "world", fit_slices: int = 0,
                 fit_max_mm: float = 0.0) -> Geometry:
    """Grid at ``spacing`` (mm; None = native) covering ``image``: ``axes`` "world" = identity
    direction, spacing along x y z; "image" = the image's own direction, spacing along its
    column, row and slice axes (``data.grid_axes``).

    ``fit_slices`` N > 0 (``axes="image"`` only; ``data.fit_slice_mm``): a stack longer than N
    slices of ``spacing[2]`` gets a coarser slice spacing, up to ``fit_max_mm``, so that it
    spans N working slices (an ROI N slices deep then holds the whole stack)."""
    if axes not in ("world", "image"):
        raise ValueError(f"data.grid_axes must be world|image, got {axes!r}")
    if fit_slices and axes != "image":
        raise ValueError("data.fit_slice_mm needs data.grid_axes=image (a slice axis)")
    src = Geometry.of(image)
    direction = np.asarray(src.direction).reshape(3, 3)
    sp_src = np.asarray(src.spacing)
    size = np.asarray(src.size, float)
    # native spacing along each grid axis (along world axes: exact for axis-aligned images)
    native = sp_src if axes == "image" else np.abs(direction) @ sp_src
    target = np.array([native[i] if spacing is None or spacing[i] is None else float(spacing[i])
                       for i in range(3)])
    if axes == "image":
        if fit_slices:
            # the stack's length along its slice axis, spread over fit_slices working slices
            target[2] = max(target[2], min(size[2] * sp_src[2] / fit_slices, fit_max_mm))
        n = np.maximum(1, np.ceil(size * sp_src / target - 1e-4)).astype(int)
        centre = np.asarray(src.origin) + direction @ ((size - 1) / 2 * sp_src)
        origin = centre - direction @ ((n - 1) / 2 * target)
        return Geometry(tuple(int(v) for v in n), tuple(float(v) for v in target),
                        tuple(float(v) for v in origin), src.direction)
    corners = np.array([[i, j, k] for i in (-0.5, size[0] - 0.5) for j in (-0.5, size[1] - 0.5)
                        for k in (-0.5, size[2] - 0.5)])
    world = np.asarray(src.origin) + (corners * sp_src) @ direction.T
    lo, hi = world.min(0), world.max(0)
    n = np.maximum(1, np.ceil((hi - lo) / target - 1e-4)).astype(int)
    # centre the new grid on the old extent
    origin = (lo + hi) / 2 - (n - 1) / 2 * target
    return Geometry(tuple(int(v) for v in n), tuple(float(v) for v in target),
                    tuple(float(v) for v in origin), IDENTITY)


def resample(image: sitk.Image, grid: Geometry, interp=sitk.sitkLinear,
             default: float = 0.0) -> sitk.Image:
    """Resample ``image`` onto ``grid`` (identity transform, physical space)."""
    return sitk.Resample(image, grid.reference(), sitk.Transform(), interp, float(default),
                         image.GetPixelID())


def argmax_resample(channels, grid: Geometry) -> np.ndarray:
    """Argmax over classes of per-class maps resampled linearly onto ``grid``: ``channels`` yields
    (class index, float32 image); voxels outside a map read 1 for class 0 (background), else 0.
    One channel in memory at a time (a running maximum), so the cost is one float per voxel."""
    best = best_p = None
    for k, channel in channels:
        p = sitk.GetArrayFromImage(resample(channel, grid, sitk.sitkLinear, 1.0 if k == 0 else 0.0))
        if best is None:
            best, best_p = np.full(p.shape, k, np.uint8), p
        else:
            better = p > best_p
            best[better], best_p = k, np.where(better, p, best_p)
    return best


def resample_labels(label: sitk.Image, grid: Geometry, num_classes: int,
                    mode: str = "nearest") -> sitk.Image:
    """Resample a class map: nearest neighbour, or one-hot linear + argmax (smoother when coarser)."""
    if mode == "nearest":
        return resample(sitk.Cast(label, sitk.sitkUInt8), grid, sitk.sitkNearestNeighbor, 0)
    if mode != "linear":
        raise ValueError(f"label resampling mode must be nearest|linear, got {mode!r}")
    arr = sitk.GetArrayViewFromImage(label)

    def onehot(k):
        img = sitk.GetImageFromArray((arr == k).astype(np.float32))
        img.CopyInformation(label)
        return img
    out = sitk.GetImageFromArray(argmax_resample(((k, onehot(k)) for k in range(num_classes)), grid))
    grid.apply(out)
    return out


FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))     # 2.355: a Gaussian's FWHM / sigma


def antialias_sigmas(source_spacing, target_spacing) -> np.ndarray:
    """Gaussian sigma (mm) per axis that brings a grid of spacing s to a resolution (FWHM) of t:
    FWHM_added = sqrt(t^2 - s^2), 0 where the target is not coarser."""
    s, t = np.asarray(source_spacing, float), np.asarray(target_spacing, float)
    return np.sqrt(np.maximum(t ** 2 - s ** 2, 0.0)) / FWHM_PER_SIGMA


def antialias(image: sitk.Image, target_spacing, axes: str = "world") -> sitk.Image:
    """Low-pass ``image`` before resampling it onto a grid of ``target_spacing`` (mm): a Gaussian
    per axis (:func:`antialias_sigmas`, in physical units), along the image's own axes. On a
    world grid (``axes`` "world") the target spacing of an oblique image's axis is that of the
    nearest world axis (largest direction cosine); on an "image" grid it is the axis's own."""
    target = np.asarray(target_spacing, float)
    if axes == "world":
        direction = np.asarray(image.GetDirection(), float).reshape(3, 3)
        target = target[np.argmax(np.abs(direction), axis=0)]   # image axis i ~ world axis
    sigma = antialias_sigmas(image.GetSpacing(), target)
    out = image
    for axis in np.flatnonzero(sigma > 0):    # axes the target is not coarser along stay as they are
        smooth = sitk.RecursiveGaussianImageFilter()
        smooth.SetDirection(int(axis))
        smooth.SetSigma(float(sigma[axis]))
        out = smooth.Execute(out)
    return out


def enhance(image: sitk.Image, cfg: DataConfig) -> sitk.Image:
    """Texture enhancement (SPEC): unsharp masking | CLAHE | none, on the working grid."""
    if cfg.enhance == "none":
        return image
    if cfg.enhance == "unsharp":
        s = float(cfg.enhance_sigma_mm)
        return sitk.UnsharpMask(image, [s, s, s], float(cfg.enhance_amount), 0.0, False)
    if cfg.enhance == "clahe":
        radius = [max(1, int(round(20.0 / sp))) for sp in image.GetSpacing()]  # ~20 mm blocks
        return sitk.AdaptiveHistogramEqualization(image, radius, alpha=0.3, beta=0.3)
    raise ValueError(f"data.enhance must be none|unsharp|clahe, got {cfg.enhance!r}")


def histogram_match(image: sitk.Image, reference: sitk.Image, levels: int = 256,
                    match_points: int = 15, threshold_at_mean: bool = True) -> sitk.Image:
    """``image``'s intensities mapped so that its histogram matches ``reference``'s at
    ``match_points`` quantiles, piecewise linear in between (SimpleITK's HistogramMatching, Nyul
    et al. 2000); ``threshold_at_mean`` leaves the voxels below each volume's mean (background)
    out of both histograms. Geometry unchanged; float32. The intensity-only baseline of the MTN."""
    f = sitk.HistogramMatchingImageFilter()
    f.SetNumberOfHistogramLevels(levels)
    f.SetNumberOfMatchPoints(match_points)
    f.SetThresholdAtMeanIntensity(threshold_at_mean)
    return f.Execute(sitk.Cast(image, sitk.sitkFloat32), sitk.Cast(reference, sitk.sitkFloat32))


def normalize(arr: np.ndarray, modality: str, cfg: DataConfig) -> np.ndarray:
    """CT: HU clipped to ``ct_window`` and scaled to [-1, 1]; MRI: percentiles -> [-1, 1]."""
    if modality == "ct":
        lo, hi = cfg.ct_window
    elif modality == "mr":
        lo, hi = np.percentile(arr, cfg.mr_percentiles)
        if hi <= lo:
            hi = lo + 1.0
    else:
        raise ValueError(f"modality must be ct|mr, got {modality!r}")
    out = (np.clip(arr, lo, hi) - lo) / (hi - lo) * 2.0 - 1.0
    return out.astype(np.float32)


def prepare(image: sitk.Image, label: sitk.Image | None, cfg: DataConfig, modality: str,
            num_classes: int, case_id: str = "", label_mode: str = "nearest",
            enhanced: bool = False) -> Prepared:
    """Source image (+ class map) -> :class:`Prepared` on the working grid. ``enhanced``: the
    image is already enhanced on this working grid (G_c's output), so it is not enhanced again
    (and its resampling onto its own grid is the identity)."""
    image = sitk.Cast(image, sitk.sitkFloat32)       # int16 CT straight from a scanner too
    grid = working_grid(image, cfg.spacing, cfg.grid_axes, cfg.roi_size[0] if cfg.fit_slice_mm
                        else 0, cfg.fit_slice_mm)
    background = float(np.min(sitk.GetArrayViewFromImage(image)))
    if cfg.antialias and not enhanced:
        image = antialias(image, grid.spacing, cfg.grid_axes)
    work = resample(image, grid, sitk.sitkLinear, background)
    if not enhanced:
        work = enhance(work, cfg)
    arr = normalize(sitk.GetArrayFromImage(work), modality, cfg)
    lab = None
    if label is not None:
        lab = sitk.GetArrayFromImage(resample_labels(label, grid, num_classes, label_mode))
    return Prepared(arr, lab, grid, Geometry.of(image), case_id)


def crop(arr: np.ndarray, center: np.ndarray, size: tuple[int, int, int],
         fill: float = 0.0, cover_short: bool = False,
         inside: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """ROI of ``size`` around ``center`` (voxel index, D H W); returns (roi, start index).
    ``cover_short``: along an axis where ``arr`` is shorter than the ROI, the ROI is moved (as
    little as needed) to hold the whole axis, so no end slice of a short stack is cut off.
    ``inside``: along an axis at least as long as the ROI, the ROI is moved (as little as
    needed) to lie inside ``arr``: it then holds every voxel of the axis that the centred ROI
    held, and more instead of padding."""
    size = np.asarray(size)
    start = np.round(np.asarray(center, float)).astype(int) - size // 2
    n = np.asarray(arr.shape[:3])
    if cover_short:
        start = np.where(n < size, np.clip(start, n - size, 0), start)
    if inside:
        start = np.where(n >= size, np.clip(start, 0, n - size), start)
    out = np.full(tuple(size) + arr.shape[3:], fill, arr.dtype)
    src_lo = np.maximum(start, 0)
    src_hi = np.minimum(start + size, arr.shape[:3])
    if np.all(src_hi > src_lo):
        dst_lo = src_lo - start
        dst_hi = dst_lo + (src_hi - src_lo)
        out[dst_lo[0]:dst_hi[0], dst_lo[1]:dst_hi[1], dst_lo[2]:dst_hi[2]] = \
            arr[src_lo[0]:src_hi[0], src_lo[1]:src_hi[1], src_lo[2]:src_hi[2]]
    return out, start


def paste(roi: np.ndarray, start: np.ndarray, shape: tuple[int, ...],
          fill: float | np.ndarray = 0) -> np.ndarray:
    """Inverse of :func:`crop`: put ``roi`` at ``start`` in an array of ``shape`` (rest = fill)."""
    out = np.empty(tuple(shape[:3]) + roi.shape[3:], roi.dtype)
    out[...] = fill
    start = np.asarray(start)
    size = np.asarray(roi.shape[:3])
    dst_lo = np.maximum(start, 0)
    dst_hi = np.minimum(start + size, shape[:3])
    if np.all(dst_hi > dst_lo):
        src_lo = dst_lo - start
        src_hi = src_lo + (dst_hi - dst_lo)
        out[dst_lo[0]:dst_hi[0], dst_lo[1]:dst_hi[1], dst_lo[2]:dst_hi[2]] = \
            roi[src_lo[0]:src_hi[0], src_lo[1]:src_hi[1], src_lo[2]:src_hi[2]]
    return out


def foreground_center(label: np.ndarray) -> np.ndarray:
    """Centre (voxel index, D H W) of the label map's foreground; the array centre if empty."""
    idx = np.argwhere(label > 0)
    if len(idx) == 0:
        return (np.asarray(label.shape, float) - 1) / 2
    return idx.mean(0)


def index_to_mm(grid: Geometry, index_dhw: np.ndarray) -> np.ndarray:
    """Voxel index (D, H, W) on ``grid`` -> physical point (x, y, z) mm."""
    direction = np.asarray(grid.direction).reshape(3, 3)
    return np.asarray(grid.origin) + direction @ (np.asarray(index_dhw, float)[::-1]
                                                  * np.asarray(grid.spacing))


def mm_to_index(grid: Geometry, point_xyz: np.ndarray) -> np.ndarray:
    """Physical point (x, y, z) mm -> continuous voxel index (D, H, W) on ``grid``."""
    direction = np.asarray(grid.direction).reshape(3, 3)
    return ((direction.T @ (np.asarray(point_xyz, float) - grid.origin))
            / np.asarray(grid.spacing))[::-1]


def to_source(classes: np.ndarray, prepared: Prepared, num_classes: int,
              mode: str = "nearest") -> sitk.Image:
    """Working-grid class map -> uint8 class image on the source grid (exact size/geometry)."""
    img = sitk.GetImageFromArray(classes.astype(np.uint8))
    prepared.grid.apply(img)
    out = resample_labels(img, prepared.source, num_classes, mode)
    prepared.source.apply(out)
    return out


def source_box(prepared: Prepared, start, shape) -> tuple[np.ndarray, np.ndarray]:
    """Index range [lo, hi) (x, y, z) of the source voxels whose centres lie inside the extent of
    the working-grid block ``shape`` (D, H, W) at ``start`` (D, H, W); empty when lo >= hi."""
    src = prepared.source
    sp, direction = np.asarray(src.spacing), np.asarray(src.direction).reshape(3, 3)
    lo = np.asarray(start)[::-1] - 0.5                                # working index, x y z
    hi = lo + np.asarray(shape)[::-1]
    corners = np.array([index_to_mm(prepared.grid, np.array([c, b, a]))
                        for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])])
    index = ((corners - np.asarray(src.origin)) @ direction) / sp     # continuous source index
    lo = np.maximum(np.ceil(index.min(0) - 1e-6), 0).astype(int)
    hi = np.minimum(np.floor(index.max(0) + 1e-6) + 1, src.size).astype(int)
    return lo, hi


def probs_to_source(probs: np.ndarray, start, prepared: Prepared) -> sitk.Image:
    """ROI class probabilities (D, H, W, K) at working-grid index ``start`` -> uint8 class image
    on the source grid (exact size and geometry).

    Each class's probability is resampled linearly onto the source voxels inside the ROI's
    extent and the argmax taken there (as nnU-Net does), instead of resampling the working-grid
    argmax by nearest neighbour: the structures' boundaries fall between working voxels, which
    matters for thin ones (the myocardium, 2-3 working voxels thick at 3 mm). Source voxels
    outside the ROI are background.

    Only the box of the ROI's foreground (argmax > 0), grown by one working voxel, is resampled:
    where the 8 working voxels around a point all have background as their argmax, the weighted
    mean of their probabilities has it too (linear weights are >= 0), so the result is exact."""
    src = prepared.source
    out = np.zeros(tuple(src.size)[::-1], np.uint8)
    # outside the ROI is background (probability 1): one voxel of it around the ROI, so that the
    # ROI's edge is interpolated towards background, as in a whole-volume probability map
    background = np.eye(probs.shape[-1], dtype=np.float32)[0]
    probs = np.pad(probs, [(1, 1)] * 3 + [(0, 0)])
    probs[[0, -1], :, :], probs[:, [0, -1], :], probs[:, :, [0, -1]] = (background,) * 3
    start = np.asarray(start) - 1
    fg = np.argwhere(np.argmax(probs, -1) > 0)
    if len(fg) == 0:
        img = sitk.GetImageFromArray(out)
        return src.apply(img)
    a = np.maximum(fg.min(0) - 1, 0)
    b = np.minimum(fg.max(0) + 2, probs.shape[:3])
    probs = probs[a[0]:b[0], a[1]:b[1], a[2]:b[2]]
    start = np.asarray(start) + a
    lo, hi = source_box(prepared, start, probs.shape[:3])
    if np.all(hi > lo):
        box = Geometry(tuple(int(v) for v in hi - lo), src.spacing, tuple(
            float(v) for v in np.asarray(src.origin) + np.asarray(src.direction).reshape(3, 3)
            @ (lo * np.asarray(src.spacing))), src.direction)
        roi_origin = tuple(float(v) for v in index_to_mm(prepared.grid, start))

        def channels():
            for k in range(probs.shape[-1]):
                img = sitk.GetImageFromArray(np.ascontiguousarray(probs[..., k], np.float32))
                img.SetSpacing(prepared.grid.spacing)
                img.SetOrigin(roi_origin)
                img.SetDirection(prepared.grid.direction)
                yield k, img
        out[lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]] = argmax_resample(channels(), box)
    img = sitk.GetImageFromArray(out)
    src.apply(img)
    return img
