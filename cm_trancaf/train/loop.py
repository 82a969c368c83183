"""The training loop shared by every module (nanoGPT's outer loop around a ``tf.function`` step).

    step_fn = make_step(...)                        # @tf.function, traced once (fixed shapes)
    for step in range(start, steps):
        logs = step_fn(*next(batches))              # dict of scalar tensors
        non-finite loss or gradient (``apply_if_finite``): weights untouched; stop or skip
        log every ``log_every``  -> log.csv, TensorBoard, progress bar
        validate every ``val_every`` -> best checkpoint when the metric improves
        checkpoint every ``ckpt_every`` -> last checkpoint (model, optimizer, step)

Run folder: ``config.json``, ``ckpt/last/``, ``ckpt/best/``, ``log.csv``, ``tb/``,
``summary.json``. Resume: the last checkpoint gives the step; the data pipeline restarts at sample
``step * batch`` (its samples are seeded by index), so a resumed run sees the same data. A
checkpoint that cannot be read (half-written, corrupt) is skipped for the previous one, with a
warning. With ``run.deterministic`` (TF op determinism, one inter-op thread:
:func:`use_determinism`) a killed and resumed run ends with the same weights, bit for bit, as an
uninterrupted one (``tests/test_reliability.py``).

Checkpoint I/O (the flat variable maps, fallback past unreadable checkpoints): ``checkpoint``.
"""
from __future__ import annotations

import csv
import json
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import keras
import tensorflow as tf
from tqdm import tqdm

from ..checkpoint import restore_latest, variables_checkpoint
from ..utils import UserError, atomic_write_text

__all__ = ["Run", "train_loop", "apply_if_finite", "NonFiniteError", "use_determinism"]


class NonFiniteError(FloatingPointError):
    """A NaN/Inf loss or gradient: training stopped, weights and checkpoints left as they were."""


def apply_if_finite(optimizer, loss, grads, variables, apply_grads=None):
    """Apply the update only when the loss and every gradient are finite (inside ``tf.function``);
    returns the flag ``nonfinite`` (1.0 when the step was not applied) for the loop to act on.

    Under a tf.distribute strategy the replicas first agree (all-reduce), then the condition is
    taken in cross-replica context, as Keras' LossScaleOptimizer does: a ``tf.cond`` in replica
    context may not contain the optimizer's gradient all-reduce. ``apply_grads``: gradients to
    apply instead of ``grads`` (which are then only checked)."""
    finite = tf.math.is_finite(loss)
    for g in grads:
        if g is not None:
            finite = tf.logical_and(finite, tf.reduce_all(tf.math.is_finite(g)))
    to_apply = list(grads if apply_grads is None else apply_grads)

    def apply(to_apply):
        optimizer.apply_gradients(zip(to_apply, variables))

    ctx = tf.distribute.get_replica_context()
    if not tf.distribute.has_strategy() or ctx is None:
        def apply_one():
            apply(to_apply)
            return tf.constant(0.0)
        return tf.cond(finite, apply_one, lambda: tf.constant(1.0))

    bad = ctx.all_reduce(tf.distribute.ReduceOp.SUM, tf.cast(tf.logical_not(finite), tf.float32))

    def cross_replica(strategy, bad, to_apply):
        ok = tf.equal(strategy.experimental_local_results(bad)[0], 0.0)   # the same on all

        def apply_all():
            strategy.extended.call_for_each_replica(apply, args=(to_apply,))
            return tf.constant(0.0)
        return tf.cond(ok, apply_all, lambda: tf.constant(1.0))
    return ctx.merge_call(cross_replica, args=(bad, to_apply))


@dataclass(kw_only=True)
class Run:
    """What a training loop needs besides the step function."""
    run_dir: Path
    steps: int
    log_every: int
    val_every: int
    ckpt_every: int
    batch_size: int
    objects: dict                                   # name -> model / optimizer to checkpoint
    validate: Callable[[], dict] | None = None      # returns {"metric": value, ...}
    metric: str = "val/dice"
    higher_is_better: bool = True
    desc: str = "train"
    schedule: Callable[[int], None] | None = None    # called before each step (e.g. set the lr)
    on_nonfinite: str = "stop"                      # stop | skip (a step whose update is dropped)
    deterministic: bool = False                     # TF op determinism (bitwise resume)
    on_save: Callable[[], None] | None = None       # before a checkpoint (e.g. image pools)
    on_restore: Callable[[], None] | None = None    # after resuming from one


def use_determinism() -> bool:
    """TF op determinism plus ONE inter-op thread; True when both hold.

    Op determinism alone is not enough on the CPU: with several inter-op threads, independent ops
    of a step run concurrently and, about one run in four, the MTN's weights (GroupNorm betas and
    their Adam moments) differ in the last bit between two identical runs (15 runs: 4 differed;
    with one inter-op thread 15 of 15 were identical). The thread count is fixed when TensorFlow's
    runtime starts: call this first (the CLI does, before anything else starts the runtime); if
    the runtime is already running with more threads, a warning says that bitwise reproducibility
    is not guaranteed."""
    tf.config.experimental.enable_op_determinism()
    if tf.config.threading.get_inter_op_parallelism_threads() == 1:
        return True
    try:
        tf.config.threading.set_inter_op_parallelism_threads(1)
        return True
    except RuntimeError:
        warnings.warn("run.deterministic: TensorFlow's runtime was started with several inter-op "
                      "threads, so concurrent ops may change the last bits of a run; call "
                      "cm_trancaf.train.loop.use_determinism() before anything else uses "
                      "TensorFlow", RuntimeWarning, stacklevel=2)
        return False


def train_loop(run: Run, make_batches: Callable[[int], object], step_fn: Callable) -> dict:
    """Run (or resume) training; returns the summary written to ``summary.json``."""
    if run.on_nonfinite not in ("stop", "skip"):
        raise UserError(f"run.on_nonfinite must be stop|skip, got {run.on_nonfinite!r}")
    if run.deterministic:
        use_determinism()
    run.run_dir.mkdir(parents=True, exist_ok=True)
    step_var = tf.Variable(0, dtype=tf.int64)
    ckpt = variables_checkpoint(step=step_var, **run.objects)
    last = tf.train.CheckpointManager(ckpt, str(run.run_dir / "ckpt" / "last"), max_to_keep=2)
    best = tf.train.CheckpointManager(ckpt, str(run.run_dir / "ckpt" / "best"), max_to_keep=1)
    best_value = -math.inf if run.higher_is_better else math.inf
    state_file = run.run_dir / "best.json"
    if restore_latest({"step": step_var, **run.objects}, run.run_dir / "ckpt" / "last"):
        if run.on_restore is not None:
            run.on_restore()
        if state_file.exists():
            best_value = json.loads(state_file.read_text())["value"]
    def save(manager, step: int) -> None:
        step_var.assign(step)
        if run.on_save is not None:      # e.g. copy the MTN image pools into their variables
            run.on_save()
        manager.save(checkpoint_number=step)

    start = int(step_var.numpy())
    batches = iter(make_batches(start * run.batch_size))
    writer = tf.summary.create_file_writer(str(run.run_dir / "tb"))
    log_path = run.run_dir / "log.csv"
    t0, logs, skipped = time.time(), {}, 0
    bar = tqdm(range(start, run.steps), initial=start, total=run.steps, desc=run.desc,
               leave=False, dynamic_ncols=True, mininterval=2.0)
    for step in bar:
        if run.schedule is not None:
            run.schedule(step)
        logs = dict(step_fn(*next(batches)))
        if float(logs.pop("nonfinite", 0.0)) > 0:           # the update was not applied
            if run.on_nonfinite == "stop":
                raise NonFiniteError(
                    f"{run.desc}: non-finite loss or gradient at step {step} "
                    f"({ {k: float(v) for k, v in logs.items()} }); weights not updated, "
                    f"last good checkpoint: {last.latest_checkpoint or 'none yet'}")
            skipped += 1
            tqdm.write(f"{run.desc}: step {step} skipped (non-finite loss or gradient)")
        if step % run.log_every == 0 or step == run.steps - 1:
            row = {"step": step, **{k: float(v) for k, v in logs.items()}}
            _append_csv(log_path, row)
            with writer.as_default(step=step):
                for k, v in row.items():
                    if k != "step":
                        tf.summary.scalar(k, v)
            bar.set_postfix({k: f"{v:.4f}" for k, v in row.items() if k != "step"})
        done = step + 1
        if run.validate is not None and (done % run.val_every == 0 or done == run.steps):
            val = run.validate()
            with writer.as_default(step=step):
                for k, v in val.items():
                    tf.summary.scalar(k, v)
            _append_csv(run.run_dir / "val.csv", {"step": done, **val})
            value = val[run.metric]
            if (value > best_value) if run.higher_is_better else (value < best_value):
                best_value = value
                save(best, done)
                atomic_write_text(state_file, json.dumps({"step": done, "value": value}))
        if done % run.ckpt_every == 0 or done == run.steps:
            save(last, done)
    bar.close()
    writer.flush()
    if run.validate is None and not best.latest_checkpoint:
        save(best, run.steps)
    final = {k: float(v) for k, v in logs.items()}
    if run.validate is None:  # no validation: the last checkpoint is the one to use
        best_value = final.get(run.metric, float("nan"))
    summary = {"steps": run.steps, "seconds": round(time.time() - t0, 1), "final": final,
               "best": {run.metric: best_value}, "skipped_nonfinite": skipped}
    atomic_write_text(run.run_dir / "summary.json", json.dumps(summary, indent=2))
    return summary


def _append_csv(path: Path, row: dict) -> None:
    new = not path.exists()
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(row))
        if new:
            w.writeheader()
        w.writerow(row)
