"""Whole-heart phantoms: the embedded default data set, written in the MM-WHS layout.

    anatomy  = parametric heart (7 MM-WHS structures, random size/shape/pose/position)
             | label-driven (a real MM-WHS CT label map, random affine + elastic deformation)
    context  = thorax around it: body outline, subcutaneous fat, lungs, spine, sternum,
               descending aorta (contrast-filled but unlabelled: a distractor), pericardial fat
    sample   = anatomy and context evaluated on any grid (spacing, field of view, direction)
    render   = CT-like (HU: all blood pools alike, myocardium, fat, lung, bone; partial-volume
               blur; noise) | MRI-like (bSSFP contrast: fat bright, bone dark; multiplicative
               bias field; Rician noise; arbitrary units), so that MRI -> CT is a real domain gap

Coordinates are physical (x, y, z) mm in ITK's LPS world: +x patient left, +y posterior,
+z superior. Class indices follow the ``mmwhs`` label set: 1 Myo, 2 LA, 3 LV, 4 RA, 5 RV, 6 AA,
7 PA. Everything is deterministic for a seed.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from .datasets import LABEL_SETS, Case, load_case, mmwhs_cases
from .io import Geometry, write_image
from .preprocess import foreground_center, index_to_mm, resample, resample_labels, working_grid

__all__ = ["Anatomy", "random_rotation", "random_anatomy", "label_anatomy", "sample", "render_ct",
           "render_mr", "phantom_grid", "make_case", "write_dataset", "preview"]

MYO, LA, LV, RA, RV, AA, PA = 1, 2, 3, 4, 5, 6, 7
# context tissues
AIR, SOFT, FAT, LUNG, BONE, BLOOD = 0, 1, 2, 3, 4, 5


def random_rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    ax, ay, az = np.deg2rad(rng.uniform(-max_deg, max_deg, 3))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


@dataclass
class Anatomy:
    """Where the heart and thorax are. ``heart_rot`` maps heart-local to world coordinates."""
    heart_center: np.ndarray                 # world mm, LV centre
    heart_rot: np.ndarray                    # 3x3
    scale: float
    parts: dict = field(default_factory=dict)  # structure parameters in heart-local mm
    body_center: np.ndarray = field(default_factory=lambda: np.zeros(3))
    body_axes: tuple = (150.0, 105.0)
    fat_mm: float = 15.0
    labels: sitk.Image | None = None         # label-driven: warped class map (world geometry)


def random_anatomy(rng: np.random.Generator) -> Anatomy:
    """A parametric heart with the right topology, random size, shape, pose and position."""
    s = rng.uniform(0.85, 1.15) * 1.25          # ~11-15 cm wide heart in a ~30 cm thorax
    j = lambda v, f=0.1: np.asarray(v, float) * s * rng.uniform(1 - f, 1 + f, np.shape(v))
    u = np.array([0.55, -0.45, -0.70])        # LV long axis: base -> apex (left, anterior, inferior)
    u /= np.linalg.norm(u)
    parts = {
        "lv": {"c": np.zeros(3), "axes": j([19, 19, 33]), "u": u},
        "myo_t": 9.0 * s * rng.uniform(0.85, 1.15),
        "rv": {"c": j([-24, -20, 0], 0.15), "axes": j([30, 17, 34]), "u": u},
        "la": {"c": j([4, 34, 30], 0.1), "axes": j([24, 16, 17])},
        "ra": {"c": j([-34, 18, 22], 0.1), "axes": j([20, 20, 26])},
        "aa": {"p0": j([-4, 8, 22], 0.1), "p1": j([-8, 12, 80], 0.1), "r": 12.5 * s},
        "pa": {"p0": j([-12, -26, 22], 0.1), "p1": j([14, -8, 62], 0.1), "r": 11.5 * s},
    }
    body = np.array([rng.uniform(-10, 10), rng.uniform(-10, 10), 0.0])
    center = body + np.array([10, -20, 0]) + rng.uniform(-12, 12, 3)
    return Anatomy(center, random_rotation(rng, 15), s, parts, body,
                   (rng.uniform(135, 165), rng.uniform(95, 115)), rng.uniform(8, 20))


def label_anatomy(label_path: str | Path, rng: np.random.Generator,
                  spacing: float = 1.5) -> Anatomy:
    """A real MM-WHS label map, randomly rotated/scaled (affine) and elastically deformed."""
    _, lab = load_case(Case("src", Path(label_path), Path(label_path)), LABEL_SETS["mmwhs"])
    grid = working_grid(lab, (spacing,) * 3)
    arr = sitk.GetArrayFromImage(resample_labels(lab, grid, 8, "nearest"))
    center_idx = foreground_center(arr)
    # one resampling: affine about the heart centre + smooth random displacement (elastic)
    rot = random_rotation(rng, 10) * rng.uniform(0.9, 1.1)
    coords = np.indices(arr.shape, dtype=np.float32).reshape(3, -1)
    local = rot @ (coords - center_idx[:, None]) + center_idx[:, None]
    for ax in range(3):
        coarse = rng.normal(0, 4.0 / spacing, (5, 5, 5))  # ~4 mm displacements
        zoom = np.asarray(arr.shape) / 5.0
        local[ax] += ndimage.zoom(coarse, zoom, order=3)[:arr.shape[0], :arr.shape[1],
                                                         :arr.shape[2]].ravel()
    warped = ndimage.map_coordinates(arr, local, order=0, mode="constant").reshape(arr.shape)
    img = sitk.GetImageFromArray(warped.astype(np.uint8))
    grid.apply(img)
    center = index_to_mm(grid, foreground_center(warped))
    body = center - np.array([10, -20, 0]) + rng.uniform(-8, 8, 3)
    return Anatomy(center, np.eye(3), 1.0, {}, body, (rng.uniform(135, 165),
                   rng.uniform(95, 115)), rng.uniform(8, 20), labels=img)


def _ellipsoid(p: np.ndarray, c, axes, u=None) -> np.ndarray:
    """Inside test of an ellipsoid; ``axes[2]`` lies along ``u`` when given (p: (..., 3) local)."""
    q = p - np.asarray(c, np.float32)
    frame = np.eye(3, dtype=np.float32)
    if u is not None:  # orthonormal frame with u as third axis
        a = np.cross(u, [0, 0, 1.0]); a /= np.linalg.norm(a)
        frame = np.stack([a, np.cross(u, a), u], 1).astype(np.float32)
    q = q @ (frame / np.asarray(axes, np.float32))
    return np.einsum("...i,...i->...", q, q) <= 1.0


def _capsule(p: np.ndarray, p0, p1, r) -> np.ndarray:
    p0, d = np.asarray(p0, np.float32), np.asarray(p1 - p0, np.float32)
    q = p - p0
    t = np.clip((q @ d) / (d @ d), 0, 1)
    q -= t[..., None] * d
    return np.einsum("...i,...i->...", q, q) <= r * r


def _heart_labels(anat: Anatomy, local: np.ndarray) -> np.ndarray:
    """Paint structures in priority order; a later one fills only background (topology)."""
    P = anat.parts
    out = np.zeros(local.shape[:-1], np.uint8)

    def paint(mask, k):
        out[mask & (out == 0)] = k

    lv = P["lv"]
    paint(_ellipsoid(local, lv["c"], lv["axes"], lv["u"]), LV)
    outer = _ellipsoid(local, lv["c"], lv["axes"] + P["myo_t"], lv["u"])
    basal = (local - lv["c"]) @ lv["u"] < -0.8 * lv["axes"][2]  # valve plane stays open
    paint(outer & ~basal, MYO)
    paint(_ellipsoid(local, P["rv"]["c"], P["rv"]["axes"], P["rv"]["u"]), RV)  # -> crescent
    paint(_ellipsoid(local, P["la"]["c"], P["la"]["axes"]), LA)
    paint(_ellipsoid(local, P["ra"]["c"], P["ra"]["axes"]), RA)
    paint(_capsule(local, P["aa"]["p0"], P["aa"]["p1"], P["aa"]["r"]), AA)
    paint(_capsule(local, P["pa"]["p0"], P["pa"]["p1"], P["pa"]["r"]), PA)
    return out


def _world(grid: Geometry) -> np.ndarray:
    """World coordinates (D, H, W, 3) of every voxel centre."""
    size = grid.size
    idx = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in size[::-1]],
                               indexing="ij")[::-1], -1)  # (D, H, W, 3) as (i, j, k)
    m = np.asarray(grid.direction, np.float32).reshape(3, 3) * np.asarray(grid.spacing, np.float32)
    return idx @ m.T + np.asarray(grid.origin, np.float32)


def _box(mask: np.ndarray, margin: int):
    """Slices of the bounding box of ``mask`` grown by ``margin`` voxels (None if empty)."""
    idx = np.argwhere(mask)
    if len(idx) == 0:
        return None
    lo = np.maximum(idx.min(0) - margin, 0)
    hi = np.minimum(idx.max(0) + margin + 1, mask.shape)
    return tuple(slice(a, b) for a, b in zip(lo, hi))


def sample(anat: Anatomy, grid: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """Heart classes and context tissues (both (D, H, W) uint8) on ``grid``."""
    w = _world(grid)
    if anat.labels is not None:
        ref = grid.reference()
        lab = sitk.Resample(anat.labels, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
        heart = sitk.GetArrayFromImage(lab)
    else:  # evaluate the structures only in the box that can hold the heart
        heart = np.zeros(w.shape[:3], np.uint8)
        d = w - np.asarray(anat.heart_center, np.float32)
        box = _box(np.einsum("...i,...i->...", d, d) < (110 * anat.scale) ** 2, 0)
        if box is not None:
            heart[box] = _heart_labels(anat, d[box] @ anat.heart_rot.astype(np.float32))
    b = w - anat.body_center
    ax, ay = anat.body_axes
    body_r = (b[..., 0] / ax) ** 2 + (b[..., 1] / ay) ** 2
    tissue = np.where(body_r <= 1, SOFT, AIR).astype(np.uint8)
    inner = ((b[..., 0] / (ax - anat.fat_mm)) ** 2 + (b[..., 1] / (ay - anat.fat_mm)) ** 2) <= 1
    tissue[(body_r <= 1) & ~inner] = FAT
    for side in (-1, 1):
        lung = _ellipsoid(b, np.array([side * 0.5 * ax, 0.1 * ay, 10.0]),
                          (0.37 * ax, 0.68 * ay, 120.0))
        tissue[lung & inner] = LUNG
    spine = np.hypot(b[..., 0], b[..., 1] - 0.72 * ay) <= 17
    tissue[spine] = BONE
    tissue[(np.abs(b[..., 0]) < 12) & (np.abs(b[..., 1] + 0.88 * ay) < 6)] = BONE  # sternum
    tissue[np.hypot(b[..., 0] - 22, b[..., 1] - 0.45 * ay) <= 11] = BLOOD      # descending aorta
    margin = int(np.ceil(6 / min(grid.spacing)))
    box = _box(heart > 0, margin)
    if box is not None:  # pericardial fat: a 5 mm rim around the heart where lung would be
        dist = ndimage.distance_transform_edt(heart[box] == 0, sampling=grid.spacing[::-1])
        sub = tissue[box]
        sub[(dist > 0) & (dist <= 5) & (sub == LUNG)] = FAT
    tissue[heart > 0] = SOFT
    return heart, tissue


CT_HU = {AIR: -1000.0, SOFT: 45.0, FAT: -100.0, LUNG: -830.0, BONE: 650.0, BLOOD: 330.0}
MR_AU = {AIR: 0.0, SOFT: 0.3, FAT: 0.9, LUNG: 0.06, BONE: 0.15, BLOOD: 0.85}


def _blur_noise(vol, spacing, sigma_mm, noise, rng):
    vol = ndimage.gaussian_filter(vol, [sigma_mm / s for s in spacing[::-1]])
    return vol + rng.normal(0, noise, vol.shape).astype(np.float32)


def render_ct(heart: np.ndarray, tissue: np.ndarray, spacing, rng: np.random.Generator) -> np.ndarray:
    """CT-like HU (int16): contrast-filled blood pools all alike; partial volume; noise."""
    lut = np.array([CT_HU[t] for t in range(6)], np.float32)
    vol = lut[tissue]
    blood = rng.uniform(280, 380)
    vol[heart > 0] = blood + rng.normal(0, 5, (8,)).astype(np.float32)[heart[heart > 0]]
    vol[heart == MYO] = rng.uniform(80, 120)
    vol[tissue == BLOOD] = blood
    vol = _blur_noise(vol, spacing, 0.8, rng.uniform(15, 30), rng)
    return np.clip(np.round(vol), -1024, 3071).astype(np.int16)


def render_mr(heart: np.ndarray, tissue: np.ndarray, spacing, rng: np.random.Generator) -> np.ndarray:
    """bSSFP-like MRI (float32, arbitrary units): bias field, Rician noise."""
    lut = np.array([MR_AU[t] for t in range(6)], np.float32)
    vol = lut[tissue] * rng.uniform(0.9, 1.1, 6).astype(np.float32)[tissue]
    vol[heart > 0] = rng.uniform(0.75, 0.95)
    vol[heart == MYO] = rng.uniform(0.18, 0.26)
    vol = ndimage.gaussian_filter(vol, [1.0 / s for s in spacing[::-1]])
    # smooth multiplicative bias field: exp of a low-order random polynomial
    zz, yy, xx = [np.linspace(-1, 1, n, dtype=np.float32) for n in vol.shape]
    c = rng.normal(0, 0.25, 6)
    bias = np.exp(c[0] * xx[None, None] + c[1] * yy[None, :, None] + c[2] * zz[:, None, None]
                  + c[3] * xx[None, None] ** 2 + c[4] * yy[None, :, None] ** 2
                  + c[5] * (zz[:, None, None] * xx[None, None]))
    vol = vol * bias
    sd = rng.uniform(0.02, 0.04)
    n1, n2 = rng.normal(0, sd, (2,) + vol.shape).astype(np.float32)
    vol = np.sqrt((vol + n1) ** 2 + n2 ** 2)                       # Rician
    return (vol * rng.uniform(400, 1200)).astype(np.float32)


def phantom_grid(anat: Anatomy, modality: str, spacing: tuple[float, float, float],
                 fov_mm: tuple[float, float, float], rng: np.random.Generator) -> Geometry:
    """Field of view around the body, shifted at random; CT in LAS, MRI in RAS (as scanners vary)."""
    size = np.maximum(8, np.round(np.asarray(fov_mm) / spacing)).astype(int)
    center = anat.body_center + np.array([0, 0, anat.heart_center[2] - anat.body_center[2]])
    center = center + rng.uniform(-10, 10, 3)
    flips = np.array([1.0, -1.0, 1.0]) if modality == "ct" else np.array([-1.0, -1.0, 1.0])
    direction = np.diag(flips)
    origin = center - direction @ ((size - 1) / 2 * np.asarray(spacing))
    return Geometry(tuple(int(v) for v in size), tuple(float(v) for v in spacing),
                    tuple(float(v) for v in origin), tuple(direction.ravel()))


DEFAULT_SPACING = {"ct": (1.25, 1.25, 1.5), "mr": (1.75, 1.75, 2.5)}
DEFAULT_FOV = {"ct": (320.0, 250.0, 200.0), "mr": (300.0, 240.0, 180.0)}


def make_case(anat: Anatomy, modality: str, rng: np.random.Generator, spacing=None,
              fov_mm=None) -> tuple[sitk.Image, sitk.Image]:
    """Render one anatomy: (image, class map) SimpleITK images on a fresh grid."""
    spacing = tuple(spacing or DEFAULT_SPACING[modality])
    grid = phantom_grid(anat, modality, spacing, tuple(fov_mm or DEFAULT_FOV[modality]), rng)
    heart, tissue = sample(anat, grid)
    vol = (render_ct if modality == "ct" else render_mr)(heart, tissue, spacing, rng)
    img, lab = sitk.GetImageFromArray(vol), sitk.GetImageFromArray(heart)
    return grid.apply(img), grid.apply(lab)


def write_dataset(root: str | Path, n_ct: int = 6, n_mr: int = 6, n_test: int = 4, seed: int = 0,
                  spacing: dict | None = None, fov_mm: dict | None = None,
                  label_maps: list[Path] | None = None) -> dict:
    """Write an MM-WHS-layout phantom data set (CT and MRI from different anatomies: unpaired).

    ``ct_train``/``mr_train`` hold image + label; ``ct_test`` holds held-out CT with labels.
    With ``label_maps``, anatomies are deformed real label maps instead of parametric hearts.
    """
    root = Path(root)
    codes = LABEL_SETS["mmwhs"].to_codes
    spacing, fov_mm = spacing or DEFAULT_SPACING, fov_mm or DEFAULT_FOV
    plan = [("ct", "train", 1001 + i) for i in range(n_ct)] + \
           [("mr", "train", 1001 + i) for i in range(n_mr)] + \
           [("ct", "test", 2001 + i) for i in range(n_test)]
    written = []
    for k, (mod, split, num) in enumerate(plan):
        rng = np.random.default_rng([seed, k])   # one anatomy per case: CT and MRI never share one
        anat = (label_anatomy(label_maps[k % len(label_maps)], rng) if label_maps
                else random_anatomy(rng))
        img, lab = make_case(anat, mod, rng, spacing[mod], fov_mm[mod])
        stem = root / f"{mod}_{split}" / f"{mod}_{split}_{num}"
        lab_codes = sitk.GetImageFromArray(codes(sitk.GetArrayViewFromImage(lab)))
        lab_codes.CopyInformation(lab)
        write_image(lab_codes, f"{stem}_label.nii.gz")
        write_image(img, f"{stem}_image.nii.gz")
        written.append(f"{mod}_{split}_{num}")
    meta = {"seed": seed, "cases": written, "source": "labels" if label_maps else "parametric",
            "spacing": {k: list(v) for k, v in spacing.items()}}
    (root / "phantom.json").write_text(json.dumps(meta, indent=2))
    return meta


def preview(root: str | Path, out_png: str | Path) -> Path:
    """PNG of orthogonal mid-slices of the first CT and MRI phantom with labels overlaid."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    root = Path(root)
    fig, axes = plt.subplots(2, 3, figsize=(12, 8))
    for row, mod in enumerate(("ct", "mr")):
        case = mmwhs_cases(root, mod, "train")[0]
        img, lab = load_case(case, LABEL_SETS["mmwhs"])
        grid = working_grid(img, (1.5, 1.5, 1.5))       # canonical orientation for display
        a = sitk.GetArrayFromImage(resample(img, grid, sitk.sitkLinear, float(
            np.min(sitk.GetArrayViewFromImage(img)))))
        l = sitk.GetArrayFromImage(resample_labels(lab, grid, 8))
        c = np.round(foreground_center(l)).astype(int)
        views = [(a[c[0]], l[c[0]], "axial"), (a[:, c[1]], l[:, c[1]], "coronal"),
                 (a[:, :, c[2]], l[:, :, c[2]], "sagittal")]
        for col, (im, lb, name) in enumerate(views):
            ax = axes[row, col]
            origin = "upper" if name == "axial" else "lower"
            ax.imshow(im, cmap="gray", origin=origin)
            ax.imshow(np.ma.masked_equal(lb, 0), cmap="tab10", vmin=0, vmax=9, alpha=0.35,
                      origin=origin, interpolation="nearest")
            ax.set_title(f"{case.case_id} {name}")
            ax.axis("off")
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=80)
    plt.close(fig)
    return out_png
