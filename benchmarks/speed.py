"""Speed: training steps/s and voxels/s per module, the input pipeline's batches/s, and whole-volume
prediction time per stage, with peak memory; one table, one CSV.

    python benchmarks/speed.py                                  # cpu preset, float32
    python benchmarks/speed.py --presets cpu paper --variants float32 bf16 xla
    python benchmarks/speed.py --predict-volume 512 512 240     # + an MM-WHS-sized CT prediction

Training rows time ``--steps`` steps after one warm-up step (tracing, XLA compilation) on random
batches of the preset's shapes, with the same step builder as training (``train/scale.py``).
The pipeline row pulls batches of the real augmentation pipeline (``roi_dataset``) from phantom
cases; ``pipeline / step`` >= 2 means augmentation is not the bottleneck. Peak memory is the
process's maximum resident set so far (CPU) or the device's peak (GPU).
Writes ``speed.csv`` in ``--out``; prints the table.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from cm_trancaf.utils import peak_memory_gb

VARIANTS = {"float32": ("float32", False), "bf16": ("mixed_bfloat16", False),
            "fp16": ("mixed_float16", False), "xla": ("float32", True),
            "bf16+xla": ("mixed_bfloat16", True)}


def peak_mb() -> float:
    return peak_memory_gb() * 1024


def _device() -> str:
    import tensorflow as tf
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        return tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU")
    return f"CPU ({os.cpu_count()} cores, {_cpu_name()})"


def _cpu_name() -> str:
    """The CPU's model name, its widest vector unit and whether TensorFlow's oneDNN kernels are
    on, printed beside every timing: with them off, an AVX2 machine trained the `cpu` MAUNet
    4-5x slower (README "Speed")."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                name = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        return name
    simd = next((f for f in ("avx512f", "avx2", "avx") if f in flags), None)
    onednn = "oneDNN off" if os.environ.get("TF_ENABLE_ONEDNN_OPTS") == "0" else "oneDNN on"
    return ", ".join(filter(None, (name, simd and simd.upper().replace("F", ""), onednn)))


def time_steps(step, batch, steps: int) -> float:
    """Seconds per step after one warm-up step."""
    out = step(*batch)
    np.asarray(next(iter(out.values())) if isinstance(out, dict) else out[0]["loss/G"])
    t = time.perf_counter()
    for _ in range(steps):
        out = step(*batch)
    np.asarray(next(iter(out.values())) if isinstance(out, dict) else out[0]["loss/G"])
    return (time.perf_counter() - t) / steps


def module_steps(cfg, module: str, precision: str, jit: bool):
    """(step, batch, batch voxels) for one module at the config's shapes."""
    import keras
    import tensorflow as tf
    from cm_trancaf.losses import dice_focal, heatmap_l2
    from cm_trancaf.models.localizer import build_localizer
    from cm_trancaf.models.maunet import build_maunet
    from cm_trancaf.models.mtn import build_mtn
    from cm_trancaf.models.scn import build_scn
    from cm_trancaf.train.mtn import _optimizers, make_mtn_steps
    from cm_trancaf.inference import precision_policy
    from cm_trancaf.train.scale import make_optimizer, make_step
    rng = np.random.default_rng(0)
    strategy = tf.distribute.get_strategy()
    k = 8
    if module == "mtn":
        m = cfg.mtn
        with precision_policy(precision):
            nets = build_mtn(m)
            opt_g, opt_d = _optimizers(m, precision)
        gen, disc = make_mtn_steps(nets, opt_g, opt_d, m, strategy, jit)
        shape = (m.batch_size, *m.patch_size, 1)
        x = [tf.constant(rng.normal(size=shape).astype("float32")) for _ in range(4)]

        def step(mr, ct, fc, fm):
            logs, _ = gen(mr, ct)
            return {**logs, **disc(mr, ct, fc, fm)}
        return step, x, int(np.prod(shape))
    t = cfg.train_localizer if module == "localizer" else cfg.train
    size = cfg.localizer.size if module == "localizer" else cfg.data.roi_size
    shape = (t.batch_size, *size)
    x = tf.constant(rng.normal(size=shape + (1,)).astype("float32"))
    with precision_policy(precision):
        if module == "localizer":
            model = build_localizer(cfg.localizer)
            y = tf.constant(rng.uniform(size=shape + (1,)).astype("float32"))
            lc = cfg.localizer
            loss_of = lambda x, y: lc.loss_scale * heatmap_l2(y, model(x, training=True),
                                                              lc.peak_weight)
        elif module == "maunet":
            model = build_maunet(cfg.maunet, k, size)
            y = tf.one_hot(rng.integers(0, k, shape), k)
            loss_of = lambda x, y: dice_focal(y, model(x, training=True))
        else:
            maunet = build_maunet(cfg.maunet, k, size)
            model = build_scn(cfg.scn, k, size)
            y = tf.one_hot(rng.integers(0, k, shape), k)
            loss_of = lambda x, y: dice_focal(
                y, model(tf.stop_gradient(maunet(x)), x, training=True))
        opt = make_optimizer(keras.optimizers.Adam(1e-4), precision)
        opt.build(model.trainable_variables)

    def loss_fn(x, y):
        loss = loss_of(x, y)
        return loss, {"loss": loss}
    return make_step(strategy, loss_fn, model.trainable_variables, opt, jit), (x, y), \
        int(np.prod(shape))


def pipeline_rate(cfg, data: Path, batches: int) -> float:
    """Batches/s of the MAUNet augmentation pipeline alone."""
    from cm_trancaf.data.datasets import get_labelset, mmwhs_cases
    from cm_trancaf.data.pipeline import roi_dataset
    from cm_trancaf.train.seg import prepare_cases
    labelset = get_labelset(cfg.data.labels)
    cases = prepare_cases(mmwhs_cases(data, "ct", "train"), labelset, cfg)
    it = iter(roi_dataset(cases, cfg.data.roi_size, labelset.num_classes, cfg.augment,
                          cfg.train.batch_size, 0, 0))
    next(it)
    t = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches / (time.perf_counter() - t)


def predict_rows(cfg_name: str, work: Path, size) -> list[dict]:
    """Train a 1-step cascade at the preset (weights do not change the timing) and predict an
    MM-WHS-sized phantom CT; one row per stage."""
    from cm_trancaf.config import apply_overrides, get_preset
    from cm_trancaf.data import phantom
    from cm_trancaf.data.io import read_image, write_image
    from cm_trancaf.predict import predict_files
    from cm_trancaf.train.seg import train_segmentation
    run = work / f"run_{cfg_name}"
    if not (run / "scn" / "summary.json").exists():
        cfg = apply_overrides(get_preset(cfg_name), [
            "train.steps=1", "train_localizer.steps=1", "train.batch_size=1",
            "train_localizer.batch_size=1", "train.val_every=1", "train_localizer.val_every=1"])
        train_segmentation(cfg, work / "phantom", run)
    big = work / f"ct_{'x'.join(map(str, size))}.nii.gz"
    if not big.exists():
        rng = np.random.default_rng(5)
        spacing = (0.488, 0.488, 0.625)
        img, _ = phantom.make_case(phantom.random_anatomy(rng), "ct", rng, spacing,
                                   tuple(n * s for n, s in zip(size, spacing)))
        write_image(img, big)
    # the predict stage as the CLI runs it; the same image twice: the first includes tracing
    timings: list = []
    predict_files(run, [big, big], work / "pred", "ct", overwrite=True, timings=timings)
    _, prof = timings[-1]
    prof["total"] = sum(prof.values())
    shape = "x".join(map(str, read_image(big).GetSize()))
    return [{"preset": cfg_name, "module": "predict", "variant": stage, "shape": shape,
             "seconds": sec, "peak_mb": peak_mb()} for stage, sec in prof.items()]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", nargs="+", default=["cpu"])
    p.add_argument("--modules", nargs="+", default=["localizer", "maunet", "scn", "mtn"])
    p.add_argument("--variants", nargs="+", default=["float32"], choices=list(VARIANTS))
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--pipeline-batches", type=int, default=10)
    p.add_argument("--predict-volume", type=int, nargs=3, metavar=("X", "Y", "Z"))
    p.add_argument("--out", default="results/speed")
    args = p.parse_args(argv)
    from cm_trancaf.config import get_preset
    from cm_trancaf.data import phantom
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "phantom" / "phantom.json").exists():
        phantom.write_dataset(out / "phantom", 3, 1, 1, seed=0)
    rows = []
    for name in args.presets:
        cfg = get_preset(name)
        for module in args.modules:
            for variant in args.variants:
                precision, jit = VARIANTS[variant]
                step, batch, voxels = module_steps(cfg, module, precision, jit)
                sec = time_steps(step, batch, args.steps)
                rows.append({"preset": name, "module": module, "variant": variant,
                             "shape": "x".join(map(str, batch[0].shape)), "seconds": sec,
                             "steps_per_s": 1 / sec, "voxels_per_s": voxels / sec,
                             "peak_mb": peak_mb()})
                print(f"{name:6s} {module:9s} {variant:9s} {1 / sec:7.2f} steps/s", flush=True)
        rate = pipeline_rate(cfg, out / "phantom", args.pipeline_batches)
        step_rate = next((r["steps_per_s"] for r in rows if r["preset"] == name
                          and r["module"] == "maunet" and r["variant"] == "float32"), np.nan)
        rows.append({"preset": name, "module": "pipeline (maunet batches)", "variant": "tf.data",
                     "shape": f"{cfg.train.batch_size}x{'x'.join(map(str, cfg.data.roi_size))}",
                     "seconds": 1 / rate, "steps_per_s": rate,
                     "pipeline_over_step": rate / step_rate, "peak_mb": peak_mb()})
        if args.predict_volume:
            rows += predict_rows(name, out, tuple(args.predict_volume))
    df = pd.DataFrame(rows)
    df.insert(0, "device", _device())
    df.to_csv(out / "speed.csv", index=False)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(df.drop(columns="device").to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    print(f"device: {_device()}; wrote {out / 'speed.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
