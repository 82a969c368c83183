"""``cm-trancaf``: one sub-command per stage; each parses arguments and calls a plain function.

    cm-trancaf phantom     build the phantom data set (MM-WHS layout) [+ --preview PNG]
    cm-trancaf train-mtn   train the MTN (3D CycleGAN, MRI <-> CT)
    cm-trancaf translate   MRI volumes -> synthetic CT volumes, labels carried over
    cm-trancaf train-seg   train localizer, MAUNet and SCN (all, or one stage)
    cm-trancaf predict     whole-volume prediction onto each input's exact grid
    cm-trancaf evaluate    Dice / Jaccard / Hausdorff per case and structure
    cm-trancaf demo        the whole cascade on the phantom, at CPU scale

A user error (bad file, bad option) prints one line ``cm-trancaf <cmd>: error: ...`` and exits 2.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import __version__
from .utils import UserError

__all__ = ["main", "build_parser"]


def _add_config_args(p: argparse.ArgumentParser, default_preset: str = "cpu") -> None:
    p.add_argument("--preset", default=default_preset,
                   help=f"config preset (paper, cpu, tiny, ablations; default {default_preset})")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set train.lr=2e-4 (repeatable)")


def _config(args):
    from .config import apply_overrides, get_preset
    return apply_overrides(get_preset(args.preset), args.overrides)


def cmd_phantom(args) -> int:
    from .data import phantom
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cm-trancaf", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"cm-trancaf {__version__}")
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
    p.add_argument("--preset", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo)

    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"cm-trancaf {args.command}: error: {e}", file=sys.stderr)
        return 2
    except ValueError as e:  # config errors and invalid option values
        from .config import ConfigError
        if isinstance(e, ConfigError):
            print(f"cm-trancaf {args.command}: error: {e}", file=sys.stderr)
            return 2
        raise
    except KeyboardInterrupt:
        print(f"cm-trancaf {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
