"""Scale and speed options of every training loop: tf.distribute strategy, mixed precision, XLA.

    run.strategy     default (one device) | mirrored (all local GPUs, else all logical CPUs) |
                       multiworker (MultiWorkerMirroredStrategy, cluster from TF_CONFIG)
    run.precision    float32 | mixed_float16 (dynamic loss scaling) | mixed_bfloat16
    run.jit_compile  XLA for the forward and backward pass of each step

A step is built by :func:`make_step` from a loss function of one replica's batch:

    per replica   loss_r = loss_fn(batch_r)            mean over the replica's B / R samples
                  grads_r = d(loss_r / R) / d(theta)     (times the loss scale for float16)
                  Keras' optimizer all-reduces (sums) grads_r over replicas: the gradient of the
                  mean over the global batch B, as on one device
    reported      logs = MEAN over replicas of each replica's logs

The losses are means of per-sample terms (``cm_trancaf.losses``), so R replicas of B / R samples
give one device's loss for the same global batch up to float rounding (``tests/test_scale.py``).
Softmax, the localizer head and every loss stay float32 under mixed precision.
"""
from __future__ import annotations

import os
from typing import Callable

import keras
import tensorflow as tf

from ..utils import UserError
from .loop import apply_if_finite, use_determinism

__all__ = ["STRATEGIES", "get_strategy", "start_runtime", "make_optimizer", "make_step", "scatter",
           "distribute"]

STRATEGIES = ("default", "mirrored", "multiworker")
_CACHE: dict[str, tf.distribute.Strategy] = {}


def get_strategy(name: str) -> tf.distribute.Strategy:
    """The strategy of that name (created once per process, as TF requires for multiworker)."""
    if name not in STRATEGIES:
        raise UserError(f"run.strategy must be one of {STRATEGIES}, got {name!r}")
    if name not in _CACHE:
        if name == "default":
            _CACHE[name] = tf.distribute.get_strategy()
        elif name == "mirrored":
            gpus = tf.config.list_logical_devices("GPU")
            devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
            _CACHE[name] = tf.distribute.MirroredStrategy(
                devices, cross_device_ops=None if gpus else tf.distribute.ReductionToOneDevice())
        else:
            if "TF_CONFIG" not in os.environ:
                raise UserError("run.strategy=multiworker needs the cluster in TF_CONFIG "
                                "(see README, 'Several GPUs and machines')")
            _CACHE[name] = tf.distribute.MultiWorkerMirroredStrategy()
    return _CACHE[name]


def start_runtime(strategy: str, deterministic: bool) -> None:
    """Start TensorFlow's runtime as a process that trains with these ``run.*`` settings needs
    (``import_tensorflow_quietly(start=...)``). Both are fixed at start-up: ``run.deterministic``
    wants one inter-op thread (:func:`use_determinism`), the multiworker strategy configures
    collective ops; otherwise listing the devices starts it."""
    if deterministic:
        use_determinism()
    if strategy != "multiworker":
        tf.config.list_logical_devices()
        return
    try:
        get_strategy("multiworker")
    except UserError:                              # no TF_CONFIG: the command says so
        pass


def make_optimizer(optimizer, precision: str):
    """Wrap the optimizer for float16 (dynamic loss scaling); bfloat16 and float32 need none."""
    if precision == "mixed_float16":
        return keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def _apply_if_finite(optimizer, loss, grads, variables):
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        # overflowing float16 gradients are the loss scaler's business (it lowers the scale and
        # skips the update); only a non-finite loss is an error
        return apply_if_finite(optimizer, loss, [], variables, apply_grads=grads)
    return apply_if_finite(optimizer, loss, grads, variables)


def make_step(strategy: tf.distribute.Strategy, loss_fn: Callable, variables: list, optimizer,
              jit_compile: bool = False) -> Callable:
    """``step(*batch) -> logs``: ``loss_fn(*replica_batch) -> (loss, logs)`` on every replica,
    one synchronised update of ``variables``; logs averaged over replicas, plus ``nonfinite``.

    When ``loss_fn`` returns ``(loss, logs, outputs)``, ``step`` returns ``(logs, outputs)`` with
    each output gathered over the replicas into the global batch (e.g. the MTN's fakes)."""
    replicas = strategy.num_replicas_in_sync
    scaled = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)

    def forward_backward(*batch):
        with tf.GradientTape() as tape:
            loss, logs, *outputs = loss_fn(*batch)
            objective = loss / replicas
            if scaled:
                objective = optimizer.scale_loss(objective)
        return loss, logs, outputs, tape.gradient(objective, variables)

    if jit_compile:
        forward_backward = tf.function(forward_backward, jit_compile=True)

    def replica_step(*batch):
        loss, logs, outputs, grads = forward_backward(*batch)
        logs = {**logs, "nonfinite": _apply_if_finite(optimizer, loss, grads, variables)}
        return (logs, outputs[0]) if outputs else logs

    @tf.function
    def step(*batch):
        result = strategy.run(replica_step, args=batch)
        logs, outputs = result if isinstance(result, tuple) else (result, None)
        logs = {k: strategy.reduce(tf.distribute.ReduceOp.MEAN, v, axis=None)
                for k, v in logs.items()}
        if outputs is None:
            return logs
        return logs, {k: strategy.gather(v, axis=0) for k, v in outputs.items()}
    return step


def scatter(strategy: tf.distribute.Strategy, array):
    """A global batch (host array) split over the replicas, as a distributed dataset would."""
    if strategy.num_replicas_in_sync == 1:
        return tf.constant(array)
    per = array.shape[0] // strategy.num_replicas_in_sync
    return strategy.experimental_distribute_values_from_function(
        lambda ctx: tf.constant(array[ctx.replica_id_in_sync_group * per:
                                      (ctx.replica_id_in_sync_group + 1) * per]))


def distribute(strategy: tf.distribute.Strategy, dataset: tf.data.Dataset):
    """Split each global batch of ``dataset`` over the replicas (and workers)."""
    if strategy.num_replicas_in_sync == 1 and not isinstance(
            strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return dataset
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return strategy.experimental_distribute_dataset(dataset.with_options(options))
