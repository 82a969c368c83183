"""MRI -> CT translation of a folder with a trained MTN (``cm-trancaf translate``), and its
intensity-only baseline (histogram matching to target-domain images).

    out_dir/
      <case>_image.nii.gz    G_c(source image): synthetic target modality on the source image's grid
                             (``grid="source"``, the default), or on the working grid G_c made it
                             on, texture-enhanced once (``grid="working"``: what training reads,
                             so the synthetic image is enhanced and resampled once, as a real one)
      <case>_label.nii.gz    the source label file beside the image: copied byte for byte, or, with
                             ``grid="working"``, its codes put onto the working grid (nearest)
      manifest.csv           case, source image and label, written image and label, the target
                             modality (how training normalises the images), enhanced (yes: do not
                             enhance again), seconds
"""
from __future__ import annotations

import csv
import shutil
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .data.io import case_id_of, list_images, read_image, read_label, write_image
from .data.preprocess import histogram_match, prepare, resample
from .inference import denormalize, load_generator, translate_volume
from .utils import UserError, atomic_path

__all__ = ["translate_folder", "harmonize_folder"]


GRIDS = ("source", "working")


def translate_folder(run_dir, inputs, out_dir, layout: str = "mmwhs-folder",
                     overwrite: bool = False, grid: str = "source") -> list[dict]:
    """Translate every image in ``inputs`` (folder or file) with the MTN's G_c; labels beside
    them carry over. ``grid``: write on the source image's grid, or on the working grid (see the
    module docstring)."""
    if grid not in GRIDS:
        raise UserError(f"translate: grid must be one of {GRIDS}, got {grid!r}")
    cfg, meta, g_c = load_generator(Path(run_dir))
    geometry = {}

    def translate(path: Path, cid: str) -> sitk.Image:
        prep = prepare(read_image(path), None, cfg.data, meta["source_modality"], 2, cid)
        fake = translate_volume(g_c, prep.image, cfg.mtn.patch_size)
        work = sitk.GetImageFromArray(denormalize(fake, meta["target_modality"], cfg))
        prep.grid.apply(work)
        if grid == "working":
            geometry[cid] = prep.grid
            return work
        background = float(denormalize(np.array([-1.0]), meta["target_modality"], cfg)[0])
        synthetic = resample(work, prep.source, sitk.sitkLinear, background)
        return prep.source.apply(synthetic)

    def carry_label(label: Path, cid: str, tmp: Path) -> None:
        if grid == "source":      # the source label map carries over unchanged, byte for byte
            shutil.copyfile(label, tmp)
        else:                     # its codes onto the working grid: nearest keeps every code as
            on_grid = resample(read_label(label), geometry[cid], sitk.sitkNearestNeighbor, 0)
            sitk.WriteImage(on_grid, str(tmp), True)      # it is (training maps the codes)
    return _write_folder(list_images(Path(inputs)), Path(out_dir), translate,
                         meta["target_modality"], overwrite, carry_label,
                         enhanced=grid == "working")


def harmonize_folder(inputs, references: list[Path], out_dir, modality: str,
                     overwrite: bool = False) -> list[dict]:
    """The intensity-only baseline of the MTN: every image in ``inputs`` histogram-matched
    (``preprocess.histogram_match``) to a target-domain image, ``references[i % n]`` for the
    i-th; labels beside them are copied. Same folder contract as ``translate_folder``."""
    if not references:
        raise UserError("histogram matching needs at least one target-domain reference image")
    images = list_images(Path(inputs))
    refs = {path: references[i % len(references)] for i, path in enumerate(images)}
    return _write_folder(images, Path(out_dir),
                         lambda path, cid: histogram_match(read_image(path), read_image(refs[path])),
                         modality, overwrite)


def _copy_label(label: Path, cid: str, tmp: Path) -> None:
    shutil.copyfile(label, tmp)


def _write_folder(images: list[Path], out_dir: Path, make, modality: str,
                  overwrite: bool, carry_label=_copy_label, enhanced: bool = False) -> list[dict]:
    """``make(path, case_id)`` -> the new image of each source image, written beside its label
    (``carry_label(label, case_id, tmp path)``: a byte copy unless told otherwise);
    ``manifest.csv`` last (its presence means the folder is complete)."""
    rows = []
    for path in images:
        cid = case_id_of(path)
        img_out, lab_out = out_dir / f"{cid}_image.nii.gz", out_dir / f"{cid}_label.nii.gz"
        label = _label_beside(path)
        t0 = time.time()
        if overwrite or not img_out.exists():
            image = make(path, cid)
            if label is not None:
                with atomic_path(lab_out) as tmp:
                    carry_label(label, cid, tmp)
            write_image(image, img_out)
        rows.append({"case": cid, "source_image": str(path), "source_label": str(label or ""),
                     "image": str(img_out), "label": str(lab_out if label else ""),
                     "modality": modality, "enhanced": "yes" if enhanced else "no",
                     "seconds": round(time.time() - t0, 2)})
    with atomic_path(out_dir / "manifest.csv") as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    return rows


def _label_beside(image: Path) -> Path | None:
    name = image.name
    for a, b in (("_image", "_label"), (".nii", "_manual.nii")):
        cand = image.with_name(name.replace(a, b, 1))
        if cand != image and cand.exists():
            return cand
    return None
