"""Training-step speed of the networks under Keras' JAX backend (a GPU without TensorFlow).

The networks are Keras layers and ``keras.ops`` only, so the same models build under
``KERAS_BACKEND=jax``. This times one optimiser step of each module at a preset's shapes (the
batch and ROI of ``benchmarks/speed.py``; same losses, Adam), jit-compiled by JAX (XLA), in
float32 and mixed bfloat16. It is the GPU measurement this project could make where only JAX was
installed; the training loops themselves are TensorFlow (``tf.function``), so a TensorFlow GPU
run of ``benchmarks/speed.py`` remains the reference when one is available.

    KERAS_BACKEND=jax PYTHONPATH=. python benchmarks/speed_jax.py --presets paper --steps 20
prints one table and writes ``speed_jax.csv``: seconds per step and steps/s per module and
precision, the device, and the estimated time of the preset's whole training (steps x s/step).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from cm_trancaf.config import get_preset  # noqa: E402
from cm_trancaf.losses import (adversarial_lsgan, cycle_l1, dice_focal,  # noqa: E402
                               discriminator_loss, heatmap_l2, identity_l1)
from cm_trancaf.models.localizer import build_localizer  # noqa: E402
from cm_trancaf.models.maunet import build_maunet  # noqa: E402
from cm_trancaf.models.mtn import build_mtn  # noqa: E402
from cm_trancaf.models.scn import build_scn  # noqa: E402

MODULES = ("localizer", "maunet", "scn", "mtn")
PRECISIONS = {"float32": "float32", "bf16": "mixed_bfloat16"}
K = 8                                       # classes: background + the 7 MM-WHS structures


def _trainer(models: list, loss_of, lr: float = 1e-4, frozen: list = ()):
    """A jit-compiled Adam step of ``models``' trainable variables on ``loss_of``.

    ``loss_of(call, *batch)`` computes the loss, where ``call(i, *args)`` runs network i of
    ``models + frozen`` statelessly; the ``frozen`` networks' weights enter as constants (the
    discriminators in the generator step). Returns (step, state):
    ``step(state, *batch) -> (loss, state)``."""
    nets = list(models) + list(frozen)
    opt = keras.optimizers.Adam(lr)
    tv = [v for m in models for v in m.trainable_variables]
    opt.build(tv)
    sizes = [len(m.trainable_variables) for m in models]
    consts = [[v.value for v in m.trainable_variables] for m in frozen]

    def split(flat):
        out, i = [], 0
        for n in sizes:
            out.append(flat[i:i + n])
            i += n
        return out + consts

    def loss_fn(train, fixed, *batch):
        parts = split(train)

        def call(i, *args, training=True):
            y, _ = nets[i].stateless_call(parts[i], fixed[i], *args, training=training)
            return y
        return loss_of(call, *batch)

    grad = jax.value_and_grad(loss_fn)

    @jax.jit
    def step(state, *batch):
        train, fixed, opt_vars = state
        loss, g = grad(train, fixed, *batch)
        train, opt_vars = opt.stateless_apply(opt_vars, g, train)
        return loss, (train, fixed, opt_vars)
    state = ([v.value for v in tv], [[v.value for v in m.non_trainable_variables] for m in nets],
             [v.value for v in opt.variables])
    return step, state


def module_step(cfg, module: str):
    """(step, state, batch, batch voxels) of one module at the preset's shapes."""
    rng = np.random.default_rng(0)
    if module == "mtn":
        m = cfg.mtn
        nets = build_mtn(m)
        shape = (m.batch_size, *m.patch_size, 1)
        mr, ct = (rng.normal(size=shape).astype("float32") for _ in range(2))
        G_c, G_m, D_c, D_m = (nets[k] for k in ("G_c", "G_m", "D_c", "D_m"))

        def gen_loss(call, m_, c_):                   # G_c: 0, G_m: 1; D_c: 2, D_m: 3 frozen
            fake_c, fake_m = call(0, m_), call(1, c_)
            rec_m, rec_c = call(1, fake_c), call(0, fake_m)
            same_c, same_m = call(0, c_), call(1, m_)
            l_gan = (adversarial_lsgan(call(2, fake_c, training=False))
                     + adversarial_lsgan(call(3, fake_m, training=False)))
            return (l_gan + m.lam * (cycle_l1(m_, rec_m) + cycle_l1(c_, rec_c))
                    + m.identity_weight * (identity_l1(c_, same_c) + identity_l1(m_, same_m)))

        def disc_loss(call, m_, c_):                  # the fakes: the inputs themselves here
            return (discriminator_loss(call(0, c_), call(0, m_), m.gan_loss)
                    + discriminator_loss(call(1, m_), call(1, c_), m.gan_loss))
        # the generator step differentiates G only; D's weights enter it as constants
        g_step, g_state = _trainer([G_c, G_m], gen_loss, m.lr, frozen=[D_c, D_m])
        d_step, d_state = _trainer([D_c, D_m], disc_loss, m.lr)

        def step(state, a, b):
            gs, ds = state
            lg, gs = g_step(gs, a, b)
            ld, ds = d_step(ds, a, b)
            return lg + ld, (gs, ds)
        return step, (g_state, d_state), (mr, ct), int(np.prod(shape))
    t = cfg.train_localizer if module == "localizer" else cfg.train
    size = cfg.localizer.size if module == "localizer" else cfg.data.roi_size
    shape = (t.batch_size, *size)
    x = rng.normal(size=shape + (1,)).astype("float32")
    if module == "localizer":
        lc = cfg.localizer
        y = rng.uniform(size=shape + (1,)).astype("float32")
        step, state = _trainer([build_localizer(lc)], lambda call, x_, y_: lc.loss_scale
                               * heatmap_l2(y_, call(0, x_), lc.peak_weight))
    else:
        y = np.eye(K, dtype="float32")[rng.integers(0, K, shape)]
        if module == "maunet":
            step, state = _trainer([build_maunet(cfg.maunet, K, size)],
                                   lambda call, x_, y_: dice_focal(y_, call(0, x_)))
        else:            # the SCN on a frozen MAUNet's output (its weights are not trained)
            maunet = build_maunet(cfg.maunet, K, size)
            scn = build_scn(cfg.scn, K, size)
            probs = np.asarray(maunet(x, training=False))
            step, state = _trainer([scn], lambda call, p_, x_, y_: dice_focal(
                y_, call(0, p_, x_)))
            return step, state, (probs, x, y), int(np.prod(shape))
    return step, state, (x, y), int(np.prod(shape))


def time_module(cfg, module: str, precision: str, steps: int) -> dict:
    keras.config.set_dtype_policy(PRECISIONS[precision])
    try:
        keras.utils.set_random_seed(0)
        step, state, batch, voxels = module_step(cfg, module)
        batch = tuple(jax.device_put(b) for b in batch)
        t0 = time.perf_counter()
        loss, state = step(state, *batch)                       # compile + first step
        jax.block_until_ready(loss)
        compile_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(steps):
            loss, state = step(state, *batch)
        jax.block_until_ready(loss)
        sec = (time.perf_counter() - t0) / steps
    finally:
        keras.config.set_dtype_policy("float32")
    total = {"localizer": cfg.train_localizer.steps, "maunet": cfg.train.steps,
             "scn": cfg.scn.steps or cfg.train.steps, "mtn": cfg.mtn.steps}[module]
    return {"preset": cfg.name, "module": module, "precision": precision,
            "batch_voxels": voxels, "s_per_step": sec, "steps_per_s": 1.0 / sec,
            "compile_s": compile_s, "loss_finite": bool(np.isfinite(float(loss))),
            "preset_steps": total, "estimated_train_min": total * sec / 60}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", nargs="+", default=["paper"])
    p.add_argument("--modules", nargs="+", default=list(MODULES), choices=MODULES)
    p.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=list(PRECISIONS))
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--out", default="speed_jax.csv")
    args = p.parse_args(argv)
    device = jax.devices()[0]
    rows = []
    for preset in args.presets:
        cfg = get_preset(preset)
        for module in args.modules:
            for precision in args.precisions:
                row = {"device": getattr(device, "device_kind", str(device)),
                       **time_module(cfg, module, precision, args.steps)}
                rows.append(row)
                pd.DataFrame(rows).to_csv(args.out, index=False)      # partial results kept
                print(f"{preset:8s} {module:9s} {precision:8s} {row['s_per_step'] * 1e3:9.1f} "
                      f"ms/step  {row['steps_per_s']:7.2f} steps/s  compile "
                      f"{row['compile_s']:5.1f} s  {row['preset_steps']} steps -> "
                      f"{row['estimated_train_min']:.1f} min", flush=True)
    df = pd.DataFrame(rows)
    df.to_csv(args.out, index=False)
    print(df.to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
