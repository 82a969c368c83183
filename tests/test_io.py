"""Volume I/O: geometry kept, and every bad input gives a UserError that names the file."""
import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from cm_trancaf.data.datasets import LABEL_SETS, Case, cavity_diameter_mm, load_case
from cm_trancaf.data.io import Geometry, read_image, read_label, write_image
from cm_trancaf.utils import UserError


def _vol(shape=(6, 7, 8), value=None, spacing=(0.7, 0.8, 2.5)):
    arr = np.random.default_rng(0).normal(size=shape).astype(np.float32) if value is None else value
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    img.SetOrigin((-10.0, 5.0, 3.0))
    img.SetDirection((1, 0, 0, 0, -1, 0, 0, 0, 1))
    return img


def test_write_read_keeps_geometry_and_values(tmp_path):
    img = _vol()
    write_image(img, tmp_path / "a.nii.gz")
    back = read_image(tmp_path / "a.nii.gz")
    for a, b in zip(Geometry.of(back).to_json().values(), Geometry.of(img).to_json().values()):
        np.testing.assert_allclose(a, b, rtol=1e-6)  # NIfTI stores float32
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(img))
    assert not list(tmp_path.glob(".*tmp*")), "no temporary files left behind"


def _expect(path, match, reader=read_image, **kw):
    with pytest.raises(UserError, match=match) as e:
        reader(path, **kw)
    assert str(path) in str(e.value)


def test_bad_inputs_raise_clear_errors(tmp_path):
    _expect(tmp_path / "missing.nii.gz", "no such file")
    (tmp_path / "empty.nii.gz").write_bytes(b"")
    _expect(tmp_path / "empty.nii.gz", "empty file")
    (tmp_path / "text.nii").write_text("this is not an image\n" * 50)
    _expect(tmp_path / "text.nii", "not a readable image")
    write_image(_vol(), tmp_path / "ok.nii.gz")
    data = (tmp_path / "ok.nii.gz").read_bytes()
    (tmp_path / "trunc.nii.gz").write_bytes(data[: len(data) // 2])
    _expect(tmp_path / "trunc.nii.gz", "truncated gzip")
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((5, 6), np.float32)), str(tmp_path / "flat.nii.gz"))
    _expect(tmp_path / "flat.nii.gz", "2D image")
    four = sitk.JoinSeries([sitk.GetImageFromArray(np.zeros((3, 4, 5), np.float32))] * 2)
    sitk.WriteImage(four, str(tmp_path / "4d.nii.gz"))
    _expect(tmp_path / "4d.nii.gz", "4D image")
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((1, 6, 6), np.float32)), str(tmp_path / "one.nii.gz"))
    _expect(tmp_path / "one.nii.gz", "single slice")
    arr = np.zeros((4, 5, 6), np.float32)
    arr[1, 2, 3] = np.nan
    arr[0, 0, 0] = np.inf
    write_image(_vol(value=arr), tmp_path / "nan.nii.gz")
    _expect(tmp_path / "nan.nii.gz", "2 non-finite voxels")


def test_zero_and_negative_spacing_are_rejected(tmp_path):
    # SimpleITK refuses to write such spacing; patch pixdim in a NIfTI-1 header (offset 76).
    for bad, name in [(0.0, "zero"), (-1.5, "neg")]:
        path = tmp_path / f"{name}.nii"
        sitk.WriteImage(_vol(), str(path))
        raw = bytearray(path.read_bytes())
        raw[80:84] = struct.pack("<f", bad)  # pixdim[1]: x spacing
        path.write_bytes(bytes(raw))
        _expect(path, "invalid voxel spacing")


def test_label_codes_and_grids_are_checked(tmp_path):
    lab = np.zeros((6, 7, 8), np.int16)
    lab[2:4, 2:4, 2:4] = 500
    lab[0, 0, 0] = 333
    write_image(_vol(value=lab), tmp_path / "lab.nii.gz")
    _expect(tmp_path / "lab.nii.gz", r"unknown label codes \[333\]", reader=read_label,
            codes=LABEL_SETS["mmwhs"].codes)
    lab[0, 0, 0] = 0
    write_image(_vol(value=lab), tmp_path / "lab.nii.gz")
    write_image(_vol(), tmp_path / "img.nii.gz")
    image, classes = load_case(Case("c", tmp_path / "img.nii.gz", tmp_path / "lab.nii.gz"),
                               LABEL_SETS["mmwhs"])
    assert set(np.unique(sitk.GetArrayFromImage(classes))) == {0, 3}  # LV is class 3
    write_image(_vol(spacing=(0.7, 0.8, 3.0)), tmp_path / "img2.nii.gz")
    with pytest.raises(UserError, match="not on the grid .* spacing"):
        load_case(Case("c", tmp_path / "img2.nii.gz", tmp_path / "lab.nii.gz"), LABEL_SETS["mmwhs"])
    write_image(_vol(shape=(6, 7, 9)), tmp_path / "img3.nii.gz")
    with pytest.raises(UserError, match="not on the grid .* size"):
        load_case(Case("c", tmp_path / "img3.nii.gz", tmp_path / "lab.nii.gz"), LABEL_SETS["mmwhs"])


def test_label_set_maps_codes_both_ways():
    ls = LABEL_SETS["mmwhs"]
    codes = np.array([0, 205, 420, 500, 550, 600, 820, 850])
    classes = ls.to_classes(codes)
    np.testing.assert_array_equal(classes, np.arange(8))
    np.testing.assert_array_equal(ls.to_codes(classes), codes)
    with pytest.raises(UserError, match="unknown label codes"):
        ls.to_classes(np.array([0, 1]), "x.nii.gz")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_peak_memory_of_a_child_is_its_own_not_its_parents(tmp_path):
    """The paper-scale smoke reports a child's peak memory: ``ru_maxrss`` there is at least the
    parent's resident size at the fork (Linux keeps it across exec); ``peak_memory_gb`` is not."""
    import subprocess
    import sys
    held = np.ones(400 * 2 ** 20 // 8)                                 # the parent holds 400 MiB
    script = ("import json, resource; from cm_trancaf.utils import peak_memory_gb; "
              "print(json.dumps([peak_memory_gb(), "
              "resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20]))")
    own, maxrss = json.loads(subprocess.run([sys.executable, "-c", script], capture_output=True,
                                            text=True, check=True).stdout)
    assert maxrss > 0.39                                   # the inherited figure
    assert own < 0.2                                       # a bare Python + numpy: ~30 MB
    assert held.sum() > 0


def test_outputs_get_the_modes_of_any_new_file_not_the_temporary_files_0600(tmp_path):
    """Results, labels and run folders are written under temporary names (0600 / 0700 from
    mkstemp / mkdtemp); once renamed they must have the modes any new file or folder gets under
    the process's umask (0644 / 0755 under the usual 022), as colleagues sharing a results
    folder expect."""
    import os
    from cm_trancaf.data.io import write_image
    from cm_trancaf.utils import atomic_dir, atomic_write_text
    umask = os.umask(0)
    os.umask(umask)
    write_image(sitk.Image(4, 4, 4, sitk.sitkUInt8), tmp_path / "lab.nii.gz")
    atomic_write_text(tmp_path / "table.md", "x")
    with atomic_dir(tmp_path / "run") as d:
        (d / "a").write_text("y")
    (tmp_path / "plain").write_text("z")                    # what a new file gets
    (tmp_path / "plain_dir").mkdir()
    mode = lambda p: p.stat().st_mode & 0o777
    assert mode(tmp_path / "lab.nii.gz") == mode(tmp_path / "table.md") \
        == mode(tmp_path / "plain") == 0o666 & ~umask
    assert mode(tmp_path / "run") == mode(tmp_path / "plain_dir") == 0o777 & ~umask


def test_cavity_diameter_of_a_disc_stack():
    z, y, x = np.mgrid[:5, :80, :80]
    arr = ((y - 40.0) ** 2 + (x - 40.0) ** 2 <= 20.0 ** 2).astype(np.int16) * 500
    arr[0] = 0                                                   # an empty slice changes nothing
    image = sitk.GetImageFromArray(arr)
    image.SetSpacing((0.75, 0.75, 8.0))
    assert cavity_diameter_mm(image, 500) == pytest.approx(2 * 20 * 0.75, rel=0.02)
    image.SetSpacing((1.25, 1.25, 8.0))                          # in-plane spacing scales it
    assert cavity_diameter_mm(image, 500) == pytest.approx(2 * 20 * 1.25, rel=0.02)
    assert np.isnan(cavity_diameter_mm(image, 600))
