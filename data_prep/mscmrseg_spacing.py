"""Repair the bSSFP (C0) in-plane spacing of the redistributed MS-CMRSeg copy in ../shared/data.

Its C0 stacks were resampled onto the LGE stacks' pixel size (about 0.75 mm) and cropped to
192 x 192, but their headers kept the original 1.25 x 1.25 mm: read as they are, the bSSFP hearts
are 1.65 times too wide (median LV blood-pool diameter 92 mm, where ACDC's cine hearts and the LGE
stacks measure 52-55 mm), and a pipeline working in mm trains on, translates and scores hearts of
the wrong size. The same patient's heart spans the same number of pixels in C0 and LGE (median
ratio 1.05 over the 25 paired patients), which is what such a resampling leaves.
experiments/mscmrseg_lge.py refuses sequences whose hearts differ this much.

Writes OUT/C0 (in-plane spacing x SCALE; slices, origin, direction, voxels unchanged), OUT/LGE (a
copy) and OUT/spacing.csv (per case: spacings, LV blood-pool diameter before and after). SCALE
defaults to median LGE / median C0 in-plane header spacing (0.58 here); no LGE label is read.

    python data_prep/mscmrseg_spacing.py --data ../shared/data/mscmrseg --out data/mscmrseg_fixed
    python experiments/mscmrseg_lge.py --data data/mscmrseg_fixed
"""
import argparse
import sys

import numpy as np

from cm_trancaf.data.datasets import repair_mscmrseg_spacing
from cm_trancaf.data.io import quiet_itk
from cm_trancaf.utils import UserError


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="MS-CMRSeg root (C0/, LGE/)")
    ap.add_argument("--out", required=True, help="new folder for the repaired copy")
    ap.add_argument("--scale", type=float, default=None,
                    help="C0 in-plane spacing factor (default: median LGE / median C0 header spacing)")
    args = ap.parse_args(argv)
    quiet_itk()
    try:
        rows = repair_mscmrseg_spacing(args.data, args.out, args.scale)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    median = lambda key: np.median([r[key] for r in rows])
    print(f"{len(rows)} labelled C0 stacks -> {args.out}/C0: median LV blood-pool diameter "
          f"{median('lv_diameter_old_mm'):.1f} mm -> {median('lv_diameter_new_mm'):.1f} mm "
          f"(adults at end-diastole: 45-56 mm)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
