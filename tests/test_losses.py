"""Loss identities and values against an independent NumPy reference."""
import numpy as np
import pytest

from cm_trancaf.losses import (cycle_l1, deep_dice_focal, dice_focal, discriminator_loss,
                               focal_loss, soft_dice_loss)


def _onehot(labels, k):
    return np.eye(k, dtype="float32")[labels]


def _np_dice(y, p, eps=1e-5):
    inter = (y * p).sum((1, 2, 3))[:, 1:]
    den = y.sum((1, 2, 3))[:, 1:] + p.sum((1, 2, 3))[:, 1:]
    return 1 - ((2 * inter + eps) / (den + eps)).mean()


def _np_focal(y, p, gamma):
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return (-(y * (1 - p) ** gamma * np.log(p)).sum(-1)).mean()


def test_dice_focal_matches_reference_and_composes():
    rng = np.random.default_rng(0)
    y = _onehot(rng.integers(0, 4, (2, 6, 6, 6)), 4)
    logits = rng.normal(size=(2, 6, 6, 6, 4))
    p = (np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)).astype("float32")
    np.testing.assert_allclose(float(soft_dice_loss(y, p)), _np_dice(y, p), rtol=1e-5)
    np.testing.assert_allclose(float(focal_loss(y, p, 2.0)), _np_focal(y, p, 2.0), rtol=1e-4)
    np.testing.assert_allclose(float(dice_focal(y, p, 0.1, 2.0)),
                               _np_dice(y, p) + 0.1 * _np_focal(y, p, 2.0), rtol=1e-4)


def test_dice_skip_absent_averages_only_the_classes_each_roi_holds():
    """``skip_absent``: equal to the paper's Dice when every class is in every sample; with a
    class missing from a sample, the mean over the present (sample, class) pairs (NumPy), where
    the paper's formula counts the absent pair as ~1 even for a prediction of 1e-3 per voxel."""
    rng = np.random.default_rng(0)
    y = _onehot(rng.integers(0, 4, (2, 6, 6, 6)), 4)
    logits = rng.normal(size=(2, 6, 6, 6, 4))
    p = (np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)).astype("float32")
    np.testing.assert_allclose(float(soft_dice_loss(y, p, skip_absent=True)), _np_dice(y, p),
                               rtol=1e-5)
    labels = rng.integers(0, 3, (2, 6, 6, 6))                 # class 3 absent from both samples
    labels[1][labels[1] == 2] = 0                             # and class 2 from the second
    y = _onehot(labels, 4)
    inter = (y * p).sum((1, 2, 3))[:, 1:]
    den = y.sum((1, 2, 3))[:, 1:] + p.sum((1, 2, 3))[:, 1:]
    present = y.sum((1, 2, 3))[:, 1:] > 0
    want = (1 - (2 * inter + 1e-5) / (den + 1e-5))[present].mean()
    np.testing.assert_allclose(float(soft_dice_loss(y, p, skip_absent=True)), want, rtol=1e-5)
    faint = np.full((1, 6, 6, 6, 4), 1e-3, "float32")
    faint[..., 0] = 1 - 3e-3
    empty = _onehot(np.zeros((1, 6, 6, 6), int), 4)          # no heart in the ROI
    assert float(soft_dice_loss(empty, faint)) > 0.9          # the paper's formula
    assert float(soft_dice_loss(empty, faint, skip_absent=True)) == 0.0
    assert float(dice_focal(empty, faint, 0.1, 2.0, skip_absent=True)) > 0  # focal still there


def test_perfect_prediction_scores_zero():
    y = _onehot(np.random.default_rng(1).integers(0, 8, (1, 8, 8, 8)), 8)
    assert abs(float(dice_focal(y, y))) < 1e-5
    assert float(cycle_l1(y, y)) == 0.0
    assert abs(float(discriminator_loss(np.ones(4), np.zeros(4)))) < 1e-7


def test_deep_supervision_weighs_levels_by_powers_of_two_on_majority_labels():
    """Level l's target is the majority class of each block of the windows so far (anisotropic
    too); the loss is sum_l 2^-l L_l / sum_l 2^-l, with L_l = dice_focal at that level, and 0
    for a prediction that is each level's target."""
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 3, (2, 4, 8, 8))                       # (B, D, H, W)
    y = _onehot(labels, 3)
    windows = [(1, 2, 2), (2, 2, 2)]
    s1 = y.reshape(2, 4, 4, 2, 4, 2, 3).mean((3, 5))                # shares, (2, 4, 4, 4, 3)
    s2 = s1.reshape(2, 2, 2, 2, 2, 2, 2, 3).mean((2, 4, 6))         # (2, 2, 2, 2, 3)
    y1, y2 = _onehot(s1.argmax(-1), 3), _onehot(s2.argmax(-1), 3)  # first class on a tie
    softmax = lambda z: np.exp(z) / np.exp(z).sum(-1, keepdims=True)
    p = [softmax(rng.normal(size=t.shape)).astype("float32") for t in (y, y1, y2)]
    want = sum(w * (_np_dice(t, q) + 0.1 * _np_focal(t, q, 2.0))
               for w, t, q in zip((4 / 7, 2 / 7, 1 / 7), (y, y1, y2), p))
    np.testing.assert_allclose(float(deep_dice_focal(y, p, windows, 0.1, 2.0)), want, rtol=1e-4)
    assert abs(float(deep_dice_focal(y, [y, y1, y2], windows))) < 1e-4
    assert float(deep_dice_focal(y, [y, y1, p[2]], windows)) > 0.01


def test_bad_arguments_raise():
    y = np.zeros((1, 4, 4, 4, 3), "float32")
    with pytest.raises(ValueError, match="differ"):
        soft_dice_loss(y, np.zeros((1, 4, 4, 4, 2), "float32"))
    with pytest.raises(ValueError):
        dice_focal(y, y, lambda_f=-1)
    with pytest.raises(ValueError):
        discriminator_loss(np.ones(2), np.ones(2), "wgan")
