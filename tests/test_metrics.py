"""Metrics against hand-computed cases and SimpleITK's filters, anisotropic spacing included."""
import numpy as np
import pandas as pd
import SimpleITK as sitk

from cm_trancaf.data.datasets import LABEL_SETS
from cm_trancaf.metrics import distances, evaluate_case, overlap, summarize


def _sitk(mask, spacing):
    img = sitk.GetImageFromArray(mask.astype(np.uint8))
    img.SetSpacing(spacing)
    return img


def test_overlap_by_hand():
    a = np.zeros((4, 4, 4), bool); a[0, 0, :2] = True          # 2 voxels
    b = np.zeros((4, 4, 4), bool); b[0, 0, 1:4] = True         # 3 voxels, 1 shared
    assert overlap(a, b) == (2 * 1 / 5, 1 / 4)
    assert overlap(np.zeros(3, bool), np.zeros(3, bool)) == (1.0, 1.0)


def test_distances_against_simpleitk_anisotropic():
    rng = np.random.default_rng(0)
    for spacing in [(1.0, 1.0, 1.0), (0.7, 1.3, 2.5)]:
        for _ in range(3):
            a = np.zeros((20, 24, 22), bool); b = np.zeros_like(a)
            lo = rng.integers(2, 8, 3); hi = lo + rng.integers(4, 10, 3)
            a[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = True
            lo = rng.integers(2, 10, 3); hi = lo + rng.integers(3, 9, 3)
            b[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = True
            hd, _, _ = distances(a, b, spacing[::-1])
            f = sitk.HausdorffDistanceImageFilter()
            f.Execute(_sitk(a, spacing), _sitk(b, spacing))
            np.testing.assert_allclose(hd, f.GetHausdorffDistance(), atol=1e-6)
            o = sitk.LabelOverlapMeasuresImageFilter()
            o.Execute(_sitk(a, spacing), _sitk(b, spacing))
            d, j = overlap(a, b)
            np.testing.assert_allclose([d, j], [o.GetDiceCoefficient(), o.GetJaccardCoefficient()],
                                       atol=1e-6)


def test_surface_distances_against_scipy_on_irregular_masks():
    # an independent reference: scipy's exact EDT on the whole grid (no cropping), surfaces by
    # 26-neighbour erosion; irregular blobs, anisotropic spacing, a mask touching the border
    from scipy import ndimage
    rng = np.random.default_rng(1)
    spacing = (2.5, 0.7, 1.3)                                   # (D, H, W) mm
    for _ in range(3):
        a = ndimage.gaussian_filter(rng.random((18, 30, 26)), 2) > 0.5
        b = ndimage.gaussian_filter(rng.random((18, 30, 26)), 2) > 0.52
        surf = lambda m: m & ~ndimage.binary_erosion(m, np.ones((3, 3, 3)), border_value=0)
        to_a = ndimage.distance_transform_edt(~surf(a), sampling=spacing)
        to_b = ndimage.distance_transform_edt(~surf(b), sampling=spacing)
        d = np.concatenate([to_b[surf(a)], to_a[surf(b)]])
        hd = max(ndimage.distance_transform_edt(~b, sampling=spacing)[a].max(),
                 ndimage.distance_transform_edt(~a, sampling=spacing)[b].max())
        np.testing.assert_allclose(distances(a, b, spacing),
                                   [hd, np.percentile(d, 95), d.mean()], rtol=1e-5)


def test_surface_distances_by_hand():
    # two parallel slabs 3 voxels apart along an axis of 2 mm spacing: every surface distance is
    # 6 mm between facing faces; HD is from the far face
    a = np.zeros((10, 5, 5), bool); a[2] = True
    b = np.zeros((10, 5, 5), bool); b[5] = True
    hd, hd95, assd = distances(a, b, (2.0, 1.0, 1.0))
    assert hd == 6.0 and hd95 == 6.0 and assd == 6.0


def test_missing_structures_and_whs_scores():
    ls = LABEL_SETS["mscmrseg"]
    truth = np.zeros((6, 6, 6), np.uint8); truth[1:3, 1:3, 1:3] = 1; truth[3:5, 3:5, 3:5] = 2
    pred = truth.copy(); pred[pred == 2] = 0                       # LV missing in prediction
    rows = {r["structure"]: r for r in evaluate_case(pred, truth, (1, 1, 1), ls, "c1")}
    assert rows["Myo"]["dice"] == 1.0 and rows["LV"]["dice"] == 0.0
    assert np.isnan(rows["LV"]["hd_mm"]) and rows["LV"]["missing"]
    assert rows["RV"]["dice"] == 1.0 and rows["RV"]["hd_mm"] == 0.0   # absent in both
    np.testing.assert_allclose(rows["WHS_generalised"]["dice"], 2 * 8 / (8 + 16))
    np.testing.assert_allclose(rows["WHS_mean"]["dice"], (1 + 0 + 1) / 3)
    s = summarize(pd.DataFrame(list(rows.values())))
    assert s.loc["LV", "n_missing"] == 1 and s.loc["Myo", "n_missing"] == 0
    # an empty prediction of a heart with all three structures: none has a distance, so the
    # case's mean HD is NaN (quietly), while its mean Dice is defined
    import warnings
    truth[5, 5, 5] = 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rows = {r["structure"]: r for r in evaluate_case(np.zeros_like(truth), truth, (1, 1, 1),
                                                         ls, "c2")}
    assert np.isnan(rows["WHS_mean"]["hd_mm"]) and rows["WHS_mean"]["dice"] == 0.0


def test_anatomy_score_is_one_for_an_identity_translation_and_falls_when_anatomy_moves(tmp_path):
    """Label-aligned volumes (intensity = 40 x class) segmented by an oracle that reads the class
    back from the intensity: the identity translation keeps every structure (score 1); a
    translation that shifts the anatomy by 3 voxels, or shuffles voxels, does not."""
    from cm_trancaf.data.datasets import Case
    from cm_trancaf.metrics import anatomy_score
    labelset = LABEL_SETS["mscmrseg"]
    rng = np.random.default_rng(2)
    zz, yy, xx = np.mgrid[:24, :32, :32]
    classes = np.zeros((24, 32, 32), np.uint8)
    classes[(zz - 12) ** 2 + (yy - 16) ** 2 + (xx - 14) ** 2 < 64] = 2               # LV
    ring = ((zz - 12) ** 2 + (yy - 16) ** 2 + (xx - 14) ** 2 < 121) & (classes == 0)
    classes[ring] = 1                                                                 # Myo
    classes[(zz - 12) ** 2 + (yy - 16) ** 2 + (xx - 26) ** 2 < 20] = 3               # RV

    def write(cid, image_classes):
        img = sitk.GetImageFromArray(image_classes.astype(np.float32) * 40.0)
        lab = sitk.GetImageFromArray(np.asarray((0,) + labelset.codes, np.int16)[classes])
        for x in (img, lab):
            x.SetSpacing((1.25, 1.25, 5.0))
        sitk.WriteImage(img, str(tmp_path / f"{cid}_image.nii.gz"))
        sitk.WriteImage(lab, str(tmp_path / f"{cid}_label.nii.gz"))
        return Case(cid, tmp_path / f"{cid}_image.nii.gz", tmp_path / f"{cid}_label.nii.gz", "mr")

    def oracle(image):                       # class = intensity / 40, in the data set's codes
        k = np.clip(np.round(sitk.GetArrayFromImage(image) / 40.0), 0, 3).astype(np.int64)
        out = sitk.GetImageFromArray(np.asarray((0,) + labelset.codes)[k].astype(np.int16))
        out.CopyInformation(image)
        return out

    score = lambda case: anatomy_score(oracle, [case], labelset).set_index("structure")["dice"]
    identity = score(write("same", classes))
    assert identity["WHS_mean"] == 1.0 and (identity[list(labelset.names)] == 1.0).all()
    shifted = score(write("shifted", np.roll(classes, 3, axis=2)))
    shuffled = score(write("shuffled", rng.permutation(classes.ravel()).reshape(classes.shape)))
    assert shifted["WHS_mean"] < 0.8 and shuffled["WHS_mean"] < 0.3
    assert shifted["WHS_mean"] > shuffled["WHS_mean"]
