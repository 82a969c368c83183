"""Loss identities and values against an independent NumPy reference."""
import numpy as np
import pytest

from cm_trancaf.losses import (cycle_l1, dice_focal, discriminator_loss, focal_loss,
                               soft_dice_loss)


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


def test_perfect_prediction_scores_zero():
    y = _onehot(np.random.default_rng(1).integers(0, 8, (1, 8, 8, 8)), 8)
    assert abs(float(dice_focal(y, y))) < 1e-5
    assert float(cycle_l1(y, y)) == 0.0
    assert abs(float(discriminator_loss(np.ones(4), np.zeros(4)))) < 1e-7


def test_bad_arguments_raise():
    y = np.zeros((1, 4, 4, 4, 3), "float32")
    with pytest.raises(ValueError, match="differ"):
        soft_dice_loss(y, np.zeros((1, 4, 4, 4, 2), "float32"))
    with pytest.raises(ValueError):
        dice_focal(y, y, lambda_f=-1)
    with pytest.raises(ValueError):
        discriminator_loss(np.ones(2), np.ones(2), "wgan")
