"""Preprocessing round trips: exact at native spacing, Dice >= 0.9 per structure through 3 mm."""
import numpy as np
import pytest
import SimpleITK as sitk

from cm_trancaf.config import DataConfig
from cm_trancaf.data.datasets import LABEL_SETS, Case, load_case, mmwhs_cases
from cm_trancaf.data.io import Geometry
from cm_trancaf.data.preprocess import (argmax_resample, crop, foreground_center, index_to_mm,
                                        mm_to_index, normalize, paste, prepare, probs_to_source,
                                        resample, to_source, working_grid)

from conftest import need_shared


def _dice(a, b, k):
    return 2 * np.sum((a == k) & (b == k)) / (np.sum(a == k) + np.sum(b == k))


def _round_trip(image, label, spacing, mode="nearest"):
    cfg = DataConfig(spacing=spacing, enhance="none")
    prep = prepare(image, label, cfg, "ct", 8, label_mode=mode)
    # through an ROI: crop around the heart and paste back, as prediction does
    roi, start = crop(prep.label, foreground_center(prep.label), (200, 200, 200))
    full = paste(roi, start, prep.label.shape)
    np.testing.assert_array_equal(full, prep.label)
    back = to_source(full, prep, 8, mode)
    assert Geometry.of(back) == Geometry.of(label)
    return sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(label)


def test_phantom_round_trip_identical_at_native_spacing(tiny_phantom):
    for case in mmwhs_cases(tiny_phantom, "ct")[:1] + mmwhs_cases(tiny_phantom, "mr")[:1]:
        image, label = load_case(case, LABEL_SETS["mmwhs"])  # CT is LAS, MRI is RAS
        back, orig = _round_trip(image, label, None)
        np.testing.assert_array_equal(back, orig)


def test_working_grid_is_canonical_and_covers_the_image(tiny_phantom):
    image, _ = load_case(mmwhs_cases(tiny_phantom, "mr")[0], LABEL_SETS["mmwhs"])
    grid = working_grid(image, (3.0, 3.0, 3.0))
    assert grid.direction == (1, 0, 0, 0, 1, 0, 0, 0, 1)
    extent = np.asarray(image.GetSize()) * image.GetSpacing()
    assert np.all(np.asarray(grid.size) * 3.0 >= extent - 1e-6)
    p = np.array([10.0, -20.0, 5.0])
    np.testing.assert_allclose(index_to_mm(grid, mm_to_index(grid, p)), p)


def test_real_label_map_round_trip_through_3mm():
    path = need_shared("mmwhs_ct_labels") / "ct_train_1005_label.nii.gz"
    _, label = load_case(Case("1005", path, path), LABEL_SETS["mmwhs"])
    label = sitk.Cast(label, sitk.sitkUInt8)
    back, orig = _round_trip(sitk.Cast(label, sitk.sitkFloat32), label, (3.0, 3.0, 3.0))
    dice = [_dice(back, orig, k) for k in range(1, 8)]
    assert min(dice) >= 0.9, dice


def test_phantom_round_trip_through_3mm(tiny_phantom):
    from cm_trancaf.data.phantom import make_case, random_anatomy
    rng = np.random.default_rng(3)
    image, label = make_case(random_anatomy(rng), "ct", rng, (1.5, 1.5, 1.5), (240, 200, 160))
    back, orig = _round_trip(image, label, (3.0, 3.0, 3.0), mode="linear")
    dice = [_dice(back, orig, k) for k in range(1, 8)]
    assert min(dice) >= 0.9, dice


def test_crop_paste_out_of_bounds():
    arr = np.arange(5 * 6 * 7, dtype=np.float32).reshape(5, 6, 7)
    roi, start = crop(arr, (0, 0, 6), (4, 4, 4), fill=-1)
    assert roi.shape == (4, 4, 4) and np.all(roi[:2] == -1)   # outside the volume: fill
    back = paste(roi, start, arr.shape, fill=-5)
    inside = back != -5
    np.testing.assert_array_equal(back[inside], arr[inside])
    assert inside.sum() == 2 * 2 * 3  # start (-2, -2, 4): rows 0-1, cols 0-1, depth 4-6


def test_crop_covers_every_slice_of_an_axis_shorter_than_the_roi():
    """``cover_short``: a 14-slice stack in a 16-slice ROI keeps all 14 slices in the ROI for
    any centre (centred on slice 9 the plain crop starts at slice 1 and drops slice 0); the ROI
    moves as little as needed, and axes longer than the ROI are cropped as before."""
    arr = np.random.default_rng(0).random((14, 40, 40)).astype(np.float32)
    size = (16, 8, 8)
    _, plain = crop(arr, (9, 20, 20), size)
    assert plain[0] == 1                                      # slice 0 outside the ROI
    for z in np.linspace(-3, 17, 41):
        roi, start = crop(arr, (z, 20, 3), size, fill=-1, cover_short=True)
        _, old = crop(arr, (z, 20, 3), size, fill=-1)
        assert -2 <= start[0] <= 0                            # slices 0..13 all inside
        assert abs(start[0] - old[0]) == max(0, old[0], -2 - old[0])   # the least move
        np.testing.assert_array_equal(start[1:], old[1:])     # long axes unchanged (even at -1)
        back = paste(roi, start, arr.shape, fill=-5)          # every slice comes back
        w = slice(0, start[2] + 8)                            # the columns inside the ROI
        np.testing.assert_array_equal(back[:, 16:24, w], arr[:, 16:24, w])


def test_crop_inside_keeps_a_long_axis_roi_in_the_volume():
    """``inside``: along an axis longer than the ROI the ROI is moved as little as needed to lie
    in the volume, so it holds every voxel the centred ROI held and volume instead of padding;
    axes shorter than the ROI are left to ``cover_short``."""
    arr = np.random.default_rng(0).random((19, 40, 6)).astype(np.float32)
    size = (16, 8, 8)
    for z in np.linspace(-4, 22, 53):
        roi, start = crop(arr, (z, 1, 3), size, fill=-1, inside=True)
        _, old = crop(arr, (z, 1, 3), size, fill=-1)
        assert 0 <= start[0] <= 19 - 16 and 0 <= start[1] <= 40 - 8
        assert abs(start[0] - old[0]) == max(0, -old[0], old[0] - 3)      # the least move
        assert start[2] == old[2]                                  # W (6 < 8) not moved
        held = set(range(max(old[0], 0), min(old[0] + 16, 19)))   # slices the old ROI held
        assert held <= set(range(start[0], start[0] + 16))
        np.testing.assert_array_equal(roi[:, :, max(0, -start[2]):6 - start[2]],
                                      arr[start[0]:start[0] + 16, start[1]:start[1] + 8])


def test_normalize_ranges():
    cfg = DataConfig()
    ct = normalize(np.array([-3000.0, -1000.0, 0.0, 1000.0, 3000.0]), "ct", cfg)
    np.testing.assert_allclose(ct, [-1, -1, 0, 1, 1])
    mr = normalize(np.random.default_rng(0).gamma(2.0, 100.0, 10000), "mr", cfg)
    assert mr.min() == -1 and mr.max() == 1 and mr.dtype == np.float32
    with pytest.raises(ValueError):
        normalize(ct, "pet", cfg)


@pytest.mark.parametrize("method", ["none", "unsharp", "clahe"])
def test_enhancement_options_keep_range(tiny_phantom, method):
    image, label = load_case(mmwhs_cases(tiny_phantom, "ct")[0], LABEL_SETS["mmwhs"])
    prep = prepare(image, label, DataConfig(spacing=(6.0, 6.0, 6.0), enhance=method), "ct", 8)
    assert prep.image.min() >= -1 and prep.image.max() <= 1
    assert prep.image.shape == prep.label.shape


def _onehot_roi(prep, size=(64, 64, 64)):
    """A perfect working-grid prediction: the one-hot ROI around the heart, and its start."""
    roi, start = crop(prep.label, foreground_center(prep.label), size)
    return np.eye(8, dtype=np.float32)[roi], start


def test_probability_paste_back_geometry_and_box_restriction(tiny_phantom):
    # an LAS CT and an RAS MRI with another spacing: the output sits on each input's exact grid
    for case in mmwhs_cases(tiny_phantom, "ct")[:1] + mmwhs_cases(tiny_phantom, "mr")[:1]:
        image, label = load_case(case, LABEL_SETS["mmwhs"])
        prep = prepare(image, label, DataConfig(spacing=(6.0, 6.0, 6.0), enhance="none"), "ct", 8)
        probs, start = _onehot_roi(prep, (24, 24, 24))
        # soft probabilities: the argmax on the source grid is no longer a resampled label map
        probs = 0.6 * probs + 0.4 * np.random.default_rng(0).dirichlet(np.ones(8), probs.shape[:3])
        out = probs_to_source(probs.astype(np.float32), start, prep)
        assert Geometry.of(out) == Geometry.of(label)
        # the same as resampling every class over the whole source grid (no box restriction):
        # the foreground box changes nothing, and nothing leaks outside the ROI
        full = paste(probs.astype(np.float32), start, prep.image.shape, np.eye(8)[0])

        def channels():
            for k in range(8):
                img = sitk.GetImageFromArray(np.ascontiguousarray(full[..., k]))
                prep.grid.apply(img)
                yield k, img
        reference = argmax_resample(channels(), prep.source)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(out), reference)
        # structures land where they are: per-structure Dice with the source label map
        back, orig = sitk.GetArrayFromImage(out), sitk.GetArrayFromImage(label)
        present = [k for k in range(1, 8) if (orig == k).sum() > 200]
        assert np.mean([_dice(back, orig, k) for k in present]) > 0.7


def test_perfect_3mm_prediction_pasted_back_scores_95_on_a_real_label_map():
    path = need_shared("mmwhs_ct_labels") / "ct_train_1002_label.nii.gz"   # 0.49 x 0.49 x 0.625 mm
    _, label = load_case(Case("1002", path, path), LABEL_SETS["mmwhs"])
    cfg = DataConfig(spacing=(3.0, 3.0, 3.0), enhance="none")
    prep = prepare(sitk.Cast(label, sitk.sitkFloat32), label, cfg, "ct", 8)
    probs, start = _onehot_roi(prep)
    orig = sitk.GetArrayFromImage(label)
    out = probs_to_source(probs, start, prep)
    assert Geometry.of(out) == Geometry.of(label)
    dice_probs = [_dice(sitk.GetArrayFromImage(out), orig, k) for k in range(1, 8)]
    nearest = sitk.GetArrayFromImage(to_source(paste(np.argmax(probs, -1).astype(np.uint8), start,
                                                     prep.label.shape), prep, 8))
    dice_nearest = [_dice(nearest, orig, k) for k in range(1, 8)]
    # measured: 95.6% (Myo 95.1) against 93.6% (Myo 92.5) for the nearest-neighbour label map
    assert np.mean(dice_probs) >= 0.95, dice_probs
    assert np.mean(dice_probs) > np.mean(dice_nearest) + 0.01


def test_histogram_matching_maps_quantiles_onto_the_reference():
    """A gamma-distorted, rescaled volume matched to a reference of another distribution: its
    quantiles (the match points) land on the reference's; the order of voxels is kept (a
    monotone map) and the geometry is untouched."""
    from cm_trancaf.data.preprocess import histogram_match
    rng = np.random.default_rng(4)
    src_arr = (rng.gamma(2.0, 1.0, (24, 24, 24)) ** 1.7 * 30 + 5).astype(np.float32)
    ref_arr = rng.normal(600.0, 120.0, (20, 26, 22)).astype(np.float32)
    src, ref = sitk.GetImageFromArray(src_arr), sitk.GetImageFromArray(ref_arr)
    src.SetSpacing((1.2, 0.8, 5.0))
    out = histogram_match(src, ref, levels=1024, match_points=9, threshold_at_mean=False)
    assert Geometry.of(out) == Geometry.of(src)
    o = sitk.GetArrayFromImage(out)
    q = np.linspace(10, 90, 9)
    np.testing.assert_allclose(np.percentile(o, q), np.percentile(ref_arr, q),
                               atol=0.03 * np.ptp(ref_arr))
    before = np.abs(np.percentile(src_arr, q) - np.percentile(ref_arr, q)).max()
    assert before > 0.3 * np.ptp(ref_arr)                        # they were far apart
    order = np.argsort(src_arr.ravel())
    assert np.all(np.diff(o.ravel()[order]) >= -1e-3)            # monotone


def _wave(cycles_per_mm: float) -> sitk.Image:
    """A cosine along x on a 1 mm grid (120 x 24 x 24 voxels)."""
    x = np.arange(120, dtype=np.float32)
    arr = np.broadcast_to(np.cos(2 * np.pi * cycles_per_mm * x), (24, 24, 120)).copy()
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((1.0, 1.0, 1.0))
    return img


@pytest.mark.parametrize("cycles_per_mm, antialiased_amplitude", [
    (0.30, (0.0, 0.2)),      # above the 3 mm grid's Nyquist (1/6 per mm): would alias to 1/30 per mm
    (0.03, (0.9, 1.01)),     # well below it: kept
])
def test_antialias_removes_what_a_coarser_grid_cannot_hold_and_keeps_the_rest(
        cycles_per_mm, antialiased_amplitude):
    from cm_trancaf.data.preprocess import antialias, antialias_sigmas
    img = _wave(cycles_per_mm)
    grid = working_grid(img, (3.0, 3.0, 3.0))
    amplitude = lambda im: float(np.abs(sitk.GetArrayViewFromImage(
        resample(im, grid))[4, 4, 3:-3]).max())
    plain, filtered = amplitude(img), amplitude(antialias(img, (3.0, 3.0, 3.0)))
    # without the filter the 3 mm samples of the fast wave are a full-amplitude slow wave (aliasing)
    assert plain > 0.9
    lo, hi = antialiased_amplitude
    assert lo <= filtered <= hi
    # FWHM of sqrt(t^2 - s^2), none where the target is not coarser
    np.testing.assert_allclose(antialias_sigmas((1.0, 3.0, 4.0), (3.0, 3.0, 3.0)),
                               [np.sqrt(8.0) / 2.3548, 0.0, 0.0], rtol=1e-4)


def test_antialias_filters_only_the_axes_it_coarsens():
    """A thick-slice stack onto a grid finer than its slices (ACDC's 10 mm onto 6 mm): the slice
    axis is left alone (it used to fail: ITK refuses a zero sigma), the in-plane axes are smoothed
    as SimpleITK's isotropic-capable filter smooths them when every axis is coarsened."""
    from cm_trancaf.data.preprocess import antialias, antialias_sigmas
    rng = np.random.default_rng(0)
    img = sitk.GetImageFromArray(rng.normal(size=(6, 32, 32)).astype(np.float32))
    img.SetSpacing((1.5, 1.5, 10.0))
    out = sitk.GetArrayFromImage(antialias(img, (2.0, 2.0, 6.0)))
    sigma = float(antialias_sigmas((1.5,), (2.0,))[0])
    for z in range(6):                    # each slice smoothed in-plane on its own, z untouched
        plane = sitk.GetImageFromArray(sitk.GetArrayViewFromImage(img)[z])
        plane.SetSpacing((1.5, 1.5))
        np.testing.assert_allclose(out[z], sitk.GetArrayFromImage(
            sitk.SmoothingRecursiveGaussian(plane, [sigma, sigma])), atol=1e-4)
    # every axis coarsened: the per-axis filters equal SmoothingRecursiveGaussian
    target = (3.0, 3.0, 14.0)
    reference = sitk.SmoothingRecursiveGaussian(img, [float(v) for v in antialias_sigmas(
        img.GetSpacing(), target)])
    np.testing.assert_allclose(sitk.GetArrayFromImage(antialias(img, target)),
                               sitk.GetArrayFromImage(reference), atol=1e-4)
    assert out.std() < sitk.GetArrayViewFromImage(img).std()          # in-plane noise smoothed


def _oblique(image: sitk.Image, degrees=(30.0, -20.0, 40.0)) -> sitk.Image:
    """The same voxels with an oblique direction (a short-axis stack's kind of orientation)."""
    rot = sitk.Euler3DTransform()
    rot.SetRotation(*np.deg2rad(degrees))
    out = sitk.Image(image)
    out.SetDirection(tuple(np.asarray(rot.GetMatrix()).reshape(3, 3).ravel()))
    return out


def test_image_axes_grid_keeps_an_oblique_stack_and_maps_points_exactly(tiny_phantom):
    image, label = load_case(mmwhs_cases(tiny_phantom, "mr")[0], LABEL_SETS["mmwhs"])
    image, label = _oblique(image), _oblique(label)
    spacing = tuple(float(s) for s in image.GetSpacing())
    grid = working_grid(image, spacing, "image")
    assert grid.direction == image.GetDirection() and grid.size == image.GetSize()
    np.testing.assert_allclose(grid.origin, image.GetOrigin(), atol=1e-6)
    coarse = working_grid(image, (2 * spacing[0], 2 * spacing[1], spacing[2]), "image")
    assert coarse.size[2] == image.GetSize()[2]                # the slices stay slices
    # the extent's centre is kept, and index <-> mm are inverse on the oblique grid
    centre = lambda g: index_to_mm(g, (np.asarray(g.size)[::-1] - 1) / 2)
    np.testing.assert_allclose(centre(coarse), centre(grid), atol=1e-6)
    p = np.array([10.0, -20.0, 5.0])
    np.testing.assert_allclose(index_to_mm(coarse, mm_to_index(coarse, p)), p, atol=1e-9)
    idx = np.array([3, 5, 7])
    np.testing.assert_allclose(index_to_mm(coarse, idx), coarse.reference().TransformIndexToPhysicalPoint(
        [int(v) for v in idx[::-1]]), atol=1e-6)
    # at native spacing the image grid is the image's own: labels and a perfect prediction pasted
    # back come back voxel for voxel; the world-aligned grid cannot do that for an oblique image
    for axes, exact in (("image", True), ("world", False)):
        cfg = DataConfig(spacing=spacing, enhance="none", grid_axes=axes)
        prep = prepare(image, label, cfg, "mr", 8)
        probs, start = _onehot_roi(prep, (80, 80, 80))
        out = probs_to_source(probs, start, prep)
        assert Geometry.of(out) == Geometry.of(label)
        same = np.array_equal(sitk.GetArrayFromImage(out), sitk.GetArrayFromImage(label))
        assert same == exact, axes
    with pytest.raises(ValueError, match="grid_axes"):
        working_grid(image, spacing, "scanner")


def test_image_axes_grid_keeps_a_real_oblique_lge_stack_closer_to_its_labels():
    """MS-CMRSeg LGE stacks are oblique (0.75 x 0.75 x 5 mm): on a 2 x 2 x 6 mm grid along the
    stack's own axes a perfect prediction pasted back keeps more of the myocardium than on a
    world-aligned one, which cuts across the slices (measured on 5 LGE stacks: Myo 95.6 against
    93.6 %, mean of the 3 structures 96.9 against 95.8 %)."""
    path = need_shared("mscmrseg") / "LGE" / "patient14_LGE_manual.nii.gz"
    label = sitk.ReadImage(str(path))
    ls = LABEL_SETS["mscmrseg"]
    classes = sitk.GetImageFromArray(ls.to_classes(sitk.GetArrayFromImage(label)).astype(np.uint8))
    classes.CopyInformation(label)
    orig = sitk.GetArrayFromImage(classes)
    myo = {}
    for axes in ("world", "image"):
        cfg = DataConfig(spacing=(2.0, 2.0, 6.0), enhance="none", grid_axes=axes)
        prep = prepare(sitk.Cast(classes, sitk.sitkFloat32), classes, cfg, "mr", 4)
        onehot = np.eye(4, dtype=np.float32)[prep.label]
        out = sitk.GetArrayFromImage(probs_to_source(onehot, np.zeros(3, int), prep))
        myo[axes] = _dice(out, orig, 1)
    assert myo["image"] > myo["world"] + 0.02 and myo["image"] > 0.93, myo


def test_fit_slice_mm_stretches_only_a_stack_longer_than_the_roi():
    """``data.fit_slice_mm``: a stack longer than the ROI's depth of working slices is spread
    over exactly that many slices (capped), a shorter one keeps the configured spacing; the
    in-plane axes, the stack's extent and its centre are kept, and labels pasted back from the
    stretched grid keep the source geometry."""
    def stack(n_slices, dz):
        img = sitk.Image(40, 30, n_slices, sitk.sitkFloat32)
        img.SetSpacing((2.0, 2.0, dz))
        img.SetOrigin((-7.0, 3.0, 11.0))
        return _oblique(img)
    depth, cap = 16, 8.0
    long_stack = stack(11, 10.0)                                   # 110 mm > 16 x 6 mm
    grid = working_grid(long_stack, (2.0, 2.0, 6.0), "image", depth, cap)
    assert grid.size[2] == depth and grid.spacing[2] == pytest.approx(110.0 / depth)
    assert grid.spacing[:2] == (2.0, 2.0) and grid.size[:2] == (40, 30)
    plain = working_grid(long_stack, (2.0, 2.0, 6.0), "image")
    assert plain.size[2] == 19                                      # ceil(110 / 6)
    centre = lambda g: index_to_mm(g, (np.asarray(g.size)[::-1] - 1) / 2)
    np.testing.assert_allclose(centre(grid), centre(plain), atol=1e-6)
    short = working_grid(stack(9, 10.0), (2.0, 2.0, 6.0), "image", depth, cap)   # 90 mm
    assert short.spacing[2] == 6.0 and short.size[2] == 15
    capped = working_grid(stack(30, 10.0), (2.0, 2.0, 6.0), "image", depth, cap)  # 300 mm
    assert capped.spacing[2] == cap and capped.size[2] == int(np.ceil(300 / cap))
    with pytest.raises(ValueError, match="grid_axes=image"):
        working_grid(long_stack, (2.0, 2.0, 6.0), "world", depth, cap)
    # through prepare (cfg.roi_size[0] is the depth): a perfect prediction pasted back
    label = sitk.Image(long_stack.GetSize(), sitk.sitkUInt8)
    label.CopyInformation(long_stack)
    arr = np.zeros(label.GetSize()[::-1], np.uint8)
    arr[2:9, 8:22, 10:30] = 1
    arr[4:7, 12:18, 14:24] = 2
    label = sitk.GetImageFromArray(arr)
    label.CopyInformation(long_stack)
    cfg = DataConfig(spacing=(2.0, 2.0, 6.0), roi_size=(depth, 32, 32), enhance="none",
                     grid_axes="image", fit_slice_mm=cap)
    prep = prepare(sitk.Cast(label, sitk.sitkFloat32), label, cfg, "mr", 3)
    assert prep.grid == grid
    out = probs_to_source(np.eye(3, dtype=np.float32)[prep.label], np.zeros(3, int), prep)
    assert Geometry.of(out) == Geometry.of(label)
    back = sitk.GetArrayFromImage(out)
    assert _dice(back, arr, 1) > 0.9 and _dice(back, arr, 2) > 0.9
