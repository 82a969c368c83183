"""tf.data pipeline: shapes, determinism by seed, image and label stay aligned under augmentation."""
import numpy as np

from cm_trancaf.config import AugmentConfig, DataConfig
from cm_trancaf.data.datasets import LABEL_SETS, load_case, mmwhs_cases
import pytest
from scipy.interpolate import BSpline

from cm_trancaf.data.pipeline import (augment_appearance, augment_matrix, bspline_weights,
                                      elastic_offsets, localizer_dataset, patch_dataset,
                                      roi_dataset, sample_roi)
from cm_trancaf.data.preprocess import prepare

AUG = AugmentConfig(scale=0.2, rotate_deg=20, translate_mm=10, flip_prob=0.5)


def _prepared(root, n=2):
    cfg = DataConfig(spacing=(6.0, 6.0, 6.0), enhance="none")
    return [prepare(*load_case(c, LABEL_SETS["mmwhs"]), cfg, "ct", 8, c.case_id)
            for c in mmwhs_cases(root, "ct")[:n]]


def test_batches_shapes_and_determinism(tiny_phantom):
    cases = _prepared(tiny_phantom)
    a = next(iter(roi_dataset(cases, (16, 16, 16), 8, AUG, 2, seed=3)))
    b = next(iter(roi_dataset(cases, (16, 16, 16), 8, AUG, 2, seed=3)))
    c = next(iter(roi_dataset(cases, (16, 16, 16), 8, AUG, 2, seed=4)))
    assert a[0].shape == (2, 16, 16, 16, 1) and a[1].shape == (2, 16, 16, 16, 8)
    np.testing.assert_array_equal(a[0].numpy(), b[0].numpy())
    assert not np.array_equal(a[0].numpy(), c[0].numpy())
    np.testing.assert_allclose(a[1].numpy().sum(-1), 1.0)           # one-hot
    assert a[0].numpy().min() >= -1 and a[0].numpy().max() <= 1
    # resuming at sample k gives the batches from k on
    later = roi_dataset(cases, (16, 16, 16), 8, AUG, 2, seed=3, start=2)
    it = iter(roi_dataset(cases, (16, 16, 16), 8, AUG, 2, seed=3))
    next(it)
    np.testing.assert_array_equal(next(it)[0].numpy(), next(iter(later))[0].numpy())


def test_augmentation_keeps_image_and_label_aligned():
    # an image that is a known function of the label: transformed image must still decode to
    # the transformed label, except at boundaries (linear vs nearest interpolation)
    rng = np.random.default_rng(0)
    label = np.zeros((40, 40, 40), np.uint8)
    label[8:30, 10:25, 12:32] = 1
    label[15:22, 16:22, 5:20] = 2
    label[25:35, 25:36, 20:30] = 3
    image = (label.astype(np.float32) * 0.5 - 1.0)
    agree = []
    for _ in range(5):
        m = augment_matrix(rng, AUG, (2.0, 2.0, 3.0))
        img, lab = sample_roi(image, label, (20, 20, 20), (32, 32, 32), m, rng.uniform(-3, 3, 3))
        decoded = np.clip(np.round((img + 1.0) / 0.5), 0, 3).astype(np.uint8)
        agree.append(np.mean(decoded == lab))
        assert len(np.unique(lab)) > 2  # the transform moved, not erased, the structures
    assert min(agree) > 0.95, agree


def test_bspline_weights_match_scipys_cubic_basis():
    for n_out, n_points in ((64, 8), (16, 5), (33, 4)):
        w = bspline_weights(n_out, n_points)
        u = np.arange(n_out) * (n_points - 1) / (n_out - 1)
        for k in range(n_points):          # independent reference: scipy's cardinal cubic basis
            ref = BSpline.basis_element(np.arange(k - 2, k + 3), extrapolate=False)(u)
            np.testing.assert_allclose(w[:, k], np.nan_to_num(ref), atol=1e-12)
        assert (w >= 0).all() and (w.sum(1) <= 1 + 1e-12).all()
        np.testing.assert_allclose(w[(u >= 1) & (u <= n_points - 2)].sum(1), 1.0)  # interior


def test_elastic_offsets_are_bounded_smooth_and_seeded():
    size, spacing, max_mm, n = (24, 40, 40), (2.0, 2.0, 6.0), 15.0, 8   # spacing (x, y, z)
    u = elastic_offsets(np.random.default_rng(0), size, spacing, max_mm, n)
    assert u.shape == (3,) + size
    mm = u * np.array([6.0, 2.0, 2.0])[:, None, None, None]              # (D, H, W) voxels -> mm
    assert np.abs(mm).max() <= max_mm + 1e-4                             # never past max_mm
    assert np.abs(mm).max() > 0.3 * max_mm                               # and not trivially 0
    # smooth: between neighbouring voxels at most 2 max_mm per knot interval (coefficient range)
    for axis, s in enumerate(size):
        per_voxel = 2 * max_mm / ((s - 1) / (n - 1))
        assert np.abs(np.diff(mm, axis=axis + 1)).max() <= per_voxel + 1e-4
    np.testing.assert_array_equal(u, elastic_offsets(np.random.default_rng(0), size, spacing,
                                                     max_mm, n))
    with pytest.raises(ValueError, match="elastic_points"):
        elastic_offsets(np.random.default_rng(0), size, spacing, max_mm, 3)


def test_elastic_deformation_moves_image_and_label_together():
    label = np.zeros((40, 40, 40), np.uint8)
    label[8:30, 10:25, 12:32] = 1
    label[15:22, 16:22, 5:20] = 2
    label[25:35, 25:36, 20:30] = 3
    image = (label.astype(np.float32) * 0.5 - 1.0)
    plain_img, plain_lab = sample_roi(image, label, (20, 20, 20), (32, 32, 32))
    for seed in range(3):
        u = elastic_offsets(np.random.default_rng(seed), (32, 32, 32), (2.0, 2.0, 2.0), 10.0, 6)
        img, lab = sample_roi(image, label, (20, 20, 20), (32, 32, 32), offsets=u)
        decoded = np.clip(np.round((img + 1.0) / 0.5), 0, 3).astype(np.uint8)
        assert np.mean(decoded == lab) > 0.95                      # still aligned
        assert np.mean(lab != plain_lab) > 0.02                    # but deformed
        assert len(np.unique(lab)) == 4


def test_elastic_option_changes_samples_only_when_on(tiny_phantom):
    cases = _prepared(tiny_phantom)
    elastic = AugmentConfig(scale=0.2, rotate_deg=20, translate_mm=10, elastic_mm=12.0,
                            elastic_points=4)
    a = next(iter(roi_dataset(cases, (16, 16, 16), 8, elastic, 2, seed=3)))
    b = next(iter(roi_dataset(cases, (16, 16, 16), 8, elastic, 2, seed=3)))
    c = next(iter(roi_dataset(cases, (16, 16, 16), 8, AugmentConfig(
        scale=0.2, rotate_deg=20, translate_mm=10), 2, seed=3)))
    np.testing.assert_array_equal(a[0].numpy(), b[0].numpy())
    np.testing.assert_allclose(a[1].numpy().sum(-1), 1.0)
    assert not np.array_equal(a[1].numpy(), c[1].numpy())
    with pytest.raises(ValueError, match="elastic_points"):
        roi_dataset(cases, (16, 16, 16), 8, AugmentConfig(elastic_mm=5.0, elastic_points=2), 2, 0)


def test_identity_transform_is_a_plain_crop():
    rng = np.random.default_rng(1)
    image = rng.normal(size=(20, 21, 22)).astype(np.float32)
    label = (image > 0).astype(np.uint8)
    img, lab = sample_roi(image, label, (10, 10, 10), (8, 8, 8))
    np.testing.assert_allclose(img, image[6:14, 6:14, 6:14].astype(np.float32), atol=1e-6)
    np.testing.assert_array_equal(lab, label[6:14, 6:14, 6:14])


def test_localizer_batches_peak_at_the_heart(tiny_phantom):
    """Without augmentation or jitter a view is centred on the volume centre c at 20 mm per
    voxel, so the label map's centre t must peak at size // 2 + (t - c) * spacing / 20."""
    from cm_trancaf.data.preprocess import foreground_center
    from cm_trancaf.models.localizer import heatmap_peak
    cases = _prepared(tiny_phantom)[:1]
    img, hm = next(iter(localizer_dataset(cases, (16, 16, 16), 20.0, 15.0,
                                          AugmentConfig(rotate_deg=0, scale=0), 2, seed=0,
                                          jitter_mm=0.0)))
    assert img.shape == hm.shape == (2, 16, 16, 16, 1)
    c = cases[0]
    sp = np.asarray(c.grid.spacing)[::-1]
    t, centre = foreground_center(c.label), (np.asarray(c.image.shape) - 1) / 2
    expected = 8 + (t - centre) * sp / 20.0
    assert np.abs(expected - 8).max() > 0.3                   # the heart is off the view centre
    for h in hm.numpy()[..., 0]:
        assert h.max() > 0.5
        np.testing.assert_allclose(heatmap_peak(h), expected, atol=0.5)


def test_localizer_intensity_jitter_is_an_affine_map_of_the_same_view(tiny_phantom):
    """``intensity=a`` maps each view by x -> s x + b with s in [1-a, 1+a], b in [-a, a]; the view
    and its heatmap are the ones drawn without it (same seed), and a = 0 changes nothing."""
    cases = _prepared(tiny_phantom)[:1]
    draw = lambda a: next(iter(localizer_dataset(cases, (16, 16, 16), 20.0, 15.0,
                                                 AugmentConfig(), 2, seed=3, intensity=a)))
    (x0, h0), (x1, h1), (xz, hz) = draw(0.0), draw(0.3), draw(0.0)
    np.testing.assert_array_equal(x0.numpy(), xz.numpy())
    np.testing.assert_array_equal(h0.numpy(), h1.numpy())
    for a, b in zip(x0.numpy(), x1.numpy()):
        a, b = a.ravel(), b.ravel()
        s, t = np.polyfit(a, b, 1)
        np.testing.assert_allclose(b, s * a + t, atol=1e-4)
        assert 0.7 <= s <= 1.3 and -0.3 <= t <= 0.3 and (abs(s - 1) > 1e-3 or abs(t) > 1e-3)


def test_foreground_patches_land_inside_the_body():
    """MTN patches: with ``foreground=1`` every patch holds body voxels, even when the body is a
    small part of the volume; uniform centres mostly see air. Same seed, same patches."""
    vol = np.full((64, 64, 64), -1.0, np.float32)
    vol[40:48, 8:16, 30:38] = 0.5                                   # 0.2 % of the volume
    def share_with_body(fg, seed=0):
        batches = patch_dataset([vol], (16, 16, 16), 4, seed, foreground=fg).take(10)
        x = np.concatenate([b.numpy() for b in batches])
        assert x.shape == (40, 16, 16, 16, 1)
        return np.mean([(p > -0.8).any() for p in x])
    assert share_with_body(1.0) == 1.0
    assert share_with_body(0.0) < 0.5
    a = next(iter(patch_dataset([vol], (16, 16, 16), 4, 5, foreground=0.5)))
    b = next(iter(patch_dataset([vol], (16, 16, 16), 4, 5, foreground=0.5)))
    np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_case_weights_set_the_share_of_real_samples():
    """``data.real_share``: with 2 real and 8 other cases and share 0.5, about half of the
    sampled ROIs come from the real cases (uniform sampling: a fifth); weights of None keep
    every case equally likely; a share outside [0, 1] is an error."""
    import pytest
    from dataclasses import replace
    from cm_trancaf.train.seg import case_weights
    from cm_trancaf.utils import UserError
    base = _prepared_blob()
    cases = [replace(base, image=np.full_like(base.image, k / 10.0)) for k in range(10)]

    def real_fraction(weights, n=400):
        ds = roi_dataset(cases, (8, 8, 8), 2, AUG, 8, seed=0, augment=False, weights=weights)
        ks = np.concatenate([np.round(x.numpy()[:, 4, 4, 4, 0] * 10) for x, _ in ds.take(n // 8)])
        return float(np.mean(ks < 2))                              # cases 0 and 1 are "real"

    w = case_weights(2, 8, 0.5)
    assert w[:2] == [0.25, 0.25] and abs(sum(w) - 1) < 1e-12
    assert 0.4 < real_fraction(w) < 0.6
    assert 0.1 < real_fraction(case_weights(2, 8, 0.0)) < 0.3     # None: uniform, 2 of 10
    assert case_weights(2, 8, 0.0) is None and case_weights(5, 0, 0.5) is None
    with pytest.raises(UserError, match="real_share"):
        case_weights(2, 8, 1.5)


def _prepared_blob():
    from cm_trancaf.data.io import Geometry
    from cm_trancaf.data.preprocess import Prepared
    label = np.zeros((16, 16, 16), np.uint8)
    label[6:10, 6:10, 6:10] = 1
    grid = Geometry(size=(16, 16, 16), spacing=(2.0, 2.0, 2.0), origin=(0.0, 0.0, 0.0),
                    direction=tuple(np.eye(3).ravel()))
    return Prepared(image=np.zeros((16, 16, 16), np.float32), label=label, grid=grid,
                    source=grid, case_id="blob")


def test_appearance_transforms_keep_what_nnunet_keeps():
    """``augment_appearance``: probabilities 0 leave the ROI bit for bit; gamma alone is a monotone
    map that keeps the ROI's mean and std; contrast alone keeps the mean's side of every voxel and
    the range; blur alone keeps each slice's sum and leaves the slice axis unmixed."""
    rng0 = np.random.default_rng(0)
    img = np.tanh(rng0.normal(0, 1, (6, 24, 24))).astype(np.float32)
    base = AugmentConfig()
    np.testing.assert_array_equal(augment_appearance(img, np.random.default_rng(1), base), img)

    g = augment_appearance(img, np.random.default_rng(1), AugmentConfig(gamma_prob=1.0))
    assert not np.allclose(g, img)
    np.testing.assert_allclose([g.mean(), g.std()], [img.mean(), img.std()], atol=1e-4)
    order = np.argsort(img, axis=None)
    assert np.all(np.diff(g.ravel()[order]) >= -1e-6)              # monotone: ranks kept

    c = augment_appearance(img, np.random.default_rng(2), AugmentConfig(contrast_prob=1.0))
    assert c.min() >= img.min() and c.max() <= img.max() and not np.allclose(c, img)
    inner = np.abs(img - img.mean()) > 1e-3
    assert np.all(np.sign(c - img.mean())[inner] == np.sign(img - img.mean())[inner])

    spike = np.zeros((6, 24, 24), np.float32)
    spike[2, 12, 12] = 1.0
    b = augment_appearance(spike, np.random.default_rng(3), AugmentConfig(blur_prob=1.0))
    np.testing.assert_allclose(b.sum(axis=(1, 2)), spike.sum(axis=(1, 2)), atol=1e-5)
    assert b[2, 12, 12] < 1.0 and b[2, 12, 13] > 0

    n = augment_appearance(img, np.random.default_rng(4), AugmentConfig(noise_prob=1.0))
    assert 0 < np.std(n - img) <= base.noise_std + 0.01


def test_anywhere_centres_that_share_of_rois_off_the_heart():
    """``augment.anywhere``: 0 centres every training ROI on the heart (each holds heart at its
    centre); 1 centres them on random voxels of a volume mostly without heart (most ROIs hold
    none); 0.5 in between; labels stay aligned with the image wherever the ROI is (up to linear vs nearest at edges)."""
    from dataclasses import replace
    from types import SimpleNamespace

    label = np.zeros((40, 120, 120), np.uint8)
    label[14:27, 48:73, 48:73] = 1                              # a small heart, centre (20, 60, 60)
    image = label.astype(np.float32) * 2.0 - 1.0
    grid = SimpleNamespace(spacing=(2.0, 2.0, 2.0))
    case = SimpleNamespace(image=image, label=label, grid=grid)
    base = replace(AugmentConfig(), rotate_deg=0.0, scale=0.0, translate_mm=0.0)
    share = {}
    for p in (0.0, 0.5, 1.0):
        aug = replace(base, anywhere=p)
        ds = roi_dataset([case], (8, 16, 16), 2, aug, 8, seed=0)
        imgs, labs = [], []
        for img, lab in ds.take(8):
            imgs.append(img.numpy()), labs.append(lab.numpy())
        img, lab = np.concatenate(imgs)[..., 0], np.concatenate(labs)[..., 1]   # 64 ROIs
        assert np.mean((lab > 0.5) == (img > 0)) > 0.97         # image and label aligned
        share[p] = np.mean(lab[:, 4, 8, 8] > 0.5)              # heart at the ROI's centre
    assert share[0.0] == 1.0 and share[1.0] < 0.2 and 0.2 < share[0.5] < 0.8, share


def test_rank_scale_ignores_any_monotone_contrast_change():
    """``rank_scale``: ranks in [-1, 1], the darkest voxel -1 and the brightest 1, ties share a
    value, and any increasing map of the volume (a gamma, an affine brightness change) leaves the
    result bit for bit; a decreasing map reverses it."""
    from cm_trancaf.data.pipeline import rank_scale
    rng = np.random.default_rng(0)
    vol = rng.random((6, 7, 8)).astype(np.float32)
    vol[0] = 0.0                                                   # 56 tied background voxels
    r = rank_scale(vol)
    assert r.dtype == np.float32 and r.shape == vol.shape
    assert r.max() == 1.0 and r[vol > 0].min() > r[0, 0, 0]
    assert np.unique(r[0]).size == 1
    np.testing.assert_allclose(r[0, 0, 0], 2 * (55 / 2) / (vol.size - 1) - 1, rtol=1e-6)
    for f in (lambda v: v ** 3, lambda v: 40 * v + 7, lambda v: np.log1p(100 * v)):
        np.testing.assert_array_equal(rank_scale(f(vol).astype(np.float32)), r)
    np.testing.assert_allclose(rank_scale(-vol), -r, atol=1e-6)


def test_localizer_ranks_make_views_blind_to_contrast(tiny_phantom):
    """With ``ranks`` the localizer's training views and its inference input are the same for
    an image and for that image with its contrast changed (a linear rescale commutes with the
    low-pass; any monotone map of the low-passed volume changes nothing: float rounding of the
    low-pass may swap a few nearly tied voxels, a rank or two); without, they differ."""
    from dataclasses import replace
    from cm_trancaf.data.pipeline import localizer_input
    case = _prepared(tiny_phantom)[:1][0]
    other = replace(case, image=(0.4 * case.image - 0.3).astype(np.float32))
    draw = lambda c, ranks: next(iter(localizer_dataset([c], (16, 16, 16), 20.0, 15.0, AUG, 2,
                                                        seed=5, ranks=ranks)))[0].numpy()
    np.testing.assert_allclose(draw(case, True), draw(other, True), atol=1e-3)
    assert np.abs(draw(case, False) - draw(other, False)).max() > 0.1
    a = localizer_input(case, (16, 16, 16), 20.0, ranks=True)[0]
    b = localizer_input(other, (16, 16, 16), 20.0, ranks=True)[0]
    np.testing.assert_allclose(a, b, atol=1e-3)
    assert a.min() >= -1 and a.max() <= 1 and a.std() > 0.1
