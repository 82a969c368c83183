"""MTN quality on held-out phantoms: G_c(MRI) against the true CT rendering of the same anatomy.

Each held-out anatomy is rendered as MRI and as CT on one grid, so a ground-truth CT exists for
every MRI. Both are preprocessed like training data (working grid, normalised to [-1, 1]);
G_c(MRI) is compared with the CT inside the body by mean absolute error (in HU) and SSIM
(Gaussian window, sigma 1.5 voxels), against the trivial baseline "the normalised MRI itself"
and, as a reference that needs the paired ground truth (which G_c never sees), the best
context-free intensity mapping fitted on these very pairs.

    python benchmarks/mtn_quality.py --run demo_out/runs/mtn --out results/mtn_quality
    python benchmarks/mtn_quality.py --train --data demo_out/phantom --out results/mtn_quality \
        --set mtn.steps=3000                 # the README's row: about 15 minutes on 2 cores

Writes ``mtn_quality.csv`` (one row per case and method), prints a table, saves ``mtn_quality.png``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage


def ssim(a: np.ndarray, b: np.ndarray, mask: np.ndarray, data_range: float = 2.0) -> float:
    """Mean SSIM (Wang et al. 2004, Gaussian window sigma 1.5) over ``mask``."""
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    f = lambda x: ndimage.gaussian_filter(x, 1.5)
    mu_a, mu_b = f(a), f(b)
    va, vb = f(a * a) - mu_a ** 2, f(b * b) - mu_b ** 2
    cov = f(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (va + vb + c2))
    return float(s[mask].mean())


ORACLE = "oracle intensity map"


def oracle_lut(mris: list[np.ndarray], cts: list[np.ndarray], bins: int = 64):
    """The best context-free mapping MRI value -> CT value (median CT per MRI bin), fitted on the
    evaluated pairs themselves: a reference that needs the paired ground truth, which G_c never
    sees. What G_c gains beyond it has to come from context (fat and blood are both bright in
    MRI; -100 and +330 HU in CT)."""
    edges = np.linspace(-1, 1, bins + 1)
    which = lambda x: np.clip(np.digitize(x, edges) - 1, 0, bins - 1)
    m, c = np.concatenate([x.ravel() for x in mris]), np.concatenate([x.ravel() for x in cts])
    k = which(m)
    table = np.array([np.median(c[k == b]) if np.any(k == b) else -1.0 for b in range(bins)],
                     np.float32)
    return lambda x: table[which(x)]


def main(argv=None) -> int:
    from cm_trancaf.cli import runtime_starter
    from cm_trancaf.config import apply_overrides, get_preset
    from cm_trancaf.data import phantom
    from cm_trancaf.data.preprocess import prepare
    from cm_trancaf.inference import load_generator, translate_volume
    from cm_trancaf.train.mtn import train_mtn
    import SimpleITK as sitk

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", help="a train-mtn run folder")
    p.add_argument("--train", action="store_true", help="train a fresh MTN (preset --preset)")
    p.add_argument("--data", help="phantom folder to train on (with --train)")
    p.add_argument("--preset", default="cpu")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for --train, e.g. mtn.steps=2000")
    p.add_argument("--cases", type=int, default=4)
    p.add_argument("--out", default="results/mtn_quality")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    run = Path(args.run) if args.run else out / "mtn_run"
    if args.train:
        cfg = apply_overrides(get_preset(args.preset), args.overrides)
        runtime_starter(cfg.run)()           # run.deterministic: one inter-op thread, set first
        train_mtn(cfg, args.data, run)
    cfg, meta, g_c = load_generator(run)
    pairs = []
    for i in range(args.cases):
        rng = np.random.default_rng([12345, i])                  # anatomies never used in training
        anat = phantom.random_anatomy(rng)
        spacing = phantom.DEFAULT_SPACING["ct"]
        grid = phantom.phantom_grid(anat, "ct", spacing, phantom.DEFAULT_FOV["ct"], rng)
        heart, tissue = phantom.sample(anat, grid)
        ct = grid.apply(sitk.GetImageFromArray(phantom.render_ct(heart, tissue, spacing, rng)))
        mr = grid.apply(sitk.GetImageFromArray(phantom.render_mr(heart, tissue, spacing, rng)))
        pc = prepare(ct, None, cfg.data, "ct", 2)
        pm = prepare(mr, None, cfg.data, "mr", 2)
        body = ndimage.binary_erosion(pc.image > -0.9, iterations=1)   # inside the body outline
        pairs.append((pm.image, translate_volume(g_c, pm.image, cfg.mtn.patch_size), pc.image, body))
    lut = oracle_lut([p[0] for p in pairs], [p[2] for p in pairs])
    hu = (cfg.data.ct_window[1] - cfg.data.ct_window[0]) / 2           # [-1, 1] -> HU
    rows = []
    for i, (mri, fake, ct, body) in enumerate(pairs):
        for name, pred in (("G_c(MRI)", fake), ("MRI baseline", mri), (ORACLE, lut(mri))):
            rows.append({"case": i, "method": name,
                         "mae_hu": float(np.abs(pred - ct)[body].mean() * hu),
                         "ssim": ssim(pred, ct, body)})
    shown = pairs[0][:3]                                           # MRI, G_c(MRI), CT
    df = pd.DataFrame(rows)
    df.to_csv(out / "mtn_quality.csv", index=False)
    table = df.groupby("method")[["mae_hu", "ssim"]].agg(["mean", "std"])
    print(table.to_string(float_format=lambda v: f"{v:.3f}"))
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(12, 4))
    z = shown[0].shape[0] // 2
    for ax, img, title in zip(axes, shown, ("MRI", "G_c(MRI)", "true CT")):
        ax.imshow(img[z], cmap="gray", vmin=-1, vmax=1)
        ax.set_title(title)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out / "mtn_quality.png", dpi=80)
    print(f"wrote {out / 'mtn_quality.csv'} and {out / 'mtn_quality.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
