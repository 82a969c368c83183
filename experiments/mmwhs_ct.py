"""MM-WHS 2017 CT: k-fold cross-validation of the cascade on real CT (the paper's benchmark data).

The shared copy (../shared/data/mmwhs_ct, 16 labelled CT) has no MRI, so the MTN is off here: this
measures localizer + MAUNet + SCN. "SCN off" predicts with the same MAUNet (paired). The data are
stored at 1 mm, the grid on which the MM-WHS challenge evaluated, so "native" is the 1 mm grid.

    python experiments/mmwhs_ct.py --data ../shared/data/mmwhs_ct                  # cpu, 4 folds
    python experiments/mmwhs_ct.py --data /data/MM-WHS --preset paper --folds 4 --seeds 3
    python experiments/mmwhs_ct.py --data ../shared/data/mmwhs_ct --dev 4 \
        --set data.antialias=True --run cpu_antialias_dev  # choose: fold 0's training cases
    python experiments/mmwhs_ct.py --data ../shared/data/mmwhs_ct --dev 4 --only "SCN retrained" \
        --only "SCN retrained, noisy inputs 1.0"           # SCN-only candidates on cpu_dev's MAUNet
Results: results/mmwhs_ct/<preset>/{per_case.csv, centers.csv, summary.csv, table.md}.
"""
import sys

from cm_trancaf.experiments import Setting, main

SETTINGS = [Setting("MAUNet + SCN"),
            Setting("MAUNet (SCN off)", ("scn.enabled=False",), same_run_as="MAUNet + SCN")]
# Run only with --only (development candidates, not adopted; experiments/README.md, "Choosing
# `cpu` settings"):
# the SCN alone retrained on the same MAUNet, its inputs corrupted by smooth noise
# (scn.input_noise, beyond the paper), and without (the control: the SCN's own seed spread).
CANDIDATES = [Setting("SCN retrained", maunet_from="MAUNet + SCN"),
              Setting("SCN retrained, noisy inputs 1.0", ("scn.input_noise=1.0",),
                      maunet_from="MAUNet + SCN"),
              Setting("SCN retrained, noisy inputs 1.5", ("scn.input_noise=1.5",),
                      maunet_from="MAUNet + SCN"),
              # the SCN as a correction of MAUNet's log-probabilities, softmax(log p + L * S)
              # (scn.residual, beyond the paper), against "SCN retrained" on the same MAUNet;
              # since 2026-12-07 in `cpu` (then the earlier `cpu` is --set scn.residual=False)
              Setting("SCN retrained, residual", ("scn.residual=True",), maunet_from="MAUNet + SCN"),
              # 2026-12-07, none adopted (experiments/README.md "Test-time shifts on the current
              # `cpu`" and the paragraphs after it); run in cpu_dev with --set scn.residual=False
              # (that folder's configuration), so the training ones set scn.residual=True:
              # the same cascade with test-time shifts (infer.shift_views=7)
              Setting("SCN retrained, residual, test-time shifts", ("infer.shift_views=7",),
                      same_run_as="SCN retrained, residual"),
              # batch 1 at twice the steps (the same ROIs seen, twice the updates; MAUNet and
              # SCN), against "SCN retrained, residual"
              Setting("batch 1, twice the steps", ("scn.residual=True", "train.batch_size=1",
                                                  "train.steps=1800", "scn.steps=600")),
              # twice the learning rate (2e-3 came from the phantom's `demo`; MAUNet and SCN)
              Setting("lr 4e-3", ("scn.residual=True", "train.lr=0.004")),
              # inference only, on the same dev cascade: a second re-centring pass; tiles that
              # follow a heart (the PA) touching a face of the ROI
              Setting("SCN retrained, residual, 2 re-centrings", ("infer.refine_passes=2",),
                      same_run_as="SCN retrained, residual"),
              Setting("SCN retrained, residual, tiles", ("infer.extend_tiles=6",),
                      same_run_as="SCN retrained, residual"),
              # nnU-Net's loss, Dice + cross-entropy 1:1 (focal with gamma = 0 is the cross-
              # entropy), against the paper's Dice + 0.1 focal (gamma 2); MAUNet and SCN
              Setting("Dice + CE", ("train.lambda_focal=1.0", "train.focal_gamma=0.0")),
              # nnU-Net's deep supervision (beyond the paper): decoder levels 1 and 2 too
              Setting("deep supervision", ("maunet.deep_supervision=2",)),
              # Payer et al.'s MM-WHS augmentation (beyond the paper): B-spline elastic
              # deformation, 8^3 control points, up to 15 mm; then with his larger rotation,
              # translation and scale ranges and intensity jitter too. Since 2026-12-06 `cpu`
              # itself (with the largest component); the draws ran on the earlier `cpu`, which
              # is `--set augment.elastic_mm=0 augment.rotate_deg=15 augment.translate_mm=15
              # augment.scale=0.15 augment.intensity=0 infer.largest_component=False`
              Setting("elastic", ("augment.elastic_mm=15.0",)),
              Setting("Payer's augmentation", ("augment.elastic_mm=15.0", "augment.rotate_deg=20.0",
                                              "augment.translate_mm=20.0", "augment.scale=0.2",
                                              "augment.intensity=0.2")),
              # the same trained cascades with nnU-Net's post-processing (largest connected
              # component per structure): measured after the two above showed stray fragments
              Setting("MAUNet + SCN, largest component", ("infer.largest_component=True",),
                      same_run_as="MAUNet + SCN"),
              Setting("Payer's augmentation, largest component",
                      ("infer.largest_component=True",), same_run_as="Payer's augmentation")]
# Payer et al. 2017 (STACOM, MM-WHS): 3-fold CV on the 20 CT training volumes, mean Dice over the
# 7 structures; the CM-TranCaF paper: MM-WHS CT test set (40 volumes), mean Dice and HD.
PUBLISHED = {"Payer et al. 2017, 3-fold CV on MM-WHS CT training": {"WHS_mean dice": 88.9},
             "CM-TranCaF (paper), MM-WHS CT test set": {"WHS_mean dice": 91.1,
                                                        "WHS_mean hd_mm": 14.386}}
NOTE = ("Published rows: other splits (Payer: 20 training volumes, 3 folds; the paper: the 40 "
        "test volumes), so indicative only.")

if __name__ == "__main__":
    sys.exit(main("mmwhs_ct", SETTINGS, sys.argv[1:], __doc__, PUBLISHED, note=NOTE,
                  default_folds=4, candidates=CANDIDATES))
