"""``cm-trancaf``: one sub-command per stage; each parses arguments and calls a plain function.

    cm-trancaf phantom     build the phantom data set (MM-WHS layout) [+ --preview PNG]
    cm-trancaf train-mtn   train the MTN (3D CycleGAN, MRI <-> CT)
    cm-trancaf translate   MRI volumes -> synthetic CT volumes, labels carried over
    cm-trancaf train-seg   train localizer, MAUNet and SCN (all, or one stage)
    cm-trancaf predict     whole-volume prediction onto each input's exact grid
    cm-trancaf evaluate    Dice / Jaccard / Hausdorff per case and structure
    cm-trancaf export      the trained cascade as a TF SavedModel (deployment)
    cm-trancaf demo        the whole cascade on the phantom, at CPU scale

A user error (bad file, bad option) prints one line ``cm-trancaf <cmd>: error: ...`` and exits 2.
"""
from __future__ import annotations

import argparse
import errno
import sys
from pathlib import Path

from . import __version__
from .config import ConfigError, apply_overrides, get_preset
from .data import phantom
from .data.datasets import get_labelset
from .metrics import evaluate_folders
from .reporting import format_summary
from .utils import UserError, import_tensorflow_quietly

# The stages that need TensorFlow (train-*, translate, predict, export, demo) are imported inside
# their command, after ``main`` has muted TensorFlow's start-up lines (and ``--help`` stays fast).

__all__ = ["main", "build_parser", "run_guarded", "runtime_starter"]


def _add_config_args(p: argparse.ArgumentParser, default_preset: str = "cpu") -> None:
    p.add_argument("--preset", default=default_preset,
                   help=f"config preset (paper, cpu, cmr, cmr_cpu, demo, tiny, ablations; "
                        f"default {default_preset})")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set train.lr=2e-4 (repeatable)")


def _add_scale_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--strategy", choices=["default", "mirrored", "multiworker"],
                   help="tf.distribute: one device, all local GPUs, or workers from TF_CONFIG "
                        "(= --set run.strategy=...)")
    p.add_argument("--precision", choices=["float32", "mixed_float16", "mixed_bfloat16"],
                   help="mixed precision policy (= --set run.precision=...)")
    p.add_argument("--xla", action="store_true", help="XLA-compile each step (run.jit_compile)")


# Data layouts whose label set and modality are known: `--layout acdc` needs no
# `--set data.labels=acdc` (an explicit --set still wins: it is applied after these).
LAYOUT_DEFAULTS = {"acdc": ["data.labels=acdc", "data.modality=mr"],
                   "mscmrseg": ["data.labels=mscmrseg", "data.modality=mr"]}


def _config(args):
    extra = []
    if getattr(args, "strategy", None):
        extra.append(f"run.strategy={args.strategy}")
    if getattr(args, "precision", None):
        extra.append(f"run.precision={args.precision}")
    if getattr(args, "xla", False):
        extra.append("run.jit_compile=True")
    implied = LAYOUT_DEFAULTS.get(getattr(args, "layout", None), [])
    return apply_overrides(get_preset(args.preset), implied + args.overrides + extra)


def cmd_phantom(args) -> int:
    label_maps = None
    if args.from_labels:
        label_maps = sorted(Path(args.from_labels).glob("*_label.nii*"))
        if not label_maps:
            raise UserError(f"{args.from_labels}: no *_label.nii.gz files")
    spacing = dict(phantom.DEFAULT_SPACING)
    if args.spacing:
        spacing = {"ct": tuple(args.spacing), "mr": tuple(s * 1.4 for s in args.spacing)}
    meta = phantom.write_dataset(args.out, args.n_ct, args.n_mr, args.n_test, args.seed,
                                 spacing=spacing, label_maps=label_maps)
    print(f"wrote {len(meta['cases'])} phantom cases ({meta['source']}) to {args.out}")
    if args.preview:
        png = phantom.preview(args.out, Path(args.out) / "preview.png")
        print(f"preview: {png}")
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo
    run_demo(Path(args.out), preset=args.preset, seed=args.seed)
    return 0


def cmd_train_seg(args) -> int:
    from .train.seg import STAGES, train_segmentation
    cfg = _config(args)
    stages = STAGES if args.stage == "all" else (args.stage,)
    kw = {}
    if args.layout == "mscmrseg":
        kw["sequence"] = args.sequence
    val_ids = [v.strip() for v in args.val_cases.split(",") if v.strip()] if args.val_cases else None
    out = train_segmentation(cfg, args.data, args.out, args.layout, stages, args.generated,
                             _codes(args), val_ids=val_ids, **kw)
    for stage, summary in out.items():
        print(f"{stage}: {summary['best']}  ({summary['seconds']} s)")
    return 0


def _codes(args):
    return tuple(int(c) for c in args.codes.split(",")) if getattr(args, "codes", None) else None


def cmd_train_mtn(args) -> int:
    from .train.mtn import train_mtn
    cfg = _config(args)
    if args.layout == "mmwhs":
        source, target = {"modality": "mr", "split": "train"}, {"modality": "ct", "split": "train"}
    else:
        source, target = {"sequence": args.source}, {"sequence": args.target}
    summary = train_mtn(cfg, args.data, args.out, args.layout, source, target,
                        anatomy_run=args.anatomy_run)
    print(f"mtn: {summary['final']}  ({summary['seconds']} s)")
    return 0


def cmd_translate(args) -> int:
    from .translate import translate_folder
    rows = translate_folder(args.run, args.input, args.out, overwrite=args.overwrite,
                            grid=args.grid)
    print(f"translated {len(rows)} volume(s) into {args.out} (manifest.csv)")
    return 0


def cmd_predict(args) -> int:
    from .predict import predict_files
    files = predict_files(args.run, args.input, args.out, args.modality, args.overwrite,
                          args.iso1mm, args.probs, args.profile, args.precision, args.xla,
                          infer=args.infer)
    print(f"wrote {len(files)} label map(s) to {args.out}")
    return 0


def cmd_export(args) -> int:
    from .export import export_cascade
    export_cascade(args.run, args.out)
    return 0


def cmd_evaluate(args) -> int:
    labels = args.labels or {"acdc": "acdc", "mscmrseg": "mscmrseg"}.get(args.layout, "mmwhs")
    labelset = get_labelset(labels, _codes(args))
    _, summary = evaluate_folders(args.pred, args.gt, labelset, args.out, args.iso1mm)
    print(format_summary(summary))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cm-trancaf", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"cm-trancaf {__version__}")
    parser.add_argument("--verbose", action="store_true",
                        help="show TensorFlow's start-up log lines (hidden by default)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("phantom", help="build the phantom data set (MM-WHS layout)")
    p.add_argument("--out", required=True, help="output folder (ct_train/, mr_train/, ct_test/)")
    p.add_argument("--n-ct", type=int, default=6, help="labelled CT training cases")
    p.add_argument("--n-mr", type=int, default=6, help="labelled MRI training cases")
    p.add_argument("--n-test", type=int, default=4, help="held-out labelled CT cases")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--spacing", type=float, nargs=3, metavar=("X", "Y", "Z"),
                   help="CT voxel spacing in mm (MRI gets 1.4x); default 1.25 1.25 1.5")
    p.add_argument("--from-labels", metavar="DIR",
                   help="deform real MM-WHS label maps (*_label.nii.gz) instead of parametric hearts")
    p.add_argument("--preview", action="store_true", help="also save preview.png (mid-slices)")
    p.set_defaults(func=cmd_phantom)

    p = sub.add_parser("demo", help="the whole cascade on the phantom at CPU scale")
    p.add_argument("--out", default="demo_out", help="working folder (default demo_out)")
    p.add_argument("--preset", default="demo")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("train-seg", help="train localizer, MAUNet and SCN (all, or one stage)")
    p.add_argument("--data", required=True, help="data set root folder")
    p.add_argument("--layout", default="mmwhs",
                   choices=["mmwhs", "mscmrseg", "acdc", "generic", "generated"])
    p.add_argument("--sequence", default="C0", help="MS-CMRSeg sequence (C0, LGE, T2)")
    p.add_argument("--codes", help="label codes for --set data.labels=generic, e.g. 1,2,3")
    p.add_argument("--generated", metavar="DIR", help="synthetic CT from `translate` (ratio data.ratio)")
    p.add_argument("--val-cases", metavar="ID,ID", help="case ids held out for validation "
                   "(checkpoint selection); default: data.val_fraction (0: every case trains)")
    p.add_argument("--stage", default="all", choices=["all", "localizer", "maunet", "scn"])
    p.add_argument("--out", required=True, help="run folder (config.json, <stage>/ckpt, logs)")
    _add_config_args(p)
    _add_scale_args(p)
    p.set_defaults(func=cmd_train_seg)

    p = sub.add_parser("train-mtn", help="train the MTN (3D CycleGAN, source -> target)")
    p.add_argument("--data", required=True, help="data set root (MM-WHS: mr_train -> ct_train)")
    p.add_argument("--layout", default="mmwhs", choices=["mmwhs", "mscmrseg"])
    p.add_argument("--source", default="C0", help="MS-CMRSeg source sequence (default C0)")
    p.add_argument("--target", default="LGE", help="MS-CMRSeg target sequence (default LGE)")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--anatomy-run", help="a train-seg run on real target images: log the anatomy "
                   "(FCN score) G_c keeps on labelled source cases at each validation")
    _add_config_args(p)
    _add_scale_args(p)
    p.set_defaults(func=cmd_train_mtn)

    p = sub.add_parser("translate", help="translate source volumes with G_c, labels carried over")
    p.add_argument("--run", required=True, help="train-mtn run folder")
    p.add_argument("--input", required=True, help="an image or a folder (labels beside are copied)")
    p.add_argument("--out", required=True, help="output folder (<case>_image/_label, manifest.csv)")
    p.add_argument("--overwrite", action="store_true", help="redo cases already written")
    p.add_argument("--grid", choices=["source", "working"], default="source",
                   help="write on each source image's grid, or on the working grid G_c made it on "
                        "(enhanced once; what train-seg --generated reads best)")
    p.set_defaults(func=cmd_translate)

    p = sub.add_parser("predict", help="segment whole volumes onto each input's exact grid")
    p.add_argument("--run", required=True, action="append",
                   help="train-seg run folder or `export` folder; repeated: an ensemble of the "
                        "runs (their class probabilities averaged)")
    p.add_argument("--input", required=True, help="an image file or a folder of images")
    p.add_argument("--out", required=True, help="output folder (<case>_label.nii.gz)")
    p.add_argument("--modality", choices=["ct", "mr"], help="default: the run's data.modality")
    p.add_argument("--iso1mm", action="store_true", help="also write the 1 mm MM-WHS grid")
    p.add_argument("--probs", action="store_true", help="also write ROI class probabilities")
    p.add_argument("--overwrite", action="store_true", help="redo cases already written")
    p.add_argument("--profile", action="store_true", help="print per-stage timings")
    p.add_argument("--precision", default="float32",
                   choices=["float32", "mixed_float16", "mixed_bfloat16"],
                   help="network compute precision (mixed_float16: GPU only)")
    p.add_argument("--xla", action="store_true", help="XLA-compile the networks")
    p.add_argument("--set", dest="infer", action="append", default=[],
                   metavar="infer.KEY=VALUE",
                   help="change an inference option of the run (e.g. infer.localizer_views=7)")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("evaluate", help="Dice / Jaccard / HD per case and structure")
    p.add_argument("--pred", required=True, help="folder of predicted label maps")
    p.add_argument("--gt", required=True, help="folder of ground-truth label maps (e.g. ACDC masks/)")
    p.add_argument("--labels", help="label set: mmwhs, mscmrseg, acdc, generic (default: the "
                   "--layout's, else mmwhs)")
    p.add_argument("--layout", choices=["mmwhs", "mscmrseg", "acdc", "generic"],
                   help="data set of --gt: picks the label set (files pair by case id whatever "
                        "their label suffix: _label, _mask, _manual, or the same name)")
    p.add_argument("--codes", help="codes for --labels generic, e.g. 1,2,3")
    p.add_argument("--out", help="per-case CSV (a _summary.csv is written beside it)")
    p.add_argument("--iso1mm", action="store_true", help="evaluate at 1 mm (MM-WHS challenge)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("export", help="the trained cascade as a TF SavedModel")
    p.add_argument("--run", required=True, help="train-seg run folder")
    p.add_argument("--out", required=True, help="new folder for the SavedModel")
    p.set_defaults(func=cmd_export)
    return parser


def run_guarded(command: str, fn) -> int:
    """Call ``fn()``; a user error (bad file, bad option, a folder that cannot be written)
    becomes one line and exit code 2; a non-finite loss one line and exit code 3."""
    try:
        return int(fn() or 0)
    except (UserError, ConfigError) as e:
        print(f"cm-trancaf {command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno not in (errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EROFS, errno.EDQUOT,
                           errno.ENOENT, errno.EISDIR, errno.ENOTDIR):
            raise
        where = f"{e.filename}: " if e.filename else ""
        print(f"cm-trancaf {command}: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    except FloatingPointError as e:       # NaN/Inf loss: the weights and checkpoints are intact
        print(f"cm-trancaf {command}: error: {e}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print(f"cm-trancaf {command}: interrupted", file=sys.stderr)
        return 130


def _runtime_start(args):
    """What starts TensorFlow's runtime for this command, from its config
    (``train.scale.start_runtime``: one inter-op thread first with ``run.deterministic``, the
    multiworker strategy when asked for); None (list the devices) when the command has no config.
    A bad config is left for the command itself to report."""
    if not hasattr(args, "overrides"):
        return None
    try:
        return runtime_starter(_config(args).run)
    except (UserError, ConfigError):
        return None


def runtime_starter(run):
    """``start()`` for ``import_tensorflow_quietly``: TensorFlow's runtime started as ``run``
    (a RunConfig) needs; imports TensorFlow only when called."""
    def start():
        from .train.scale import start_runtime
        start_runtime(run.strategy, run.deterministic)
    return start


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command != "evaluate":                 # the one command that needs no TensorFlow
        import_tensorflow_quietly(args.verbose, _runtime_start(args))
    return run_guarded(args.command, lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
