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

from asdflow.detector import MODELS, VARIANTS, table_order
from asdflow.errors import AsdflowError, ParameterError


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
    root = synth.make_factory(args.dest, seed=args.seed, overwrite=args.overwrite, **sizes)
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
    import time

    from asdflow import data, features

    clips = data.scan(args.root, machines=args.machine)
    for machine in sorted({clip.machine for clip in clips}):
        group = [clip for clip in clips if clip.machine == machine]
        train = [clip for clip in group if clip.split == "train"] or group
        config = features.FeatureConfig().with_nominal_length(train)
        assert config.n_samples is not None  # with_nominal_length sets it
        start = time.perf_counter()
        features.extract(group, config, n_jobs=args.jobs)
        print(
            f"{machine}: {len(group)} clips, images {config.n_rows} x "
            f"{config.n_frames(config.n_samples)} "
            f"(nominal length {config.n_samples / config.sr:g} s), "
            f"{time.perf_counter() - start:.1f} s"
        )
    print(f"{len(clips)} clips; cache: {features.default_cache()}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """``asdflow bench features|train``: print speed figures."""
    from asdflow import bench

    if args.what == "features":
        bench.bench_features(
            n_clips=args.clips or 32,
            seconds=args.seconds or 10.0,
            n_jobs=args.jobs,
            hop_length=args.hop,
        )
        return 0
    bench.bench_train(
        full=args.full,
        n_clips=args.clips,
        seconds=args.seconds,
        epochs=args.epochs,
        hop_length=args.hop,
    )
    return 0


class _HelpFormatter(argparse.HelpFormatter):
    """Wraps descriptions; keeps the lines of example blocks (indented lines) as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        import textwrap

        blocks = []
        for block in text.split("\n\n"):
            lines = block.splitlines()
            if len(lines) > 1 and all(line.startswith(" ") for line in lines[1:]):
                blocks.append("\n".join(indent + line for line in lines))
            else:
                blocks.append(
                    textwrap.fill(
                        " ".join(block.split()),
                        width,
                        initial_indent=indent,
                        subsequent_indent=indent,
                    )
                )
        return "\n\n".join(blocks)


_SMALLEST = {"seed": 0, "seeds": 0, "threads": 1, "jobs": 1, "epochs": 1, "clips": 1, "hop": 1}
"""The smallest value each whole-number option takes (seeds: numpy refuses negative ones)."""


def check_arguments(args: argparse.Namespace) -> None:
    """Check the ranges of the numeric options of every command, before any work starts.

    Raises
    ------
    ParameterError
        Naming the option, the value and the allowed range.
    """
    for name, smallest in _SMALLEST.items():
        values = getattr(args, name, None)
        for value in values if isinstance(values, list) else [values]:
            if value is not None and value < smallest:
                option = "--" + name.replace("_", "-")
                raise ParameterError(f"{option} must be at least {smallest}, got {value}")
    seconds = getattr(args, "seconds", None)
    if seconds is not None and not 0 < seconds < float("inf"):
        raise ParameterError(f"--seconds must be a positive number of seconds, got {seconds}")


def _set_threads(args: argparse.Namespace) -> None:
    """Apply ``--threads`` (torch's CPU threads) when given."""
    if getattr(args, "threads", None) is not None:
        import torch

        torch.set_num_threads(args.threads)


def _overrides(args: argparse.Namespace) -> dict:
    """The expert ``--set FIELD=VALUE`` options as a dict."""
    from asdflow import experiment

    return experiment.parse_settings(args.set)


def cmd_train(args: argparse.Namespace) -> int:
    """``asdflow train ROOT --machine M --model cflow|ae --out DIR``."""
    from asdflow import experiment

    _set_threads(args)
    changes = _overrides(args)
    if args.domain_aware:
        if args.model != "cflow":
            raise ParameterError("--domain-aware is a CFlow setting: use it with --model cflow")
        changes["domain_aware"] = True
    config = experiment.run_config(
        args.model,
        args.root,
        args.machine,
        quick=args.quick,
        seed=args.seed,
        epochs=args.epochs,
        changes=changes,
    )
    experiment.train_run(
        args.root,
        args.machine,
        args.out,
        model=args.model,
        config=config,
        quick=args.quick,
        device=args.device,
        overwrite=args.overwrite,
    )
    info = experiment.read_run_info(args.out)
    assert info is not None  # train_run has just written it
    print(
        f"{info.method} detector of {info.machine} (seed {info.seed}, {info.mode} mode) saved in "
        f"{args.out}: {experiment.DETECTOR_FILES[info.model]} and {experiment.RUN_FILE}; "
        f"{info.train_seconds:.1f} s of training on {info.hardware}"
    )
    print(f"next: asdflow test {args.out} {args.root} --machine {args.machine}")
    return 0


def cmd_test(args: argparse.Namespace) -> int:
    """``asdflow test DIR ROOT --machine M``: write the two DCASE files."""
    from asdflow import experiment

    _set_threads(args)
    paths = experiment.score_run(
        args.dir, args.root, args.machine, device=args.device, overwrite=args.overwrite
    )
    for path in paths:
        print(f"wrote {path}")
    print(f"next: asdflow evaluate {args.dir} --root {args.root}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """``asdflow evaluate DIR [DIR ...] --root ROOT``: the result table."""
    from asdflow import evaluation, experiment

    summary = experiment.evaluate_runs(
        args.dirs,
        root=args.root,
        ground_truth_path=args.ground_truth,
        reference=evaluation.REPORT_TABLE1 if args.report else None,
    )
    paths = summary.write(args.out, name=args.name, overwrite=args.overwrite)
    print(summary.to_text())
    print(f"wrote {paths[0]} and {paths[1]}")
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    """``asdflow reproduce ROOT``: Table 1 of the report, resumable."""
    from asdflow import evaluation, experiment

    _set_threads(args)
    out = args.out or Path("runs/reproduce-quick" if args.quick else "runs/reproduce")
    summary = experiment.reproduce(
        args.root,
        out,
        machines=args.machines,
        seeds=args.seeds,
        models=args.models,
        quick=args.quick,
        device=args.device,
        epochs=args.epochs,
        changes=_overrides(args),
        reference=evaluation.REPORT_TABLE1,
    )
    print(summary.to_text())
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """``asdflow demo``: the whole pipeline on the synthetic factory, quick mode."""
    import time

    from asdflow import data, experiment, synth
    from asdflow.modes import cache_dir

    start = time.perf_counter()
    _set_threads(args)
    workdir = args.workdir if args.workdir is not None else cache_dir() / "demo"
    # One data folder per seed: a factory of another seed is other data, never overwritten.
    folder = workdir / f"data-seed{args.seed}"
    print(f"1. generating the quick synthetic factory in {folder}")
    root = synth.make_factory(folder, seed=args.seed, **synth.QUICK_FACTORY)
    print(data.describe(root))
    detectors = [
        f"{VARIANTS[n].method} ({VARIANTS[n].settings})"
        if n in VARIANTS
        else MODELS[n].help or MODELS[n].method
        for n in table_order()
    ]
    print(
        f"\n2. training {', '.join(detectors)} in their quick settings on the normal training "
        "clips of each machine type, then scoring the test clips "
        f"(run folders in {workdir / 'runs'})",
        flush=True,
    )
    summary = experiment.reproduce(
        root,
        workdir / "runs",
        seeds=[args.seed],
        models=table_order(),
        quick=True,
        device=args.device,
        name="demo",
    )
    print(
        "\n3. results: higher is better; AUC 50 % is chance, and an F1 below what flagging "
        "every clip gets (about 67 % here) means the threshold does not hold\n"
    )
    print(summary.to_text())
    print(f"demo finished in {time.perf_counter() - start:.0f} s")
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
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show the full traceback of an error instead of its one-line message",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "demo",
        help="run the whole pipeline on generated data (quick mode, CPU)",
        description=(
            "The whole pipeline in a few minutes on a CPU: 1. generate a small synthetic "
            "factory (fan, bearing, valve) in the DCASE 2024 layout; 2. train CFlow and the "
            "DCASE baseline autoencoder with quick settings on the normal clips of each machine "
            "type and score the test clips; 3. print both side by side (AUC source/target, "
            "pAUC, means, official score). Quick mode uses a ResNet-18 with random weights: "
            "the numbers show the method at work, not the report's results. A second run "
            "reuses what the first one trained; delete the work folder to start afresh."
        ),
        epilog="examples:\n  asdflow demo\n  asdflow demo --workdir /tmp/demo --seed 1",
        formatter_class=_HelpFormatter,
    )
    p.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="where the generated data and detectors go (default: $ASDFLOW_CACHE/demo, "
        "else ~/.cache/asdflow/demo)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default: %(default)s; the quick networks are small, and more "
        "threads slow them down many times over when other programs share the cores)",
    )
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("synth", help="generate a toy factory in the DCASE 2024 layout")
    p.add_argument("dest", type=Path, help="folder to write dev_data/raw/<machine>/... into")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.add_argument(
        "--quick",
        action="store_true",
        help="the small quick-mode sizes (asdflow.synth.QUICK_FACTORY) instead of "
        "the DCASE sizes (990 + 10 training, 50 + 50 test clips per domain, 10 s)",
    )
    p.add_argument(
        "--machine",
        action="append",
        default=None,
        metavar="M",
        choices=["fan", "bearing", "valve"],
        help="only this machine type (repeatable; default: fan, bearing, valve)",
    )
    p.add_argument("--seconds", type=float, default=None, help="clip duration in seconds")
    p.add_argument(
        "--train-source",
        dest="n_train_source",
        type=int,
        default=None,
        metavar="N",
        help="normal source-domain training clips per machine type",
    )
    p.add_argument(
        "--train-target",
        dest="n_train_target",
        type=int,
        default=None,
        metavar="N",
        help="normal target-domain training clips per machine type",
    )
    p.add_argument(
        "--test-per-domain",
        dest="n_test_per_domain",
        type=int,
        default=None,
        metavar="N",
        help="normal and anomalous test clips (each) per domain",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="regenerate even if DEST already holds this factory",
    )
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("download", help="download DCASE 2024 Task 2 data from Zenodo")
    p.add_argument("dest", type=Path, help="data root; zips are unpacked to DEST/dev_data/raw/...")
    p.add_argument(
        "--set",
        dest="dataset",
        choices=["dev", "add", "eval"],
        default="dev",
        help="dev: development set; add: additional training set; "
        "eval: evaluation test set (default: %(default)s)",
    )
    p.add_argument(
        "--machine",
        action="append",
        default=None,
        metavar="M",
        help="only this machine type (repeatable; default: all of the set)",
    )
    p.add_argument(
        "--keep-zip",
        action="store_true",
        help="keep the checked zips in DEST/<dev_data|eval_data>/zips/ "
        "(default: delete each zip once unpacked)",
    )
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
    p.add_argument(
        "--full",
        action="store_true",
        help="train: real size (1000 clips of 10 s, WideResNet-50-2; for a GPU)",
    )
    p.add_argument("--epochs", type=int, default=None, help="train: epochs (quick 5, full 25)")
    p.add_argument(
        "--hop",
        type=int,
        default=None,
        help="STFT hop in samples that sets the image width (default 512; 256 doubles it)",
    )
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser(
        "train",
        help="train a detector on the normal training clips of one machine type",
        description=(
            "Train CFlow (the report's detector) or the DCASE baseline autoencoder on the normal "
            "training clips of one machine type, and save it in the run folder --out with a "
            "run.json record (machine, model, seed, mode, settings, hardware, training time). "
            "CFlow writes a checkpoint into the folder after every epoch: run the same command "
            "again after an interruption and it resumes. Full settings (WideResNet-50-2 with "
            "ImageNet weights, 25 epochs) want a GPU; --quick trains small on a CPU."
        ),
        epilog=(
            "examples:\n"
            "  asdflow train data --machine fan --model cflow --out runs/fan-cflow\n"
            "  asdflow train data --machine fan --model ae --out runs/fan-ae --seed 1\n"
            "  asdflow train data --machine fan --model knn --out runs/fan-knn\n"
            "  asdflow train data --machine valve --out runs/valve --quick --epochs 2"
        ),
        formatter_class=_HelpFormatter,
    )
    p.add_argument("root", type=Path, help="data root (holds dev_data/raw/<machine>/train/)")
    p.add_argument("--machine", required=True, metavar="M", help="machine type, e.g. fan")
    p.add_argument(
        "--model",
        choices=list(MODELS),
        default="cflow",
        help="; ".join(f"{name}: {spec.help or spec.method}" for name, spec in MODELS.items())
        + " (default: %(default)s)",
    )
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="run folder to save in")
    p.add_argument(
        "--domain-aware",
        action="store_true",
        help="CFlow only: the domain-aware CFlow (CFlowConfig(domain_aware=True)), which uses "
        "the domain of each training clip; the default is the report's CFlow",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="quick-mode settings: resnet18 with random weights, few epochs (CPU-friendly)",
    )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: automatic)")
    p.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    p.add_argument("--epochs", type=int, default=None, help="training epochs instead of default")
    p.add_argument("--seed", type=int, default=0, help="seed of the run (default: %(default)s)")
    p.add_argument(
        "--set",
        action="append",
        default=None,
        metavar="FIELD=VALUE",
        help="expert: override one field of CFlowConfig, AEConfig or KNNConfig, e.g. --set n_blocks=4 "
        "(repeatable)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a detector already in DIR (and its DCASE files)",
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "test",
        help="score the test clips and write the two DCASE files",
        description=(
            "Score the test clips of one machine type with the detector in the run folder DIR "
            "and write the two DCASE 2024 files into DIR: "
            "anomaly_score_<M>_section_00_test.csv (file name, score; higher = more anomalous) "
            "and decision_result_<M>_section_00_test.csv (file name, 0 normal / 1 anomalous, "
            "from the detector's gamma-fit threshold). Existing files are never replaced "
            "unless --overwrite is given."
        ),
        epilog=(
            "examples:\n"
            "  asdflow test runs/fan-cflow data --machine fan\n"
            "  asdflow test runs/fan-cflow data --machine fan --overwrite"
        ),
        formatter_class=_HelpFormatter,
    )
    p.add_argument("dir", type=Path, metavar="DIR", help="run folder holding a trained detector")
    p.add_argument("root", type=Path, help="data root (holds dev_data/raw/<machine>/test/)")
    p.add_argument("--machine", required=True, metavar="M", help="machine type, e.g. fan")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: automatic)")
    p.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace existing DCASE files")
    p.set_defaults(func=cmd_test)

    p = sub.add_parser(
        "evaluate",
        help="DCASE metrics and the result table from score files",
        description=(
            "Read the DCASE files of one or more folders, check them against the ground truth "
            "(every test clip once, finite scores, 0/1 decisions) and print the result table: "
            "AUC (source), AUC (target) and pAUC per machine type, their arithmetic and "
            "harmonic means and the official score. Folders of the same model trained with "
            "different seeds give mean ± sd. The table is also written as CSV (fractions) and "
            "markdown (%) to --out. Labels come from the test file names of the development "
            "set (--root) or from a ground-truth file or folder (--ground-truth)."
        ),
        epilog=(
            "examples:\n"
            "  asdflow evaluate runs/fan-cflow --root data\n"
            "  asdflow evaluate runs/fan-s0 runs/fan-s1 runs/fan-s2 --root data --out results\n"
            "  asdflow evaluate submission/ --ground-truth ground_truth/  # evaluator layout\n"
            "\n"
            "ground truth: a CSV with header file_name,label,domain (label 0/1, domain "
            "source/target)\nfor one machine type, or a folder with "
            "ground_truth_<M>_section_00_test.csv in that format,\nor the official evaluator's "
            "ground_truth_data/ and ground_truth_domain/ folders."
        ),
        formatter_class=_HelpFormatter,
    )
    p.add_argument("dirs", type=Path, nargs="+", metavar="DIR", help="folders of DCASE files")
    p.add_argument("--root", type=Path, default=None, help="data root, for labels from file names")
    p.add_argument(
        "--ground-truth", type=Path, default=None, metavar="PATH", help="ground-truth file/folder"
    )
    p.add_argument(
        "--out", type=Path, default=Path("."), help="folder for the table files (default: .)"
    )
    p.add_argument(
        "--name", default="results", help="stem of the table files (default: %(default)s)"
    )
    p.add_argument("--report", action="store_true", help="add the report's Table 1 columns")
    p.add_argument("--overwrite", action="store_true", help="replace existing table files")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser(
        "reproduce",
        help="reproduce Table 1 of the report (full mode, GPU)",
        description=(
            "Train and test CFlow and the DCASE baseline on every development machine type "
            "with three seeds, then print Table 1 of the report with its numbers beside ours, "
            "the hardware and the time taken. Each run lives in OUT/<model>/<machine>/seed<S>/. "
            "The command is resumable: a finished run (detector and both DCASE files) is not "
            "redone, an interrupted CFlow training resumes from its checkpoint; run the same "
            "command again after an interruption. The table is written to OUT/table1.md and "
            "OUT/table1.csv. Full mode wants a GPU (the report: 9 min of training per machine "
            "type); --quick runs the small settings, e.g. on the synthetic factory."
        ),
        epilog=(
            "examples:\n"
            "  asdflow download data --set dev && asdflow reproduce data\n"
            "  asdflow reproduce data --machines fan valve --seeds 0 --models cflow\n"
            "  asdflow synth toy --quick && asdflow reproduce toy --quick --seeds 0"
        ),
        formatter_class=_HelpFormatter,
    )
    p.add_argument("root", type=Path, help="data root holding the development set")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder of the runs (default: runs/reproduce, with --quick runs/reproduce-quick)",
    )
    p.add_argument(
        "--machines", nargs="+", default=None, metavar="M", help="machine types (default: all)"
    )
    p.add_argument(
        "--seeds", nargs="+", type=int, default=[0, 1, 2], metavar="S", help="default: 0 1 2"
    )
    p.add_argument(
        "--models",
        nargs="+",
        choices=table_order(),
        default=[n for n in table_order() if n in MODELS],
        help="; ".join(f"{v.name}: {v.method}" for v in VARIANTS.values())
        + f" (default: {' '.join(n for n in table_order() if n in MODELS)})",
    )
    p.add_argument("--quick", action="store_true", help="quick-mode settings (CPU-friendly)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: automatic)")
    p.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    p.add_argument(
        "--epochs", type=int, default=None, help="training epochs of the trained models (cflow, ae)"
    )
    p.add_argument(
        "--set",
        action="append",
        default=None,
        metavar="MODEL.FIELD=VALUE",
        help="expert: override one configuration field, e.g. --set cflow.n_blocks=4 (repeatable)",
    )
    p.set_defaults(func=cmd_reproduce)
    return parser


def _one_line(err: BaseException) -> str:
    """The message of an error on one line; an ``OSError`` names its file and the problem."""
    if isinstance(err, OSError) and not isinstance(err, AsdflowError):
        problem = err.strerror or type(err).__name__
        if isinstance(err, PermissionError):
            problem += " (check the permissions, or choose a folder you can write to)"
        files = [f for f in (err.filename, err.filename2) if f is not None]
        text = f"{' -> '.join(repr(str(f)) for f in files)}: {problem}" if files else str(err)
    else:
        text = str(err)
    return " ".join(text.split())


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``asdflow`` console script.

    Every asdflow error (:class:`asdflow.errors.AsdflowError`) and every
    operating-system error (a file that cannot be read or written) ends the
    command with one line on stderr that names the file and the problem, and
    exit status 2; ``--debug`` shows the traceback instead.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        check_arguments(args)
        return int(args.func(args) or 0)
    except (AsdflowError, OSError) as err:
        if args.debug:
            raise
        print(f"asdflow {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"asdflow {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
