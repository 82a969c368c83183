"""Checkpoint I/O, one place for training (save, resume) and inference (restore).

Checkpoints hold a flat map of each model's and optimizer's variables keyed by creation order:
Keras 3 layers kept in Python lists are not tracked by ``tf.train.Checkpoint`` through the model
object. Restoring matches variables by that position alone (and checks every shape): the names
stored beside it are for reading only, since Keras numbers unnamed layers per process and an
optimizer's slot names carry those numbers (``conv3d_94_kernel_momentum``), so a training resumed
in a new process must not depend on them. A checkpoint that cannot be read (half-written,
corrupt) is skipped for the previous one with a warning; an intact one of another architecture
is a one-line error.

    run_dir/ckpt/last/   newest two (training resumes from here)
    run_dir/ckpt/best/   the best validation checkpoint (or the last one without validation)
"""
from __future__ import annotations

import re
import warnings
from pathlib import Path

import tensorflow as tf

from .utils import UserError

__all__ = ["variables_checkpoint", "restore", "restore_latest"]


class _Mismatch(Exception):
    """An intact checkpoint whose variables are not those of the objects to restore."""


_KEY = re.compile(r"v(\d{4})_.*")


def _plan(reader, objects: dict) -> list[tuple[tf.Variable, str]]:
    """(variable, checkpoint key) for every variable of ``objects``, matched by position within
    each named part; raises ``_Mismatch`` when counts, shapes or dtypes differ."""
    shapes, dtypes = reader.get_variable_to_shape_map(), reader.get_variable_to_dtype_map()
    suffix = "/.ATTRIBUTES/VARIABLE_VALUE"
    plan = []
    for part, obj in objects.items():
        if isinstance(obj, tf.Variable):
            wanted = [(obj, f"{part}{suffix}")]
        else:
            saved = {}
            for key in shapes:
                head, _, rest = key.partition("/")
                m = _KEY.fullmatch(rest[: -len(suffix)]) if (
                    head == part and rest.endswith(suffix)) else None
                if m:
                    saved[int(m.group(1))] = key
            current = list(_vars(obj).values())
            if sorted(saved) != list(range(len(current))):
                raise _Mismatch(f"{part}: {len(saved)} variables saved, {len(current)} to restore")
            wanted = [(v, saved[i]) for i, v in enumerate(current)]
        for var, key in wanted:
            if key not in shapes:
                raise _Mismatch(f"{key} not in the checkpoint")
            if list(shapes[key]) != list(var.shape) or dtypes[key] != var.dtype.base_dtype:
                raise _Mismatch(f"{key}: {dtypes[key].name}{list(shapes[key])} saved, "
                                f"{var.dtype.base_dtype.name}{list(var.shape)} to restore")
        plan += wanted
    return plan


def _restore_from(path: str, objects: dict) -> None:
    """Assign the variables of ``objects`` from the checkpoint at ``path``: nothing is assigned
    unless every tensor matched and was read."""
    try:
        reader = tf.train.load_checkpoint(path)
        plan = _plan(reader, objects)
        values = [reader.get_tensor(key) for _, key in plan]
    except _Mismatch:
        raise
    except Exception as e:  # noqa: BLE001 - any failure to read means "not readable"
        raise OSError(str(e)) from None
    for (var, _), value in zip(plan, values):
        var.assign(value)


def restore_latest(objects: dict, directory: Path, warn: bool = True) -> str | None:
    """Restore ``objects`` (as given to ``variables_checkpoint``) from the newest readable
    checkpoint in ``directory`` (newest first); its path or None when there is none."""
    state = tf.train.get_checkpoint_state(str(directory))
    if state is None:
        return None
    paths = list(state.all_model_checkpoint_paths or [state.model_checkpoint_path])[::-1]
    for path in paths:
        try:
            _restore_from(path, objects)
            return path
        except _Mismatch as e:                   # intact, but holds another architecture
            raise UserError(f"{path}: checkpoint does not match this model/config ({e})") from None
        except OSError as e:                     # truncated or corrupt: try the previous one
            if warn:
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
    for name in (which, "last"):
        if restore_latest({"step": step, **objects}, Path(run_dir) / "ckpt" / name):
            return int(step.numpy())
    raise UserError(f"{run_dir}: no checkpoint found (expected ckpt/{which} or ckpt/last)")
