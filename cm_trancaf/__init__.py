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
# TensorFlow's oneDNN kernels, also on x86 CPUs without AVX512_VNNI / AVX512_BF16 / AMX (AMD,
# older Intel), where TensorFlow leaves them off unless asked (TF 2.9 release notes); it reads
# this once, when it loads. Off, its own Conv3D kernels trained the `cpu` MAUNet 4-5x slower on
# an AVX2 machine (README "Speed"). TF_ENABLE_ONEDNN_OPTS=0 in the environment turns them off.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

__version__ = "0.1.0"
