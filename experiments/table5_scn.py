"""Table 5: the spatial configuration network (SCN) on/off (paper: on is better).

Both rows: MTN at r = 0.5, AG and PAB on. "SCN off" predicts with the same MAUNet alone (paired).
    python experiments/table5_scn.py --preset demo                    # phantom, ~10 min, 2 cores
    python experiments/table5_scn.py --preset paper --data /data/MM-WHS --folds 5
"""
import sys

from cm_trancaf.experiments import Setting, main

# paired: "SCN off" predicts with the MAUNet of the "SCN on" run (one training for both rows)
SETTINGS = [Setting("SCN on", (), mtn=True, ratio=0.5),
            Setting("SCN off", ("scn.enabled=False",), same_run_as="SCN on")]

if __name__ == "__main__":
    sys.exit(main("table5_scn", SETTINGS, sys.argv[1:], __doc__))
