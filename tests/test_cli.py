"""Tests of the asdflow command line: train -> test -> evaluate, bad input, reproduce."""

from __future__ import annotations

import csv
import io
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from asdflow import cli, data, evaluation, experiment

MACHINE = "valve"
TINY_CFLOW = ["--epochs", "1", "--set", "n_blocks=1", "--set", "fiber_batch=256"]
TINY_AE = ["--epochs", "1", "--set", "batch_size=256"]


pytestmark = pytest.mark.usefixtures("shared_cache")


def run(capsys: pytest.CaptureFixture, *argv: object) -> tuple[int, str, str]:
    """``asdflow ARGV`` in this process: exit code, stdout, stderr."""
    capsys.readouterr()
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Content and modification time of every file under ``folder``."""
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def read_table(path: Path) -> dict[tuple[str, str], dict[str, str]]:
    """A result-table CSV as {(machine, metric): row}."""
    rows = csv.DictReader(io.StringIO(path.read_text()))
    return {(row["machine"], row["metric"]): row for row in rows}


@pytest.fixture(scope="module")
def runs(factory: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Run folders made by the command line: CFlow seed 0, baseline seeds 0 and 1 (tiny)."""
    base = tmp_path_factory.mktemp("cli-runs")
    folders = {
        "cflow": (base / "cflow", ["--model", "cflow", *TINY_CFLOW]),
        "ae0": (base / "ae0", ["--model", "ae", *TINY_AE]),
        "ae1": (base / "ae1", ["--model", "ae", "--seed", "1", *TINY_AE]),
        "knn": (base / "knn", ["--model", "knn"]),
    }
    for folder, options in folders.values():
        argv = ["train", factory, "--machine", MACHINE, "--out", folder, "--quick", *options]
        assert cli.main([str(a) for a in argv]) == 0
        assert cli.main(["test", str(folder), str(factory), "--machine", MACHINE]) == 0
    return {name: folder for name, (folder, _) in folders.items()}


@pytest.mark.parametrize("command", ["demo", "train", "test", "evaluate", "reproduce"])
def test_every_command_explains_itself(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert f"asdflow {command}" in text and "examples:" in text


def test_help_loads_neither_numpy_nor_torch():
    """``asdflow --help`` answers at once: the command modules import the heavy ones in use."""
    code = (
        "import contextlib, io, sys\n"
        "from asdflow import cli\n"
        "for argv in ([], ['train'], ['demo']):\n"
        "    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "        cli.main([*argv, '--help'])\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'numpy', 'torch'}))\n"
    )
    package_parent = Path(cli.__file__).resolve().parents[2]  # the asdflow this test imported
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=package_parent,
    )
    assert result.stdout.strip() == "[]"


def test_train_prints_next_step_and_records_the_run(runs, factory):
    info = experiment.read_run_info(runs["cflow"])
    assert (info.model, info.machine, info.mode, info.seed) == ("cflow", MACHINE, "quick", 0)
    assert (info.config["n_blocks"], info.config["fiber_batch"], info.config["epochs"]) == (
        1,
        256,
        1,
    )
    assert experiment.read_run_info(runs["ae1"]).config["seed"] == 1
    for folder in runs.values():
        assert experiment.is_finished(folder, MACHINE)


def test_evaluate_from_files_equals_evaluating_in_memory(runs, factory, tmp_path, capsys):
    code, out, _ = run(capsys, "evaluate", runs["cflow"], "--root", factory, "--out", tmp_path)
    assert code == 0
    assert out.splitlines()[0] == experiment.QUICK_TITLE
    table = read_table(tmp_path / "results.csv")

    clips = data.scan(factory, machines=MACHINE, split="test")
    detector = experiment.load_detector(runs["cflow"], progress=False)
    scores = detector.score(clips)
    result = evaluation.evaluate(
        evaluation.truth_from_clips(clips),
        scores,
        (scores > detector.threshold_).astype(int),
        machine=MACHINE,
    )
    for metric in evaluation.METRICS:
        assert float(table[(MACHINE, metric)]["CFlow"]) == pytest.approx(
            result.metric(metric), abs=1e-12
        )
    official = float(table[("official score", "")]["CFlow"])
    assert official == pytest.approx(evaluation.official_score([result]), abs=1e-12)
    assert (tmp_path / "results.md").read_text().startswith(experiment.QUICK_TITLE)


def test_knn_runs_beside_the_others_with_decisions_per_domain(runs, factory, tmp_path, capsys):
    assert experiment.read_run_info(runs["knn"]).method == "kNN"
    folders = [runs["ae0"], runs["knn"], runs["cflow"]]
    code, out, _ = run(capsys, "evaluate", *folders, "--root", factory, "--out", tmp_path)
    assert code == 0
    assert "| machine | metric (%) | Baseline | kNN | CFlow |" in out
    table = read_table(tmp_path / "results.csv")
    result = experiment.collect_results([runs["knn"]], root=factory)[0]
    for metric in evaluation.DECISION_METRICS:
        value = float(table[(MACHINE, metric)]["kNN"])
        assert value == pytest.approx(result.metric(metric), abs=1e-12)
        assert 0.0 <= value <= 1.0


def test_domain_aware_is_a_cflow_option(factory, tmp_path, capsys):
    argv = ["train", factory, "--machine", MACHINE, "--out", tmp_path / "x", "--model", "ae"]
    code, _, err = run(capsys, *argv, "--domain-aware")
    assert code == 2 and "--domain-aware is a CFlow setting" in err
    assert not (tmp_path / "x").exists()


def test_two_seeds_give_mean_and_sd(runs, factory, tmp_path, capsys):
    code, out, _ = run(
        capsys, "evaluate", runs["ae0"], runs["ae1"], "--root", factory, "--out", tmp_path
    )
    assert code == 0
    values = [
        experiment.collect_results([runs[name]], root=factory)[0].auc_source
        for name in ("ae0", "ae1")
    ]
    row = read_table(tmp_path / "results.csv")[(MACHINE, "AUC (source)")]
    assert float(row["Baseline"]) == pytest.approx(np.mean(values), abs=1e-12)
    assert float(row["Baseline sd"]) == pytest.approx(np.std(values, ddof=1), abs=1e-12)
    assert "Baseline 2 runs (mean ± sd)" in out and " ± " in out


# ---------------------------------------------------------------- bad input


def corrupt_duplicate(lines: list[str]) -> list[str]:
    return [lines[0], lines[0], *lines[2:]]


def corrupt_nan(lines: list[str]) -> list[str]:
    name = lines[3].split(",")[0]
    return [*lines[:3], f"{name},nan", *lines[4:]]


def corrupt_missing(lines: list[str]) -> list[str]:
    return lines[:-1]


def corrupt_extra(lines: list[str]) -> list[str]:
    return [*lines, "section_00_source_test_normal_9999_stranger.wav,0.5"]


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (corrupt_duplicate, "appears twice"),
        (corrupt_nan, "is 'nan'; scores must be finite"),
        (corrupt_missing, "1 clip(s) missing"),
        (
            corrupt_extra,
            "1 clip(s) not in the ground truth, e.g. 'section_00_source_test_normal_9999",
        ),
    ],
    ids=["duplicate", "nan", "missing", "extra"],
)
def test_corrupted_score_file_is_named_and_nothing_is_written(
    corrupt, message, runs, factory, tmp_path, capsys
):
    folder = tmp_path / "run"
    shutil.copytree(runs["ae0"], folder)
    score_file = folder / evaluation.score_file_name(MACHINE)
    lines = score_file.read_text().splitlines()
    score_file.write_text("\n".join(corrupt(lines)) + "\n")
    out_dir = tmp_path / "tables"
    before = snapshot(folder)

    code, out, err = run(capsys, "evaluate", folder, "--root", factory, "--out", out_dir)
    assert code == 2 and out == ""
    assert err.startswith("asdflow evaluate: error: ")
    assert str(score_file) in err and message in err
    assert snapshot(folder) == before
    assert not out_dir.exists()


def test_test_without_a_detector_names_the_folder(factory, tmp_path, capsys):
    missing = tmp_path / "no-such-run"
    code, _, err = run(capsys, "test", missing, factory, "--machine", MACHINE)
    assert code == 2
    assert err.startswith("asdflow test: error: ") and f"{missing} does not exist" in err
    assert not missing.exists()


def test_unknown_machine_is_named(factory, tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = run(capsys, "train", factory, "--machine", "pump", "--out", out, "--quick")
    assert code == 2
    assert err.startswith("asdflow train: error: machine type(s) pump not found")
    assert not out.exists()


def test_existing_files_are_kept(runs, factory, capsys):
    folder = runs["ae0"]
    before = snapshot(folder)
    code, _, err = run(capsys, "test", folder, factory, "--machine", MACHINE)
    assert code == 2 and "already exist" in err and "--overwrite" in err
    code, _, err = run(capsys, "train", factory, "--machine", MACHINE, "--out", folder, "--quick")
    assert code == 2 and "already holds a Baseline detector of valve" in err
    code, _, err = run(capsys, "test", folder, factory, "--machine", "fan")
    assert code == 2 and "trained on 'valve', not 'fan'" in err
    assert snapshot(folder) == before


def test_expert_settings_are_checked(factory, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", factory, "--machine", MACHINE, "--out", out, "--quick", "--set", "blocks=2"]
    code, _, err = run(capsys, *argv)
    assert code == 2 and "unknown CFlowConfig field(s) blocks" in err
    assert not out.exists()


# ---------------------------------------------------------------- reproduce


@pytest.mark.slow
def test_reproduce_resumes_and_does_nothing_the_second_time(factory, tmp_path, capsys):
    out = tmp_path / "reproduce"
    argv = [
        "reproduce", factory, "--quick", "--machines", MACHINE, "--seeds", "0", "--out", out,
        "--epochs", "1", "--set", "cflow.n_blocks=1", "--set", "cflow.fiber_batch=256",
        "--set", "ae.batch_size=256",
    ]  # fmt: skip
    code, first, _ = run(capsys, *argv)
    assert code == 0
    for model in ("ae", "knn", "cflow"):
        assert experiment.is_finished(experiment.run_dir(out, model, MACHINE, 0), MACHINE)
    lines = first.splitlines()
    assert lines[0] == experiment.QUICK_TITLE
    header = next(line for line in lines if line.startswith("| machine"))
    assert header == (
        "| machine | metric (%) | Baseline (report) | Baseline | kNN | CFlow (report) | CFlow |"
    )
    assert "| valve | AUC (source) | 51.07 |" in first  # the report's baseline value
    assert "3 trained, 3 tested, 0 reused" in first and "hardware: CPU" in first
    assert "|  | F1 (target) |" in first  # decisions per domain beside the AUCs
    assert (out / "table1.md").read_text().startswith(experiment.QUICK_TITLE)

    before = snapshot(out)
    code, second, _ = run(capsys, *argv)
    assert code == 0
    assert snapshot(out) == before  # nothing retrained, retested or rewritten
    assert "0 trained, 0 tested, 3 reused" in second
    table = [line for line in second.splitlines() if line.startswith("|")]
    assert table == [line for line in lines if line.startswith("|")]

    # The same folder in full mode is refused, not silently reused.
    full = [a for a in argv if a != "--quick"]
    code, _, err = run(capsys, *full)
    assert code == 2 and "holds a run with other settings (mode: 'quick' there" in err
    assert snapshot(out) == before


@pytest.mark.slow
def test_demo_prints_the_data_then_both_detectors_side_by_side(tmp_path, capsys, monkeypatch):
    """The demo's steps, on a one-machine factory just large enough for tiny settings."""
    from asdflow import synth

    small = {"machines": (MACHINE,), "n_train_source": 14, "n_train_target": 2}
    monkeypatch.setattr(
        synth, "QUICK_FACTORY", {**synth.QUICK_FACTORY, **small, "n_test_per_domain": 2}
    )
    reproduce = experiment.reproduce
    tiny = {"cflow.n_blocks": 1, "cflow.fiber_batch": 64, "ae.batch_size": 256}
    monkeypatch.setattr(
        experiment,
        "reproduce",
        lambda *a, **k: reproduce(*a, **k, epochs=1, changes=tiny, progress=False),
    )
    torch.set_num_threads(2)
    code, out, _ = run(capsys, "demo", "--workdir", tmp_path)
    assert code == 0
    assert f"{16 + 8} clips under {tmp_path / 'data-seed0'}" in out
    assert experiment.QUICK_TITLE in out
    assert "| machine | metric (%) | Baseline | kNN | CFlow | CFlow (domain-aware) |" in out
    assert out.count(f"| {MACHINE} | AUC (source) |") == 1
    assert (tmp_path / "runs" / "demo.md").is_file()
    assert torch.get_num_threads() == 1  # --threads defaults to 1
