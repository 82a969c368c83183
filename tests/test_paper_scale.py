"""The paper-scale smoke (``make test-slow``): the ``paper`` preset and each ablation preset build,
train two steps of every network at batch 8 and a 64^3 ROI, and predict an MM-WHS-sized CT
(512 x 512 x 240 at 0.49 x 0.49 x 0.625 mm) within 4 GB, on the CPU. Each preset runs in its own
process, whose peak resident memory is read from the kernel (``RUSAGE_CHILDREN``)."""
import json
import resource
import subprocess
import sys
import textwrap

import pytest

PRESETS = ["paper", "paper_no_ag", "paper_no_pab", "paper_no_scn", "paper_unet"]
LIMIT_GB = 4.0

SMOKE = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    import numpy as np, SimpleITK as sitk
    from cm_trancaf.config import apply_overrides, get_preset
    from cm_trancaf.data import phantom
    from cm_trancaf.data.io import Geometry, write_image
    from cm_trancaf.predict import predict_files
    from cm_trancaf.train.seg import train_segmentation
    preset, data, work = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    cfg = apply_overrides(get_preset(preset), ["train.steps=2", "train_localizer.steps=2",
                                               "run.log_every=1"])
    assert cfg.train.batch_size == 8 and cfg.data.roi_size == (64, 64, 64)
    t0 = time.time()
    out = train_segmentation(cfg, data, work / "run")
    train_s = time.time() - t0
    big = work / "big" / "ct_3001_image.nii.gz"
    rng = np.random.default_rng(5)
    spacing = (0.488, 0.488, 0.625)
    img, _ = phantom.make_case(phantom.random_anatomy(rng), "ct", rng, spacing,
                               tuple(n * s for n, s in zip((512, 512, 240), spacing)))
    write_image(img, big)
    t0 = time.time()
    [label] = predict_files(work / "run", big, work / "pred")
    predict_s = time.time() - t0
    same = Geometry.of(sitk.ReadImage(str(label))) == Geometry.of(img)
    print(json.dumps({"stages": sorted(out), "steps": {k: v["steps"] for k, v in out.items()},
                      "train_s": train_s, "predict_s": predict_s, "same_grid": same,
                      "size": list(img.GetSize())}))
""")


@pytest.mark.slow
@pytest.mark.parametrize("preset", PRESETS)
def test_paper_scale_preset_trains_and_predicts_an_mmwhs_sized_ct(preset, tmp_path):
    from cm_trancaf.data.phantom import write_dataset
    data = tmp_path / "phantom"
    write_dataset(data, n_ct=2, n_mr=0, n_test=0, seed=3)
    r = subprocess.run([sys.executable, "-c", SMOKE, preset, str(data), str(tmp_path)],
                       capture_output=True, text=True, timeout=3000)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(r.stdout.strip().splitlines()[-1])
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2 ** 20   # kB -> GB
    print(f"{preset}: train {result['train_s']:.0f} s, predict {result['predict_s']:.0f} s, "
          f"peak {peak_gb:.2f} GB")
    expected = ["localizer", "maunet"] + (["scn"] if preset not in ("paper_no_scn",
                                                                    "paper_unet") else [])
    assert result["stages"] == expected and set(result["steps"].values()) == {2}
    assert result["size"] == [512, 512, 240] and result["same_grid"]
    assert peak_gb < LIMIT_GB
