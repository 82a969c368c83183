"""The heart localizer alone, on development data: its centre-error distribution per setting.

A lost heart (a test patient whose ROI misses the heart) is the cascade's worst failure, and the
localizer causes it. This trains only the localizer (seconds to minutes) and measures the distance
between its heart centre and the label map's, on patients no training of that localizer saw and
that are never a test patient of the experiments:
- ``acdc``: K-fold cross-validation over the *training* patients of ``experiments/acdc.py``
  (its 20 test patients, same split seed, are not read);
- ``mmwhs``: K-fold cross-validation over the training cases of the first fold of
  ``experiments/mmwhs_ct.py`` (``--outer-folds``; that fold's test cases are not read);
- ``mscmrseg``: trained on the labelled LGE patients of ``experiments/mscmrseg_lge.py``, measured
  on its "unlabelled" LGE patients (images the MTN may see; their labels train nothing); the
  test LGE patients are not read.

Each ``--variant "name: key=value, key=value"`` is a set of config overrides on the preset;
"baseline" (the preset itself) is always run. Each ``--infer "name: infer.key=value"`` measures
every trained localizer again with other inference settings (no retraining), beside "preset".
Settings for the localizer are chosen here, on development data, before any test number.
Each ``--gamma G`` measures every trained localizer again on the development patients with their
working images' contrast changed (``gamma_contrast``: x in [-1, 1] -> 2 ((x + 1) / 2)^G - 1, a
monotone change that the MRI's percentile normalisation does not undo, as a scanner's or
sequence's other contrast), the inference "gamma G".

    python benchmarks/localizer_cv.py --dataset acdc --data ../shared/data/acdc --folds 4 \\
        --variant "intensity 0.3: localizer.intensity=0.3" --infer "7 views: infer.localizer_views=7"
Writes ``localizer_cv.csv`` (one row per variant and case) and ``summary.csv`` into ``--out``,
prints a table: median / 90th percentile / max error, and cases beyond ``--far`` mm.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd


def parse_variant(text: str) -> tuple[str, list[str]]:
    """``"name: a=1, b=2"`` -> ("name", ["a=1", "b=2"])."""
    name, _, rest = text.partition(":")
    overrides = [o.strip() for o in rest.split(",") if o.strip()]
    if not name.strip() or not overrides:
        raise SystemExit(f"--variant {text!r}: expected 'name: key=value[, key=value]'")
    return name.strip(), overrides


def dev_splits(dataset: str, data: Path, folds: int, split_seed: int, n_test: int = 20,
               outer_folds: int = 4, base=None):
    """[(train cases, dev cases)], never containing an experiment's test patients."""
    from cm_trancaf.experiments.cohorts import (acdc_cohort, kfold_splits, mmwhs_cohort,
                                                mscmrseg_cohort)
    if dataset in ("acdc", "mmwhs"):
        if dataset == "acdc":
            train, _test = acdc_cohort(data, n_test, seed=split_seed).splits[0]
        else:                  # the training cases of the first fold of experiments/mmwhs_ct.py
            train, _test = mmwhs_cohort(base, data, outer_folds).splits[0]
        by_id = {c.case_id: c for c in train}
        return [([by_id[i] for i in tr], [by_id[i] for i in te])
                for tr, te in kfold_splits(sorted(by_id), folds, split_seed)]
    cohort = mscmrseg_cohort(data, seed=split_seed)
    train = list(cohort.splits[0][0])
    ids = {c.case_id for c in train}
    return [(train, [c for c in cohort.mtn_target if c.case_id not in ids])]


def gamma_contrast(image: np.ndarray, gamma: float) -> np.ndarray:
    """``image`` in [-1, 1] with its contrast bent by ``gamma`` (ends and order kept)."""
    return (2 * ((np.clip(image, -1, 1) + 1) / 2) ** gamma - 1).astype(np.float32)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=("acdc", "mscmrseg", "mmwhs"), required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--preset", default=None, help="default: cpu for mmwhs, else cmr_cpu")
    p.add_argument("--folds", type=int, default=4, help="acdc: folds over the training patients")
    p.add_argument("--split-seed", type=int, default=0, help="the experiments' patient split")
    p.add_argument("--n-test", type=int, default=20, help="acdc: the experiment's test patients")
    p.add_argument("--outer-folds", type=int, default=4,
                   help="mmwhs: the experiment's folds; its first fold's training cases are used")
    p.add_argument("--variant", action="append", default=[], metavar="'NAME: K=V, ...'")
    p.add_argument("--infer", action="append", default=[], metavar="'NAME: K=V, ...'",
                   help="inference settings (infer.*) each trained localizer is also measured with")
    p.add_argument("--gamma", type=float, action="append", default=[],
                   help="also measure on the development images with this contrast gamma")
    p.add_argument("--far", type=float, default=30.0, help="errors above this (mm) are counted")
    p.add_argument("--out", default="results/localizer_cv")
    args = p.parse_args(argv)
    args.preset = args.preset or ("cpu" if args.dataset == "mmwhs" else "cmr_cpu")
    variants = [("baseline", [])] + [parse_variant(v) for v in args.variant]
    inference = [("preset", [])] + [parse_variant(v) for v in args.infer]
    if any(not g > 0 for g in args.gamma):
        raise SystemExit(f"--gamma must be > 0, got {args.gamma}")

    from cm_trancaf.cli import runtime_starter
    from cm_trancaf.config import apply_overrides, get_preset
    from cm_trancaf.utils import import_tensorflow_quietly
    fixed = [] if args.dataset == "mmwhs" else [f"data.labels={args.dataset}", "data.modality=mr"]
    # run.deterministic sets one inter-op thread: before the runtime starts
    base = apply_overrides(get_preset(args.preset), fixed)
    import_tensorflow_quietly(False, runtime_starter(base.run))
    import keras
    from cm_trancaf.checkpoint import restore
    from cm_trancaf.data.datasets import get_labelset
    from cm_trancaf.inference import center_errors_mm
    from cm_trancaf.models.localizer import build_localizer
    from cm_trancaf.train.seg import prepare_cases, train_localizer
    from cm_trancaf.utils import atomic_path

    splits = dev_splits(args.dataset, Path(args.data), args.folds, args.split_seed, args.n_test,
                        args.outer_folds, base)
    rows, prepared = [], {}
    for name, overrides in variants:
        cfg = apply_overrides(get_preset(args.preset), fixed + overrides)
        data_key = repr(cfg.data)                # preprocessing is shared by variants alike
        for fold, (train, dev) in enumerate(splits):
            if (data_key, fold) not in prepared:
                labelset = get_labelset(cfg.data.labels)
                prepared[data_key, fold] = (prepare_cases(train, labelset, cfg),
                                            prepare_cases(dev, labelset, cfg))
            tr, dv = prepared[data_key, fold]
            keras.utils.set_random_seed(cfg.run.seed)
            t0 = time.time()
            with tempfile.TemporaryDirectory() as run_dir:
                train_localizer(cfg, tr, [], Path(run_dir))
                model = build_localizer(cfg.localizer)
                restore(Path(run_dir), "best", model=model)
            seconds = time.time() - t0
            measures = [(how, dv, apply_overrides(cfg, o)) for how, o in inference]
            measures += [(f"gamma {g:g}", [replace(c, image=gamma_contrast(c.image, g))
                                           for c in dv], cfg) for g in args.gamma]
            for how, cases, infer_cfg in measures:
                err = center_errors_mm(model, cases, infer_cfg)
                rows += [{"variant": name, "inference": how, "overrides": " ".join(overrides),
                          "fold": fold, "case": c.case_id, "error_mm": float(e),
                          "train_s": seconds} for c, e in zip(dv, err)]
                print(f"[localizer_cv] {name} ({how}) fold {fold}: median {np.median(err):.1f} mm,"
                      f" max {np.max(err):.1f} mm ({seconds:.0f} s)", flush=True)
    df = pd.DataFrame(rows)
    summary = df.groupby(["variant", "inference"], sort=False).agg(
        cases=("error_mm", "size"), median_mm=("error_mm", "median"),
        p90_mm=("error_mm", lambda e: float(np.percentile(e, 90))), max_mm=("error_mm", "max"),
        far=("error_mm", lambda e: int((e > args.far).sum())),
        train_s=("train_s", lambda s: float(s.unique().sum()))).reset_index()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for frame, fname in ((df, "localizer_cv.csv"), (summary, "summary.csv")):
        with atomic_path(out / fname) as tmp:
            frame.to_csv(tmp, index=False)
    print(summary.rename(columns={"far": f"> {args.far:g} mm"}).to_string(
        index=False, float_format=lambda v: f"{v:.1f}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
