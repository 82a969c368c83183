"""Label sets and dataset adapters (MM-WHS 2017, MS-CMRSeg 2019, ACDC 2017, generic folders).

Each label set maps its file codes to contiguous classes ``0 (background), 1..K`` and back. The
class order is the ascending order of the codes, the same everywhere (training, metrics, tables):

========  ==========================================================================
mmwhs     1 Myo (205), 2 LA (420), 3 LV (500), 4 RA (550), 5 RV (600), 6 AA (820), 7 PA (850)
mscmrseg  1 Myo (200), 2 LV (500), 3 RV (600)
acdc      1 RV (1), 2 Myo (2), 3 LV (3)
========  ==========================================================================

An adapter lists :class:`Case` records (id, image path, label path or None); reading goes through
:func:`load_case`, which validates both files and their grids.
"""
from __future__ import annotations

import csv
import re
import shutil
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..utils import UserError, atomic_dir
from .io import check_same_grid, read_image, read_label, write_image

__all__ = ["LabelSet", "LABEL_SETS", "get_labelset", "Case", "mmwhs_cases", "mscmrseg_cases",
           "cavity_diameter_mm", "mscmrseg_header_scale", "repair_mscmrseg_spacing",
           "acdc_cases", "generic_cases", "generated_cases", "find_cases", "load_case"]


@dataclass(frozen=True)
class LabelSet:
    name: str
    codes: tuple[int, ...]          # file codes of classes 1..K, ascending
    names: tuple[str, ...]          # short structure names, same order
    # known quirks of public copies: (code found, code meant, where it is known from); each file
    # that has one is read with the remap and one warning line naming it
    quirks: tuple[tuple[int, int, str], ...] = ()

    @property
    def num_classes(self) -> int:
        """K + 1 (background included)."""
        return len(self.codes) + 1

    def to_classes(self, codes: np.ndarray, source: str = "label map") -> np.ndarray:
        """File codes -> uint8 classes 0..K; unknown nonzero codes raise UserError naming ``source``."""
        lut_keys = np.array((0,) + self.codes)
        values = np.unique(codes)
        for found, meant, known in self.quirks:
            if found in values:
                print(f"warning: {source}: label code {found} read as {meant} "
                      f"({self.names[self.codes.index(meant)]}), {known}", file=sys.stderr)
                codes = np.where(codes == found, meant, codes)
                values = np.unique(codes)
        unknown = sorted(set(values.tolist()) - set(lut_keys.tolist()))
        if unknown:
            raise UserError(f"{source}: unknown label codes {unknown[:10]} for label set "
                            f"{self.name!r} (expected 0 and {list(self.codes)})")
        out = np.zeros(codes.shape, np.uint8)
        for k, code in enumerate(self.codes, start=1):
            out[codes == code] = k
        return out

    def to_codes(self, classes: np.ndarray) -> np.ndarray:
        """Classes 0..K -> file codes (int16 when they fit, as MM-WHS ships them)."""
        lut = np.array((0,) + self.codes, dtype=np.int32)
        if np.any(classes >= len(lut)):
            raise ValueError(f"class index {int(classes.max())} >= {len(lut)} for {self.name}")
        return lut[classes].astype(np.int16 if max(self.codes) < 32768 else np.int32)


LABEL_SETS: dict[str, LabelSet] = {
    "mmwhs": LabelSet("mmwhs", (205, 420, 500, 550, 600, 820, 850),
                      ("Myo", "LA", "LV", "RA", "RV", "AA", "PA"),
                      ((421, 420, "a known quirk of MM-WHS 2017 mr_train_1010 (public loaders "
                                  "remap it to the left atrium)"),)),
    "mscmrseg": LabelSet("mscmrseg", (200, 500, 600), ("Myo", "LV", "RV")),
    "acdc": LabelSet("acdc", (1, 2, 3), ("RV", "Myo", "LV")),
}


def get_labelset(name: str | LabelSet, codes: tuple[int, ...] | None = None) -> LabelSet:
    """A named label set, or ``generic`` built from ``codes``."""
    if isinstance(name, LabelSet):
        return name
    if name == "generic":
        if not codes:
            raise UserError("label set 'generic' needs its codes (e.g. --codes 1,2,3)")
        codes = tuple(sorted(int(c) for c in codes))
        return LabelSet("generic", codes, tuple(f"L{c}" for c in codes))
    if name not in LABEL_SETS:
        raise UserError(f"unknown label set {name!r}; choose one of {sorted(LABEL_SETS)} or generic")
    return LABEL_SETS[name]


@dataclass(frozen=True)
class Case:
    case_id: str
    image: Path
    label: Path | None
    modality: str = "ct"
    # the image is already texture-enhanced on the working grid (``translate --grid working``):
    # preprocessing does not enhance it a second time
    enhanced: bool = False


def _need_dir(root: Path, what: str) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: no such folder ({what})")
    return root


def _nonempty(cases: list[Case], root: Path, what: str) -> list[Case]:
    if not cases:
        raise UserError(f"{root}: no {what} found")
    return cases


def mmwhs_cases(root: str | Path, modality: str = "ct", split: str = "train") -> list[Case]:
    """MM-WHS 2017: ``{ct,mr}_{train,test}/{ct,mr}_{split}_NNNN_image.nii.gz`` (+ ``_label``).

    Test cases have a label when a ``_label`` file sits beside the image (phantoms, own annotations).
    """
    if modality not in ("ct", "mr") or split not in ("train", "test"):
        raise UserError(f"MM-WHS modality must be ct|mr and split train|test, got {modality}/{split}")
    folder = _need_dir(Path(root) / f"{modality}_{split}", f"MM-WHS {modality}_{split}")
    cases = []
    for img in sorted(folder.glob(f"{modality}_{split}_*_image.nii*")):
        cid = img.name.split("_image")[0]
        lab = img.with_name(img.name.replace("_image", "_label"))
        if split == "train" and not lab.exists():
            raise UserError(f"{lab}: label map missing for training image {img.name}")
        cases.append(Case(cid, img, lab if lab.exists() else None, modality))
    return _nonempty(cases, folder, f"{modality}_{split}_*_image.nii.gz files")


def mscmrseg_cases(root: str | Path, sequence: str = "C0") -> list[Case]:
    """MS-CMRSeg 2019: ``{C0,LGE,T2}/patientN_{seq}.nii.gz`` + ``patientN_{seq}_manual.nii.gz``."""
    folder = _need_dir(Path(root) / sequence, f"MS-CMRSeg {sequence}")
    pat = re.compile(rf"patient(\d+)_{re.escape(sequence)}\.nii(\.gz)?$")
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := pat.match(p.name))]
    cases = []
    for num, img in sorted(found):
        lab = img.with_name(img.name.replace(f"_{sequence}.", f"_{sequence}_manual."))
        cases.append(Case(f"patient{num}_{sequence}", img, lab if lab.exists() else None, "mr"))
    return _nonempty(cases, folder, f"patientN_{sequence}.nii.gz files")


def cavity_diameter_mm(label: sitk.Image, code: int) -> float:
    """Diameter (mm) of the circle with the area of structure ``code``'s largest cross-section in
    the label map's own slices (its third axis). For the LV blood pool of a short-axis stack, the
    LV diameter: 45-56 mm in adults at end-diastole, dilated hearts up to about 70, so a cohort
    far from that has headers whose in-plane spacing is wrong. NaN if the code is absent."""
    mask = sitk.GetArrayViewFromImage(label) == code                     # (z, y, x)
    area = int(mask.reshape(mask.shape[0], -1).sum(axis=1).max())
    if area == 0:
        return float("nan")
    sx, sy = label.GetSpacing()[:2]
    return float(2 * np.sqrt(area * sx * sy / np.pi))


def mscmrseg_header_scale(root: str | Path, source: str = "C0", target: str = "LGE") -> float:
    """Median ``target`` in-plane header spacing / median ``source`` one (headers only)."""
    def median_spacing(sequence):
        return float(np.median([read_image(c.image).GetSpacing()[0] for c in mscmrseg_cases(root, sequence)]))
    return median_spacing(target) / median_spacing(source)


def repair_mscmrseg_spacing(root: str | Path, out: str | Path, scale: float | None = None,
                            source: str = "C0", target: str = "LGE") -> list[dict]:
    """A copy of an MS-CMRSeg root whose ``source`` stacks (images and labels) have their in-plane
    spacing multiplied by ``scale`` (default ``mscmrseg_header_scale``: the redistributed bSSFP were
    resampled onto the LGE pixel size, about 0.75 mm, and kept their 1.25 mm headers); slice spacing,
    origin, direction and voxels unchanged, ``target`` copied as it is. ``out`` must not exist and
    appears only complete. Returns one row per labelled source case (old / new spacing, LV
    blood-pool diameter before / after, in mm); no target label is read."""
    root, out = Path(root), Path(out)
    if out.exists():
        raise UserError(f"{out}: already exists; choose a new output folder")
    cases = mscmrseg_cases(root, source)
    _need_dir(root / target, f"MS-CMRSeg {target}")
    scale = mscmrseg_header_scale(root, source, target) if scale is None else float(scale)
    if not 0 < scale <= 10:
        raise UserError(f"scale {scale}: must be in (0, 10]")
    labels = LABEL_SETS["mscmrseg"]
    lv = labels.codes[labels.names.index("LV")]
    rows = []
    with atomic_dir(out) as tmp:
        (tmp / source).mkdir()
        for case in cases:
            read_image(case.image)                          # validated, then copied as stored
            image = sitk.ReadImage(str(case.image))
            spacing = image.GetSpacing()
            new = (spacing[0] * scale, spacing[1] * scale, spacing[2])
            image.SetSpacing(new)
            write_image(image, tmp / source / case.image.name)
            if case.label is None:
                continue
            before = cavity_diameter_mm(read_label(case.label, labels.codes), lv)
            label = sitk.ReadImage(str(case.label))
            label.SetSpacing(new)
            write_image(label, tmp / source / case.label.name)
            rows.append({"case": case.case_id,
                         "spacing_old_mm": " x ".join(f"{v:.3f}" for v in spacing),
                         "spacing_new_mm": " x ".join(f"{v:.3f}" for v in new),
                         "lv_diameter_old_mm": round(before, 2),
                         "lv_diameter_new_mm": round(cavity_diameter_mm(label, lv), 2)})
        shutil.copytree(root / target, tmp / target)
        with open(tmp / "spacing.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["case"])
            writer.writeheader()
            writer.writerows(rows)
    return rows


def acdc_cases(root: str | Path) -> list[Case]:
    """ACDC (as in shared/data): ``images/patientNNN.nii.gz`` + ``masks/patientNNN_mask.nii.gz``."""
    root = _need_dir(Path(root), "ACDC")
    images = _need_dir(root / "images", "ACDC images")
    cases = []
    for img in sorted(images.glob("patient*.nii*")):
        cid = img.name.split(".nii")[0]
        lab = root / "masks" / f"{cid}_mask.nii.gz"
        cases.append(Case(cid, img, lab if lab.exists() else None, "mr"))
    return _nonempty(cases, images, "patient*.nii.gz files")


def generic_cases(root: str | Path, image_glob: str = "*_image.nii*",
                  label_replace: tuple[str, str] = ("_image", "_label"),
                  modality: str = "ct") -> list[Case]:
    """Any folder of image/label pairs: images by glob, label path by a substring replacement."""
    root = _need_dir(Path(root), "generic dataset")
    cases = []
    for img in sorted(root.glob(image_glob)):
        lab = img.with_name(img.name.replace(*label_replace))
        cid = img.name.split(".nii")[0].replace(label_replace[0], "")
        cases.append(Case(cid, img, lab if lab != img and lab.exists() else None, modality))
    return _nonempty(cases, root, f"files matching {image_glob}")


def generated_cases(root: str | Path) -> list[Case]:
    """Synthetic images written by ``cm-trancaf translate``: ``<id>_image.nii.gz`` + ``<id>_label``,
    in the MTN's target modality as ``manifest.csv`` records it (``ct`` when it does not say):
    synthetic LGE must be normalised as MRI, synthetic CT as CT. Images written on the working grid
    (manifest ``enhanced`` = yes) are G_c's output as it is: enhanced once, not again."""
    modality, enhanced = "ct", False
    manifest = Path(root) / "manifest.csv"
    if manifest.is_file():
        with open(manifest, newline="") as f:
            rows = list(csv.DictReader(f))
        found = {row.get("modality") or "ct" for row in rows}
        if len(found) != 1 or not found <= {"ct", "mr"}:
            raise UserError(f"{manifest}: expected one modality (ct or mr), found {sorted(found)}")
        modality = found.pop()
        enhanced = bool(rows) and all(row.get("enhanced") == "yes" for row in rows)
    cases = generic_cases(root, "*_image.nii*", ("_image", "_label"), modality=modality)
    return [replace(c, enhanced=enhanced) for c in cases]


def find_cases(root: str | Path, layout: str, **kw) -> list[Case]:
    """Dispatch on a layout name: mmwhs | mscmrseg | acdc | generic | generated."""
    adapters = {"mmwhs": mmwhs_cases, "mscmrseg": mscmrseg_cases, "acdc": acdc_cases,
                "generic": generic_cases, "generated": generated_cases}
    if layout not in adapters:
        raise UserError(f"unknown dataset layout {layout!r}; choose one of {sorted(adapters)}")
    return adapters[layout](root, **kw)


def load_case(case: Case, labelset: LabelSet) -> tuple[sitk.Image, sitk.Image | None]:
    """Read and validate a case: float32 image, and uint8 class map (0..K) on the same grid."""
    image = read_image(case.image)
    if case.label is None:
        return image, None
    label = read_label(case.label)
    check_same_grid(image, label, case.image, case.label)
    classes = labelset.to_classes(sitk.GetArrayViewFromImage(label), str(case.label))
    out = sitk.GetImageFromArray(classes)
    out.CopyInformation(label)
    return image, out
