"""MTN: cycle loss falls, checkpoints restore exactly, translate keeps geometry and labels."""
import filecmp

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from cm_trancaf.config import apply_overrides, get_preset
from cm_trancaf.data.io import Geometry
from cm_trancaf.inference import load_generator, translate_volume
from cm_trancaf.train.mtn import lr_at, train_mtn
from cm_trancaf.translate import translate_folder
from cm_trancaf.utils import UserError


def test_cycle_loss_falls(mtn_run):
    log = pd.read_csv(mtn_run / "log.csv")["loss/cycle"].to_numpy()
    assert log[-5:].mean() < 0.8 * log[:3].mean(), log


def test_restored_generator_has_the_trained_weights(mtn_run):
    """G_c as ``load_generator`` restores it holds, tensor for tensor, what training saved in its
    last checkpoint (read raw with TensorFlow's checkpoint reader), and training moved them."""
    import tensorflow as tf
    from cm_trancaf.models.mtn import build_mtn
    cfg, _, g_c = load_generator(mtn_run)
    reader = tf.train.load_checkpoint(str(mtn_run / "ckpt" / "last"))
    saved = {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
             if k.startswith("G_c/") and "OPTIMIZER" not in k and k.endswith("VARIABLE_VALUE")}
    order = lambda k: int(k.split("/")[1].split("_")[0][1:])        # G_c/v0007_kernel/...
    saved = [saved[k] for k in sorted(saved, key=order)]
    weights = [v.numpy() for v in g_c.variables]
    assert len(saved) == len(weights) > 10
    for a, b in zip(weights, saved):
        np.testing.assert_array_equal(a, b)
    fresh = build_mtn(cfg.mtn)["G_c"].get_weights()
    assert any(np.abs(a - b).max() > 1e-3 for a, b in zip(weights, fresh) if a.size > 10)


def test_translate_keeps_geometry_and_label_bytes(mtn_run, tiny_phantom, tmp_path):
    rows = translate_folder(mtn_run, tiny_phantom / "mr_train", tmp_path)
    assert len(rows) == 2 and (tmp_path / "manifest.csv").exists()
    from cm_trancaf.data.datasets import generated_cases
    assert {r["modality"] for r in rows} == {"ct"}                     # G_c: MRI -> CT
    assert {c.modality for c in generated_cases(tmp_path)} == {"ct"}
    for r in rows:
        src = sitk.ReadImage(r["source_image"])
        out = sitk.ReadImage(r["image"])
        assert Geometry.of(out) == Geometry.of(src)
        assert filecmp.cmp(r["label"], r["source_label"], shallow=False)
        hu = sitk.GetArrayFromImage(out)
        assert hu.min() >= -1000.5 and hu.max() <= 1000.5     # in the CT window (HU)


def test_translate_on_the_working_grid_is_enhanced_and_resampled_once(mtn_run, tiny_phantom,
                                                                     tmp_path):
    """What training reads: G_c's output on its working grid; preprocessing then neither
    resamples it (identity) nor enhances it again, and the labels are the source's codes."""
    from cm_trancaf.config import load_config
    from cm_trancaf.data.datasets import LABEL_SETS, generated_cases, load_case
    from cm_trancaf.data.preprocess import normalize, prepare, working_grid
    cfg = load_config(mtn_run / "config.json")
    rows = translate_folder(mtn_run, tiny_phantom / "mr_train", tmp_path, grid="working")
    assert {r["enhanced"] for r in rows} == {"yes"}
    cases = generated_cases(tmp_path)
    assert cases and all(c.enhanced and c.modality == "ct" for c in cases)
    for r, case in zip(rows, cases):
        src = sitk.ReadImage(r["source_image"])
        out = sitk.ReadImage(r["image"])
        assert Geometry.of(out) == working_grid(src, cfg.data.spacing)
        lab_src = sitk.GetArrayFromImage(sitk.ReadImage(r["source_label"]))
        lab_out = sitk.GetArrayFromImage(sitk.ReadImage(r["label"]))
        assert set(np.unique(lab_out)) <= set(np.unique(lab_src)) and lab_out.any()
        image, label = load_case(case, LABEL_SETS["mmwhs"])
        prep = prepare(image, label, cfg.data, "ct", 8, enhanced=case.enhanced)
        once = normalize(sitk.GetArrayFromImage(out), "ct", cfg.data)
        np.testing.assert_allclose(prep.image, once, atol=1e-4)      # not enhanced again
        twice = prepare(image, label, cfg.data, "ct", 8)             # what happened before
        assert np.abs(twice.image - once).max() > 0.05
    with pytest.raises(UserError, match="grid"):
        translate_folder(mtn_run, tiny_phantom / "mr_train", tmp_path / "x", grid="native")


def test_translate_rejects_wrong_inputs(mtn_run, tiny_phantom, tmp_path):
    vec = sitk.Compose([sitk.ReadImage(str(tiny_phantom / "mr_train/mr_train_1001_image.nii.gz"))] * 2)
    sitk.WriteImage(vec, str(tmp_path / "two_channel_image.nii.gz"))
    with pytest.raises(UserError, match="components per voxel"):
        translate_folder(mtn_run, tmp_path / "two_channel_image.nii.gz", tmp_path / "o")
    with pytest.raises(UserError, match="not a train-mtn run"):
        translate_folder(tmp_path, tiny_phantom / "mr_train", tmp_path / "o")


def test_sliding_window_has_no_seams():
    identity = lambda x, training=False: x
    vol = np.random.default_rng(1).uniform(-1, 1, (37, 29, 41)).astype("float32")
    np.testing.assert_allclose(translate_volume(identity, vol, (16, 16, 16)), vol, atol=1e-5)


def test_lr_schedule():
    cfg = get_preset("paper").mtn
    assert lr_at(0, cfg) == cfg.lr and lr_at(cfg.steps // 2, cfg) == cfg.lr
    assert lr_at(cfg.steps, cfg) == 0.0 and 0 < lr_at(3 * cfg.steps // 4, cfg) < cfg.lr


def test_train_mtn_logs_anatomy_with_a_target_cascade(tiny_phantom, seg_run, tmp_path):
    """``train-mtn --anatomy-run``: each validation writes the FCN score of G_c (a Dice in
    [0, 1]) to the MTN's own val.csv, and the run's MAUNet drives the shape term when it is on
    (``loss/shape`` in log.csv); a run folder that is not a train-seg run is one error line
    before any MTN run folder exists."""
    import subprocess
    import sys
    cli = [sys.executable, "-m", "cm_trancaf.cli", "train-mtn", "--data", str(tiny_phantom),
           "--preset", "tiny"]
    r = subprocess.run(cli + ["--out", str(tmp_path / "m"), "--anatomy-run", str(seg_run),
                              "--set", "mtn.shape_weight=1.0"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    val = pd.read_csv(tmp_path / "m" / "val.csv")
    assert len(val) == 2 and val["val/anatomy_dice"].between(0, 1).all()    # mtn.validations
    log = pd.read_csv(tmp_path / "m" / "log.csv")
    assert log["loss/shape"].between(0, 2).all()
    r = subprocess.run(cli + ["--out", str(tmp_path / "n"), "--anatomy-run", str(tmp_path)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 2 and "not a train-seg run" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "n").exists()


def test_shape_term_trains_G_c_through_a_frozen_segmenter():
    """L_shape (``mtn.shape_weight``): from the same weights and batches, 20 generator steps with
    the shape term leave a lower shape loss (the frozen S_t segments G_c(x_s) more like y_s)
    than 20 steps without it, and S_t's weights stay bit for bit what they were."""
    import keras
    from cm_trancaf.models.maunet import build_maunet
    from cm_trancaf.models.mtn import build_mtn
    from cm_trancaf.train.mtn import make_mtn_steps
    rng = np.random.default_rng(0)
    patch = lambda: rng.uniform(-1, 1, (1, 16, 16, 16, 1)).astype("float32")
    m, c, x_s = patch(), patch(), patch()
    y_s = np.zeros((1, 16, 16, 16), "int64")
    y_s[:, 4:12, 4:12, 2:8], y_s[:, 4:12, 4:12, 8:14] = 1, 2          # two boxes side by side
    y_s = np.eye(3, dtype="float32")[y_s]

    def shape_losses(weight):
        cfg = apply_overrides(get_preset("tiny"), [f"mtn.shape_weight={weight}", "mtn.lr=0.002"])
        keras.utils.set_random_seed(3)
        nets = build_mtn(cfg.mtn)
        s_t = build_maunet(cfg.maunet, 3, (16, 16, 16))
        frozen = [w.copy() for w in s_t.get_weights()]
        opt_g, opt_d = (keras.optimizers.Adam(cfg.mtn.lr, beta_1=0.5) for _ in range(2))
        gen_step, _ = make_mtn_steps(nets, opt_g, opt_d, cfg.mtn, segmenter=s_t)
        losses = [float(gen_step(m, c, x_s, y_s)[0]["loss/shape"]) for _ in range(20)]
        for a, b in zip(s_t.get_weights(), frozen):
            np.testing.assert_array_equal(a, b)
        return losses

    with_term, without = shape_losses(100.0), shape_losses(0.0)
    assert with_term[0] == pytest.approx(without[0], abs=1e-5)        # same start
    assert np.mean(with_term[-5:]) < np.mean(without[-5:]) - 0.05, (with_term, without)


def test_shape_term_needs_a_target_segmenter(tiny_phantom, tmp_path):
    cfg = apply_overrides(get_preset("tiny"), ["mtn.shape_weight=1.0"])
    with pytest.raises(UserError, match="--anatomy-run"):
        train_mtn(cfg, tiny_phantom, tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_instance_norm_in_D_hides_a_patch_s_contrast_and_disc_norm_false_shows_it():
    # At initialisation (zero biases) conv -> LeakyReLU is positively homogeneous, so a D whose
    # middle layers are instance-normalised gives the same map for a patch x and 3 x; without
    # the norm (mtn.disc_norm=False) the map scales with the patch. This is why a D with IN
    # hardly separates normalised bSSFP from LGE patches (experiments/README.md, "Beyond the
    # paper").
    import keras
    from cm_trancaf.models.mtn import Discriminator
    cfg = get_preset("cmr_cpu").mtn
    x = np.random.default_rng(0).normal(size=(1, *cfg.patch_size, 1)).astype("float32")
    outs = {}
    for norm in (True, False):
        keras.utils.set_random_seed(0)
        d = Discriminator(apply_overrides(get_preset("cmr_cpu"),
                                          [f"mtn.disc_norm={norm}"]).mtn)
        a, b = np.asarray(d(x)), np.asarray(d(3.0 * x))
        n_norm = sum(isinstance(l, keras.layers.GroupNormalization) for l in d._flatten_layers())
        outs[norm] = (a, b, n_norm)
    a, b, n_norm = outs[True]
    assert n_norm == cfg.disc_layers and a.shape == outs[False][0].shape
    np.testing.assert_allclose(a, b, atol=1e-4 * np.abs(a).max())       # contrast invisible
    a, b, n_norm = outs[False]
    assert n_norm == 0
    np.testing.assert_allclose(b, 3.0 * a, rtol=1e-4, atol=1e-6)        # contrast seen


def test_disc_separation_benchmark_scores_separable_domains_high_and_identical_ones_at_chance():
    # benchmarks/disc_separation.py: a D trained alone on patches of two domains; its held-out
    # accuracy must tell a real difference (contrast x3) from none (the same distribution)
    import importlib.util
    from pathlib import Path
    import keras
    from cm_trancaf.models.mtn import Discriminator
    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("disc_separation",
                                                  root / "benchmarks/disc_separation.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    cfg = apply_overrides(get_preset("tiny"), ["mtn.disc_norm=False"]).mtn

    def patches(seed, scale):
        rng = np.random.default_rng(seed)
        while True:
            yield (scale * rng.normal(size=(1, *cfg.patch_size, 1))).astype("float32")

    accuracy = {}
    for name, fake_scale in (("different", 3.0), ("same", 1.0)):
        keras.utils.set_random_seed(0)
        rows = bench.separation(Discriminator(cfg), patches(1, 1.0), patches(2, fake_scale),
                                patches(3, 1.0), patches(4, fake_scale), steps=150, lr=1e-3,
                                beta_1=0.5, report_every=150)
        assert [r["step"] for r in rows] == [150]
        accuracy[name] = rows[-1]["accuracy"]
    assert accuracy["different"] > 0.9
    assert abs(accuracy["same"] - 0.5) < 0.2
