"""Can the MTN's discriminator D_c tell source patches from target patches when G is the identity?

A D_c (``mtn.*`` of the preset: width, layers, ``disc_norm``, patch size, patch sampling) trains
alone, with the LSGAN loss, on target patches as real and untranslated source patches as fake,
then scores patches of held-out patients of both: accuracy (D > 0.5 on target, < 0.5 on source,
averaged). Chance is 0.5 and a D loss of 0.25. On the MS-CMRSeg cohort of
``experiments/mscmrseg_lge.py`` (source bSSFP, target the LGE patients its MTN learns from; the
experiment's test patients are not read), the last ``--held-out`` share of each list's patients
is held out. If D cannot separate them, the MTN's adversarial term gives G no direction.

    python benchmarks/disc_separation.py --data data/mscmrseg_fixed --steps 3000 \\
        --set mtn.disc_norm=False --out results/disc_separation/no_norm.csv

Writes ``--out`` (one row per report: step, D loss over the last steps, held-out accuracy and
mean D outputs) and prints it.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

SCORED_PATCHES = 100                       # held-out patches of each domain per report


def separation(disc, real, fake, real_held, fake_held, steps: int, lr: float, beta_1: float,
               report_every: int) -> list[dict]:
    """Train ``disc`` alone (LSGAN: real -> 1, fake -> 0; Adam) on batches from the iterators
    ``real`` and ``fake``; every ``report_every`` steps score ``SCORED_PATCHES`` patches of each
    held-out iterator. Returns one dict per report."""
    import keras
    import tensorflow as tf
    opt = keras.optimizers.Adam(lr, beta_1=beta_1)

    @tf.function
    def step(r, f):
        with tf.GradientTape() as tape:
            loss = 0.5 * (tf.reduce_mean((disc(r, training=True) - 1.0) ** 2)
                          + tf.reduce_mean(disc(f, training=True) ** 2))
        opt.apply_gradients(zip(tape.gradient(loss, disc.trainable_variables),
                                disc.trainable_variables))
        return loss

    rows, losses, t0 = [], [], time.time()
    for s in range(1, steps + 1):
        losses.append(float(step(next(real), next(fake))))
        if s % report_every == 0 or s == steps:
            d_real = np.array([float(np.mean(disc(next(real_held)))) for _ in range(SCORED_PATCHES)])
            d_fake = np.array([float(np.mean(disc(next(fake_held)))) for _ in range(SCORED_PATCHES)])
            rows.append({"step": s, "d_loss": float(np.mean(losses[-report_every:])),
                         "accuracy": float((np.mean(d_real > 0.5) + np.mean(d_fake < 0.5)) / 2),
                         "d_real": float(d_real.mean()), "d_fake": float(d_fake.mean()),
                         "seconds": round(time.time() - t0, 1)})
    return rows


def main(argv=None) -> int:
    # the benchmark beside this one (benchmarks/ is on sys.path when run as a script): the
    # experiment's MTN cases and the options that choose them
    from mtn_anatomy import add_cohort_arguments, mtn_cases
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="MS-CMRSeg root (C0/, LGE/)")
    p.add_argument("--preset", default="cmr_cpu")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--lr", type=float, default=None, help="default: mtn.lr")
    p.add_argument("--report-every", type=int, default=500)
    p.add_argument("--held-out", type=float, default=0.2, help="share of each domain's patients")
    p.add_argument("--seed", type=int, default=0)
    add_cohort_arguments(p)
    p.add_argument("--out", required=True, help="CSV file")
    args = p.parse_args(argv)

    import keras
    from cm_trancaf.config import apply_overrides, get_preset
    from cm_trancaf.data.io import read_image
    from cm_trancaf.data.pipeline import patch_dataset
    from cm_trancaf.data.preprocess import prepare
    from cm_trancaf.models.mtn import Discriminator
    from cm_trancaf.utils import UserError

    cfg = apply_overrides(get_preset(args.preset), ["data.labels=mscmrseg"] + args.overrides)
    m = cfg.mtn
    lr = args.lr or m.lr
    if not 0 < args.held_out < 1:
        raise UserError(f"--held-out must be in (0, 1), got {args.held_out}")
    _, source, target = mtn_cases(Path(args.data), args.n_train, args.n_unlabelled,
                                  args.split_seed)

    def volumes(cases):
        return [prepare(read_image(c.image), None, cfg.data, "mr", 2, c.case_id).image
                for c in cases]

    def split(cases):
        n_held = max(1, int(round(args.held_out * len(cases))))
        return volumes(cases[:-n_held]), volumes(cases[-n_held:])

    (src_train, src_held), (tgt_train, tgt_held) = split(source), split(target)

    def patches(images, seed):
        return iter(patch_dataset(images, m.patch_size, 1, seed, foreground=m.foreground))

    keras.utils.set_random_seed(args.seed)
    disc = Discriminator(m)
    rows = separation(disc, patches(tgt_train, args.seed), patches(src_train, args.seed + 7),
                      patches(tgt_held, args.seed + 100), patches(src_held, args.seed + 101),
                      args.steps, lr, m.beta_1, args.report_every)
    table = pd.DataFrame(rows)
    table.insert(0, "setting", " ".join(args.overrides) or args.preset)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False)
    print(f"D_c alone, {len(src_train)} / {len(src_held)} source and {len(tgt_train)} / "
          f"{len(tgt_held)} target patients (train / held out), lr {lr}:")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
