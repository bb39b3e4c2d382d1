"""Quick mode and full mode: one code path, two sizes.

Every chapter of the book and ``asdflow demo`` start by calling
:func:`detect_mode`. It answers one question, *what can this machine do?*:

- **full**: a CUDA GPU is present and quick mode was not asked for. Chapters
  use the real DCASE 2024 Task 2 development set (downloaded on first use into
  :func:`data_dir`), the ImageNet WideResNet-50-2 encoder and full training.
- **quick**: ``ASDFLOW_QUICK=1`` is set, or there is no GPU, or the real data
  cannot be had. Chapters use the synthetic factory of :mod:`asdflow.synth`,
  short clips, a small random-weight ResNet-18 encoder and a few epochs, so
  that every chapter runs on a laptop CPU in about a minute. CI runs the
  book in this mode.

Results of either mode are cached in :func:`cache_dir` so that one chapter
reuses what an earlier one computed (features, trained detectors).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from asdflow import download, synth
from asdflow.errors import AsdflowError, ParameterError

# Where asdflow keeps its files is defined in asdflow.files (features need it too) and
# re-exported here, where the chapters look for it.
from asdflow.files import CACHE_ENV as CACHE_ENV
from asdflow.files import DATA_ENV as DATA_ENV
from asdflow.files import cache_dir as cache_dir
from asdflow.files import data_dir as data_dir

QUICK_ENV = "ASDFLOW_QUICK"


def _quick_requested() -> bool:
    return os.environ.get(QUICK_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def _cuda_available() -> bool:
    # deferred: torch takes seconds to import; this module serves commands that do not need it
    import torch

    return torch.cuda.is_available()


@dataclass(frozen=True)
class Mode:
    """What a chapter runs on.

    Attributes
    ----------
    name : str
        ``"quick"`` or ``"full"``.
    reason : str
        Why this mode was chosen, in words, printed by the chapters.
    device : str
        ``"cuda"`` or ``"cpu"``.
    """

    name: str
    reason: str
    device: str

    @property
    def quick(self) -> bool:
        """True in quick mode."""
        return self.name == "quick"

    def __str__(self) -> str:
        return f"{self.name} mode on {self.device}: {self.reason}"


def detect_mode() -> Mode:
    """Choose quick or full mode for this machine.

    Quick mode when ``ASDFLOW_QUICK=1`` is set or no CUDA GPU is found; full
    mode otherwise. Quick mode also sets torch to one CPU thread. A full-mode
    run that then finds no DCASE data and cannot download it falls back with
    :func:`quick_fallback`.

    Returns
    -------
    Mode
    """
    if _quick_requested():
        return _quick(f"{QUICK_ENV}=1 is set")
    if not _cuda_available():
        return _quick("no CUDA GPU was found")
    return Mode("full", "a CUDA GPU is present", "cuda")


def _quick(reason: str) -> Mode:
    # Quick-mode networks are small: one torch thread runs them as fast as two
    # on an idle 2-core machine and avoids the oversubscription that made them
    # ten times slower on a busy one (the results are the same).
    # deferred: torch takes seconds to import; this module serves commands that do not need it
    import torch

    torch.set_num_threads(1)
    return Mode("quick", reason, "cpu")


def quick_fallback(reason: str) -> Mode:
    """The quick mode chosen after full mode turned out impossible (e.g. no data)."""
    return _quick(reason)


FULL_MACHINES = ("bearing", "fan", "valve")
"""Development machine types the chapters use in full mode (the synthetic factory has the same names)."""


def quick_data_root(*, seed: int = 0, progress: bool = False) -> Path:
    """The quick-mode data root: the synthetic factory, generated once into the cache.

    Parameters
    ----------
    seed : int
        Seed of the factory, a non-negative integer.
    progress : bool
        Show progress bars while generating.

    Returns
    -------
    Path
        A root holding ``dev_data/raw/<machine>/{train,test}`` as in DCASE,
        built by :func:`asdflow.synth.make_factory` with
        :data:`asdflow.synth.QUICK_FACTORY` sizes. A second call finds the
        complete factory and returns at once.

    Raises
    ------
    ParameterError
        When ``seed`` is not a non-negative integer.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ParameterError(f"seed={seed!r} is not a seed: use an integer of 0 or more")

    root = cache_dir() / f"synth-quick-seed{seed}"
    return synth.make_factory(root, **synth.QUICK_FACTORY, seed=seed, progress=progress)


def prepare_data(mode: Mode, *, machines: tuple[str, ...] = FULL_MACHINES) -> tuple[Mode, Path]:
    """Data root for ``mode``, downloading the DCASE development data in full mode.

    Parameters
    ----------
    mode : Mode
        From :func:`detect_mode`.
    machines : tuple of str
        Development machine types needed in full mode.

    Returns
    -------
    mode : Mode
        ``mode`` itself, or quick mode when the real data could not be had
        (the reason says why).
    root : Path
        The data root to pass to :func:`asdflow.data.scan`.
    """
    if mode.quick:
        return mode, quick_data_root()

    root = data_dir()
    try:
        download.download(root, dataset="dev", machines=list(machines))
    except AsdflowError as err:
        fallback = quick_fallback(f"the DCASE data could not be had ({err})")
        return fallback, quick_data_root()
    return mode, root
