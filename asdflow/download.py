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

No checksums are published for these zips, so a download is checked by what it
holds. For each machine a run goes through these steps, and a failure at any of
them leaves nothing that looks complete:

1. skip the machine when its marker file (``raw/<machine>/.asdflow-<set>.json``,
   written last) is present and the ``.wav`` counts on disk still match it;
2. download the zip to ``<DEST>/<dev_data|eval_data>/zips/<zip>.part`` (with a
   progress bar and bounded retries on network errors), then check it: a
   readable zip, every member's CRC (:meth:`zipfile.ZipFile.testzip`), no member
   escaping the destination, the expected folder layout and ``.wav`` counts
   (:data:`EXPECTED_COUNTS`); only then is it renamed to ``<zip>``;
3. unpack into a temporary folder next to the zip, move the machine's folders
   into ``raw/<machine>/`` (each folder in one rename), write the marker;
4. delete the zip, unless ``keep_zip=True``: a kept zip is reused (checked
   again, not downloaded) when the machine folder has to be rebuilt.

The base URL can point elsewhere (a mirror, a local test server): pass
``base_url`` or set the environment variable ``ASDFLOW_ZENODO_URL``; a file's
URL is ``<base>/<record>/files/<zip>``.

If the network is in the way, download the zips by hand from
``https://zenodo.org/records/<record>`` and unzip each inside
``<DEST>/dev_data/raw/`` (or ``eval_data/raw/``): the rest of asdflow reads the
layout, not the marker files.
"""

from __future__ import annotations

import difflib
import json
import os
import shutil
import stat
import sys
import tempfile
import time
import zipfile
import zlib
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath, PureWindowsPath

from asdflow.errors import DownloadError

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
    base = base_url or os.environ.get(URL_ENV) or ZENODO_URL
    return f"{base.rstrip('/')}/{RECORDS[dataset]}/files/{name}"


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
        or its path resolves outside ``dest``), or ``dest`` lacks the space.
    """
    zip_path = Path(zip_path)
    dest = Path(dest)
    try:
        with zipfile.ZipFile(zip_path) as archive:
            infos = archive.infolist()
            _refuse_unsafe(zip_path, infos)
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
        member, ``.wav`` files outside ``<prefix>/<split>/``, another machine's
        folder, or a count that differs from ``expected``.
    """
    zip_path = Path(zip_path)
    try:
        with zipfile.ZipFile(zip_path) as archive:
            infos = archive.infolist()
            _refuse_unsafe(zip_path, infos)
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

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    DownloadError
        Naming the URL and the last reason.
    """
    import pooch
    import requests

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    reason = "no attempt made"
    attempts = max(retries, 0) + 1
    # requests' default User-Agent is rate-limited by Zenodo (pooch issue 502)
    headers = {"User-Agent": f"asdflow (pooch {pooch.__version__})"}
    downloader = pooch.HTTPDownloader(
        progressbar=progress, chunk_size=_CHUNK_BYTES, timeout=timeout, headers=headers
    )
    for attempt in range(attempts):
        _say(f"downloading {url}", progress)
        try:
            downloader(url, str(path), None)
            return path
        except requests.HTTPError as err:
            path.unlink(missing_ok=True)
            status = err.response.status_code if err.response is not None else 0
            reason = f"HTTP {status}"
            if status < 500 and status != 429:
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
    without any network access. See the module docstring for the steps.

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
        Replaces the Zenodo base URL (see :func:`zip_url`).
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
        network failure (naming the URL), or a zip failing a check. Machines
        finished before the failure stay finished.
    """
    if isinstance(machines, str):
        machines = [machines]
    _check_dataset(dataset)
    wanted = list(dict.fromkeys(MACHINES[dataset] if machines is None else machines))
    for machine in wanted:
        _check_machine(dataset, machine)
    expected = dict(EXPECTED_COUNTS[dataset] if expected_counts is None else expected_counts)
    return [
        _install_machine(
            Path(dest), dataset, machine,
            base_url=base_url, expected=expected, keep_zip=keep_zip,
            progress=progress, retries=retries,
        )
        for machine in wanted
    ]  # fmt: skip


# --------------------------------------------------------------------------- helpers


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
    from tqdm.auto import tqdm

    return tqdm(items, **kwargs)


def _say(message: str, progress: bool) -> None:
    if progress:
        from tqdm.auto import tqdm

        tqdm.write(message, file=sys.stderr)


def _marker(folder: Path, dataset: str) -> Path:
    return folder / f".asdflow-{dataset}.json"


def _count_wavs(folder: Path) -> int:
    if not folder.is_dir():
        return 0
    with os.scandir(folder) as entries:
        return sum(1 for e in entries if e.is_file() and e.name.lower().endswith(".wav"))


def _is_complete(folder: Path, dataset: str, expected: Mapping[str, int | None]) -> bool:
    """True when the marker exists and the wav counts on disk match it and ``expected``."""
    try:
        recorded = json.loads(_marker(folder, dataset).read_text())["counts"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    on_disk = {split: _count_wavs(folder / split) for split in expected}
    if recorded != on_disk:
        return False
    return all(
        on_disk[split] > 0 if wanted is None else on_disk[split] == wanted
        for split, wanted in expected.items()
    )


def _write_json(path: Path, content: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(content, indent=2) + "\n")
    os.replace(tmp, path)


def _move_into(src: Path, folder: Path, splits: Iterable[str], trash: Path) -> None:
    """Move the split folders of ``src`` and the files beside them into ``folder``.

    One rename per entry, so a split folder is either the old one or the new
    one, never a mix; replaced folders go to ``trash``. Other folders (such as
    ``__MACOSX``) stay behind.
    """
    folder.mkdir(parents=True, exist_ok=True)
    for entry in sorted(src.iterdir()):
        if not (entry.is_file() or entry.name in splits):
            continue
        target = folder / entry.name
        if entry.is_dir() and target.exists():
            trash.mkdir(exist_ok=True)
            os.replace(target, trash / entry.name)
        os.replace(entry, target)


def _by_hand_hint(dataset: str, machine: str, expected: Mapping[str, int | None]) -> str:
    raw = f"<DEST>/{DATA_FOLDERS[dataset]}/raw"
    splits = ",".join(expected)
    return (
        f" Check the network and run again (finished machines are skipped), or download "
        f"{zip_name(dataset, machine)} by hand from https://zenodo.org/records/"
        f"{RECORDS[dataset]} and unzip it inside {raw}/ so that "
        f"{raw}/{machine}/{{{splits}}}/*.wav exist."
    )


def _install_machine(
    dest: Path,
    dataset: str,
    machine: str,
    *,
    base_url: str | None,
    expected: Mapping[str, int | None],
    keep_zip: bool,
    progress: bool,
    retries: int,
) -> Path:
    folder = machine_dir(dest, dataset, machine)
    if _is_complete(folder, dataset, expected):
        _say(f"{machine}: already unpacked and checked in {folder}, skipped", progress)
        return folder

    url = zip_url(dataset, machine, base_url)
    zips = dest / DATA_FOLDERS[dataset] / "zips"
    zip_path = zips / zip_name(dataset, machine)
    contents = None
    if zip_path.is_file():
        try:
            contents = verify_zip(zip_path, machine=machine, expected=expected)
            _say(f"{machine}: reusing {zip_path}", progress)
        except DownloadError as err:
            _say(f"{machine}: {err} Downloading it again.", progress)
            zip_path.unlink()
    if contents is None:
        part = zip_path.with_name(zip_path.name + ".part")
        try:
            fetch(url, part, progress=progress, retries=retries)
        except DownloadError as err:
            raise DownloadError(str(err) + _by_hand_hint(dataset, machine, expected)) from err
        try:
            contents = verify_zip(part, machine=machine, expected=expected)
        except DownloadError as err:
            part.unlink(missing_ok=True)
            raise DownloadError(
                f"{err} (downloaded from {url}; the file was deleted, run again to "
                "download it anew)"
            ) from err
        os.replace(part, zip_path)

    staging = Path(tempfile.mkdtemp(prefix=f".{machine}-", dir=zips))
    try:
        unpacked = staging / "unpacked"
        safe_extract(zip_path, unpacked, progress=progress)
        _marker(folder, dataset).unlink(missing_ok=True)
        _move_into(unpacked / contents.prefix, folder, expected, staging / "replaced")
        counts = {split: _count_wavs(folder / split) for split in expected}
        if counts != contents.counts:
            raise DownloadError(
                f"{folder} holds {counts} .wav files after unpacking {zip_path}, expected "
                f"{contents.counts}; remove {folder} and run again."
            )
        _write_json(
            _marker(folder, dataset),
            {
                "dataset": dataset,
                "machine": machine,
                "zip": zip_path.name,
                "url": url,
                "counts": counts,
                "unpacked": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            },
        )
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if not keep_zip:
        zip_path.unlink()
    summary = ", ".join(f"{n} {split}" for split, n in counts.items())
    _say(f"{machine}: {summary} .wav files in {folder}", progress)
    return folder
