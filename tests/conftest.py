"""Shared fixtures: a tiny phantom data set (coarse spacing) and the real-data folder."""
from pathlib import Path

import cm_trancaf  # noqa: F401  the package's environment defaults, before TensorFlow loads
import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TINY_SPACING = {"ct": (4.0, 4.0, 4.0), "mr": (5.0, 5.0, 6.0)}


def need_shared(sub: str) -> Path:
    path = SHARED_DATA / sub
    if not path.is_dir():
        pytest.skip(f"real data not available: {path} is absent (see ../shared/data/README.md)")
    return path


@pytest.fixture(scope="session")
def mscmrseg_repaired(tmp_path_factory) -> Path:
    """../shared/data/mscmrseg with its bSSFP in-plane spacing repaired (data_prep/mscmrseg_spacing.py):
    the copy the experiments read; skips when the real data are absent."""
    from cm_trancaf.data.datasets import repair_mscmrseg_spacing
    root = need_shared("mscmrseg")
    out = tmp_path_factory.mktemp("mscmrseg") / "repaired"
    repair_mscmrseg_spacing(root, out)
    return out


@pytest.fixture(scope="session")
def tiny_phantom(tmp_path_factory) -> Path:
    """MM-WHS-layout phantom: 3 CT train, 2 MRI train, 2 CT test, at 4-6 mm."""
    from cm_trancaf.data.phantom import write_dataset
    root = tmp_path_factory.mktemp("phantom")
    write_dataset(root, n_ct=3, n_mr=2, n_test=2, seed=7, spacing=TINY_SPACING)
    return root


@pytest.fixture(scope="session")
def seg_run(tiny_phantom, tmp_path_factory) -> Path:
    """A trained tiny cascade (localizer, MAUNet, SCN): a ``train-seg`` run folder."""
    from cm_trancaf.config import get_preset
    from cm_trancaf.train.seg import train_segmentation
    run = tmp_path_factory.mktemp("seg")
    train_segmentation(get_preset("tiny"), tiny_phantom, run)
    return run


@pytest.fixture(scope="session")
def mtn_run(tiny_phantom, tmp_path_factory) -> Path:
    """A trained tiny MTN: a ``train-mtn`` run folder (40 steps, a cycle loss that falls)."""
    from cm_trancaf.config import apply_overrides, get_preset
    from cm_trancaf.train.mtn import train_mtn
    run = tmp_path_factory.mktemp("mtn")
    cfg = apply_overrides(get_preset("tiny"), ["mtn.steps=40", "run.log_every=1", "mtn.lr=0.002"])
    train_mtn(cfg, tiny_phantom, run)
    return run
