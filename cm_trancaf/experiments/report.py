"""Summaries and the paper-shaped markdown table of an experiment's per-case rows."""
from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["STRUCTURES", "PUBLISHED", "summarize_experiment", "markdown_table", "paired_table",
           "anatomy_table"]

STRUCTURES = ("LV", "RV", "LA", "RA", "Myo", "AA", "PA")
# Published numbers (CM-TranCaF paper, MM-WHS 2017 CT test set; SPEC "Results to reproduce").
PUBLISHED = {"CM-TranCaF (paper)": {"WHS_mean dice": 91.1, "WHS_mean hd_mm": 14.386}}


def summarize_experiment(df: pd.DataFrame) -> pd.DataFrame:
    """Mean and std (over test cases x seeds x folds) per setting and structure."""
    metrics = [m for m in ("dice", "jaccard", "hd_mm", "hd95_mm", "assd_mm") if m in df]
    g = df.groupby(["setting", "structure"], sort=False)[metrics]
    out = g.mean().add_suffix("_mean").join(g.std(ddof=0).add_suffix("_std"))
    out["n"] = g.size()
    return out.reset_index()


def markdown_table(summary: pd.DataFrame, order: list[str], published: dict | None = None,
                   note: str | None = None) -> str:
    """Rows: settings. Columns: Dice % per structure (and HD mm per structure when there are at
    most 4, as for the 3-class cardiac MRI sets), then the mean over structures (Dice, Jaccard, HD)
    and the generalised Dice. Published rows use the same column keys, e.g. ``"LV dice"``."""
    present = set(summary["structure"]) - {"WHS_mean", "WHS_generalised"}
    structures = [c for c in STRUCTURES if c in present] + sorted(present - set(STRUCTURES))
    cols = [f"{c} dice" for c in structures]
    head = [f"{c} Dice %" for c in structures]
    if len(structures) <= 4:
        cols += [f"{c} hd_mm" for c in structures]
        head += [f"{c} HD mm" for c in structures]
    cols += ["WHS_mean dice", "WHS_mean jaccard", "WHS_mean hd_mm", "WHS_generalised dice"]
    head = ["setting", *head, "mean Dice %", "mean Jaccard %", "mean HD mm", "generalised Dice %"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    s = summary.set_index(["setting", "structure"])
    for name in order:
        cells = [name]
        for col in cols:
            structure, metric = col.split(" ")
            try:
                mean, std = s.loc[(name, structure), f"{metric}_mean"], s.loc[(name, structure),
                                                                              f"{metric}_std"]
            except KeyError:
                cells.append("-")
                continue
            scale = 1 if metric == "hd_mm" else 100
            cells.append("-" if not np.isfinite(mean) else f"{mean * scale:.1f} ± {std * scale:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    for name, values in (published or {}).items():
        cells = [name] + [f"{values[c]:g}" if c in values else "" for c in cols]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if note is None and published:      # said only where a published row stands beside ours
        note = "Published rows: as their names say, other cases and splits: indicative only."
    lines.append("Mean ± std over test cases (x seeds x folds). mean = WHS_mean, the mean over the "
                 f"{len(structures)} structures; generalised = volume-weighted Dice."
                 + (f" {note}" if note else ""))
    return "\n".join(lines)


def paired_table(df: pd.DataFrame, order: list[str]) -> str:
    """Each setting against the first of ``order`` on the same test cases, seeds and folds: the
    per-seed mean Dice (mean over the structures), the paired difference in points (mean ± std
    over the pairs) and how many pairs are better / worse; empty with fewer than two settings."""
    whs = df[df["structure"] == "WHS_mean"]
    names = [n for n in order if n in set(whs["setting"])]
    if len(names) < 2:
        return ""
    keys = ["seed", "fold", "case"]
    per = {n: whs[whs["setting"] == n].set_index(keys)["dice"] * 100 for n in names}
    base = names[0]
    lines = ["", f'## Paired against "{base}" (mean Dice over the structures, same test case, '
             "seed and fold)", "", "| setting | pairs | mean Dice % per seed | difference, points "
             "| better / worse |", "|---|---|---|---|---|"]
    for n in names:
        seeds = per[n].groupby(level="seed").mean()
        by_seed = ", ".join(f"{v:.1f}" for v in seeds)
        if n == base:
            lines.append(f"| {n} | {len(per[n])} | {by_seed} | | |")
            continue
        a, b = per[n].align(per[base], join="inner")
        d = a - b
        cell = f"{round(d.mean(), 1) + 0.0:+.1f} ± {d.std(ddof=0):.1f}" if len(d) else "-"
        lines.append(f"| {n} | {len(d)} | {by_seed} | {cell} | {int((d > 0).sum())} / "
                     f"{int((d < 0).sum())} |")
    return "\n".join(lines) + "\n"


def anatomy_table(rows: list[dict]) -> str:
    """The anatomy kept by each setting's synthetic source images (``anatomy.csv``), mean and std
    over seeds x folds; empty when no setting has synthetic images."""
    if not rows:
        return ""
    df = pd.DataFrame(rows)
    lines = ["", "## Anatomy kept by the synthetic source images (FCN score)", "",
             "| setting | segmenter | Dice on synthetic images % | its Dice on real test images % "
             "| ratio |", "|---|---|---|---|---|"]
    for (setting, seg), g in df.groupby(["setting", "segmenter"], sort=False):
        cell = lambda c, k=100, d=1: f"{g[c].mean() * k:.{d}f} ± {g[c].std(ddof=0) * k:.{d}f}"
        lines.append(f"| {setting} | {seg} | {cell('anatomy_dice')} | "
                     f"{cell('segmenter_real_dice')} | {cell('ratio_to_real', 1, 2)} |")
    lines += ["", "The synthetic images are segmented by the cascade trained on real target cases "
              "alone and scored against their source labels (Zhu et al. 2017's FCN score): a "
              "translation that keeps the anatomy scores close to that cascade's Dice on real "
              "images (ratio near 1)."]
    return "\n".join(lines) + "\n"
