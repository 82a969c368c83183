"""The paper-scale smoke (``make test-slow``): the ``paper`` preset and each ablation preset build,
train two steps of every network at batch 8 and a 64^3 ROI, and predict an MM-WHS-sized CT
(512 x 512 x 240 at 0.49 x 0.49 x 0.625 mm) within 4 GB, on the CPU. Training and prediction each
run in a process of their own, which reports its own peak resident memory (``VmHWM``; not
``ru_maxrss``, which counts the pytest process's memory at the fork)."""
import json
import subprocess
import sys
import textwrap

import pytest

PRESETS = ["paper", "paper_no_ag", "paper_no_pab", "paper_no_scn", "paper_unet"]
LIMIT_GB = 4.0

TRAIN = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    from cm_trancaf.config import apply_overrides, get_preset
    from cm_trancaf.train.seg import train_segmentation
    from cm_trancaf.utils import peak_memory_gb
    preset, data, work = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    cfg = apply_overrides(get_preset(preset), ["train.steps=2", "train_localizer.steps=2",
                                               "run.log_every=1"])
    assert cfg.train.batch_size == 8 and cfg.data.roi_size == (64, 64, 64)
    t0 = time.time()
    out = train_segmentation(cfg, data, work / "run")
    print(json.dumps({"stages": sorted(out), "steps": {k: v["steps"] for k, v in out.items()},
                      "seconds": time.time() - t0,
                      "peak_gb": peak_memory_gb()}))
""")
PREDICT = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    import SimpleITK as sitk
    from cm_trancaf.data.io import Geometry
    from cm_trancaf.predict import predict_files
    from cm_trancaf.utils import peak_memory_gb
    work, big = Path(sys.argv[1]), Path(sys.argv[2])
    t0 = time.time()
    [label] = predict_files(work / "run", big, work / "pred")
    same = Geometry.of(sitk.ReadImage(str(label))) == Geometry.of(sitk.ReadImage(str(big)))
    print(json.dumps({"seconds": time.time() - t0, "same_grid": same,
                      "size": list(sitk.ReadImage(str(label)).GetSize()),
                      "peak_gb": peak_memory_gb()}))
""")


def _run(script: str, *args) -> dict:
    r = subprocess.run([sys.executable, "-c", script, *map(str, args)], capture_output=True,
                       text=True, timeout=3000)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("preset", PRESETS)
def test_paper_scale_preset_trains_and_predicts_an_mmwhs_sized_ct(preset, tmp_path):
    import numpy as np
    from cm_trancaf.data import phantom
    from cm_trancaf.data.io import write_image
    data = tmp_path / "phantom"
    phantom.write_dataset(data, n_ct=2, n_mr=0, n_test=0, seed=3)
    rng = np.random.default_rng(5)
    spacing = (0.488, 0.488, 0.625)
    img, _ = phantom.make_case(phantom.random_anatomy(rng), "ct", rng, spacing,
                               tuple(n * s for n, s in zip((512, 512, 240), spacing)))
    big = write_image(img, tmp_path / "big" / "ct_3001_image.nii.gz")
    train = _run(TRAIN, preset, data, tmp_path)
    pred = _run(PREDICT, tmp_path, big)
    print(f"{preset}: train {train['seconds']:.0f} s (peak {train['peak_gb']:.1f} GB), predict "
          f"{pred['seconds']:.0f} s (peak {pred['peak_gb']:.2f} GB)")
    expected = ["localizer", "maunet"] + (["scn"] if preset not in ("paper_no_scn",
                                                                    "paper_unet") else [])
    assert train["stages"] == expected and set(train["steps"].values()) == {2}
    assert pred["size"] == [512, 512, 240] and pred["same_grid"]
    assert pred["peak_gb"] < LIMIT_GB
