"""CM-TranCaF: cascaded whole-heart segmentation with cross-modality transfer learning.

Modules follow the paper's cascade: ``models.mtn`` (modality transfer, 3D CycleGAN),
``models.localizer``, ``models.maunet`` (U-Net with attention gates and a position attention
block), ``models.scn`` (spatial configuration refinement). Data handling is in ``data``.
"""
import os

# Before anything imports keras: TensorFlow unless the user chose another backend (the models
# use keras.ops only, so they also run under JAX).
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
