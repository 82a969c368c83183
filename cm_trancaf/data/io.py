"""Volume I/O with SimpleITK: read, validate, keep the geometry, write back atomically.

Inputs: any 3D file SimpleITK reads (NIfTI, MHA, NRRD, ...) or a folder holding one DICOM series
(SimpleITK's series reader, slices sorted by GDCM); outputs are NIfTI.

Arrays follow SimpleITK's numpy order ``(D, H, W) = (z, y, x)``; physical coordinates and
spacings are ``(x, y, z)`` in mm (ITK's LPS world). Every read is validated and every problem
raises :class:`~cm_trancaf.utils.UserError` naming the file and the problem.
"""
from __future__ import annotations

import contextlib
import gzip
import locale
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..utils import UserError, atomic_path

__all__ = ["Geometry", "read_image", "read_label", "write_image", "check_same_grid", "quiet_itk",
           "case_id_of", "list_images", "label_files", "dicom_series", "keep_locale", "IMAGE_EXTENSIONS",
           "LABEL_SUFFIXES"]


def quiet_itk() -> None:
    """Silence ITK's warning window (ACDC headers trigger "unexpected scales in sform")."""
    sitk.ProcessObject_SetGlobalWarningDisplay(False)


quiet_itk()


@dataclass(frozen=True)
class Geometry:
    """An image grid: size (x, y, z) voxels, spacing (mm), origin (mm), direction (3x3, row-major)."""
    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]

    @classmethod
    def of(cls, image: sitk.Image) -> "Geometry":
        return cls(tuple(int(s) for s in image.GetSize()), tuple(image.GetSpacing()),
                   tuple(image.GetOrigin()), tuple(image.GetDirection()))

    def reference(self, pixel=sitk.sitkUInt8) -> sitk.Image:
        """An empty image on this grid, to resample onto or to copy the geometry from."""
        img = sitk.Image([int(s) for s in self.size], pixel)
        self.apply(img)
        return img

    def apply(self, image: sitk.Image) -> sitk.Image:
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    def to_json(self) -> dict:
        return {"size": list(self.size), "spacing": list(self.spacing),
                "origin": list(self.origin), "direction": list(self.direction)}

    @classmethod
    def from_json(cls, d: dict) -> "Geometry":
        return cls(tuple(d["size"]), tuple(d["spacing"]), tuple(d["origin"]), tuple(d["direction"]))


_NIFTI_FLOATS = {16: np.float32, 64: np.float64}


def _check_nifti(path: Path) -> int:
    """Check a NIfTI-1/2 file's raw header and data; return the number of non-finite voxels.

    ITK silently reads a zero pixdim as 1 and NaN/Inf voxels as 0, so both are checked here.
    """
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError) as e:
        raise UserError(f"{path}: corrupt or truncated gzip ({e})") from None
    for endian in "<>":
        if len(raw) >= 348 and struct.unpack(endian + "i", raw[:4])[0] == 348:      # NIfTI-1
            ndim, dtype = struct.unpack(endian + "h", raw[40:42])[0], struct.unpack(endian + "h", raw[70:72])[0]
            pix = struct.unpack(endian + "8f", raw[76:108])
            offset = int(struct.unpack(endian + "f", raw[108:112])[0])
            break
        if len(raw) >= 540 and struct.unpack(endian + "i", raw[:4])[0] == 540:      # NIfTI-2
            ndim, dtype = struct.unpack(endian + "q", raw[16:24])[0], struct.unpack(endian + "h", raw[12:14])[0]
            pix = struct.unpack(endian + "8d", raw[104:168])
            offset = int(struct.unpack(endian + "q", raw[168:176])[0])
            break
    else:
        return 0  # not NIfTI after all: ITK decides
    pix = pix[1:1 + max(0, min(int(ndim), 3))]
    if not np.all(np.isfinite(pix)) or any(p <= 0 for p in pix):
        raise UserError(f"{path}: invalid voxel spacing {tuple(round(float(p), 4) for p in pix)} "
                        "in the NIfTI header (must be finite and > 0)")
    if dtype in _NIFTI_FLOATS:
        data = np.frombuffer(raw, np.dtype(_NIFTI_FLOATS[dtype]).newbyteorder(endian), offset=offset)
        return int(data.size - np.count_nonzero(np.isfinite(data)))
    return 0


@contextlib.contextmanager
def keep_locale():
    """Restore the process's locale afterwards: GDCM (ITK's DICOM I/O) switches it to "C", which
    would make every later text file default to ASCII."""
    saved = locale.setlocale(locale.LC_ALL)
    try:
        yield
    finally:
        locale.setlocale(locale.LC_ALL, saved)


def dicom_series(folder: Path) -> list[str] | None:
    """The files of the one DICOM series in ``folder``, sorted along the slice normal (GDCM);
    None when the folder holds no DICOM series; UserError when it holds several."""
    with keep_locale():
        ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
        if not ids:
            return None
        if len(ids) > 1:
            raise UserError(f"{folder}: {len(ids)} DICOM series in one folder "
                            f"({', '.join(ids[:3])}{' ...' if len(ids) > 3 else ''}); put each "
                            f"series in its own folder")
        return list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), ids[0]))


def _read_dicom(folder: Path, files: list[str], what: str) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        with keep_locale():
            image = reader.Execute()
    except RuntimeError as e:
        first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), "unknown error")
        raise UserError(f"{folder}: not a readable DICOM series ({what}; {first[:200]})") from None
    _validate_geometry(image, folder)
    return image


def _read(path: str | Path, what: str) -> sitk.Image:
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file ({what})")
    if path.is_dir():
        files = dicom_series(path)
        if files is None:
            raise UserError(f"{path}: is a folder without a DICOM series, expected a {what} file")
        return _read_dicom(path, files, what)
    if path.stat().st_size == 0:
        raise UserError(f"{path}: empty file ({what})")
    nonfinite = 0
    if path.name.endswith((".nii", ".nii.gz")):
        nonfinite = _check_nifti(path)
    elif path.name.endswith(".gz"):
        try:  # a truncated gzip makes ITK print pages of errors; say it in one line
            with gzip.open(path, "rb") as f:
                while f.read(1 << 22):
                    pass
        except (OSError, EOFError) as e:
            raise UserError(f"{path}: corrupt or truncated gzip ({e})") from None
    if nonfinite:
        raise UserError(f"{path}: {nonfinite} non-finite voxels (NaN or Inf)")
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as e:
        first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), "unknown error")
        raise UserError(f"{path}: not a readable image ({first[:200]})") from None
    _validate_geometry(image, path)
    return image


def _validate_geometry(image: sitk.Image, path: Path) -> None:
    dim = image.GetDimension()
    if dim != 3:
        raise UserError(f"{path}: {dim}D image of size {image.GetSize()}, expected a 3D volume")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise UserError(f"{path}: {image.GetNumberOfComponentsPerPixel()} components per voxel, "
                        "expected a scalar volume")
    if min(image.GetSize()) < 2:
        raise UserError(f"{path}: size {image.GetSize()} has a single slice, expected a 3D volume")
    spacing = np.asarray(image.GetSpacing())
    if not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise UserError(f"{path}: invalid voxel spacing {tuple(spacing)} (must be finite and > 0)")
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    if not np.all(np.isfinite(direction)) or abs(abs(np.linalg.det(direction)) - 1) > 1e-3:
        raise UserError(f"{path}: invalid direction matrix {tuple(direction.ravel())}")


def read_image(path: str | Path) -> sitk.Image:
    """Read a 3D intensity volume as float32; raise UserError on any problem (incl. NaN/Inf)."""
    image = sitk.Cast(_read(path, "image"), sitk.sitkFloat32)
    arr = sitk.GetArrayViewFromImage(image)
    if not np.all(np.isfinite(arr)):
        bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
        raise UserError(f"{path}: {bad} non-finite voxels (NaN or Inf)")
    return image


def read_label(path: str | Path, codes: tuple[int, ...] | None = None) -> sitk.Image:
    """Read a 3D label map (codes as stored). With ``codes``, any other nonzero value is an error."""
    image = _read(path, "label map")
    arr = sitk.GetArrayViewFromImage(image)
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)):
            raise UserError(f"{path}: label map has NaN or Inf values")
        if not np.all(arr == np.round(arr)):
            raise UserError(f"{path}: label map has non-integer values")
    values = np.unique(arr).astype(np.int64)
    if codes is not None:
        unknown = sorted(set(values.tolist()) - set(codes) - {0})
        if unknown:
            raise UserError(f"{path}: unknown label codes {unknown[:10]}; expected 0 and {list(codes)}")
    return sitk.Cast(image, sitk.sitkInt32)


def check_same_grid(a: sitk.Image, b: sitk.Image, path_a, path_b, tol: float = 1e-3) -> None:
    """Raise UserError unless two images share size, spacing, origin and direction."""
    ga, gb = Geometry.of(a), Geometry.of(b)
    if ga.size != gb.size:
        raise UserError(f"{path_b}: not on the grid of {path_a}: size {gb.size} vs {ga.size}")
    for name in ("spacing", "origin", "direction"):
        va, vb = np.asarray(getattr(ga, name)), np.asarray(getattr(gb, name))
        scale = 1.0 if name == "direction" else max(1.0, float(np.max(np.abs(va))))
        if np.max(np.abs(va - vb)) > tol * scale:
            fmt = lambda v: "(" + ", ".join(f"{x:.4g}" for x in v) + ")"
            raise UserError(f"{path_b}: not on the grid of {path_a}: {name} {fmt(vb)} vs "
                            f"{fmt(va)}")


def write_image(image: sitk.Image, path: str | Path, compress: bool = True) -> Path:
    """Write atomically (temporary name, then rename); raise UserError if the folder is not writable."""
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            sitk.WriteImage(image, str(tmp), compress)
    except (OSError, RuntimeError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{path}: cannot write ({msg[:200]})") from None
    return path


IMAGE_EXTENSIONS = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd")
LABEL_SUFFIXES = ("_label", "_mask", "_manual", "_gt", "_seg")


def case_id_of(path: Path) -> str:
    name = Path(path).name
    for ext in (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd"):
        if name.endswith(ext):
            name = name[: -len(ext)]
            break
    for suffix in ("_image", *LABEL_SUFFIXES, "_pred"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name


def label_files(folder: Path) -> dict[str, Path]:
    """Label maps of a folder by case id, whatever the data set's suffix: ``*_label`` (MM-WHS,
    ``predict``), ``*_mask`` (ACDC), ``*_manual`` (MS-CMRSeg), ``*_gt``, ``*_seg``; a folder
    with none of them holds one label map per case under the case's own name (nnU-Net's
    ``labelsTr/case.nii.gz``), images (``*_image``) left out. ``*_1mm`` copies are left out."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: no such folder")
    files = [p for p in sorted(folder.iterdir()) if p.name.endswith(IMAGE_EXTENSIONS)
             and "_1mm" not in p.name]
    tagged = [p for p in files if any(f"{s}." in p.name for s in LABEL_SUFFIXES)]
    chosen = tagged or [p for p in files if "_image." not in p.name]
    if not chosen:
        raise UserError(f"{folder}: no label files (*_label, *_mask, *_manual, or one file per case)")
    return {case_id_of(p): p for p in chosen}


def list_images(path: Path) -> list[Path]:
    """An image file, a DICOM series folder, or the images of a folder: its image files (label
    maps ``*_label``, ``*_mask``, ... left out) and its sub-folders that hold a DICOM series.
    A series folder's case id is the folder's name."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.exists():
        raise UserError(f"{path}: no such file or folder")
    if dicom_series(path) is not None:
        return [path]
    files = sorted(p for p in path.iterdir() if (p.name.endswith(IMAGE_EXTENSIONS) and not any(
        f"{s}." in p.name or f"{s}_" in p.name for s in LABEL_SUFFIXES)) or (
        p.is_dir() and dicom_series(p) is not None))
    if not files:
        raise UserError(f"{path}: no image files (.nii.gz, .nii, .mha, .nrrd) or DICOM series "
                        f"in this folder")
    return files
