"""Download the DCASE 2024 Task 2 data from Zenodo and unpack it in the DCASE layout.

The data come as one zip per machine type, in three Zenodo records:

=====  ===============  ====================================  ===================================
set    Zenodo record    zip                                   unpacked into
=====  ===============  ====================================  ===================================
dev    10902294         ``dev_<machine>.zip``                 ``dev_data/raw/<machine>/{train,test}``
add    11259435         ``eval_data_<machine>_train.zip``     ``eval_data/raw/<machine>/train``
eval   11363076         ``eval_data_<machine>_test.zip``      ``eval_data/raw/<machine>/test``
=====  ===============  ====================================  ===================================

The additional training set (``add``) replaced two zips after its first
release: 3DPrinter and RoboticArm are ``eval_data_<machine>_train_r2.zip``.
Each zip holds one top-level folder named after the machine type
(``fan/train/...``, ``fan/test/...``, ``fan/attributes_00.csv``): the DCASE
baseline's download scripts simply run ``unzip`` inside ``raw/``. This module
does not rely on that: it finds the folder that holds ``train/`` and ``test/``
inside the zip and moves its content to ``raw/<machine>/``.

Zenodo publishes the size and the MD5 of every file in the metadata of its
record (:func:`record_url`, read by :func:`record_files`); a download is checked
against them and, in any case, by what it holds. A run locks
``<DEST>/<dev_data|eval_data>`` (a second download into the same folder fails
at once with :class:`~asdflow.errors.BusyError`), then goes through these steps
for each machine; a failure at any of them leaves nothing that looks complete
and deletes no file the download did not write:

1. skip the machine when its marker file (``raw/<machine>/.asdflow-<set>.json``,
   written last) is present and every ``.wav`` file it lists is still on disk;
2. read the record's metadata (once per run, only when a zip is needed; when
   it cannot be read, a warning says so and the zips are checked by their
   content only), then download the zip to
   ``<DEST>/<dev_data|eval_data>/zips/<zip>.part`` (with its size on the status
   line, a progress bar and bounded retries on network errors), then check it:
   the published size and MD5, a readable zip, every member's CRC
   (:meth:`zipfile.ZipFile.testzip`), no member escaping the destination, no
   member name given twice, the expected folder layout and ``.wav`` counts
   (:data:`EXPECTED_COUNTS`); only then is it renamed to ``<zip>``. A zip
   failing a check is deleted, so the next run downloads it again;
3. unpack into a temporary folder next to the zip and check the unpacked
   files; then move them into ``raw/<machine>/`` one by one, replacing only
   the files of the same name. Other files in the machine folder (notes,
   extra recordings) stay where they are; when one of them is in the way (a
   file where the zip has a folder, or the reverse) the run stops before
   moving anything and names it. The marker, listing the unpacked ``.wav``
   files, is written last;
4. delete the zip, unless ``keep_zip=True``: a kept zip is reused (checked
   again, MD5 included when the metadata can be read, not downloaded) when the
   machine folder has to be rebuilt; one failing a check is downloaded anew.

The base URL can point elsewhere (a mirror, a local test server): pass
``base_url`` or set the environment variable ``ASDFLOW_ZENODO_URL``; a file's
URL is ``<base>/<record>/files/<zip>``. The record's metadata is read from
``<site>/api/records/<record>``, where ``<site>`` is the base without a final
``/records`` (``https://zenodo.org`` for the default base).

If the network is in the way, download the zips by hand from
``https://zenodo.org/records/<record>`` (the page lists each file's MD5, to
compare with ``md5sum``) and unzip each inside
``<DEST>/dev_data/raw/`` (or ``eval_data/raw/``): the rest of asdflow reads the
layout, not the marker files.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import shutil
import stat
import sys
import tempfile
import time
import warnings
import zipfile
import zlib
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath, PureWindowsPath

import pooch
import requests
from tqdm.auto import tqdm

from asdflow.errors import DownloadError, ParameterError
from asdflow.files import atomic_write, folder_lock, remove_leftovers, writable_folder

ZENODO_URL = "https://zenodo.org/records"
"""Default base URL; a zip's URL is ``<base>/<record>/files/<zip name>``."""

URL_ENV = "ASDFLOW_ZENODO_URL"
"""Environment variable that replaces :data:`ZENODO_URL` when set."""

DATASETS = ("dev", "add", "eval")
"""The three sets: development, additional training, evaluation test."""

DEV_MACHINES = ("bearing", "fan", "gearbox", "slider", "ToyCar", "ToyTrain", "valve")
"""Machine types of the development set."""

EVAL_MACHINES = (
    "3DPrinter",
    "AirCompressor",
    "Scanner",
    "ToyCircuit",
    "HoveringDrone",
    "HairDryer",
    "ToothBrush",
    "RoboticArm",
    "BrushlessMotor",
)
"""Machine types of the additional training set and of the evaluation test set."""

MACHINES: dict[str, tuple[str, ...]] = {
    "dev": DEV_MACHINES,
    "add": EVAL_MACHINES,
    "eval": EVAL_MACHINES,
}
"""Machine types of each set."""

RECORDS = {"dev": "10902294", "add": "11259435", "eval": "11363076"}
"""Zenodo record of each set."""

DATA_FOLDERS = {"dev": "dev_data", "add": "eval_data", "eval": "eval_data"}
"""Folder under the data root that each set unpacks into (``<folder>/raw/<machine>``)."""

REVISED_ZIPS = {"add": frozenset({"3DPrinter", "RoboticArm"})}
"""Zips re-released with an ``_r2`` suffix, per set."""

EXPECTED_COUNTS: dict[str, dict[str, int | None]] = {
    "dev": {"train": 1000, "test": 200},
    "add": {"train": 1000},
    "eval": {"test": 200},
}
"""Number of ``.wav`` files per split folder in each set's zip, for every machine.

Development and additional training: 990 source + 10 target normal training
clips; development test: 50 normal + 50 anomalous per domain; evaluation test:
200 unlabelled clips. ``None`` means "unknown, but at least one". Pass
``expected_counts`` to :func:`download` to check other numbers.
"""

RETRIES = 3
"""How many times a download is tried again after a network error."""

RETRY_WAIT_S = 2.0
"""Seconds to wait before the first retry; the wait doubles at each retry."""

TIMEOUT_S = 60.0
"""Seconds without an answer from the server before an attempt counts as failed."""

_CHUNK_BYTES = 1 << 20

_STAGING_SUFFIX = ".asdflow-unpack"
"""Suffix of the temporary folder a zip is unpacked into; one left by a killed run is removed."""


@dataclass(frozen=True)
class ZipContents:
    """What :func:`verify_zip` found in a zip.

    Attributes
    ----------
    prefix : str
        Folder inside the zip that holds the split folders, e.g. ``"fan"``
        (``""`` when ``train/`` and ``test/`` sit at the top).
    counts : dict of str to int
        Number of ``.wav`` files per split folder, e.g. ``{"train": 1000, "test": 200}``.
    """

    prefix: str
    counts: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class RecordFile:
    """One file as a Zenodo record's metadata describes it (see :func:`record_files`).

    Attributes
    ----------
    name : str
        File name, e.g. ``"dev_fan.zip"``.
    size : int or None
        Size in bytes; None when the metadata does not give it.
    md5 : str or None
        MD5 as 32 lower-case hex digits; None when the metadata gives no MD5.
    """

    name: str
    size: int | None = None
    md5: str | None = None


def zip_name(dataset: str, machine: str) -> str:
    """File name of one machine's zip in a set.

    Parameters
    ----------
    dataset : {"dev", "add", "eval"}
    machine : str
        A machine type of that set, e.g. ``"fan"`` or ``"3DPrinter"``.

    Returns
    -------
    str
        E.g. ``"dev_fan.zip"``, ``"eval_data_3DPrinter_train_r2.zip"``.

    Raises
    ------
    DownloadError
        For an unknown set or a machine type the set does not have.
    """
    _check_machine(dataset, machine)
    if dataset == "dev":
        return f"dev_{machine}.zip"
    if dataset == "add":
        revision = "_r2" if machine in REVISED_ZIPS["add"] else ""
        return f"eval_data_{machine}_train{revision}.zip"
    return f"eval_data_{machine}_test.zip"


def zip_url(dataset: str, machine: str, base_url: str | None = None) -> str:
    """URL of one machine's zip.

    Parameters
    ----------
    dataset : {"dev", "add", "eval"}
    machine : str
        A machine type of that set.
    base_url : str, optional
        Replaces the Zenodo base URL. Default: the environment variable
        ``ASDFLOW_ZENODO_URL`` if set, else :data:`ZENODO_URL`.

    Returns
    -------
    str
        ``<base>/<record>/files/<zip name>``.

    Examples
    --------
    >>> zip_url("add", "RoboticArm", "https://zenodo.org/records")
    'https://zenodo.org/records/11259435/files/eval_data_RoboticArm_train_r2.zip'
    """
    name = zip_name(dataset, machine)
    return f"{_base(base_url)}/{RECORDS[dataset]}/files/{name}"


def record_url(dataset: str, base_url: str | None = None) -> str:
    """URL of the metadata (JSON) of a set's Zenodo record.

    Zenodo serves a record's files at ``<site>/records/<record>/files/<zip>``
    and its metadata at ``<site>/api/records/<record>``. The base URL of
    :func:`zip_url` is ``<site>/records``; a base that does not end with
    ``/records`` (a mirror, a test server) is taken as the site itself.

    Parameters
    ----------
    dataset : {"dev", "add", "eval"}
    base_url : str, optional
        As for :func:`zip_url`.

    Returns
    -------
    str

    Examples
    --------
    >>> record_url("dev", "https://zenodo.org/records")
    'https://zenodo.org/api/records/10902294'
    >>> record_url("eval", "http://mirror/x")
    'http://mirror/x/api/records/11363076'
    """
    _check_dataset(dataset)
    base = _base(base_url)
    site = base.removesuffix("/records")
    return f"{site}/api/records/{RECORDS[dataset]}"


def record_files(
    dataset: str,
    base_url: str | None = None,
    *,
    retries: int = RETRIES,
    timeout: float = TIMEOUT_S,
) -> dict[str, RecordFile]:
    """Size and MD5 of every file of a set's Zenodo record, read from its metadata.

    Parameters
    ----------
    dataset : {"dev", "add", "eval"}
    base_url : str, optional
        As for :func:`zip_url`; the metadata URL is :func:`record_url`.
    retries : int
        Further attempts after a server error (HTTP 5xx, 429) or a timeout;
        other failures (no connection, HTTP 404...) are final at once.
    timeout : float
        Seconds without an answer before an attempt fails.

    Returns
    -------
    dict of str to RecordFile
        By file name. Entries of the metadata's ``files`` list give the name as
        ``key`` (or ``filename``), the size as ``size`` (or ``filesize``) and
        the checksum as ``"md5:<hex>"`` (or bare hex); other checksums are
        ignored.

    Raises
    ------
    DownloadError
        When the metadata cannot be fetched or is not a record's metadata,
        naming the URL and the reason.
    """
    _check_retries(retries)
    url = record_url(dataset, base_url)
    reason = "no attempt made"
    for attempt in range(retries + 1):
        try:
            response = requests.get(url, headers=_headers(), timeout=timeout)
            response.raise_for_status()
        except requests.HTTPError as err:
            reason, retry = _http_failure(err)
            if not retry:
                break
        except requests.Timeout as err:
            reason = type(err).__name__
        except requests.RequestException as err:
            reason = type(err).__name__
            break
        else:
            try:
                return _parse_record(response.json())
            except (ValueError, TypeError, AttributeError, KeyError) as err:
                reason = f"not the metadata of a record ({type(err).__name__}: {err})"
                break
        if attempt < retries:
            time.sleep(RETRY_WAIT_S * 2**attempt)
    raise DownloadError(f"could not read {url} ({reason})")


def file_md5(path: str | os.PathLike[str]) -> str:
    """MD5 of a file's bytes, as 32 lower-case hex digits (read in chunks)."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def check_published(path: str | os.PathLike[str], published: RecordFile) -> None:
    """Check a file's size and MD5 against what its Zenodo record publishes.

    Parameters
    ----------
    path : path
        The downloaded (or kept) file.
    published : RecordFile
        From :func:`record_files`; a size or MD5 of None is not checked.

    Raises
    ------
    DownloadError
        Naming the file, the published and the actual size or MD5.
    """
    path = Path(path)
    size = path.stat().st_size
    if published.size is not None and size != published.size:
        raise DownloadError(
            f"{path} is {size} bytes, but Zenodo publishes {published.size} bytes for "
            f"{published.name}: the file is incomplete or not the published one."
        )
    if published.md5 is not None:
        actual = file_md5(path)
        if actual != published.md5:
            raise DownloadError(
                f"{path} has MD5 {actual}, but Zenodo publishes MD5 {published.md5} for "
                f"{published.name}: the file is corrupt or not the published one."
            )


def machine_dir(dest: str | os.PathLike[str], dataset: str, machine: str) -> Path:
    """Folder a machine's zip unpacks into: ``<dest>/<dev_data|eval_data>/raw/<machine>``."""
    _check_machine(dataset, machine)
    return Path(dest) / DATA_FOLDERS[dataset] / "raw" / machine


def unsafe_member(info: zipfile.ZipInfo) -> str | None:
    """Why a zip member could write outside the destination folder, or None if it cannot.

    Refused: absolute paths (``/x``, ``\\x``, ``C:x``), ``..`` components
    (with ``/`` or ``\\`` as separator) and symbolic-link entries.
    """
    name = info.filename
    if name.startswith(("/", "\\")) or PureWindowsPath(name).drive:
        return "an absolute path"
    if ".." in name.replace("\\", "/").split("/"):
        return "a '..' component"
    if stat.S_ISLNK(info.external_attr >> 16):
        return "a symbolic link"
    return None


def safe_extract(
    zip_path: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    progress: bool = False,
) -> list[Path]:
    """Extract a zip into ``dest``, refusing the whole zip if any member could escape it.

    Every member is checked before anything is written, so a refused zip
    leaves ``dest`` as it was.

    Parameters
    ----------
    zip_path : path
        The zip file.
    dest : path
        Destination folder, created if needed.
    progress : bool
        Show a progress bar over the members.

    Returns
    -------
    list of Path
        The extracted files and folders, in the zip's order.

    Raises
    ------
    DownloadError
        If the zip is unreadable, a member is unsafe (see :func:`unsafe_member`,
        or its path resolves outside ``dest``), a member name is given twice,
        or ``dest`` lacks the space.
    """
    zip_path = Path(zip_path)
    dest = Path(dest)
    try:
        with zipfile.ZipFile(zip_path) as archive:
            infos = archive.infolist()
            _refuse_unsafe(zip_path, infos)
            _refuse_duplicates(zip_path, infos)
            dest.mkdir(parents=True, exist_ok=True)
            root = dest.resolve()
            for info in infos:
                target = (root / info.filename).resolve()
                if target != root and root not in target.parents:
                    raise DownloadError(
                        f"{zip_path}: member {info.filename!r} would be written outside "
                        f"{dest} (to {target}); nothing was extracted from this zip."
                    )
            needed = sum(info.file_size for info in infos)
            free = shutil.disk_usage(root).free
            if needed > free:
                raise DownloadError(
                    f"{zip_path} unpacks to {needed / 1e9:.2f} GB but {dest} has only "
                    f"{free / 1e9:.2f} GB free; free some space and run again."
                )
            return [
                Path(archive.extract(info, root))
                for info in _bar(infos, progress, desc=f"unzip {zip_path.name}", unit="file")
            ]
    except (zipfile.BadZipFile, zlib.error, EOFError) as err:
        raise DownloadError(f"{zip_path} is not a readable zip file ({err}).") from err


def verify_zip(
    zip_path: str | os.PathLike[str],
    *,
    machine: str,
    expected: Mapping[str, int | None],
) -> ZipContents:
    """Check that a zip is whole, safe and holds one machine's clips in the DCASE layout.

    Parameters
    ----------
    zip_path : path
        The zip file.
    machine : str
        The machine type the zip should hold. Its ``.wav`` files must sit in
        ``<prefix>/<split>/`` where ``<prefix>`` is ``<machine>``, ends with
        ``/<machine>``, or is empty.
    expected : mapping of str to int or None
        ``.wav`` count per split folder, e.g. ``{"train": 1000, "test": 200}``;
        ``None`` accepts any non-zero count. Other split folders are refused.

    Returns
    -------
    ZipContents
        The prefix and the ``.wav`` count of each expected split.

    Raises
    ------
    DownloadError
        Unreadable or truncated zip, a member failing its CRC check, an unsafe
        member, a member name given twice, ``.wav`` files outside
        ``<prefix>/<split>/``, another machine's folder, or a count that
        differs from ``expected``.
    """
    zip_path = Path(zip_path)
    try:
        with zipfile.ZipFile(zip_path) as archive:
            infos = archive.infolist()
            _refuse_unsafe(zip_path, infos)
            _refuse_duplicates(zip_path, infos)
            broken = archive.testzip()
    except (zipfile.BadZipFile, zlib.error, EOFError) as err:
        raise DownloadError(
            f"{zip_path} is not a readable zip file ({err}): the download is incomplete or corrupt."
        ) from err
    except NotImplementedError as err:
        raise DownloadError(
            f"{zip_path} uses a compression method Python cannot read ({err}); unzip it "
            "by hand (unzip, 7-Zip) into the layout described in asdflow.download."
        ) from err
    if broken is not None:
        raise DownloadError(
            f"{zip_path}: member {broken!r} fails its CRC check: the download is corrupt."
        )

    wavs = [
        PurePosixPath(info.filename.replace("\\", "/"))
        for info in infos
        if not info.is_dir() and info.filename.lower().endswith(".wav")
    ]
    if not wavs:
        raise DownloadError(f"{zip_path} holds no .wav file; it is not a DCASE machine zip.")
    prefixes = sorted({wav.parts[:-2] for wav in wavs})
    if len(prefixes) != 1 or any(len(wav.parts) < 2 for wav in wavs):
        shown = ", ".join("/".join(p) or "(top)" for p in prefixes[:4])
        raise DownloadError(
            f"{zip_path}: .wav files sit under several folders ({shown}); expected them "
            f"all in {machine}/<split>/."
        )
    prefix = prefixes[0]
    if prefix and prefix[-1] != machine:
        raise DownloadError(
            f"{zip_path} holds machine folder {prefix[-1]!r}, not {machine!r}; the zip "
            "does not belong to this machine type."
        )
    counts = Counter(wav.parts[-2] for wav in wavs)
    extra = sorted(set(counts) - set(expected))
    if extra:
        raise DownloadError(
            f"{zip_path}: .wav files in folder(s) {', '.join(extra)}; expected only "
            f"{', '.join(expected)} under {machine}/."
        )
    for split, wanted in expected.items():
        found = counts.get(split, 0)
        if (wanted is None and found == 0) or (wanted is not None and found != wanted):
            raise DownloadError(
                f"{zip_path}: {found} .wav files in {machine}/{split}, expected "
                f"{'at least 1' if wanted is None else wanted}. The zip is incomplete or "
                "not the published version."
            )
    return ZipContents(prefix="/".join(prefix), counts={s: counts.get(s, 0) for s in expected})


def fetch(
    url: str,
    path: str | os.PathLike[str],
    *,
    progress: bool = True,
    retries: int = RETRIES,
    timeout: float = TIMEOUT_S,
    size: int | None = None,
) -> Path:
    """Download one URL to a file, retrying network errors a bounded number of times.

    The file is written directly at ``path``; callers give it a temporary name
    and rename it once its content is checked. It is deleted when the download
    fails or is interrupted.

    Parameters
    ----------
    url : str
    path : path
        Output file; its folder is created if needed.
    progress : bool
        Show a tqdm progress bar (bytes) on stderr.
    retries : int
        Further attempts after a network error or a server error (HTTP 5xx,
        429), waiting :data:`RETRY_WAIT_S` seconds, doubled each time. Other
        HTTP errors (404...) fail at once.
    timeout : float
        Seconds without an answer before an attempt fails.
    size : int, optional
        Expected size in bytes, shown on the status line before the download
        (it is not checked here).

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    DownloadError
        Naming the URL and the last reason.
    """
    _check_retries(retries)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    reason = "no attempt made"
    attempts = retries + 1
    downloader = pooch.HTTPDownloader(
        progressbar=progress, chunk_size=_CHUNK_BYTES, timeout=timeout, headers=_headers()
    )
    shown = f"downloading {url}" + ("" if size is None else f" ({_human_size(size)})")
    for attempt in range(attempts):
        _say(shown, progress)
        try:
            downloader(url, str(path), None)
            return path
        except requests.HTTPError as err:
            path.unlink(missing_ok=True)
            reason, retry = _http_failure(err)
            if not retry:
                raise DownloadError(
                    f"could not download {url}: the server answered {reason}."
                ) from err
        except requests.RequestException as err:
            path.unlink(missing_ok=True)
            reason = f"{type(err).__name__}: {err}"
        except OSError as err:
            path.unlink(missing_ok=True)
            raise DownloadError(f"could not write {path} while downloading {url}: {err}") from err
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        if attempt < attempts - 1:
            time.sleep(RETRY_WAIT_S * 2**attempt)
    raise DownloadError(f"could not download {url} after {attempts} attempt(s): {reason}.")


def download(
    dest: str | os.PathLike[str],
    *,
    dataset: str = "dev",
    machines: Iterable[str] | str | None = None,
    base_url: str | None = None,
    keep_zip: bool = False,
    progress: bool = True,
    expected_counts: Mapping[str, int | None] | None = None,
    retries: int = RETRIES,
) -> list[Path]:
    """Download, check and unpack DCASE 2024 Task 2 zips into the DCASE layout.

    Machines already unpacked and checked by an earlier run are skipped
    without any network access. When a zip is needed, the set's Zenodo record
    is read once (:func:`record_files`) and every zip, downloaded or kept, is
    checked against the size and MD5 it publishes; when the record cannot be
    read, a :class:`UserWarning` says so and the zips are checked by their
    content only. Files in a machine folder that the zip does not bring are
    left in place. See the module docstring for the steps.

    Parameters
    ----------
    dest : path
        Data root. ``dev`` unpacks to ``<dest>/dev_data/raw/<machine>/``,
        ``add`` and ``eval`` to ``<dest>/eval_data/raw/<machine>/``.
    dataset : {"dev", "add", "eval"}
        Development set, additional training set, or evaluation test set.
    machines : str or iterable of str, optional
        Machine types to fetch (see :data:`MACHINES`); default: all of the set.
    base_url : str, optional
        Replaces the Zenodo base URL (see :func:`zip_url` and :func:`record_url`).
    keep_zip : bool
        Keep each checked zip in ``<dest>/<dev_data|eval_data>/zips/``
        (about as large as the unpacked data) instead of deleting it.
    progress : bool
        Show progress bars and one status line per machine on stderr.
    expected_counts : mapping of str to int or None, optional
        ``.wav`` count per split folder; default ``EXPECTED_COUNTS[dataset]``.
    retries : int
        Further attempts after a network error (see :func:`fetch`).

    Returns
    -------
    list of Path
        The machine folders, in the order asked for.

    Raises
    ------
    DownloadError
        Unknown set or machine type (the message lists the valid ones), a
        network failure (naming the URL), a zip failing a check (a size or MD5
        other than the published one: the message gives both), or a file in
        the machine folder that is in the way of the zip's files (nothing is
        moved then). Machines finished before the failure stay finished.
    ParameterError
        When ``dest`` is a file, lies under a file or is not writable, or for
        negative ``retries`` or ``expected_counts``.
    BusyError
        When another process is downloading into the same data folder.
    """
    if isinstance(machines, str):
        machines = [machines]
    _check_dataset(dataset)
    wanted = list(dict.fromkeys(MACHINES[dataset] if machines is None else machines))
    for machine in wanted:
        _check_machine(dataset, machine)
    expected = _check_counts(
        EXPECTED_COUNTS[dataset] if expected_counts is None else expected_counts
    )
    _check_retries(retries)
    data_folder = writable_folder(Path(dest) / DATA_FOLDERS[dataset], "data folder")
    checksums = _RecordChecksums(dataset, base_url, retries)
    with folder_lock(data_folder, "data folder"):
        _remove_staging_leftovers(data_folder / "zips")
        return [
            _install_machine(
                Path(dest), dataset, machine,
                base_url=base_url, checksums=checksums, expected=expected,
                keep_zip=keep_zip, progress=progress, retries=retries,
            )
            for machine in wanted
        ]  # fmt: skip


# --------------------------------------------------------------------------- helpers


def _base(base_url: str | None) -> str:
    """The base URL in use (argument, environment variable, default), without a final ``/``."""
    return (base_url or os.environ.get(URL_ENV) or ZENODO_URL).rstrip("/")


def _http_failure(err: requests.HTTPError) -> tuple[str, bool]:
    """The reason of a failed request, in words, and whether to try again (HTTP 5xx and 429)."""
    status = err.response.status_code if err.response is not None else 0
    return f"HTTP {status}", status >= 500 or status == 429


def _headers() -> dict[str, str]:
    # requests' default User-Agent is rate-limited by Zenodo (pooch issue 502)
    return {"User-Agent": f"asdflow (pooch {pooch.__version__})"}


def _human_size(n_bytes: int) -> str:
    """``n_bytes`` in kB, MB or GB (powers of 1000), e.g. ``"1.23 GB"``."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.2f} {unit}"
    return f"{n_bytes} B"


def _parse_record(metadata: object) -> dict[str, RecordFile]:
    """The files of a record's metadata (see :func:`record_files`), by name."""
    if not isinstance(metadata, dict) or not isinstance(metadata.get("files"), list):
        raise ValueError("no list of files")
    files = {}
    for entry in metadata["files"]:
        name = entry.get("key", entry.get("filename"))
        if not isinstance(name, str):
            raise ValueError(f"a file without a name: {entry!r}")
        size = entry.get("size", entry.get("filesize"))
        algorithm, _, digest = str(entry.get("checksum", "")).rpartition(":")
        digest = digest.lower()
        md5 = digest if algorithm in ("", "md5") and _is_md5(digest) else None
        files[name] = RecordFile(
            name=name,
            size=size if isinstance(size, int) and not isinstance(size, bool) else None,
            md5=md5,
        )
    return files


def _is_md5(text: str) -> bool:
    return len(text) == 32 and all(c in "0123456789abcdef" for c in text)


def _check_dataset(dataset: str) -> None:
    if dataset not in DATASETS:
        raise DownloadError(
            f"unknown set {dataset!r}; choose one of {', '.join(DATASETS)} "
            "(development, additional training, evaluation test)."
        )


def _check_machine(dataset: str, machine: str) -> None:
    _check_dataset(dataset)
    valid = MACHINES[dataset]
    if machine in valid:
        return
    message = f"unknown machine type {machine!r} for set {dataset!r}."
    close = [m for m in valid if m.lower() == str(machine).lower()]
    close = close or difflib.get_close_matches(str(machine), valid, n=1)
    if close:
        message += f" Did you mean {close[0]!r}?"
    others = [d for d in DATASETS if machine in MACHINES[d]]
    if others:
        message += f" {machine!r} belongs to set(s) {', '.join(others)}."
    raise DownloadError(f"{message} Valid for {dataset!r}: {', '.join(valid)}.")


def _check_retries(retries: int) -> None:
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ParameterError(f"retries={retries!r} must be a whole number >= 0")


def _check_counts(expected: Mapping[str, int | None]) -> dict[str, int | None]:
    """``expected`` as a dict, refusing counts that are not None or a whole number >= 0."""
    counts = dict(expected)
    if not counts:
        raise ParameterError("expected_counts is empty; give a .wav count per split folder")
    for split, count in counts.items():
        if count is not None and (
            isinstance(count, bool) or not isinstance(count, int) or count < 0
        ):
            raise ParameterError(
                f"expected_counts[{split!r}]={count!r} must be None or a whole number >= 0"
            )
    return counts


def _refuse_duplicates(zip_path: Path, infos: list[zipfile.ZipInfo]) -> None:
    """Refuse a zip that names one member twice: the later copy would hide the first."""
    seen: set[str] = set()
    for info in infos:
        name = info.filename.replace("\\", "/").rstrip("/")
        if name in seen:
            raise DownloadError(
                f"{zip_path}: member {info.filename!r} appears more than once in the zip; "
                "the zip is damaged or not the published one."
            )
        seen.add(name)


def _refuse_unsafe(zip_path: Path, infos: list[zipfile.ZipInfo]) -> None:
    for info in infos:
        reason = unsafe_member(info)
        if reason:
            raise DownloadError(
                f"{zip_path}: member {info.filename!r} is {reason}, which could write "
                "outside the destination folder; nothing was extracted from this zip."
            )


def _bar(items: list, progress: bool, **kwargs: object) -> Iterable:
    if not progress:
        return items

    return tqdm(items, **kwargs)


def _say(message: str, progress: bool) -> None:
    if progress:
        tqdm.write(message, file=sys.stderr)


def _marker(folder: Path, dataset: str) -> Path:
    return folder / f".asdflow-{dataset}.json"


def _wav_names(folder: Path) -> set[str]:
    """Names of the ``.wav`` files directly in ``folder`` (empty when it is not a folder)."""
    if not folder.is_dir():
        return set()
    with os.scandir(folder) as entries:
        return {e.name for e in entries if e.is_file() and e.name.lower().endswith(".wav")}


def _is_complete(folder: Path, dataset: str, expected: Mapping[str, int | None]) -> bool:
    """True when the marker exists, its ``.wav`` files are on disk and its counts match ``expected``.

    Other ``.wav`` files in the split folders (the user's own) do not matter.
    A marker of an older version, without the file list, is trusted when the
    ``.wav`` counts on disk equal its counts.
    """
    try:
        record = json.loads(_marker(folder, dataset).read_text())
        recorded = {split: int(record["counts"][split]) for split in expected}
        names = record.get("files")
        if names is None:
            on_disk = {split: len(_wav_names(folder / split)) for split in expected}
            if on_disk != recorded:
                return False
        else:
            for split in expected:
                listed = set(names[split])
                if len(listed) != recorded[split] or not listed <= _wav_names(folder / split):
                    return False
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False
    return all(
        recorded[split] > 0 if wanted is None else recorded[split] == wanted
        for split, wanted in expected.items()
    )


def _remove_staging_leftovers(zips: Path) -> None:
    """Delete the unpack folders of killed runs (call with the data folder locked)."""
    if zips.is_dir():
        for entry in zips.glob(f".*{_STAGING_SUFFIX}"):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)


def _refuse_file_in_the_way(folder: Path, splits: Iterable[str], zip_file: str) -> None:
    """Refuse early when ``raw/``, the machine folder or a split folder is a file."""
    for path in (folder.parent, folder, *(folder / split for split in splits)):
        if path.exists() and not path.is_dir():
            raise DownloadError(
                f"cannot unpack {zip_file}: {path} is a file where a folder must be; nothing "
                f"was changed. Move or rename {path} and run again."
            )


def _clashes(src: Path, target: Path) -> list[str]:
    """Why ``src`` (an unpacked file or folder) cannot be moved to ``target`` without deleting another file.

    A clash is an existing folder where ``src`` is a file, an existing file
    (or broken link) where ``src`` is a folder, or an existing folder that
    cannot be written to. Existing files where ``src`` has files are no
    clash: they are replaced.
    """
    if not src.is_dir():
        return [f"{target} is a folder where the zip has a file"] if target.is_dir() else []
    if target.is_symlink() and not target.exists():
        return [f"{target} is a broken link where the zip has a folder"]
    if not target.exists():
        return []
    if not target.is_dir():
        return [f"{target} is a file where the zip has a folder"]
    if not os.access(target, os.W_OK | os.X_OK):
        return [f"{target} is not writable"]
    return [p for entry in sorted(src.iterdir()) for p in _clashes(entry, target / entry.name)]


def _merge(src: Path, target: Path) -> None:
    """Move ``src`` (an unpacked file or folder) to ``target``, replacing only files of the same name.

    The files of a folder are merged into the existing folder; a folder that
    does not exist yet is moved in one rename. Call :func:`_clashes` first.
    """
    if not src.is_dir() or not target.exists():
        os.replace(src, target)
        return
    for entry in sorted(src.iterdir()):
        _merge(entry, target / entry.name)


def _unpacked_entries(src: Path, splits: Iterable[str]) -> list[Path]:
    """What of the unpacked zip goes into the machine folder: the split folders and the files beside them.

    Other folders (such as ``__MACOSX``) stay behind.
    """
    return [e for e in sorted(src.iterdir()) if e.is_file() or (e.is_dir() and e.name in splits)]


def _by_hand_hint(dataset: str, machine: str, expected: Mapping[str, int | None]) -> str:
    raw = f"<DEST>/{DATA_FOLDERS[dataset]}/raw"
    splits = ",".join(expected)
    return (
        f" Check the network and run again (finished machines are skipped), or download "
        f"{zip_name(dataset, machine)} by hand from https://zenodo.org/records/"
        f"{RECORDS[dataset]} and unzip it inside {raw}/ so that "
        f"{raw}/{machine}/{{{splits}}}/*.wav exist."
    )


class _RecordChecksums:
    """The published files of one set's record, read on first use; a warning when unreadable."""

    def __init__(self, dataset: str, base_url: str | None, retries: int) -> None:
        self.dataset = dataset
        self.base_url = base_url
        self.retries = retries
        self.files: dict[str, RecordFile] | None = None
        self.failed = False

    def get(self, name: str) -> RecordFile | None:
        """What the record publishes about ``name``, or None (with a warning) when unknown."""
        if self.files is None and not self.failed:
            try:
                self.files = record_files(self.dataset, self.base_url, retries=self.retries)
            except DownloadError as err:
                self.failed = True
                warnings.warn(
                    f"{err}; the sizes and MD5s that Zenodo publishes are not checked, the "
                    "zips are checked by their content only.",
                    stacklevel=2,
                )
        if self.files is None:
            return None
        published = self.files.get(name)
        if published is None or published.md5 is None:
            gap = "lists no file" if published is None else "gives no MD5 for"
            warnings.warn(
                f"Zenodo record {RECORDS[self.dataset]} {gap} {name}; it is checked by its "
                "content only.",
                stacklevel=2,
            )
        return published


def _obtain_zip(
    zip_path: Path,
    url: str,
    dataset: str,
    machine: str,
    *,
    published: RecordFile | None,
    expected: Mapping[str, int | None],
    progress: bool,
    retries: int,
) -> ZipContents:
    """Reuse a kept zip that passes the checks, or download and check a new one.

    The checks are :func:`check_published` (when ``published`` is given) and
    :func:`verify_zip`. A zip failing a check is deleted (it was written by an
    earlier run or by this one), so that it is never taken as valid.
    """
    if zip_path.is_file():
        try:
            if published is not None:
                check_published(zip_path, published)
            contents = verify_zip(zip_path, machine=machine, expected=expected)
            _say(f"{machine}: reusing {zip_path}", progress)
            return contents
        except DownloadError as err:
            _say(f"{machine}: {err} Downloading it again.", progress)
            zip_path.unlink()
    part = zip_path.with_name(zip_path.name + ".part")
    size = published.size if published is not None else None
    try:
        fetch(url, part, progress=progress, retries=retries, size=size)
    except DownloadError as err:
        raise DownloadError(str(err) + _by_hand_hint(dataset, machine, expected)) from err
    try:
        if published is not None:
            check_published(part, published)
        contents = verify_zip(part, machine=machine, expected=expected)
    except DownloadError as err:
        part.unlink(missing_ok=True)
        raise DownloadError(
            f"{err} (downloaded from {url}; the file was deleted, run again to download it anew)"
        ) from err
    os.replace(part, zip_path)
    return contents


def _install_machine(
    dest: Path,
    dataset: str,
    machine: str,
    *,
    base_url: str | None,
    checksums: _RecordChecksums,
    expected: Mapping[str, int | None],
    keep_zip: bool,
    progress: bool,
    retries: int,
) -> Path:
    folder = machine_dir(dest, dataset, machine)
    name = zip_name(dataset, machine)
    _refuse_file_in_the_way(folder, expected, name)
    if _is_complete(folder, dataset, expected):
        _say(f"{machine}: already unpacked and checked in {folder}, skipped", progress)
        return folder

    url = zip_url(dataset, machine, base_url)
    zips = dest / DATA_FOLDERS[dataset] / "zips"
    zip_path = zips / name
    published = checksums.get(name)
    contents = _obtain_zip(
        zip_path, url, dataset, machine,
        published=published, expected=expected, progress=progress, retries=retries,
    )  # fmt: skip

    staging = Path(tempfile.mkdtemp(prefix=f".{machine}-", suffix=_STAGING_SUFFIX, dir=zips))
    try:
        unpacked = staging / "unpacked"
        safe_extract(zip_path, unpacked, progress=progress)
        source = unpacked / contents.prefix
        names = {split: sorted(_wav_names(source / split)) for split in expected}
        counts = {split: len(found) for split, found in names.items()}
        if counts != contents.counts:
            zip_path.unlink(missing_ok=True)
            raise DownloadError(
                f"{zip_path} unpacks to {counts} .wav files, but lists {contents.counts}; "
                f"the zip was deleted and {folder} was not changed. Run again to download it "
                "anew."
            )
        entries = _unpacked_entries(source, expected)
        problems = []
        if folder.exists() and not os.access(folder, os.W_OK | os.X_OK):
            problems.append(f"{folder} is not writable")
        problems += [p for entry in entries for p in _clashes(entry, folder / entry.name)]
        if problems:
            raise DownloadError(
                f"cannot unpack {name} into {folder}: {problems[0]}"
                + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else "")
                + f"; nothing was changed. Move or rename it and run again (the checked zip "
                f"stays in {zips} for that run)."
            )
        folder.mkdir(parents=True, exist_ok=True)
        remove_leftovers(folder)
        _marker(folder, dataset).unlink(missing_ok=True)
        for entry in entries:
            _merge(entry, folder / entry.name)
        missing = [
            f"{split}/{wav}"
            for split, found in names.items()
            for wav in sorted(set(found) - _wav_names(folder / split))
        ]
        if missing:
            raise DownloadError(
                f"{folder / missing[0]} is missing after unpacking {zip_path}; check the "
                "folder and run again."
            )
        record = {
            "dataset": dataset,
            "machine": machine,
            "zip": name,
            "url": url,
            "md5": published.md5 if published is not None else None,
            "counts": counts,
            "files": names,
            "unpacked": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        atomic_write(_marker(folder, dataset), json.dumps(record, indent=2) + "\n")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if not keep_zip:
        zip_path.unlink()
    summary = ", ".join(f"{n} {split}" for split, n in counts.items())
    _say(f"{machine}: {summary} .wav files in {folder}", progress)
    return folder
