"""Quick mode and full mode: one code path, two sizes.

Every chapter of the book and ``asdflow demo`` start by calling
:func:`detect_mode`. It answers one question, *what can this machine do?*:

- **full**: a CUDA GPU is present and quick mode was not asked for. Chapters
  use the real DCASE 2024 Task 2 development set of :func:`book_machines`
  (downloaded on first use into :func:`data_dir`) and the ImageNet
  WideResNet-50-2 encoder, trained for :data:`BOOK_EPOCHS`: a budget that
  keeps each chapter within about 20 minutes on a free Colab GPU
  (:mod:`asdflow.budget`). ``asdflow reproduce`` runs the report's settings.
- **quick**: ``ASDFLOW_QUICK=1`` is set, or there is no GPU, or the real data
  cannot be had. Chapters use the synthetic factory of :mod:`asdflow.synth`,
  short clips, a small random-weight ResNet-18 encoder and a few epochs, so
  that every chapter runs on a laptop CPU in about a minute. CI runs the
  book in this mode.

Results of either mode are cached in :func:`cache_dir` so that one chapter
reuses what an earlier one computed (features, trained detectors).
In Colab, :func:`keep_on_drive` puts that cache on Google Drive, where the
chapters' separate sessions all find it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
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
from asdflow.files import writable_folder

QUICK_ENV = "ASDFLOW_QUICK"
MACHINES_ENV = "ASDFLOW_MACHINES"

QUICK_MACHINES: tuple[str, ...] = tuple(sorted(synth.MACHINES))
"""Machine types of quick mode: the synthetic factory's, named after three DCASE development machine types."""

BOOK_MACHINES = ("fan",)
"""DCASE development machine types a chapter uses in full mode, unless ``ASDFLOW_MACHINES`` names others.

One machine type keeps every chapter within about 20 minutes on a free Colab GPU
(:mod:`asdflow.budget`). ``fan`` is the machine type of the report's Table 1 whose
target-domain AUC falls furthest below the source domain's (chapter 7's subject);
``asdflow reproduce`` runs all seven.
"""

BOOK_EPOCHS = (("cflow", 6), ("ae", 20))
"""Training epochs of the chapters' detectors in full mode, per model (others: their configuration's).

The report's CFlow settings (:class:`asdflow.cflow.CFlowConfig`, 25 passes over
the fibers) and the DCASE baseline's 100 epochs take several times longer; they
are what ``asdflow reproduce`` runs.
:func:`asdflow.budget.chapter_budget` estimates what these settings cost per chapter.
"""


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
    machines : tuple of str
        The machine types the chapters use: the synthetic factory's three in
        quick mode, :func:`book_machines` in full mode.
    epochs : tuple of (str, int)
        Training epochs per model where the mode shortens the configuration's
        (full mode: :data:`BOOK_EPOCHS`; see :meth:`epochs_of`).
    """

    name: str
    reason: str
    device: str
    machines: tuple[str, ...] = QUICK_MACHINES
    epochs: tuple[tuple[str, int], ...] = ()

    def epochs_of(self, model: str) -> int | None:
        """Training epochs of ``model`` in this mode (None: its configuration's own)."""
        return dict(self.epochs).get(model)

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
    return Mode("full", "a CUDA GPU is present", "cuda", book_machines(), BOOK_EPOCHS)


def book_machines() -> tuple[str, ...]:
    """The development machine types of full mode: ``ASDFLOW_MACHINES`` (comma-separated) or :data:`BOOK_MACHINES`.

    Raises
    ------
    ParameterError
        When ``ASDFLOW_MACHINES`` names a machine type that is not in the development set.
    """
    text = os.environ.get(MACHINES_ENV, "").strip()
    if not text:
        return BOOK_MACHINES
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    known = download.MACHINES["dev"]
    unknown = [name for name in names if name not in known]
    if unknown or not names:
        raise ParameterError(
            f"{MACHINES_ENV}={text!r} must name development machine types, comma-separated; "
            f"choose from {', '.join(known)}"
        )
    return names


def _quick(reason: str) -> Mode:
    # Quick-mode networks are small: one torch thread runs them as fast as two
    # on an idle 2-core machine and avoids the oversubscription that made them
    # ten times slower on a busy one (the results are the same).
    # deferred: torch takes seconds to import; this module serves commands that do not need it
    import torch

    torch.set_num_threads(1)
    return Mode("quick", reason, "cpu", quick_machines())


def quick_machines() -> tuple[str, ...]:
    """The synthetic machine types of quick mode: those named by ``ASDFLOW_MACHINES``, else all three.

    Development machine types the synthetic factory does not have are left
    out; when none is left, quick mode uses all of :data:`QUICK_MACHINES`. (Running a chapter with
    ``ASDFLOW_QUICK=1 ASDFLOW_MACHINES=fan`` tries, on a CPU, the one machine
    type of the book's full mode.)
    """
    if not os.environ.get(MACHINES_ENV, "").strip():
        return QUICK_MACHINES
    chosen = tuple(m for m in book_machines() if m in QUICK_MACHINES)
    return chosen or QUICK_MACHINES


DRIVE_MOUNT = "/content/drive"
DRIVE_FOLDER = "/content/drive/MyDrive/asdflow"
"""Where :func:`keep_on_drive` keeps asdflow's files on Google Drive by default."""


def keep_on_drive(
    folder: str | os.PathLike[str] = DRIVE_FOLDER,
    *,
    data: bool = False,
    mount: Callable[[], object] | None = None,
) -> dict[str, str]:
    """In Google Colab: mount Google Drive and keep asdflow's cache (and optionally the data) there.

    Each Colab notebook runs on a machine of its own, which forgets everything
    when the session ends. With the cache on Drive, the feature images and the
    trained detectors of one chapter serve the next chapters and survive a
    disconnect (an interrupted CFlow training resumes from its checkpoint).
    The DCASE clips stay on the session's own disk by default: downloading
    them again takes about a minute, while reading a thousand files from Drive
    is slower than that.

    Parameters
    ----------
    folder : path
        Folder on the mounted Drive; ``cache/`` (and ``data/``) go under it.
    data : bool
        Keep the DCASE data on Drive too (``ASDFLOW_DATA``).
    mount : callable or None
        Mounts the Drive (None: ``google.colab.drive.mount`` at :data:`DRIVE_MOUNT`).

    Returns
    -------
    dict
        The environment variables set (``ASDFLOW_CACHE``, and ``ASDFLOW_DATA`` with ``data``).

    Raises
    ------
    ParameterError
        Outside Colab without ``mount``, or when a folder cannot be created or written.
    """
    if mount is None:
        try:
            # deferred: exists in Colab only
            from google.colab import drive  # type: ignore[import-not-found]
        except ImportError as err:
            raise ParameterError(
                "keep_on_drive mounts Google Drive in Colab only; elsewhere set "
                f"{CACHE_ENV} to a folder instead"
            ) from err

        def mount() -> None:
            drive.mount(DRIVE_MOUNT)

    mount()
    folders = {CACHE_ENV: Path(folder) / "cache"}
    if data:
        folders[DATA_ENV] = Path(folder) / "data"
    for name, path in folders.items():
        writable_folder(path, f"the {name} folder on Drive")
    os.environ.update({name: str(path) for name, path in folders.items()})
    return {name: str(path) for name, path in folders.items()}


def quick_fallback(reason: str) -> Mode:
    """The quick mode chosen after full mode turned out impossible (e.g. no data)."""
    return _quick(reason)


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


def prepare_data(mode: Mode, *, machines: tuple[str, ...] | None = None) -> tuple[Mode, Path]:
    """Data root for ``mode``, downloading the DCASE development data in full mode.

    Parameters
    ----------
    mode : Mode
        From :func:`detect_mode`.
    machines : tuple of str or None
        Development machine types needed in full mode (None: ``mode.machines``).

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
        download.download(root, dataset="dev", machines=list(machines or mode.machines))
    except AsdflowError as err:
        fallback = quick_fallback(f"the DCASE data could not be had ({err})")
        return fallback, quick_data_root()
    return mode, root
