"""Safe file writing: atomic writes, one overwrite rule, folder locks.

Every file asdflow writes (detectors, checkpoints, run records, DCASE files,
result tables, cached feature images, generated audio, download markers)
goes through :func:`atomic_write`: the bytes go to a temporary file in the
same folder, are flushed to disk (``fsync``), get the permissions a plain
``open`` would give them under the current umask, and are renamed over the
target in one step. A crash or an interrupt leaves the old file or the new
one, never half of one. A temporary file left by a killed process
(``SIGKILL``, power loss) is named ``.<name>.<random>.asdflow-tmp`` and is
removed by :func:`remove_leftovers` the next time asdflow writes into that
folder.

:func:`refuse_overwrite` is the one "already exists, pass --overwrite"
check, and :func:`folder_lock` keeps two asdflow processes from writing into
the same run, cache or data folder at once. :func:`cache_dir` and
:func:`data_dir` say where asdflow keeps its caches and the DCASE data.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO

from filelock import FileLock, Timeout

from asdflow.errors import AsdflowError, BusyError, ParameterError

__all__ = [
    "CACHE_ENV",
    "DATA_ENV",
    "LOCK_FILE",
    "TEMP_SUFFIX",
    "atomic_write",
    "cache_dir",
    "data_dir",
    "folder_lock",
    "refuse_overwrite",
    "remove_leftovers",
    "writable_folder",
]

TEMP_SUFFIX = ".asdflow-tmp"
"""Suffix of the temporary files of :func:`atomic_write`."""

LOCK_FILE = ".asdflow.lock"
"""Name of the lock file :func:`folder_lock` keeps in a locked folder."""


CACHE_ENV = "ASDFLOW_CACHE"
"""Environment variable that moves the cache folder."""

DATA_ENV = "ASDFLOW_DATA"
"""Environment variable that moves the DCASE data folder."""


def _default_cache() -> Path:
    """The cache folder when ASDFLOW_CACHE is not set."""
    return Path.home() / ".cache" / "asdflow"


def cache_dir() -> Path:
    """Folder of asdflow's caches: ``$ASDFLOW_CACHE`` or ``~/.cache/asdflow``.

    Returns
    -------
    Path
        An existing folder (created if needed). It may be read-only: a
        read-only feature cache still serves the entries it holds (see
        :func:`asdflow.features.extract`).

    Raises
    ------
    ParameterError
        When the folder is a file, lies under a file, or cannot be created;
        the message names ``ASDFLOW_CACHE`` and the path.
    """
    value = os.environ.get(CACHE_ENV)
    path = Path(value) if value else _default_cache()
    where = (
        f"{CACHE_ENV}={path}" if value else f"the cache folder {path} (set {CACHE_ENV} to move it)"
    )
    fix = f"set {CACHE_ENV} to a folder you can write to"
    try:
        for parent in (path, *path.parents):
            if parent.exists() and not parent.is_dir():
                what = "is a file" if parent == path else f"lies under {parent}, which is a file"
                raise ParameterError(f"{where} cannot be used: it {what}, not a folder; {fix}")
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        reason = "permission denied" if isinstance(err, PermissionError) else err.strerror or err
        raise ParameterError(f"{where} cannot be created ({reason}); {fix}") from err
    return path


def short_path(path: str | os.PathLike[str]) -> str:
    """A path as notes and tables show it: the cache folder and the home folder abbreviated.

    A path under :func:`cache_dir` starts with ``$ASDFLOW_CACHE`` (or
    ``~/.cache/asdflow`` when the variable is not set), one under the home
    folder with ``~``; others are shown whole. Both forms still work in a
    shell, and output saved in a notebook does not show the folders of the
    machine that ran it.

    Examples
    --------
    >>> short_path(Path.home() / "data" / "fan")
    '~/data/fan'
    """
    path = Path(path).absolute()
    value = os.environ.get(CACHE_ENV)
    cache = Path(value).absolute() if value else _default_cache()
    for base, name in (
        (cache, f"${CACHE_ENV}" if value else "~/.cache/asdflow"),
        (Path.home(), "~"),
    ):
        if path == base or base in path.parents:
            return str(Path(name, path.relative_to(base)))
    return str(path)


def data_dir() -> Path:
    """Root of the real DCASE data: ``$ASDFLOW_DATA`` or ``~/asdflow-data``.

    The development set lives under ``<root>/dev_data/raw/<machine>/``.
    """
    return Path(os.environ.get(DATA_ENV) or Path.home() / "asdflow-data")


def _umask() -> int:
    """The process's umask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def writable_folder(folder: str | os.PathLike[str], what: str = "folder") -> Path:
    """Create ``folder`` (and its parents) if needed and check that files can be written in it.

    Parameters
    ----------
    folder : path
    what : str
        What the folder is for, for messages (``"run folder"``, ``"cache"``).

    Returns
    -------
    Path

    Raises
    ------
    ParameterError
        When ``folder`` is a file, lies under a file, or cannot be created or
        written to; the message names the path and what to do.
    """
    folder = Path(folder)
    for parent in (folder, *folder.parents):
        if parent.exists() and not parent.is_dir():
            raise ParameterError(
                f"{what} {folder} cannot be used: {parent} is a file, not a folder; "
                "choose another path"
            )
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ParameterError(
            f"{what} {folder} cannot be created ({err.strerror or err}); choose a path you can "
            "write to"
        ) from err
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ParameterError(
            f"{what} {folder} is not writable (permission denied); choose a folder you can "
            "write to, or change its permissions"
        )
    return folder


def atomic_write(
    path: str | os.PathLike[str],
    content: bytes | str | Callable[[IO[bytes]], object],
) -> Path:
    """Write ``content`` to ``path`` in one step: temporary file, fsync, rename.

    Parameters
    ----------
    path : path
        The file to write; its folder is created if needed.
    content : bytes, str or callable
        The bytes, a text (written as UTF-8 with ``\\n`` line ends), or a
        function that writes into the binary file object it is given (e.g.
        ``lambda f: torch.save(state, f)``).

    Returns
    -------
    Path
        ``path``.

    Notes
    -----
    The new file gets mode ``0o666 & ~umask``, as ``open(path, "w")`` would
    give it (``tempfile.mkstemp`` alone makes it ``0o600``). The temporary
    file is removed when writing fails or is interrupted.
    """
    path = Path(path)
    folder = writable_folder(path.parent)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=folder)
    try:
        with os.fdopen(handle, "wb") as file:
            if callable(content):
                content(file)
            else:
                file.write(content.encode("utf-8") if isinstance(content, str) else content)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def remove_leftovers(folder: str | os.PathLike[str], *, older_than: float = 0.0) -> list[Path]:
    """Delete the temporary files a killed :func:`atomic_write` left in ``folder``.

    Parameters
    ----------
    folder : path
    older_than : float
        Only files last modified at least this many seconds ago (use a
        positive value where other processes may be writing at the same time
        without a lock, e.g. the shared feature cache).

    Returns
    -------
    list of Path
        The files removed.
    """
    folder = Path(folder)
    removed = []
    now = time.time()
    with contextlib.suppress(OSError):
        for entry in folder.glob(f".*{TEMP_SUFFIX}"):
            with contextlib.suppress(OSError):
                if now - entry.stat().st_mtime >= older_than and entry.is_file():
                    entry.unlink()
                    removed.append(entry)
    return removed


def refuse_overwrite(
    paths: Iterable[str | os.PathLike[str]],
    *,
    overwrite: bool,
    error: type[AsdflowError] = AsdflowError,
    hint: str = "",
) -> None:
    """Raise ``error`` when any of ``paths`` exists and ``overwrite`` is False.

    The message lists the existing files, says that nothing was changed and
    how to replace them (``--overwrite``), followed by ``hint`` when given.
    """
    if overwrite:
        return
    existing = [str(p) for p in paths if Path(p).exists()]
    if existing:
        what = existing[0] if len(existing) == 1 else ", ".join(existing)
        verb = "exists" if len(existing) == 1 else "exist"
        raise error(
            f"{what} already {verb}; nothing was written. Pass --overwrite (overwrite=True) to "
            f"replace {'it' if len(existing) == 1 else 'them'}" + (f", {hint}" if hint else "")
        )


@contextlib.contextmanager
def folder_lock(
    folder: str | os.PathLike[str], what: str = "folder", *, wait: float = 0.0
) -> Iterator[Path]:
    """Hold an exclusive lock on ``folder`` while the ``with`` block runs.

    The lock is the file :data:`LOCK_FILE` in the folder, locked with the
    operating system's advisory file lock (the ``filelock`` library), so it is
    released when the process ends, however it ends. Leftover temporary files
    of killed writers are removed once the lock is held.

    Parameters
    ----------
    folder : path
        Created if needed.
    what : str
        What the folder is, for the message (``"run folder"``).
    wait : float
        Seconds to wait for another process to finish; 0 fails at once.

    Raises
    ------
    BusyError
        When another process holds the lock after ``wait`` seconds.
    ParameterError
        When the folder cannot be created or written to.
    """
    folder = writable_folder(folder, what)
    lock = FileLock(str(folder / LOCK_FILE), timeout=wait)
    try:
        lock.acquire()
    except Timeout as err:
        raise BusyError(
            f"another asdflow process is writing into the {what} {folder}; wait until it has "
            "finished, or choose another folder"
        ) from err
    try:
        remove_leftovers(folder)
        yield folder
    finally:
        lock.release()
