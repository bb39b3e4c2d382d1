"""The ``asdflow`` command line.

Each sub-command is a thin layer over one package function: parse the
arguments, call the function, print what it returns. Heavy modules are
imported inside the handlers so that ``asdflow --help`` answers at once.

Run ``asdflow COMMAND --help`` for the options of one command.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from asdflow.errors import AsdflowError


def cmd_synth(args: argparse.Namespace) -> int:
    """``asdflow synth DEST``: write the toy factory in the DCASE layout."""
    import time

    from asdflow import data, synth

    sizes = dict(synth.QUICK_FACTORY) if args.quick else {}
    for key in ("n_train_source", "n_train_target", "n_test_per_domain", "seconds"):
        if getattr(args, key) is not None:
            sizes[key] = getattr(args, key)
    if args.machine:
        sizes["machines"] = tuple(args.machine)
    start = time.perf_counter()
    try:
        root = synth.make_factory(args.dest, seed=args.seed, overwrite=args.overwrite, **sizes)
    except ValueError as err:  # a size or duration out of range
        raise AsdflowError(f"{err}; see asdflow synth --help") from err
    print(data.describe(root))
    print(f"synthetic factory ready in {root} ({time.perf_counter() - start:.1f} s)")
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    """``asdflow download DEST --set dev|add|eval``: fetch DCASE 2024 Task 2 zips."""
    from asdflow import download

    folders = download.download(
        args.dest, dataset=args.dataset, machines=args.machine, keep_zip=args.keep_zip
    )
    for folder in folders:
        print(folder)
    return 0


def cmd_features(args: argparse.Namespace) -> int:
    """``asdflow features ROOT``: extract and cache the 158-row feature images."""
    import dataclasses
    import time

    from asdflow import data, features

    clips = data.scan(args.root, machines=args.machine)
    for machine in sorted({clip.machine for clip in clips}):
        group = [clip for clip in clips if clip.machine == machine]
        train = [clip for clip in group if clip.split == "train"] or group
        n_samples = features.nominal_length(train)
        config = dataclasses.replace(features.FeatureConfig(), n_samples=n_samples)
        start = time.perf_counter()
        features.extract(group, config, n_jobs=args.jobs)
        print(
            f"{machine}: {len(group)} clips, images {config.n_rows} x "
            f"{config.n_frames(n_samples)} (nominal length {n_samples / config.sr:g} s), "
            f"{time.perf_counter() - start:.1f} s"
        )
    print(f"{len(clips)} clips; cache: {features.default_cache()}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """``asdflow bench features|train``: print speed figures."""
    from asdflow import bench

    if args.what == "features":
        bench.bench_features(
            n_clips=args.clips or 32, seconds=args.seconds or 10.0, n_jobs=args.jobs
        )
        return 0
    raise NotImplementedError("asdflow bench train is being written")


def cmd_train(args: argparse.Namespace) -> int:
    """``asdflow train ROOT --machine M --model cflow|ae --out DIR``."""
    raise NotImplementedError("asdflow train is being written")


def cmd_test(args: argparse.Namespace) -> int:
    """``asdflow test DIR ROOT --machine M``: write the two DCASE files."""
    raise NotImplementedError("asdflow test is being written")


def cmd_evaluate(args: argparse.Namespace) -> int:
    """``asdflow evaluate DIR [DIR ...] --root ROOT``: the result table."""
    raise NotImplementedError("asdflow evaluate is being written")


def cmd_reproduce(args: argparse.Namespace) -> int:
    """``asdflow reproduce ROOT``: Table 1 of the report, resumable."""
    raise NotImplementedError("asdflow reproduce is being written")


def cmd_demo(args: argparse.Namespace) -> int:
    """``asdflow demo``: the whole pipeline on the synthetic factory, quick mode."""
    from asdflow import data, synth

    # Step 1: the data. Later steps (train, score, compare) take `root`.
    print(f"1. generating the quick synthetic factory in {args.workdir / 'data'}")
    root = synth.make_factory(args.workdir / "data", seed=args.seed, **synth.QUICK_FACTORY)
    print(data.describe(root))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every sub-command."""
    parser = argparse.ArgumentParser(
        prog="asdflow",
        description=(
            "Anomalous sound detection for machine condition monitoring with "
            "normalizing flows (CFlow) on DCASE 2024 Task 2 data. "
            "Start with `asdflow demo`."
        ),
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("demo", help="run the whole pipeline on generated data (quick mode, CPU)")
    p.add_argument("--workdir", type=Path, default=Path(".asdflow-cache/demo"),
                   help="where the generated data and detectors go (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("synth", help="generate a toy factory in the DCASE 2024 layout")
    p.add_argument("dest", type=Path, help="folder to write dev_data/raw/<machine>/... into")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.add_argument("--quick", action="store_true",
                   help="the small quick-mode sizes (asdflow.synth.QUICK_FACTORY) instead of "
                        "the DCASE sizes (990 + 10 training, 50 + 50 test clips per domain, 10 s)")
    p.add_argument("--machine", action="append", default=None, metavar="M",
                   choices=["fan", "bearing", "valve"],
                   help="only this machine type (repeatable; default: fan, bearing, valve)")
    p.add_argument("--seconds", type=float, default=None, help="clip duration in seconds")
    p.add_argument("--train-source", dest="n_train_source", type=int, default=None, metavar="N",
                   help="normal source-domain training clips per machine type")
    p.add_argument("--train-target", dest="n_train_target", type=int, default=None, metavar="N",
                   help="normal target-domain training clips per machine type")
    p.add_argument("--test-per-domain", dest="n_test_per_domain", type=int, default=None,
                   metavar="N", help="normal and anomalous test clips (each) per domain")
    p.add_argument("--overwrite", action="store_true",
                   help="regenerate even if DEST already holds this factory")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("download", help="download DCASE 2024 Task 2 data from Zenodo")
    p.add_argument("dest", type=Path, help="data root; zips are unpacked to DEST/dev_data/raw/...")
    p.add_argument("--set", dest="dataset", choices=["dev", "add", "eval"], default="dev",
                   help="dev: development set; add: additional training set; "
                        "eval: evaluation test set (default: %(default)s)")
    p.add_argument("--machine", action="append", default=None, metavar="M",
                   help="only this machine type (repeatable; default: all of the set)")
    p.add_argument("--keep-zip", action="store_true",
                   help="keep the checked zips in DEST/<dev_data|eval_data>/zips/ "
                        "(default: delete each zip once unpacked)")
    p.set_defaults(func=cmd_download)

    p = sub.add_parser("features", help="extract and cache the 158-row feature images")
    p.add_argument("root", type=Path, help="data root (holds dev_data/ and/or eval_data/)")
    p.add_argument("--machine", action="append", default=None, metavar="M")
    p.add_argument("--jobs", type=int, default=None, help="worker processes (default: all cores)")
    p.set_defaults(func=cmd_features)

    p = sub.add_parser("bench", help="print speed figures (features or training)")
    p.add_argument("what", choices=["features", "train"])
    p.add_argument("--clips", type=int, default=None, help="generated clips (features: 32)")
    p.add_argument("--seconds", type=float, default=None, help="clip length (features: 10 s)")
    p.add_argument("--jobs", type=int, default=None, help="worker processes (default: all cores)")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("train", help="train a detector on the normal training clips of one machine")
    p.add_argument("root", type=Path, help="data root")
    p.add_argument("--machine", required=True, metavar="M")
    p.add_argument("--model", choices=["cflow", "ae"], default="cflow")
    p.add_argument("--out", type=Path, required=True, help="folder to save the detector in")
    p.add_argument("--quick", action="store_true", help="small backbone, few epochs (CPU-friendly)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: automatic)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("test", help="score the test clips and write the two DCASE files")
    p.add_argument("dir", type=Path, help="folder holding a trained detector")
    p.add_argument("root", type=Path, help="data root")
    p.add_argument("--machine", required=True, metavar="M")
    p.set_defaults(func=cmd_test)

    p = sub.add_parser("evaluate", help="DCASE metrics and the result table from score files")
    p.add_argument("dirs", type=Path, nargs="+", metavar="DIR")
    p.add_argument("--root", type=Path, default=None, help="data root, for labels from file names")
    p.add_argument("--ground-truth", type=Path, default=None, help="ground-truth CSV instead")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("reproduce", help="reproduce Table 1 of the report (full mode, GPU)")
    p.add_argument("root", type=Path, help="data root holding the development set")
    p.add_argument("--out", type=Path, default=Path("runs/reproduce"))
    p.set_defaults(func=cmd_reproduce)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``asdflow`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except AsdflowError as err:
        print(f"asdflow {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"asdflow {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
