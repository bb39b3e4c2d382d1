"""Quick and full mode: how chapters and the demo decide what this machine can do."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from asdflow import data, download, modes, synth
from asdflow.errors import DownloadError, ParameterError

TINY = {"n_train_source": 2, "n_train_target": 1, "n_test_per_domain": 1, "seconds": 0.25}


@pytest.fixture(autouse=True)
def _keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_quick_when_asked(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(modes.QUICK_ENV, "1")
    monkeypatch.setattr(modes, "_cuda_available", lambda: True)
    mode = modes.detect_mode()
    assert mode.quick and mode.device == "cpu"
    assert "ASDFLOW_QUICK=1" in str(mode)
    assert torch.get_num_threads() == 1


def test_quick_without_gpu_and_full_with_one(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv(modes.QUICK_ENV, raising=False)
    monkeypatch.setattr(modes, "_cuda_available", lambda: False)
    assert modes.detect_mode().reason == "no CUDA GPU was found"
    monkeypatch.setattr(modes, "_cuda_available", lambda: True)
    mode = modes.detect_mode()
    assert (mode.name, mode.device, mode.quick) == ("full", "cuda", False)


@pytest.mark.parametrize("value", ["0", "", "no"])
def test_quick_env_other_values_do_not_force_quick(monkeypatch: pytest.MonkeyPatch, value: str):
    monkeypatch.setenv(modes.QUICK_ENV, value)
    monkeypatch.setattr(modes, "_cuda_available", lambda: True)
    assert modes.detect_mode().name == "full"


def test_cache_and_data_dirs_follow_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    monkeypatch.setenv(modes.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(modes.DATA_ENV, str(tmp_path / "data"))
    assert modes.cache_dir() == tmp_path / "cache" and (tmp_path / "cache").is_dir()
    assert modes.data_dir() == tmp_path / "data"


def test_quick_data_is_the_cached_factory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv(modes.CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(synth, "QUICK_FACTORY", {**synth.QUICK_FACTORY, **TINY})
    mode, root = modes.prepare_data(modes.Mode("quick", "test", "cpu"))
    assert mode.quick and root.is_relative_to(tmp_path)
    clips = data.scan(root)
    assert len(clips) == len(synth.QUICK_FACTORY["machines"]) * (2 + 1 + 4)
    marker = root / synth.MARKER
    before = marker.stat().st_mtime_ns
    assert modes.prepare_data(modes.Mode("quick", "test", "cpu"))[1] == root
    assert marker.stat().st_mtime_ns == before, "a second call must reuse the factory"


def test_full_mode_falls_back_to_quick_when_data_cannot_be_had(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    monkeypatch.setenv(modes.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(modes.DATA_ENV, str(tmp_path / "data"))
    monkeypatch.setattr(synth, "QUICK_FACTORY", {**synth.QUICK_FACTORY, **TINY})

    def refuse(*args, **kwargs):
        raise DownloadError("https://zenodo.example/dev_fan.zip could not be reached")

    monkeypatch.setattr(download, "download", refuse)
    mode, root = modes.prepare_data(modes.Mode("full", "test", "cuda"))
    assert mode.quick
    assert "could not be reached" in mode.reason
    assert data.machines(root) == sorted(synth.QUICK_FACTORY["machines"])


def test_full_mode_uses_the_book_budget(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.delenv(modes.QUICK_ENV, raising=False)
    monkeypatch.delenv(modes.MACHINES_ENV, raising=False)
    monkeypatch.setattr(modes, "_cuda_available", lambda: True)
    full = modes.detect_mode()
    assert full.machines == modes.BOOK_MACHINES
    assert full.epochs_of("cflow") == dict(modes.BOOK_EPOCHS)["cflow"]
    assert full.epochs_of("knn") is None
    quick = modes.Mode("quick", "test", "cpu")
    assert quick.machines == modes.QUICK_MACHINES and quick.epochs_of("cflow") is None

    wanted = []
    monkeypatch.setattr(download, "download", lambda root, **kw: wanted.append(kw["machines"]))
    monkeypatch.setenv(modes.DATA_ENV, str(tmp_path))
    modes.prepare_data(full)
    assert wanted == [list(modes.BOOK_MACHINES)], (
        "full mode downloads the book's machine types only"
    )


def test_machines_from_the_environment(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(modes.MACHINES_ENV, " bearing, valve ")
    assert modes.book_machines() == ("bearing", "valve")
    monkeypatch.setenv(modes.MACHINES_ENV, "bearing,toaster")
    with pytest.raises(ParameterError, match="toaster.*choose from"):
        modes.book_machines()


def test_keep_on_drive_moves_the_cache_and_optionally_the_data(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    monkeypatch.delenv(modes.CACHE_ENV, raising=False)
    monkeypatch.delenv(modes.DATA_ENV, raising=False)
    mounted = []
    folders = modes.keep_on_drive(tmp_path / "drive", mount=lambda: mounted.append(True))
    assert mounted == [True]
    assert folders == {modes.CACHE_ENV: str(tmp_path / "drive" / "cache")}
    assert modes.cache_dir() == tmp_path / "drive" / "cache"
    assert modes.DATA_ENV not in os.environ
    modes.keep_on_drive(tmp_path / "drive", data=True, mount=lambda: None)
    assert modes.data_dir() == tmp_path / "drive" / "data" and modes.data_dir().is_dir()


def test_quick_mode_keeps_the_named_synthetic_machines(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(modes.QUICK_ENV, "1")
    monkeypatch.setenv(modes.MACHINES_ENV, "fan")
    assert modes.detect_mode().machines == ("fan",)
    monkeypatch.setenv(modes.MACHINES_ENV, "gearbox,slider")
    assert modes.detect_mode().machines == modes.QUICK_MACHINES


def test_keep_on_drive_says_what_to_do_outside_colab_or_on_a_bad_folder(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    monkeypatch.setenv(modes.CACHE_ENV, str(tmp_path / "before"))
    with pytest.raises(ParameterError, match="Colab only.*ASDFLOW_CACHE"):
        modes.keep_on_drive(tmp_path / "drive")
    (tmp_path / "a-file").write_text("not a folder")
    with pytest.raises(ParameterError, match="a-file is a file"):
        modes.keep_on_drive(tmp_path / "a-file", mount=lambda: None)
    assert os.environ[modes.CACHE_ENV] == str(tmp_path / "before"), "nothing changes on failure"
    assert (tmp_path / "a-file").read_text() == "not a folder"
