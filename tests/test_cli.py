"""CLI: --help on every sub-command, one-line errors with exit code 2, phantom end to end."""
import subprocess
import sys

import pytest

from cm_trancaf.cli import build_parser, main

SUBCOMMANDS = sorted(build_parser()._subparsers._group_actions[0].choices)


@pytest.mark.parametrize("cmd", SUBCOMMANDS)
def test_help_exits_zero(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([cmd, "--help"])
    assert e.value.code == 0
    assert "usage: cm-trancaf" in capsys.readouterr().out


def test_phantom_command_writes_layout_and_preview(tmp_path):
    out = tmp_path / "ph"
    rc = subprocess.run([sys.executable, "-m", "cm_trancaf.cli", "phantom", "--out", str(out),
                         "--n-ct", "1", "--n-mr", "1", "--n-test", "0", "--spacing", "5", "5", "5",
                         "--preview"], capture_output=True, text=True)
    assert rc.returncode == 0, rc.stderr
    assert (out / "ct_train/ct_train_1001_image.nii.gz").exists()
    assert (out / "mr_train/mr_train_1001_label.nii.gz").exists()
    assert (out / "preview.png").stat().st_size > 1000


def test_user_error_is_one_line_exit_2(tmp_path):
    r = subprocess.run([sys.executable, "-m", "cm_trancaf.cli", "phantom", "--out", str(tmp_path),
                        "--from-labels", str(tmp_path / "nowhere")], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr
    assert "nowhere" in r.stderr


def test_no_tensorflow_start_up_lines_unless_verbose(tmp_path):
    import os
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    argv = [sys.executable, "-m", "cm_trancaf.cli"]
    cmd = ["train-seg", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "o")]
    quiet = subprocess.run(argv + cmd, capture_output=True, text=True, env=env)
    assert quiet.returncode == 2
    lines = quiet.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cm-trancaf train-seg: error:"), quiet.stderr
    loud = subprocess.run(argv + ["--verbose"] + cmd, capture_output=True, text=True, env=env)
    assert loud.returncode == 2
    assert len(loud.stderr.strip().splitlines()) > 1          # TensorFlow's own lines come back


def test_layout_implies_its_label_set_and_an_explicit_set_wins():
    from cm_trancaf.cli import _config
    args = build_parser().parse_args(["train-seg", "--data", "d", "--out", "o", "--layout", "acdc",
                                      "--preset", "tiny"])
    assert _config(args).data.labels == "acdc" and _config(args).data.modality == "mr"
    args.overrides = ["data.labels=generic"]
    assert _config(args).data.labels == "generic"
    mmwhs = build_parser().parse_args(["train-seg", "--data", "d", "--out", "o", "--preset", "tiny"])
    assert _config(mmwhs).data.labels == "mmwhs"


def _label_volume(path, seed, shift=0):
    import numpy as np
    import SimpleITK as sitk
    arr = np.zeros((12, 16, 16), np.uint8)
    arr[3:9, 4 + shift:10 + shift, 4:12] = 1
    arr[3:9, 10 + shift:13 + shift, 4:12] = 3
    arr[4:8, 5:9, 2:4] = 2
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((1.5, 1.5, 8.0))
    sitk.WriteImage(img, str(path))


@pytest.mark.parametrize("style", ["acdc", "nnunet"])
def test_evaluate_pairs_by_case_id_whatever_the_suffix(style, tmp_path, capsys):
    import pandas as pd
    gt, pred = tmp_path / "masks", tmp_path / "pred"
    gt.mkdir(), pred.mkdir()
    for i, cid in enumerate(["patient001", "patient002", "patient003"]):
        if style == "acdc":        # ACDC masks/ against predict's *_label files
            _label_volume(gt / f"{cid}_mask.nii.gz", i)
            if i < 2:
                _label_volume(pred / f"{cid}_label.nii.gz", i, shift=i)
        else:                      # nnU-Net: the same file name in both folders
            _label_volume(gt / f"{cid}.nii.gz", i)
            if i < 2:
                _label_volume(pred / f"{cid}.nii.gz", i, shift=i)
    rc = main(["evaluate", "--pred", str(pred), "--gt", str(gt), "--layout", "acdc",
               "--out", str(tmp_path / "r.csv")])
    assert rc == 0
    assert "patient003" in capsys.readouterr().err            # named: not paired
    df = pd.read_csv(tmp_path / "r.csv")
    assert set(df["case"]) == {"patient001", "patient002"}
    dice = df[df.structure == "WHS_mean"].set_index("case")["dice"]
    assert dice["patient001"] == 1.0 and dice["patient002"] < 1.0   # shifted by one voxel
