"""Where an experiment's cases come from: k-fold splits of MM-WHS, MS-CMRSeg's labelled / unlabelled /
test LGE patients beside the labelled bSSFP source, ACDC's held-out patients."""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..data.datasets import acdc_cases, cavity_diameter_mm, get_labelset, mmwhs_cases, mscmrseg_cases
from ..data.io import read_label
from ..utils import UserError

__all__ = ["Cohort", "kfold_splits", "mmwhs_cohort", "mscmrseg_cohort", "acdc_cohort", "dev_cohort"]


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

    def mtn_images(self, test_cases=()) -> list:
        """The target images an MTN of this fold learns from: ``mtn_target`` less the fold's
        test cases (never seen by any training)."""
        tested = {c.case_id for c in test_cases}
        return [c for c in self.mtn_target if c.case_id not in tested]

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
    check_heart_sizes(src, pick(tr), source, target)
    return Cohort(Path(data), ((pick(tr), pick(te)),), src, Path(data) / source,
                  tuple(pick(tr) + pick(unl)), "mscmrseg")


# the same hearts read in two sequences differ in size by a cardiac phase at most (about 10 %); a
# larger ratio of the median LV blood-pool diameters in mm means one sequence's headers are wrong
MAX_HEART_SIZE_RATIO = 1.3


def check_heart_sizes(source_cases, target_cases, source: str, target: str) -> None:
    """Refuse a source and a target whose labelled hearts differ in physical size by more than
    ``MAX_HEART_SIZE_RATIO`` (median LV blood-pool diameter, ``metrics.cavity_diameter_mm``): the
    redistributed MS-CMRSeg bSSFP headers say 1.25 mm where the pixels are about 0.75 mm, and a
    pipeline working in mm then trains on, translates and scores hearts 1.65 times too wide.
    Only the target's training labels are read."""
    labels = get_labelset("mscmrseg")
    lv = labels.codes[labels.names.index("LV")]
    def median_diameter(cases):
        return float(np.nanmedian([cavity_diameter_mm(read_label(c.label), lv) for c in cases]))
    d_src, d_tgt = median_diameter(source_cases), median_diameter(target_cases)
    ratio = max(d_src, d_tgt) / min(d_src, d_tgt)
    if not ratio <= MAX_HEART_SIZE_RATIO:
        folder = Path(source_cases[0].image).parent
        raise UserError(f"{folder}: the {source} hearts measure {d_src:.0f} mm (median LV blood-pool "
                        f"diameter) and the {target} training hearts {d_tgt:.0f} mm, {ratio:.2f} times "
                        f"apart: the headers' in-plane spacing is wrong in one of them (the "
                        f"redistributed MS-CMRSeg C0 says 1.25 mm for 0.75 mm pixels); repair a copy "
                        f"with: python data_prep/mscmrseg_spacing.py --data {Path(folder).parent} --out DIR")


def acdc_cohort(data: Path, n_test: int = 20, n_train: int | None = None, seed: int = 0) -> Cohort:
    """ACDC: ``n_test`` patients drawn at random (seed) for testing, ``n_train`` (default: all the
    others) for training. Single modality: no source domain."""
    cases = {c.case_id: c for c in acdc_cases(data) if c.label is not None}
    if len(cases) < n_test + 2:
        raise UserError(f"{data}: {len(cases)} labelled ACDC patients, need at least {n_test + 2}")
    te, tr = _split_ids(sorted(cases), seed, n_test, n_train)
    return Cohort(Path(data), (([cases[i] for i in tr], [cases[i] for i in te]),), layout="acdc")


def dev_cohort(cohort: Cohort, n_dev: int, seed: int = 0) -> Cohort:
    """The development split for choosing settings: ``n_dev`` of the *training* cases (drawn
    reproducibly from the seed) become the test set and the rest train; the test cases are
    dropped, so nothing chosen on a dev run has seen them, not even the MTN.

    A cross-validation tests every case in some fold, so its dev split is drawn from the first
    fold's training cases alone (one split; that fold's test cases stay unread)."""
    train, test = cohort.splits[0]
    if not 1 <= n_dev <= len(train) - 2:
        raise UserError(f"--dev {n_dev}: need 1 <= n <= {len(train) - 2} (the fold has "
                        f"{len(train)} training cases)")
    by_id = {c.case_id: c for c in train}
    dev, rest = _split_ids(sorted(by_id), seed, n_dev, None)
    test_ids = {c.case_id for c in test}
    mtn_target = tuple(c for c in cohort.mtn_target if c.case_id not in test_ids)
    return replace(cohort, splits=(([by_id[i] for i in rest], [by_id[i] for i in dev]),),
                   mtn_target=mtn_target)
