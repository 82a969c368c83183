"""Table 6: pairwise combinations of MTN, AG, PAB and SCN (paper: MTN + SCN the strongest pair).

Each row switches on exactly two of the four modules (MTN: r = 0.5 generated CT).
    python experiments/table6_pairwise.py --preset demo               # phantom, ~30 min, 2 cores
    python experiments/table6_pairwise.py --preset paper --data /data/MM-WHS --folds 5
"""
import itertools
import sys

from cm_trancaf.experiments import Setting, main

MODULES = ("MTN", "AG", "PAB", "SCN")


def pair(on: tuple[str, str]) -> Setting:
    return Setting(" + ".join(on), (f"maunet.attention_gates={'AG' in on}",
                                    f"maunet.pab={'PAB' in on}", f"scn.enabled={'SCN' in on}"),
                   mtn="MTN" in on, ratio=0.5)


SETTINGS = [pair(p) for p in itertools.combinations(MODULES, 2)]

if __name__ == "__main__":
    sys.exit(main("table6_pairwise", SETTINGS, sys.argv[1:], __doc__))
