"""Real-data experiments (MS-CMRSeg bSSFP -> LGE, ACDC): patient splits, the pooling and MTN
settings, and the results table, on small phantom folders in each layout (and on ../shared/data
when present: splits and case listing only, training there is a benchmark)."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from cm_trancaf.config import apply_overrides, get_preset
from cm_trancaf.data import phantom
from cm_trancaf.data.datasets import mscmrseg_header_scale, repair_mscmrseg_spacing
from cm_trancaf.data.io import write_image
from cm_trancaf.experiments import Setting, acdc_cohort, mscmrseg_cohort, run_experiment
from cm_trancaf.utils import UserError

from conftest import need_shared

ROOT = Path(__file__).resolve().parents[1]
# MM-WHS classes 1 Myo, 3 LV, 5 RV -> the 3-class sets; the other chambers become background
MSCMR = {1: 200, 3: 500, 5: 600}
ACDC = {5: 1, 1: 2, 3: 3}


def _write_label(path: Path, lab, lut: dict) -> None:
    arr = np.zeros(sitk.GetArrayViewFromImage(lab).shape, np.int16)
    for k, code in lut.items():
        arr[sitk.GetArrayViewFromImage(lab) == k] = code
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(lab)
    write_image(out, path)


def _cases(n, seed, spacing):
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        yield i + 1, phantom.make_case(phantom.random_anatomy(rng), "mr", rng, spacing,
                                       (220.0, 200.0, 150.0))


@pytest.fixture(scope="module")
def tiny_mscmrseg(tmp_path_factory) -> Path:
    """MS-CMRSeg layout: 4 C0 patients (thick slices), 5 LGE patients, codes 200/500/600."""
    root = tmp_path_factory.mktemp("mscmrseg")
    for seq, n, seed, sp in (("C0", 4, 1, (5.0, 5.0, 10.0)), ("LGE", 5, 2, (4.0, 4.0, 6.0))):
        (root / seq).mkdir()
        for num, (img, lab) in _cases(n, seed, sp):
            write_image(img, root / seq / f"patient{num}_{seq}.nii.gz")
            _write_label(root / seq / f"patient{num}_{seq}_manual.nii.gz", lab, MSCMR)
    return root


@pytest.fixture(scope="module")
def tiny_acdc(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("acdc")
    (root / "images").mkdir()
    (root / "masks").mkdir()
    for num, (img, lab) in _cases(5, 3, (5.0, 5.0, 10.0)):
        img = sitk.Cast(sitk.RescaleIntensity(img, 0, 600), sitk.sitkInt16)   # int16 as ACDC
        write_image(img, root / "images" / f"patient{num:03d}.nii.gz")
        _write_label(root / "masks" / f"patient{num:03d}_mask.nii.gz", lab, ACDC)
    return root


def test_mscmrseg_split_is_disjoint_reproducible_and_follows_the_folder(tiny_mscmrseg, tmp_path):
    c = mscmrseg_cohort(tiny_mscmrseg, n_train=2, n_unlabelled=1, seed=0)
    (train, test), = c.splits
    ids = lambda cases: {x.case_id for x in cases}
    unlabelled = ids(c.mtn_target) - ids(train)
    assert len(train) == 2 and len(unlabelled) == 1 and len(test) == 2
    assert not ids(train) & ids(test) and not unlabelled & ids(test)   # test images never trained on
    assert ids(c.source) == {f"patient{i}_C0" for i in range(1, 5)}
    assert mscmrseg_cohort(tiny_mscmrseg, 2, 1, seed=0).describe() == c.describe()
    assert mscmrseg_cohort(tiny_mscmrseg, 2, 1, seed=1).describe() != c.describe()
    # another folder of the same layout with a patient removed: nothing hard-coded per patient
    fewer = tmp_path / "fewer"
    shutil.copytree(tiny_mscmrseg, fewer)
    for f in (fewer / "LGE").glob("patient3_*"):
        f.unlink()
    c2 = mscmrseg_cohort(fewer, 2, 1, seed=0)
    assert "patient3_LGE" not in ids(c2.splits[0][0]) | ids(c2.splits[0][1]) | ids(c2.mtn_target)
    assert len(c2.splits[0][1]) == 1
    with pytest.raises(UserError, match="need at least"):
        mscmrseg_cohort(fewer, 3, 1)


def test_heart_size_check_refuses_wrong_headers_and_the_repair_fixes_them(tiny_mscmrseg, tmp_path):
    # the redistributed MS-CMRSeg defect: C0 voxels resampled, headers kept, hearts 1.65x too wide
    wrong = tmp_path / "wrong"
    shutil.copytree(tiny_mscmrseg, wrong)
    for path in (wrong / "C0").glob("*.nii.gz"):
        image = sitk.ReadImage(str(path))
        sx, sy, sz = image.GetSpacing()
        image.SetSpacing((sx * 1.65, sy * 1.65, sz))
        sitk.WriteImage(image, str(path))
    with pytest.raises(UserError, match="mscmrseg_spacing.py"):
        mscmrseg_cohort(wrong, 2, 1, seed=0)
    fixed = tmp_path / "fixed"
    rows = repair_mscmrseg_spacing(wrong, fixed, scale=1 / 1.65)
    assert len(rows) == 4 and all(r["lv_diameter_new_mm"] < r["lv_diameter_old_mm"] / 1.6 for r in rows)
    c = mscmrseg_cohort(fixed, 2, 1, seed=0)               # accepted, and the same split as before
    assert c.describe()["splits"] == mscmrseg_cohort(tiny_mscmrseg, 2, 1, seed=0).describe()["splits"]
    for path in sorted((wrong / "C0").glob("*.nii.gz")):
        a, b = sitk.ReadImage(str(path)), sitk.ReadImage(str(fixed / "C0" / path.name))
        np.testing.assert_array_equal(sitk.GetArrayViewFromImage(a), sitk.GetArrayViewFromImage(b))
        assert b.GetDirection() == a.GetDirection() and b.GetOrigin() == a.GetOrigin()
        np.testing.assert_allclose(b.GetSpacing(), np.array(a.GetSpacing()) * (1 / 1.65, 1 / 1.65, 1), rtol=1e-6)
        assert b.GetPixelID() == a.GetPixelID()
    for path in (wrong / "LGE").iterdir():                # the target is copied as it is
        assert (fixed / "LGE" / path.name).read_bytes() == path.read_bytes()
    # an existing output is refused and left alone; a failed repair leaves nothing behind
    with pytest.raises(UserError, match="already exists"):
        repair_mscmrseg_spacing(wrong, fixed)
    with pytest.raises(UserError, match="no such folder"):
        repair_mscmrseg_spacing(tmp_path / "nope", tmp_path / "out")
    with pytest.raises(UserError, match="scale"):
        repair_mscmrseg_spacing(wrong, tmp_path / "out", scale=0.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fixed", "wrong"]
    # default scale: the ratio of the two sequences' median header spacings (here 4 / (5 x 1.65))
    assert mscmrseg_header_scale(wrong) == pytest.approx(4.0 / (5.0 * 1.65))


def test_mscmrseg_experiment_pools_translates_and_tables(tiny_mscmrseg, tmp_path):
    # on each stack's own axes, as the cardiac MRI presets (the phantom's MRI is RAS: not the
    # identity direction, so the grid's direction goes through MTN, translation and paste-back)
    base = apply_overrides(get_preset("tiny"), ["data.labels=mscmrseg", "data.modality=mr",
                                                "data.spacing=(6.0, 6.0, 8.0)",
                                                "data.grid_axes=image"])
    settings = [Setting("LGE only", ("scn.enabled=False",)),
                Setting("LGE + raw bSSFP", ("scn.enabled=False",), raw=True),
                Setting("LGE + hist r=1.0", ("scn.enabled=False",), harmonize=True, ratio=1.0),
                # the MTN with its shape term: S_t is the "LGE only" run's MAUNet
                Setting("LGE + MTN r=1.0", mtn=True, ratio=1.0,
                        mtn_overrides=("mtn.shape_weight=1.0",))]
    cohort = mscmrseg_cohort(tiny_mscmrseg, n_train=2, n_unlabelled=1, seed=0)
    run = tmp_path / "mscmrseg_lge"
    df = run_experiment("mscmrseg_lge", settings, base, run, cohort=cohort, note="no published row")
    (train, test), = cohort.splits
    assert set(df["case"]) == {c.case_id for c in test}
    assert set(df["structure"]) == {"Myo", "LV", "RV", "WHS_mean", "WHS_generalised"}
    split = lambda name: json.loads((run / "work/seg" / name / "s0_f0/split.json").read_text())
    assert split("LGE only")["pooled"] == [] and split("LGE only")["generated"] == []
    assert split("LGE + raw bSSFP")["pooled"] == [f"patient{i}_C0" for i in range(1, 5)]
    assert len(split("LGE + MTN r=1.0")["generated"]) == 4                 # every translated C0
    # every labelled LGE case trains (the paper's use of the labels; validation is an option)
    assert split("LGE + MTN r=1.0")["train"] == sorted(c.case_id for c in train)
    assert split("LGE + MTN r=1.0")["val"] == []
    # the MTN learnt from the LGE training + unlabelled images only, never from test patients
    mtn = json.loads(next((run / "work/mtn").glob("*/mtn.json")).read_text())
    assert pd.read_csv(next((run / "work/mtn").glob("*/log.csv")))["loss/shape"].notna().all()
    assert set(mtn["target"]) == {c.case_id for c in cohort.mtn_target}
    assert not set(mtn["target"]) & {c.case_id for c in test}
    manifest = pd.read_csv(next((run / "work/generated").glob("*/manifest.csv")))
    assert len(manifest) == 4 and set(manifest["modality"]) == {"mr"}
    for row in manifest.itertuples():          # on the working grid along the C0 stack's axes
        made, source = sitk.ReadImage(row.image), sitk.ReadImage(row.source_image)
        assert made.GetDirection() == source.GetDirection() != (1, 0, 0, 0, 1, 0, 0, 0, 1)
        assert made.GetSpacing() == (6.0, 6.0, 8.0)
    # synthetic LGE is normalised as MRI (per-volume percentiles), not through the CT window
    from cm_trancaf.data.datasets import generated_cases
    generated = next((run / "work/generated").glob("*/manifest.csv")).parent
    assert {c.modality for c in generated_cases(generated)} == {"mr"}
    # the histogram-matched baseline: every C0 case, matched to the MTN's LGE images only
    hist = split("LGE + hist r=1.0")["generated"]
    assert len(hist) == 4
    manifest = pd.read_csv(next((run / "work/harmonized").glob("*/manifest.csv")))
    assert set(manifest["modality"]) == {"mr"} and len(manifest) == 4
    # the anatomy each synthetic folder keeps, scored by the "LGE only" cascade
    anatomy = pd.read_csv(run / "anatomy.csv")
    assert list(anatomy["setting"]) == ["LGE + hist r=1.0", "LGE + MTN r=1.0"]
    assert set(anatomy["segmenter"]) == {"LGE only"}
    assert anatomy["anatomy_dice"].between(0, 1).all()
    assert np.allclose(anatomy["ratio_to_real"],
                       anatomy["anatomy_dice"] / anatomy["segmenter_real_dice"])
    cases = pd.read_csv(run / "anatomy_per_case.csv")       # the rows behind each score
    for row in anatomy.itertuples():
        mine = cases[(cases.setting == row.setting) & (cases.structure == "WHS_mean")]
        assert sorted(mine["case"]) == [f"patient{i}_C0" for i in range(1, 5)]
        assert mine["dice"].mean() == pytest.approx(row.anatomy_dice)
    table = (run / "table.md").read_text(encoding="utf-8")
    assert "| setting | LV Dice % | RV Dice % | Myo Dice % | LV HD mm | RV HD mm | Myo HD mm |" \
        in table and "no published row" in table              # per-structure Dice and HD
    summary = pd.read_csv(run / "summary.csv")
    got = summary[(summary.setting == "LGE only") & (summary.structure == "LV")].iloc[0]
    rows = df[(df.setting == "LGE only") & (df.structure == "LV")]
    assert got["dice_mean"] == pytest.approx(rows["dice"].mean())


def test_mtn_on_histogram_matched_source_learns_and_translates_those(tiny_mscmrseg, tmp_path,
                                                                     monkeypatch):
    """``Setting(mtn=True, harmonize=True)``: G_c learns from, and translates, the bSSFP cases
    histogram-matched to the MTN's LGE images, in an MTN run of its own (not the paper's)."""
    import cm_trancaf.train.mtn as train_mtn_module
    import cm_trancaf.translate as translate_module
    from cm_trancaf.data.preprocess import histogram_match
    from cm_trancaf.experiments.runner import _generated
    seen = {}

    def fake_train(cfg, data, run, layout, cases, anatomy_run):
        seen.setdefault("sources", []).append([c.image for c in cases[0]])
        seen.setdefault("targets", []).append({c.case_id for c in cases[1]})
        run.mkdir(parents=True)
        (run / "summary.json").write_text("{}")

    def fake_translate(run, inputs, out, grid):
        seen.setdefault("inputs", []).append(Path(inputs))
        out.mkdir(parents=True)
        (out / "manifest.csv").write_text("case\n")
    monkeypatch.setattr(train_mtn_module, "train_mtn", fake_train)
    monkeypatch.setattr(translate_module, "translate_folder", fake_translate)
    base = apply_overrides(get_preset("tiny"), ["data.labels=mscmrseg", "data.modality=mr"])
    cohort = mscmrseg_cohort(tiny_mscmrseg, n_train=2, n_unlabelled=1, seed=0)
    (_, test), = cohort.splits
    plain = _generated(base, Setting("MTN", mtn=True), cohort, tmp_path, 0, test)
    matched = _generated(base, Setting("MTN(hm)", mtn=True, harmonize=True), cohort, tmp_path, 0,
                         test)
    assert plain != matched                                     # two MTN runs, two folders
    assert seen["inputs"][0] == tiny_mscmrseg / "C0"
    hm = seen["inputs"][1]
    assert hm.parent.name == "harmonized" and (hm / "manifest.csv").is_file()
    assert [Path(p).parent for p in seen["sources"][1]] == [hm] * 4     # the matched C0 cases
    assert seen["targets"][0] == seen["targets"][1] == {c.case_id for c in cohort.mtn_target}
    # what G_c learnt from is each C0 image histogram-matched to an LGE image of the MTN
    manifest = pd.read_csv(hm / "manifest.csv")
    refs = [c.image for c in cohort.mtn_target]
    for i, row in enumerate(manifest.itertuples()):
        ref = sitk.ReadImage(str(refs[i % len(refs)]))
        want = histogram_match(sitk.ReadImage(row.source_image), ref)
        assert np.allclose(sitk.GetArrayFromImage(sitk.ReadImage(row.image)),
                           sitk.GetArrayFromImage(want), atol=1e-3)


def test_acdc_experiment_script_end_to_end(tiny_acdc, tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "experiments/acdc.py"), "--data", str(tiny_acdc),
                        "--preset", "tiny", "--n-test", "2", "--only",
                        "MAUNet + SCN, start 42 mm off, 3 refine passes",
                        "--set", "data.spacing=(6.0, 6.0, 10.0)", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    run = tmp_path / "acdc" / "tiny"
    per_case = pd.read_csv(run / "per_case.csv")
    settings = json.loads((run / "settings.json").read_text())
    test_ids = settings["cohort"]["splits"][0]["test"]
    assert sorted(set(per_case["case"])) == sorted(test_ids) and len(test_ids) == 2
    assert not set(test_ids) & set(settings["cohort"]["splits"][0]["train"])
    assert set(per_case["structure"]) >= {"RV", "Myo", "LV"}
    assert "Dangi" in (run / "table.md").read_text(encoding="utf-8")
    # an MTN setting on a single-modality set is a clear one-line error
    with pytest.raises(UserError, match="source-domain"):
        run_experiment("acdc", [Setting("x", mtn=True)], get_preset("tiny"), tmp_path / "x",
                       cohort=acdc_cohort(tiny_acdc, n_test=2))


def test_dev_flag_tests_training_patients_and_names_the_run(tiny_acdc, tmp_path, monkeypatch):
    """``--dev N`` hands the runner a split of the training patients only (no training here)."""
    from cm_trancaf.experiments import command
    seen = {}
    monkeypatch.setattr(command, "run_experiment",
                        lambda name, chosen, base, out, data, seeds, folds, published, cohort,
                        note, catalogue, **k: seen.update(out=out, cohort=cohort))
    argv = ["--data", str(tiny_acdc), "--preset", "tiny", "--n-test", "2", "--out", str(tmp_path)]
    assert command.main("acdc", [Setting("a")], argv + ["--dev", "1"], dataset="acdc") == 0
    (train, dev), = seen["cohort"].splits
    (full_train, test), = acdc_cohort(tiny_acdc, n_test=2).splits
    ids = lambda cases: {c.case_id for c in cases}
    assert len(dev) == 1 and ids(dev) <= ids(full_train) and not (ids(train) | ids(dev)) & ids(test)
    assert seen["out"] == tmp_path / "acdc" / "tiny_dev"
    assert command.main("acdc", [Setting("a")], argv, dataset="acdc") == 0
    assert seen["out"] == tmp_path / "acdc" / "tiny" and ids(seen["cohort"].splits[0][1]) == ids(test)


def test_paper_table_runs_on_the_mscmrseg_pair(tiny_mscmrseg, tmp_path, monkeypatch):
    """``--dataset mscmrseg`` gives a paper table (written for MM-WHS) the bSSFP -> LGE cohort of
    mscmrseg_lge.py, its 3-class labels and MRI preset, and a results folder of its own."""
    from cm_trancaf.experiments import command
    seen = {}
    monkeypatch.setattr(command, "run_experiment",
                        lambda name, chosen, base, out, data, seeds, folds, published, cohort,
                        note, catalogue, **k: seen.update(name=name, base=base, out=out, folds=folds,
                                                     published=published, cohort=cohort, note=note))
    settings = [Setting("r=0.0"), Setting("r=0.5", mtn=True, ratio=0.5)]
    doc = "Table 2: ratio sweep (paper: best at r = 0.5).\n\nmore"
    argv = ["--dataset", "mscmrseg", "--data", str(tiny_mscmrseg), "--n-train", "2",
            "--n-unlabelled", "2", "--out", str(tmp_path)]
    assert command.main("table2_ratio", settings, argv, doc, published={"x": {}}) == 0
    expected = mscmrseg_cohort(tiny_mscmrseg, 2, 2, 0, "C0", "LGE")
    assert [[c.case_id for c in part] for part in seen["cohort"].splits[0]] == \
        [[c.case_id for c in part] for part in expected.splits[0]]
    assert seen["out"] == tmp_path / "table2_ratio_mscmrseg" / "cmr_cpu"
    assert seen["base"].data.labels == "mscmrseg" and seen["base"].data.modality == "mr"
    assert seen["base"] == apply_overrides(get_preset("cmr_cpu"),
                                           ["data.labels=mscmrseg", "data.modality=mr"])
    assert seen["published"] is None and "best at r = 0.5" in seen["note"] and seen["folds"] == 0
    # the default stays MM-WHS (here the phantom), and MS-CMRSeg's options belong to it alone
    assert command.main("table2_ratio", settings, ["--out", str(tmp_path)], doc) == 0
    assert seen["out"] == tmp_path / "table2_ratio" / "demo" and seen["cohort"] is None
    with pytest.raises(SystemExit):
        command.main("table2_ratio", settings, ["--n-train", "3", "--out", str(tmp_path)], doc)


def test_localizer_benchmark_measures_training_patients_only(tiny_acdc, tmp_path):
    """benchmarks/localizer_cv.py: every training patient is measured once per variant, by a
    localizer that did not train on it, and the experiment's test patients are never read."""
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks/localizer_cv.py"), "--dataset",
                        "acdc", "--data", str(tiny_acdc), "--preset", "tiny", "--n-test", "2",
                        "--folds", "3", "--variant", "jitter: localizer.center_jitter_mm=10.0",
                        "--infer", "views: infer.localizer_views=7", "--gamma", "2",
                        "--out", str(tmp_path)], capture_output=True, text=True, timeout=600,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr[-2000:]
    df = pd.read_csv(tmp_path / "localizer_cv.csv")
    (train, test), = acdc_cohort(tiny_acdc, n_test=2).splits
    for _, rows in df.groupby(["variant", "inference"]):
        assert sorted(rows["case"]) == sorted(c.case_id for c in train)
        assert rows.groupby("fold")["case"].count().tolist() == [1, 1, 1]
    assert not set(df["case"]) & {c.case_id for c in test}
    assert np.isfinite(df["error_mm"]).all()
    summary = pd.read_csv(tmp_path / "summary.csv")
    assert list(zip(summary["variant"], summary["inference"])) == [
        ("baseline", "preset"), ("baseline", "views"), ("baseline", "gamma 2"),
        ("jitter", "preset"), ("jitter", "views"), ("jitter", "gamma 2")]
    assert (summary["cases"] == 3).all()


def test_gamma_contrast_keeps_order_and_ends():
    """The localizer benchmark's contrast stress: gamma 1 is the identity, -1 and 1 stay, the
    order of intensities stays, and gamma > 1 darkens the mid-tones."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from localizer_cv import gamma_contrast
    x = np.linspace(-1, 1, 101, dtype=np.float32)
    np.testing.assert_allclose(gamma_contrast(x, 1.0), x, atol=1e-6)
    for g in (0.5, 2.0):
        y = gamma_contrast(x, g)
        assert y[0] == -1 and y[-1] == 1 and (np.diff(y) > 0).all()
    assert gamma_contrast(np.float32(0.0), 2.0) == -0.5


def test_real_folders_list_every_patient_and_split_cleanly(mscmrseg_repaired):
    c = mscmrseg_cohort(mscmrseg_repaired)
    (train, test), = c.splits
    assert len(c.source) == 35 and len(train) == 5 and len(c.mtn_target) == 10 and len(test) == 15
    a = acdc_cohort(need_shared("acdc"))
    (train, test), = a.splits
    assert len(test) == 20 and len(train) == 79


def test_mtn_anatomy_benchmark_never_reads_test_patients(tiny_mscmrseg, tmp_path, monkeypatch,
                                                          capsys):
    """benchmarks/mtn_anatomy.py trains G_c on the experiment's MTN cases (labelled bSSFP ->
    training + "unlabelled" LGE), never on its test patients, and tabulates the anatomy log."""
    import importlib.util
    import cm_trancaf.train.mtn as train_mtn_module
    spec = importlib.util.spec_from_file_location("mtn_anatomy", ROOT / "benchmarks/mtn_anatomy.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    seen = {}

    def fake_train(cfg, data, run, layout, cases, anatomy_run):
        seen.update(steps=cfg.mtn.steps, seed=cfg.run.seed, source=cases[0], target=cases[1],
                    reference=anatomy_run)
        run.mkdir(parents=True)
        (run / "val.csv").write_text("step,val/anatomy_dice\n2,0.25\n4,0.5\n")
        (run / "summary.json").write_text("{}")
    monkeypatch.setattr(train_mtn_module, "train_mtn", fake_train)
    out = tmp_path / "mtn"
    argv = ["--data", str(tiny_mscmrseg), "--reference", str(tmp_path / "ref"), "--preset", "tiny",
            "--set", "mtn.steps=4", "--seed", "1", "--n-train", "2", "--n-unlabelled", "1",
            "--out", str(out)]
    assert bench.main(argv) == 0
    (train, test), = mscmrseg_cohort(tiny_mscmrseg, n_train=2, n_unlabelled=1, seed=0).splits
    ids = lambda cases: {c.case_id for c in cases}
    assert seen["steps"] == 4 and seen["seed"] == 1 and seen["reference"] == tmp_path / "ref"
    assert ids(seen["source"]) == {f"patient{i}_C0" for i in range(1, 5)}
    assert ids(train) < ids(seen["target"]) and not ids(seen["target"]) & ids(test)
    assert len(seen["target"]) == 3
    assert pd.read_csv(out / "anatomy_log.csv")["anatomy_dice"].tolist() == [25.0, 50.0]
    assert "50.0" in capsys.readouterr().out
    assert bench.main(argv) == 2                       # a finished run is not overwritten


def test_slice_thickness_benchmark_coarsens_along_the_stack_axes():
    """benchmarks/slice_thickness.py's ``coarsen``: an oblique stack re-sampled to thicker
    slices keeps its direction and extent, labels keep their codes, and an image constant along
    the slice axis stays that constant (the slice profile only averages along it)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("slice_thickness",
                                                  ROOT / "benchmarks/slice_thickness.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rng = np.random.default_rng(0)
    plane = rng.uniform(0, 100, (40, 40)).astype(np.float32)
    image = sitk.GetImageFromArray(np.repeat(plane[None], 20, axis=0))      # 20 slices of 5 mm
    labels = np.zeros((20, 40, 40), np.uint16)
    labels[5:15, 10:30, 10:30] = 200
    labels[8:12, 15:25, 15:25] = 500
    label = sitk.GetImageFromArray(labels)
    c, s = np.cos(0.4), np.sin(0.4)
    for img in (image, label):
        img.SetSpacing((0.75, 0.75, 5.0))
        img.SetDirection((c, -s, 0, s, c, 0, 0, 0, 1))
        img.SetOrigin((3.0, -2.0, 7.0))
    thick, thick_label = bench.coarsen(image, label, (0.75, 0.75, 10.0))
    assert thick.GetDirection() == image.GetDirection() == thick_label.GetDirection()
    assert thick.GetSpacing() == (0.75, 0.75, 10.0) and thick.GetSize() == (40, 40, 10)
    assert thick_label.GetSize() == thick.GetSize()
    assert set(np.unique(sitk.GetArrayViewFromImage(thick_label))) == {0, 200, 500}
    arr = sitk.GetArrayFromImage(thick)
    assert np.allclose(arr[2:-2], plane[None], atol=1e-3)   # away from the stack's ends


def test_train_time_benchmark_pairs_settings_within_a_round():
    """benchmarks/train_time.py's ``ratios``: each setting is compared with the first setting of
    the same round, so a drift of the machine's speed between rounds (here 1x, 2x, 3x) cancels;
    the ratio is the median over rounds, its range the min and max."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("train_time", ROOT / "benchmarks/train_time.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    df = pd.DataFrame({"setting": ["preset", "cand"] * 3, "round": [0, 0, 1, 1, 2, 2],
                       "s_per_step": [1.0, 1.05, 2.0, 2.3, 3.0, 3.3]})
    out = bench.ratios(df).set_index("setting")
    assert list(out.index) == ["preset", "cand"]
    assert out.loc["preset", "ratio"] == 1.0 and out.loc["preset", "rounds"] == 3
    assert np.isclose(out.loc["cand", "ratio"], 1.1)
    assert np.isclose(out.loc["cand", "ratio_min"], 1.05)
    assert np.isclose(out.loc["cand", "ratio_max"], 1.15)
    assert np.isclose(out.loc["cand", "s_per_step"], 2.3)
