"""Whole-volume prediction with the trained cascade (``cm-trancaf predict``).

    read (validated) -> working grid (prepare) -> localizer: heart centre
      -> crop ROI (padded where the heart leaves the field of view) -> MAUNet -> SCN
      -> paste back into the working grid -> resample onto the input's exact grid
      -> label codes of the data set -> ``<case>_label.nii.gz`` (atomic write)
Optional: ``--iso1mm`` also writes the MM-WHS evaluation grid (1 mm, nearest neighbour);
``--probs`` writes the ROI class probabilities (float32, K channels) on the working grid.
A run folder from ``train-seg`` is all that is needed: config.json + checkpoints; or a folder
written by ``cm-trancaf export`` (SavedModel endpoints + config), which predicts the same labels.
Several runs of one data configuration (``--run A --run B``: e.g. seeds) predict as an ensemble,
their class probabilities averaged (``inference.Ensemble``).
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import SimpleITK as sitk

from .data.io import case_id_of, list_images, read_image, write_image
from .data.preprocess import working_grid
from .inference import Ensemble

__all__ = ["predict_files"]


def predict_files(run_dir: str | Path | list, inputs, out_dir: str | Path,
                  modality: str | None = None, overwrite: bool = False, iso1mm: bool = False,
                  probs: bool = False, profile: bool = False, precision: str = "float32",
                  jit_compile: bool = False, with_scn: bool = True,
                  traces: dict | None = None, timings: list | None = None,
                  infer: list[str] | tuple = ()) -> list[Path]:
    """Predict every input image (a folder, a file, or a list of files); returns the label files
    (finished cases are skipped unless ``overwrite``). ``run_dir``: one run, or a list of runs
    that predict as an ensemble. ``with_scn=False``: the run's MAUNet alone
    (a paired SCN ablation); ``traces`` receives each predicted case's localizer and ROI centres
    (``Cascade.segment``); ``timings`` gets ``(case id, {stage: seconds})`` for each predicted
    case in order (read, preprocess, localize, crop, maunet, scn, paste, paste_back, write), as
    ``profile`` prints them (``benchmarks/speed.py``). ``infer``: ``infer.KEY=VALUE`` overrides of
    the run's inference options (``Cascade.load``).

    I/O overlaps compute: the next image is read and the previous outputs are written in
    background threads while the networks run (SimpleITK and TensorFlow release the GIL)."""
    cascade = Ensemble.load(run_dir, precision, jit_compile, with_scn, infer)
    out_dir = Path(out_dir)
    todo, written = [], []
    paths = ([p for i in inputs for p in list_images(Path(i))]
             if isinstance(inputs, (list, tuple)) else list_images(Path(inputs)))
    for path in paths:
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
            timing, trace = {"read": seconds}, {}
            result = cascade.predict_image(image, modality, timing, with_probs=probs, trace=trace)
            if traces is not None:
                traces[case_id_of(path)] = trace
            if timings is not None:
                timings.append((case_id_of(path), timing))   # "write" is added once written
            label, prob_img = result if probs else (result, None)
            if pending_write is not None:
                pending_write.result()                         # at most one case in flight
            pending_write = writer.submit(write, case_id_of(path), label, prob_img, timing)
        if pending_write is not None:
            pending_write.result()
    return written
