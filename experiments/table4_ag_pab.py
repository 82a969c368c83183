"""Table 4: attention gates (AG) and position attention block (PAB) on/off, 50% generated data.

Paper: both on is best. SCN stays on in all four rows.
    python experiments/table4_ag_pab.py --preset demo                 # phantom, ~20 min, 2 cores
    python experiments/table4_ag_pab.py --preset paper --data /data/MM-WHS --folds 5
"""
import sys

from cm_trancaf.experiments import Setting, main

SETTINGS = [Setting(f"AG {'on' if ag else 'off'}, PAB {'on' if pab else 'off'}",
                    (f"maunet.attention_gates={ag}", f"maunet.pab={pab}"), mtn=True, ratio=0.5)
            for ag in (False, True) for pab in (False, True)]

if __name__ == "__main__":
    sys.exit(main("table4_ag_pab", SETTINGS, sys.argv[1:], __doc__))
