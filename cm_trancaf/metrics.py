"""Evaluation (SPEC "Evaluation"): Dice, Jaccard, Hausdorff (mm), HD95, ASSD, volumes.

Per case and structure. Distances use the physical spacing (anisotropic allowed):
    HD    = max(max_{a in A} d(a, B), max_{b in B} d(b, A)), d to the nearest voxel of the other
            set (as SimpleITK's HausdorffDistanceImageFilter)
    HD95, ASSD: 95th percentile and mean of the distances between the two surfaces (both ways)
Missing structures: both absent -> Dice = Jaccard = 1, distances 0; absent from exactly one ->
Dice = Jaccard = 0 and distances NaN; summaries report mean +- std over the finite values and
the number of cases left out (column ``n_missing``), never a silent NaN.
Whole heart (WHS): ``mean`` over the structures, and ``generalised`` (volume-weighted)
Dice = 2 sum_k |S_k & T_k| / sum_k (|S_k| + |T_k|) (and Jaccard likewise).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import SimpleITK as sitk
from scipy import ndimage

from .data.datasets import Case, LabelSet, load_case
from .data.io import check_same_grid, label_files, read_label
from .data.preprocess import working_grid
from .utils import UserError, atomic_path

__all__ = ["overlap", "distances", "evaluate_case", "summarize", "evaluate_folders",
           "anatomy_score"]


def overlap(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(Dice, Jaccard) of two boolean masks."""
    sa, sb = int(a.sum()), int(b.sum())
    if sa + sb == 0:
        return 1.0, 1.0
    inter = int(np.logical_and(a, b).sum())
    return 2 * inter / (sa + sb), inter / (sa + sb - inter)


def _surface(mask):
    return mask & ~ndimage.binary_erosion(mask, structure=np.ones((3, 3, 3)), border_value=0)


def _distance_to(surface: np.ndarray, spacing_dhw) -> np.ndarray:
    """Euclidean distance (mm) of every voxel to the nearest ``True`` voxel of ``surface``: the
    values of scipy's ``distance_transform_edt(~surface, sampling=spacing_dhw)``, from SimpleITK's
    Maurer transform (multi-threaded, several times faster on 1 mm grids)."""
    img = sitk.GetImageFromArray(surface.astype(np.uint8))
    img.SetSpacing(tuple(float(s) for s in spacing_dhw[::-1]))
    d = sitk.GetArrayFromImage(sitk.SignedMaurerDistanceMap(
        img, insideIsPositive=False, squaredDistance=False, useImageSpacing=True))
    return np.where(surface, 0.0, d)


def distances(a: np.ndarray, b: np.ndarray, spacing_dhw) -> tuple[float, float, float]:
    """(HD, HD95, ASSD) in mm between boolean masks on a grid with ``spacing_dhw``.

    HD = max(max_{x in A} d(x, B), max_{y in B} d(y, A)) over all voxels; HD95 and ASSD over the
    surface voxels, to the other mask's surface. Two distance transforms: outside a mask, the
    nearest voxel of the mask is one of its surface voxels (a voxel whose 26 neighbours are all
    inside has a neighbour closer to any outside point), so d(x, B) = d(x, surface of B) there."""
    if not a.any() and not b.any():
        return 0.0, 0.0, 0.0
    if not a.any() or not b.any():
        return float("nan"), float("nan"), float("nan")
    idx = np.argwhere(a | b)                      # crop to the joint bounding box (+1 voxel)
    lo, hi = np.maximum(idx.min(0) - 1, 0), np.minimum(idx.max(0) + 2, a.shape)
    box = tuple(slice(l, h) for l, h in zip(lo, hi))
    a, b = np.pad(a[box], 1), np.pad(b[box], 1)
    sa, sb = _surface(a), _surface(b)
    to_sa, to_sb = _distance_to(sa, spacing_dhw), _distance_to(sb, spacing_dhw)  # to the surfaces
    hd = max(to_sb[a & ~b].max(initial=0.0), to_sa[b & ~a].max(initial=0.0))
    surf = np.concatenate([to_sb[sa], to_sa[sb]])
    return float(hd), float(np.percentile(surf, 95)), float(surf.mean())


def evaluate_case(pred: np.ndarray, truth: np.ndarray, spacing_xyz, labelset: LabelSet,
                  case_id: str = "") -> list[dict]:
    """Rows (one per structure + the two WHS rows) for class maps ``pred``, ``truth`` (D, H, W)."""
    sp = tuple(float(s) for s in spacing_xyz)[::-1]
    voxel_ml = float(np.prod(sp)) / 1000.0
    rows, inter_sum, size_sum = [], 0, 0
    for k, name in enumerate(labelset.names, start=1):
        a, b = pred == k, truth == k
        dice, jac = overlap(a, b)
        hd, hd95, assd = distances(a, b, sp)
        inter_sum += int(np.logical_and(a, b).sum())
        size_sum += int(a.sum() + b.sum())
        rows.append({"case": case_id, "structure": name, "missing": bool(a.any()) != bool(b.any()),
                     "dice": dice, "jaccard": jac, "hd_mm": hd,
                     "hd95_mm": hd95, "assd_mm": assd, "vol_pred_ml": a.sum() * voxel_ml,
                     "vol_gt_ml": b.sum() * voxel_ml})
    mean = {m: _nanmean([r[m] for r in rows]) for m in ("dice", "jaccard", "hd_mm", "hd95_mm",
                                                         "assd_mm")}
    rows.append({"case": case_id, "structure": "WHS_mean", **mean})
    gd = 2 * inter_sum / size_sum if size_sum else 1.0
    rows.append({"case": case_id, "structure": "WHS_generalised", "dice": gd,
                 "jaccard": gd / (2 - gd)})
    return rows


def _nanmean(values) -> float:
    """Mean over the defined values; NaN, without numpy's warning, when none is (an empty
    prediction has no distance to any structure)."""
    values = np.asarray(values, np.float64)
    return float(np.nanmean(values)) if not np.isnan(values).all() else float("nan")


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """mean, std and n_missing (NaN distances) per structure, in the label set's order."""
    metrics = ["dice", "jaccard", "hd_mm", "hd95_mm", "assd_mm"]
    order = list(dict.fromkeys(df["structure"]))
    g = df.groupby("structure", sort=False)[metrics]
    out = g.mean().add_suffix("_mean").join(g.std(ddof=0).add_suffix("_std"))
    out["n_cases"] = g.size()
    out["n_missing"] = df.groupby("structure", sort=False)["missing"].apply(
        lambda s: int(s.fillna(False).astype(bool).sum()))
    return out.loc[order]


def evaluate_folders(pred_dir, gt_dir, labelset: LabelSet, out_csv=None,
                     iso1mm: bool = False, cases: list[str] | None = None
                     ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Pair predicted and ground-truth label maps by case id (``data.io.label_files``: any data
    set's label suffix, or the same file name in both folders); per-case rows and the summary
    (optionally CSV). Cases found in only one folder are named in a warning and left out;
    ``cases`` restricts the evaluation to those case ids, each of which must be in both."""
    preds, gts = label_files(Path(pred_dir)), label_files(Path(gt_dir))
    if cases is not None:
        for folder, found in ((pred_dir, preds), (gt_dir, gts)):
            missing = sorted(set(cases) - set(found))
            if missing:
                raise UserError(f"{folder}: no label file for case(s) {missing[:10]}")
        preds, gts = ({c: d[c] for c in cases} for d in (preds, gts))
    common = sorted(set(preds) & set(gts))
    if not common:
        raise UserError(f"no case ids in common between {pred_dir} ({sorted(preds)[:3]} ...) "
                        f"and {gt_dir} ({sorted(gts)[:3]} ...)")
    for folder, only in ((pred_dir, set(preds) - set(gts)), (gt_dir, set(gts) - set(preds))):
        if only:
            print(f"warning: {len(only)} case(s) only in {folder}, not evaluated: "
                  f"{', '.join(sorted(only)[:10])}{' ...' if len(only) > 10 else ''}",
                  file=sys.stderr)
    rows = []
    for cid in common:
        p, t = read_label(preds[cid], labelset.codes), read_label(gts[cid], labelset.codes)
        check_same_grid(t, p, gts[cid], preds[cid])
        if iso1mm:  # MM-WHS challenge: 1 mm isotropic, nearest neighbour
            grid = working_grid(t, (1.0, 1.0, 1.0))
            p, t = [sitk.Resample(x, grid.reference(), sitk.Transform(), sitk.sitkNearestNeighbor,
                                  0, x.GetPixelID()) for x in (p, t)]
        pa = labelset.to_classes(sitk.GetArrayViewFromImage(p), str(preds[cid]))
        ta = labelset.to_classes(sitk.GetArrayViewFromImage(t), str(gts[cid]))
        rows += evaluate_case(pa, ta, t.GetSpacing(), labelset, cid)
    df = pd.DataFrame(rows)
    summary = summarize(df)
    if out_csv is not None:
        with atomic_path(out_csv) as tmp:
            df.to_csv(tmp, index=False)
        with atomic_path(Path(out_csv).with_name(Path(out_csv).stem + "_summary.csv")) as tmp:
            summary.to_csv(tmp)
    return df, summary


def anatomy_score(segment: Callable[[sitk.Image], sitk.Image], cases: list[Case],
                  labelset: LabelSet) -> pd.DataFrame:
    """How much of the source anatomy a translation keeps, without paired images: the "FCN score"
    of Zhu et al. 2017. ``cases``: translated images with the labels of their source images;
    ``segment``: image -> label map in the data set's codes, from a model trained on real
    target-domain images. Per-case rows as ``evaluate_case`` (Dice of the segmentation of the
    translated image against the source labels): 1 when the translation keeps every structure
    where the labels say it is and the model sees it there."""
    rows = []
    for case in cases:
        image, truth = load_case(case, labelset)
        # an image enhanced once on the working grid (translate --grid working) is not enhanced again
        pred = segment(image, enhanced=True) if case.enhanced else segment(image)
        classes = labelset.to_classes(sitk.GetArrayViewFromImage(pred), f"segmentation of {case.image}")
        rows += evaluate_case(classes, sitk.GetArrayViewFromImage(truth), truth.GetSpacing(),
                              labelset, case.case_id)
    return pd.DataFrame(rows)
