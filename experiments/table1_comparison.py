"""Table 1: the full CM-TranCaF against a plain 3D U-Net baseline (Dice, Jaccard, HD per structure).

Paper (MM-WHS 2017 CT test set): CM-TranCaF mean Dice 91.1%, HD 14.386 mm (printed beside ours).
    python experiments/table1_comparison.py --preset demo             # phantom, ~10 min, 2 cores
    python experiments/table1_comparison.py --preset paper --data /data/MM-WHS --folds 5 --seeds 3
Writes results/table1_comparison/<run>/ (see cm_trancaf.experiments).
"""
import sys

from cm_trancaf.experiments import PUBLISHED, Setting, main

UNET = ("maunet.residual=False", "maunet.attention_gates=False", "maunet.pab=False",
        "scn.enabled=False")
SETTINGS = [
    Setting("3D U-Net", UNET),
    Setting("CM-TranCaF", (), mtn=True, ratio=0.5),
]

if __name__ == "__main__":
    sys.exit(main("table1_comparison", SETTINGS, sys.argv[1:], __doc__, PUBLISHED))
