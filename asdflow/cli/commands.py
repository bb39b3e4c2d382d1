"""The functions behind the sub-commands: ``asdflow train`` runs :func:`cmd_train`, and so on.

Each function takes the parsed arguments (:func:`asdflow.cli.parser.build_parser`),
calls one package function, prints what it returns and gives the exit status.
Their options, help texts and examples are in :mod:`asdflow.cli.parser`.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from asdflow.detector import MODELS, VARIANTS, table_order
from asdflow.errors import ParameterError

# Every function imports the modules it needs (numpy, torch, librosa behind them) in its
# body, not here: `asdflow --help` imports this module and must answer without loading them.


def cmd_synth(args: argparse.Namespace) -> int:
    """``asdflow synth DEST``: write the toy factory in the DCASE layout."""
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
