"""``make demo``: the whole cascade on the built-in phantom, at CPU scale, as ONE setting of the
experiment runner (the same stages and files as every experiment and the CLI):

    phantom (MM-WHS layout: 6 CT + 6 MRI training, 4 held-out CT)      <out>/work/phantom
      -> train-mtn (G_c: MRI -> CT) -> translate the labelled MRI       <out>/work/mtn, generated
      -> train-seg (localizer, MAUNet, SCN) on real CT + r * synthetic CT  <out>/work/seg
      -> predict the held-out CT -> evaluate                             <out>/work/pred
      -> per_case.csv, summary.csv, table.md (experiments' results files)
      -> figures/dice_bars.png, figures/qualitative.png
"""
from __future__ import annotations

import time
from pathlib import Path

from . import plots
from .config import apply_overrides, get_preset
from .data import phantom
from .data.datasets import mmwhs_cases
from .experiments.runner import PHANTOM_CASES, Setting, run_experiment
from .metrics import summarize
from .reporting import format_summary

__all__ = ["run_demo", "DEMO_SETTING"]

DEMO_SETTING = "CM-TranCaF (demo)"


def run_demo(out: Path, preset: str = "demo", seed: int = 0, overrides=None,
             with_mtn: bool = True) -> dict:
    """The demo experiment: one setting (MAUNet + SCN, + MTN-generated CT at the preset's ratio r
    unless ``with_mtn`` is False), the phantom's held-out CT as test cases. ``seed``: the
    phantom's; the networks train with the runner's first seed (0), as in every experiment.
    Returns the per-structure summary and the seconds."""
    out = Path(out)
    cfg = apply_overrides(get_preset(preset), overrides)
    t0 = time.time()
    data = out / "work" / "phantom"
    if not (data / "phantom.json").exists():
        phantom.write_dataset(data, *PHANTOM_CASES, seed=seed)   # 6 CT, 6 MRI, 4 test CT
    phantom.preview(data, out / "phantom_preview.png")
    print(f"[{time.time() - t0:5.0f}s] phantom ready: {data} (preview {out / 'phantom_preview.png'})")
    setting = Setting(DEMO_SETTING, mtn=with_mtn, ratio=cfg.data.ratio)
    df = run_experiment("demo", [setting], cfg, out, data=data, seeds=1, folds=0,
                        note=f"preset {cfg.name}, held-out phantom CT")
    summary = summarize(df)
    print(f"[{time.time() - t0:5.0f}s] held-out phantom CT, preset {cfg.name}:")
    print(format_summary(summary))
    figures = save_figures(out, summary, data, out / "work" / "seg" / DEMO_SETTING / "s0_f0")
    print(f"figures: {', '.join(str(f) for f in figures)}")
    return {"summary": summary, "seconds": time.time() - t0}


def save_figures(out: Path, summary, data: Path, seg_run: Path) -> list[Path]:
    """Per-structure Dice bars and a qualitative panel (ROI image, truth, prediction, AG map)."""
    import matplotlib.pyplot as plt
    (out / "figures").mkdir(parents=True, exist_ok=True)
    bars = plots.dice_bars(summary.rename_axis("structure").reset_index().assign(
        setting=DEMO_SETTING), "held-out phantom CT")
    case = mmwhs_cases(data, "ct", "test")[0]
    qual = plots.qualitative(seg_run, case.image, case.label)
    paths = [out / "figures" / "dice_bars.png", out / "figures" / "qualitative.png"]
    for fig, path in zip((bars, qual), paths):
        fig.savefig(path, dpi=90)
        plt.close(fig)
    return paths
