"""Build the phantom data set in the MM-WHS layout (same as `cm-trancaf phantom`).

    python data_prep/make_phantom.py --out data/phantom --n-ct 20 --n-mr 20 --n-test 10 --preview
    python data_prep/make_phantom.py --out data/phantom_real --from-labels ../shared/data/mmwhs_ct_labels
"""
import sys

from cm_trancaf.cli import main

if __name__ == "__main__":
    sys.exit(main(["phantom", *sys.argv[1:]]))
