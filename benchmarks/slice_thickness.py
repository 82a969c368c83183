"""A trained cascade on real target images re-sampled to another acquisition's resolution.

Separates resolution from appearance: when a cascade trained on LGE (5 mm slices) scores poorly
on bSSFP-derived images (8-13 mm slices), is the slice thickness to blame? Each labelled image
is low-passed to the coarser resolution (a Gaussian per axis: ``preprocess.antialias``, the
slice profile) and resampled along its own axes (``preprocess.working_grid(axes="image")``),
its labels by nearest neighbour onto the same grid; the cascade segments it and Dice / HD are
computed there, beside the native images' scores.

    python benchmarks/slice_thickness.py --run "results/mscmrseg_lge/cmr_cpu/work/seg/LGE only/s0_f0" \\
        --images DEV_LGE_IMAGES --labels DEV_LGE_LABELS --label-set mscmrseg \\
        --spacing 1.25 1.25 8 --spacing 1.25 1.25 12 --out results/slice_thickness
Use development images (never an experiment's test patients). Writes ``per_case.csv`` and
``summary.csv`` (mean Dice per structure and spacing) into ``--out`` and prints the table.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import SimpleITK as sitk

from cm_trancaf.data.preprocess import antialias, resample, working_grid


def coarsen(image: sitk.Image, label: sitk.Image, spacing) -> tuple[sitk.Image, sitk.Image]:
    """``image`` as if acquired at ``spacing`` (mm, along its column, row and slice axes): the
    Gaussian slice profile, then linear resampling; ``label`` nearest-neighbour onto that grid."""
    grid = working_grid(image, tuple(spacing), axes="image")
    smooth = antialias(sitk.Cast(image, sitk.sitkFloat32), spacing, axes="image")
    return resample(smooth, grid), resample(label, grid, sitk.sitkNearestNeighbor, 0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="a train-seg run folder")
    p.add_argument("--images", required=True, help="folder of labelled target images")
    p.add_argument("--labels", required=True, help="their label maps (paired by case id)")
    p.add_argument("--label-set", default="mscmrseg", help="mscmrseg, acdc or mmwhs")
    p.add_argument("--spacing", type=float, nargs=3, action="append", required=True,
                   metavar=("COL", "ROW", "SLICE"), help="a coarser resolution (repeatable)")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)

    from cm_trancaf.cli import run_guarded
    from cm_trancaf.utils import import_tensorflow_quietly
    import_tensorflow_quietly(False)

    def run() -> int:
        import pandas as pd
        from cm_trancaf.data.datasets import get_labelset
        from cm_trancaf.data.io import case_id_of, list_images, read_image, read_label
        from cm_trancaf.inference import Cascade
        from cm_trancaf.metrics import evaluate_case
        from cm_trancaf.utils import UserError, atomic_path
        labelset = get_labelset(args.label_set)
        cascade = Cascade.load(Path(args.run))
        labels = {case_id_of(f): f for f in Path(args.labels).iterdir()}
        rows = []
        for path in list_images(Path(args.images)):
            cid = case_id_of(path)
            if cid not in labels:
                raise UserError(f"{path}: no label map for case {cid!r} in {args.labels}")
            image, label = read_image(path), read_label(labels[cid])
            for spacing in [None, *args.spacing]:
                img, lab = (image, label) if spacing is None else coarsen(image, label, spacing)
                pred = cascade.predict_image(img)
                classes = labelset.to_classes(sitk.GetArrayViewFromImage(pred), f"{path}")
                truth = labelset.to_classes(sitk.GetArrayViewFromImage(lab), f"{labels[cid]}")
                name = "native" if spacing is None else " x ".join(f"{s:g}" for s in spacing)
                rows += [{"spacing_mm": name, **r} for r in
                         evaluate_case(classes, truth, lab.GetSpacing(), labelset, cid)]
        df = pd.DataFrame(rows)
        summary = (df.pivot_table(index="spacing_mm", columns="structure", values="dice",
                                  sort=False) * 100).round(1)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        for frame, name in ((df, "per_case.csv"), (summary, "summary.csv")):
            with atomic_path(out / name) as tmp:
                frame.to_csv(tmp, index=name == "summary.csv")
        print(f"mean Dice % over {df['case'].nunique()} cases")
        print(summary.to_string())
        return 0
    return run_guarded("slice_thickness", run)


if __name__ == "__main__":
    sys.exit(main())
