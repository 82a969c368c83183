"""Checkpoint I/O, one place for training (save, resume) and inference (restore).

Checkpoints hold a flat map of each model's and optimizer's variables keyed by creation order:
Keras 3 layers kept in Python lists are not tracked by ``tf.train.Checkpoint`` through the model
object. A checkpoint that cannot be read (half-written, corrupt) is skipped for the previous one
with a warning; an intact one of another architecture is a one-line error.

    run_dir/ckpt/last/   newest two (training resumes from here)
    run_dir/ckpt/best/   the best validation checkpoint (or the last one without validation)
"""
from __future__ import annotations

import warnings
from pathlib import Path

import tensorflow as tf

from .utils import UserError

__all__ = ["variables_checkpoint", "restore", "restore_latest"]


def _readable(path: str) -> bool:
    """Whether every tensor of a checkpoint can be read (a half-written one cannot)."""
    try:
        reader = tf.train.load_checkpoint(path)
        for name in reader.get_variable_to_shape_map():
            reader.get_tensor(name)
        return True
    except Exception:  # noqa: BLE001 - any failure to read means "not readable"
        return False


def restore_latest(ckpt, directory: Path, warn: bool = True) -> str | None:
    """Restore the newest readable checkpoint in ``directory`` (newest first); its path or None."""
    state = tf.train.get_checkpoint_state(str(directory))
    if state is None:
        return None
    paths = list(state.all_model_checkpoint_paths or [state.model_checkpoint_path])[::-1]
    for path in paths:
        try:
            ckpt.restore(path).expect_partial().assert_existing_objects_matched()
            return path
        except (AssertionError, tf.errors.OpError, ValueError, IndexError, OSError) as e:
            if _readable(path):                # intact, but holds another architecture
                raise UserError(f"{path}: checkpoint does not match this model/config "
                                f"({str(e).splitlines()[0][:160]})") from None
            if warn:                           # truncated or corrupt: try the previous one
                warnings.warn(f"{path}: unreadable checkpoint ({str(e).splitlines()[0][:120]}); "
                              f"trying the previous one", stacklevel=2)
    raise UserError(f"{directory}: no readable checkpoint (tried {len(paths)})")


def _vars(obj) -> dict:
    # keyed by creation order (+ the variable's own name for readability): Keras numbers unnamed
    # layers per process, so paths differ between two builds of the same architecture
    return {f"v{i:04d}_{v.name}": v.value if isinstance(getattr(v, "value", None), tf.Variable)
            else v for i, v in enumerate(obj.variables)}


def variables_checkpoint(**objects) -> tf.train.Checkpoint:
    """A ``tf.train.Checkpoint`` over the variables of Keras models/optimizers and tf.Variables."""
    parts = {}
    for name, obj in objects.items():
        parts[name] = obj if isinstance(obj, tf.Variable) else tf.train.Checkpoint(**_vars(obj))
    return tf.train.Checkpoint(**parts)


def restore(run_dir: Path, which: str = "best", **objects) -> int:
    """Restore models from ``run_dir/ckpt/<which>`` (falls back to last); returns the step."""
    step = tf.Variable(0, dtype=tf.int64)
    ckpt = variables_checkpoint(step=step, **objects)
    for name in (which, "last"):
        if restore_latest(ckpt, Path(run_dir) / "ckpt" / name):
            return int(step.numpy())
    raise UserError(f"{run_dir}: no checkpoint found (expected ckpt/{which} or ckpt/last)")
