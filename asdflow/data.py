"""DCASE 2024 Task 2 data: the folder layout, clip records and audio loading.

The layout after unzipping (see the DCASE 2024 Task 2 description):

.. code-block:: text

    <root>/dev_data/raw/<machine>/train/section_00_source_train_normal_0001_<attrs>.wav
    <root>/dev_data/raw/<machine>/test/section_00_target_test_anomaly_0001_<attrs>.wav
    <root>/dev_data/raw/<machine>/attributes_00.csv
    <root>/eval_data/raw/<machine>/train/...           (additional training set)
    <root>/eval_data/raw/<machine>/test/section_00_0001.wav   (no domain or label)

:func:`scan` turns such a folder into a sorted list of :class:`Clip` records
(filtered by machine type, split, domain or set), :func:`machines` lists the
machine types, :func:`load_audio` reads one clip as a mono 16 kHz float32
array and :func:`describe` counts the clips in a text table.
"""

from __future__ import annotations

import csv
import errno
import os
import re
import stat
import warnings
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import librosa
import numpy as np
import soundfile as sf

from asdflow.errors import AudioError, LayoutError, ParameterError
from asdflow.files import short_path

SAMPLE_RATE = 16000
"""Sample rate of every DCASE 2024 Task 2 clip, in Hz."""


@dataclass(frozen=True)
class Clip:
    """One audio clip of the DCASE layout, described by its path and file name.

    Attributes
    ----------
    path : Path
        The ``.wav`` file.
    machine : str
        Machine type, e.g. ``"fan"`` or ``"ToyCar"`` (the folder name).
    section : str
        Section id, ``"00"`` in 2024.
    domain : str
        ``"source"``, ``"target"`` or ``"unknown"`` (evaluation test clips).
    split : str
        ``"train"`` or ``"test"``.
    label : str
        ``"normal"``, ``"anomaly"`` or ``"unknown"`` (evaluation test clips).
    number : int
        The clip number in its name (numbering starts at 0000 or 0001).
    attributes : dict
        Operating conditions from the name or ``attributes_00.csv``,
        e.g. ``{"vel": "4", "loc": "A"}``; empty for ``noAttribute``.
    dataset : str
        ``"dev"`` (development set) or ``"eval"`` (additional training and
        evaluation test set).
    """

    path: Path
    machine: str
    section: str
    domain: str
    split: str
    label: str
    number: int
    attributes: dict[str, str] = field(default_factory=dict, compare=False, hash=False)
    dataset: str = "dev"

    @property
    def name(self) -> str:
        """The file name, e.g. ``section_00_source_test_normal_0001_vel_4.wav``."""
        return self.path.name

    @property
    def is_anomaly(self) -> bool | None:
        """True for an anomalous clip, False for a normal one, None when unknown."""
        if self.label == "unknown":
            return None
        return self.label == "anomaly"


DATASETS = {"dev": "dev_data", "eval": "eval_data"}
"""The two top folders of a data root, by the ``dataset`` value of a clip."""

SPLITS = ("train", "test")
DOMAINS = ("source", "target", "unknown")
LABELS = ("normal", "anomaly", "unknown")

EXPECTED_LAYOUT = (
    "<root>/dev_data/raw/<machine>/{train,test}/section_00_<source|target>_<train|test>_"
    "<normal|anomaly>_<NNNN>[_<attributes>].wav (and/or the same under <root>/eval_data/raw/)"
)
"""The layout :func:`scan` expects, quoted in its error messages."""

ATTRIBUTES_FILE = "attributes_00.csv"
"""Per-machine table of the clips' operating conditions (optional)."""

CLIP_NAME = re.compile(
    r"^section_(?P<section>\d{2})_"
    r"(?:(?P<domain>source|target)_(?P<split>train|test)_(?P<label>normal|anomaly)_)?"
    r"(?P<number>\d+)"
    r"(?:_(?P<attributes>.+?))?"
    r"\.wav$"
)
"""The one pattern of a DCASE 2024 clip name.

``section_00_source_train_normal_0001_vel_4_loc_A.wav`` gives section ``00``,
domain ``source``, split ``train``, label ``normal``, number ``0001`` and the
attribute string ``vel_4_loc_A``. Evaluation test clips, ``section_00_0003.wav``,
have no domain, split, label or attributes.
"""


def display_path(path: str | os.PathLike[str]) -> str:
    """A path as printable text: bytes that are not UTF-8 shown as ``\\xNN``.

    On Linux a file name may hold any bytes; Python keeps the ones that are
    not UTF-8 as lone surrogates, which cannot be printed to a UTF-8 terminal
    or written to a UTF-8 file. Every message of asdflow that names a file
    goes through this function.

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    str
        ``str(path)`` when it is valid text, else the same with each bad byte
        written ``\\xNN``, e.g. ``clip_\\xff.wav``.

    Examples
    --------
    >>> display_path("fan/train/clip.wav")
    'fan/train/clip.wav'
    """
    text = os.fspath(path)
    if isinstance(text, bytes):
        return text.decode("utf-8", "backslashreplace")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return text


def is_text_name(name: str) -> bool:
    """True when a file name is valid UTF-8 text (no undecodable bytes)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _denied(folder: Path, err: OSError) -> LayoutError:
    """The error of a data folder that cannot be listed or looked into."""
    reason = "permission denied" if isinstance(err, PermissionError) else (err.strerror or str(err))
    return LayoutError(
        f"{display_path(folder)}: {reason}; asdflow cannot read this data folder. Give your "
        f"user read and search permission (chmod -R u+rX {display_path(folder)}) or choose "
        "another folder."
    )


def _mode(path: Path) -> int | None:
    """The ``st_mode`` of ``path``, None when it does not exist.

    Raises
    ------
    LayoutError
        When ``path`` cannot be looked at (a folder above it denies access).
    """
    try:
        return path.stat().st_mode
    except PermissionError as err:
        raise _denied(path, err) from err
    except OSError as err:
        if err.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.ENAMETOOLONG):
            return None
        raise _denied(path, err) from err


def _is_folder(path: Path) -> bool:
    mode = _mode(path)
    return mode is not None and stat.S_ISDIR(mode)


def _is_file(path: Path) -> bool:
    mode = _mode(path)
    return mode is not None and stat.S_ISREG(mode)


def _listing(folder: Path) -> list[Path]:
    """The entries of ``folder``, sorted; :class:`LayoutError` when it cannot be listed."""
    try:
        names = os.listdir(folder)
    except OSError as err:
        raise _denied(folder, err) from err
    return [folder / name for name in sorted(names)]


def parse_attributes(text: str | None) -> dict[str, str] | None:
    """Turn the attribute part of a clip name into a dictionary.

    Parameters
    ----------
    text : str or None
        The part after the clip number, e.g. ``"pro_A_vel_4_loc_A"``;
        ``"noAttribute"``, ``""`` or None mean no attributes.

    Returns
    -------
    dict or None
        ``{"pro": "A", "vel": "4", "loc": "A"}``; ``{}`` for no attributes;
        None when the text is not a sequence of ``name_value`` pairs (an odd
        number of ``_``-separated parts).

    Examples
    --------
    >>> parse_attributes("car_B1_spd_31V_mic_1")
    {'car': 'B1', 'spd': '31V', 'mic': '1'}
    >>> parse_attributes("noAttribute")
    {}
    """
    if not text or text == "noAttribute":
        return {}
    parts = text.split("_")
    if len(parts) % 2:
        return None
    return dict(zip(parts[0::2], parts[1::2], strict=True))


def _read_attribute_table(path: Path) -> dict[str, dict[str, str]]:
    """Read ``attributes_00.csv`` into ``{"<split>/<file name>": attributes}``.

    The ``file_name`` column reads ``<machine>/<split>/<name>.wav``; only the
    last two parts are used as the key, so a renamed machine folder still
    matches. Pairs whose name is empty or ``noAttribute`` are left out. The
    file must be UTF-8; a byte order mark at its start (as some spreadsheet
    programs write) is accepted.

    Raises
    ------
    LayoutError
        When the file cannot be read, is not UTF-8 text, or its first column
        is not ``file_name``; the message names the file and the fix.
    """
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            return _attribute_rows(path, csv.reader(f))
    except UnicodeDecodeError as err:
        raise LayoutError(
            f"{display_path(path)}: not UTF-8 text (byte {err.object[err.start]:#04x} at "
            f"position {err.start}); save it as UTF-8 (e.g. 'CSV UTF-8' in a spreadsheet "
            "program), or delete it: attributes are then read from the clip names."
        ) from err
    except OSError as err:
        reason = "permission denied" if isinstance(err, PermissionError) else err.strerror
        raise LayoutError(
            f"{display_path(path)}: cannot be read ({reason}); fix its permissions or delete "
            "it: attributes are then read from the clip names."
        ) from err


def _attribute_rows(path: Path, reader: Iterable[list[str]]) -> dict[str, dict[str, str]]:
    """The rows of an open ``attributes_00.csv`` as ``{"<split>/<file name>": attributes}``."""
    table: dict[str, dict[str, str]] = {}
    reader = iter(reader)
    header = next(reader, None)
    if not header or header[0].strip() != "file_name":
        raise LayoutError(
            f"{display_path(path)}: the first column must be 'file_name' "
            f"(columns file_name,d1p,d1v[,d2p,d2v,...]); found {header!r}. "
            "Fix or delete the file: attributes are then read from the clip names."
        )
    for row in reader:
        if not row or not row[0].strip():
            continue
        key = "/".join(row[0].strip().replace("\\", "/").split("/")[-2:])
        values = [cell.strip() for cell in row[1:]]
        attributes = {}
        for name, value in zip(values[0::2], values[1::2], strict=False):
            if name and name != "noAttribute":
                attributes[name] = value
        table[key] = attributes
    return table


def _check_choice(name: str, value: str | None, choices: tuple[str, ...]) -> None:
    if value is not None and value not in choices:
        raise ParameterError(f"{name}={value!r} is not one of {', '.join(choices)}")


def _machine_folders(root: Path, dataset: str | None) -> dict[tuple[str, str], Path]:
    """``{(dataset, machine): folder}`` for every machine folder under a root."""
    if not _is_folder(root):
        raise LayoutError(
            f"data root {display_path(root)} does not exist or is not a folder; expected {EXPECTED_LAYOUT}. "
            "Download the data (asdflow download) or generate it (asdflow synth)."
        )
    folders: dict[tuple[str, str], Path] = {}
    found_raw = False
    for name, top in DATASETS.items():
        if dataset is not None and name != dataset:
            continue
        raw = root / top / "raw"
        if not _is_folder(raw):
            continue
        found_raw = True
        for folder in _listing(raw):
            if folder.name.startswith(".") or not _is_folder(folder):
                continue
            if not is_text_name(folder.name):
                warnings.warn(
                    f"skipped the machine folder {display_path(folder)}: its name is not valid "
                    "UTF-8 text; rename it (DCASE machine names are ASCII).",
                    stacklevel=3,
                )
                continue
            if any(_is_folder(folder / split) for split in SPLITS):
                folders[name, folder.name] = folder
    if not found_raw:
        where = f"{DATASETS[dataset]}/raw" if dataset else "dev_data/raw or eval_data/raw"
        raise LayoutError(
            f"{display_path(root)} holds no {where} folder; expected {EXPECTED_LAYOUT}. "
            "Point to the folder that contains dev_data/ (or eval_data/)."
        )
    return folders


def machines(root: str | os.PathLike[str], *, dataset: str | None = None) -> list[str]:
    """Machine types found under a data root.

    Parameters
    ----------
    root : str or Path
        Folder holding ``dev_data/raw/`` and/or ``eval_data/raw/``.
    dataset : {"dev", "eval"} or None
        Look only in this set; None looks in both.

    Returns
    -------
    list of str
        Sorted machine folder names that contain a ``train`` or ``test`` folder.

    Raises
    ------
    LayoutError
        When the root or both ``raw`` folders are missing, or a folder cannot
        be read (permission denied).
    """
    _check_choice("dataset", dataset, tuple(DATASETS))
    return sorted({machine for _, machine in _machine_folders(Path(root), dataset)})


def scan(
    root: str | os.PathLike[str],
    *,
    machines: str | Iterable[str] | None = None,
    split: str | None = None,
    domain: str | None = None,
    dataset: str | None = None,
) -> list[Clip]:
    """Find the clips of a DCASE 2024 Task 2 data root.

    Every ``.wav`` name is parsed with :data:`CLIP_NAME`. Attributes come
    from the machine's ``attributes_00.csv`` when it lists the clip, from
    the clip name otherwise. Names that do not parse are reported in one
    warning (their count and up to three examples) and skipped; so are names
    that are not valid UTF-8 text (bytes such as ``\\xff``, shown escaped),
    which no DCASE file has and which could not be written into the UTF-8
    DCASE result files. Hidden files (names starting with ``.``, such as
    ``._x.wav`` left by macOS zips) are ignored. A folder that cannot be
    listed raises :class:`LayoutError` ("permission denied").

    Parameters
    ----------
    root : str or Path
        Folder holding ``dev_data/raw/<machine>/`` and/or
        ``eval_data/raw/<machine>/`` (see :data:`EXPECTED_LAYOUT`).
    machines : str or iterable of str, optional
        Only these machine types. Each must exist under the root.
    split : {"train", "test"}, optional
        Only this split.
    domain : {"source", "target", "unknown"}, optional
        Only this domain (``"unknown"``: evaluation test clips).
    dataset : {"dev", "eval"}, optional
        Only the development set or only ``eval_data`` (additional training
        set and evaluation test set).

    Returns
    -------
    list of Clip
        Sorted by path.

    Raises
    ------
    LayoutError
        When the root, its ``raw`` folders or a requested machine are missing,
        a folder cannot be read (permission denied), or ``attributes_00.csv``
        is malformed or not UTF-8.
    ParameterError
        When ``split``, ``domain`` or ``dataset`` is not one of its values
        (also a ``ValueError``).
    """
    _check_choice("split", split, SPLITS)
    _check_choice("domain", domain, DOMAINS)
    _check_choice("dataset", dataset, tuple(DATASETS))
    root = Path(root)
    folders = _machine_folders(root, dataset)
    wanted = [machines] if isinstance(machines, str) else machines
    if wanted is not None:
        wanted = list(wanted)
        present = sorted({machine for _, machine in folders})
        missing = [m for m in wanted if m not in present]
        if missing:
            raise LayoutError(
                f"machine type(s) {', '.join(missing)} not found under {display_path(root)} "
                f"(found: {', '.join(present) or 'none'}); expected {EXPECTED_LAYOUT}."
            )
        folders = {key: folder for key, folder in folders.items() if key[1] in wanted}

    clips: list[Clip] = []
    odd: list[Path] = []
    not_text: list[Path] = []
    for (set_name, machine), folder in folders.items():
        table_path = folder / ATTRIBUTES_FILE
        table = _read_attribute_table(table_path) if _is_file(table_path) else {}
        for split_name in SPLITS:
            if split is not None and split_name != split:
                continue
            split_folder = folder / split_name
            if not _is_folder(split_folder):
                continue
            for path in _listing(split_folder):
                if path.name.startswith(".") or not _is_file(path):
                    continue
                if not is_text_name(path.name):
                    not_text.append(path)
                    continue
                clip = _parse_clip(path, machine, split_name, set_name, table)
                if clip is None:
                    odd.append(path)
                elif domain is None or clip.domain == domain:
                    clips.append(clip)
    if not_text:
        examples = ", ".join(display_path(p) for p in sorted(not_text)[:3])
        warnings.warn(
            f"skipped {len(not_text)} file(s) whose names are not valid UTF-8 text, e.g. "
            f"{examples} (undecodable bytes shown as \\xNN); DCASE clip names are ASCII: "
            "rename them.",
            stacklevel=2,
        )
    if odd:
        odd.sort()
        examples = ", ".join(display_path(p) for p in odd[:3])
        warnings.warn(
            f"skipped {len(odd)} file(s) whose names do not follow the DCASE pattern "
            f"section_00_<source|target>_<split>_<normal|anomaly>_<NNNN>[_<attributes>].wav "
            f"or section_00_<NNNN>.wav, e.g. {examples}. Rename or remove them.",
            stacklevel=2,
        )
    clips.sort(key=lambda clip: clip.path)
    return clips


def _parse_clip(
    path: Path, machine: str, split: str, dataset: str, table: dict[str, dict[str, str]]
) -> Clip | None:
    """The :class:`Clip` of one file, or None when its name does not parse."""
    match = CLIP_NAME.match(path.name)
    if match is None:
        return None
    if match["split"] is not None and match["split"] != split:
        return None  # a train name in the test folder, or the reverse
    attributes = table.get(f"{split}/{path.name}")
    if attributes is None:
        attributes = parse_attributes(match["attributes"])
        if attributes is None:
            return None
    return Clip(
        path=path,
        machine=machine,
        section=match["section"],
        domain=match["domain"] or "unknown",
        split=split,
        label=match["label"] or "unknown",
        number=int(match["number"]),
        attributes=attributes,
        dataset=dataset,
    )


def check_sample_rate(sr: object, name: str = "sr") -> int:
    """``sr`` as an int when it is a positive integer number of Hz.

    Raises
    ------
    ParameterError
        Naming the value and the allowed range.
    """
    if isinstance(sr, bool) or not isinstance(sr, (int, np.integer)) or sr < 1:
        raise ParameterError(f"{name}={sr!r} is not a sample rate: use a positive integer (Hz)")
    return int(sr)


def open_audio(path: str | os.PathLike[str]) -> IO[bytes]:
    """Open an audio file for reading, with an error that names it and the real cause.

    soundfile opens files by name through libsndfile, which reports a file
    it may not read as "System error." and cannot open a name holding bytes
    that are not UTF-8. Opening the file here and handing soundfile the file
    object gives both cases a plain answer.

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    binary file object
        Open for reading; close it (``with open_audio(path) as f: ...``).

    Raises
    ------
    AudioError
        When the file does not exist, is a folder, or cannot be opened
        ("permission denied", ...); the message names the file.
    """
    shown = display_path(path)
    try:
        return open(path, "rb")  # the caller closes it
    except FileNotFoundError as err:
        raise AudioError(
            f"{shown}: no such file; check the path (asdflow.data.scan lists clips)."
        ) from err
    except IsADirectoryError as err:
        raise AudioError(f"{shown}: is a folder, not an audio file; remove or rename it.") from err
    except PermissionError as err:
        raise AudioError(
            f"{shown}: cannot be read: permission denied; give your user read permission "
            f"(chmod u+r {shown}) or remove the file."
        ) from err
    except OSError as err:
        raise AudioError(f"{shown}: cannot be read: {err.strerror or err}.") from err


def load_audio(path: str | os.PathLike[str], *, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Read an audio file as a mono float32 signal at ``sr`` Hz.

    Parameters
    ----------
    path : str or Path
        A file soundfile can read (WAV, FLAC, ...).
    sr : int
        Sample rate wanted, in Hz. A file at another rate is resampled with
        :func:`librosa.resample` and a warning names the file and both rates.

    Returns
    -------
    np.ndarray [shape=(n,), dtype=float32]
        The samples, in [-1, 1] for integer files. Several channels are
        averaged into one.

    Raises
    ------
    AudioError
        When the file is missing, a folder, unreadable (the message says why,
        e.g. "permission denied"), not audio, holds no samples, or holds NaN
        or infinite values; the message names the file.
    ParameterError
        When ``sr`` is not a positive integer.
    """
    check_sample_rate(sr)
    path = Path(path)
    with open_audio(path) as file:
        try:
            y, file_sr = sf.read(file, dtype="float32", always_2d=True)
        except (sf.SoundFileError, RuntimeError, OSError) as err:
            reason = getattr(err, "error_string", None) or str(err)
            raise AudioError(
                f"{display_path(path)}: cannot be read as audio ({reason}); the file is damaged "
                "or not a sound file. Delete it or download it again."
            ) from err
    if y.shape[0] == 0:
        raise AudioError(
            f"{display_path(path)}: holds no samples (empty audio). Delete or replace the file."
        )
    if not np.all(np.isfinite(y)):
        bad = int(np.count_nonzero(~np.isfinite(y)))
        raise AudioError(
            f"{display_path(path)}: holds {bad} NaN or infinite sample value(s). Replace the file."
        )
    y = y.mean(axis=1) if y.shape[1] > 1 else y[:, 0]
    if file_sr != sr:
        warnings.warn(
            f"{display_path(path)}: sample rate is {file_sr} Hz, not {sr} Hz; "
            f"resampled to {sr} Hz.",
            stacklevel=2,
        )
        y = librosa.resample(y, orig_sr=file_sr, target_sr=sr)
    return np.ascontiguousarray(y, dtype=np.float32)


def _natural(text: str) -> tuple[int, float, str]:
    """Sort key putting numbers in numeric order before other strings."""
    try:
        return (0, float(text), text)
    except ValueError:
        return (1, 0.0, text)


def describe(root: str | os.PathLike[str], *, clips: list[Clip] | None = None) -> str:
    """A text table of the clips under a data root.

    Parameters
    ----------
    root : str or Path
        Data root, as for :func:`scan`.
    clips : list of Clip, optional
        Describe these clips instead of scanning the root again.

    Returns
    -------
    str
        One row per machine type, set and split with the number of clips per
        domain and label, then the attribute values seen per machine type.
    """
    if clips is None:
        clips = scan(root)
    columns = [
        ("source", "normal"),
        ("source", "anomaly"),
        ("target", "normal"),
        ("target", "anomaly"),
        ("unknown", "unknown"),
    ]
    header = ["machine", "set", "split"] + [
        "unknown" if d == "unknown" else f"{d} {lab}" for d, lab in columns
    ]
    counts: dict[tuple[str, str, str], Counter[tuple[str, str]]] = {}
    values: dict[str, dict[str, set[str]]] = {}
    for clip in clips:
        key = (clip.machine, clip.dataset, clip.split)
        counts.setdefault(key, Counter())[clip.domain, clip.label] += 1
        for name, value in clip.attributes.items():
            values.setdefault(clip.machine, {}).setdefault(name, set()).add(value)
    rows = [header]
    for key in sorted(counts):
        rows.append([*key, *(str(counts[key][c]) for c in columns)])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [f"{len(clips)} clips under {display_path(short_path(root))}"]
    lines += [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    if values:
        lines.append("attributes:")
    for machine in sorted(values):
        pairs = "; ".join(
            f"{name}={','.join(sorted(vals, key=_natural))}"
            for name, vals in sorted(values[machine].items())
        )
        lines.append(f"  {machine}: {pairs}")
    return "\n".join(lines)
