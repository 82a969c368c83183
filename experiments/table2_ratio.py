"""Table 2: generated-data ratio sweep, r in {0, 0.1, ..., 1.0} (paper: best at r = 0.5).

r is the share of the MTN-generated CT volumes (G_c(MRI) with the MRI's labels) added to the real
CT training set; one MTN is trained per seed and shared by all ratios.
    python experiments/table2_ratio.py --preset demo                  # phantom, ~45 min, 2 cores
    python experiments/table2_ratio.py --preset paper --data /data/MM-WHS --folds 5
"""
import sys

from cm_trancaf.experiments import Setting, main

SETTINGS = [Setting("r=0.0")] + [Setting(f"r={r / 10:.1f}", mtn=True, ratio=r / 10)
                                 for r in range(1, 11)]

if __name__ == "__main__":
    sys.exit(main("table2_ratio", SETTINGS, sys.argv[1:], __doc__))
