"""The options of every sub-command: the argument parser and the checks of its values.

:func:`build_parser` defines each sub-command with its options, help texts and
examples, and names the function that runs it (:mod:`asdflow.cli.commands`);
:func:`check_arguments` checks the ranges of the numeric options before any
work starts.
"""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

from asdflow.cli.commands import (
    cmd_bench,
    cmd_demo,
    cmd_download,
    cmd_evaluate,
    cmd_features,
    cmd_reproduce,
    cmd_synth,
    cmd_test,
    cmd_train,
)
from asdflow.detector import MODELS, VARIANTS, table_order
from asdflow.errors import ParameterError


class _HelpFormatter(argparse.HelpFormatter):
    """Wraps descriptions; keeps the lines of example blocks (indented lines) as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
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
