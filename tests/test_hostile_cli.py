"""Hostile input to the command line: bad values, unusable paths, failed and concurrent runs.

Each case checks the three promises of the error contract: exit status 2,
one line on stderr that names the value or file and what to do, and every
file that existed before is still there, unchanged.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from asdflow import cli, evaluation, experiment, files
from asdflow.baseline import AutoencoderDetector
from asdflow.errors import ModelError, ParameterError

MACHINE = "valve"
TINY_AE = ["--model", "ae", "--quick", "--epochs", "1", "--set", "batch_size=256"]

pytestmark = pytest.mark.usefixtures("shared_cache")


def run(capsys: pytest.CaptureFixture, *argv: object) -> tuple[int, str, str]:
    """``asdflow ARGV`` in this process: exit code, stdout, stderr."""
    capsys.readouterr()
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code: int, err: str, command: str) -> str:
    """Assert the error contract (exit 2, one error line, last, no traceback) and return it.

    Status lines printed before the failure (e.g. "training ... into ...") may precede it.
    """
    assert code == 2
    lines = err.strip().splitlines()
    errors = [line for line in lines if line.startswith(f"asdflow {command}: error: ")]
    assert errors == lines[-1:], err
    assert "Traceback" not in err
    return lines[-1]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Content of every visible file under ``folder``."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.name.startswith(".")
    }


@pytest.fixture(scope="module")
def ae_run(factory: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny tested baseline run folder (detector, run.json, both DCASE files)."""
    folder = tmp_path_factory.mktemp("hostile") / "ae"
    argv = ["train", factory, "--machine", MACHINE, "--out", folder, *TINY_AE]
    assert cli.main([str(a) for a in argv]) == 0
    assert cli.main(["test", str(folder), str(factory), "--machine", MACHINE]) == 0
    return folder


# ----------------------------------------------------------------- bad values


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--seed", "-1"], "--seed must be at least 0, got -1"),
        (["--threads", "0"], "--threads must be at least 1, got 0"),
        (["--epochs", "0"], "--epochs must be at least 1, got 0"),
        (["--set", "n_blocks=2.5"], "CFlowConfig.n_blocks must be a whole number, got 2.5"),
        (["--set", "n_blocks=abc"], 'CFlowConfig.n_blocks must be a whole number, got "abc"'),
        (["--set", "n_blocks=true"], "CFlowConfig.n_blocks must be a whole number, got true"),
        (["--set", "lr=fast"], 'CFlowConfig.lr must be a number, got "fast"'),
        (["--set", "mixed_precision=1"], "mixed_precision must be true or false, got 1"),
        (["--set", "colour=red"], "unknown CFlowConfig field(s) colour"),
        (["--set", "n_blocks"], "--set expects FIELD=VALUE"),
    ],
)
def test_bad_train_values_give_one_line(argv, expected, factory, tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = run(capsys, "train", factory, "--machine", MACHINE, "--out", out, *argv)
    assert expected in one_line_error(code, err, "train")
    assert not (out / "cflow.pt").exists()


def test_bad_counts_of_other_commands(factory, tmp_path, capsys):
    code, _, err = run(capsys, "features", factory, "--jobs", "0")
    assert "--jobs must be at least 1, got 0" in one_line_error(code, err, "features")
    code, _, err = run(capsys, "reproduce", factory, "--seeds", "0", "-2", "--out", tmp_path)
    assert "--seeds must be at least 0, got -2" in one_line_error(code, err, "reproduce")


def test_set_values_of_the_right_type_are_taken(factory):
    config = experiment.run_config(
        "cflow",
        factory,
        MACHINE,
        quick=True,
        changes=experiment.parse_settings(["n_blocks=3", "lr=1", 'rows=["mel"]']),
    )
    assert (config.n_blocks, config.lr, config.rows) == (3, 1.0, ("mel",))
    assert isinstance(config.lr, float)


def test_python_changes_take_tuples_and_lists_of_row_groups(factory):
    # chapter 7 passes CFlowConfig changes from Python, where a tuple is the natural spelling
    for rows in [("mel", "chroma"), ["mel", "chroma"]]:
        config = experiment.run_config(
            "cflow", factory, MACHINE, quick=True, changes={"rows": rows}
        )
        assert config.rows == ("mel", "chroma")
    with pytest.raises(ParameterError, match="JSON list of names"):
        experiment.run_config("cflow", factory, MACHINE, quick=True, changes={"rows": ("mel", 3)})


# ----------------------------------------------------------------- unusable paths


@pytest.mark.parametrize("where", ["is a file", "under a file"])
def test_train_out_that_cannot_be_a_folder(where, factory, tmp_path, capsys):
    blocker = tmp_path / "blocker"
    blocker.write_text("keep me\n")
    out = blocker if where == "is a file" else blocker / "run"
    code, _, err = run(capsys, "train", factory, "--machine", MACHINE, "--out", out, *TINY_AE)
    line = one_line_error(code, err, "train")
    assert str(blocker) in line and "is a file, not a folder" in line
    assert blocker.read_text() == "keep me\n"


def test_train_out_not_writable(factory, tmp_path, capsys, monkeypatch):
    out = tmp_path / "locked"
    out.mkdir()
    real_access = files.os.access
    monkeypatch.setattr(
        files.os, "access", lambda p, m: False if Path(p) == out else real_access(p, m)
    )
    code, _, err = run(capsys, "train", factory, "--machine", MACHINE, "--out", out, *TINY_AE)
    line = one_line_error(code, err, "train")
    assert str(out) in line and "not writable" in line


def test_an_os_error_names_its_file(factory, tmp_path, capsys, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "secret.wav"))

    monkeypatch.setattr(experiment.runs, "_train_clips", refuse)
    code, _, err = run(
        capsys, "train", factory, "--machine", MACHINE, "--out", tmp_path / "r", *TINY_AE
    )
    line = one_line_error(code, err, "train")
    assert "secret.wav" in line and "Permission denied" in line and "permissions" in line


def test_debug_shows_the_traceback(factory, tmp_path):
    with pytest.raises(ModelError):
        cli.main(["--debug", "test", str(tmp_path / "nothing"), str(factory), "--machine", "fan"])


def test_evaluate_out_a_file_and_name_outside(ae_run, factory, tmp_path, capsys):
    blocker = tmp_path / "table"
    blocker.write_text("mine\n")
    code, _, err = run(capsys, "evaluate", ae_run, "--root", factory, "--out", blocker)
    assert "is a file, not a folder" in one_line_error(code, err, "evaluate")
    assert blocker.read_text() == "mine\n"

    out = tmp_path / "deep" / "results"
    code, _, err = run(
        capsys, "evaluate", ae_run, "--root", factory, "--out", out, "--name", "../../x"
    )
    assert "--name must be a plain file name" in one_line_error(code, err, "evaluate")
    assert not list(tmp_path.rglob("x.csv")) and not list(tmp_path.rglob("x.md"))


# ----------------------------------------------------------------- nothing lost


def test_failed_overwrite_keeps_the_old_run(ae_run, factory, capsys, monkeypatch):
    before = snapshot(ae_run)

    def fail(self, clips):
        raise ModelError("training failed on purpose")

    monkeypatch.setattr(AutoencoderDetector, "fit", fail)
    argv = ["train", factory, "--machine", MACHINE, "--out", ae_run, "--overwrite", *TINY_AE]
    code, _, err = run(capsys, *argv)
    assert "training failed on purpose" in one_line_error(code, err, "train")
    assert snapshot(ae_run) == before  # detector, run.json and both DCASE files
    assert not (ae_run / ".overwrite").exists()  # nothing to resume: no staging left
    assert experiment.is_finished(ae_run, MACHINE)


def test_successful_overwrite_replaces_the_run_and_its_scores(ae_run, factory, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(ae_run, copy)
    (copy / ".autoencoder.pt.x1.asdflow-tmp").write_bytes(b"left by a killed writer")
    old = (copy / "autoencoder.pt").read_bytes()
    argv = ["train", factory, "--machine", MACHINE, "--out", copy, "--overwrite", *TINY_AE]
    argv += ["--seed", "3"]
    code, _, _ = run(capsys, *argv)
    assert code == 0
    assert (copy / "autoencoder.pt").read_bytes() != old
    assert experiment.read_run_info(copy).seed == 3
    # The old DCASE files belonged to the old detector: gone, not paired with the new one.
    assert not (copy / evaluation.score_file_name(MACHINE)).exists()
    assert not (copy / ".overwrite").exists()
    assert not list(copy.glob(f"*{files.TEMP_SUFFIX}"))


def test_concurrent_writers_of_one_run_folder(ae_run, factory, tmp_path, capsys):
    folder = tmp_path / "busy"
    folder.mkdir()
    with files.folder_lock(folder, "run folder"):  # another process training there
        argv = ["train", factory, "--machine", MACHINE, "--out", folder, *TINY_AE]
        code, _, err = run(capsys, *argv)
        line = one_line_error(code, err, "train")
        assert "another asdflow process is writing into the run folder" in line
        assert str(folder) in line
    assert not (folder / "autoencoder.pt").exists()

    before = snapshot(ae_run)
    with files.folder_lock(ae_run, "run folder"):
        code, _, err = run(capsys, "test", ae_run, factory, "--machine", MACHINE, "--overwrite")
        assert "another asdflow process" in one_line_error(code, err, "test")
    assert snapshot(ae_run) == before


def test_fingerprint_sees_an_edit_that_keeps_size_and_time(tmp_path):
    from types import SimpleNamespace

    import numpy as np
    import soundfile as sf

    paths = [tmp_path / f"clip_{i}.wav" for i in range(2)]
    for i, path in enumerate(paths):
        sf.write(path, np.full(1600, 0.1 * (i + 1), dtype=np.float32), 16000, subtype="PCM_16")
    clips = [SimpleNamespace(path=p) for p in paths]
    before = experiment.data_fingerprint(clips)
    stat = paths[1].stat()
    edited = bytearray(paths[1].read_bytes())
    edited[-2:] = b"\x01\x02"  # same size
    paths[1].write_bytes(bytes(edited))
    os.utime(paths[1], ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same time (touch -r)
    assert paths[1].stat().st_size == stat.st_size
    after = experiment.data_fingerprint(clips)
    assert after != before
    os.utime(paths[0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a plain touch
    assert experiment.data_fingerprint(clips) == after == experiment.data_fingerprint(clips[::-1])


def test_detector_of_another_machine_is_refused_without_run_json(ae_run, tmp_path, factory, capsys):
    copy = tmp_path / "no-record"
    shutil.copytree(ae_run, copy)
    (copy / experiment.RUN_FILE).unlink()  # the detector file itself knows its machine type
    code, _, err = run(capsys, "test", copy, factory, "--machine", "fan", "--overwrite")
    line = one_line_error(code, err, "test")
    assert f"trained on '{MACHINE}', not 'fan'" in line
    assert not (copy / evaluation.score_file_name("fan")).exists()


def test_overwrite_on_silent_clips_fails_and_keeps_the_old_run(ae_run, factory, tmp_path, capsys):
    import numpy as np
    import soundfile as sf

    silent = tmp_path / "silent-factory"
    shutil.copytree(factory / "dev_data" / "raw" / MACHINE, silent / "dev_data" / "raw" / MACHINE)
    for path in (silent / "dev_data" / "raw" / MACHINE / "train").glob("*.wav"):
        info = sf.info(path)
        sf.write(path, np.zeros(info.frames, dtype=np.float32), info.samplerate, subtype="PCM_16")
    run_folder = tmp_path / "run"
    shutil.copytree(ae_run, run_folder)
    before = snapshot(run_folder)
    argv = ["train", silent, "--machine", MACHINE, "--out", run_folder, "--overwrite", *TINY_AE]
    code, _, err = run(capsys, *argv)
    line = one_line_error(code, err, "train")
    assert "silent" in line and MACHINE in line
    assert snapshot(run_folder) == before
