"""``make demo``: the whole cascade on the built-in phantom, at CPU scale.

    phantom (MM-WHS layout: 6 CT + 6 MRI training, 4 held-out CT)
      -> train-mtn (G_c: MRI -> CT) -> translate the labelled MRI -> synthetic CT + labels
      -> train-seg (localizer, MAUNet, SCN) on real CT + r * synthetic CT
      -> predict the held-out CT -> evaluate -> per-structure table
      -> figures/dice_bars.png, figures/qualitative.png
"""
from __future__ import annotations

import time
from pathlib import Path

from . import plots
from .config import apply_overrides, get_preset
from .data import phantom
from .data.datasets import LABEL_SETS, mmwhs_cases
from .metrics import evaluate_folders
from .reporting import format_summary

__all__ = ["run_demo"]


def run_demo(out: Path, preset: str = "demo", seed: int = 0, overrides=None,
             with_mtn: bool = True) -> dict:
    # the stages that need TensorFlow: imported after the CLI has muted its start-up lines
    from .predict import predict_files
    from .train.seg import train_segmentation
    out = Path(out)
    cfg = apply_overrides(get_preset(preset), overrides)
    t0 = time.time()
    data = out / "phantom"
    if not (data / "phantom.json").exists():
        phantom.write_dataset(data, n_ct=6, n_mr=6, n_test=4, seed=seed)
    phantom.preview(data, out / "phantom_preview.png")
    print(f"[{time.time() - t0:5.0f}s] phantom ready: {data} (preview {out / 'phantom_preview.png'})")
    generated = None
    if with_mtn:
        from .train.mtn import train_mtn
        from .translate import translate_folder
        train_mtn(cfg, data, out / "runs" / "mtn")
        generated = out / "generated"
        translate_folder(out / "runs" / "mtn", data / "mr_train", generated)
        print(f"[{time.time() - t0:5.0f}s] MTN trained, MRI translated to {generated}")
    train_segmentation(cfg, data, out / "runs" / "seg", generated=generated)
    print(f"[{time.time() - t0:5.0f}s] cascade trained: {out / 'runs' / 'seg'}")
    predict_files(out / "runs" / "seg", data / "ct_test", out / "pred", overwrite=True)
    _, summary = evaluate_folders(out / "pred", data / "ct_test", LABEL_SETS["mmwhs"],
                                  out / "results.csv")
    print(f"[{time.time() - t0:5.0f}s] held-out phantom CT, preset {cfg.name}:")
    print(format_summary(summary))
    figures = save_figures(out, summary, data)
    print(f"figures: {', '.join(str(f) for f in figures)}")
    return {"summary": summary, "seconds": time.time() - t0}


def save_figures(out: Path, summary, data: Path) -> list[Path]:
    """Per-structure Dice bars and a qualitative panel (ROI image, truth, prediction, AG map)."""
    import matplotlib.pyplot as plt
    (out / "figures").mkdir(parents=True, exist_ok=True)
    bars = plots.dice_bars(summary.rename_axis("structure").reset_index().assign(
        setting="CM-TranCaF (demo)"), "held-out phantom CT")
    case = mmwhs_cases(data, "ct", "test")[0]
    qual = plots.qualitative(out / "runs" / "seg", case.image, case.label)
    paths = [out / "figures" / "dice_bars.png", out / "figures" / "qualitative.png"]
    for fig, path in zip((bars, qual), paths):
        fig.savefig(path, dpi=90)
        plt.close(fig)
    return paths
