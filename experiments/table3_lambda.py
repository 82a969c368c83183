"""Table 3: sensitivity to the MTN cycle weight lambda in {5, 10, 20} (paper: best at 10).

Each lambda trains its own MTN; the cascade then trains with r = 0.5 of its generated CT. The
first row, "r=0.0", trains on the real target cases alone (no MTN; not a row of the paper's
Table 3): every lambda is paired with it in table.md, and on a cross-modality cohort it is the
segmenter of each MTN's anatomy (FCN) score (anatomy.csv).
    python experiments/table3_lambda.py --preset demo                 # phantom, ~20 min, 2 cores
    python experiments/table3_lambda.py --preset paper --data /data/MM-WHS --folds 5
"""
import sys

from cm_trancaf.experiments import Setting, main

SETTINGS = [Setting("r=0.0")] + [
    Setting(f"lambda={lam}", mtn=True, ratio=0.5, mtn_overrides=(f"mtn.lam={lam}.0",))
    for lam in (5, 10, 20)]

if __name__ == "__main__":
    sys.exit(main("table3_lambda", SETTINGS, sys.argv[1:], __doc__))
