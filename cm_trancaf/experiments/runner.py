"""The experiment runner: a table of the paper is a list of settings, run by one runner.

A *setting* is a set of config overrides (``--set`` syntax) plus whether the training set is
enlarged with MTN-generated CT at ratio r. For every seed and fold, each setting trains the
cascade (``train_segmentation``), predicts the test cases and evaluates them; MTN runs are shared
by the settings that use the same MTN config.

    results/<experiment>/<run>/
      config.json       base config (preset + --set), as every run folder
      settings.json     the settings, seeds, folds and data of this experiment
                        (seeds_in_results: every seed the rows hold; a re-run of a setting
                        replaces its rows of the seeds it runs, so --first-seed adds seeds)
      per_case.csv      setting, seed, fold, case, structure, dice, jaccard, hd_mm, hd95_mm, ...
      per_case_1mm.csv  the same at 1 mm isotropic (the MM-WHS challenge's evaluation grid)
      centers.csv       setting, seed, fold, case, localizer and final ROI centre errors (mm), passes
      anatomy.csv       per synthetic-source setting, seed and fold: the FCN score of its synthetic
                        images (the real-target-only cascade segments them), beside that
                        cascade's Dice on the real test cases; anatomy_per_case.csv its rows
      summary.csv       per setting and structure: mean and std over test cases x seeds
      summary_1mm.csv   the same at 1 mm
      table.md          the paper-shaped tables (Dice %, Jaccard %, HD mm), native grid and 1 mm,
                        published numbers beside
      work/             phantom, mtn/, generated/, seg/, pred/  (re-running skips finished parts)

Evaluation: with ``--folds K`` a K-fold cross-validation over the labelled training set (MM-WHS
test labels are not public); with ``--folds 0`` the labelled ``ct_test`` cases (the phantom's).
"""
from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from ..config import apply_overrides, load_config, save_config
from ..data import phantom
from ..data.datasets import generated_cases, get_labelset
from ..data.io import read_image
from ..metrics import evaluate_folders
from ..utils import UserError, atomic_dir, atomic_path, atomic_write_text
from .cohorts import Cohort, mmwhs_cohort
from .report import anatomy_table, markdown_table, paired_table, summarize_experiment

__all__ = ["PHANTOM_CASES", "Setting", "run_experiment"]

PHANTOM_CASES = (6, 6, 4)          # the built-in phantom's CT train, MRI train and CT test cases


@dataclass(frozen=True)
class Setting:
    name: str
    overrides: tuple[str, ...] = ()          # e.g. ("maunet.pab=False", "scn.enabled=False")
    mtn: bool = False                        # add MTN-generated CT (G_c(MRI) + MRI labels)
    ratio: float = 0.5                       # r: share of the generated cases used
    mtn_overrides: tuple[str, ...] = ()      # e.g. ("mtn.lam=5",): an MTN run of its own
    raw: bool = False                        # add the labelled source cases untranslated (naive pooling)
    # add ratio r of the labelled source cases histogram-matched to the MTN's target images: the
    # intensity-only baseline of the MTN (no network). With ``mtn``: the MTN learns from and
    # translates the histogram-matched source cases (G_c corrects the intensity mapping; beyond
    # the paper)
    harmonize: bool = False
    # evaluate the trained cascade of the named setting instead of training one (a paired
    # ablation of inference-time switches: "SCN off" = the same MAUNet without its SCN; infer.*
    # overrides, e.g. infer.localizer_views=7)
    same_run_as: str | None = None
    # train only the SCN, with this setting's scn.* overrides, on the localizer and MAUNet of the
    # named setting's run (trained first if missing): a paired ablation of the SCN's training
    # (the same MAUNet, another SCN); every other option must equal the named setting's
    maunet_from: str | None = None
    # an ensemble (``inference.Ensemble``): seed s of this setting predicts with the mean class
    # probabilities of the runs of seeds M*s ... M*s + M - 1 of the setting it trains (itself or
    # ``same_run_as``), so that "X, 2 members" at seed 0 is X's seeds 0 and 1, at seed 1 its seeds
    # 2 and 3 (members missing are trained, with their own seed, like any seed of X)
    members: int = 1


def _key(items) -> str:
    return hashlib.sha1(json.dumps(list(items)).encode()).hexdigest()[:8] if items else "default"


def _generated(base, setting: Setting, cohort: Cohort, work: Path, seed: int,
               test_cases=(), reference: Path | None = None) -> Path:
    """Train (once) the MTN of this setting and translate the labelled source cases; the folder.

    The MTN learns from the cohort's target-domain images less this fold's test images (never
    seen by any training); folds whose MTN images are the same share one MTN. ``reference``: a
    cascade trained on real target cases alone; with it the MTN logs the anatomy G_c keeps on
    ``mtn.anatomy_cases`` labelled source cases at each validation (``val.csv``)."""
    # the stages that need TensorFlow: imported after its start-up lines are muted (command)
    from ..train.mtn import train_mtn
    from ..translate import translate_folder
    if not cohort.source or cohort.source_dir is None:
        raise UserError(f"setting {setting.name!r} needs source-domain cases (MTN); "
                        f"{cohort.data} ({cohort.layout}) has none")
    cfg = apply_overrides(base, [*setting.mtn_overrides, f"run.seed={seed}"])
    target = cohort.mtn_images(test_cases)
    sources, source_dir = list(cohort.source), cohort.source_dir
    key = f"{_key(setting.mtn_overrides)}_s{seed}"
    if setting.harmonize:           # G_c learns from (and translates) the hist-matched sources
        source_dir = _harmonized(setting, cohort, work, test_cases)
        sources = generated_cases(source_dir)
        key += f"_hm{source_dir.name}"
    if len(target) < len(cohort.mtn_target):
        key += f"_{_key([c.case_id for c in target])}"      # one MTN per set of target images
    run, out = work / "mtn" / key, work / "generated" / key
    if not (run / "summary.json").exists():
        if cfg.mtn.shape_weight > 0 and reference is None:
            raise UserError(f"setting {setting.name!r}: the MTN's shape term needs the cascade of "
                            f"a setting trained on real target cases alone (e.g. \"LGE only\") "
                            f"for seed {seed}: run that setting first")
        train_mtn(cfg, cohort.data, run, layout=cohort.layout,
                  cases=(sources, target), anatomy_run=reference)
    if not (out / "manifest.csv").exists():
        # on the working grid: the synthetic images are enhanced and resampled once, as real ones
        translate_folder(run, source_dir, out, grid="working")
    return out


def _harmonized(setting: Setting, cohort: Cohort, work: Path, test_cases=()) -> Path:
    """The labelled source cases histogram-matched to the target images the MTN would learn
    from (this fold's test images left out); the folder, written once per set of references."""
    from ..translate import harmonize_folder   # TensorFlow (see _generated)
    if not cohort.source or cohort.source_dir is None:
        raise UserError(f"setting {setting.name!r} needs source-domain cases; "
                        f"{cohort.data} ({cohort.layout}) has none")
    refs = cohort.mtn_images(test_cases)
    out = work / "harmonized" / _key([c.case_id for c in refs])
    if not (out / "manifest.csv").exists():
        harmonize_folder(cohort.source_dir, [c.image for c in refs], out, refs[0].modality)
    return out


def _source_folder(base, s: Setting, cohort: Cohort, work: Path, seed: int, test_cases,
                   reference: Path | None = None):
    """The folder of synthetic source cases a setting trains with (MTN, histogram matching, or
    the MTN on histogram-matched source cases)."""
    if s.mtn:
        return _generated(base, s, cohort, work, seed, test_cases, reference)
    return _harmonized(s, cohort, work, test_cases) if s.harmonize else None


def _reference(by_name: dict, work: Path, tag: str) -> Path | None:
    """The trained cascade of the first setting of real target cases alone (e.g. "LGE only") for
    this seed and fold, if there is one: the segmenter of the anatomy (FCN) score."""
    for s in by_name.values():
        if not (s.mtn or s.harmonize or s.raw or s.same_run_as) and \
                (work / "seg" / s.name / tag / "done.json").exists():
            return work / "seg" / s.name / tag
    return None


def _anatomy(base, settings, by_name, cohort: Cohort, work: Path, seed: int, fold: int,
             test_cases, rows: list[dict], labelset) -> tuple[list[dict], list[dict]]:
    """Anatomy kept by each setting's synthetic source images: the FCN score
    (``metrics.anatomy_score``) with the cascade of the first setting trained on real target
    cases alone (e.g. "LGE only"), beside that cascade's Dice on the real test cases; one row
    per setting, and the per-case rows behind it (a lost heart and a uniformly poor score
    read differently)."""
    from ..inference import Cascade               # TensorFlow (see _generated)
    from ..metrics import anatomy_score
    tag = f"s{seed}_f{fold}"
    reference = _reference(by_name, work, tag)
    synthetic = [s for s in settings if (s.mtn or s.harmonize) and not s.same_run_as]
    if reference is None or not synthetic:
        return [], []
    ref = by_name[reference.parent.name]
    cascade = Cascade.load(reference)
    real = [r["dice"] for r in rows if r["setting"] == ref.name and r["seed"] == seed
            and r["fold"] == fold and r["structure"] == "WHS_mean"]
    if not real:
        return [], []
    out, per_case, seen = [], [], {}
    for s in synthetic:
        folder = _source_folder(base, s, cohort, work, seed, test_cases, reference)
        if folder not in seen:
            seen[folder] = anatomy_score(cascade.predict_image, generated_cases(folder), labelset)
        df = seen[folder]
        score = float(df[df.structure == "WHS_mean"]["dice"].mean())
        key = {"setting": s.name, "seed": seed, "fold": fold, "segmenter": ref.name}
        out.append({**key, "images": str(folder), "anatomy_dice": score,
                    "segmenter_real_dice": float(np.mean(real)),
                    "ratio_to_real": score / float(np.mean(real))})
        per_case += [{**key, **r} for r in df.to_dict("records")]
    return out, per_case


def _translation_figures(base, settings, cohort: Cohort, work: Path, seed: int, train_cases,
                         test_cases, labelset, out: Path, n: int = 2) -> None:
    """``figures/translation_<folder>.png`` for each kind of synthetic source images: ``n``
    source images, their translations and real labelled target images (training cases) at the
    level of the LV's centre, cut along the working grid's axes (``plots.translation``)."""
    import csv
    from .. import plots
    code = labelset.codes[labelset.names.index("LV")] if "LV" in labelset.names else None
    targets = [c for c in train_cases if c.label is not None][:n]
    for s in settings:
        if not (s.mtn or s.harmonize) or s.same_run_as or not targets:
            continue
        folder = _source_folder(base, s, cohort, work, seed, test_cases)
        kind = s.name if s.harmonize and not s.mtn else "mtn"
        png = out / f"translation_{kind}_{folder.name}.png"
        png = png.with_name(png.name.replace(" ", "_").replace("/", "_"))
        if png.exists():
            continue
        with open(folder / "manifest.csv", newline="") as f:
            made = [r for r in csv.DictReader(f) if r["label"]][:n]
        rows = [((r["source_image"], r["source_label"]), (r["image"], r["label"]),
                 (t.image, t.label)) for r, t in zip(made, targets * n)]
        fig = plots.translation(rows, code, ("source", "synthetic", "real target"),
                                base.data.grid_axes)
        out.mkdir(parents=True, exist_ok=True)
        with atomic_path(png, ".png") as tmp:
            fig.savefig(tmp, dpi=90)
        fig.clf()


def _gt_center_mm(path: Path) -> np.ndarray:
    """Physical centre (x, y, z mm) of a label file's foreground."""
    label = read_image(path)
    idx = np.argwhere(sitk.GetArrayViewFromImage(label) > 0).mean(0)[::-1]
    return np.asarray(label.TransformContinuousIndexToPhysicalPoint([float(v) for v in idx]))


def _evaluate_setting(seg_dir: Path, test_cases, pred_dir: Path, labelset,
                      with_scn: bool = True, infer=()
                      ) -> tuple[list[dict], list[dict], list[dict]]:
    """The ``predict`` and ``evaluate`` stages on the test cases: per-case metric rows on the
    native grid and at 1 mm isotropic (nearest neighbour, as the MM-WHS challenge evaluated),
    and per-case centre errors (localizer, final ROI) in mm. ``infer``: ``infer.*`` overrides of
    the run's inference options (a paired ablation of an inference switch)."""
    gt_dirs = {c.label.parent for c in test_cases}
    if len(gt_dirs) != 1:
        raise UserError(f"test labels in several folders {sorted(map(str, gt_dirs))}")
    modality = test_cases[0].modality if test_cases[0].modality in ("ct", "mr") else None
    from ..predict import predict_files         # TensorFlow (see _generated)
    traces = {}
    predict_files(seg_dir, [c.image for c in test_cases], pred_dir, modality, overwrite=True,
                  with_scn=with_scn, traces=traces, infer=infer)
    ids = [c.case_id for c in test_cases]
    gt_dir = gt_dirs.pop()
    df, _ = evaluate_folders(pred_dir, gt_dir, labelset, cases=ids)
    df_1mm, _ = evaluate_folders(pred_dir, gt_dir, labelset, iso1mm=True, cases=ids)
    centers = []
    for case in test_cases:
        truth, trace = _gt_center_mm(case.label), traces[case.case_id]
        centers.append({"case": case.case_id, "passes": trace["passes"],
                        "localizer_error_mm": float(np.linalg.norm(trace["localizer_mm"] - truth)),
                        "roi_error_mm": float(np.linalg.norm(trace["roi_center_mm"] - truth))})
    return df.to_dict("records"), df_1mm.to_dict("records"), centers


def _kept(old: pd.DataFrame, names: set[str], unchanged: set[str],
          run_seeds: range | set[int]) -> pd.DataFrame:
    """The rows of a results file that a run of ``names`` at ``run_seeds`` keeps: every other
    setting's, and the other seeds of a setting whose definition is ``unchanged``."""
    other_setting = ~old["setting"].isin(names)
    other_seed = old["setting"].isin(unchanged) & ~old["seed"].isin(run_seeds)
    return old[other_setting | other_seed]


# the results files a run writes, in one place: name -> the rows it holds (``_Results``)
RESULT_FILES = {"per_case": "per_case.csv", "per_case_1mm": "per_case_1mm.csv",
                "centers": "centers.csv", "anatomy": "anatomy.csv",
                "anatomy_per_case": "anatomy_per_case.csv"}


@dataclass
class _Results:
    """The rows of a results folder: those an earlier run left that this run keeps, then this
    run's, in the order they are measured; each list is written whole after every step."""
    per_case: list[dict]
    per_case_1mm: list[dict]
    centers: list[dict]
    anatomy: list[dict]
    anatomy_per_case: list[dict]

    def write(self, out: Path, *names: str) -> None:
        for n in names:
            if n.startswith("anatomy") and not self.anatomy:
                continue                # no synthetic-source setting: no anatomy files
            _write_csv(pd.DataFrame(getattr(self, n)), out / RESULT_FILES[n])


def _prior_results(out: Path, settings: list[Setting], run_seeds: range
                   ) -> tuple[_Results, list[dict]]:
    """What a re-run of some settings (``--only``) keeps of the folder's earlier results: the
    other settings' rows, and a setting's other seeds when its definition is unchanged
    (``--first-seed K`` adds seeds to a folder); and the settings the folder then describes
    (earlier ones first, as dicts)."""
    names = {s.name for s in settings}
    known = [asdict(s) for s in settings]
    empty = _Results(**{name: [] for name in RESULT_FILES})
    if not ((out / "per_case.csv").exists() and (out / "settings.json").exists()):
        return empty, known
    old = pd.read_csv(out / "per_case.csv")
    # a stored setting written before a field was added has that field's default
    stored = {s["name"]: {**asdict(Setting(s["name"])), **s}
              for s in json.loads((out / "settings.json").read_text())["settings"]}
    unchanged = {s.name for s in settings
                 if stored.get(s.name) == json.loads(json.dumps(asdict(s)))}
    known = [s for s in stored.values()
             if s["name"] not in names and s["name"] in set(old["setting"])] + known
    per_case = _kept(old, names, unchanged, run_seeds).to_dict("records")
    if not per_case:
        return empty, known

    def kept(csv: str) -> list[dict]:
        if not (out / csv).exists():
            return []
        return _kept(pd.read_csv(out / csv), names, unchanged, run_seeds).to_dict("records")
    return _Results(per_case=per_case, **{name: kept(csv) for name, csv in RESULT_FILES.items()
                                          if name != "per_case"}), known


def run_experiment(name: str, settings: list[Setting], base, out: Path, data: Path | None = None,
                   seeds: int = 1, folds: int = 0, published: dict | None = None,
                   cohort: Cohort | None = None, note: str | None = None,
                   catalogue: list[Setting] | None = None, first_seed: int = 0) -> pd.DataFrame:
    """Run every setting x seed x fold; write the results folder; return the per-case rows.
    The seeds are ``first_seed`` ... ``first_seed + seeds - 1`` (``run.seed`` of each cascade).

    ``cohort`` gives the cases (MS-CMRSeg, ACDC, ...); without it, the MM-WHS layout at ``data``
    (default: the built-in phantom) with ``folds``. ``catalogue``: every setting of the
    experiment, where a setting's ``same_run_as`` is looked up (default: ``settings``)."""
    if seeds < 1 or first_seed < 0:                     # before anything is written
        raise UserError(f"--seeds {seeds} --first-seed {first_seed}: need at least one seed and "
                        f"a first seed >= 0")
    by_name = check_settings(settings, catalogue, base)
    out = Path(out)
    work = out / "work"
    if cohort is None:
        if data is None:                                # the built-in phantom, test labels known
            data = work / "phantom"
            if not (data / "phantom.json").exists():
                phantom.write_dataset(data, *PHANTOM_CASES, seed=0)
        cohort = mmwhs_cohort(base, Path(data), folds)
    needs_source = [s.name for s in settings if s.mtn or s.raw or s.harmonize]
    if needs_source and not cohort.source:              # before any results file is written
        raise UserError(f"settings {needs_source} need source-domain cases (MTN, pooling or "
                        f"histogram matching); {cohort.data} ({cohort.layout}) has none: add "
                        f"them, or run the settings without them (--without-mtn)")
    _check_same_config(base, out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(base, out / "config.json")
    run_seeds = range(first_seed, first_seed + seeds)
    results, known = _prior_results(out, settings, run_seeds)
    seed_list = sorted({int(r["seed"]) for r in results.per_case}.union(run_seeds))
    atomic_write_text(out / "settings.json", json.dumps(
        {"experiment": name, "data": str(cohort.data), "seeds": seeds, "first_seed": first_seed,
         "seeds_in_results": seed_list, "folds": folds,
         "settings": known, "cohort": cohort.describe()}, indent=2))
    labelset = get_labelset(base.data.labels)
    for seed in run_seeds:
        for fold, (train_cases, test_cases) in enumerate(cohort.splits):
            for s in settings:
                _run_setting(name, s, by_name, base, cohort, work, seed, fold, train_cases,
                             test_cases, labelset, results)
                results.write(out, "per_case", "per_case_1mm", "centers")
            scores, cases = _anatomy(base, settings, by_name, cohort, work, seed, fold,
                                     test_cases, results.per_case, labelset)
            results.anatomy += scores
            results.anatomy_per_case += cases
            if seed == first_seed and fold == 0:
                _translation_figures(base, settings, cohort, work, seed, train_cases, test_cases,
                                     labelset, out / "figures")
            results.write(out, "anatomy", "anatomy_per_case")
    df = pd.DataFrame(results.per_case)
    _write_tables(name, out, df, pd.DataFrame(results.per_case_1mm), results.anatomy,
                  [s["name"] for s in known], published, note)
    return df


def _run_setting(name: str, s: Setting, by_name: dict, base, cohort: Cohort, work: Path,
                 seed: int, fold: int, train_cases, test_cases, labelset,
                 results: _Results) -> None:
    """One setting at one seed and fold: its cascade (trained first if missing; an ensemble's
    members, or the run of ``same_run_as``) predicts the fold's test cases; the rows are added
    to ``results`` and a line is printed."""
    t0 = time.time()
    tag = f"s{seed}_f{fold}"
    trained = by_name[s.same_run_as] if s.same_run_as else s
    seg_dirs = [_trained_run(trained, by_name, base, cohort, work, run_seed, fold, train_cases,
                             test_cases)
                for run_seed in range(s.members * seed, s.members * (seed + 1))]
    cfg = apply_overrides(base, list(s.overrides))
    infer = [o for o in s.overrides if o.strip().startswith("infer.")]
    case_rows, rows_1mm, centers = _evaluate_setting(
        seg_dirs if len(seg_dirs) > 1 else seg_dirs[0], test_cases, work / "pred" / s.name / tag,
        labelset, cfg.scn.enabled, infer)
    key = {"setting": s.name, "seed": seed, "fold": fold}
    results.per_case += [{**key, **r} for r in case_rows]
    results.per_case_1mm += [{**key, **r} for r in rows_1mm]
    results.centers += [{**key, **r} for r in centers]
    whs = [r["dice"] for r in case_rows if r["structure"] == "WHS_mean"]
    loc = [c["localizer_error_mm"] for c in centers]
    print(f"[{name}] {s.name} seed {seed} fold {fold}: WHS mean Dice {100 * np.mean(whs):.1f}%; "
          f"localizer centre error median {np.median(loc):.1f} mm, max {np.max(loc):.1f} mm "
          f"({time.time() - t0:.0f} s)", flush=True)


def _write_tables(name: str, out: Path, df: pd.DataFrame, df_1mm: pd.DataFrame,
                  anatomy_rows: list[dict], order: list[str], published: dict | None,
                  note: str | None) -> None:
    """summary.csv, summary_1mm.csv and table.md of the results folder; the table is printed."""
    summary = summarize_experiment(df)
    _write_csv(summary, out / "summary.csv")
    summary_1mm = summarize_experiment(df_1mm)
    _write_csv(summary_1mm, out / "summary_1mm.csv")
    table = markdown_table(summary, order, published, note)
    table_1mm = markdown_table(summary_1mm, order, None, "Both grids: predictions and ground "
                               "truth resampled to 1 mm isotropic by nearest neighbour.")
    atomic_write_text(out / "table.md", f"# {name}\n\n## Native grid of the test images\n\n"
                      f"{table}\n\n## At 1 mm isotropic (the MM-WHS challenge's evaluation)"
                      f"\n\n{table_1mm}\n" + paired_table(df, order)
                      + anatomy_table(anatomy_rows))
    print(table)


def _trained_run(trained: Setting, by_name: dict, base, cohort: Cohort, work: Path, seed: int,
                 fold: int, train_cases, test_cases) -> Path:
    """The finished run of setting ``trained`` at this seed and fold, trained first if missing."""
    tag = f"s{seed}_f{fold}"
    seg_dir = work / "seg" / trained.name / tag
    if not (seg_dir / "done.json").exists():
        reuse = None
        if trained.maunet_from:             # its MAUNet's run first
            reuse = work / "seg" / trained.maunet_from / tag
            if not (reuse / "done.json").exists():
                _train_setting(by_name[trained.maunet_from], base, cohort, work, seed,
                               train_cases, test_cases, reuse, _reference(by_name, work, tag))
        _train_setting(trained, base, cohort, work, seed, train_cases, test_cases, seg_dir,
                       _reference(by_name, work, tag), reuse)
    return seg_dir


def check_settings(settings: list[Setting], catalogue: list[Setting] | None = None,
                   base=None) -> dict[str, Setting]:
    """The settings by name (``catalogue``'s and these), after the errors a run would meet only
    at a setting's turn: members < 1, a ``same_run_as`` or ``maunet_from`` naming no fully
    trained setting of the experiment, and (given the ``base`` config) an override or MTN
    override that is no field of it or has the wrong type."""
    by_name = {s.name: s for s in [*(catalogue or []), *settings]}
    for s in settings:
        if base is not None:
            apply_overrides(base, [*s.overrides, *s.mtn_overrides])
        if s.members < 1:
            raise UserError(f"setting {s.name!r}: members must be >= 1, got {s.members}")
        if s.same_run_as is not None and s.same_run_as not in by_name:
            raise UserError(f"setting {s.name!r} evaluates the run of {s.same_run_as!r}, which "
                            f"is not a setting of this experiment ({sorted(by_name)})")
        _check_maunet_from(by_name[s.same_run_as] if s.same_run_as else s, by_name)
    return by_name


def _check_maunet_from(s: Setting, by_name: dict) -> None:
    """A setting that trains only the SCN on another setting's MAUNet differs from it in scn.*
    options alone (else its MAUNet would not be the one its options describe)."""
    if s.maunet_from is None:
        return
    if s.maunet_from not in by_name or by_name[s.maunet_from].maunet_from \
            or by_name[s.maunet_from].same_run_as:
        raise UserError(f"setting {s.name!r} trains its SCN on the MAUNet of {s.maunet_from!r}, "
                        f"which is not a fully trained setting of this experiment "
                        f"({sorted(by_name)})")
    other = by_name[s.maunet_from]
    not_scn = lambda t: sorted(o for o in t.overrides if not o.strip().startswith("scn."))
    differ = [f for f in ("mtn", "ratio", "mtn_overrides", "raw", "harmonize")
              if getattr(s, f) != getattr(other, f)]
    if not_scn(s) != not_scn(other) or differ or any(
            o.replace(" ", "") == "scn.enabled=False" for o in s.overrides):
        raise UserError(f"setting {s.name!r} trains its SCN on the MAUNet of {other.name!r}: it "
                        f"may differ from it only in scn.* options (and keep the SCN on)")


def _train_setting(s: Setting, base, cohort: Cohort, work: Path, seed: int, train_cases,
                   test_cases, seg_dir: Path, reference: Path | None = None,
                   reuse: Path | None = None) -> None:
    """Train the cascade of setting ``s`` (seed, fold's training cases) into ``seg_dir``; the
    fold's test cases are only named so that no training (the MTN's included) reads them.
    ``reference``: a cascade of real target cases alone, for the MTN's anatomy log. ``reuse``:
    a finished run whose localizer and MAUNet are copied, so that only the SCN trains."""
    from ..train.seg import STAGES, train_segmentation  # TensorFlow (see _generated)
    t0 = time.time()
    cfg = apply_overrides(base, [*s.overrides, f"run.seed={seed}",
                                 f"data.ratio={s.ratio if s.mtn or s.harmonize else 0.0}"])
    if s.raw and not cohort.source:
        raise UserError(f"setting {s.name!r} pools source-domain cases; {cohort.data} "
                        f"({cohort.layout}) has none")
    generated = _source_folder(base, s, cohort, work, seed, test_cases, reference)
    # the localizer learns from the real training cases only: settings whose localizer, data,
    # augmentation and run options agree share one localizer run (paired, and trained once)
    shared = work / "localizer" / _key([_localizer_inputs(cfg), [c.case_id for c in train_cases]])
    stages = STAGES
    if reuse is not None:
        for stage in ("localizer", "maunet"):
            shutil.rmtree(seg_dir / stage, ignore_errors=True)
            shutil.copytree(reuse / stage, seg_dir / stage)
        stages = ("scn",)
    elif (shared / "done.json").exists():
        shutil.rmtree(seg_dir / "localizer", ignore_errors=True)
        shutil.copytree(shared / "localizer", seg_dir / "localizer")
        stages = ("maunet", "scn")
    train_segmentation(cfg, cohort.data, seg_dir, stages=stages, generated=generated,
                       cases=train_cases, extra=list(cohort.source) if s.raw else None)
    if "localizer" in stages:
        with atomic_dir(shared) as tmp:
            shutil.copytree(seg_dir / "localizer", Path(tmp) / "localizer")
            atomic_write_text(Path(tmp) / "done.json", json.dumps({"trained_by": s.name}))
    atomic_write_text(seg_dir / "done.json", json.dumps(
        {"seconds": time.time() - t0, "localizer": str(reuse or shared),
         **({"maunet_from": str(reuse)} if reuse is not None else {})}))


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _check_same_config(base, out: Path) -> None:
    """A results folder holds one configuration: its finished runs are reused by name, so a
    re-run with other ``--set`` options (or another preset) there would mix configurations."""
    if not (out / "config.json").exists():
        return
    old, new = _flat(asdict(load_config(out / "config.json"))), _flat(asdict(base))
    differ = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    if differ:
        shown = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in differ[:4])
        raise UserError(f"{out} holds runs of another configuration ({shown}"
                        f"{', ...' if len(differ) > 4 else ''}); give this one its own --run NAME")


def _localizer_inputs(cfg) -> dict:
    """What the localizer's training depends on (``train_localizer``): not data.ratio or
    data.real_share, which change only the cases MAUNet and SCN learn from."""
    d = asdict(cfg)
    d["data"].pop("ratio")
    d["data"].pop("real_share")
    if d["data"]["grid_axes"] == "world":    # added later: runs made before keep their key
        d["data"].pop("grid_axes")
    if not d["localizer"]["ranks"]:           # likewise
        d["localizer"].pop("ranks")
    return {k: d[k] for k in ("data", "augment", "localizer", "train_localizer", "run")}


def _write_csv(df: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)
