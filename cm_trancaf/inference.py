"""The cascade's inference: what training validates with and what ``predict`` runs.

    heart centre   locate(localizer, prepared case)             localizer heatmap peak
    ROI            segment_roi(maunet, scn, roi)                MAUNet, then SCN (D, H, W, K)
    whole volume   Cascade.load(run or export).predict_image     working grid -> localizer ->
                   ROI (re-centred on the first segmentation) -> probabilities pasted back onto
                   the input's exact grid -> label codes
    MTN            load_generator(run), translate_volume(G_c, volume)   sliding window, no seams

Above the data, models and checkpoint layers; below training (which validates with ``locate`` and
``segment_roi``) and the stages ``predict``, ``translate`` and ``export``.
"""
from __future__ import annotations

import contextlib
import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import keras
import numpy as np
import SimpleITK as sitk
import tensorflow as tf
from scipy import ndimage

from .checkpoint import restore
from .config import ExperimentConfig, apply_overrides, load_config
from .data.datasets import LabelSet, get_labelset
from .data.pipeline import localizer_input, localizer_smooth
from .data.preprocess import (Prepared, crop, foreground_center, index_to_mm, paste, prepare,
                              probs_to_source, to_source)
from .models.localizer import build_localizer, heatmap_peak, heatmap_peaks
from .models.maunet import build_maunet
from .models.mtn import build_mtn
from .models.scn import build_scn
from .utils import UserError

__all__ = ["PRECISIONS", "precision_policy", "check_precision", "bf16_conv_gradient_ok",
           "float16_kernels_exist", "locate", "view_peaks", "segment_roi",
           "center_errors_mm", "Cascade", "Ensemble", "is_export", "load_exported", "load_generator",
           "translate_volume", "anatomy_monitor", "denormalize"]

PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")


@contextlib.contextmanager
def precision_policy(name: str):
    """Keras' global dtype policy while the models are built, restored afterwards."""
    _check_known(name)
    old = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(old)


def _check_known(precision: str) -> None:
    if precision not in PRECISIONS:
        raise UserError(f"run.precision must be one of {PRECISIONS}, got {precision!r}")


# The probe of bf16_conv_gradient_ok: a batch of 2 inputs two voxels deep, 8 channels, 3^3 kernel.
BF16_PROBE_SHAPE = (2, 2, 8, 8, 8)
BF16_PROBE_TOL = 0.05           # bfloat16 rounding gives ~0.4 % relative error; the bug ~100 % or NaN


def bf16_conv_gradient_ok(trials: int = 3) -> bool:
    """Whether this machine's bfloat16 Conv3D kernel gradient (the gradient of a 3^3 "same"
    convolution with respect to its kernel) agrees with float32 on inputs two voxels deep.

    TensorFlow 2.21's CPU kernel (oneDNN) does not: for a depth of 2 it returns NaN, Inf or values
    ~100 % off (2026-12-03, AMD EPYC with AVX512_BF16; at depths 1, 3, 4 and 16, and for H or W = 2,
    the error is the 0.4 % of bfloat16 rounding; float32 and the forward pass are right). That is
    the depth of the `cmr_cpu` MAUNet's deepest level (16 slices pooled 3 times): `train-seg
    --preset cmr_cpu --precision mixed_bfloat16` met a non-finite gradient at step 3, and where the
    values stay finite they would corrupt training silently. The wrong values vary from call to
    call, so ``trials`` probes are made."""
    rng = np.random.default_rng(0)
    for _ in range(trials):
        x = rng.normal(size=BF16_PROBE_SHAPE)
        k = 0.05 * rng.normal(size=(3, 3, 3) + BF16_PROBE_SHAPE[-1:] * 2)
        dy = rng.normal(size=BF16_PROBE_SHAPE)
        grads = []
        for dtype in (tf.float32, tf.bfloat16):
            kernel = tf.constant(k, dtype)
            with tf.GradientTape() as tape:
                tape.watch(kernel)
                y = tf.nn.conv3d(tf.constant(x, dtype), kernel, [1] * 5, "SAME")
            g = tape.gradient(y, kernel, output_gradients=tf.constant(dy, dtype))
            grads.append(tf.cast(g, tf.float64).numpy())
        ref, got = grads
        err = np.abs(got - ref).max() / np.abs(ref).max()
        if not np.isfinite(err) or err > BF16_PROBE_TOL:
            return False
    return True


def float16_kernels_exist() -> bool:
    """Whether the default device runs float16 Conv3D and MaxPool3D (GPUs; TensorFlow's CPU
    kernels are float32 / bfloat16 only)."""
    x = tf.zeros((1, 2, 2, 2, 1), tf.float16)
    try:
        tf.nn.max_pool3d(tf.nn.conv3d(x, tf.zeros((1, 1, 1, 1, 1), tf.float16), [1] * 5, "SAME"),
                         2, 2, "VALID")
    except (tf.errors.NotFoundError, tf.errors.InvalidArgumentError,
            tf.errors.UnimplementedError):
        return False
    return True


def check_precision(precision: str, training: bool) -> None:
    """One clear error, before anything is written, for a precision this machine cannot compute
    with: mixed_float16 without float16 kernels (a CPU), and for training mixed_bfloat16 where
    :func:`bf16_conv_gradient_ok` fails (TensorFlow's CPU kernel; prediction, forward only, is
    right)."""
    _check_known(precision)
    if precision == "mixed_float16" and not float16_kernels_exist():
        raise UserError("precision mixed_float16 needs a GPU: TensorFlow has no float16 Conv3D / "
                        "MaxPool3D kernels on this machine's CPU; use float32 (or "
                        "mixed_bfloat16 to predict)")
    if training and precision == "mixed_bfloat16" and not bf16_conv_gradient_ok():
        raise UserError(
            "run.precision=mixed_bfloat16: this machine's bfloat16 Conv3D kernel gradient is "
            "wrong (TensorFlow's CPU kernel returns NaN or ~100 % errors for inputs two voxels "
            "deep, e.g. cmr_cpu's deepest MAUNet level); train in float32 here, or use "
            "mixed_bfloat16 on a GPU")


def locate(localizer, case: Prepared, cfg: ExperimentConfig, k: int = 1):
    """Heart centre (working-grid index, D H W) predicted by the localizer; with ``k`` > 1 a list
    of up to ``k`` candidate centres, highest heatmap peak first, ``infer.candidate_separation_mm``
    apart. ``infer.localizer_views`` = 7: the per-axis median of the peaks of the view centred on
    the volume and of six views shifted by +-``infer.localizer_shift_mm`` along each axis."""
    if k <= 1:
        check_infer(cfg)
        return np.median(view_peaks(localizer, case, cfg, cfg.infer.localizer_views), axis=0)
    size = cfg.localizer.size
    img, m, ctr = localizer_input(case, size, cfg.localizer.spacing_mm,
                                  ranks=cfg.localizer.ranks)
    hm = np.asarray(localizer(img[None, ..., None], training=False))[0, ..., 0]
    apart = cfg.infer.candidate_separation_mm / cfg.localizer.spacing_mm
    return [ctr + m @ (p - np.asarray(size) // 2) for p in heatmap_peaks(hm, k, apart)]


def check_infer(cfg: ExperimentConfig) -> None:
    """One clear error for an inference option out of its range."""
    if cfg.infer.localizer_views not in (1, 7):
        raise UserError(f"infer.localizer_views must be 1 or 7, got {cfg.infer.localizer_views}")
    if cfg.infer.paste_back not in ("probs", "nearest"):
        raise UserError(f"infer.paste_back must be probs|nearest, got {cfg.infer.paste_back!r}")
    if cfg.infer.shift_views not in (1, 7):
        raise UserError(f"infer.shift_views must be 1 or 7, got {cfg.infer.shift_views}")
    if cfg.infer.shift_mm <= 0:
        raise UserError(f"infer.shift_mm must be > 0, got {cfg.infer.shift_mm}")
    if cfg.infer.extend_tiles < 0:
        raise UserError(f"infer.extend_tiles must be >= 0, got {cfg.infer.extend_tiles}")
    if cfg.infer.refine_passes < 0:
        raise UserError(f"infer.refine_passes must be >= 0, got {cfg.infer.refine_passes}")
    if cfg.infer.extend_step_mm <= 0:
        raise UserError(f"infer.extend_step_mm must be > 0, got {cfg.infer.extend_step_mm}")


def view_peaks(localizer, case: Prepared, cfg: ExperimentConfig, views: int = 1) -> list:
    """The heatmap peak (working-grid index, D H W) of each localizer view: the view centred on
    the volume, and with ``views`` = 7 six more shifted by +-``infer.localizer_shift_mm`` along
    each axis (one batch)."""
    size, spacing = cfg.localizer.size, cfg.localizer.spacing_mm
    ctr = (np.asarray(case.image.shape) - 1) / 2
    centres = [ctr]
    if views > 1:
        shift = cfg.infer.localizer_shift_mm / np.asarray(case.grid.spacing)[::-1]   # D H W
        centres += [ctr + s * shift * e for e in np.eye(3) for s in (-1, 1)]
    smooth = localizer_smooth(case, spacing, cfg.localizer.ranks)
    imgs, mats = zip(*[localizer_input(case, size, spacing, c, smooth=smooth)[:2] for c in centres])
    hms = np.asarray(localizer(np.stack(imgs)[..., None], training=False))[..., 0]
    return [c + m @ (heatmap_peak(h) - np.asarray(size) // 2)
            for h, m, c in zip(hms, mats, centres)]


def segment_roi(maunet, scn, roi: np.ndarray, clock: Callable | None = None) -> np.ndarray:
    """Class probabilities (D, H, W, K) of an ROI image (D, H, W): MAUNet, then SCN if given.
    ``clock(name)``, if given, is called after "maunet" and "scn" (``predict --profile``)."""
    x = roi[None, ..., None].astype(np.float32)
    probs = maunet(x, training=False)
    if clock is not None:
        np.asarray(probs)                                   # wait for the result
        clock("maunet")
    if scn is not None:
        probs = scn(probs, x, training=False)
    probs = np.asarray(probs, np.float32)[0]
    if clock is not None:
        clock("scn")
    return probs


def _voxels(mm: float, prep: Prepared) -> np.ndarray:
    """``mm`` as a whole number of working voxels along (D, H, W), at least one."""
    return np.maximum(1, np.round(mm / np.asarray(prep.grid.spacing)[::-1])).astype(int)


def shifted_average(maunet, scn, prep: Prepared, start, probs: np.ndarray,
                    shift_mm: float) -> np.ndarray:
    """``probs`` (D, H, W, K) of the ROI at ``start`` averaged with the probabilities of six ROIs
    shifted by +-``shift_mm`` (rounded to voxels, at least one) along each axis, each voxel over
    the ROIs that hold it (test-time shifts, ``infer.shift_views`` = 7)."""
    size = np.asarray(probs.shape[:3])
    step = _voxels(shift_mm, prep)
    total, count = probs.astype(np.float64), np.ones(tuple(size) + (1,))
    for d in (s * step * e for e in np.eye(3, dtype=int) for s in (-1, 1)):
        roi, _ = crop(prep.image, np.asarray(start) + size // 2 + d, tuple(size), fill=-1.0)
        shifted = segment_roi(maunet, scn, roi)           # its voxel j is the ROI's voxel j + d
        lo, hi = np.maximum(d, 0), size + np.minimum(d, 0)
        here = tuple(slice(a, b) for a, b in zip(lo, hi))
        there = tuple(slice(a - o, b - o) for a, b, o in zip(lo, hi, d))
        total[here] += shifted[there]
        count[here] += 1
    return (total / count).astype(np.float32)


def blend_tiles(tiles: dict, size) -> tuple[np.ndarray, np.ndarray]:
    """Start and probabilities (D', H', W', K) of the box holding ``tiles`` ({key: (start,
    probs)}, each probs of ROI ``size``): each voxel the tiles' weighted mean (:func:`_window`,
    high in a tile's middle), background where no tile holds it; one tile is returned as it is."""
    if len(tiles) == 1:
        return next(iter(tiles.values()))
    size = np.asarray(size)
    starts = np.array([t[0] for t in tiles.values()])
    lo, hi = starts.min(0), starts.max(0) + size
    k = next(iter(tiles.values()))[1].shape[-1]
    total = np.zeros(tuple(hi - lo) + (k,), np.float64)
    weight = np.zeros(tuple(hi - lo) + (1,), np.float64)
    w = _window(size)[..., None]
    for start, probs in tiles.values():
        box = tuple(slice(a, a + s) for a, s in zip(start - lo, size))
        total[box] += w * probs
        weight[box] += w
    empty = weight[..., 0] == 0
    total[empty] = np.eye(k)[0]                                # no tile: background
    weight[empty] = 1.0
    return lo, (total / weight).astype(np.float32)


def extend_tiles(maunet, scn, prep: Prepared, start, probs: np.ndarray, max_tiles: int,
                 step_mm: float, inside: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Follow a heart larger than the ROI (``infer.extend_tiles``). While the blended heart
    (argmax > 0) touches a face of a tile and the volume goes on beyond that face, the tile moved
    by ``step_mm`` (at least one voxel, at most half the ROI) across it (kept inside the volume
    with ``inside``) is segmented too, up to ``max_tiles`` tiles besides the ROI at ``start``.
    Returns the start and probabilities (D', H', W', K) of the box of all tiles, blended by
    :func:`blend_tiles`."""
    size = np.asarray(probs.shape[:3])
    n = np.asarray(prep.image.shape[:3])
    step = np.minimum(_voxels(step_mm, prep), size // 2)
    tiles = {(0, 0, 0): (np.asarray(start), probs)}
    queue = [(0, 0, 0)]
    while queue and len(tiles) <= max_tiles:
        key = queue.pop(0)
        t0 = tiles[key][0]
        lo, merged = blend_tiles(tiles, size)
        fg = np.argmax(merged, -1) > 0
        fg = fg[tuple(slice(a, a + s) for a, s in zip(t0 - lo, size))]   # this tile's part
        for axis in range(3):
            for side in (-1, 1):
                nb = tuple(np.add(key, side * np.eye(3, dtype=int)[axis]))
                face = np.take(fg, 0 if side < 0 else -1, axis=axis)
                beyond = t0[axis] > 0 if side < 0 else t0[axis] + size[axis] < n[axis]
                if nb in tiles or not face.any() or not beyond or len(tiles) > max_tiles:
                    continue
                s = t0.copy()
                s[axis] += side * step[axis]
                roi, s = crop(prep.image, s + size // 2, tuple(size), fill=-1.0, inside=inside)
                tiles[nb] = (s, segment_roi(maunet, scn, roi))
                queue.append(nb)
    return blend_tiles(tiles, size)


def largest_components(probs: np.ndarray) -> np.ndarray:
    """``probs`` (D, H, W, K) with each structure's voxels outside the largest 26-connected
    component of its argmax mask set to background (probability 1), as nnU-Net post-processes."""
    out = probs.copy()
    classes = np.argmax(probs, -1)
    for k in range(1, probs.shape[-1]):
        comps, n = ndimage.label(classes == k, structure=np.ones((3, 3, 3)))
        if n > 1:
            sizes = np.bincount(comps.ravel())[1:]
            out[(comps > 0) & (comps != 1 + int(np.argmax(sizes)))] = np.eye(probs.shape[-1])[0]
    return out


def center_errors_mm(localizer, cases: list[Prepared], cfg: ExperimentConfig) -> np.ndarray:
    """Distance (mm) between the localizer's heart centre and the label map's, per case."""
    return np.array([np.linalg.norm((locate(localizer, c, cfg) - foreground_center(c.label))
                                    * np.asarray(c.grid.spacing)[::-1]) for c in cases])


@dataclass
class Cascade:
    """The trained networks of one run (or export) and what prediction needs with them: the
    run's config (grid, ROI, normalisation, inference options) and label set."""
    cfg: ExperimentConfig
    labelset: LabelSet
    localizer: object
    maunet: object
    scn: object | None

    @classmethod
    def load(cls, run_dir: str | Path, precision: str = "float32",
             jit_compile: bool = False, with_scn: bool = True,
             infer: list[str] | tuple = ()) -> "Cascade":
        """The cascade of a ``train-seg`` run (or ``export`` folder). ``precision`` (float32 |
        mixed_bfloat16 | mixed_float16, GPU) and ``jit_compile`` (XLA) speed up the networks.
        ``with_scn=False``: the run's MAUNet alone (a paired SCN ablation: same MAUNet).
        ``infer``: overrides of the run's inference options (``infer.KEY=VALUE`` only: the other
        sections describe the trained networks)."""
        run_dir = Path(run_dir)
        check_precision(precision, training=False)
        other = [o for o in infer if not o.strip().startswith("infer.")]
        if other:
            raise UserError(f"{other}: only infer.* options can change at prediction time")
        if is_export(run_dir):             # a SavedModel from ``cm-trancaf export``
            cfg, split, localizer, segmenter = load_exported(run_dir)
            labelset = get_labelset(split["labels"], tuple(split["codes"]))
            cfg = apply_overrides(cfg, list(infer))
            check_infer(cfg)
            return cls(cfg, labelset, localizer, segmenter, None)
        if not (run_dir / "config.json").is_file():
            raise UserError(f"{run_dir}: not a train-seg run folder (no config.json)")
        cfg = apply_overrides(load_config(run_dir / "config.json"), list(infer))
        check_infer(cfg)
        split = json.loads((run_dir / "split.json").read_text())
        labelset = get_labelset(split["labels"], tuple(split["codes"]))
        if not with_scn:
            cfg = replace(cfg, scn=replace(cfg.scn, enabled=False))
        with precision_policy(precision):
            localizer, maunet, scn = _restore_networks(run_dir, cfg, labelset.num_classes)
        if jit_compile:
            localizer, maunet = (_jit(m) for m in (localizer, maunet))
            scn = _jit(scn) if scn is not None else None
        return cls(cfg, labelset, localizer, maunet, scn)

    def segment(self, prep: Prepared, center=None, profile: dict | None = None,
                trace: dict | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Working-grid class map, ROI probabilities (D, H, W, K) and the ROI start index;
        ``profile`` receives the seconds of localize, crop, maunet, scn, paste; ``trace`` the
        localizer's centre and the final ROI centre (mm, x y z) and the number of passes.

        After the first pass the ROI is re-centred on the segmented heart and segmented again
        (``infer.refine_passes`` times, fewer once the ROI stays put): a heart the localizer
        placed off-centre, partly outside the ROI, is then seen whole. ``infer.start_shift_mm``
        (a stress test) moves the localizer's centre before the first pass. With
        ``infer.candidates`` > 1, when the ROI at the highest heatmap peak holds less than
        ``infer.candidate_min_ml`` of heart, the other candidate centres are segmented too and
        the one with the most heart goes on."""
        clock = _Clock(profile)
        candidates = [center]
        if center is None:
            k = self.cfg.infer.candidates
            candidates = locate(self.localizer, prep, self.cfg, k) if k > 1 else \
                [locate(self.localizer, prep, self.cfg)]
            shift = np.asarray(self.cfg.infer.start_shift_mm, float)   # x y z mm (stress test)
            if shift.any():
                shift = (shift / np.asarray(prep.grid.spacing))[::-1]  # -> index units, D H W
                candidates = [np.asarray(c, float) + shift for c in candidates]
        clock("localize")
        center = candidates[0]
        if len(candidates) > 1:
            ml = np.prod(prep.grid.spacing) / 1000.0           # one working voxel, in ml
            evidence = [self._heart_evidence(prep, center) * ml]
            if evidence[0] < self.cfg.infer.candidate_min_ml:  # no heart at the highest peak
                evidence += [self._heart_evidence(prep, c) * ml for c in candidates[1:]]
                center = candidates[int(np.argmax(evidence))]
            if trace is not None:
                trace["candidate"] = int(np.argmax(evidence))
        for attempt in range(1 + max(0, self.cfg.infer.refine_passes)):
            if attempt:
                fg = np.argmax(probs, -1) > 0
                if not fg.any():
                    break
                new = start + foreground_center(fg)
                if np.all(np.abs(new - center) < 1.0):      # already centred: done
                    break
                center = new
            roi, start = self._crop(prep, center)
            clock("crop")
            probs = segment_roi(self.maunet, self.scn, roi, clock)
            if trace is not None:
                trace["passes"] = attempt + 1
                trace.setdefault("localizer_mm", index_to_mm(prep.grid, center))
                trace["roi_center_mm"] = index_to_mm(prep.grid, center)
        if self.cfg.infer.shift_views > 1:
            probs = shifted_average(self.maunet, self.scn, prep, start, probs,
                                    self.cfg.infer.shift_mm)
        if self.cfg.infer.extend_tiles > 0:
            start, probs = extend_tiles(self.maunet, self.scn, prep, start, probs,
                                        self.cfg.infer.extend_tiles,
                                        self.cfg.infer.extend_step_mm, self.cfg.infer.roi_inside)
        if self.cfg.infer.largest_component:
            probs = largest_components(probs)
        classes = paste(np.argmax(probs, -1).astype(np.uint8), start, prep.image.shape, 0)
        clock("paste")
        return classes, probs, start

    def _crop(self, prep: Prepared, center) -> tuple[np.ndarray, np.ndarray]:
        """The ROI the cascade segments at ``center``, and its start index."""
        return crop(prep.image, center, self.cfg.data.roi_size, fill=-1.0,
                    cover_short=self.cfg.infer.cover_short_axes, inside=self.cfg.infer.roi_inside)

    def _heart_evidence(self, prep: Prepared, center) -> float:
        """Expected number of heart voxels in the ROI at ``center``: sum of 1 - p(background)."""
        roi, _ = self._crop(prep, center)
        return float((1.0 - segment_roi(self.maunet, self.scn, roi)[..., 0]).sum())

    def predict_image(self, image: sitk.Image, modality: str | None = None,
                      profile: dict | None = None, with_probs: bool = False,
                      trace: dict | None = None, enhanced: bool = False):
        """Label map in the data set's codes on ``image``'s exact grid; with ``with_probs`` also
        the ROI probabilities as an image on the working grid. ``profile`` receives the seconds
        of each stage (preprocess, localize, crop, maunet, scn, paste, paste_back).
        ``enhanced``: an image already enhanced on the working grid (``translate --grid working``)."""
        clock = _Clock(profile)
        prep = prepare(image, None, self.cfg.data, modality or self.cfg.data.modality,
                       self.labelset.num_classes, enhanced=enhanced)
        clock("preprocess")
        classes, probs, start = self.segment(prep, profile=profile, trace=trace)
        clock.reset()
        if self.cfg.infer.paste_back == "probs":
            out = probs_to_source(probs, start, prep)
        elif self.cfg.infer.paste_back == "nearest":
            out = to_source(classes, prep, self.labelset.num_classes)
        else:
            raise UserError(f"infer.paste_back must be probs|nearest, got "
                            f"{self.cfg.infer.paste_back!r}")
        codes = sitk.GetImageFromArray(self.labelset.to_codes(sitk.GetArrayViewFromImage(out)))
        codes.CopyInformation(out)
        clock("paste_back")
        if not with_probs:
            return codes
        p = sitk.GetImageFromArray(probs.astype(np.float32), isVector=True)
        p.SetSpacing(prep.grid.spacing)
        p.SetOrigin(tuple(float(v) for v in index_to_mm(prep.grid, start)))
        p.SetDirection(prep.grid.direction)
        return codes, p


@dataclass
class Ensemble(Cascade):
    """Several trained cascades of one data configuration that predict as one (as nnU-Net
    ensembles its folds): each member segments the case as its own cascade would (its localizer,
    ROI, MAUNet and SCN), and the members' class probabilities are averaged on the working grid
    over the box that holds every member's ROI (background, probability 1, outside a member's
    ROI). The argmax of the mean is pasted back as one cascade's probabilities are.

    ``cfg``, ``labelset`` and the networks are the first member's; ``trace`` reports the first
    member's localizer centre and passes, and the mean of the members' final ROI centres."""
    members: tuple = ()

    @classmethod
    def load(cls, run_dirs, precision: str = "float32", jit_compile: bool = False,
             with_scn: bool = True, infer: list[str] | tuple = ()) -> "Cascade":
        """One run folder: that run's ``Cascade``. Several: their ``Ensemble``; every member must
        share the data configuration (grid, ROI, normalisation, labels) and label codes."""
        dirs = [run_dirs] if isinstance(run_dirs, (str, Path)) else list(run_dirs)
        if not dirs:
            raise UserError("an ensemble needs at least one run folder")
        members = [Cascade.load(d, precision, jit_compile, with_scn, infer) for d in dirs]
        if len(members) == 1:
            return members[0]
        first = members[0]
        for d, m in zip(dirs[1:], members[1:]):
            if m.cfg.data != first.cfg.data or m.labelset != first.labelset:
                differ = sorted(k for k, v in asdict(m.cfg.data).items()
                                if asdict(first.cfg.data)[k] != v)
                raise UserError(f"{d}: cannot be ensembled with {dirs[0]}: another data "
                                f"configuration ({', '.join(differ) or 'label codes'} differ)")
        return cls(first.cfg, first.labelset, first.localizer, first.maunet, first.scn,
                   tuple(members))

    def segment(self, prep: Prepared, center=None, profile: dict | None = None,
                trace: dict | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        parts, traces = [], []
        for member in self.members:
            t = {}
            _, probs, start = member.segment(prep, center, profile, t)
            parts.append((np.asarray(start), probs))
            traces.append(t)
        if trace is not None:
            trace.update(traces[0])
            trace["roi_center_mm"] = np.mean([t["roi_center_mm"] for t in traces], 0)
        lo = np.min([s for s, _ in parts], 0)
        hi = np.max([s + np.asarray(p.shape[:3]) for s, p in parts], 0)
        k = parts[0][1].shape[-1]
        mean = np.zeros((*(hi - lo), k), np.float32)                  # (D, H, W, K) of the box
        mean[..., 0] = len(parts)               # background everywhere, replaced in each ROI
        for s, p in parts:
            a = s - lo
            box = tuple(slice(a[j], a[j] + p.shape[j]) for j in range(3))
            mean[box + (0,)] -= 1.0
            mean[box] += p
        mean /= len(parts)
        classes = paste(np.argmax(mean, -1).astype(np.uint8), lo, prep.image.shape, 0)
        return classes, mean, lo


class _Clock:
    """``clock(name)`` adds the seconds since the last call to ``profile[name]`` (if a dict)."""

    def __init__(self, profile: dict | None):
        self.profile, self.t = profile, time.perf_counter()

    def reset(self):
        self.t = time.perf_counter()

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        if self.profile is not None:
            self.profile[name] = self.profile.get(name, 0.0) + now - self.t
        self.t = now


def _restore_networks(run_dir: Path, cfg: ExperimentConfig, k: int):
    localizer = build_localizer(cfg.localizer)
    restore(run_dir / "localizer", "best", model=localizer)
    maunet = build_maunet(cfg.maunet, k, cfg.data.roi_size)
    scn = None
    if cfg.scn.enabled and (run_dir / "scn" / "ckpt").exists():
        scn = build_scn(cfg.scn, k, cfg.data.roi_size)
        if cfg.scn.freeze_maunet:
            restore(run_dir / "maunet", "best", model=maunet)
            restore(run_dir / "scn", "best", model=scn)
        else:
            restore(run_dir / "scn", "best", model=scn, maunet=maunet)
    else:
        restore(run_dir / "maunet", "best", model=maunet)
    return localizer, maunet, scn


def _jit(model):
    """An XLA-compiled inference call of ``model`` (same signature, ``training`` ignored)."""
    fn = tf.function(lambda *xs: model(*xs, training=False), jit_compile=True)
    return lambda *xs, training=False: fn(*xs)


def is_export(path: Path) -> bool:
    return (Path(path) / "saved_model.pb").is_file()


class _Endpoint:
    """A SavedModel endpoint called like a Keras model: ``net(x, training=False)``."""

    def __init__(self, loaded, name: str):
        self.loaded = loaded               # keeps the SavedModel's variables alive
        self.fn = getattr(loaded, name)

    def __call__(self, x, *unused, training=False):
        return self.fn(np.asarray(x, np.float32))


def load_exported(path: str | Path):
    """(config, split, localizer, segmenter) from an exported cascade."""
    path = Path(path)
    try:
        loaded = tf.saved_model.load(str(path))
    except (OSError, ValueError, tf.errors.OpError) as e:
        raise UserError(f"{path}: cannot load the SavedModel ({str(e).splitlines()[0][:160]})") \
            from None
    for name in ("localize", "segment"):
        if not hasattr(loaded, name):
            raise UserError(f"{path}: SavedModel has no '{name}' endpoint (not a cm-trancaf export)")
    cfg = load_config(path / "assets" / "config.json")
    split = json.loads((path / "assets" / "split.json").read_text())
    return cfg, split, _Endpoint(loaded, "localize"), _Endpoint(loaded, "segment")


def load_generator(run_dir: Path):
    """(config, mtn.json, G_c) of a ``train-mtn`` run: the generator source -> target."""
    run_dir = Path(run_dir)
    if not (run_dir / "mtn.json").is_file():
        raise UserError(f"{run_dir}: not a train-mtn run folder (no mtn.json)")
    cfg = load_config(run_dir / "config.json")
    meta = json.loads((run_dir / "mtn.json").read_text())
    nets = build_mtn(cfg.mtn)
    restore(run_dir, "last", **nets)
    return cfg, meta, nets["G_c"]


def _window(size) -> np.ndarray:
    """Separable blending weights, high in the middle, small but > 0 at the border."""
    w = [np.sin(np.linspace(0.5, s - 0.5, s) * np.pi / s) + 1e-3 for s in size]
    return (w[0][:, None, None] * w[1][None, :, None] * w[2][None, None, :]).astype(np.float32)


def translate_volume(generator, vol: np.ndarray, patch_size, batch: int = 4) -> np.ndarray:
    """Sliding-window G(vol) with half-patch overlap and smooth blending (no seams)."""
    ps = np.asarray(patch_size)
    shape = np.maximum(np.asarray(vol.shape), ps)
    padded = np.full(tuple(shape), -1.0, np.float32)
    padded[: vol.shape[0], : vol.shape[1], : vol.shape[2]] = vol
    starts = [sorted(set(list(range(0, n - p + 1, max(1, p // 2))) + [n - p]))
              for n, p in zip(shape, ps)]
    corners = [(a, b, c) for a in starts[0] for b in starts[1] for c in starts[2]]
    acc, wsum, w = np.zeros(tuple(shape), np.float32), np.zeros(tuple(shape), np.float32), _window(ps)
    for i in range(0, len(corners), batch):
        group = corners[i:i + batch]
        x = np.stack([padded[a:a + ps[0], b:b + ps[1], c:c + ps[2]] for a, b, c in group])[..., None]
        y = np.asarray(generator(x, training=False))[..., 0]
        for (a, b, c), out in zip(group, y):
            acc[a:a + ps[0], b:b + ps[1], c:c + ps[2]] += out * w
            wsum[a:a + ps[0], b:b + ps[1], c:c + ps[2]] += w
    return (acc / wsum)[: vol.shape[0], : vol.shape[1], : vol.shape[2]]


def denormalize(y: np.ndarray, modality: str, cfg: ExperimentConfig) -> np.ndarray:
    """Network intensities in [-1, 1] back to the modality's units: CT onto ``data.ct_window``
    (HU), the inverse of its normalisation; MRI, normalised per volume (no inverse), onto
    ``data.mr_output_range`` (arbitrary units)."""
    lo, hi = cfg.data.ct_window if modality == "ct" else cfg.data.mr_output_range
    return ((y + 1.0) / 2.0 * (hi - lo) + lo).astype(np.float32)


def anatomy_monitor(cascade: "Cascade", sources: list[Prepared], patch_size,
                    modality: str) -> Callable[[object], dict]:
    """The FCN score (``metrics.anatomy_score``) while the MTN trains: ``score(G_c)`` translates
    each labelled source case on its working grid (``translate_volume``), normalises the result as
    a ``modality`` image written by ``translate --grid working`` and read back would be, lets the
    target-domain ``cascade`` segment it, and returns the mean Dice over the foreground classes
    against the source labels (``{"val/anatomy_dice": ...}``)."""
    from .data.preprocess import normalize
    from .metrics import overlap
    if not sources or any(p.label is None for p in sources):
        raise UserError("the anatomy score needs labelled source cases")

    def score(generator) -> dict:
        dice = []
        for p in sources:
            fake = translate_volume(generator, p.image, patch_size)
            fake = normalize(denormalize(fake, modality, cascade.cfg), modality, cascade.cfg.data)
            classes, _, _ = cascade.segment(replace(p, image=fake))
            dice += [overlap(classes == k, p.label == k)[0]
                     for k in range(1, cascade.labelset.num_classes)]
        return {"val/anatomy_dice": float(np.mean(dice))}
    return score
