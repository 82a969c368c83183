"""MAUNet training time of several settings, timed in alternation on one machine.

A setting's cost in minutes decides whether it fits the CPU presets' 30-minute budget, but the
2-core machine's speed drifts from day to day by 10-25 % (README "Speed"), more than the cost of
most candidates: two cascades trained an hour apart do not measure it. This trains the MAUNet
alone for ``--steps`` steps per setting, the settings one after the other, ``--rounds`` times
(control, candidate, control, candidate, ...), on the same prepared cases, and reports each
setting's seconds per step and its ratio to the first setting's within each round.

Cases: the training cases of the first fold of ``experiments/mmwhs_ct.py`` (``--dataset
mmwhs``; that fold's test cases are not read) or ``experiments/acdc.py``'s training patients
(``--dataset acdc``). Nothing is evaluated: the trained weights are thrown away.

    python benchmarks/train_time.py --dataset mmwhs --data ../shared/data/mmwhs_ct --steps 100 \\
        --rounds 3 --variant "Payer: augment.elastic_mm=15, augment.rotate_deg=20, \\
        augment.translate_mm=20, augment.scale=0.2, augment.intensity=0.2"

Writes ``train_time.csv`` (one row per setting and round) and ``summary.csv`` (the ratios) into
``--out``; prints a table.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from localizer_cv import parse_variant  # noqa: E402


def ratios(df: pd.DataFrame) -> pd.DataFrame:
    """Per setting: median s/step and the median and range over rounds of its ratio to the
    first setting's s/step in the same round."""
    first = df["setting"].iloc[0]
    ref = df[df["setting"] == first].set_index("round")["s_per_step"]
    df = df.assign(ratio=df["s_per_step"] / df["round"].map(ref))
    return df.groupby("setting", sort=False).agg(
        rounds=("round", "size"), s_per_step=("s_per_step", "median"),
        ratio=("ratio", "median"), ratio_min=("ratio", "min"),
        ratio_max=("ratio", "max")).reset_index()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=("acdc", "mmwhs"), required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--preset", default=None, help="default: cpu for mmwhs, else cmr_cpu")
    p.add_argument("--variant", action="append", default=[], metavar="'NAME: K=V, ...'")
    p.add_argument("--steps", type=int, default=100, help="MAUNet steps per timed run")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default="results/train_time")
    args = p.parse_args(argv)
    if args.steps < 1 or args.rounds < 1:
        p.error("--steps and --rounds must be >= 1")
    args.preset = args.preset or ("cpu" if args.dataset == "mmwhs" else "cmr_cpu")
    from cm_trancaf.cli import run_guarded
    return run_guarded("train_time", lambda: run(args))


def run(args) -> int:
    from cm_trancaf.cli import runtime_starter
    from cm_trancaf.config import ConfigError, apply_overrides, get_preset
    from cm_trancaf.utils import import_tensorflow_quietly
    variants = [("preset", [])] + [parse_variant(v) for v in args.variant]
    fixed = [] if args.dataset == "mmwhs" else [f"data.labels={args.dataset}", "data.modality=mr"]
    # the same steps per run, no validation inside the timed run
    fixed += [f"train.steps={args.steps}", f"train.val_every={10 * args.steps}"]
    base = apply_overrides(get_preset(args.preset), fixed)
    configs = [(name, apply_overrides(base, overrides), overrides) for name, overrides in variants]
    if len({repr(cfg.data) for _, cfg, _ in configs}) > 1:
        raise ConfigError("the settings must share the data section (one preparation of the "
                          "cases); time other grids in runs of their own")
    import_tensorflow_quietly(False, runtime_starter(base.run))
    import keras
    from cm_trancaf.data.datasets import get_labelset
    from cm_trancaf.experiments.cohorts import acdc_cohort, mmwhs_cohort
    from cm_trancaf.train.seg import prepare_cases, train_maunet
    from cm_trancaf.utils import atomic_path

    data = Path(args.data)
    cohort = mmwhs_cohort(base, data, 4) if args.dataset == "mmwhs" else acdc_cohort(data)
    labelset = get_labelset(base.data.labels)
    train = prepare_cases(list(cohort.splits[0][0]), labelset, base)
    print(f"[train_time] {len(train)} training cases prepared", flush=True)
    rows = []
    for rnd in range(args.rounds):
        for name, cfg, overrides in configs:
            keras.utils.set_random_seed(cfg.run.seed)
            t0 = time.perf_counter()
            with tempfile.TemporaryDirectory() as run_dir:
                train_maunet(cfg, train, [], Path(run_dir), labelset.num_classes)
            seconds = time.perf_counter() - t0
            rows.append({"setting": name, "overrides": " ".join(overrides), "round": rnd,
                         "steps": args.steps, "seconds": seconds,
                         "s_per_step": seconds / args.steps})
            print(f"[train_time] round {rnd} {name}: {seconds:.1f} s "
                  f"({seconds / args.steps:.3f} s/step)", flush=True)
    df = pd.DataFrame(rows)
    summary = ratios(df)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for frame, fname in ((df, "train_time.csv"), (summary, "summary.csv")):
        with atomic_path(out / fname) as tmp:
            frame.to_csv(tmp, index=False)
    print(summary.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
