"""The paper's experiments as data: a table is a list of settings, run by one runner.

A *setting* is a set of config overrides (``--set`` syntax) plus whether the training set is
enlarged with MTN-generated CT at ratio r. For every seed and fold, each setting trains the
cascade (``train_segmentation``), predicts the test cases and evaluates them; MTN runs are shared
by the settings that use the same MTN config.

    results/<experiment>/<run>/
      config.json       base config (preset + --set), as every run folder
      settings.json     the settings, seeds, folds and data of this experiment
      per_case.csv      setting, seed, fold, case, structure, dice, jaccard, hd_mm, hd95_mm, ...
      centers.csv       setting, seed, fold, case, localizer and final ROI centre errors (mm), passes
      summary.csv       per setting and structure: mean and std over test cases x seeds
      table.md          the paper-shaped table (Dice %, Jaccard %, HD mm), published numbers beside
      work/             phantom, mtn/, generated/, seg/, pred/  (re-running skips finished parts)

Evaluation: with ``--folds K`` a K-fold cross-validation over the labelled training set (MM-WHS
test labels are not public); with ``--folds 0`` the labelled ``ct_test`` cases (the phantom's).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

import SimpleITK as sitk

from .cli import run_guarded
from .config import apply_overrides, get_preset, save_config
from .data import phantom
from .data.datasets import acdc_cases, get_labelset, mmwhs_cases, mscmrseg_cases
from .data.io import read_image
from .metrics import evaluate_folders
from .utils import UserError, atomic_path, atomic_write_text, import_tensorflow_quietly

__all__ = ["Setting", "Cohort", "kfold_splits", "mmwhs_cohort", "mscmrseg_cohort", "acdc_cohort",
           "run_experiment", "summarize_experiment", "markdown_table", "main"]

STRUCTURES = ("LV", "RV", "LA", "RA", "Myo", "AA", "PA")
# Published numbers (CM-TranCaF paper, MM-WHS 2017 CT test set; SPEC "Results to reproduce").
PUBLISHED = {"CM-TranCaF (paper)": {"WHS_mean dice": 91.1, "WHS_mean hd_mm": 14.386}}


@dataclass(frozen=True)
class Setting:
    name: str
    overrides: tuple[str, ...] = ()          # e.g. ("maunet.pab=False", "scn.enabled=False")
    mtn: bool = False                        # add MTN-generated CT (G_c(MRI) + MRI labels)
    ratio: float = 0.5                       # r: share of the generated cases used
    mtn_overrides: tuple[str, ...] = ()      # e.g. ("mtn.lam=5",): an MTN run of its own
    raw: bool = False                        # add the labelled source cases untranslated (naive pooling)
    # evaluate the trained cascade of the named setting instead of training one (a paired
    # ablation of inference-time switches: "SCN off" = the same MAUNet without its SCN)
    same_run_as: str | None = None


@dataclass(frozen=True)
class Cohort:
    """Where an experiment's cases come from: labelled target-domain (train, test) splits, and the
    source domain the MTN translates (labelled cases, their folder, the target images it learns
    from; labels of those are never read by the MTN)."""
    data: Path
    splits: tuple                            # ((train cases, test cases), ...) one per fold
    source: tuple = ()                       # labelled source-domain cases (MRI / bSSFP)
    source_dir: Path | None = None           # the folder `translate` reads
    mtn_target: tuple = ()                   # target-domain images of the MTN
    layout: str = "mmwhs"

    def describe(self) -> dict:
        ids = lambda cases: [c.case_id for c in cases]
        return {"data": str(self.data), "layout": self.layout,
                "splits": [{"train": ids(tr), "test": ids(te)} for tr, te in self.splits],
                "source": ids(self.source), "mtn_target": ids(self.mtn_target)}


def kfold_splits(case_ids: list[str], folds: int, seed: int) -> list[tuple[list[str], list[str]]]:
    """(train, test) id lists; every case is tested exactly once; reproducible from the seed."""
    if folds < 2 or folds > len(case_ids):
        raise UserError(f"--folds {folds}: need 2 <= folds <= number of cases ({len(case_ids)})")
    order = [case_ids[i] for i in np.random.default_rng(seed).permutation(len(case_ids))]
    parts = [sorted(order[f::folds]) for f in range(folds)]
    return [([c for c in case_ids if c not in set(p)], p) for p in parts]


def _key(items) -> str:
    return hashlib.sha1(json.dumps(list(items)).encode()).hexdigest()[:8] if items else "default"


def _generated(base, setting: Setting, cohort: Cohort, work: Path, seed: int,
               test_cases=()) -> Path:
    """Train (once) the MTN of this setting and translate the labelled source cases; the folder.

    The MTN learns from the cohort's target-domain images less this fold's test images (never
    seen by any training); folds whose MTN images are the same share one MTN."""
    from .train.mtn import train_mtn           # TensorFlow: imported after its start-up lines are muted
    from .translate import translate_folder
    if not cohort.source or cohort.source_dir is None:
        raise UserError(f"setting {setting.name!r} needs source-domain cases (MTN); "
                        f"{cohort.data} ({cohort.layout}) has none")
    cfg = apply_overrides(base, [*setting.mtn_overrides, f"run.seed={seed}"])
    tested = {c.case_id for c in test_cases}
    target = [c for c in cohort.mtn_target if c.case_id not in tested]
    key = f"{_key(setting.mtn_overrides)}_s{seed}"
    if len(target) < len(cohort.mtn_target):
        key += f"_{_key([c.case_id for c in target])}"      # one MTN per set of target images
    run, out = work / "mtn" / key, work / "generated" / key
    if not (run / "summary.json").exists():
        train_mtn(cfg, cohort.data, run, layout=cohort.layout,
                  cases=(list(cohort.source), target))
    if not (out / "manifest.csv").exists():
        translate_folder(run, cohort.source_dir, out)
    return out


def _split_ids(ids: list[str], seed: int, *sizes: int) -> list[list[str]]:
    """Disjoint groups of the given sizes (the last gets the rest when its size is None), drawn
    reproducibly from the seed; each group sorted."""
    order = [ids[i] for i in np.random.default_rng(seed).permutation(len(ids))]
    out, at = [], 0
    for n in sizes:
        n = len(ids) - at if n is None else n
        out.append(sorted(order[at:at + n]))
        at += n
    return out


def mmwhs_cohort(base, data: Path, folds: int = 0) -> Cohort:
    """MM-WHS layout: ct_train (k-fold) or ct_train / labelled ct_test; source mr_train."""
    train_all = mmwhs_cases(data, base.data.modality, "train")
    if folds:
        by_id = {c.case_id: c for c in train_all}
        splits = tuple(([by_id[i] for i in tr], [by_id[i] for i in te])
                       for tr, te in kfold_splits(sorted(by_id), folds, 0))
    else:
        try:
            test = [c for c in mmwhs_cases(data, base.data.modality, "test") if c.label is not None]
        except UserError:
            test = []
        if not test:
            raise UserError(f"{data}: no labelled {base.data.modality}_test cases (MM-WHS test "
                            f"labels are not public): use --folds K for cross-validation")
        splits = ((train_all, test),)
    src_dir = Path(data) / "mr_train"
    source = tuple(mmwhs_cases(data, "mr", "train")) if src_dir.is_dir() else ()
    return Cohort(Path(data), splits, source, src_dir if source else None, tuple(train_all))


def mscmrseg_cohort(data: Path, n_train: int = 5, n_unlabelled: int = 5, seed: int = 0,
                    source: str = "C0", target: str = "LGE") -> Cohort:
    """MS-CMRSeg: the target patients split at random (seed) into ``n_train`` labelled training
    cases, ``n_unlabelled`` whose images only the MTN sees, and the rest for testing. Every labelled
    source case (bSSFP) is available for pooling or translation. Test images are never trained on."""
    tgt = {c.case_id: c for c in mscmrseg_cases(data, target) if c.label is not None}
    src = tuple(c for c in mscmrseg_cases(data, source) if c.label is not None)
    if len(tgt) < n_train + n_unlabelled + 1:
        raise UserError(f"{Path(data) / target}: {len(tgt)} labelled {target} patients, need at "
                        f"least {n_train + n_unlabelled + 1} ({n_train} train, {n_unlabelled} "
                        f"unlabelled, >= 1 test)")
    if not src:
        raise UserError(f"{Path(data) / source}: no labelled {source} cases")
    tr, unl, te = _split_ids(sorted(tgt), seed, n_train, n_unlabelled, None)
    pick = lambda ids: [tgt[i] for i in ids]
    return Cohort(Path(data), ((pick(tr), pick(te)),), src, Path(data) / source,
                  tuple(pick(tr) + pick(unl)), "mscmrseg")


def acdc_cohort(data: Path, n_test: int = 20, n_train: int | None = None, seed: int = 0) -> Cohort:
    """ACDC: ``n_test`` patients drawn at random (seed) for testing, ``n_train`` (default: all the
    others) for training. Single modality: no source domain."""
    cases = {c.case_id: c for c in acdc_cases(data) if c.label is not None}
    if len(cases) < n_test + 2:
        raise UserError(f"{data}: {len(cases)} labelled ACDC patients, need at least {n_test + 2}")
    te, tr = _split_ids(sorted(cases), seed, n_test, n_train)
    return Cohort(Path(data), (([cases[i] for i in tr], [cases[i] for i in te]),), layout="acdc")


def _gt_center_mm(path: Path) -> np.ndarray:
    """Physical centre (x, y, z mm) of a label file's foreground."""
    label = read_image(path)
    idx = np.argwhere(sitk.GetArrayViewFromImage(label) > 0).mean(0)[::-1]
    return np.asarray(label.TransformContinuousIndexToPhysicalPoint([float(v) for v in idx]))


def _evaluate_setting(seg_dir: Path, test_cases, pred_dir: Path, labelset,
                      with_scn: bool = True) -> tuple[list[dict], list[dict]]:
    """The ``predict`` and ``evaluate`` stages on the test cases: per-case metric rows, and
    per-case centre errors (localizer, final ROI) in mm."""
    gt_dirs = {c.label.parent for c in test_cases}
    if len(gt_dirs) != 1:
        raise UserError(f"test labels in several folders {sorted(map(str, gt_dirs))}")
    modality = test_cases[0].modality if test_cases[0].modality in ("ct", "mr") else None
    from .predict import predict_files          # TensorFlow (see _generated)
    traces = {}
    predict_files(seg_dir, [c.image for c in test_cases], pred_dir, modality, overwrite=True,
                  with_scn=with_scn, traces=traces)
    ids = [c.case_id for c in test_cases]
    df, _ = evaluate_folders(pred_dir, gt_dirs.pop(), labelset, cases=ids)
    centers = []
    for case in test_cases:
        truth, trace = _gt_center_mm(case.label), traces[case.case_id]
        centers.append({"case": case.case_id, "passes": trace["passes"],
                        "localizer_error_mm": float(np.linalg.norm(trace["localizer_mm"] - truth)),
                        "roi_error_mm": float(np.linalg.norm(trace["roi_center_mm"] - truth))})
    return df.to_dict("records"), centers


def run_experiment(name: str, settings: list[Setting], base, out: Path, data: Path | None = None,
                   seeds: int = 1, folds: int = 0, published: dict | None = None,
                   cohort: Cohort | None = None, note: str | None = None,
                   catalogue: list[Setting] | None = None) -> pd.DataFrame:
    """Run every setting x seed x fold; write the results folder; return the per-case rows.

    ``cohort`` gives the cases (MS-CMRSeg, ACDC, ...); without it, the MM-WHS layout at ``data``
    (default: the built-in phantom) with ``folds``. ``catalogue``: every setting of the
    experiment, where a setting's ``same_run_as`` is looked up (default: ``settings``)."""
    out = Path(out)
    work = out / "work"
    if cohort is None:
        if data is None:                                # the built-in phantom, test labels known
            data = work / "phantom"
            if not (data / "phantom.json").exists():
                n = (3, 2, 2) if base.name == "tiny" else (6, 6, 4)
                spacing = ({"ct": (4.0, 4.0, 4.0), "mr": (5.0, 5.0, 6.0)} if base.name == "tiny"
                           else None)
                phantom.write_dataset(data, *n, seed=0, spacing=spacing)
        cohort = mmwhs_cohort(base, Path(data), folds)
    data = cohort.data
    labelset = get_labelset(base.data.labels)
    splits = cohort.splits
    out.mkdir(parents=True, exist_ok=True)
    save_config(base, out / "config.json")
    # a re-run of some settings (``--only``) keeps the other settings' results
    names = {s.name for s in settings}
    kept, known = [], [asdict(s) for s in settings]
    if (out / "per_case.csv").exists() and (out / "settings.json").exists():
        old = pd.read_csv(out / "per_case.csv")
        kept = old[~old["setting"].isin(names)].to_dict("records")
        known = [s for s in json.loads((out / "settings.json").read_text())["settings"]
                 if s["name"] not in names and s["name"] in set(old["setting"])] + known
    atomic_write_text(out / "settings.json", json.dumps(
        {"experiment": name, "data": str(data), "seeds": seeds, "folds": folds,
         "settings": known, "cohort": cohort.describe()}, indent=2))
    rows = list(kept)
    center_rows = []
    if (out / "centers.csv").exists() and kept:
        old_centers = pd.read_csv(out / "centers.csv")
        center_rows = old_centers[~old_centers["setting"].isin(names)].to_dict("records")
    by_name = {s.name: s for s in [*(catalogue or []), *settings]}
    for s in settings:
        if s.same_run_as is not None and s.same_run_as not in by_name:
            raise UserError(f"setting {s.name!r} evaluates the run of {s.same_run_as!r}, which "
                            f"is not a setting of this experiment ({sorted(by_name)})")
    for seed in range(seeds):
        for fold, (train_cases, test_cases) in enumerate(splits):
            for s in settings:
                t0 = time.time()
                tag = f"s{seed}_f{fold}"
                trained = by_name[s.same_run_as] if s.same_run_as else s
                seg_dir = work / "seg" / trained.name / tag
                if not (seg_dir / "done.json").exists():
                    _train_setting(trained, base, cohort, work, seed, train_cases, test_cases,
                                   seg_dir)
                cfg = apply_overrides(base, list(s.overrides))
                case_rows, centers = _evaluate_setting(
                    seg_dir, test_cases, work / "pred" / s.name / tag, labelset, cfg.scn.enabled)
                rows += [{"setting": s.name, "seed": seed, "fold": fold, **r} for r in case_rows]
                center_rows += [{"setting": s.name, "seed": seed, "fold": fold, **r}
                                for r in centers]
                df = pd.DataFrame(rows)
                _write_csv(df, out / "per_case.csv")
                _write_csv(pd.DataFrame(center_rows), out / "centers.csv")
                whs = [r["dice"] for r in case_rows if r["structure"] == "WHS_mean"]
                loc = [c["localizer_error_mm"] for c in centers]
                print(f"[{name}] {s.name} seed {seed} fold {fold}: WHS mean Dice "
                      f"{100 * np.mean(whs):.1f}%; localizer centre error median "
                      f"{np.median(loc):.1f} mm, max {np.max(loc):.1f} mm "
                      f"({time.time() - t0:.0f} s)", flush=True)
    summary = summarize_experiment(df)
    _write_csv(summary, out / "summary.csv")
    table = markdown_table(summary, [s["name"] for s in known], published, note)
    atomic_write_text(out / "table.md", f"# {name}\n\n{table}\n")
    print(table)
    return df


def _train_setting(s: Setting, base, cohort: Cohort, work: Path, seed: int, train_cases,
                   test_cases, seg_dir: Path) -> None:
    """Train the cascade of setting ``s`` (seed, fold's training cases) into ``seg_dir``; the
    fold's test cases are only named so that no training (the MTN's included) reads them."""
    from .train.seg import train_segmentation  # TensorFlow (see _generated)
    t0 = time.time()
    cfg = apply_overrides(base, [*s.overrides, f"run.seed={seed}",
                                 f"data.ratio={s.ratio if s.mtn else 0.0}"])
    if s.raw and not cohort.source:
        raise UserError(f"setting {s.name!r} pools source-domain cases; {cohort.data} "
                        f"({cohort.layout}) has none")
    generated = _generated(base, s, cohort, work, seed, test_cases) if s.mtn else None
    train_segmentation(cfg, cohort.data, seg_dir, generated=generated, cases=train_cases,
                       extra=list(cohort.source) if s.raw else None)
    atomic_write_text(seg_dir / "done.json", json.dumps({"seconds": time.time() - t0}))


def _write_csv(df: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


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
    lines.append("Mean ± std over test cases (x seeds x folds). mean = WHS_mean, the mean over the "
                 f"{len(structures)} structures; generalised = volume-weighted Dice. "
                 + (note if note is not None else "Published rows: MM-WHS 2017 CT test set, not "
                    "comparable with phantom results."))
    return "\n".join(lines)


DATASETS = {
    "mmwhs": ("MM-WHS root (ct_train/, mr_train/); default: the built-in phantom", None),
    "mscmrseg": ("MS-CMRSeg root (C0/, LGE/), e.g. ../shared/data/mscmrseg", "mscmrseg"),
    "acdc": ("ACDC root (images/, masks/), e.g. ../shared/data/acdc", "acdc"),
}


def main(name: str, settings: list[Setting], argv=None, doc: str = "",
         published: dict | None = None, dataset: str = "mmwhs", note: str | None = None,
         default_folds: int | None = None) -> int:
    """Command line shared by ``experiments/*.py``; ``dataset`` picks the cohort and its options."""
    p = argparse.ArgumentParser(prog=f"experiments/{name}.py", description=doc.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=doc)
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
    if not mmwhs:
        p.add_argument("--split-seed", type=int, default=0, help="seed of the patient split")
    p.add_argument("--seeds", type=int, default=1, help="seeds per setting (mean +- std over all)")
    p.add_argument("--only", action="append", help="run only these settings (repeatable)")
    p.add_argument("--out", default="results", help="results root")
    p.add_argument("--run", help="run name (default: the preset)")
    p.add_argument("--verbose", action="store_true", help="show TensorFlow's start-up log lines")
    args = p.parse_args(argv)
    import_tensorflow_quietly(args.verbose)

    def go():
        labels = DATASETS[dataset][1]
        fixed = [f"data.labels={labels}", "data.modality=mr"] if labels else []
        preset = args.preset or ("cmr_cpu" if not mmwhs else "cpu" if args.data else "demo")
        base = apply_overrides(get_preset(preset), fixed + args.overrides)
        chosen = [s for s in settings if not args.only or s.name in args.only]
        if not chosen:
            raise UserError(f"--only {args.only}: no such setting; have {[s.name for s in settings]}")
        cohort, folds = None, 0
        if dataset == "mscmrseg":
            cohort = mscmrseg_cohort(Path(args.data), args.n_train, args.n_unlabelled,
                                     args.split_seed, args.source, args.target)
        elif dataset == "acdc":
            cohort = acdc_cohort(Path(args.data), args.n_test, args.n_train, args.split_seed)
        else:
            folds = args.folds if args.folds is not None else (
                (default_folds or 5) if args.data else 0)
        run_experiment(name, chosen, base, Path(args.out) / name / (args.run or preset),
                       Path(args.data) if args.data else None, args.seeds, folds, published,
                       cohort, note, settings)
        return 0
    return run_guarded(name, go)
