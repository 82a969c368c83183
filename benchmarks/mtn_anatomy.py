"""The MTN's anatomy log over training, on the MS-CMRSeg cohort of ``experiments/mscmrseg_lge.py``.

G_c (bSSFP -> LGE) trains as the experiment trains it: the 35 labelled bSSFP cases as source, the
experiment's labelled and "unlabelled" LGE patients as target (its test patients are not read).
At each of ``mtn.validations`` evenly spaced steps a cascade trained on real LGE alone
(``--reference``, e.g. the experiment's ``work/seg/LGE only/s0_f0``) segments G_c(bSSFP) of the
first ``mtn.anatomy_cases`` labelled bSSFP cases, scored against their labels (the FCN score of
Zhu et al. 2017). Every number comes from training cases, so MTN options (steps, upsampling, ...) can be
chosen here before any test number.

    python benchmarks/mtn_anatomy.py --data data/mscmrseg_fixed \\
        --reference "results/mscmrseg_lge/cmr_cpu/work/seg/LGE only/s0_f0" \\
        --set mtn.steps=6000 --set mtn.validations=6 --out results/mtn_anatomy/steps6000_s0
Writes the MTN run into ``--out`` (its ``val.csv``) and ``anatomy_log.csv`` (step, anatomy Dice
%), and prints the table.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd


def mtn_cases(data: Path, n_train: int, n_unlabelled: int, split_seed: int):
    """(labelled source cases, target cases): what the experiment's MTN learns from; the
    experiment's test patients are not among the targets."""
    from cm_trancaf.experiments.cohorts import mscmrseg_cohort
    cohort = mscmrseg_cohort(data, n_train, n_unlabelled, split_seed)
    (_, test), = cohort.splits
    return cohort, list(cohort.source), cohort.mtn_images(test)


def add_cohort_arguments(p: argparse.ArgumentParser) -> None:
    """The experiment's cohort options that :func:`mtn_cases` takes."""
    p.add_argument("--n-train", type=int, default=5)
    p.add_argument("--n-unlabelled", type=int, default=5)
    p.add_argument("--split-seed", type=int, default=0, help="the experiment's patient split")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="MS-CMRSeg root (C0/, LGE/)")
    p.add_argument("--reference", required=True,
                   help="a cascade trained on the labelled LGE training patients alone")
    p.add_argument("--preset", default="cmr_cpu")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--seed", type=int, default=0)
    add_cohort_arguments(p)
    p.add_argument("--out", required=True, help="new MTN run folder")
    args = p.parse_args(argv)

    from cm_trancaf.cli import run_guarded, runtime_starter
    from cm_trancaf.config import ConfigError, apply_overrides, get_preset
    from cm_trancaf.utils import import_tensorflow_quietly
    try:                  # run.deterministic sets one inter-op thread: before the runtime starts
        start = runtime_starter(apply_overrides(get_preset(args.preset), args.overrides).run)
    except ConfigError:   # reported by run() below
        start = None
    import_tensorflow_quietly(False, start)

    def run() -> int:
        from cm_trancaf.train.mtn import train_mtn
        from cm_trancaf.utils import UserError
        out = Path(args.out)
        if (out / "summary.json").exists():
            raise UserError(f"{out} holds a finished MTN run; give another --out")
        cfg = apply_overrides(get_preset(args.preset), [*args.overrides, f"run.seed={args.seed}"])
        cohort, source, target = mtn_cases(Path(args.data), args.n_train, args.n_unlabelled,
                                           args.split_seed)
        t0 = time.time()
        train_mtn(cfg, cohort.data, out, layout=cohort.layout, cases=(source, target),
                  anatomy_run=Path(args.reference))
        log = pd.read_csv(out / "val.csv").rename(columns={"val/anatomy_dice": "anatomy_dice"})
        log["anatomy_dice"] *= 100
        log.to_csv(out / "anatomy_log.csv", index=False)
        print(f"MTN {cfg.mtn.steps} steps, seed {args.seed}: {time.time() - t0:.0f} s; FCN score "
              f"(% Dice) on {cfg.mtn.anatomy_cases} labelled source cases")
        print(log.to_string(index=False, float_format="%.1f"))
        return 0
    return run_guarded("mtn_anatomy", run)


if __name__ == "__main__":
    sys.exit(main())
