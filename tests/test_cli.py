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
