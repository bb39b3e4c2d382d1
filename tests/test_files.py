"""Tests of asdflow.files (atomic writes, overwrite rule, locks) and asdflow.tolerance."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest
import torch

from asdflow import files
from asdflow.errors import BusyError, ParameterError, SubmissionError
from asdflow.tolerance import eps, tolerance


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_atomic_write_gives_the_umask_permissions(tmp_path, umask):
    old = os.umask(umask)
    try:
        path = files.atomic_write(tmp_path / "a.txt", "text\n")
        plain = tmp_path / "plain.txt"
        plain.write_text("text\n")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


def test_atomic_write_bytes_text_and_writer(tmp_path):
    assert files.atomic_write(tmp_path / "b", b"\x00\x01").read_bytes() == b"\x00\x01"
    assert files.atomic_write(tmp_path / "t", "é\n").read_bytes() == "é\n".encode()
    files.atomic_write(tmp_path / "w", lambda f: torch.save({"x": torch.ones(2)}, f))
    assert torch.load(tmp_path / "w", weights_only=True)["x"].sum() == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "t", "w"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "keep.txt"
    path.write_text("old\n")

    def half_then_fail(file):
        file.write(b"new but incomplete")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        files.atomic_write(path, half_then_fail)
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_leftovers_of_killed_writers_are_removed(tmp_path):
    left = tmp_path / f".cflow.pt.abc123{files.TEMP_SUFFIX}"
    left.write_bytes(b"x" * 100)
    mine = tmp_path / "notes.tmp"  # not ours: kept
    mine.write_text("user file\n")
    assert files.remove_leftovers(tmp_path, older_than=3600) == []  # too recent
    assert files.remove_leftovers(tmp_path) == [left]
    assert mine.exists() and not left.exists()


def test_writable_folder_refuses_files(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for bad in (blocker, blocker / "below"):
        with pytest.raises(ParameterError, match="is a file, not a folder"):
            files.writable_folder(bad, "run folder")
    assert files.writable_folder(tmp_path / "new" / "deep").is_dir()


def test_refuse_overwrite(tmp_path):
    there = tmp_path / "there.csv"
    there.write_text("x")
    files.refuse_overwrite([tmp_path / "absent"], overwrite=False)
    files.refuse_overwrite([there], overwrite=True)
    with pytest.raises(SubmissionError, match=r"there.csv already exists; nothing was written"):
        files.refuse_overwrite([there], overwrite=False, error=SubmissionError)


def test_folder_lock_excludes_a_second_writer_and_is_released(tmp_path):
    with files.folder_lock(tmp_path, "cache"):
        with pytest.raises(BusyError, match=f"writing into the cache {tmp_path}"):
            with files.folder_lock(tmp_path, "cache"):
                pass
    with files.folder_lock(tmp_path, "cache"):  # free again
        pass


@pytest.mark.parametrize(
    ("dtype", "expected"),
    [
        (np.float32, 2.0**-23),
        (np.float64, 2.0**-52),
        ("float32", 2.0**-23),
        (torch.float32, 2.0**-23),
        (torch.float16, 2.0**-10),
        (torch.bfloat16, 2.0**-7),
        (np.zeros(2, dtype=np.float16), 2.0**-10),
        (torch.zeros(2, dtype=torch.float64), 2.0**-52),
    ],
)
def test_eps_of_every_float_type(dtype, expected):
    assert eps(dtype) == expected


def test_tolerance_scales_with_magnitude_and_terms():
    base = tolerance(np.float32)
    assert base == pytest.approx(8 * 2.0**-23)
    assert tolerance(np.float32, 100.0) == pytest.approx(100 * base)
    assert tolerance(np.float32, 1.0, terms=50) == pytest.approx(50 * base)
    assert tolerance(np.float32, 0.0) > 0  # never a zero tolerance


def test_tolerance_covers_reordered_float32_sums():
    rng = np.random.default_rng(0)
    x = rng.normal(size=4096).astype(np.float32)
    forward = np.float32(0)
    for v in x:
        forward += v
    pairwise = x.sum(dtype=np.float32)
    exact = x.astype(np.float64).sum()
    bound = tolerance(np.float32, np.abs(x).max(), terms=x.size)
    assert abs(float(forward) - exact) <= bound
    assert abs(float(pairwise) - exact) <= bound


def test_short_path_abbreviates_the_cache_and_home_folders(tmp_path, monkeypatch):
    from asdflow.files import short_path

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ASDFLOW_CACHE", str(tmp_path / "cache"))
    assert short_path(tmp_path / "cache" / "runs" / "quick") == "$ASDFLOW_CACHE/runs/quick"
    assert short_path(tmp_path / "cache") == "$ASDFLOW_CACHE"
    assert short_path(tmp_path / "cache-other") == str(tmp_path / "cache-other")
    assert short_path(tmp_path / "home" / "data") == "~/data"
    monkeypatch.delenv("ASDFLOW_CACHE")
    assert short_path(tmp_path / "home" / ".cache" / "asdflow" / "x") == "~/.cache/asdflow/x"
    assert short_path(tmp_path / "elsewhere") == str(tmp_path / "elsewhere")
