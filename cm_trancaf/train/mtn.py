"""MTN training and translation (``cm-trancaf train-mtn``, ``cm-trancaf translate``).

Training (one iteration, SPEC module 1; CycleGAN, Zhu et al. 2017):
    1. fake_c = G_c(m), fake_m = G_m(c)                       (m: MRI patch, c: CT patch)
    2. rec_m = G_m(fake_c), rec_c = G_c(fake_m)                (cycle)
    3. same_c = G_c(c), same_m = G_m(m)                        (identity)
    4. L_G = L_GAN(D_c(fake_c)) + L_GAN(D_m(fake_m)) + lambda * L_cycle + w_id * L_identity
    5. update G_c, G_m
    6. fakes go through the image pools (history of 50)
    7. L_D = 0.5 * (L(D(real), 1) + L(D(pooled fake), 0)) for D_c and D_m; update D_c, D_m
Run folder: ``config.json``, ``mtn.json`` (source/target modality), ``ckpt/``, ``log.csv``, ``tb/``,
``samples.png``. Translation writes ``<case>_image.nii.gz`` (synthetic target, on the source
image's grid), ``<case>_label.nii.gz`` (the source label file, copied byte for byte) and
``manifest.csv``.
"""
from __future__ import annotations

import csv
import json
import shutil
import time
from pathlib import Path

import keras
import numpy as np
import SimpleITK as sitk
import tensorflow as tf

from ..config import ExperimentConfig, load_config, save_config
from ..data.datasets import Case, find_cases
from ..data.io import case_id_of, list_images, read_image, write_image
from ..data.pipeline import patch_dataset
from ..data.preprocess import Prepared, prepare, resample
from ..losses import (adversarial_bce, adversarial_lsgan, cycle_l1, discriminator_loss,
                      identity_l1)
from ..models.mtn import ImagePool, build_mtn
from ..utils import UserError, atomic_path, atomic_write_text
from .loop import Run, restore, train_loop
from .scale import distribute, get_strategy, make_optimizer, make_step, precision_policy, scatter

__all__ = ["lr_at", "make_mtn_steps", "train_mtn", "translate_volume", "translate_folder"]


def lr_at(step: int, cfg) -> float:
    """Constant, then linear decay to 0 over the last ``1 - decay_from`` of the steps."""
    d = int(cfg.decay_from * cfg.steps)
    if step < d or cfg.steps <= d:
        return cfg.lr
    return cfg.lr * max(0.0, 1.0 - (step - d) / (cfg.steps - d))


def make_mtn_steps(nets: dict, opt_g, opt_d, cfg, strategy=None, jit_compile: bool = False):
    """The generator and discriminator steps (``scale.make_step``: any tf.distribute strategy).

    ``gen_step(m, c) -> (logs, {"fake_c", "fake_m"})`` with the fakes gathered over replicas;
    ``disc_step(m, c, fake_c, fake_m) -> logs``."""
    strategy = strategy or tf.distribute.get_strategy()
    g_vars = nets["G_c"].trainable_variables + nets["G_m"].trainable_variables
    d_vars = nets["D_c"].trainable_variables + nets["D_m"].trainable_variables
    adv = adversarial_lsgan if cfg.gan_loss == "lsgan" else adversarial_bce
    G_c, G_m, D_c, D_m = nets["G_c"], nets["G_m"], nets["D_c"], nets["D_m"]

    def gen_loss(m, c):
        fake_c, fake_m = G_c(m, training=True), G_m(c, training=True)          # 1
        rec_m, rec_c = G_m(fake_c, training=True), G_c(fake_m, training=True)  # 2
        same_c, same_m = G_c(c, training=True), G_m(m, training=True)          # 3
        l_gan = adv(D_c(fake_c)) + adv(D_m(fake_m))
        l_cyc = cycle_l1(m, rec_m) + cycle_l1(c, rec_c)
        l_id = identity_l1(c, same_c) + identity_l1(m, same_m)
        loss = l_gan + cfg.lam * l_cyc + cfg.identity_weight * l_id                 # 4
        logs = {"loss/G": loss, "loss/gan": l_gan, "loss/cycle": l_cyc, "loss/identity": l_id}
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


def train_mtn(cfg: ExperimentConfig, data_root, run_dir, layout: str = "mmwhs",
              source: dict | None = None, target: dict | None = None,
              cases: tuple[list[Case], list[Case]] | None = None) -> dict:
    """Train G_c (source -> target) on unpaired patches. MM-WHS default: mr_train -> ct_train.

    ``cases`` (source cases, target cases) replaces the data set's listing, e.g. the MS-CMRSeg LGE
    patients of an experiment's training split; their labels are not read."""
    run_dir, m = Path(run_dir), cfg.mtn
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
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.json")
    atomic_write_text(run_dir / "mtn.json", json.dumps(
        {"source_modality": src_mod, "target_modality": tgt_mod, "data_root": str(data_root),
         "source": [p.case_id for p in src], "target": [p.case_id for p in tgt]}, indent=2))
    keras.utils.set_random_seed(cfg.train.seed)
    t = cfg.train
    strategy = get_strategy(t.strategy)
    with strategy.scope(), precision_policy(t.precision):
        nets = build_mtn(m)
        opt_g, opt_d = _optimizers(m, t.precision)
        opt_g.build(nets["G_c"].trainable_variables + nets["G_m"].trainable_variables)
        opt_d.build(nets["D_c"].trainable_variables + nets["D_m"].trainable_variables)
    gen_step, disc_step = make_mtn_steps(nets, opt_g, opt_d, m, strategy, t.jit_compile)
    pool_c = ImagePool(m.pool_size, m.patch_size, cfg.train.seed)
    pool_m = ImagePool(m.pool_size, m.patch_size, cfg.train.seed + 1)

    def iteration(mr, ct):
        logs, fakes = gen_step(mr, ct)
        if float(logs["nonfinite"]):          # no update of G: do not feed its output to D
            return {**logs, "loss/D_c": float("nan"), "loss/D_m": float("nan")}
        fc = pool_c.query(fakes["fake_c"].numpy())                                   # 6
        fm = pool_m.query(fakes["fake_m"].numpy())
        d_logs = disc_step(mr, ct, scatter(strategy, fc), scatter(strategy, fm))
        return {**logs, **d_logs, "nonfinite": max(float(logs["nonfinite"]),
                                                    float(d_logs["nonfinite"]))}

    def batches(start):
        a = patch_dataset([p.image for p in src], m.patch_size, m.batch_size, cfg.train.seed, start,
                          foreground=m.foreground)
        b = patch_dataset([p.image for p in tgt], m.patch_size, m.batch_size, cfg.train.seed + 7,
                          start, foreground=m.foreground)
        return distribute(strategy, tf.data.Dataset.zip((a, b)))

    def schedule(step):
        lr = lr_at(step, m)
        opt_g.learning_rate.assign(lr)
        opt_d.learning_rate.assign(lr)

    every = max(1, m.steps // 4)
    pools = (pool_c, pool_m)
    run = Run(run_dir, m.steps, max(1, min(cfg.train.log_every, m.steps // 10 or 1)), every,
              every, m.batch_size, {**nets, "opt_g": opt_g, "opt_d": opt_d, "pool_c": pool_c,
                                    "pool_m": pool_m}, None, "loss/cycle", False, "mtn", schedule,
              on_nonfinite=cfg.train.on_nonfinite, deterministic=cfg.train.deterministic,
              on_save=lambda: [p.store() for p in pools],
              on_restore=lambda: [p.load() for p in pools])
    return train_loop(run, batches, iteration)


def load_generator(run_dir: Path):
    run_dir = Path(run_dir)
    if not (run_dir / "mtn.json").is_file():
        raise UserError(f"{run_dir}: not a train-mtn run folder (no mtn.json)")
    cfg = load_config(run_dir / "config.json")
    meta = json.loads((run_dir / "mtn.json").read_text())
    nets = build_mtn(cfg.mtn)
    restore(run_dir, "last", **nets)
    return cfg, meta, nets["G_c"]


def _window(size) -> np.ndarray:
    """Separable blending weights, high in the middle, small but > 0 at the border."""
    w = [np.sin(np.linspace(0.5, s - 0.5, s) * np.pi / s) + 1e-3 for s in size]
    return (w[0][:, None, None] * w[1][None, :, None] * w[2][None, None, :]).astype(np.float32)


def translate_volume(generator, vol: np.ndarray, patch_size, batch: int = 4) -> np.ndarray:
    """Sliding-window G(vol) with half-patch overlap and smooth blending (no seams)."""
    ps = np.asarray(patch_size)
    shape = np.maximum(np.asarray(vol.shape), ps)
    padded = np.full(tuple(shape), -1.0, np.float32)
    padded[: vol.shape[0], : vol.shape[1], : vol.shape[2]] = vol
    starts = [sorted(set(list(range(0, n - p + 1, max(1, p // 2))) + [n - p]))
              for n, p in zip(shape, ps)]
    corners = [(a, b, c) for a in starts[0] for b in starts[1] for c in starts[2]]
    acc, wsum, w = np.zeros(tuple(shape), np.float32), np.zeros(tuple(shape), np.float32), _window(ps)
    for i in range(0, len(corners), batch):
        group = corners[i:i + batch]
        x = np.stack([padded[a:a + ps[0], b:b + ps[1], c:c + ps[2]] for a, b, c in group])[..., None]
        y = np.asarray(generator(x, training=False))[..., 0]
        for (a, b, c), out in zip(group, y):
            acc[a:a + ps[0], b:b + ps[1], c:c + ps[2]] += out * w
            wsum[a:a + ps[0], b:b + ps[1], c:c + ps[2]] += w
    return (acc / wsum)[: vol.shape[0], : vol.shape[1], : vol.shape[2]]


def _denormalize(y: np.ndarray, modality: str, cfg: ExperimentConfig) -> np.ndarray:
    if modality == "ct":                                    # back to HU
        lo, hi = cfg.data.ct_window
        return ((y + 1.0) / 2.0 * (hi - lo) + lo).astype(np.float32)
    return ((y + 1.0) * 500.0).astype(np.float32)           # MRI: arbitrary units >= 0


def translate_folder(run_dir, inputs, out_dir, layout: str = "mmwhs-folder",
                     overwrite: bool = False) -> list[dict]:
    """Translate every image in ``inputs`` (folder or file); labels beside them are copied."""
    cfg, meta, g_c = load_generator(Path(run_dir))
    out_dir = Path(out_dir)
    images = list_images(Path(inputs))
    rows = []
    for path in images:
        cid = case_id_of(path)
        img_out, lab_out = out_dir / f"{cid}_image.nii.gz", out_dir / f"{cid}_label.nii.gz"
        label = _label_beside(path)
        if img_out.exists() and not overwrite:
            rows.append({"case": cid, "source_image": str(path), "source_label": str(label or ""),
                         "image": str(img_out), "label": str(lab_out if label else ""),
                         "seconds": 0.0})
            continue
        t0 = time.time()
        image = read_image(path)
        prep = prepare(image, None, cfg.data, meta["source_modality"], 2, cid)
        fake = translate_volume(g_c, prep.image, cfg.mtn.patch_size)
        work = sitk.GetImageFromArray(_denormalize(fake, meta["target_modality"], cfg))
        prep.grid.apply(work)
        background = float(_denormalize(np.array([-1.0]), meta["target_modality"], cfg)[0])
        synthetic = resample(work, prep.source, sitk.sitkLinear, background)
        prep.source.apply(synthetic)
        if label is not None:  # the MRI's label map carries over unchanged, byte for byte
            with atomic_path(lab_out) as tmp:
                shutil.copyfile(label, tmp)
        write_image(synthetic, img_out)
        rows.append({"case": cid, "source_image": str(path), "source_label": str(label or ""),
                     "image": str(img_out), "label": str(lab_out if label else ""),
                     "seconds": round(time.time() - t0, 2)})
    with atomic_path(out_dir / "manifest.csv") as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    return rows


def _label_beside(image: Path) -> Path | None:
    name = image.name
    for a, b in (("_image", "_label"), (".nii", "_manual.nii")):
        cand = image.with_name(name.replace(a, b, 1))
        if cand != image and cand.exists():
            return cand
    return None
