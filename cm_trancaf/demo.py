"""``make demo``: the whole cascade on the built-in phantom, at CPU scale."""
from __future__ import annotations

from pathlib import Path

from .data import phantom

__all__ = ["run_demo"]


def run_demo(out: Path, preset: str = "cpu", seed: int = 0) -> dict:
    """Build the phantom data set and its preview (the cascade stages follow as they land)."""
    data = out / "phantom"
    meta = phantom.write_dataset(data, n_ct=6, n_mr=6, n_test=4, seed=seed)
    png = phantom.preview(data, out / "phantom_preview.png")
    print(f"phantom: {len(meta['cases'])} cases in {data}; preview {png}")
    return {"phantom": meta}
