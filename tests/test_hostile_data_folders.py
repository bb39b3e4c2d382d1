"""Hostile data folders: ``asdflow download`` and ``asdflow synth`` against an adversarial user.

The rules checked here: download and synth never delete a file they did not
write; a bad zip is refused before the machine folder is touched and is not
kept; synth touches only the machine types asked for; a destination that is a
file, lies under a file or cannot be written to, and a folder another process
is writing into, end in one line naming the path and what to do (exit 2).
Downloads run against the local HTTP server of ``test_download``.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import warnings
import zipfile
from pathlib import Path

import pytest
from test_download import COUNTS, _no_wait, clip_names, make_zip, server, wav_bytes  # noqa: F401

from asdflow import download as dl
from asdflow import files, synth
from asdflow.cli import main
from asdflow.errors import AsdflowError, BusyError, DownloadError, ParameterError

SIZES = [
    "--seconds",
    "0.25",
    "--train-source",
    "2",
    "--train-target",
    "1",
    "--test-per-domain",
    "1",
]


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Exit code of ``asdflow ARGV`` and its error line ("" when there is none).

    Fails unless there is at most one error line: the message of a refusal
    is one line, whatever progress bars were printed before it.
    """
    code = main(argv)
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith(f"asdflow {argv[0]}: error:")]
    assert len(errors) <= 1, err
    assert "Traceback" not in err
    return code, errors[0] if errors else ""


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with a hash of its bytes (lock files excluded)."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != files.LOCK_FILE
    }


@pytest.fixture
def zenodo(server, monkeypatch):  # noqa: F811
    """The local server as the download source of the CLI, with the small test counts."""
    monkeypatch.setenv(dl.URL_ENV, server.url)
    for dataset, counts in COUNTS.items():
        monkeypatch.setitem(dl.EXPECTED_COUNTS, dataset, counts)
    return server


def put_user_files(folder: Path) -> dict[str, bytes]:
    """Write a user's notes and own recordings into a machine folder; return them."""
    mine = {
        "notes.txt": b"my notes on this machine",
        "train/my_recording.wav": wav_bytes()[:-2] + b"\x01\x02",
        "test/notes.txt": b"which clips I listened to",
    }
    for name, content in mine.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(content)
    return mine


def assert_still_there(folder: Path, mine: dict[str, bytes]) -> None:
    for name, content in mine.items():
        assert (folder / name).read_bytes() == content, name


# ------------------------------------------------------------------ 1. other files in a machine folder


def test_download_keeps_files_the_zip_does_not_bring(tmp_path, zenodo, capsys):
    zenodo.publish("dev", "fan")
    assert run(["download", str(tmp_path), "--machine", "fan"], capsys) == (0, "")
    folder = tmp_path / "dev_data/raw/fan"
    mine = put_user_files(folder)
    victim = folder / "test" / clip_names("dev", "test", 1)[0]
    victim.unlink()  # the machine is incomplete: the next run unpacks the zip again

    assert run(["download", str(tmp_path), "--machine", "fan"], capsys) == (0, "")
    assert len(zenodo.zip_requests()) == 2
    assert victim.read_bytes() == wav_bytes()
    assert_still_there(folder, mine)
    marker = json.loads((folder / ".asdflow-dev.json").read_text())
    assert "my_recording.wav" not in marker["files"]["train"]

    # the user's extra recording does not make the folder look incomplete
    assert run(["download", str(tmp_path), "--machine", "fan"], capsys) == (0, "")
    assert len(zenodo.zip_requests()) == 2
    assert_still_there(folder, mine)


def test_download_refuses_a_clash_and_moves_nothing(tmp_path, zenodo, capsys):
    zenodo.publish("dev", "fan")
    folder = tmp_path / "dev_data/raw/fan"
    mine = put_user_files(folder)
    (folder / "attributes_00.csv").mkdir()  # a folder where the zip has a file
    (folder / "attributes_00.csv/mine.txt").write_text("mine")
    before = snapshot(folder)

    code, error = run(["download", str(tmp_path), "--machine", "fan"], capsys)
    assert code == 2
    assert f"{folder / 'attributes_00.csv'} is a folder where the zip has a file" in error
    assert "nothing was changed" in error and "Move or rename" in error
    assert snapshot(folder) == before  # not one clip moved in
    assert (tmp_path / "dev_data/zips/dev_fan.zip").is_file()  # the checked zip is kept

    (folder / "attributes_00.csv/mine.txt").rename(tmp_path / "mine.txt")
    (folder / "attributes_00.csv").rmdir()
    assert run(["download", str(tmp_path), "--machine", "fan"], capsys) == (0, "")
    assert len(zenodo.zip_requests()) == 1  # the kept zip was used
    assert len(list((folder / "train").glob("*.wav"))) == 4 + 1
    assert_still_there(folder, mine)


@pytest.mark.parametrize("blocker", ["raw/fan", "raw/fan/train"])
def test_download_refuses_a_file_in_place_of_a_folder_before_downloading(
    tmp_path, zenodo, capsys, blocker
):
    zenodo.publish("dev", "fan")
    path = tmp_path / "dev_data" / blocker
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("not a folder")
    code, error = run(["download", str(tmp_path), "--machine", "fan"], capsys)
    assert code == 2
    assert f"{path} is a file where a folder must be" in error and "Move or rename" in error
    assert path.read_text() == "not a folder"
    assert zenodo.requests == []


@pytest.mark.filterwarnings("ignore:skipped 2 file")  # the user's files, listed by data.describe
def test_synth_keeps_files_it_did_not_write(tmp_path, capsys):
    argv = ["synth", str(tmp_path), "--machine", "fan", *SIZES]
    assert run(argv, capsys) == (0, "")
    folder = tmp_path / "dev_data/raw/fan"
    mine = put_user_files(folder)
    assert run([*argv, "--overwrite"], capsys) == (0, "")
    assert_still_there(folder, mine)
    # fewer clips: synth deletes its own old clip, not the user's recording
    old = sorted((folder / "train").glob("*source_train_normal_0001*"))
    assert len(old) == 1
    fewer = [*argv[:6], "--train-source", "1", *argv[8:], "--overwrite"]
    assert run(fewer, capsys) == (0, "")
    assert not old[0].exists()
    assert_still_there(folder, mine)


# ------------------------------------------------------------------ 2. a zip with a duplicate member


def publish_with_duplicate(server, member: str) -> Path:  # noqa: F811
    path = server.root / dl.RECORDS["dev"] / "files" / dl.zip_name("dev", "fan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # zipfile warns: "Duplicate name"
        return make_zip(path, "dev", "fan", extra={member: b"RIFF not the same clip"})


def test_duplicate_member_is_refused_before_the_folder_is_touched(tmp_path, zenodo, capsys):
    zenodo.publish("dev", "fan")
    assert run(["download", str(tmp_path), "--machine", "fan"], capsys) == (0, "")
    folder = tmp_path / "dev_data/raw/fan"
    (folder / "test" / clip_names("dev", "test", 1)[0]).unlink()  # incomplete: unpack again
    before = snapshot(folder)

    member = f"fan/train/{clip_names('dev', 'train', 1)[0]}"
    publish_with_duplicate(zenodo, member)
    code, error = run(["download", str(tmp_path), "--machine", "fan"], capsys)
    assert code == 2
    assert "dev_fan.zip" in error and repr(member) in error
    assert "appears more than once" in error and "run again to download it anew" in error
    assert snapshot(folder) == before  # the old folder is intact, marker included
    assert list((tmp_path / "dev_data/zips").iterdir()) == []  # the bad zip is not kept

    # a re-run downloads again instead of reusing the bad zip
    assert run(["download", str(tmp_path), "--machine", "fan"], capsys)[0] == 2
    assert len(zenodo.zip_requests()) == 3
    zenodo.publish("dev", "fan")
    assert run(["download", str(tmp_path), "--machine", "fan"], capsys) == (0, "")
    assert len(zenodo.zip_requests()) == 4 and snapshot(folder).keys() >= before.keys()


def test_kept_zip_with_a_duplicate_member_is_downloaded_again(tmp_path, zenodo, capsys):
    zenodo.publish("dev", "fan")
    kept = tmp_path / "dev_data/zips/dev_fan.zip"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        make_zip(kept, "dev", "fan", extra={"fan/attributes_00.csv": b"twice"})
    assert run(["download", str(tmp_path), "--machine", "fan"], capsys) == (0, "")
    assert len(zenodo.zip_requests()) == 1
    assert not kept.exists()


@pytest.mark.parametrize("second", ["fan/train/a.wav", "fan\\train\\a.wav"])
def test_verify_and_extract_refuse_duplicate_members(tmp_path, second):
    zip_path = tmp_path / "dup.zip"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with zipfile.ZipFile(zip_path, "w") as archive:
            archive.writestr("fan/train/a.wav", b"one")
            archive.writestr("fan/test/b.wav", b"two")
            archive.writestr(second, b"three")
    with pytest.raises(DownloadError, match=r"dup\.zip: member .* appears more than once"):
        dl.verify_zip(zip_path, machine="fan", expected={"train": None, "test": None})
    with pytest.raises(DownloadError, match="appears more than once"):
        dl.safe_extract(zip_path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ 3. synth and other machine types


def test_synth_with_other_settings_touches_only_the_machine_asked_for(tmp_path, capsys):
    both = ["synth", str(tmp_path), "--machine", "fan", "--machine", "valve", *SIZES]
    assert run(both, capsys) == (0, "")
    raw = tmp_path / "dev_data/raw"
    valve, fan = snapshot(raw / "valve"), snapshot(raw / "fan")
    other = ["synth", str(tmp_path), "--machine", "fan", *SIZES[:2], "--train-source", "3",
             *SIZES[4:]]  # fmt: skip

    code, error = run(other, capsys)
    assert code == 2
    assert str(raw / "fan") in error and "n_train_source=2 instead of 3" in error
    assert "--overwrite" in error and "nothing was changed" in error
    assert snapshot(raw / "valve") == valve and snapshot(raw / "fan") == fan

    assert run([*other, "--overwrite"], capsys) == (0, "")
    assert snapshot(raw / "valve") == valve
    assert len(list((raw / "fan/train").glob("*source_train*.wav"))) == 3
    records = json.loads((tmp_path / synth.MARKER).read_text())["machines"]
    assert sorted(records) == ["fan", "valve"]
    assert records["fan"]["n_train_source"] == 3 and records["valve"]["n_train_source"] == 2
    assert all(r["complete"] for r in records.values())

    # each machine type is complete with its own settings: both calls write nothing
    marker = (tmp_path / synth.MARKER).stat().st_mtime_ns
    fan = snapshot(raw / "fan")
    assert run(["synth", str(tmp_path), "--machine", "valve", *SIZES], capsys) == (0, "")
    assert run(other, capsys) == (0, "")
    assert snapshot(raw / "valve") == valve and snapshot(raw / "fan") == fan
    assert (tmp_path / synth.MARKER).stat().st_mtime_ns == marker


def test_synth_reads_a_format_1_marker(tmp_path, monkeypatch):
    tiny = {"n_train_source": 2, "n_train_target": 1, "n_test_per_domain": 1, "seconds": 0.25}
    synth.make_factory(tmp_path, machines=("fan",), progress=False, **tiny)
    (tmp_path / synth.MARKER).write_text(
        json.dumps(
            {
                "generator_version": synth.GENERATOR_VERSION,
                "machines": ["fan"],
                **tiny,
                "seed": 0,
                "complete": True,
            }
        )  # fmt: skip
    )
    before = snapshot(tmp_path / "dev_data")

    def fail(*args, **kwargs):
        raise AssertionError("a complete factory must not be generated again")

    monkeypatch.setattr(synth, "generate_clip", fail)
    synth.make_factory(tmp_path, machines=("fan",), progress=False, **tiny)
    with pytest.raises(AsdflowError, match="n_test_per_domain=1 instead of 2"):
        synth.make_factory(
            tmp_path, machines=("fan",), progress=False, **{**tiny, "n_test_per_domain": 2}
        )
    assert snapshot(tmp_path / "dev_data") == before


def test_synth_never_deletes_what_a_forged_marker_lists(tmp_path, capsys):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    dest = tmp_path / "data"
    argv = ["synth", str(dest), "--machine", "fan", *SIZES]
    assert run(argv, capsys) == (0, "")
    marker = json.loads((dest / synth.MARKER).read_text())
    marker["machines"]["fan"]["files"] += ["../../../victim.txt", "/etc/hostname", "notes.txt"]
    (dest / synth.MARKER).write_text(json.dumps(marker))
    (dest / "dev_data/raw/fan/notes.txt").write_text("mine")
    assert run([*argv, "--overwrite"], capsys) == (0, "")
    assert victim.read_text() == "keep me"
    assert (dest / "dev_data/raw/fan/notes.txt").read_text() == "mine"


def test_synth_refuses_a_folder_where_a_clip_goes(tmp_path, capsys):
    argv = ["synth", str(tmp_path), "--machine", "bearing", *SIZES]
    assert run(argv, capsys) == (0, "")
    clip = sorted((tmp_path / "dev_data/raw/bearing/test").glob("*.wav"))[0]
    clip.unlink()
    clip.mkdir()
    (clip / "mine.txt").write_text("mine")
    code, error = run(argv, capsys)  # the missing clip would be generated again
    assert code == 2 and f"{clip} is a folder where a clip file must be" in error
    assert (clip / "mine.txt").read_text() == "mine"


# ------------------------------------------------------------------ 4. DEST that cannot be used


@pytest.mark.parametrize("command", ["download", "synth"])
@pytest.mark.parametrize("where", ["dest", "parent"])
def test_destination_that_is_a_file(tmp_path, zenodo, capsys, command, where):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("my notes")
    dest = blocker if where == "dest" else blocker / "data"
    extra = ["--machine", "fan"] + (SIZES if command == "synth" else [])
    code, error = run([command, str(dest), *extra], capsys)
    assert code == 2
    assert f"{blocker} is a file, not a folder" in error and str(dest) in error
    assert "choose another path" in error
    assert blocker.read_text() == "my notes"
    assert zenodo.requests == []


@pytest.mark.parametrize("command", ["download", "synth"])
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc")
def test_destination_that_cannot_be_created(tmp_path, zenodo, capsys, command):
    dest = Path("/proc/asdflow-no-such-folder")  # mkdir fails here, even for root
    extra = ["--machine", "fan"] + (SIZES if command == "synth" else [])
    code, error = run([command, str(dest), *extra], capsys)
    assert code == 2 and str(dest) in error and "cannot be created" in error
    assert zenodo.requests == []


@pytest.mark.parametrize("command", ["download", "synth"])
@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root may write anywhere")
def test_destination_that_is_not_writable(tmp_path, zenodo, capsys, command):
    dest = tmp_path / "readonly"
    dest.mkdir()
    dest.chmod(0o500)
    try:
        extra = ["--machine", "fan"] + (SIZES if command == "synth" else [])
        code, error = run([command, str(dest), *extra], capsys)
    finally:
        dest.chmod(0o700)
    assert code == 2 and str(dest) in error
    assert "not writable" in error or "cannot be created" in error
    assert list(dest.iterdir()) == []


# ------------------------------------------------------------------ 5. two writers into one folder


@pytest.mark.parametrize("command", ["download", "synth"])
def test_busy_data_folder_is_refused(tmp_path, zenodo, capsys, command):
    zenodo.publish("dev", "fan")
    extra = ["--machine", "fan"] + (SIZES if command == "synth" else [])
    with files.folder_lock(tmp_path / "dev_data", "data folder"):
        code, error = run([command, str(tmp_path), *extra], capsys)
    assert code == 2
    assert "another asdflow process is writing into the data folder" in error
    assert str(tmp_path / "dev_data") in error
    assert zenodo.requests == []
    assert not (tmp_path / "dev_data/raw").exists() and not (tmp_path / synth.MARKER).exists()
    assert run([command, str(tmp_path), *extra], capsys) == (0, "")  # free again


def test_busy_lock_is_raised_by_the_functions(tmp_path, zenodo):
    with files.folder_lock(tmp_path / "eval_data", "data folder"):
        with pytest.raises(BusyError):
            dl.download(tmp_path, dataset="add", machines="Scanner", progress=False)
        with pytest.raises(BusyError):
            dl.download(tmp_path, dataset="eval", machines="Scanner", progress=False)
    assert zenodo.requests == []


# ------------------------------------------------------------------ 6. leftovers of killed writers


def test_synth_removes_leftovers_of_a_killed_run(tmp_path, capsys):
    train = tmp_path / "dev_data/raw/fan/train"
    train.mkdir(parents=True)
    leftovers = [
        train / f".x.wav.abc{files.TEMP_SUFFIX}",
        train.parent / f".attributes_00.csv.abc{files.TEMP_SUFFIX}",
        tmp_path / f".{synth.MARKER}.abc{files.TEMP_SUFFIX}",
    ]
    for path in leftovers:
        path.write_bytes(b"half a file")
    # a marker of an interrupted run: the folder is synth's own
    (tmp_path / synth.MARKER).write_text(
        json.dumps({"format": 2, "machines": {"fan": {"complete": False, "files": []}}})
    )
    assert run(["synth", str(tmp_path), "--machine", "fan", *SIZES], capsys) == (0, "")
    assert not any(path.exists() for path in leftovers)
    assert not list(tmp_path.rglob(f"*{files.TEMP_SUFFIX}")) and not list(tmp_path.rglob("*.part"))


def test_download_removes_leftovers_of_a_killed_run(tmp_path, zenodo, capsys):
    zenodo.publish("dev", "fan")
    zips = tmp_path / "dev_data/zips"
    staging = zips / ".fan-abc.asdflow-unpack" / "unpacked/fan/train"
    staging.mkdir(parents=True)
    (staging / "a.wav").write_bytes(b"half")
    folder = tmp_path / "dev_data/raw/fan"
    folder.mkdir(parents=True)
    marker_tmp = folder / f"..asdflow-dev.json.abc{files.TEMP_SUFFIX}"
    marker_tmp.write_text("{")
    assert run(["download", str(tmp_path), "--machine", "fan"], capsys) == (0, "")
    assert list(zips.iterdir()) == [] and not marker_tmp.exists()


# ------------------------------------------------------------------ 7. bad arguments


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"seconds": float("nan")}, r"seconds=nan is outside the allowed range \[0.000125, 600\]"),
        ({"seconds": float("inf")}, r"seconds=inf is outside the allowed range"),
        ({"seconds": 1e6}, r"seconds=1000000.0 is outside the allowed range"),
        ({"n_train_source": -1}, r"n_train_source=-1 must be a whole number >= 0"),
        ({"n_test_per_domain": 2.5}, r"n_test_per_domain=2.5 must be a whole number >= 0"),
        ({"seed": "3"}, r"seed='3' must be a whole number >= 0"),
        ({"machines": ("pump",)}, r"machine 'pump' is not one of fan, bearing, valve"),
    ],
)
def test_make_factory_bad_arguments(tmp_path, options, message):
    dest = tmp_path / "data"
    with pytest.raises(ParameterError, match=message):
        synth.make_factory(dest, progress=False, **{"machines": ("fan",), **options})
    assert not dest.exists()


@pytest.mark.parametrize(
    ("machine", "attributes", "message"),
    [
        ("fan", {"rpm": "0"}, r"rpm='0' is not a number in the allowed range \[1, 60000\]"),
        ("bearing", {"load": "-5"}, r"load='-5' is not a number in the allowed range \[0, 500\]"),
        ("bearing", {"vel": "nan"}, r"vel='nan' is not a number"),
    ],
)
def test_generate_clip_numeric_attributes_out_of_range(machine, attributes, message):
    with pytest.raises(ParameterError, match=message):
        synth.generate_clip(machine, attributes=attributes, seconds=0.1, seed=0)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"retries": -1}, r"retries=-1 must be a whole number >= 0"),
        ({"expected_counts": {"train": -2}}, r"expected_counts\['train'\]=-2 must be None or"),
        ({"expected_counts": {}}, r"expected_counts is empty"),
    ],
)
def test_download_bad_arguments(tmp_path, options, message):
    with pytest.raises(ParameterError, match=message):
        dl.download(tmp_path / "data", machines="fan", progress=False, **options)
    assert not (tmp_path / "data").exists()
