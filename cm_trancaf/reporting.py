"""Plain-text and markdown tables of evaluation summaries."""
from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["format_summary"]


def format_summary(summary: pd.DataFrame, markdown: bool = False) -> str:
    """Per-structure mean +- std table (Dice, Jaccard in %; distances in mm)."""
    def cell(row, m, scale):
        mean, std = row.get(f"{m}_mean"), row.get(f"{m}_std")
        if mean is None or not np.isfinite(mean):
            return "-"
        return f"{mean * scale:.1f} ± {std * scale:.1f}" if scale != 1 else f"{mean:.2f} ± {std:.2f}"
    head = ["structure", "Dice %", "Jaccard %", "HD mm", "HD95 mm", "ASSD mm", "n", "missing"]
    rows = []
    for name, row in summary.iterrows():
        rows.append([str(name), cell(row, "dice", 100), cell(row, "jaccard", 100),
                     cell(row, "hd_mm", 1), cell(row, "hd95_mm", 1), cell(row, "assd_mm", 1),
                     str(int(row["n_cases"])), str(int(row["n_missing"]))])
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
    fmt = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths))
    out = [fmt(head), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows]
    out.append("WHS_mean: mean over the structures; WHS_generalised: volume-weighted Dice/Jaccard")
    return "\n".join(out)
