"""Export a trained cascade as a TensorFlow SavedModel (``cm-trancaf export``).

    export_dir/
      saved_model.pb, variables/      the networks, two serving endpoints:
        localize(x: (B, *localizer.size, 1) float32)  -> heatmap (B, *localizer.size, 1)
        segment(roi: (B, *data.roi_size, 1) float32)  -> class probabilities (B, *roi_size, K)
                                                         (MAUNet, then SCN when the run has one)
      assets/config.json, assets/split.json         what preprocessing and label codes need

The endpoints are plain TensorFlow: ``tf.saved_model.load(export_dir).segment(roi)`` works without
this package (TF Serving, a C++ or Java runtime). Preprocessing, cropping and pasting back stay
Python: ``inference.Cascade.load(export_dir)`` (and so ``cm-trancaf predict --run export_dir``) runs the
whole-volume prediction on top of the exported endpoints and gives the run folder's labels.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import tensorflow as tf
from keras.export import ExportArchive

from .inference import Cascade
from .utils import UserError, atomic_dir

__all__ = ["export_cascade"]


def export_cascade(run_dir: str | Path, out_dir: str | Path) -> Path:
    """Write the cascade of a ``train-seg`` run folder as a SavedModel (atomically)."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if out_dir.exists():
        raise UserError(f"{out_dir}: already exists; remove it or choose another --out")
    c = Cascade.load(run_dir)
    k = c.labelset.num_classes
    archive = ExportArchive()
    archive.track(c.localizer)
    archive.track(c.maunet)
    if c.scn is not None:
        archive.track(c.scn)

    def segment(roi):
        probs = c.maunet(roi, training=False)
        return c.scn(probs, roi, training=False) if c.scn is not None else probs

    archive.add_endpoint("localize", lambda x: c.localizer(x, training=False),
                         input_signature=[tf.TensorSpec((None, *c.cfg.localizer.size, 1),
                                                        tf.float32, name="x")])
    archive.add_endpoint("segment", segment,
                         input_signature=[tf.TensorSpec((None, *c.cfg.data.roi_size, 1),
                                                        tf.float32, name="roi")])
    with atomic_dir(out_dir) as tmp:
        archive.write_out(str(tmp), verbose=False)
        (Path(tmp) / "assets").mkdir(exist_ok=True)
        for name in ("config.json", "split.json"):
            shutil.copyfile(run_dir / name, Path(tmp) / "assets" / name)
    print(f"exported {run_dir} -> {out_dir} (endpoints: localize, segment; K = {k})")
    return out_dir
