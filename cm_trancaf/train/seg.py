"""Training of the segmentation cascade: localizer, MAUNet, SCN (``cm-trancaf train-seg``).

    run_dir/
      config.json          resolved ExperimentConfig (what predict reloads)
      split.json           training / validation case ids, generated cases used
      localizer/  maunet/  scn/      each: ckpt/{last,best}, log.csv, val.csv, tb/, summary.json

Training data: the real training cases plus round(r * N_generated) synthetic cases from
``cm-trancaf translate`` (chosen reproducibly by the seed). Validation: held-out real cases, Dice
on the ROI at the ground-truth heart centre (MAUNet, SCN) or centre error in mm (localizer).
"""
from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from ..checkpoint import restore
from ..config import ExperimentConfig, SCNConfig, save_config
from ..data.datasets import Case, LabelSet, find_cases, generated_cases, get_labelset, load_case
from ..data.pipeline import localizer_dataset, roi_dataset
from ..data.preprocess import Prepared, crop, foreground_center, prepare
from ..inference import center_errors_mm, check_precision, precision_policy, segment_roi
from ..losses import deep_dice_focal, dice_focal, heatmap_l2
from ..metrics import overlap
from ..models.localizer import build_localizer
from ..models.maunet import build_maunet
from ..models.scn import build_scn
from ..utils import UserError, atomic_write_text
from .loop import Run, train_loop
from .scale import distribute, get_strategy, make_optimizer, make_step

__all__ = ["prepare_cases", "split_cases", "pick_generated", "train_localizer", "train_maunet",
           "corrupt_probs", "train_scn", "train_segmentation", "lr_schedule"]

STAGES = ("localizer", "maunet", "scn")


def prepare_cases(cases: list[Case], labelset: LabelSet, cfg: ExperimentConfig) -> list[Prepared]:
    out = []
    for c in cases:
        image, label = load_case(c, labelset)
        modality = c.modality if c.modality in ("ct", "mr") else cfg.data.modality
        out.append(prepare(image, label, cfg.data, modality, labelset.num_classes, c.case_id,
                           enhanced=c.enhanced))
    return out


def split_cases(cases: list[Case], val_fraction: float = 0.0,
                val_ids: list[str] | None = None) -> tuple[list[Case], list[Case]]:
    """(train, validation): the cases named in ``val_ids``, else the last ceil(fraction * n)
    cases (none when the fraction is 0, as the paper: every label trains, or when n < 2)."""
    if val_ids:
        unknown = sorted(set(val_ids) - {c.case_id for c in cases})
        if unknown:
            raise UserError(f"validation cases {unknown} are not among the training cases")
        return ([c for c in cases if c.case_id not in set(val_ids)],
                [c for c in cases if c.case_id in set(val_ids)])
    if not 0.0 <= val_fraction < 1.0:
        raise UserError(f"data.val_fraction must be in [0, 1), got {val_fraction}")
    n_val = 0 if len(cases) < 2 or val_fraction == 0 else max(1, math.ceil(val_fraction * len(cases)))
    return cases[: len(cases) - n_val], cases[len(cases) - n_val:]


def lr_schedule(t, optimizer) -> Callable[[int], None] | None:
    """``Run.schedule`` for a TrainConfig: None (constant lr) or cosine decay from ``t.lr`` to
    ``t.lr_final * t.lr`` over ``t.steps``."""
    if t.lr_schedule == "constant":
        return None
    if t.lr_schedule != "cosine":
        raise UserError(f"train.lr_schedule must be constant|cosine, got {t.lr_schedule!r}")

    def schedule(step: int) -> None:
        frac = t.lr_final + (1 - t.lr_final) * 0.5 * (1 + math.cos(math.pi * step / max(1, t.steps)))
        optimizer.learning_rate.assign(t.lr * frac)
    return schedule


def pick_generated(cases: list[Case], ratio: float, seed: int) -> list[Case]:
    """round(r * N_generated) synthetic cases, chosen reproducibly from the seed (SPEC ratio r)."""
    if not 0.0 <= ratio <= 1.0:
        raise UserError(f"generated-data ratio must be in [0, 1], got {ratio}")
    k = int(round(ratio * len(cases)))
    order = np.random.default_rng(seed).permutation(len(cases))
    return [cases[i] for i in sorted(order[:k])]


def case_weights(n_real: int, n_extra: int, real_share: float) -> list[float] | None:
    """Sampling probabilities of the training cases (real first, then generated / pooled):
    ``real_share`` of the samples from the real cases, the rest from the others, uniform within
    each group; None (every case equally likely) when real_share is 0 or nothing but real
    cases train."""
    if not 0.0 <= real_share <= 1.0:
        raise UserError(f"data.real_share must be in [0, 1], got {real_share}")
    if real_share == 0.0 or n_extra == 0:
        return None
    return [real_share / n_real] * n_real + [(1.0 - real_share) / n_extra] * n_extra


def _adam(lr):
    return keras.optimizers.Adam(learning_rate=lr)


def _build(cfg: ExperimentConfig, lr: float, build: Callable, extra: list | None = None):
    """(strategy, model, optimizer) built under the strategy's scope and the precision policy of
    ``cfg.run`` (every loop uses its strategy, precision and jit_compile); the optimizer
    updates the model's weights and ``extra`` ones."""
    r = cfg.run
    strategy = get_strategy(r.strategy)
    with strategy.scope(), precision_policy(r.precision):
        model = build()
        opt = make_optimizer(_adam(lr), r.precision)
        opt.build(model.trainable_variables + list(extra or []))
    return strategy, model, opt


def _run(cfg: ExperimentConfig, t, run_dir, objects, validate, metric, higher, desc):
    """The ``Run`` of one network (optimiser settings ``t``, run-wide ``cfg.run``); ``validate``
    None (no validation cases): the last checkpoint is the one used."""
    return Run(run_dir=Path(run_dir), steps=t.steps, log_every=cfg.run.log_every,
               val_every=t.val_every, ckpt_every=t.ckpt_every, batch_size=t.batch_size,
               objects=objects, validate=validate, metric=metric, higher_is_better=higher,
               desc=desc, schedule=lr_schedule(t, objects["optimizer"]),
               on_nonfinite=cfg.run.on_nonfinite, deterministic=cfg.run.deterministic)


def train_localizer(cfg: ExperimentConfig, train: list[Prepared], val: list[Prepared],
                    run_dir: Path) -> dict:
    t, lc = cfg.train_localizer, cfg.localizer
    strategy, model, opt = _build(cfg, t.lr, lambda: build_localizer(lc))

    def loss_fn(x, y):
        loss = lc.loss_scale * heatmap_l2(y, model(x, training=True), peak_weight=lc.peak_weight)
        return loss, {"loss/heatmap": loss}

    def validate():
        err = center_errors_mm(model, val, cfg)
        return {"val/center_error_mm": float(np.mean(err)),
                "val/center_error_max_mm": float(np.max(err))}

    step = make_step(strategy, loss_fn, model.trainable_variables, opt, cfg.run.jit_compile)
    batches = lambda start: distribute(strategy, localizer_dataset(
        train, lc.size, lc.spacing_mm, lc.sigma_mm, cfg.augment, t.batch_size, cfg.run.seed,
        start, lc.center_jitter_mm, lc.intensity, lc.ranks))
    run = _run(cfg, t, run_dir, {"model": model, "optimizer": opt}, validate if val else None,
               "val/center_error_mm", False, "localizer")
    return train_loop(run, batches, step)


def _roi_dice(maunet, scn, cases: list[Prepared], cfg: ExperimentConfig, num_classes: int):
    dice = []
    for c in cases:
        center = foreground_center(c.label)
        roi, _ = crop(c.image, center, cfg.data.roi_size, fill=-1.0)
        lab, _ = crop(c.label, center, cfg.data.roi_size, fill=0)
        pred = np.argmax(segment_roi(maunet, scn, roi), -1)
        dice.append([overlap(pred == k, lab == k)[0] for k in range(1, num_classes)])
    return {"val/dice": float(np.mean(dice))}


def train_maunet(cfg: ExperimentConfig, train: list[Prepared], val: list[Prepared],
                 run_dir: Path, num_classes: int, weights=None) -> dict:
    t = cfg.train
    strategy, model, opt = _build(cfg, t.lr, lambda: build_maunet(cfg.maunet, num_classes,
                                                                  cfg.data.roi_size))

    def loss_fn(x, y):
        if cfg.maunet.deep_supervision:                   # finest first, level l: (B, D/2^l, ..)
            loss = deep_dice_focal(y, model(x, training=True, return_deep=True),
                                   model.pool_sizes, t.lambda_focal, t.focal_gamma,
                                   t.dice_skip_absent)
        else:
            loss = dice_focal(y, model(x, training=True), t.lambda_focal, t.focal_gamma,
                              t.dice_skip_absent)
        return loss, {"loss/dice_focal": loss}

    step = make_step(strategy, loss_fn, model.trainable_variables, opt, cfg.run.jit_compile)
    batches = lambda start: distribute(strategy, roi_dataset(
        train, cfg.data.roi_size, num_classes, cfg.augment, t.batch_size, cfg.run.seed, start,
        weights=weights))
    run = _run(cfg, t, run_dir, {"model": model, "optimizer": opt},
               (lambda: _roi_dice(model, None, val, cfg, num_classes)) if val else None,
               "val/dice", True, "maunet")
    return train_loop(run, batches, step)


def corrupt_probs(probs, scn: SCNConfig, seed):
    """SCN training inputs with errors in blobs, like a MAUNet's outputs on unseen cases (beyond
    the paper, ``scn.input_noise``; README "Choices"). probs (B, D, H, W, K) -> same shape:
    softmax(log max(p, floor) + sigma * n), n ~ N(0, 1) on a grid ``input_noise_cell`` voxels
    coarse, per class, upsampled (nearest) and box-filtered, rescaled to unit std. A confident
    voxel (log-gap to the floor: log(1 / floor)) flips where its class' noise is that much under
    another's; uncertain (boundary) voxels flip more easily. ``seed``: a stateless seed (2,)
    (the step and the run's seed, so a resumed run draws the same noise)."""
    if scn.input_floor <= 0 or scn.input_noise_cell < 1:
        raise UserError(f"scn.input_floor must be > 0 and scn.input_noise_cell >= 1, got "
                        f"{scn.input_floor}, {scn.input_noise_cell}")
    c = scn.input_noise_cell
    shape = tf.shape(probs)
    coarse = tf.concat([shape[:1], (shape[1:4] + c - 1) // c, shape[4:]], 0)
    n = tf.random.stateless_normal(coarse, seed, dtype=probs.dtype)     # (B, D/c, H/c, W/c, K)
    for axis in (1, 2, 3):
        n = tf.repeat(n, c, axis=axis)
    n = n[:, :shape[1], :shape[2], :shape[3]]                           # (B, D, H, W, K)
    n = tf.nn.avg_pool3d(n, ksize=c, strides=1, padding="SAME")
    n = n / (tf.math.reduce_std(n) + 1e-6)
    logits = tf.math.log(tf.maximum(probs, tf.cast(scn.input_floor, probs.dtype)))
    return tf.nn.softmax(logits + tf.cast(scn.input_noise, probs.dtype) * n, axis=-1)


def train_scn(cfg: ExperimentConfig, maunet, train: list[Prepared], val: list[Prepared],
              run_dir: Path, num_classes: int, weights=None) -> dict:
    """SCN on top of the MAUNet output; MAUNet frozen (default) or fine-tuned jointly. ``maunet``
    must have been built under the same strategy's scope (``train_segmentation`` does)."""
    t = cfg.train
    if cfg.scn.steps:
        t = replace(t, steps=cfg.scn.steps)
    joint = not cfg.scn.freeze_maunet
    # jointly fine-tuned: the MAUNet's weights up to its finest head (deep-supervision heads,
    # if any, take no part in the SCN's loss)
    deep = {id(v) for h in maunet.deep_heads for v in h.trainable_variables}
    tuned = [v for v in maunet.trainable_variables if id(v) not in deep] if joint else []
    strategy, scn, opt = _build(cfg, t.lr, lambda: build_scn(cfg.scn, num_classes,
                                                             cfg.data.roi_size),
                                tuned)
    variables = scn.trainable_variables + tuned

    def loss_fn(x, y):
        probs = maunet(x, training=joint)
        if not joint:
            probs = tf.stop_gradient(probs)
        logs = {}
        if cfg.scn.input_noise > 0:
            replica = tf.distribute.get_replica_context().replica_id_in_sync_group
            seed = tf.stack([tf.cast(cfg.run.seed, tf.int64) * 1000 + tf.cast(replica, tf.int64),
                             tf.cast(opt.iterations, tf.int64)])
            clean = probs
            probs = corrupt_probs(probs, cfg.scn, seed)
            logs["input/flipped"] = tf.reduce_mean(tf.cast(
                tf.argmax(probs, -1) != tf.argmax(clean, -1), tf.float32))
        loss = dice_focal(y, scn(probs, x, training=True), t.lambda_focal, t.focal_gamma,
                          t.dice_skip_absent)
        return loss, {"loss/dice_focal": loss, **logs}

    step = make_step(strategy, loss_fn, variables, opt, cfg.run.jit_compile)
    batches = lambda start: distribute(strategy, roi_dataset(
        train, cfg.data.roi_size, num_classes, cfg.augment, t.batch_size, cfg.run.seed + 1, start,
        weights=weights))
    objects = {"model": scn, "optimizer": opt}
    if joint:
        objects["maunet"] = maunet
    run = _run(cfg, t, run_dir, objects,
               (lambda: _roi_dice(maunet, scn, val, cfg, num_classes)) if val else None,
               "val/dice", True, "scn")
    return train_loop(run, batches, step)


def train_segmentation(cfg: ExperimentConfig, data_root: str | Path, run_dir: str | Path,
                       layout: str = "mmwhs", stages=STAGES, generated: str | Path | None = None,
                       codes=None, cases: list[Case] | None = None,
                       extra: list[Case] | None = None, val_ids: list[str] | None = None,
                       **layout_kw) -> dict:
    """Train the requested stages into ``run_dir``; returns {stage: summary}.

    ``cases`` (optional) replaces the data set's training cases, e.g. the training folds of a
    cross-validation. Validation cases (checkpoint selection): ``val_ids``, else the last
    ``data.val_fraction`` of the cases (default none: all train, the last checkpoint is used).
    ``extra`` cases (e.g. another MRI sequence,
    pooled untranslated) train MAUNet and SCN like generated ones and never validate."""
    run_dir = Path(run_dir)
    unknown = set(stages) - set(STAGES)
    if unknown:
        raise UserError(f"unknown stage(s) {sorted(unknown)}; choose from {list(STAGES)}")
    check_precision(cfg.run.precision, training=True)
    if not 0.0 <= cfg.augment.anywhere <= 1.0:
        raise UserError(f"augment.anywhere must be in [0, 1], got {cfg.augment.anywhere}")
    labelset = get_labelset(cfg.data.labels, codes)
    if layout == "mmwhs":
        layout_kw = {"modality": cfg.data.modality, "split": "train", **layout_kw}
    if cases is None:
        cases = find_cases(data_root, layout, **layout_kw)
    if any(c.label is None for c in cases):
        missing = [str(c.image) for c in cases if c.label is None][:3]
        raise UserError(f"training cases without label maps: {missing}")
    train_cases, val_cases = split_cases(cases, cfg.data.val_fraction, val_ids)
    generated_used = []
    if generated is not None:
        generated_used = pick_generated(generated_cases(generated), cfg.data.ratio, cfg.run.seed)
    pooled = list(extra or [])
    if any(c.label is None for c in pooled):
        raise UserError(f"extra training cases without label maps: "
                        f"{[str(c.image) for c in pooled if c.label is None][:3]}")
    extra = generated_used + pooled
    weights = case_weights(len(train_cases), len(extra), cfg.data.real_share)
    train = prepare_cases(train_cases + extra, labelset, cfg)   # every file read and checked
    real_train = train[: len(train_cases)]                      # before anything is written
    val = prepare_cases(val_cases, labelset, cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.json")
    atomic_write_text(run_dir / "split.json", json.dumps({
        "labels": labelset.name, "codes": list(labelset.codes), "data_root": str(data_root),
        "train": [c.case_id for c in train_cases], "val": [c.case_id for c in val_cases],
        "generated": [c.case_id for c in generated_used], "pooled": [c.case_id for c in pooled]},
        indent=2))
    keras.utils.set_random_seed(cfg.run.seed)
    k = labelset.num_classes
    out = {}
    if "localizer" in stages:
        out["localizer"] = train_localizer(cfg, real_train, val, run_dir / "localizer")
    if "maunet" in stages or ("scn" in stages and cfg.scn.enabled):
        if "maunet" in stages:
            out["maunet"] = train_maunet(cfg, train, val, run_dir / "maunet", k, weights)
        with get_strategy(cfg.run.strategy).scope():
            maunet = build_maunet(cfg.maunet, k, cfg.data.roi_size)
        restore(run_dir / "maunet", "best", model=maunet)
        if "scn" in stages and cfg.scn.enabled:
            out["scn"] = train_scn(cfg, maunet, train, val, run_dir / "scn", k, weights)
    return out
