"""Figures from the experiment CSVs (``notebooks/`` call these; each returns a matplotlib Figure).

    dice_bars(summary)            per-structure Dice, one bar per setting, std as error bars
    ratio_curve(summary)          mean Dice against the generated-data ratio r (table 2)
    ablation_heatmap(summary)     settings x structures Dice heatmap (tables 4-6)
    qualitative(run, image, label)  image, ground truth, prediction and AG maps, mid-slices
    translation(rows)             source image, its translation G(source), a real target image,
                                  each at the slice through its own LV centre (same level)
``summary`` is a ``summary.csv`` from ``cm_trancaf.experiments`` (a DataFrame or a path).
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from .config import apply_overrides, load_config
from .data.io import read_image, read_label
from .data.preprocess import crop, prepare, resample, resample_labels, working_grid

__all__ = ["load_summary", "dice_bars", "ratio_curve", "ablation_heatmap", "qualitative",
           "translation"]

STRUCTURES = ["LV", "RV", "LA", "RA", "Myo", "AA", "PA"]


def _plt():
    import matplotlib
    if matplotlib.get_backend().lower() not in ("agg", "module://matplotlib_inline.backend_inline"):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def load_summary(summary) -> pd.DataFrame:
    if isinstance(summary, pd.DataFrame):
        return summary
    df = pd.read_csv(summary)
    need = {"setting", "structure", "dice_mean", "dice_std"}
    if not need <= set(df.columns):
        raise ValueError(f"{summary}: not an experiment summary.csv (needs columns {sorted(need)})")
    return df


def _structures(df: pd.DataFrame) -> list[str]:
    present = set(df["structure"])
    return [s for s in STRUCTURES if s in present] or sorted(present - {"WHS_mean",
                                                                        "WHS_generalised"})


def dice_bars(summary, title: str = ""):
    df = load_summary(summary)
    plt = _plt()
    structures = _structures(df) + ["WHS_mean"]
    settings = list(dict.fromkeys(df["setting"]))
    fig, ax = plt.subplots(figsize=(1.2 * len(structures) + 2, 4))
    width = 0.8 / len(settings)
    x = np.arange(len(structures))
    for i, s in enumerate(settings):
        d = df[df["setting"] == s].set_index("structure").reindex(structures)
        ax.bar(x + i * width - 0.4 + width / 2, 100 * d["dice_mean"], width,
               yerr=100 * d["dice_std"], capsize=2, label=s)
    ax.set_xticks(x, [s.replace("WHS_mean", "mean") for s in structures])
    ax.set_ylabel("Dice %")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8, ncol=min(4, len(settings)))
    ax.set_title(title)
    fig.tight_layout()
    return fig


def ratio_curve(summary, title: str = "generated-data ratio r"):
    df = load_summary(summary)
    plt = _plt()
    whs = df[df["structure"] == "WHS_mean"].copy()
    whs["r"] = [float(re.search(r"r=([0-9.]+)", s).group(1)) for s in whs["setting"]]
    whs = whs.sort_values("r")
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.errorbar(whs["r"], 100 * whs["dice_mean"], yerr=100 * whs["dice_std"], marker="o",
                capsize=3)
    ax.set_xlabel("r (share of MTN-generated CT used)")
    ax.set_ylabel("mean Dice % (7 structures)")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def ablation_heatmap(summary, title: str = ""):
    df = load_summary(summary)
    plt = _plt()
    structures = _structures(df) + ["WHS_mean"]
    settings = list(dict.fromkeys(df["setting"]))
    grid = df.pivot(index="setting", columns="structure", values="dice_mean").reindex(
        index=settings, columns=structures) * 100
    fig, ax = plt.subplots(figsize=(1.0 * len(structures) + 3, 0.5 * len(settings) + 1.5))
    im = ax.imshow(grid.to_numpy(), cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(structures)), [s.replace("WHS_mean", "mean") for s in structures])
    ax.set_yticks(range(len(settings)), settings)
    for (i, j), v in np.ndenumerate(grid.to_numpy()):
        if np.isfinite(v):
            ax.text(j, i, f"{v:.0f}", ha="center", va="center", color="w", fontsize=8)
    fig.colorbar(im, ax=ax, label="Dice %")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def qualitative(run_dir, image_path, label_path=None, modality: str | None = None,
                overrides=()):
    """Mid-slices through the ROI: image, ground truth, prediction and the finest AG map.
    ``overrides``: a paired setting's switches on the same run (``scn.enabled=False``,
    ``infer.*``), as the experiment evaluated it."""
    from .inference import Cascade, locate      # TensorFlow: only for this figure
    plt = _plt()
    infer = [o for o in overrides if o.strip().startswith("infer.")]
    other = [o for o in overrides if o not in infer]
    with_scn = apply_overrides(load_config(Path(run_dir) / "config.json"), other).scn.enabled \
        if other else True
    c = Cascade.load(run_dir, with_scn=with_scn, infer=infer)
    k = c.labelset.num_classes
    prep = prepare(read_image(image_path), None, c.cfg.data, modality or c.cfg.data.modality, k)
    center = locate(c.localizer, prep, c.cfg)
    roi, start = crop(prep.image, center, c.cfg.data.roi_size, fill=-1.0)
    x = roi[None, ..., None].astype(np.float32)
    probs, alphas = c.maunet(x, training=False, return_attention=True) \
        if hasattr(c.maunet, "cfg") else (c.maunet(x), [])
    if c.scn is not None:
        probs = c.scn(probs, x, training=False)
    pred = np.argmax(np.asarray(probs)[0], -1)
    panels = [(roi, "image", "gray"), (pred, "prediction", "tab10")]
    if label_path is not None:
        lab = read_label(label_path, c.labelset.codes)
        classes = sitk.GetImageFromArray(c.labelset.to_classes(sitk.GetArrayViewFromImage(lab)))
        classes.CopyInformation(lab)
        gt = sitk.GetArrayFromImage(resample_labels(classes, prep.grid, k))
        gt_roi, _ = crop(gt, center, c.cfg.data.roi_size, fill=0)
        panels.insert(1, (gt_roi, "ground truth", "tab10"))
    if alphas:
        panels.append((np.asarray(alphas[0])[0, ..., 0], "AG alpha (finest)", "magma"))
    z = roi.shape[0] // 2
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4))
    for ax, (vol, title, cmap) in zip(np.atleast_1d(axes), panels):
        if cmap == "tab10":                                   # labels over the image
            ax.imshow(roi[z], cmap="gray")
            ax.imshow(np.ma.masked_equal(vol[z], 0), cmap=cmap, vmin=0, vmax=9, alpha=0.6,
                      interpolation="nearest")
        else:
            ax.imshow(vol[z], cmap=cmap)
        ax.set_title(title)
        ax.axis("off")
    fig.tight_layout()
    return fig


def level_slice(image_path, label_path, code: int | None = None,
                grid_axes: str = "world") -> tuple[np.ndarray, np.ndarray]:
    """(image, label) slices through the centre of the structure with file ``code`` (all
    foreground when ``code`` is None or absent), on a grid of the image's own spacing:
    ``grid_axes`` "world" = axial slices of an identity-direction grid (every volume in one
    orientation); "image" = the image's own slices (e.g. a short-axis stack's short-axis
    planes), as the working grid of ``data.grid_axes=image`` sees them."""
    image = read_image(image_path)
    grid = working_grid(image, image.GetSpacing(), grid_axes)
    arr = sitk.GetArrayFromImage(resample(image, grid, sitk.sitkLinear,
                                          float(np.min(sitk.GetArrayViewFromImage(image)))))
    lab = sitk.GetArrayFromImage(resample(read_label(label_path), grid,
                                          sitk.sitkNearestNeighbor, 0))
    mask = lab == code if code is not None and np.any(lab == code) else lab > 0
    z = int(round(np.argwhere(mask)[:, 0].mean())) if mask.any() else arr.shape[0] // 2
    return arr[z], lab[z]


def translation(rows, code: int | None = None, titles=("source", "G(source)", "real target"),
                grid_axes: str = "world"):
    """One row per ``(source, synthetic, target)`` triple of ``(image, label)`` paths: the
    images at the slice through the centre of structure ``code`` (e.g. MS-CMRSeg's LV, 500), with
    the label contours, cut along ``grid_axes`` (``level_slice``); 1st-99th percentile window per
    panel."""
    plt = _plt()
    rows = list(rows)
    fig, axes = plt.subplots(len(rows), 3, figsize=(9, 3.1 * len(rows)), squeeze=False)
    for r, triple in enumerate(rows):
        for c, (image_path, label_path) in enumerate(triple):
            img, lab = level_slice(image_path, label_path, code, grid_axes)
            lo, hi = np.percentile(img, (1, 99))
            ax = axes[r, c]
            ax.imshow(img, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1)
            if lab.any():
                ax.contour(lab > 0, levels=[0.5], colors="y", linewidths=0.6)
            ax.set_title(f"{titles[c]}: {Path(image_path).name.split('.nii')[0]}", fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    return fig
