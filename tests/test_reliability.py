"""Reliability: SIGKILL + resume gives the weights of an uninterrupted run, corrupt checkpoints
fall back, NaN losses never reach the weights, and every command reading user files answers bad
input with one line, exit code 2 and no partial output."""
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import keras
import numpy as np
import pytest
import SimpleITK as sitk
import tensorflow as tf

from cm_trancaf.checkpoint import restore
from cm_trancaf.cli import main
from cm_trancaf.data.io import write_image
from cm_trancaf.train.loop import NonFiniteError, Run, apply_if_finite, train_loop

CLI = [sys.executable, "-m", "cm_trancaf.cli"]


# ---------------------------------------------------------------- kill and resume
def _weights(ckpt_dir: Path) -> dict:
    reader = tf.train.load_checkpoint(str(ckpt_dir))
    return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
            if "OBJECT_GRAPH" not in k and "save_counter" not in k}


def _run_killed(cmd, log_csv: Path, min_rows: int, timeout=240) -> None:
    """Start ``cmd``, SIGKILL it once ``log_csv`` has ``min_rows`` data rows."""
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    t0 = time.time()
    while time.time() - t0 < timeout:
        if log_csv.exists() and len(log_csv.read_text().splitlines()) > min_rows:
            break
        if p.poll() is not None:
            pytest.fail(f"run ended before it could be killed: {p.stderr.read().decode()[-800:]}")
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert p.returncode == -signal.SIGKILL


@pytest.mark.parametrize("stage", ["maunet", "mtn"])
def test_sigkill_then_resume_equals_uninterrupted_run(stage, tiny_phantom, tmp_path):
    common = ["--preset", "tiny", "--set", "run.deterministic=True", "--set", "run.log_every=1"]
    if stage == "maunet":
        common += ["--data", str(tiny_phantom), "--stage", "maunet", "--set", "train.steps=30",
                   "--set", "train.ckpt_every=5", "--set", "train.val_every=1000"]
        cmd = lambda out: CLI + ["train-seg", "--out", str(out)] + common
        ckpt, log = lambda run: run / "maunet" / "ckpt" / "last", lambda run: run / "maunet" / "log.csv"
    else:          # the MTN also checkpoints its image pools: G and D see the same fakes
        common += ["--data", str(tiny_phantom), "--set", "mtn.steps=24", "--set", "mtn.pool_size=3",
                   "--set", "mtn.validations=4"]
        cmd = lambda out: CLI + ["train-mtn", "--out", str(out)] + common
        ckpt, log = lambda run: run / "ckpt" / "last", lambda run: run / "log.csv"
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    r = subprocess.run(cmd(ref), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    _run_killed(cmd(killed), log(killed), min_rows=14)
    steps_before = [int(l.split(",")[0]) for l in log(killed).read_text().splitlines()[1:]]
    assert max(steps_before) < (29 if stage == "maunet" else 23), "killed too late to test resume"
    r = subprocess.run(cmd(killed), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    steps = [int(l.split(",")[0]) for l in log(killed).read_text().splitlines()[1:]]
    assert len(steps) > len(set(steps)), "the second run resumed from a checkpoint, not from 0"
    a, b = _weights(ckpt(ref)), _weights(ckpt(killed))
    assert a.keys() == b.keys() and len(a) > 10
    diff = {k: float(np.max(np.abs(a[k].astype(np.float64) - b[k]))) for k in a if a[k].size}
    assert max(diff.values()) == 0.0, {k: v for k, v in diff.items() if v}   # bit for bit


# ---------------------------------------------------------------- checkpoints and NaN
def _toy(tmp_path, batches, policy="stop", steps=6):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    opt = keras.optimizers.Adam(0.1)
    opt.build(model.trainable_variables)

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(x)))
        grads = tape.gradient(loss, model.trainable_variables)
        return {"loss": loss, "nonfinite": apply_if_finite(opt, loss, grads,
                                                           model.trainable_variables)}
    run = Run(run_dir=tmp_path, steps=steps, log_every=1, val_every=100, ckpt_every=1,
              batch_size=1, objects={"model": model, "optimizer": opt}, metric="loss",
              higher_is_better=False, desc="toy", on_nonfinite=policy)
    return model, run, step, (lambda start: iter(batches[start:]))


def test_nan_loss_stops_with_step_and_leaves_weights_and_checkpoint_finite(tmp_path):
    data = [(np.ones((4, 3), np.float32) * (np.nan if i == 3 else 1.0),) for i in range(6)]
    model, run, step, batches = _toy(tmp_path, data)
    with pytest.raises(NonFiniteError, match="step 3") as e:
        train_loop(run, batches, step)
    assert "ckpt-3" in str(e.value)                      # the last good checkpoint is named
    after = [w.copy() for w in model.get_weights()]
    assert all(np.isfinite(w).all() for w in after)
    # the checkpoint of step 3 holds exactly the weights the failing step did not change
    fresh, _, _, _ = _toy(tmp_path / "other", data)
    restore(tmp_path, "last", model=fresh)
    for a, b in zip(fresh.get_weights(), after):
        np.testing.assert_array_equal(a, b)


def test_nan_loss_is_skipped_when_configured(tmp_path):
    data = [(np.ones((4, 3), np.float32) * (np.inf if i == 2 else 1.0),) for i in range(6)]
    model, run, step, batches = _toy(tmp_path, data, policy="skip")
    summary = train_loop(run, batches, step)
    assert summary["skipped_nonfinite"] == 1
    assert all(np.isfinite(w).all() for w in model.get_weights())


def test_resume_in_a_process_that_numbered_its_layers_differently(tmp_path):
    """Keras names unnamed layers per process (dense, dense_1, ...) and an optimizer's slots carry
    those names: a run stopped in one process resumes in another that built other layers first
    (the experiment runner builds several networks in one process; a restart builds fewer)."""
    data = [(np.full((4, 3), 0.5 + i, np.float32),) for i in range(8)]
    _, first, step, batches = _toy(tmp_path / "resumed", data, steps=4)
    train_loop(first, batches, step)                       # stopped after 4 of 8 steps
    keras.layers.Dense(3)                                  # shifts the process's layer numbering
    model, second, step, batches = _toy(tmp_path / "resumed", data, steps=8)
    names = lambda run: [v.name for v in run.objects["optimizer"].variables]
    assert names(first) != names(second)                   # the slot names differ ...
    train_loop(second, batches, step)                      # ... and it still resumes
    logged = [int(l.split(",")[0]) for l in (tmp_path / "resumed" / "log.csv").read_text()
              .splitlines()[1:]]
    assert logged == list(range(8))                        # steps 4-7 after 0-3, no restart
    ref, run, step, batches = _toy(tmp_path / "uninterrupted", data, steps=8)
    train_loop(run, batches, step)
    for a, b in zip(model.get_weights(), ref.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_corrupt_latest_checkpoint_falls_back_to_the_previous_one(tmp_path):
    data = [(np.ones((4, 3), np.float32),)] * 6
    model, run, step, batches = _toy(tmp_path, data)
    train_loop(run, batches, step)
    last = tmp_path / "ckpt" / "last"
    newest = sorted(last.glob("ckpt-6.data-*"))[0]
    newest.write_bytes(newest.read_bytes()[:10])          # half-written
    fresh, _, _, _ = _toy(tmp_path / "other", data)
    with pytest.warns(UserWarning, match="unreadable checkpoint"):
        assert restore(tmp_path, "last", model=fresh) == 5


# ---------------------------------------------------------------- bad-input matrix
def _bad_files(d: Path, good: Path) -> dict:
    """name -> path of a bad image file (each one problem)."""
    d.mkdir(parents=True, exist_ok=True)
    data = good.read_bytes()
    out = {}
    out["truncated gzip"] = d / "trunc_image.nii.gz"
    out["truncated gzip"].write_bytes(data[: len(data) // 2])
    out["not an image"] = d / "text_image.nii"
    out["not an image"].write_text("not an image\n" * 40)
    out["2D"] = d / "flat_image.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((9, 9), np.float32)), str(out["2D"]))
    out["4D"] = d / "four_image.nii.gz"
    sitk.WriteImage(sitk.JoinSeries([sitk.GetImageFromArray(np.zeros((4, 5, 6), np.float32))] * 2),
                    str(out["4D"]))
    arr = np.zeros((6, 7, 8), np.float32)
    arr[2, 3, 4] = np.nan
    out["NaN"] = d / "nan_image.nii.gz"
    write_image(sitk.GetImageFromArray(arr), out["NaN"])
    out["zero spacing"] = d / "zero_image.nii.gz"
    _zero_pixdim(good, out["zero spacing"])
    return out


def _zero_pixdim(src: Path, dst: Path) -> None:
    import gzip
    raw = bytearray(gzip.decompress(src.read_bytes()))
    raw[80:84] = np.float32(0.0).tobytes()                # pixdim[1] (x spacing) = 0
    dst.write_bytes(gzip.compress(bytes(raw)))


EXPECT = {"truncated gzip": "truncated", "not an image": "not a readable image", "2D": "2D",
          "4D": "4D", "NaN": "non-finite", "zero spacing": "spacing"}


def _expect_one_line(argv, capsys, *needles, out_dir=None):
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    lines = [l for l in err.splitlines() if "error:" in l]
    assert len(lines) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    if out_dir is not None:                               # nothing half-written left behind
        leftovers = [p for p in Path(out_dir).rglob("*") if p.is_file()] if Path(out_dir).exists() else []
        assert not leftovers, leftovers


@pytest.mark.parametrize("problem", sorted(EXPECT))
def test_predict_and_translate_reject_bad_images(problem, seg_run, mtn_run, tiny_phantom, tmp_path,
                                                 capsys):
    good = tiny_phantom / "ct_test" / "ct_test_2001_image.nii.gz"
    bad = _bad_files(tmp_path / "in", good)[problem]
    out = tmp_path / "out"
    _expect_one_line(["predict", "--run", str(seg_run), "--input", str(bad), "--out", str(out)],
                     capsys, str(bad), EXPECT[problem], out_dir=out)
    _expect_one_line(["translate", "--run", str(mtn_run), "--input", str(bad), "--out", str(out)],
                     capsys, str(bad), EXPECT[problem], out_dir=out)


def _copy_dataset(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("problem", ["truncated gzip", "NaN", "unknown codes", "grid mismatch"])
def test_training_commands_reject_bad_data_before_writing(problem, tiny_phantom, tmp_path, capsys):
    data = _copy_dataset(tiny_phantom, tmp_path / "data")
    img = data / "ct_train" / "ct_train_1002_image.nii.gz"
    lab = data / "ct_train" / "ct_train_1002_label.nii.gz"
    if problem in ("truncated gzip", "NaN"):
        bad = _bad_files(tmp_path / "bad", img)[problem]
        shutil.copyfile(bad, img)
        target, needle = img, EXPECT[problem]
    elif problem == "unknown codes":
        arr = sitk.GetArrayFromImage(sitk.ReadImage(str(lab)))
        arr[0, 0, 0] = 77
        out = sitk.GetImageFromArray(arr)
        out.CopyInformation(sitk.ReadImage(str(lab)))
        sitk.WriteImage(out, str(lab))
        target, needle = lab, "77"
    else:
        label = sitk.ReadImage(str(lab))
        label.SetOrigin(tuple(o + 7.0 for o in label.GetOrigin()))
        sitk.WriteImage(label, str(lab))
        target, needle = lab, "grid"
    out = tmp_path / "run"
    _expect_one_line(["train-seg", "--data", str(data), "--out", str(out), "--preset", "tiny"],
                     capsys, target.name, needle, out_dir=out)
    if problem in ("truncated gzip", "NaN"):   # the MTN reads CT images without labels
        _expect_one_line(["train-mtn", "--data", str(data), "--out", str(out), "--preset", "tiny"],
                         capsys, target.name, needle, out_dir=out)


def test_evaluate_rejects_bad_label_maps(tiny_phantom, tmp_path, capsys):
    gt = tiny_phantom / "ct_test"
    pred = tmp_path / "pred"
    pred.mkdir()
    lab = sitk.ReadImage(str(gt / "ct_test_2001_label.nii.gz"))
    arr = sitk.GetArrayFromImage(lab)
    arr[0, 0, 0] = 3
    bad = sitk.GetImageFromArray(arr)
    bad.CopyInformation(lab)
    sitk.WriteImage(bad, str(pred / "ct_test_2001_label.nii.gz"))
    csv = tmp_path / "res" / "r.csv"
    _expect_one_line(["evaluate", "--pred", str(pred), "--gt", str(gt), "--out", str(csv)],
                     capsys, "ct_test_2001_label", "3", out_dir=csv.parent)
    small = sitk.RegionOfInterest(lab, [s - 1 for s in lab.GetSize()], [0, 0, 0])
    sitk.WriteImage(small, str(pred / "ct_test_2001_label.nii.gz"))
    _expect_one_line(["evaluate", "--pred", str(pred), "--gt", str(gt), "--out", str(csv)],
                     capsys, "ct_test_2001_label", "grid", out_dir=csv.parent)


@pytest.mark.parametrize("command", ["predict", "translate", "evaluate", "train-seg", "train-mtn",
                                     "export"])
def test_missing_path_and_empty_folder(command, seg_run, mtn_run, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    missing = tmp_path / "nowhere"
    out = tmp_path / "out"
    argv = {"predict": lambda x: ["predict", "--run", str(seg_run), "--input", str(x)],
            "translate": lambda x: ["translate", "--run", str(mtn_run), "--input", str(x)],
            "evaluate": lambda x: ["evaluate", "--pred", str(x), "--gt", str(x)],
            "train-seg": lambda x: ["train-seg", "--data", str(x), "--preset", "tiny"],
            "train-mtn": lambda x: ["train-mtn", "--data", str(x), "--preset", "tiny"],
            "export": lambda x: ["export", "--run", str(x)]}[command]
    for path in (missing, empty):
        _expect_one_line(argv(path) + ["--out", str(out)], capsys, str(path), out_dir=out)


def test_read_only_output_folder(seg_run, tiny_phantom, tmp_path, capsys):
    if os.geteuid() == 0:
        pytest.skip("running as root: permissions are not enforced, a read-only folder is writable")
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o500)
    try:
        _expect_one_line(["predict", "--run", str(seg_run), "--input",
                          str(tiny_phantom / "ct_test"), "--out", str(out)], capsys, str(out),
                         "ermission")
    finally:
        out.chmod(0o700)


def test_output_write_failure_is_one_line(seg_run, tiny_phantom, tmp_path, capsys, monkeypatch):
    """Disk full / permission denied mid-run (simulated): one line, exit 2, earlier outputs kept,
    no temporary files left (works as root too, unlike chmod)."""
    import errno

    import cm_trancaf.data.io as io
    real, calls = io.sitk.WriteImage, []

    def failing(image, path, *a, **k):
        calls.append(path)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device", path)
        return real(image, path, *a, **k)
    monkeypatch.setattr(io.sitk, "WriteImage", failing)
    out = tmp_path / "out"
    _expect_one_line(["predict", "--run", str(seg_run), "--input", str(tiny_phantom / "ct_test"),
                      "--out", str(out)], capsys, "No space left on device")
    files = sorted(p.name for p in out.iterdir())
    assert files == ["ct_test_2001_label.nii.gz"], files     # the first case, complete
    assert sitk.ReadImage(str(out / files[0])).GetSize() == sitk.ReadImage(
        str(tiny_phantom / "ct_test" / "ct_test_2001_image.nii.gz")).GetSize()


def test_checkpoint_from_another_config(seg_run, tiny_phantom, tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(seg_run, other)
    cfg = (other / "config.json").read_text().replace('"base_filters": 4', '"base_filters": 6')
    (other / "config.json").write_text(cfg)
    _expect_one_line(["predict", "--run", str(other), "--input", str(tiny_phantom / "ct_test"),
                      "--out", str(tmp_path / "out")], capsys, "does not match",
                     out_dir=tmp_path / "out")


def test_unwritable_run_folder_is_one_line(tiny_phantom, tmp_path, capsys, monkeypatch):
    """A training command whose run folder cannot be created (e.g. permission denied)."""
    import errno
    import pathlib
    real = pathlib.Path.mkdir

    def deny(self, *a, **k):
        if "denied" in str(self):
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real(self, *a, **k)
    monkeypatch.setattr(pathlib.Path, "mkdir", deny)
    out = tmp_path / "denied" / "run"
    _expect_one_line(["train-seg", "--data", str(tiny_phantom), "--out", str(out), "--preset",
                      "tiny", "--stage", "localizer"], capsys, "denied", "Permission denied")
