"""Shared fixtures of the asdflow tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def factory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Data root of the quick synthetic factory (``QUICK_FACTORY`` sizes, seed 0), built once."""
    from asdflow import synth

    root = tmp_path_factory.mktemp("factory")
    return synth.make_factory(root, seed=0, progress=False, **synth.QUICK_FACTORY)
