"""Shared fixtures of the asdflow tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="session")
def factory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Data root of the quick synthetic factory (``QUICK_FACTORY`` sizes, seed 0), built once."""
    from asdflow import synth

    root = tmp_path_factory.mktemp("factory")
    return synth.make_factory(root, seed=0, progress=False, **synth.QUICK_FACTORY)


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory: pytest.TempPathFactory):
    """One feature cache for the run and experiment tests, and one torch thread (tiny networks)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ASDFLOW_CACHE", str(tmp_path_factory.getbasetemp() / "asdflow-cache"))
        yield
    torch.set_num_threads(threads)
