"""MTN training (``cm-trancaf train-mtn``; translation: ``inference``, ``translate``).

Training (one iteration, SPEC module 1; CycleGAN, Zhu et al. 2017):
    1. fake_c = G_c(m), fake_m = G_m(c)                       (m: MRI patch, c: CT patch)
    2. rec_m = G_m(fake_c), rec_c = G_c(fake_m)                (cycle)
    3. same_c = G_c(c), same_m = G_m(m)                        (identity)
    4. L_G = L_GAN(D_c(fake_c)) + L_GAN(D_m(fake_m)) + lambda * L_cycle + w_id * L_identity
       [+ w_s * L_shape, beyond the paper (``mtn.shape_weight``, off in every preset of the paper):
       L_shape = L_Dice + lambda_f * L_Focal of S_t(G_c(x_s)) against y_s, where (x_s, y_s) is a
       labelled source ROI and S_t the frozen MAUNet of a cascade trained on real target images
       (the shape-consistency idea of Zhang et al., CVPR 2018, with S_t fixed)]
    5. update G_c, G_m
    6. fakes go through the image pools (history of 50)
    7. L_D = 0.5 * (L(D(real), 1) + L(D(pooled fake), 0)) for D_c and D_m; update D_c, D_m
Run folder: ``config.json``, ``mtn.json`` (source/target modality), ``ckpt/``, ``log.csv``, ``tb/``.
"""
from __future__ import annotations

import json
from pathlib import Path

import keras
import tensorflow as tf

from ..config import ExperimentConfig, SegTrainConfig, save_config
from ..data.datasets import Case, find_cases
from ..data.io import read_image
from ..data.pipeline import patch_dataset, roi_dataset
from ..data.preprocess import Prepared, prepare
from ..inference import Cascade, anatomy_monitor, check_precision, precision_policy
from ..losses import (adversarial_bce, adversarial_lsgan, cycle_l1, dice_focal,
                      discriminator_loss, identity_l1)
from ..models.mtn import ImagePool, build_mtn
from ..utils import UserError, atomic_write_text
from .loop import Run, train_loop
from .scale import distribute, get_strategy, make_optimizer, make_step, scatter

__all__ = ["lr_at", "make_mtn_steps", "train_mtn"]


def lr_at(step: int, cfg) -> float:
    """Constant, then linear decay to 0 over the last ``1 - decay_from`` of the steps."""
    d = int(cfg.decay_from * cfg.steps)
    if step < d or cfg.steps <= d:
        return cfg.lr
    return cfg.lr * max(0.0, 1.0 - (step - d) / (cfg.steps - d))


def make_mtn_steps(nets: dict, opt_g, opt_d, cfg, strategy=None, jit_compile: bool = False,
                   segmenter=None, seg_train: SegTrainConfig | None = None):
    """The generator and discriminator steps (``scale.make_step``: any tf.distribute strategy).

    ``gen_step(m, c) -> (logs, {"fake_c", "fake_m"})`` with the fakes gathered over replicas;
    ``disc_step(m, c, fake_c, fake_m) -> logs``. With ``segmenter`` (S_t, frozen) and
    ``cfg.shape_weight`` > 0: ``gen_step(m, c, x_s, y_s)`` adds the shape term of the labelled
    source ROIs ``x_s (B, D, H, W, 1)``, one-hot ``y_s (B, D, H, W, K)`` (``seg_train``: the
    segmenter's training config, whose lambda_f and gamma its loss uses; default the defaults)."""
    seg_train = seg_train or SegTrainConfig()
    strategy = strategy or tf.distribute.get_strategy()
    g_vars = nets["G_c"].trainable_variables + nets["G_m"].trainable_variables
    d_vars = nets["D_c"].trainable_variables + nets["D_m"].trainable_variables
    adv = adversarial_lsgan if cfg.gan_loss == "lsgan" else adversarial_bce
    G_c, G_m, D_c, D_m = nets["G_c"], nets["G_m"], nets["D_c"], nets["D_m"]

    def gen_loss(m, c, *shape_batch):
        fake_c, fake_m = G_c(m, training=True), G_m(c, training=True)          # 1
        rec_m, rec_c = G_m(fake_c, training=True), G_c(fake_m, training=True)  # 2
        same_c, same_m = G_c(c, training=True), G_m(m, training=True)          # 3
        l_gan = adv(D_c(fake_c)) + adv(D_m(fake_m))
        l_cyc = cycle_l1(m, rec_m) + cycle_l1(c, rec_c)
        l_id = identity_l1(c, same_c) + identity_l1(m, same_m)
        loss = l_gan + cfg.lam * l_cyc + cfg.identity_weight * l_id                 # 4
        shape = {}
        if shape_batch:                                         # S_t fixed: only G_c learns
            x_s, y_s = shape_batch
            shape["loss/shape"] = dice_focal(
                y_s, segmenter(G_c(x_s, training=True), training=False),
                seg_train.lambda_focal, seg_train.focal_gamma)
            loss = loss + cfg.shape_weight * shape["loss/shape"]
        logs = {"loss/G": loss, "loss/gan": l_gan, "loss/cycle": l_cyc, "loss/identity": l_id,
                **shape}
        return loss, logs, {"fake_c": tf.cast(fake_c, tf.float32),                  # 5
                            "fake_m": tf.cast(fake_m, tf.float32)}

    def disc_loss(m, c, fake_c, fake_m):
        l_dc = discriminator_loss(D_c(c, training=True), D_c(fake_c, training=True), cfg.gan_loss)
        l_dm = discriminator_loss(D_m(m, training=True), D_m(fake_m, training=True), cfg.gan_loss)
        return l_dc + l_dm, {"loss/D_c": l_dc, "loss/D_m": l_dm}                    # 7

    return (make_step(strategy, gen_loss, g_vars, opt_g, jit_compile),
            make_step(strategy, disc_loss, d_vars, opt_d, jit_compile))


def _optimizers(cfg, precision: str = "float32"):
    return tuple(make_optimizer(keras.optimizers.Adam(cfg.lr, beta_1=cfg.beta_1), precision)
                 for _ in range(2))


def _prepare_all(cases: list[Case], cfg: ExperimentConfig, modality: str) -> list[Prepared]:
    return [prepare(read_image(c.image), None, cfg.data, modality, 2, c.case_id) for c in cases]


def _check_shape_segmenter(cfg: ExperimentConfig, ref: Cascade, run) -> None:
    """S_t must see G_c's output as it saw its training ROIs: same grid, normalisation, and a
    ROI that G_c's down- and up-samplings keep."""
    a, b = cfg.data, ref.cfg.data
    for name in ("spacing", "grid_axes", "fit_slice_mm", "modality", "enhance",
                 "enhance_sigma_mm", "enhance_amount"):
        if getattr(a, name) != getattr(b, name):
            raise UserError(f"{run}: the shape term's segmenter has data.{name}="
                            f"{getattr(b, name)!r}, the MTN {getattr(a, name)!r}")
    f = 2 ** cfg.mtn.gen_downsamplings
    if any(s % f for s in b.roi_size):
        raise UserError(f"{run}: ROI {b.roi_size} is not a multiple of {f} "
                        f"(mtn.gen_downsamplings={cfg.mtn.gen_downsamplings})")


def train_mtn(cfg: ExperimentConfig, data_root, run_dir, layout: str = "mmwhs",
              source: dict | None = None, target: dict | None = None,
              cases: tuple[list[Case], list[Case]] | None = None,
              anatomy_run: str | Path | None = None) -> dict:
    """Train G_c (source -> target) on unpaired patches. MM-WHS default: mr_train -> ct_train.

    ``cases`` (source cases, target cases) replaces the data set's listing, e.g. the MS-CMRSeg LGE
    patients of an experiment's training split; their labels are not read. ``anatomy_run``: a
    ``train-seg`` run trained on real target-domain images; with it, each validation logs the
    anatomy G_c keeps (``val/anatomy_dice`` in ``val.csv`` and TensorBoard: the FCN score of
    ``inference.anatomy_monitor`` on the first ``mtn.anatomy_cases`` labelled source cases).
    ``mtn.shape_weight`` > 0 also needs it: its MAUNet is S_t of the shape term, which learns
    from the other labelled source cases (all of them if there are no others)."""
    run_dir, m = Path(run_dir), cfg.mtn
    check_precision(cfg.run.precision, training=True)
    source = source or {"modality": "mr", "split": "train"}
    target = target or {"modality": "ct", "split": "train"}
    src_mod = source.get("modality", "mr") if layout == "mmwhs" else "mr"
    tgt_mod = target.get("modality", "ct") if layout == "mmwhs" else "mr"
    src_cases, tgt_cases = cases or (find_cases(data_root, layout, **source),
                                     find_cases(data_root, layout, **target))
    if cases:
        src_mod, tgt_mod = src_cases[0].modality, tgt_cases[0].modality
    src = _prepare_all(src_cases, cfg, src_mod)
    tgt = _prepare_all(tgt_cases, cfg, tgt_mod)
    anatomy, ref, shaped = None, None, []
    if m.shape_weight > 0 and anatomy_run is None:
        raise UserError("mtn.shape_weight > 0 needs a segmenter trained on real target-domain "
                        "images: --anatomy-run RUN (a train-seg run)")
    if anatomy_run is not None:
        from .seg import prepare_cases
        labelled = [c for c in src_cases if c.label is not None]
        if not labelled:
            raise UserError(f"--anatomy-run: no labelled source cases in {data_root}")
        ref = Cascade.load(anatomy_run)
        monitored = labelled[:m.anatomy_cases]
        sources = prepare_cases(monitored, ref.labelset, ref.cfg)   # on the cascade's grid
        anatomy = anatomy_monitor(ref, sources, m.patch_size, tgt_mod)
        if m.shape_weight > 0:
            _check_shape_segmenter(cfg, ref, anatomy_run)
            shaped = prepare_cases(labelled[m.anatomy_cases:] or labelled, ref.labelset, ref.cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.json")
    atomic_write_text(run_dir / "mtn.json", json.dumps(
        {"source_modality": src_mod, "target_modality": tgt_mod, "data_root": str(data_root),
         "source": [p.case_id for p in src], "target": [p.case_id for p in tgt]}, indent=2))
    r = cfg.run
    keras.utils.set_random_seed(r.seed)
    strategy = get_strategy(r.strategy)
    with strategy.scope(), precision_policy(r.precision):
        nets = build_mtn(m)
        opt_g, opt_d = _optimizers(m, r.precision)
        opt_g.build(nets["G_c"].trainable_variables + nets["G_m"].trainable_variables)
        opt_d.build(nets["D_c"].trainable_variables + nets["D_m"].trainable_variables)
    gen_step, disc_step = make_mtn_steps(
        nets, opt_g, opt_d, m, strategy, r.jit_compile, ref.maunet if shaped else None,
        ref.cfg.train if shaped else None)
    pool_c = ImagePool(m.pool_size, m.patch_size, r.seed)
    pool_m = ImagePool(m.pool_size, m.patch_size, r.seed + 1)

    def iteration(mr, ct, *shape_batch):
        logs, fakes = gen_step(mr, ct, *shape_batch)
        if float(logs["nonfinite"]):          # no update of G: do not feed its output to D
            return {**logs, "loss/D_c": float("nan"), "loss/D_m": float("nan")}
        fc = pool_c.query(fakes["fake_c"].numpy())                                   # 6
        fm = pool_m.query(fakes["fake_m"].numpy())
        d_logs = disc_step(mr, ct, scatter(strategy, fc), scatter(strategy, fm))
        return {**logs, **d_logs, "nonfinite": max(float(logs["nonfinite"]),
                                                    float(d_logs["nonfinite"]))}

    def batches(start):
        a = patch_dataset([p.image for p in src], m.patch_size, m.batch_size, r.seed, start,
                          foreground=m.foreground)
        b = patch_dataset([p.image for p in tgt], m.patch_size, m.batch_size, r.seed + 7,
                          start, foreground=m.foreground)
        if not shaped:
            return distribute(strategy, tf.data.Dataset.zip((a, b)))
        rois = roi_dataset(shaped, ref.cfg.data.roi_size, ref.labelset.num_classes,
                           cfg.augment, m.batch_size, r.seed + 13, start)   # (x_s, y_s)
        return distribute(strategy, tf.data.Dataset.zip((a, b, rois)).map(
            lambda mr, ct, xy: (mr, ct, *xy)))

    def schedule(step):
        lr = lr_at(step, m)
        opt_g.learning_rate.assign(lr)
        opt_d.learning_rate.assign(lr)

    every = max(1, m.steps // max(1, m.validations))
    pools = (pool_c, pool_m)
    run = Run(run_dir=run_dir, steps=m.steps,
              log_every=max(1, min(r.log_every, m.steps // 10 or 1)), val_every=every,
              ckpt_every=every, batch_size=m.batch_size,
              objects={**nets, "opt_g": opt_g, "opt_d": opt_d, "pool_c": pool_c, "pool_m": pool_m},
              validate=(lambda: anatomy(nets["G_c"])) if anatomy else None,
              metric="val/anatomy_dice" if anatomy else "loss/cycle",
              higher_is_better=anatomy is not None, desc="mtn", schedule=schedule,
              on_nonfinite=r.on_nonfinite, deterministic=r.deterministic,
              on_save=lambda: [p.store() for p in pools],
              on_restore=lambda: [p.load() for p in pools])
    return train_loop(run, batches, iteration)
