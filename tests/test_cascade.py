"""train-seg -> predict -> evaluate on the tiny phantom: geometry, restore, loss falls, CLI."""
import dataclasses
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from cm_trancaf.cli import main
from cm_trancaf.config import apply_overrides, get_preset
from cm_trancaf.data.io import Geometry, keep_locale
from cm_trancaf.data.preprocess import crop, paste
from cm_trancaf.inference import Cascade, Ensemble
from cm_trancaf.predict import predict_files
from cm_trancaf.train.seg import train_segmentation
from cm_trancaf.utils import UserError


def test_run_folder_contract(seg_run):
    for stage in ("localizer", "maunet", "scn"):
        assert (seg_run / stage / "ckpt" / "last" / "checkpoint").exists()
        assert (seg_run / stage / "log.csv").exists() and (seg_run / stage / "summary.json").exists()
    assert (seg_run / "config.json").exists() and (seg_run / "split.json").exists()


def test_predict_writes_on_the_input_grid_and_restores_identically(seg_run, tiny_phantom, tmp_path):
    files = predict_files(seg_run, tiny_phantom / "ct_test", tmp_path / "a", iso1mm=True)
    assert len(files) == 2
    for f in files:
        pred = sitk.ReadImage(str(f))
        src = sitk.ReadImage(str(tiny_phantom / "ct_test" / f.name.replace("_label", "_image")))
        assert Geometry.of(pred) == Geometry.of(src)
        assert set(np.unique(sitk.GetArrayFromImage(pred))) <= {0, 205, 420, 500, 550, 600, 820, 850}
    assert (tmp_path / "a" / "ct_test_2001_label_1mm.nii.gz").exists()
    # a cascade restored from disk a second time gives the same prediction
    again = predict_files(seg_run, tiny_phantom / "ct_test", tmp_path / "b")
    for a, b in zip(files, again):
        np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(a))),
                                      sitk.GetArrayFromImage(sitk.ReadImage(str(b))))


def test_heart_partly_outside_the_field_of_view(seg_run, tiny_phantom, tmp_path):
    src = sitk.ReadImage(str(tiny_phantom / "ct_test" / "ct_test_2001_image.nii.gz"))
    n = src.GetSize()
    cut = src[: n[0] // 2, :, :]                      # half of the heart is gone
    sitk.WriteImage(cut, str(tmp_path / "cut_image.nii.gz"))
    cascade = Cascade.load(seg_run)
    out = cascade.predict_image(cut)
    assert Geometry.of(out) == Geometry.of(cut)


@pytest.mark.parametrize("deep", [0, 2])       # 2: deep supervision, the loss of 3 levels
def test_maunet_loss_falls_on_a_phantom(tiny_phantom, tmp_path, deep):
    cfg = apply_overrides(get_preset("tiny"), ["train.steps=30", "run.log_every=1",
                                               "train.val_every=100", "train.lr=0.003",
                                               f"maunet.deep_supervision={deep}"])
    train_segmentation(cfg, tiny_phantom, tmp_path, stages=("maunet",))
    import pandas as pd
    log = pd.read_csv(tmp_path / "maunet" / "log.csv")["loss/dice_focal"].to_numpy()
    assert log[-5:].mean() < log[:5].mean() - 0.05, log


def test_cli_end_to_end_and_bad_inputs(seg_run, tiny_phantom, tmp_path, capsys):
    cli = [sys.executable, "-m", "cm_trancaf.cli"]
    r = subprocess.run(cli + ["predict", "--run", str(seg_run), "--input",
                              str(tiny_phantom / "ct_test"), "--out", str(tmp_path / "p")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run(cli + ["evaluate", "--pred", str(tmp_path / "p"), "--gt",
                              str(tiny_phantom / "ct_test"), "--out", str(tmp_path / "r.csv")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "WHS_generalised" in r.stdout and (tmp_path / "r_summary.csv").exists()
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"\x1f\x8b garbage")
    for args in (["predict", "--run", str(seg_run), "--input", str(bad), "--out", str(tmp_path / "q")],
                 ["predict", "--run", str(tmp_path), "--input", str(bad), "--out", str(tmp_path / "q")],
                 # an ensemble with a folder that is not a run
                 ["predict", "--run", str(seg_run), "--run", str(tmp_path), "--input",
                  str(tiny_phantom / "ct_test"), "--out", str(tmp_path / "q")],
                 ["evaluate", "--pred", str(tmp_path / "none"), "--gt", str(tmp_path)],
                 ["train-seg", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "s")],
                 ["train-seg", "--data", str(tiny_phantom), "--out", str(tmp_path / "s"),
                  "--set", "train.nope=1"],
                 # only inference options can change at prediction time
                 ["predict", "--run", str(seg_run), "--input", str(tiny_phantom / "ct_test"),
                  "--out", str(tmp_path / "q"), "--set", "data.spacing=(1.0, 1.0, 1.0)"],
                 ["predict", "--run", str(seg_run), "--input", str(tiny_phantom / "ct_test"),
                  "--out", str(tmp_path / "q"), "--set", "infer.localizer_views=3"],
                 ["predict", "--run", str(seg_run), "--input", str(tiny_phantom / "ct_test"),
                  "--out", str(tmp_path / "q"), "--set", "infer.extend_tiles=2",
                  "--set", "infer.extend_step_mm=0.0"]):
        # in this process (the commands above ran as a user runs them): one line, exit code 2
        rc, err = main(args), capsys.readouterr().err
        assert rc == 2, (args, err)
        assert err.count("error:") == 1 and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "q").exists() or not any((tmp_path / "q").iterdir())


def test_exported_savedmodel_predicts_the_same_labels(seg_run, tiny_phantom, tmp_path):
    import tensorflow as tf
    from cm_trancaf.export import export_cascade
    out = export_cascade(seg_run, tmp_path / "export")
    # plain TensorFlow, no cm_trancaf: the endpoints exist with the documented shapes
    loaded = tf.saved_model.load(str(out))
    cfg = get_preset("tiny")
    probs = loaded.segment(tf.zeros((2, *cfg.data.roi_size, 1)))
    assert probs.shape == (2, *cfg.data.roi_size, 8)
    np.testing.assert_allclose(tf.reduce_sum(probs, -1).numpy(), 1.0, atol=1e-5)
    assert loaded.localize(tf.zeros((1, *cfg.localizer.size, 1))).shape == (1, *cfg.localizer.size, 1)
    a = predict_files(seg_run, tiny_phantom / "ct_test", tmp_path / "keras")
    b = predict_files(out, tiny_phantom / "ct_test", tmp_path / "saved")
    for fa, fb in zip(a, b):
        np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(fa))),
                                      sitk.GetArrayFromImage(sitk.ReadImage(str(fb))))
    # never overwrites: a second export to the same folder is a user error
    with pytest.raises(UserError, match="already exists"):
        export_cascade(seg_run, out)


def test_profile_stages_xla_and_bf16_prediction(seg_run, tiny_phantom, tmp_path, capsys):
    timings = []
    a = predict_files(seg_run, tiny_phantom / "ct_test", tmp_path / "f32", profile=True,
                      timings=timings)
    out = capsys.readouterr().out
    stages = ("read", "preprocess", "localize", "crop", "maunet", "scn", "paste", "paste_back",
              "write")
    for stage in stages + ("total",):
        assert f"{stage} " in out, (stage, out)
    # the same numbers come back to a caller (benchmarks/speed.py), one entry per case, in order
    assert [cid for cid, _ in timings] == [p.name.replace("_label.nii.gz", "") for p in a]
    for cid, t in timings:
        assert set(t) == set(stages) and all(v >= 0 for v in t.values())
        assert f"{cid}: " + ", ".join(f"{k} {t[k]:.2f}s" for k in t) in out
    # the networks under XLA and bfloat16 against float32, on the same ROI (this cascade is
    # barely trained: near-uniform probabilities, so labels would flip on rounding alone)
    from cm_trancaf.data.io import read_image
    from cm_trancaf.data.preprocess import prepare
    cfg = get_preset("tiny")
    image = read_image(tiny_phantom / "ct_test" / "ct_test_2001_image.nii.gz")
    prep = prepare(image, None, cfg.data, "ct", 8)
    center = np.asarray(prep.image.shape) // 2
    ref = Cascade.load(seg_run).segment(prep, center)[1]
    for kw, tol in (({"jit_compile": True}, 1e-4), ({"precision": "mixed_bfloat16"}, 0.05)):
        probs = Cascade.load(seg_run, **kw).segment(prep, center)[1]
        assert probs.dtype == np.float32 and np.abs(probs - ref).max() < tol, kw


def test_folder_prediction_overlapping_io_stops_at_a_bad_file(seg_run, tiny_phantom, tmp_path):
    import shutil
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(tiny_phantom / "ct_test" / "ct_test_2001_image.nii.gz", folder / "a_image.nii.gz")
    (folder / "b_image.nii.gz").write_bytes(b"\x1f\x8b truncated")
    shutil.copy(tiny_phantom / "ct_test" / "ct_test_2002_image.nii.gz", folder / "c_image.nii.gz")
    with pytest.raises(UserError, match="b_image"):
        predict_files(seg_run, folder, tmp_path / "out")
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == ["a_label.nii.gz"]                  # the case before is complete, no temp
    sitk.ReadImage(str(tmp_path / "out" / "a_label.nii.gz"))


def test_every_labelled_case_trains_unless_validation_is_asked(tiny_phantom, tmp_path):
    import json
    from cm_trancaf.data.datasets import mmwhs_cases
    ids = [c.case_id for c in mmwhs_cases(tiny_phantom, "ct", "train")]
    cfg = apply_overrides(get_preset("tiny"), ["train_localizer.steps=2"])
    split = lambda run: json.loads((run / "split.json").read_text())
    train_segmentation(cfg, tiny_phantom, tmp_path / "all", stages=("localizer",))
    assert split(tmp_path / "all")["train"] == ids and split(tmp_path / "all")["val"] == []
    assert not (tmp_path / "all" / "localizer" / "val.csv").exists()   # the last checkpoint is used
    # named validation cases are held out, and validated on
    train_segmentation(cfg, tiny_phantom, tmp_path / "named", stages=("localizer",),
                       val_ids=[ids[0]])
    assert split(tmp_path / "named")["train"] == ids[1:]
    assert split(tmp_path / "named")["val"] == [ids[0]]
    assert (tmp_path / "named" / "localizer" / "val.csv").exists()
    # a fraction, as before
    cfg_frac = apply_overrides(cfg, ["data.val_fraction=0.2"])
    train_segmentation(cfg_frac, tiny_phantom, tmp_path / "frac", stages=("localizer",))
    assert split(tmp_path / "frac")["val"] == ids[-1:]
    with pytest.raises(UserError, match="not among the training cases"):
        train_segmentation(cfg, tiny_phantom, tmp_path / "bad", stages=("localizer",),
                           val_ids=["ct_train_9999"])
    assert not (tmp_path / "bad").exists()                  # nothing written for a bad request


def test_known_label_quirk_trains_with_one_warning_unknown_code_stops_first(tiny_phantom,
                                                                          tmp_path, capfd):
    import shutil
    from cm_trancaf.data.datasets import LABEL_SETS, load_case, mmwhs_cases
    data = tmp_path / "data"
    shutil.copytree(tiny_phantom, data)
    case = mmwhs_cases(data, "ct", "train")[0]
    label = sitk.ReadImage(str(case.label))
    arr = sitk.GetArrayFromImage(label)
    quirk = arr == 420
    assert quirk.sum() > 10
    arr[quirk] = 421                                      # MM-WHS mr_train_1010's left atrium
    fixed = sitk.GetImageFromArray(arr)
    fixed.CopyInformation(label)
    sitk.WriteImage(fixed, str(case.label))
    capfd.readouterr()
    _, classes = load_case(case, LABEL_SETS["mmwhs"])
    assert np.all(sitk.GetArrayFromImage(classes)[quirk] == 2)        # LA, class 2
    warning = [l for l in capfd.readouterr().err.splitlines() if "warning" in l]
    assert len(warning) == 1 and str(case.label) in warning[0] and "421" in warning[0]
    cfg = apply_overrides(get_preset("tiny"), ["train_localizer.steps=2"])
    train_segmentation(cfg, data, tmp_path / "run", stages=("localizer",))
    assert (tmp_path / "run" / "localizer" / "summary.json").exists()
    # an unknown code: one error line naming the file, before any run folder exists
    arr[quirk] = 999
    bad = sitk.GetImageFromArray(arr)
    bad.CopyInformation(label)
    sitk.WriteImage(bad, str(case.label))
    capfd.readouterr()
    rc = main(["train-seg", "--data", str(data), "--out", str(tmp_path / "run2"), "--preset", "tiny"])
    err = [l for l in capfd.readouterr().err.splitlines() if "error" in l]
    assert rc == 2 and len(err) == 1 and str(case.label) in err[0] and "999" in err[0]
    assert not (tmp_path / "run2").exists()


def _write_dicom_series(image: sitk.Image, folder) -> None:
    """One int16 CT slice file per z, with the geometry tags a scanner writes (DICOM PS3.3
    C.7.6.2: image position and orientation, pixel spacing)."""
    folder.mkdir(parents=True)
    direction = image.GetDirection()
    series = "1.2.826.0.1.3680043.2.1125.1.1"
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    with keep_locale():                                      # GDCM's writer sets the "C" locale
        _write_slices(image, folder, writer, direction, series)


def _write_slices(image, folder, writer, direction, series):
    for z in range(image.GetDepth()):
        s = image[:, :, z]
        pos = image.TransformIndexToPhysicalPoint((0, 0, z))
        tags = {"0008|0060": "CT", "0020|000d": "1.2.826.0.1.3680043.2.1125.1", "0020|000e": series,
                "0008|0018": f"{series}.{z + 1}", "0020|0013": str(z + 1),
                "0020|0032": "\\".join(f"{p:.6f}" for p in pos),
                "0020|0037": "\\".join(f"{d:.6f}" for d in (direction[0], direction[3],
                                                            direction[6], direction[1],
                                                            direction[4], direction[7])),
                "0028|0030": "\\".join(f"{v:.6f}" for v in image.GetSpacing()[1::-1]),
                "0018|0050": f"{image.GetSpacing()[2]:.6f}"}
        for k, v in tags.items():
            s.SetMetaData(k, v)
        writer.SetFileName(str(folder / f"slice{z:03d}.dcm"))
        writer.Execute(s)


def test_dicom_series_predicts_the_labels_of_its_nifti(seg_run, tiny_phantom, tmp_path):
    import locale
    encoding = locale.getpreferredencoding(False)
    src = sitk.ReadImage(str(tiny_phantom / "ct_test" / "ct_test_2001_image.nii.gz"))
    ct = sitk.GetImageFromArray(np.round(sitk.GetArrayFromImage(src)).astype(np.int16))
    ct.CopyInformation(src)                                    # int16: what a scanner stores
    ct.SetDirection((1, 0, 0, 0, 1, 0, 0, 0, 1))
    (tmp_path / "nifti").mkdir()
    sitk.WriteImage(ct, str(tmp_path / "nifti" / "case7_image.nii.gz"))
    _write_dicom_series(ct, tmp_path / "dicom" / "case7")
    a = predict_files(seg_run, tmp_path / "nifti", tmp_path / "pred_nifti")
    b = predict_files(seg_run, tmp_path / "dicom", tmp_path / "pred_dicom")   # a folder of series
    assert [p.name for p in a] == [p.name for p in b] == ["case7_label.nii.gz"]
    la, lb = (sitk.ReadImage(str(p[0])) for p in (a, b))
    ga, gb = Geometry.of(la), Geometry.of(lb)
    assert ga.size == gb.size and np.allclose(ga.origin, gb.origin, atol=1e-4)
    assert np.allclose(ga.spacing, gb.spacing, atol=1e-5) and ga.direction == gb.direction
    arr = sitk.GetArrayFromImage(la)
    assert (arr > 0).sum() > 100                                  # a heart was found
    np.testing.assert_array_equal(arr, sitk.GetArrayFromImage(lb))
    import locale
    assert locale.getpreferredencoding(False) == encoding    # reading DICOM kept the locale
    # a folder with two series is one error line naming it
    _write_dicom_series(ct[:, :, :5], tmp_path / "two")
    other = tmp_path / "two" / "slice000.dcm"
    img = sitk.ReadImage(str(other))
    img.SetMetaData("0020|000e", "1.2.826.0.1.3680043.2.1125.9")
    w = sitk.ImageFileWriter()
    w.KeepOriginalImageUIDOn()
    w.SetFileName(str(other))
    with keep_locale():
        w.Execute(img)
    with pytest.raises(UserError, match="2 DICOM series"):
        predict_files(seg_run, tmp_path / "two", tmp_path / "pred_two")


def test_heart_candidates_recover_a_heart_the_highest_peak_misses():
    """A localizer whose highest peak is a decoy at the volume centre and whose second peak is
    the heart: one candidate segments the decoy, two candidates keep the ROI with the heart."""
    from dataclasses import replace
    from scipy import ndimage
    from cm_trancaf.data.datasets import LABEL_SETS
    from cm_trancaf.data.preprocess import index_to_mm, prepare
    from cm_trancaf.models.localizer import heatmap_peaks

    arr = np.full((64, 64, 64), -1000.0, np.float32)
    zz, yy, xx = np.indices(arr.shape)
    heart = (zz - 12) ** 2 + (yy - 12) ** 2 + (xx - 12) ** 2 <= 9
    arr[heart] = 1000.0
    image = sitk.GetImageFromArray(arr)
    image.SetSpacing((6.0, 6.0, 6.0))
    cfg = get_preset("tiny")
    prep = prepare(image, None, cfg.data, "ct", 8)

    def localizer(x, training=False):                 # decoy 1.0 at the centre, heart 0.5
        x = np.asarray(x)[0, ..., 0]
        centre = np.zeros_like(x)
        centre[tuple(np.array(x.shape) // 2)] = 1.0
        hm = ndimage.gaussian_filter(centre, 1.0) / ndimage.gaussian_filter(centre, 1.0).max()
        bright = ndimage.gaussian_filter((x > 0).astype(np.float32), 1.0)
        hm = hm + 0.5 * bright / max(bright.max(), 1e-6)
        return hm[None, ..., None]

    def maunet(x, training=False):                    # foreground where the image is bright
        p = 1.0 / (1.0 + np.exp(-10.0 * np.asarray(x)[..., 0]))
        out = np.zeros(p.shape + (8,), np.float32)
        out[..., 0], out[..., 1] = 1.0 - p, p
        return out

    heart_mm = index_to_mm(prep.grid, np.argwhere(heart).mean(0))
    distance = {}
    for k in (1, 2):
        c = Cascade(replace(cfg, infer=replace(cfg.infer, candidates=k)), LABEL_SETS["mmwhs"],
                    localizer, maunet, None)
        trace = {}
        classes, _, _ = c.segment(prep, trace=trace)
        distance[k] = np.linalg.norm(np.asarray(trace["roi_center_mm"]) - heart_mm)
        found = (classes > 0)[heart].mean()
        assert (found > 0.9) if k == 2 else (found == 0.0)
    assert distance[1] > 150 and distance[2] < 6.0
    # a heart at the highest peak stays chosen, even beside a bigger bright thing elsewhere (the
    # fallback looks at other peaks only when the first ROI holds less than candidate_min_ml)
    arr2 = np.where((np.abs(zz - 32) <= 6) & (np.abs(yy - 32) <= 6) & (np.abs(xx - 32) <= 6),
                    1000.0, -1000.0).astype(np.float32)
    arr2[heart] = 1000.0
    image2 = sitk.GetImageFromArray(arr2)
    image2.SetSpacing((6.0, 6.0, 6.0))
    prep2 = prepare(image2, None, cfg.data, "ct", 8)
    c = Cascade(replace(cfg, infer=replace(cfg.infer, candidates=2)), LABEL_SETS["mmwhs"],
                localizer, maunet, None)
    trace = {}
    c.segment(prep2, trace=trace)
    assert trace["candidate"] == 0
    # the peaks themselves: highest first, suppressed within the separation
    hm = np.zeros((16, 16, 16))
    hm[8, 8, 8], hm[2, 2, 2], hm[8, 8, 9] = 1.0, 0.5, 0.9
    peaks = heatmap_peaks(hm, 3, min_distance=2.5, radius=0)
    np.testing.assert_allclose(peaks[:2], [[8, 8, 8], [2, 2, 2]])


def test_refine_passes_recover_a_heart_the_first_roi_cuts():
    """``infer.start_shift_mm`` moves the localizer's centre by exactly that many mm (a stress
    test); from a start that leaves half a heart outside the ROI, each re-centring pass brings the
    ROI closer to the heart until it holds all of it, and no pass runs once the ROI stays put."""
    from dataclasses import replace
    from scipy import ndimage
    from cm_trancaf.data.datasets import LABEL_SETS
    from cm_trancaf.data.preprocess import index_to_mm, prepare

    arr = np.full((64, 64, 64), -1000.0, np.float32)
    zz, yy, xx = np.indices(arr.shape)
    heart = (zz - 32) ** 2 + (yy - 30) ** 2 + (xx - 34) ** 2 <= 64   # radius 8 voxels, 48 mm
    arr[heart] = 1000.0
    image = sitk.GetImageFromArray(arr)
    image.SetSpacing((6.0, 6.0, 6.0))
    cfg = get_preset("tiny")                                         # ROI 32^3 voxels of 6 mm
    prep = prepare(image, None, cfg.data, "ct", 8)

    def localizer(x, training=False):                                # peak on the bright heart
        x = np.asarray(x)[0, ..., 0]
        return ndimage.gaussian_filter((x > 0).astype(np.float32), 1.0)[None, ..., None]

    def maunet(x, training=False):                                   # foreground where bright
        p = 1.0 / (1.0 + np.exp(-10.0 * np.asarray(x)[..., 0]))
        out = np.zeros(p.shape + (8,), np.float32)
        out[..., 0], out[..., 1] = 1.0 - p, p
        return out

    heart_mm = index_to_mm(prep.grid, np.argwhere(heart).mean(0))
    shift = (84.0, -84.0, 0.0)                                       # 14 voxels in x and y

    def run(passes, start_shift):
        infer = replace(cfg.infer, refine_passes=passes, start_shift_mm=start_shift)
        c = Cascade(replace(cfg, infer=infer), LABEL_SETS["mmwhs"], localizer, maunet, None)
        trace = {}
        classes, _, _ = c.segment(prep, trace=trace)
        return trace, (classes > 0)[heart].mean()

    unshifted, _ = run(0, (0.0, 0.0, 0.0))
    traces, found = zip(*[run(p, shift) for p in (0, 1, 2, 5)])
    for t in traces:                                                 # the start moved exactly
        np.testing.assert_allclose(np.asarray(t["localizer_mm"]) - unshifted["localizer_mm"],
                                   shift, atol=1e-6)
    distance = [np.linalg.norm(np.asarray(t["roi_center_mm"]) - heart_mm) for t in traces]
    assert distance[0] > 100.0 and found[0] < 0.6                   # half the heart cut off
    assert distance[0] > distance[1] > distance[2] and distance[2] < 6.0 and found[2] == 1.0
    assert traces[3]["passes"] < 6 and distance[3] < 6.0            # stops once the ROI stays put


@pytest.mark.parametrize("views", [1, 7])
def test_each_localizer_view_maps_its_peak_back_to_the_same_heart(views):
    """A localizer that returns its input as the heatmap sees a bright blob (the "heart") in
    every view; each view's peak, mapped back through that view's own centre and zoom, lands on
    the blob (within half a coarse voxel), and so does the centre ``locate`` returns."""
    from cm_trancaf.data.preprocess import Prepared
    from cm_trancaf.inference import locate, view_peaks
    spacing = (2.0, 2.0, 4.0)                                      # x y z mm
    shape = (40, 90, 100)                                          # D H W
    heart = np.array([23.0, 55.0, 38.0])                           # D H W index, off-centre
    mm = (np.indices(shape).T - heart).T * np.array(spacing[::-1])[:, None, None, None]
    image = (2 * np.exp(-(mm ** 2).sum(0) / (2 * 20.0 ** 2)) - 1).astype(np.float32)
    geo = Geometry(shape[::-1], spacing, (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    case = Prepared(image, None, geo, geo, "blob")
    cfg = apply_overrides(get_preset("tiny"), ["localizer.size=(32, 32, 32)",
                                               "localizer.spacing_mm=8.0",
                                               f"infer.localizer_views={views}"])
    identity = lambda x, training=False: x
    peaks = view_peaks(identity, case, cfg, views)
    assert len(peaks) == views
    half_voxel = 4.0 / np.array(spacing[::-1])                    # 4 mm in index units
    for p in peaks:
        assert np.all(np.abs(p - heart) <= half_voxel), (p, heart)
    assert np.all(np.abs(locate(identity, case, cfg) - heart) <= half_voxel)


def test_a_stack_shorter_than_the_roi_keeps_every_slice_in_the_roi(seg_run, tiny_phantom):
    """A volume with fewer working slices than the ROI, heart centre on its last slice: with
    ``infer.cover_short_axes`` (default) the ROI holds slices 0..n-1; centred as before, it
    starts past slice 0, which then cannot be segmented."""
    from cm_trancaf.data.preprocess import prepare
    src = sitk.ReadImage(str(tiny_phantom / "ct_test" / "ct_test_2001_image.nii.gz"))
    short = src[:, :, 7:43]                                   # 36 x 4 mm: 24 working slices
    for cover in (True, False):
        cascade = Cascade.load(seg_run, infer=[f"infer.cover_short_axes={cover}",
                                               "infer.refine_passes=0"])
        prep = prepare(short, None, cascade.cfg.data, "ct", cascade.labelset.num_classes)
        n, r = prep.image.shape[0], cascade.cfg.data.roi_size[0]
        assert n < r
        centre = np.array([n - 1, prep.image.shape[1] / 2, prep.image.shape[2] / 2])
        _, _, start = cascade.segment(prep, center=centre)
        if cover:
            assert n - r <= start[0] <= 0
        else:
            assert start[0] == n - 1 - r // 2 > 0


def test_prediction_time_inference_options(seg_run, tiny_phantom):
    """``infer`` overrides reach the loaded cascade; the networks and the rest stay the run's."""
    base = Cascade.load(seg_run)
    seven = Cascade.load(seg_run, infer=["infer.localizer_views=7", "infer.refine_passes=0"])
    assert (seven.cfg.infer.localizer_views, seven.cfg.infer.refine_passes) == (7, 0)
    assert seven.cfg.data == base.cfg.data and seven.cfg.maunet == base.cfg.maunet


def test_test_time_shifts_align_every_shifted_roi_with_the_first():
    """``infer.shift_views=7``: a segmenter that is a voxelwise function of the image gives the
    same probabilities at a voxel from every ROI holding it, so the average equals the single
    ROI exactly (a misaligned shift would blur it); one that depends on the position inside the
    ROI is smoothed (the average differs)."""
    from types import SimpleNamespace
    from cm_trancaf.inference import shifted_average

    rng = np.random.default_rng(0)
    image = rng.normal(size=(20, 40, 40)).astype(np.float32)
    prep = SimpleNamespace(image=image, grid=SimpleNamespace(spacing=(2.0, 2.0, 6.0)))  # x y z

    def voxelwise(x, training=False):
        p = 1.0 / (1.0 + np.exp(-3.0 * np.asarray(x)))
        return np.concatenate([1.0 - p, p], -1)

    def positional(x, training=False):
        w = np.arange(x.shape[3])[None, None, None, :, None] * np.ones_like(x)
        wave = 0.5 + 0.5 * np.cos(2 * np.pi * w / 8)               # period 8 voxels along W
        return np.concatenate([1.0 - wave, wave], -1)

    start = np.array([4, 8, 10])
    roi, _ = crop(image, start + np.array([8, 16, 16]), (16, 32, 32), fill=-1.0)
    for net, same in ((voxelwise, True), (positional, False)):
        probs = np.asarray(net(roi[None, ..., None]))[0]
        avg = shifted_average(net, None, prep, start, probs, shift_mm=8.0)
        assert avg.shape == probs.shape
        np.testing.assert_allclose(avg.sum(-1), 1.0, rtol=1e-5)
        if same:
            np.testing.assert_allclose(avg, probs, rtol=1e-5, atol=1e-6)
        else:
            assert np.abs(avg - probs).max() > 0.05


def test_extension_tiles_follow_a_heart_longer_than_the_roi():
    """``infer.extend_tiles``: with a segmenter that is a voxelwise function of the image, a
    heart (a bright bar) 40 slices long seen through a 16-slice ROI is recovered whole (every
    voxel of the bar, nothing else) once tiles follow it across the ROI's faces; at 0 tiles, or
    with a heart inside the ROI, the ROI comes back untouched. A tile never leaves the volume
    with ``inside``, and the number of tiles is capped."""
    from types import SimpleNamespace
    from cm_trancaf.inference import extend_tiles

    image = np.full((48, 40, 40), -1.0, np.float32)
    bar = (slice(4, 44), slice(14, 26), slice(12, 28))
    image[bar] = 1.0
    prep = SimpleNamespace(image=image, grid=SimpleNamespace(spacing=(1.0, 1.0, 1.0)))

    def voxelwise(x, training=False):
        p = 1.0 / (1.0 + np.exp(-6.0 * np.asarray(x)))
        return np.concatenate([1.0 - p, p], -1)

    size = np.array([16, 32, 32])
    roi, start = crop(image, (24, 20, 20), tuple(size), fill=-1.0)
    probs = np.asarray(voxelwise(roi[None, ..., None]))[0]
    same_start, same = extend_tiles(voxelwise, None, prep, start, probs, 0, 6.0)
    assert same is probs and np.array_equal(same_start, start)
    for inside in (False, True):
        lo, merged = extend_tiles(voxelwise, None, prep, start, probs, 8, 6.0, inside=inside)
        np.testing.assert_allclose(merged.sum(-1), 1.0, rtol=1e-5)
        whole = np.zeros(image.shape, bool)
        box = tuple(slice(max(a, 0), min(a + s, n))
                    for a, s, n in zip(lo, merged.shape[:3], image.shape))
        whole[box] = (np.argmax(merged, -1) > 0)[tuple(slice(b.start - a, b.stop - a)
                                                       for b, a in zip(box, lo))]
        np.testing.assert_array_equal(whole, image > 0)        # the whole bar, nothing else
        assert merged.shape[0] > size[0] and merged.shape[1:3] == tuple(size[1:])
        if inside:
            assert lo[0] >= 0 and lo[0] + merged.shape[0] <= image.shape[0]
    _, capped = extend_tiles(voxelwise, None, prep, start, probs, 1, 6.0)
    assert capped.shape[0] == size[0] + 6                      # one tile: a 6 mm step more
    _, far = extend_tiles(voxelwise, None, prep, start, probs, 1, 100.0)
    assert far.shape[0] == size[0] + size[0] // 2              # the step is at most half an ROI
    small = np.full_like(image, -1.0)
    small[20:28, 14:26, 12:28] = 1.0                           # a heart inside the ROI
    roi, start = crop(small, (24, 20, 20), tuple(size), fill=-1.0)
    probs = np.asarray(voxelwise(roi[None, ..., None]))[0]
    prep = SimpleNamespace(image=small, grid=prep.grid)
    same_start, same = extend_tiles(voxelwise, None, prep, start, probs, 8, 6.0)
    assert same is probs and np.array_equal(same_start, start)


def test_largest_component_keeps_each_structure_in_one_piece():
    from cm_trancaf.inference import largest_components

    probs = np.zeros((12, 12, 12, 3), np.float32)
    probs[..., 0] = 1.0
    big, small, other = (slice(1, 6),) * 3, (slice(9, 11),) * 3, (slice(1, 4), slice(8, 11),
                                                                  slice(8, 11))
    probs[big] = [0.1, 0.9, 0.0]
    probs[small] = [0.0, 0.7, 0.3]                       # class 1 apart from its main part
    probs[other] = [0.2, 0.0, 0.8]                       # class 2, one piece
    out = largest_components(probs)
    classes = np.argmax(out, -1)
    assert (classes[big] == 1).all() and (classes[small] == 0).all() and (classes[other] == 2).all()
    np.testing.assert_allclose(out.sum(-1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(np.delete(out, 0, -1)[classes > 0],
                                  np.delete(probs, 0, -1)[classes > 0])   # the kept parts as were
    np.testing.assert_array_equal(largest_components(out), out)      # idempotent


def test_scn_input_noise_flips_blobs_of_confident_voxels_and_is_seeded():
    """scn.input_noise: errors in blobs (neighbours of a flipped voxel flip far more often than
    voxels at large), more with a larger sigma, none at sigma 0; the same seed, the same noise."""
    import tensorflow as tf
    from cm_trancaf.train.seg import corrupt_probs
    scn = get_preset("tiny").scn
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, size=(1, 4, 4, 4)).repeat(8, 1).repeat(8, 2).repeat(8, 3)
    probs = tf.one_hot(labels, 4, dtype=tf.float32)                   # (1, 32, 32, 32, 4)
    seed = tf.constant([0, 5], tf.int64)
    flipped = {}
    for sigma in (0.0, 1.5, 3.0):
        cfg = dataclasses.replace(scn, input_noise=sigma, input_noise_cell=8)
        out = corrupt_probs(probs, cfg, seed).numpy()
        np.testing.assert_allclose(out.sum(-1), 1.0, atol=1e-5)
        np.testing.assert_array_equal(out, corrupt_probs(probs, cfg, seed).numpy())
        flipped[sigma] = out.argmax(-1) != labels
    assert not flipped[0.0].any()
    assert 0 < flipped[1.5].mean() < flipped[3.0].mean() < 0.9
    f = flipped[3.0][0]
    neighbour_flipped = (f[1:] & f[:-1]).sum() / f[:-1].sum()          # P(next flipped | flipped)
    assert neighbour_flipped > 2 * f.mean()
    other = corrupt_probs(probs, dataclasses.replace(scn, input_noise=3.0),
                          tf.constant([0, 6], tf.int64)).numpy()
    other_flipped = other.argmax(-1) != labels
    assert other_flipped.any() and not np.array_equal(other_flipped, f[None])


def test_scn_retrained_with_input_noise_on_a_trained_maunet(seg_run, tiny_phantom, tmp_path):
    """Only the SCN stage trains (the MAUNet's checkpoint stays bit for bit) and logs the share
    of its input voxels the noise flipped."""
    import shutil
    import pandas as pd
    run = tmp_path / "run"
    shutil.copytree(seg_run, run)
    shutil.rmtree(run / "scn")                                        # (else it resumes: done)
    maunet_files = {p: p.read_bytes() for p in (run / "maunet" / "ckpt").rglob("*") if p.is_file()}
    cfg = apply_overrides(get_preset("tiny"), ["scn.input_noise=2.0", "scn.input_noise_cell=4"])
    train_segmentation(cfg, tiny_phantom, run, stages=("scn",))
    assert {p: p.read_bytes() for p in maunet_files} == maunet_files
    log = pd.read_csv(run / "scn" / "log.csv")
    assert "input/flipped" in log.columns and (log["input/flipped"] > 0).all()


def test_an_ensemble_of_one_run_twice_predicts_that_run_exactly(seg_run, tiny_phantom):
    """The mean of two equal probability maps is that map: the same labels and probabilities.
    TensorFlow's CPU kernels differ from call to call in the last bit (3e-8 here), and this tiny
    cascade's probabilities are nearly uniform, so a voxel whose two best classes tie within that
    may flip: the labels must agree at 99.9 % of the voxels, the probabilities within 1e-6."""
    src = sitk.ReadImage(str(tiny_phantom / "ct_test" / "ct_test_2001_image.nii.gz"))
    one_labels, one_probs = Cascade.load(seg_run).predict_image(src, with_probs=True)
    ensemble = Ensemble.load([seg_run, seg_run])
    assert isinstance(ensemble, Ensemble) and len(ensemble.members) == 2
    labels, probs = ensemble.predict_image(src, with_probs=True)
    same = sitk.GetArrayFromImage(labels) == sitk.GetArrayFromImage(one_labels)
    assert same.mean() >= 0.999, same.mean()
    np.testing.assert_allclose(sitk.GetArrayFromImage(probs), sitk.GetArrayFromImage(one_probs),
                               atol=1e-6)
    assert probs.GetOrigin() == one_probs.GetOrigin()
    assert not isinstance(Ensemble.load([seg_run]), Ensemble)     # one run: its own cascade


class _Member:
    """A member that returns fixed ROI probabilities at a fixed start (working-grid index)."""
    def __init__(self, probs, start):
        self.probs, self.start = probs, np.asarray(start)

    def segment(self, prep, center=None, profile=None, trace=None):
        trace.update({"passes": 1, "localizer_mm": np.zeros(3),
                      "roi_center_mm": self.start.astype(float)})
        return None, self.probs, self.start


def test_an_ensemble_averages_its_members_probabilities_over_their_rois():
    """Against a whole-grid reference: each member's ROI probabilities placed on the working grid,
    background (probability 1) elsewhere, averaged; the ensemble's box and labels must agree with
    it everywhere, for ROIs that overlap in part and one that leaves the grid."""
    from types import SimpleNamespace
    rng = np.random.default_rng(0)
    shape, k = (12, 14, 16), 3
    starts = [(2, 3, 4), (4, 1, 6), (-2, 5, 9)]
    members = []
    for start in starts:
        p = rng.random((6, 7, 8, k)).astype(np.float32)
        members.append(_Member(p / p.sum(-1, keepdims=True), start))
    reference = np.zeros(shape + (k,), np.float32)
    for m in members:
        canvas = np.zeros(shape + (k,), np.float32)
        canvas[..., 0] = 1.0
        for idx in np.ndindex(m.probs.shape[:3]):
            at = tuple(np.asarray(idx) + m.start)
            if all(0 <= a < n for a, n in zip(at, shape)):
                canvas[at] = m.probs[idx]
        reference += canvas / len(members)
    prep = SimpleNamespace(image=np.zeros(shape, np.float32))
    ensemble = Ensemble(None, None, None, None, None, tuple(members))
    trace = {}
    classes, probs, start = ensemble.segment(prep, trace=trace)
    np.testing.assert_array_equal(start, np.min(starts, 0))
    assert probs.shape[:3] == tuple(np.max(np.asarray(starts) + (6, 7, 8), 0) - np.min(starts, 0))
    whole = paste(probs, start, shape, np.eye(k, dtype=np.float32)[0])
    np.testing.assert_allclose(whole, reference, atol=1e-6)
    np.testing.assert_array_equal(classes, np.argmax(reference, -1))
    np.testing.assert_allclose(trace["roi_center_mm"], np.mean(starts, 0))


def test_an_ensemble_of_runs_on_other_grids_is_a_clear_error(seg_run, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(seg_run, other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["data"]["spacing"] = [v + 1.0 for v in cfg["data"]["spacing"]]
    (other / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match=r"other.*spacing"):
        Ensemble.load([seg_run, other])
