"""Whole-volume prediction with the trained cascade (``cm-trancaf predict``).

    read (validated) -> working grid (prepare) -> localizer: heart centre
      -> crop ROI (padded where the heart leaves the field of view) -> MAUNet -> SCN
      -> paste back into the working grid -> resample onto the input's exact grid
      -> label codes of the data set -> ``<case>_label.nii.gz`` (atomic write)
Optional: ``--iso1mm`` also writes the MM-WHS evaluation grid (1 mm, nearest neighbour);
``--probs`` writes the ROI class probabilities (float32, K channels) on the working grid.
A run folder from ``train-seg`` is all that is needed: config.json + checkpoints; or a folder
written by ``cm-trancaf export`` (SavedModel endpoints + config), which predicts the same labels.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .config import ExperimentConfig, load_config
from .data.datasets import LabelSet, get_labelset
from .data.io import Geometry, case_id_of, list_images, read_image, write_image
from .data.preprocess import (Prepared, crop, foreground_center, index_to_mm, paste, prepare,
                              probs_to_source, to_source, working_grid)
from .utils import UserError

__all__ = ["Cascade", "predict_files"]


@dataclass
class Cascade:
    cfg: ExperimentConfig
    labelset: LabelSet
    localizer: object
    maunet: object
    scn: object | None

    @classmethod
    def load(cls, run_dir: str | Path, precision: str = "float32",
             jit_compile: bool = False, with_scn: bool = True) -> "Cascade":
        """The cascade of a ``train-seg`` run (or ``export`` folder). ``precision`` (float32 |
        mixed_bfloat16 | mixed_float16, GPU) and ``jit_compile`` (XLA) speed up the networks.
        ``with_scn=False``: the run's MAUNet alone (a paired SCN ablation: same MAUNet)."""
        from .export import is_export, load_exported
        run_dir = Path(run_dir)
        if is_export(run_dir):             # a SavedModel from ``cm-trancaf export``
            cfg, split, localizer, segmenter = load_exported(run_dir)
            labelset = get_labelset(split["labels"], tuple(split["codes"]))
            return cls(cfg, labelset, localizer, segmenter, None)
        if not (run_dir / "config.json").is_file():
            raise UserError(f"{run_dir}: not a train-seg run folder (no config.json)")
        cfg = load_config(run_dir / "config.json")
        split = json.loads((run_dir / "split.json").read_text())
        labelset = get_labelset(split["labels"], tuple(split["codes"]))
        from .train.scale import precision_policy
        if not with_scn:
            from dataclasses import replace
            cfg = replace(cfg, scn=replace(cfg.scn, enabled=False))
        with precision_policy(precision):
            localizer, maunet, scn = _restore_networks(run_dir, cfg, labelset.num_classes)
        if jit_compile:
            import tensorflow as tf
            localizer, maunet = (_jit(m, tf) for m in (localizer, maunet))
            scn = _jit(scn, tf) if scn is not None else None
        return cls(cfg, labelset, localizer, maunet, scn)

    def segment(self, prep: Prepared, center=None, profile: dict | None = None,
                trace: dict | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Working-grid class map, ROI probabilities (D, H, W, K) and the ROI start index;
        ``profile`` receives the seconds of localize, crop, maunet, scn, paste; ``trace`` the
        localizer's centre and the final ROI centre (mm, x y z) and the number of passes.

        After the first pass the ROI is re-centred on the segmented heart and segmented again
        (``infer.refine_passes`` times): a heart the localizer placed off-centre, partly outside
        the ROI, is then seen whole."""
        from .train.seg import locate, segment_roi
        clock = _Clock(profile)
        if center is None:
            center = locate(self.localizer, prep, self.cfg)
        clock("localize")
        for attempt in range(1 + max(0, self.cfg.infer.refine_passes)):
            if attempt:
                fg = np.argmax(probs, -1) > 0
                if not fg.any():
                    break
                new = start + foreground_center(fg)
                if np.all(np.abs(new - center) < 1.0):      # already centred: done
                    break
                center = new
            roi, start = crop(prep.image, center, self.cfg.data.roi_size, fill=-1.0)
            clock("crop")
            probs = segment_roi(self.maunet, self.scn, roi, clock)
            if trace is not None:
                trace["passes"] = attempt + 1
                trace.setdefault("localizer_mm", index_to_mm(prep.grid, center))
                trace["roi_center_mm"] = index_to_mm(prep.grid, center)
        classes = paste(np.argmax(probs, -1).astype(np.uint8), start, prep.image.shape, 0)
        clock("paste")
        return classes, probs, start

    def predict_image(self, image: sitk.Image, modality: str | None = None,
                      profile: dict | None = None, with_probs: bool = False,
                      trace: dict | None = None):
        """Label map in the data set's codes on ``image``'s exact grid; with ``with_probs`` also
        the ROI probabilities as an image on the working grid. ``profile`` receives the seconds
        of each stage (preprocess, localize, crop, maunet, scn, paste, paste_back)."""
        clock = _Clock(profile)
        prep = prepare(image, None, self.cfg.data, modality or self.cfg.data.modality,
                       self.labelset.num_classes)
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
        p.SetOrigin(tuple(np.asarray(prep.grid.origin) + np.asarray(start)[::-1] * prep.grid.spacing))
        return codes, p


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
    from .models.localizer import build_localizer
    from .models.maunet import build_maunet
    from .models.scn import build_scn
    from .train.loop import restore
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


def _jit(model, tf):
    """An XLA-compiled inference call of ``model`` (same signature, ``training`` ignored)."""
    fn = tf.function(lambda *xs: model(*xs, training=False), jit_compile=True)
    return lambda *xs, training=False: fn(*xs)


def predict_files(run_dir: str | Path, inputs: str | Path, out_dir: str | Path,
                  modality: str | None = None, overwrite: bool = False, iso1mm: bool = False,
                  probs: bool = False, profile: bool = False, precision: str = "float32",
                  jit_compile: bool = False) -> list[Path]:
    """Predict every input image; returns the written label files (skips finished cases).

    I/O overlaps compute: the next image is read and the previous outputs are written in
    background threads while the networks run (SimpleITK and TensorFlow release the GIL)."""
    from concurrent.futures import ThreadPoolExecutor
    cascade = Cascade.load(run_dir, precision, jit_compile)
    out_dir = Path(out_dir)
    todo, written = [], []
    for path in list_images(Path(inputs)):
        target = out_dir / f"{case_id_of(path)}_label.nii.gz"
        if target.exists() and not overwrite:
            print(f"{case_id_of(path)}: exists, skipped (use --overwrite)")
        else:
            todo.append(path)
        written.append(target)

    def read(path):
        t0 = time.perf_counter()
        return read_image(path), time.perf_counter() - t0

    def write(cid, label, prob_img, timing):
        t1 = time.perf_counter()
        write_image(label, out_dir / f"{cid}_label.nii.gz")
        if iso1mm:
            grid = working_grid(label, (1.0, 1.0, 1.0))
            iso = sitk.Resample(label, grid.reference(), sitk.Transform(),
                                sitk.sitkNearestNeighbor, 0, label.GetPixelID())
            write_image(iso, out_dir / f"{cid}_label_1mm.nii.gz")
        if prob_img is not None:
            write_image(prob_img, out_dir / f"{cid}_probs.nii.gz")
        timing["write"] = time.perf_counter() - t1
        if profile:
            print(f"{cid}: " + ", ".join(f"{k} {v:.2f}s" for k, v in timing.items())
                  + f", total {sum(timing.values()):.2f}s", flush=True)

    with ThreadPoolExecutor(1) as reader, ThreadPoolExecutor(1) as writer:
        pending_read = reader.submit(read, todo[0]) if todo else None
        pending_write = None
        for i, path in enumerate(todo):
            image, seconds = pending_read.result()             # a bad file raises here
            pending_read = reader.submit(read, todo[i + 1]) if i + 1 < len(todo) else None
            timing = {"read": seconds}
            result = cascade.predict_image(image, modality, timing, with_probs=probs)
            label, prob_img = result if probs else (result, None)
            if pending_write is not None:
                pending_write.result()                         # at most one case in flight
            pending_write = writer.submit(write, case_id_of(path), label, prob_img, timing)
        if pending_write is not None:
            pending_write.result()
    return written
