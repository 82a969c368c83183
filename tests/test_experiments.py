"""Experiment runner on the tiny phantom: results files, summary = per-case means, k-fold,
resume, error paths; the notebooks run headless on these results (nbclient)."""
import os
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from cm_trancaf.config import get_preset
from cm_trancaf.experiments import Setting, kfold_splits, run_experiment
from cm_trancaf.utils import UserError

ROOT = Path(__file__).resolve().parents[1]
# two trained settings and a paired one (the "r=1.0" run without its SCN: evaluated, not trained)
SETTINGS = [Setting("r=0.0", ("scn.enabled=False",)), Setting("r=1.0", mtn=True, ratio=1.0),
            Setting("r=1.0 SCN off", ("scn.enabled=False",), mtn=True, ratio=1.0,
                    same_run_as="r=1.0")]


@pytest.fixture(scope="module")
def results(tiny_phantom, tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    run = root / "table2_ratio" / "tiny"
    df = run_experiment("table2_ratio", SETTINGS, get_preset("tiny"), run, tiny_phantom,
                        published={"paper": {"WHS_mean dice": 91.1}})
    return root, run, df


def test_results_folder_and_summary_match_per_case_rows(results):
    root, run, df = results
    for name in ("config.json", "settings.json", "per_case.csv", "summary.csv", "table.md"):
        assert (run / name).is_file()
    per_case = pd.read_csv(run / "per_case.csv")
    # 3 settings x 2 held-out cases x (7 structures + 2 WHS rows)
    assert len(per_case) == 3 * 2 * 9
    assert set(per_case["case"]) == {"ct_test_2001", "ct_test_2002"}
    summary = pd.read_csv(run / "summary.csv")
    for setting in ("r=0.0", "r=1.0"):
        rows = per_case[(per_case.setting == setting) & (per_case.structure == "LV")]
        got = summary[(summary.setting == setting) & (summary.structure == "LV")].iloc[0]
        assert got["dice_mean"] == pytest.approx(rows["dice"].mean(), abs=1e-9)
        assert got["dice_std"] == pytest.approx(rows["dice"].std(ddof=0), abs=1e-9)
    table = (run / "table.md").read_text(encoding="utf-8")
    assert "| r=0.0 |" in table and "| r=1.0 |" in table and "| paper |" in table
    assert 'Paired against "' in table                   # each setting against the first one
    # the MTN's images beside their sources and a real CT, saved by the experiment
    assert len(list((run / "figures").glob("translation_mtn_*.png"))) == 1
    # the MM-WHS challenge's grid too: the same cases and structures, scored at 1 mm (the tiny
    # phantom is at 4 mm: a nearest-neighbour x4 upsampling keeps the overlaps close)
    iso = pd.read_csv(run / "per_case_1mm.csv")
    key = ["setting", "case", "structure"]
    both = per_case.merge(iso, on=key, suffixes=("", "_1mm"))
    assert len(both) == len(per_case) == len(iso)
    assert (both["dice"] - both["dice_1mm"]).abs().max() < 0.1
    assert "At 1 mm isotropic" in table and (run / "summary_1mm.csv").is_file()
    # r = 1.0 used every generated case; r = 0.0 none (split.json of each seg run)
    import json
    gen = json.loads((run / "work/seg/r=1.0/s0_f0/split.json").read_text())["generated"]
    assert len(gen) == 2 and json.loads(
        (run / "work/seg/r=0.0/s0_f0/split.json").read_text())["generated"] == []
    # the SCN-off setting has no SCN stage; the paired one no run of its own
    assert not (run / "work/seg/r=0.0/s0_f0/scn").exists()
    assert not (run / "work/seg/r=1.0 SCN off").exists()


def test_rerun_skips_finished_training(results, tiny_phantom):
    root, run, _ = results
    ckpt = run / "work/seg/r=1.0/s0_f0/maunet/ckpt/last/checkpoint"
    before = ckpt.stat().st_mtime_ns
    df = run_experiment("table2_ratio", SETTINGS[1:2], get_preset("tiny"), run, tiny_phantom)
    assert ckpt.stat().st_mtime_ns == before
    # the settings not re-run keep their results
    assert set(df["setting"]) == {"r=0.0", "r=1.0", "r=1.0 SCN off"} and len(df) == 3 * 2 * 9


def test_scn_only_setting_trains_its_scn_on_the_named_runs_maunet(results, tiny_phantom,
                                                                    tmp_path):
    """``maunet_from``: a paired ablation of the SCN's training. Only the SCN trains (with the
    setting's scn.* options); localizer and MAUNet are the named run's, bit for bit, and that
    run is not retrained. A setting that differs in anything but scn.* is refused up front."""
    import shutil
    _, run, _ = results
    copy = tmp_path / "tiny"
    shutil.copytree(run, copy)
    base = copy / "work/seg/r=1.0/s0_f0"
    mtime = (base / "maunet/ckpt/last/checkpoint").stat().st_mtime_ns
    noisy = Setting("r=1.0 noisy SCN", ("scn.input_noise=2.0",), mtn=True, ratio=1.0,
                    maunet_from="r=1.0")
    df = run_experiment("table2_ratio", [noisy], get_preset("tiny"), copy, tiny_phantom,
                        catalogue=[*SETTINGS, noisy])
    seg = copy / "work/seg/r=1.0 noisy SCN/s0_f0"
    assert json.loads((seg / "done.json").read_text())["maunet_from"] == str(base)
    files = lambda d: {p.relative_to(d): p.read_bytes() for p in sorted(d.rglob("*.data-*"))}
    for stage in ("localizer", "maunet"):
        assert files(seg / stage / "ckpt") == files(base / stage / "ckpt") != {}
    assert files(seg / "scn" / "ckpt") != files(base / "scn" / "ckpt")
    assert (base / "maunet/ckpt/last/checkpoint").stat().st_mtime_ns == mtime
    assert "input/flipped" in pd.read_csv(seg / "scn" / "log.csv").columns
    assert len(df[df.setting == "r=1.0 noisy SCN"]) == 2 * 9
    before = (copy / "settings.json").read_text()
    bad = Setting("bad", ("maunet.pab=False",), mtn=True, ratio=1.0, maunet_from="r=1.0")
    with pytest.raises(UserError, match="only in scn"):
        run_experiment("table2_ratio", [bad], get_preset("tiny"), copy, tiny_phantom,
                       catalogue=[*SETTINGS, bad])
    assert (copy / "settings.json").read_text() == before and not (copy / "work/seg/bad").exists()


def test_translation_figure_shows_each_volume_at_its_own_lv_level(tmp_path):
    """The source, synthetic and target panels are cut through each volume's own LV centre, in
    one orientation whatever the file's direction."""
    from cm_trancaf.plots import level_slice
    img = np.zeros((12, 10, 10), np.float32)
    lab = np.zeros((12, 10, 10), np.int16)
    lab[8:11, 3:6, 3:6] = 500                        # LV around z = 9
    lab[1:4, 3:6, 3:6] = 600                         # RV elsewhere
    img[9] = 7.0
    paths = []
    for name, arr in (("i", img), ("l", lab)):
        im = sitk.GetImageFromArray(arr)
        im.SetDirection((1, 0, 0, 0, 1, 0, 0, 0, -1))            # z stored upside down
        im.SetOrigin((0.0, 0.0, 11.0))
        sitk.WriteImage(im, str(tmp_path / f"{name}.nii.gz"))
        paths.append(tmp_path / f"{name}.nii.gz")
    image, label = level_slice(*paths, code=500)
    assert (label == 500).any() and not (label == 600).any() and np.all(image == 7.0)
    # along the stack's own axes an oblique stack is cut in its own slice planes: the stored slice
    rng = np.random.default_rng(0)
    img = rng.normal(size=(12, 10, 10)).astype(np.float32)
    c, s_ = np.cos(0.6), np.sin(0.6)
    oblique = (c, 0.0, s_, 0.0, 1.0, 0.0, -s_, 0.0, c)
    for name, arr in (("oi", img), ("ol", lab)):
        im = sitk.GetImageFromArray(arr)
        im.SetDirection(oblique)
        im.SetSpacing((1.5, 1.5, 6.0))
        sitk.WriteImage(im, str(tmp_path / f"{name}.nii.gz"))
    image, label = level_slice(tmp_path / "oi.nii.gz", tmp_path / "ol.nii.gz", 500, grid_axes="image")
    assert np.allclose(image, img[9], atol=1e-4) and np.array_equal(label, lab[9])


def test_a_rerun_replaces_its_seeds_and_every_seed_of_a_changed_setting():
    """What a re-run (``--only`` / ``--first-seed``) keeps: other settings' rows; a setting's
    other seeds only while its definition is unchanged (old seeds of another recipe go)."""
    from cm_trancaf.experiments.runner import _kept
    old = pd.DataFrame({"setting": ["a", "a", "b", "b", "c"], "seed": [0, 1, 0, 1, 0]})
    kept = _kept(old, names={"a", "b"}, unchanged={"a"}, run_seeds={1})
    assert kept.to_dict("records") == [{"setting": "a", "seed": 0}, {"setting": "c", "seed": 0}]
    assert _kept(old, {"a"}, {"a"}, {0, 1})["setting"].tolist() == ["b", "b", "c"]


def test_an_ensemble_setting_predicts_with_the_seeds_it_names(two_seeds, tiny_phantom, tmp_path):
    """"r=0.0, 2 members" at seed 0 is the mean of "r=0.0"'s seeds 0 and 1: nothing is trained,
    and its label maps are those of ``predict`` with both runs; a setting with 0 members is an
    error before anything is written."""
    import shutil
    from cm_trancaf.predict import predict_files
    copy = tmp_path / "tiny"
    shutil.copytree(two_seeds[0], copy)
    seg = copy / "work/seg/r=0.0"
    ensemble = Setting("r=0.0, 2 members", ("scn.enabled=False",), same_run_as="r=0.0", members=2)
    df = run_experiment("table2_ratio", [ensemble], get_preset("tiny"), copy, tiny_phantom,
                        catalogue=SETTINGS)
    assert sorted(p.name for p in seg.iterdir()) == ["s0_f0", "s1_f0"]      # nothing trained
    mine = df[df.setting == ensemble.name]
    assert set(mine["seed"]) == {0} and len(mine) == 2 * 9
    pred = copy / "work/pred" / ensemble.name / "s0_f0"
    again = predict_files([seg / "s0_f0", seg / "s1_f0"], tiny_phantom / "ct_test",
                          tmp_path / "again", with_scn=False)
    for f in again:
        same = sitk.GetArrayFromImage(sitk.ReadImage(str(pred / f.name))) == \
            sitk.GetArrayFromImage(sitk.ReadImage(str(f)))
        assert same.mean() >= 0.999                       # the last bit of TF's CPU kernels
    assert {"r=0.0", "r=1.0", ensemble.name} <= set(pd.read_csv(copy / "per_case.csv").setting)
    with pytest.raises(UserError, match="members must be >= 1"):
        run_experiment("x", [Setting("a", members=0)], get_preset("tiny"), tmp_path / "y")
    assert not (tmp_path / "y").exists()


def test_kfold_splits_test_every_case_once():
    ids = [f"c{i}" for i in range(11)]
    splits = kfold_splits(ids, 5, seed=3)
    tested = [c for _, test in splits for c in test]
    assert sorted(tested) == sorted(ids)
    for train, test in splits:
        assert not set(train) & set(test) and len(train) + len(test) == 11
    assert splits == kfold_splits(ids, 5, seed=3) and splits != kfold_splits(ids, 5, seed=4)
    with pytest.raises(UserError, match="folds"):
        kfold_splits(ids, 12, 0)


def test_dev_split_tests_training_cases_only_and_drops_the_test_cases():
    from types import SimpleNamespace as Case
    from cm_trancaf.experiments.cohorts import Cohort, dev_cohort
    case = lambda i: Case(case_id=f"p{i:03d}")
    train, test = [case(i) for i in range(12)], [case(i) for i in range(12, 16)]
    cohort = Cohort(Path("."), ((train, test),), mtn_target=tuple(train + test))
    dev = dev_cohort(cohort, 3, seed=1)
    (dtrain, dtest), = dev.splits
    ids = lambda cs: {c.case_id for c in cs}
    assert len(dtest) == 3 and ids(dtest) <= ids(train) and len(dtrain) == 9
    assert not ids(dtrain) & ids(dtest)
    # nothing of the real test set is read, not even by the MTN
    assert not (ids(dtrain) | ids(dtest) | ids(dev.mtn_target)) & ids(test)
    assert dev_cohort(cohort, 3, seed=1).splits == dev.splits
    with pytest.raises(UserError, match="--dev"):
        dev_cohort(cohort, 11)


@pytest.fixture(scope="module")
def two_seeds(results, tiny_phantom, tmp_path_factory):
    """A copy of the results folder to which seed 1 of "r=0.0" was added (``first_seed=1``)."""
    import shutil
    _, run, _ = results
    copy = tmp_path_factory.mktemp("two_seeds") / "tiny"
    shutil.copytree(run, copy)
    df = run_experiment("table2_ratio", SETTINGS[:1], get_preset("tiny"), copy, tiny_phantom,
                        first_seed=1)
    return copy, df


def test_first_seed_adds_a_seed_and_keeps_the_others(results, two_seeds, tmp_path, capsys):
    """``first_seed``: a seed more in a folder holding seed 0. Only seed 1 is trained (its
    cascade's run.seed is 1, its weights differ from seed 0's); seed 0's rows stay as they were,
    in every results file; a negative first seed is one error line."""
    import cm_trancaf.experiments.command as command
    _, run, _ = results
    copy, df = two_seeds
    before = {csv: pd.read_csv(run / csv)
              for csv in ("per_case.csv", "per_case_1mm.csv", "centers.csv")}
    mine = df[df.setting == "r=0.0"]
    assert mine.groupby("seed").size().to_dict() == {0: 2 * 9, 1: 2 * 9}
    for csv, old in before.items():
        new = pd.read_csv(copy / csv)
        pd.testing.assert_frame_equal(new[new.seed == 0].reset_index(drop=True),
                                      old.reset_index(drop=True))
        assert set(new[new.setting == "r=0.0"]["seed"]) == {0, 1}
    for csv in ("anatomy.csv", "anatomy_per_case.csv"):    # "r=1.0"'s, not re-run: kept as is
        old = pd.read_csv(run / csv)
        assert set(old["setting"]) == {"r=1.0"}
        pd.testing.assert_frame_equal(pd.read_csv(copy / csv), old)
    assert json.loads((copy / "settings.json").read_text())["seeds_in_results"] == [0, 1]
    seg = copy / "work/seg/r=0.0"
    assert json.loads((seg / "s1_f0/config.json").read_text())["run"]["seed"] == 1
    weights = lambda d: {p.relative_to(d): p.read_bytes() for p in sorted(d.rglob("*.data-*"))}
    assert weights(seg / "s1_f0/maunet/ckpt") != weights(seg / "s0_f0/maunet/ckpt") != {}
    assert json.loads((copy / "settings.json").read_text())["first_seed"] == 1
    argv = ["--preset", "tiny", "--first-seed", "-1", "--out", str(tmp_path)]
    assert command.main("x", [Setting("a")], argv) == 2
    assert "--first-seed -1" in capsys.readouterr().err and not (tmp_path / "x").exists()
    with pytest.raises(UserError, match="--seeds 0"):      # a notebook's call: the same check
        run_experiment("x", [Setting("a")], get_preset("tiny"), tmp_path / "y", seeds=0)
    assert not (tmp_path / "y").exists()


STARTS = """
import sys, warnings
import tensorflow as tf
import cm_trancaf.experiments.command as command
from cm_trancaf.experiments import Setting
from cm_trancaf.train.loop import use_determinism

def runner(*args, **kwargs):                # what a training stage finds when it starts
    threads = tf.config.threading.get_inter_op_parallelism_threads()
    with warnings.catch_warnings():
        warnings.simplefilter("error")       # set too late, use_determinism would warn
        print("inter-op threads", threads, "deterministic", use_determinism() if threads else None)
command.run_experiment = runner
sys.exit(command.main("t", [Setting("a")], sys.argv[1:]))
"""


@pytest.mark.parametrize("overrides,expected", [
    (["--set", "run.deterministic=True"], "inter-op threads 1 deterministic True"),
    ([], "inter-op threads 0 deterministic None")])
def test_experiment_starts_tensorflow_as_its_config_asks(overrides, expected, tmp_path):
    """``run.deterministic`` needs one inter-op thread before TensorFlow's runtime starts: an
    experiment script sets it up front, so its training stages get it instead of warning that it
    came too late (as they did before); without it the runtime starts as TensorFlow's default."""
    r = subprocess.run([sys.executable, "-c", STARTS, "--preset", "cpu", "--out", str(tmp_path)]
                       + overrides, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert expected in r.stdout


def test_dev_split_of_a_cross_validation_reads_no_case_of_the_first_folds_test():
    """In a k-fold CV every case is tested somewhere: the dev split comes from the first fold's
    training cases alone, and that fold's test cases are read by nothing (MTN included)."""
    from types import SimpleNamespace as Case
    from cm_trancaf.experiments.cohorts import Cohort, dev_cohort, kfold_splits
    cases = {f"c{i:02d}": Case(case_id=f"c{i:02d}") for i in range(16)}
    splits = tuple(([cases[i] for i in tr], [cases[i] for i in te])
                   for tr, te in kfold_splits(sorted(cases), 4, 0))
    dev = dev_cohort(Cohort(Path("."), splits, mtn_target=tuple(cases.values())), 4, seed=2)
    ids = lambda cs: {c.case_id for c in cs}
    (dtrain, dtest), = dev.splits
    first_train, first_test = map(ids, splits[0])
    assert len(dtest) == 4 and len(dtrain) == 8 and ids(dtrain) | ids(dtest) == first_train
    assert not (ids(dtrain) | ids(dtest) | ids(dev.mtn_target)) & first_test


def test_dev_flag_on_mmwhs_layout_tests_training_cases_only(tiny_phantom, tmp_path, monkeypatch,
                                                             capsys):
    """``--dev N`` on an MM-WHS layout hands the runner training cases only."""
    from cm_trancaf.experiments import command
    seen = {}
    monkeypatch.setattr(command, "run_experiment",
                        lambda name, chosen, base, out, data, seeds, folds, published, cohort,
                        note, catalogue, **k: seen.update(out=out, cohort=cohort))
    argv = ["--data", str(tiny_phantom), "--folds", "0", "--preset", "tiny", "--out",
            str(tmp_path), "--dev", "1"]
    assert command.main("t", [Setting("a")], argv) == 0
    (train, dev), = seen["cohort"].splits
    ids = lambda cases: {c.case_id for c in cases}
    train_ids = {p.name.replace("_image.nii.gz", "") for p in (tiny_phantom / "ct_train").glob(
        "*_image.nii.gz")}
    assert len(dev) == 1 and ids(train) | ids(dev) == train_ids and len(train_ids) == 3
    assert seen["out"] == tmp_path / "t" / "tiny_dev"
    assert command.main("t", [Setting("a")], argv[2:]) == 2     # the phantom: --dev needs --data
    assert "--dev needs --data" in capsys.readouterr().err


def test_settings_share_one_localizer_run(results):
    """The localizer learns from the real training cases only, so the settings of a table (which
    differ in generated data and stage switches) share one localizer run: trained once, the same
    weights in every setting's cascade."""
    import json
    _, run, _ = results
    shared = list((run / "work" / "localizer").iterdir())
    assert len(shared) == 1 and (shared[0] / "done.json").exists()
    weights = []
    for name in ("r=0.0", "r=1.0"):
        seg = run / "work" / "seg" / name / "s0_f0"
        assert json.loads((seg / "done.json").read_text())["localizer"] == str(shared[0])
        ckpt = sorted((seg / "localizer" / "ckpt" / "last").glob("*.data-*"))
        weights.append(b"".join(p.read_bytes() for p in ckpt))
    assert weights[0] and weights[0] == weights[1]


def test_localizer_key_changes_only_when_a_new_localizer_option_is_on():
    """Runs trained before ``localizer.ranks`` existed keep their shared localizer's key (the
    option off adds nothing to it); turning it on trains another localizer."""
    from cm_trancaf.config import apply_overrides
    from cm_trancaf.experiments.runner import _localizer_inputs
    cfg = get_preset("cpu")                                         # ranks off
    off = _localizer_inputs(cfg)
    assert "ranks" not in off["localizer"]
    assert off == _localizer_inputs(apply_overrides(cfg, ["localizer.ranks=False"]))
    assert _localizer_inputs(apply_overrides(cfg, ["localizer.ranks=True"]))["localizer"]["ranks"]
    assert _localizer_inputs(get_preset("cmr_cpu"))["localizer"]["ranks"]


def test_mtn_logs_the_anatomy_it_keeps(results):
    """With a cascade of real target cases alone (here "r=0.0"), the MTN's own validation log
    holds the anatomy (FCN) score of G_c's translations, a Dice in [0, 1] at each validation."""
    _, run, _ = results
    (mtn,) = list((run / "work" / "mtn").iterdir())
    val = pd.read_csv(mtn / "val.csv")
    assert len(val) >= 2 and val["val/anatomy_dice"].between(0, 1).all()
    assert "val/anatomy_dice" in json.loads((mtn / "summary.json").read_text())["best"]


def test_cross_validation_tests_each_training_case(tiny_phantom, tmp_path):
    settings = [Setting("cascade", mtn=True, ratio=1.0),
                # paired: the same run without its SCN, and (an infer.* switch) without the
                # re-centring pass
                Setting("SCN off", ("scn.enabled=False", "infer.refine_passes=0"),
                        same_run_as="cascade")]
    # 2 folds over the phantom's 3 training cases: one fold tests 2 cases, the other 1
    df = run_experiment("cv", settings, get_preset("tiny"), tmp_path / "cv", tiny_phantom, folds=2)
    cases = ["ct_train_1001", "ct_train_1002", "ct_train_1003"]
    assert sorted(set(df["case"])) == cases
    assert sorted(set(df["fold"])) == [0, 1]
    import json
    mtn = [json.loads(p.read_text()) for p in (tmp_path / "cv/work/mtn").glob("*/mtn.json")]
    targets = [set(m["target"]) for m in mtn]
    assert len(targets) == 2                                    # one MTN per fold
    for fold in range(2):
        tested = set(df[df.fold == fold]["case"])
        # a fold never trains on its own test cases: not the cascade ...
        split = json.loads((tmp_path / f"cv/work/seg/cascade/s0_f{fold}/split.json").read_text())
        assert not tested & set(split["train"] + split["val"])
        assert set(split["train"]) == set(cases) - tested
        # ... and not the MTN: the fold's own MTN learnt from exactly its training images
        assert set(cases) - tested in targets and split["generated"]
        assert sum(not (t & tested) for t in targets) == 1
    # "SCN off" is the same run's MAUNet without its SCN: no training of its own, paired rows
    assert not (tmp_path / "cv/work/seg/SCN off").exists()
    on, off = (df[(df.setting == s) & (df.structure == "WHS_mean")].set_index(["fold", "case"])
               for s in ("cascade", "SCN off"))
    assert list(on.index) == list(off.index)
    centers = pd.read_csv(tmp_path / "cv/centers.csv")
    assert len(centers) == 6 and np.isfinite(centers["localizer_error_mm"]).all()
    assert (centers["roi_error_mm"] >= 0).all() and set(centers["passes"]) <= {1, 2}
    # an infer.* switch is evaluated on the same run (no training of its own) and takes effect:
    # without the refining pass the ROI stays where the localizer put it
    one = centers[centers.setting == "SCN off"]
    assert (one["passes"] == 1).all()
    np.testing.assert_allclose(one["roi_error_mm"], one["localizer_error_mm"])
    ref = centers[centers.setting == "cascade"]
    np.testing.assert_allclose(one["localizer_error_mm"].to_numpy(),
                               ref["localizer_error_mm"].to_numpy())


def test_experiment_script_without_test_labels_is_one_line_error(tmp_path):
    (tmp_path / "ct_train").mkdir()
    r = subprocess.run([sys.executable, str(ROOT / "experiments/table5_scn.py"), "--preset", "tiny",
                        "--data", str(tmp_path), "--folds", "0", "--out", str(tmp_path / "o")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and "error:" in r.stderr


def _ct_only(tiny_phantom, tmp_path):
    import shutil
    data = tmp_path / "ct_only"
    shutil.copytree(tiny_phantom / "ct_train", data / "ct_train")
    return [sys.executable, str(ROOT / "experiments/table5_scn.py"), "--preset", "tiny", "--data",
            str(data), "--folds", "2", "--out", str(tmp_path / "o")]


def test_paper_table_needing_the_mtn_on_ct_without_mri_is_one_error_line(tiny_phantom, tmp_path):
    """The shared MM-WHS CT has no mr_train: a table whose settings use the MTN stops with one
    error line that names ``--without-mtn``, before anything is written."""
    r = subprocess.run(_ct_only(tiny_phantom, tmp_path), capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 2 and "need source-domain cases" in r.stderr
    assert "--without-mtn" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_paper_table_on_ct_without_mri_runs_without_the_mtn(tiny_phantom, tmp_path):
    """``--without-mtn`` runs the same settings without generated data (2 folds x a tiny cascade:
    about 2 minutes, so in ``make test-slow``)."""
    r = subprocess.run(_ct_only(tiny_phantom, tmp_path) + ["--without-mtn"], capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    run = tmp_path / "o" / "table5_scn" / "tiny_without_mtn"
    df = pd.read_csv(run / "per_case.csv")
    assert set(df["setting"]) == {"SCN on", "SCN off"} and df["case"].nunique() == 3        # 2 folds test all 3
    assert not (run / "work" / "mtn").exists()
    assert all(json.loads(p.read_text())["generated"] == []
               for p in (run / "work" / "seg").glob("*/*/split.json"))


@pytest.mark.parametrize("notebook", ["results_tables.ipynb", "qualitative.ipynb"])
def test_notebooks_execute_headless(results, notebook, monkeypatch):
    import nbformat
    from nbclient import NotebookClient
    root, run, _ = results
    monkeypatch.setenv("CM_TRANCAF_RESULTS", str(root))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(ROOT / "notebooks" / notebook, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
    figures = sorted(p.name for p in (run / "figures").glob("*.png"))
    if notebook == "results_tables.ipynb":
        assert {"dice_bars.png", "ratio_curve.png", "ablation_heatmap.png"} <= set(figures)
    else:          # one figure per setting, the paired one too (its run is another's)
        assert {f"qualitative_{s.name.replace(' ', '_')}.png" for s in SETTINGS} <= set(figures)


def test_shape_term_setting_without_a_target_only_run_is_one_error(tiny_phantom, tmp_path):
    """A setting whose MTN uses the shape term needs the seed's cascade of real target cases
    alone (its frozen segmenter); run alone, it stops with a message naming that, before any
    MTN run folder exists."""
    settings = [Setting("shape", mtn=True, ratio=1.0, mtn_overrides=("mtn.shape_weight=1.0",))]
    with pytest.raises(UserError, match="trained on real target cases alone"):
        run_experiment("t", settings, get_preset("tiny"), tmp_path / "o", tiny_phantom)
    assert not (tmp_path / "o" / "work" / "mtn").exists()


def test_paired_table_compares_the_same_cases_and_seeds():
    from cm_trancaf.experiments.report import paired_table
    rows = []
    for seed in (0, 1):
        for i, case in enumerate(("a", "b", "c")):
            base = 0.70 + 0.05 * i + 0.01 * seed
            for name, dice in (("base", base), ("new", base + (0.02 if case != "c" else -0.04))):
                rows.append({"setting": name, "seed": seed, "fold": 0, "case": case,
                             "structure": "WHS_mean", "dice": dice})
                rows.append({"setting": name, "seed": seed, "fold": 0, "case": case,
                             "structure": "LV", "dice": 0.0})          # not the mean: ignored
    rows.append({"setting": "new", "seed": 2, "fold": 0, "case": "a", "structure": "WHS_mean",
                 "dice": 0.0})                                         # no baseline pair
    table = paired_table(pd.DataFrame(rows), ["base", "new", "absent"])
    base_row = next(l for l in table.splitlines() if l.startswith("| base |"))
    new_row = next(l for l in table.splitlines() if l.startswith("| new |"))
    assert base_row == "| base | 6 | 75.0, 76.0 | | |"
    # pairs: +2, +2, -4 points in each seed -> mean 0.0, std sqrt(8) = 2.8; 4 better, 2 worse
    assert new_row == "| new | 6 | 75.0, 76.0, 0.0 | +0.0 ± 2.8 | 4 / 2 |"
    assert paired_table(pd.DataFrame(rows[:2]), ["base"]) == ""


def test_results_folder_refuses_runs_of_another_configuration(tmp_path):
    """Finished runs are reused by setting name: a re-run with other options in the same folder
    would mix configurations, so it stops with one line before anything is trained."""
    from cm_trancaf.config import apply_overrides, save_config
    from cm_trancaf.experiments.runner import _check_same_config
    base = get_preset("tiny")
    _check_same_config(base, tmp_path)                    # a new folder: nothing to compare
    save_config(base, tmp_path / "config.json")
    _check_same_config(base, tmp_path)                    # the same configuration again
    with pytest.raises(UserError, match=r"data.grid_axes: 'world' -> 'image'.*--run NAME"):
        _check_same_config(apply_overrides(base, ["data.grid_axes=image"]), tmp_path)


def test_table_speaks_of_published_rows_only_where_there_are_some():
    from cm_trancaf.experiments.report import markdown_table
    summary = pd.DataFrame([{"setting": "a", "structure": s, "dice_mean": 0.9, "dice_std": 0.01}
                            for s in ("LV", "WHS_mean")])
    assert "Published" not in markdown_table(summary, ["a"])
    with_row = markdown_table(summary, ["a"], {"paper": {"WHS_mean dice": 91.1}})
    assert "| paper |" in with_row and "Published rows" in with_row
    assert markdown_table(summary, ["a"], {"paper": {}}, note="N.").endswith("Dice. N.")


def test_candidate_settings_run_only_when_named(monkeypatch, capsys):
    """A script's development candidates (``main(..., candidates=...)``) stay out of a plain run
    (its cost is what its table needs) and run when named with --only; a name that is no
    setting is one error line, even beside a valid one."""
    import cm_trancaf.experiments.command as command
    seen = []
    monkeypatch.setattr(command, "run_experiment", lambda name, chosen, *a, **k: seen.append(
        [s.name for s in chosen]))
    settings, candidates = [Setting("a"), Setting("b")], [Setting("c", maunet_from="a")]
    assert command.main("x", settings, ["--preset", "tiny"], candidates=candidates) == 0
    assert command.main("x", settings, ["--preset", "tiny", "--only", "c", "--only", "a"],
                        candidates=candidates) == 0
    assert seen == [["a", "b"], ["a", "c"]]
    assert command.main("x", settings, ["--preset", "tiny", "--only", "a", "--only", "d"],
                        candidates=candidates) == 2
    err = capsys.readouterr().err
    assert "'d'" in err or "no such setting" in err


@pytest.mark.parametrize("script", sorted(p.stem for p in (ROOT / "experiments").glob("*.py")))
def test_every_experiment_scripts_settings_are_well_formed(script):
    """Each script's settings and --only candidates have distinct names, every override is a real
    config field of the right type, and same_run_as / maunet_from name one of its settings: a
    typo would otherwise surface only when that setting's turn comes, hours into a run."""
    import importlib.util
    from cm_trancaf.config import apply_overrides
    from cm_trancaf.experiments.runner import check_settings
    spec = importlib.util.spec_from_file_location(f"experiment_{script}",
                                                  ROOT / "experiments" / f"{script}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    settings = [*module.SETTINGS, *getattr(module, "CANDIDATES", [])]
    assert len(check_settings(settings)) == len(settings), "two settings share a name"
    for s in settings:
        apply_overrides(get_preset("tiny"), [*s.overrides, *s.mtn_overrides])


@pytest.mark.parametrize("bad", [Setting("typo", ("train.stpes=10",)),
                                 Setting("wrong type", mtn=True, mtn_overrides=("mtn.lam=ten",))])
def test_a_settings_bad_override_stops_the_run_before_anything_is_written(bad, tmp_path):
    """A setting built in a notebook or script with a misspelt or mistyped override fails at the
    start, naming the key, not hours later when its turn comes after the other settings."""
    from cm_trancaf.config import ConfigError
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match=r"train.stpes|mtn.lam"):
        run_experiment("x", [Setting("fine"), bad], get_preset("tiny"), out)
    assert not out.exists()
