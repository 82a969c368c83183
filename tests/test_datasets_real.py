"""Every file in ../shared/data loads through its adapter with the right classes (skips if absent)."""
import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from cm_trancaf.data.datasets import (LABEL_SETS, acdc_cases, find_cases, generic_cases,
                                      load_case, mscmrseg_cases)
from cm_trancaf.data.io import read_label
from cm_trancaf.experiments import mscmrseg_cohort
from cm_trancaf.utils import UserError

from conftest import need_shared

pytestmark = pytest.mark.realdata


def _check(cases, labelset, expect_all_classes=True):
    assert cases
    for case in cases:
        image, label = load_case(case, labelset)
        assert image.GetDimension() == 3
        assert label is not None, case
        present = set(np.unique(sitk.GetArrayViewFromImage(label)))
        assert present <= set(range(labelset.num_classes))
        if expect_all_classes:
            assert present == set(range(labelset.num_classes)), (case.case_id, present)


def test_mmwhs_ct_label_maps():
    root = need_shared("mmwhs_ct_labels")
    ls = LABEL_SETS["mmwhs"]
    paths = sorted(root.glob("*_label.nii.gz"))
    assert len(paths) == 2
    for p in paths:
        arr = sitk.GetArrayFromImage(read_label(p, ls.codes))  # a view would outlive its image
        assert set(np.unique(arr)) == {0, *ls.codes}


@pytest.mark.parametrize("sequence", ["C0", "LGE"])
def test_mscmrseg(sequence):
    root = need_shared("mscmrseg")
    cases = mscmrseg_cases(root, sequence)
    assert len(cases) == {"C0": 35, "LGE": 25}[sequence]
    _check(cases, LABEL_SETS["mscmrseg"])


def test_mscmrseg_c0_headers_are_refused_and_repaired(mscmrseg_repaired):
    # the shared copy's bSSFP hearts read 1.65x too wide; the repaired copy's are adult-sized
    with pytest.raises(UserError, match="mscmrseg_spacing.py"):
        mscmrseg_cohort(need_shared("mscmrseg"))
    rows = pd.read_csv(mscmrseg_repaired / "spacing.csv")
    assert len(rows) == 35
    assert rows.lv_diameter_old_mm.median() > 80 and 45 <= rows.lv_diameter_new_mm.median() <= 60
    assert len(mscmrseg_cohort(mscmrseg_repaired).source) == 35


def test_acdc_quietly(capfd):
    root = need_shared("acdc")
    cases = acdc_cases(root)
    assert len(cases) == 99
    _check(cases, LABEL_SETS["acdc"])
    err = capfd.readouterr().err
    assert "unexpected scales in sform" not in err  # ITK warnings must not flood the terminal


def test_generic_adapter_and_errors(tmp_path):
    root = need_shared("acdc")
    cases = generic_cases(root / "images", "patient00*.nii.gz", ("images", "masks"), "mr")
    assert len(cases) == 9
    with pytest.raises(UserError, match="no such folder"):
        find_cases(tmp_path / "nope", "acdc")
    with pytest.raises(UserError, match="no files matching"):
        generic_cases(tmp_path)
    with pytest.raises(UserError, match="unknown dataset layout"):
        find_cases(tmp_path, "kaggle")
