"""The command line shared by ``experiments/*.py`` (one list of settings per script)."""
from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from ..cli import run_guarded, runtime_starter
from ..config import ConfigError, apply_overrides, get_preset
from ..utils import UserError, import_tensorflow_quietly
from .cohorts import acdc_cohort, dev_cohort, mmwhs_cohort, mscmrseg_cohort
from .runner import Setting, run_experiment

__all__ = ["main"]


DATASETS = {
    "mmwhs": ("MM-WHS root (ct_train/, mr_train/); default: the built-in phantom", None),
    "mscmrseg": ("MS-CMRSeg root (C0/, LGE/), e.g. data/mscmrseg_fixed (data_prep/mscmrseg_spacing.py)", "mscmrseg"),
    "acdc": ("ACDC root (images/, masks/), e.g. ../shared/data/acdc", "acdc"),
}

# the data sets a paper table (written for MM-WHS) may run on instead: a source and a target domain
CROSS_DATASETS = ("mmwhs", "mscmrseg")


def main(name: str, settings: list[Setting], argv=None, doc: str = "",
         published: dict | None = None, dataset: str = "mmwhs", note: str | None = None,
         default_folds: int | None = None, candidates: list[Setting] | None = None) -> int:
    """Command line shared by ``experiments/*.py``; ``dataset`` picks the cohort and its options.
    ``candidates``: settings that run only when named with ``--only`` (e.g. options measured on
    development cases and not adopted), so that a plain run costs what its table needs.

    The paper's tables (``dataset="mmwhs"``) also run on MS-CMRSeg's real bSSFP -> LGE pair with
    ``--dataset mscmrseg`` (the cohort of ``experiments/mscmrseg_lge.py``); their results then go
    to ``<out>/<name>_mscmrseg/<run>`` and the MM-WHS published rows are left out.
    """
    home, script, parents = dataset, name, []
    if home == "mmwhs":
        pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)   # not --data
        pre.add_argument("--dataset", choices=CROSS_DATASETS, default=home,
                         help="mmwhs (MM-WHS CT, the paper's; default) | mscmrseg (real bSSFP -> "
                              "LGE, 3 classes; its options --n-train, --n-unlabelled, --dev apply)")
        dataset, parents = pre.parse_known_args(argv)[0].dataset, [pre]
    if dataset != home:
        name, published = f"{name}_{dataset}", None
        note = ((note + " ") if note else "") + (
            f"MS-CMRSeg bSSFP -> LGE, the cohort of experiments/mscmrseg_lge.py; the paper's "
            f"finding, on MM-WHS CT: {doc.strip().splitlines()[0]}")
    p = argparse.ArgumentParser(prog=f"experiments/{script}.py", description=doc.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=doc,
                                parents=parents)
    mmwhs = dataset == "mmwhs"
    p.add_argument("--preset", default=None,
                   help="paper (GPU) | cpu (real CT, 2 CPU cores; the default with --data) | "
                   "demo (the phantom's default) | tiny" if mmwhs else
                   "cmr (GPU) | cmr_cpu (2 CPU cores, the default) | tiny")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--data", required=not mmwhs, help=DATASETS[dataset][0])
    if mmwhs:
        p.add_argument("--folds", type=int, default=None,
                       help="K-fold cross-validation on ct_train (default: 5 with --data, else 0 = "
                            "the phantom's labelled ct_test)")
        p.add_argument("--without-mtn", action="store_true",
                       help="run every setting without MTN-generated data (a data set without "
                            "mr_train, e.g. ../shared/data/mmwhs_ct); the run is named "
                            "<preset>_without_mtn")
    if dataset == "mscmrseg":
        p.add_argument("--n-train", type=int, default=5, help="labelled target (LGE) patients")
        p.add_argument("--n-unlabelled", type=int, default=5,
                       help="target patients whose images (only) the MTN learns from")
        p.add_argument("--source", default="C0", help="source sequence with labels")
        p.add_argument("--target", default="LGE", help="target sequence; the rest is tested")
    if dataset == "acdc":
        p.add_argument("--n-test", type=int, default=20, help="held-out test patients")
        p.add_argument("--n-train", type=int, default=None,
                       help="training patients (default: all the others)")
    p.add_argument("--dev", type=int, default=0, metavar="N",
                   help="choose settings on a development split: N of the training patients "
                        "are tested instead of the test patients, which are not read (with "
                        "--folds: the first fold's training cases, one split; run named "
                        "<preset>_dev)")
    p.add_argument("--split-seed", type=int, default=0,
                   help="seed of the patient split" + (" (with --dev: of the dev draw; the "
                                                       "folds keep seed 0)" if mmwhs else ""))
    p.add_argument("--seeds", type=int, default=1, help="seeds per setting (mean +- std over all)")
    p.add_argument("--first-seed", type=int, default=0, metavar="K",
                   help="run seeds K ... K + seeds - 1 (e.g. --first-seed 1 adds seed 1 to "
                        "a folder holding seed 0); a re-run with --only replaces the named "
                        "settings' rows of these seeds, and all their rows if a setting's "
                        "definition changed")
    p.add_argument("--only", action="append", help="run only these settings (repeatable)")
    p.add_argument("--out", default="results", help="results root")
    p.add_argument("--run", help="run name (default: the preset)")
    p.add_argument("--verbose", action="store_true", help="show TensorFlow's start-up log lines")
    args = p.parse_args(argv)
    import_tensorflow_quietly(args.verbose, _runtime_start(args, dataset, mmwhs))

    def go():
        preset, base = _base_config(args, dataset, mmwhs)
        catalogue = [*settings, *(candidates or [])]
        if getattr(args, "without_mtn", False):
            catalogue = [replace(s, mtn=False, ratio=0.0, mtn_overrides=()) for s in catalogue]
        default = {s.name for s in settings}
        chosen = [s for s in catalogue if s.name in args.only] if args.only else \
            [s for s in catalogue if s.name in default]
        if not chosen or len(chosen) < len(set(args.only or [])):
            raise UserError(f"--only {args.only}: no such setting; have "
                            f"{[s.name for s in catalogue]}")
        cohort, folds = None, 0
        if dataset == "mscmrseg":
            cohort = mscmrseg_cohort(Path(args.data), args.n_train, args.n_unlabelled,
                                     args.split_seed, args.source, args.target)
        elif dataset == "acdc":
            cohort = acdc_cohort(Path(args.data), args.n_test, args.n_train, args.split_seed)
        else:
            folds = args.folds if args.folds is not None else (
                (default_folds or 5) if args.data else 0)
            if args.dev:
                if not args.data:
                    raise UserError("--dev needs --data (a development split of real cases)")
                cohort = mmwhs_cohort(base, Path(args.data), folds)
        if args.dev:
            cohort, folds = dev_cohort(cohort, args.dev, args.split_seed), 0
        run = args.run or preset + ("_without_mtn" if getattr(args, "without_mtn", False) else "") \
            + ("_dev" if args.dev else "")
        run_experiment(name, chosen, base, Path(args.out) / name / run,
                       Path(args.data) if args.data else None, args.seeds, folds, published,
                       cohort, note, catalogue, first_seed=args.first_seed)
        return 0
    return run_guarded(script, go)


def _base_config(args, dataset: str, mmwhs: bool):
    """(preset name, its config with the data set's fixed options and ``--set``)."""
    labels = DATASETS[dataset][1]
    fixed = [f"data.labels={labels}", "data.modality=mr"] if labels else []
    preset = args.preset or ("cmr_cpu" if not mmwhs else "cpu" if args.data else "demo")
    return preset, apply_overrides(get_preset(preset), fixed + args.overrides)


def _runtime_start(args, dataset: str, mmwhs: bool):
    """Start TensorFlow's runtime as the experiment's ``run.*`` settings need (one inter-op thread
    with ``run.deterministic``, fixed at start-up: set later, every stage would warn and run
    without it). A bad config is left for the experiment itself to report."""
    try:
        return runtime_starter(_base_config(args, dataset, mmwhs)[1].run)
    except (UserError, ConfigError):
        return None
