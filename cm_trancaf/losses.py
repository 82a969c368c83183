"""Loss functions, named after the paper's terms (keras.ops only; tensors ``(B, D, H, W, K)``).

Segmentation (SPEC module 2):  L = L_Dice + lambda_f * L_Focal
    L_Dice  = 1 - mean over the K-1 foreground classes and the batch of
              (2 sum(y p) + eps) / (sum(y) + sum(p) + eps)            (soft multiclass Dice)
              (``skip_absent``, beyond the paper: only the pairs whose class is in y)
    L_Focal = mean over voxels of  -sum_k y_k (1 - p_k)^gamma log p_k   (Lin et al., alpha = 1)
Deep supervision (beyond the paper, ``maunet.deep_supervision``; nnU-Net):
    L_deep = sum_l 2^-l L(y_l, p_l) / sum_l 2^-l over decoder levels l, y_l the labels'
    majority class per block of level l
MTN (SPEC module 1): least-squares or BCE adversarial terms, L1 cycle and identity terms.
"""
from __future__ import annotations

import keras
from keras import ops

__all__ = ["soft_dice_loss", "focal_loss", "dice_focal", "deep_dice_focal", "adversarial_lsgan",
           "adversarial_bce", "discriminator_loss", "cycle_l1", "identity_l1", "heatmap_l2"]

EPS = 1e-5


def _check(y_true, y_pred):
    if tuple(y_true.shape[1:]) != tuple(y_pred.shape[1:]):
        raise ValueError(f"y_true {tuple(y_true.shape)} and y_pred {tuple(y_pred.shape)} differ")


def soft_dice_loss(y_true, y_pred, skip_absent: bool = False):
    """1 - soft Dice over foreground classes (channel 0 is background). 0 for a perfect match.
    ``skip_absent``: the mean runs over the (sample, class) pairs whose class is in ``y_true``
    only (0 when there are none); the same value when every class is in every sample."""
    _check(y_true, y_pred)
    y_true, y_pred = ops.cast(y_true, "float32"), ops.cast(y_pred, "float32")
    axes = (1, 2, 3)
    inter = ops.sum(y_true * y_pred, axis=axes)[:, 1:]                   # (B, K-1)
    volume = ops.sum(y_true, axis=axes)[:, 1:]
    dice = (2.0 * inter + EPS) / (volume + ops.sum(y_pred, axis=axes)[:, 1:] + EPS)
    if not skip_absent:
        return 1.0 - ops.mean(dice)
    present = ops.cast(volume > 0, "float32")                            # (B, K-1)
    return ops.sum((1.0 - dice) * present) / ops.maximum(ops.sum(present), 1.0)


def focal_loss(y_true, y_pred, gamma: float = 2.0):
    """Categorical focal loss (Keras 3 ``categorical_focal_crossentropy``, alpha = 1)."""
    _check(y_true, y_pred)
    return ops.mean(keras.losses.categorical_focal_crossentropy(
        ops.cast(y_true, "float32"), ops.cast(y_pred, "float32"), alpha=1.0, gamma=gamma))


def dice_focal(y_true, y_pred, lambda_f: float = 0.1, gamma: float = 2.0,
               skip_absent: bool = False):
    """SPEC hybrid loss: L_Dice + lambda_f * L_Focal (``skip_absent``: see soft_dice_loss)."""
    if lambda_f < 0:
        raise ValueError(f"lambda_f must be >= 0, got {lambda_f}")
    return (soft_dice_loss(y_true, y_pred, skip_absent)
            + lambda_f * focal_loss(y_true, y_pred, gamma))


def deep_dice_focal(y_true, probs: list, pool_sizes: list, lambda_f: float = 0.1,
                    gamma: float = 2.0, skip_absent: bool = False):
    """Deep supervision (nnU-Net): sum_l w_l * (L_Dice + lambda_f * L_Focal)(y_l, p_l) over the
    decoder levels l = 0, 1, .. (``probs``, finest first), w_l = 2^-l / sum_j 2^-j, where y_l is
    the one-hot majority class of each block of the windows ``pool_sizes[:l]`` of ``y_true``
    (B, D, H, W, K) (nnU-Net downsamples the labels by nearest neighbour; a hard label keeps
    the soft Dice's optimum at p = y, a block's class shares would not)."""
    weights = [2.0 ** -l for l in range(len(probs))]
    weights = [w / sum(weights) for w in weights]
    total, shares = 0.0, ops.cast(y_true, "float32")
    for level, p in enumerate(probs):
        y = shares
        if level:                                     # class shares of the level's blocks
            window = tuple(pool_sizes[level - 1])
            shares = ops.average_pool(shares, window, strides=window, padding="valid")
            y = ops.one_hot(ops.argmax(shares, axis=-1), shares.shape[-1])
        total = total + weights[level] * dice_focal(y, p, lambda_f, gamma, skip_absent)
    return total


def heatmap_l2(target, pred, peak_weight: float = 0.0):
    """Localizer: squared error of the heatmap, weighted by ``1 + peak_weight * target`` so that
    the few voxels near the centre are not outweighed by the empty rest of the volume."""
    target = ops.cast(target, "float32")
    w = 1.0 + peak_weight * target
    return ops.mean(w * ops.square(target - ops.cast(pred, "float32")))


def adversarial_lsgan(d_fake):
    """Generator's LSGAN term: (D(G(x)) - 1)^2."""
    return ops.mean(ops.square(ops.cast(d_fake, "float32") - 1.0))


def adversarial_bce(d_fake):
    """Generator's BCE term on logits: -log sigmoid(D(G(x)))."""
    d = ops.cast(d_fake, "float32")
    return ops.mean(keras.losses.binary_crossentropy(ops.ones_like(d), d, from_logits=True))


def discriminator_loss(d_real, d_fake, kind: str = "lsgan"):
    """Discriminator loss, halved as in CycleGAN: 0.5 * (L(real, 1) + L(fake, 0))."""
    r, f = ops.cast(d_real, "float32"), ops.cast(d_fake, "float32")
    if kind == "lsgan":
        return 0.5 * (ops.mean(ops.square(r - 1.0)) + ops.mean(ops.square(f)))
    if kind == "bce":
        bce = lambda y, d: ops.mean(keras.losses.binary_crossentropy(y, d, from_logits=True))
        return 0.5 * (bce(ops.ones_like(r), r) + bce(ops.zeros_like(f), f))
    raise ValueError(f"gan_loss must be lsgan|bce, got {kind!r}")


def cycle_l1(real, reconstructed):
    """L_cycle term: |G_m(G_c(x)) - x|_1 (mean)."""
    return ops.mean(ops.abs(ops.cast(real, "float32") - ops.cast(reconstructed, "float32")))


def identity_l1(real, same):
    """L_identity term: |G_c(y) - y|_1 for y already in the target domain."""
    return ops.mean(ops.abs(ops.cast(real, "float32") - ops.cast(same, "float32")))
