"""Phantom invariants: deterministic, every structure present, topology, unpaired, contrasts."""
import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from cm_trancaf.data.datasets import LABEL_SETS, load_case, mmwhs_cases
from cm_trancaf.data.phantom import (AA, LA, LV, MYO, PA, RA, RV, make_case, random_anatomy,
                                     write_dataset)

from conftest import TINY_SPACING


def _centroid_mm(label_img, k):
    arr = sitk.GetArrayFromImage(label_img)
    idx = np.argwhere(arr == k).mean(0)[::-1]
    return np.asarray(label_img.TransformContinuousIndexToPhysicalPoint(idx.tolist()))


def test_deterministic_for_a_seed(tmp_path, tiny_phantom):
    write_dataset(tmp_path, n_ct=1, n_mr=0, n_test=0, seed=7, spacing=TINY_SPACING)
    a = sitk.ReadImage(str(tmp_path / "ct_train/ct_train_1001_image.nii.gz"))
    b = sitk.ReadImage(str(tiny_phantom / "ct_train/ct_train_1001_image.nii.gz"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b))


def test_topology_and_every_structure_present():
    for seed in range(4):
        rng = np.random.default_rng(seed)
        image, label = make_case(random_anatomy(rng), "ct", rng, (2.0, 2.0, 2.0), (320, 250, 220))
        arr = sitk.GetArrayFromImage(label)
        assert set(np.unique(arr)) == set(range(8))
        # myocardium wraps the LV cavity: most of the cavity's outer rim touches myocardium
        lv = arr == LV
        rim = ndimage.binary_dilation(lv) & ~lv
        assert np.mean(arr[rim] == MYO) > 0.6
        c = {k: _centroid_mm(label, k) for k in (LV, RV, LA, RA, AA, PA)}
        # LPS world: +x left, +y posterior, +z superior
        assert c[RV][0] < c[LV][0] and c[RV][1] < c[LV][1]       # RV anterior-right of LV
        assert c[LA][1] > c[LV][1] and c[LA][2] > c[LV][2]       # LA posterior-superior
        assert c[RA][0] < c[LA][0]                               # RA right of LA
        assert c[AA][2] > c[LV][2] and c[PA][2] > c[RV][2]       # great vessels rise
        # RV is a crescent: its convex hull is much larger than itself -> check it's not convex
        # by testing that the LV+Myo centroid lies within the RV's bounding box
        rv_idx = np.argwhere(arr == RV)
        lvm = np.argwhere((arr == LV) | (arr == MYO)).mean(0)
        assert np.sum((lvm > rv_idx.min(0)) & (lvm < rv_idx.max(0))) >= 2


def test_ct_blood_pools_alike_and_mri_contrast_differs():
    rng = np.random.default_rng(1)
    anat = random_anatomy(rng)
    ct, lab = make_case(anat, "ct", np.random.default_rng(2), (2.0, 2.0, 2.0), (300, 240, 200))
    mr, lab_mr = make_case(anat, "mr", np.random.default_rng(2), (2.0, 2.0, 2.0), (300, 240, 200))
    a, l = sitk.GetArrayFromImage(ct).astype(float), sitk.GetArrayFromImage(lab)
    core = lambda k: ndimage.binary_erosion(l == k, iterations=2)
    pools = [np.median(a[core(k)]) for k in (LV, RV, LA, RA, AA, PA)]
    assert np.ptp(pools) < 40 and min(pools) > 200                    # all contrast-filled HU
    assert np.median(a[core(MYO)]) < min(pools) - 100                 # myocardium darker
    m = sitk.GetArrayFromImage(mr).astype(float)
    # fat: dark in CT, bright in bSSFP MRI (a real domain gap)
    assert np.corrcoef(a.ravel(), m.ravel())[0, 1] < 0.9


def test_dataset_layout_and_unpaired(tiny_phantom):
    ls = LABEL_SETS["mmwhs"]
    ct = mmwhs_cases(tiny_phantom, "ct", "train")
    mr = mmwhs_cases(tiny_phantom, "mr", "train")
    test = mmwhs_cases(tiny_phantom, "ct", "test")
    assert [c.case_id for c in ct] == ["ct_train_1001", "ct_train_1002", "ct_train_1003"]
    assert len(mr) == 2 and len(test) == 2 and all(c.label is not None for c in test)
    vols = []
    for case in ct + mr:
        _, lab = load_case(case, ls)
        arr = sitk.GetArrayFromImage(lab)
        assert set(np.unique(arr)) == set(range(8))
        vols.append(tuple(np.bincount(arr.ravel(), minlength=8)[1:] * np.prod(lab.GetSpacing())))
    assert len(set(vols)) == len(vols)  # no two cases share an anatomy
