"""A toy factory: synthetic machine sounds in the DCASE 2024 Task 2 layout.

Real machine recordings are large, slow to download and cannot be shown
in small pieces. This module *builds* machine sounds from the physics of
three machine types, so that the whole pipeline can be taught, tested and
run on a laptop: a ``fan`` (blade tones over airflow noise), a ``bearing``
(rolling noise; a spalled race adds a train of impacts) and a ``valve``
(clicks and flow noise on a schedule), each with two faults
(:data:`ANOMALIES`). The sound models and their signal building blocks
are in :mod:`asdflow.sounds`; their names are importable from here too.
This module draws the operating conditions and faults of each clip and
writes whole data sets.

Each machine type has two *domains*, as in DCASE 2024 Task 2: the
*source* domain, with many training clips, and the *target* domain, with
few, which differ in one operating condition: the fan's speed, the
bearing's load, the valve's background noise. The condition is written in
the clip name and in ``attributes_00.csv``, exactly like the real data.

Signals are generated at :data:`~asdflow.data.SAMPLE_RATE` (16 kHz) in
arbitrary pressure units, scaled by a fixed gain per machine type (so a
louder fault is louder in the file) and written as 16-bit WAV files.

Use :func:`generate_clip` to get one clip as an array (for plots and
listening), :func:`make_factory` to write a whole data set, and
:data:`QUICK_FACTORY` for the small set used by quick mode and the tests.

Examples
--------
>>> from asdflow import synth
>>> y, attributes = synth.generate_clip("fan", domain="source", anomaly="imbalance",
...                                     severity=1.0, seconds=1.0, seed=0)
>>> y.shape, y.dtype
((16000,), dtype('float32'))
"""

from __future__ import annotations

import io
import json
import math
import os
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import numpy as np
import soundfile as sf
from tqdm.auto import tqdm

from asdflow.data import ATTRIBUTES_FILE
from asdflow.errors import AsdflowError, ParameterError
from asdflow.files import atomic_write, folder_lock, remove_leftovers, writable_folder
from asdflow.sounds import (
    ANOMALIES,
    BEARING_BALLS,
    BEARING_MODES,
    BEARING_RATIO,
    FAN_BLADES,
    GENERATORS,
    MAX_SECONDS,
    SR,
    VALVE_BACKGROUND,
    VALVE_PROGRAMS,
    _n_samples,
    band,
    bearing_defect_frequencies,
    bearing_sound,
    coloured_noise,
    factory_background,
    fan_sound,
    impulses,
    periodic_from_orders,
    pink,
    resonate,
    shaft_phase,
    valve_sound,
)

if TYPE_CHECKING:
    from tqdm import tqdm

__all__ = [
    "ANOMALIES",
    "BEARING_BALLS",
    "BEARING_MODES",
    "BEARING_RATIO",
    "CONDITIONS",
    "FAN_BLADES",
    "GAIN",
    "GENERATORS",
    "GENERATOR_VERSION",
    "MACHINES",
    "MARKER",
    "MARKER_FORMAT",
    "MAX_SECONDS",
    "NUMERIC_RANGES",
    "QUICK_FACTORY",
    "SEVERITY_RANGE",
    "SIZE_KEYS",
    "SR",
    "VALVE_BACKGROUND",
    "VALVE_PROGRAMS",
    "band",
    "bearing_defect_frequencies",
    "bearing_sound",
    "clip_name",
    "coloured_noise",
    "factory_background",
    "fan_sound",
    "generate_clip",
    "impulses",
    "make_factory",
    "periodic_from_orders",
    "pink",
    "resonate",
    "shaft_phase",
    "valve_sound",
]

GENERATOR_VERSION = 2
"""Bumped whenever the generated sounds change, so that cached factories are rebuilt."""

MACHINES = ("fan", "bearing", "valve")
"""The machine types this module can generate."""

CONDITIONS: dict[str, dict[str, dict[str, tuple[str, ...]]]] = {
    "fan": {
        "source": {"rpm": ("1200", "1500"), "mic": ("A", "B")},
        "target": {"rpm": ("2100",), "mic": ("A", "B")},
    },
    "bearing": {
        "source": {"vel": ("600", "900", "1200"), "load": ("20", "40")},
        "target": {"vel": ("600", "900", "1200"), "load": ("80",)},
    },
    "valve": {
        "source": {"pat": ("A", "B"), "bg": ("low",)},
        "target": {"pat": ("A", "B"), "bg": ("high",)},
    },
}
"""Operating conditions per machine type and domain: attribute name -> possible values.

A clip draws one value per attribute, uniformly. The domains differ in one
attribute (fan: ``rpm``, shaft speed in revolutions per minute; bearing:
``load``, radial load in % of the rated load; valve: ``bg``, the level of
the factory background noise) and share the other (fan: ``mic``, microphone
position; bearing: ``vel``, shaft speed in rpm; valve: ``pat``, the
open/close program).
"""

SEVERITY_RANGE = (0.0, 1.0)
"""Range of the per-clip fault severity: 0 is a barely audible fault, 1 an evident one."""

GAIN = {"fan": 0.12, "bearing": 0.35, "valve": 0.35}
"""Fixed gain per machine type from pressure units to file units (normal clips peak at about 0.15-0.6)."""

QUICK_FACTORY: dict[str, Any] = {
    "machines": MACHINES,
    "n_train_source": 40,
    "n_train_target": 4,
    "n_test_per_domain": 10,
    "seconds": 2.0,
}
"""Sizes of the small factory of quick mode and the tests: ``make_factory(dest, **QUICK_FACTORY)``.

Per machine type: 40 source and 4 target training clips (all normal) and,
per domain, 10 normal and 10 anomalous test clips, each 2 s long.
"""

MARKER = "asdflow-synth.json"
"""File in the data root that records, per machine type, the settings, the files written and whether the run finished."""

MARKER_FORMAT = 2
"""Version of the marker's content; format 1 recorded one set of settings for all machine types."""

NUMERIC_RANGES: dict[str, tuple[float, float]] = {
    "rpm": (1.0, 60000.0),
    "vel": (1.0, 60000.0),
    "load": (0.0, 500.0),
}
"""Allowed range of the numeric attributes (fan ``rpm``, bearing ``vel`` and ``load``)."""

SIZE_KEYS = ("n_train_source", "n_train_target", "n_test_per_domain", "seconds", "seed")
"""The settings of :func:`make_factory` that the marker records per machine type."""


# ---------------------------------------------------------------------------
# Operating conditions of a clip
# ---------------------------------------------------------------------------

_NUMERIC = {"fan": ("rpm",), "bearing": ("vel", "load"), "valve": ()}


def _draw_attributes(
    machine: str, domain: str, rng: np.random.Generator, chosen: Mapping[str, str]
) -> dict[str, str]:
    """Draw the operating conditions of one clip, the first use of its generator.

    One value per attribute is drawn even when ``chosen`` fixes it, so that a
    clip's other draws do not depend on what was fixed.
    """
    drawn = {}
    for name, values in CONDITIONS[machine][domain].items():
        value = values[rng.integers(len(values))]
        drawn[name] = chosen.get(name, value)
    return drawn


# ---------------------------------------------------------------------------
# One clip
# ---------------------------------------------------------------------------


def generate_clip(
    machine: str,
    *,
    domain: str = "source",
    anomaly: bool | str = False,
    severity: float | None = None,
    attributes: Mapping[str, str] | None = None,
    seconds: float = 10.0,
    seed: int | np.random.Generator | None = None,
) -> tuple[np.ndarray, dict[str, str]]:
    """Generate one clip of a machine type, as written to the files.

    Parameters
    ----------
    machine : {"fan", "bearing", "valve"}
        Machine type.
    domain : {"source", "target"}
        Draws the operating conditions from :data:`CONDITIONS` of this domain.
    anomaly : bool or str
        False for a normal clip; True for a fault drawn from :data:`ANOMALIES`;
        or the name of a fault, e.g. ``"imbalance"``.
    severity : float, optional
        Fault severity in [0, 1]; drawn uniformly from :data:`SEVERITY_RANGE`
        when None. Ignored for normal clips.
    attributes : mapping, optional
        Fix some operating conditions, e.g. ``{"rpm": "1500"}``; the others
        are drawn. Values are strings, as in clip names; numeric ones (fan
        ``rpm``, bearing ``vel`` and ``load``) may lie outside
        :data:`CONDITIONS`, e.g. ``{"rpm": "1800"}``.
    seconds : float
        Duration in seconds.
    seed : int or np.random.Generator, optional
        Seed or generator; the same seed gives the same clip.

    Returns
    -------
    y : np.ndarray [shape=(round(seconds * 16000),), dtype=float32]
        The clip at 16 kHz, scaled by :data:`GAIN` and within [-0.99, 0.99].
    attributes : dict
        The operating conditions, e.g. ``{"rpm": "1500", "mic": "A"}``.
    """
    if machine not in GENERATORS:
        raise ParameterError(f"machine={machine!r} is not one of {', '.join(GENERATORS)}")
    if domain not in ("source", "target"):
        raise ParameterError(f"domain={domain!r} is not 'source' or 'target'")
    _n_samples(seconds)
    rng = np.random.default_rng(seed)
    chosen = dict(attributes or {})
    unknown = set(chosen) - set(CONDITIONS[machine][domain])
    if unknown:
        raise ParameterError(
            f"{machine} has no attribute(s) {sorted(unknown)}; "
            f"its attributes are {sorted(CONDITIONS[machine][domain])}"
        )
    drawn = _draw_attributes(machine, domain, rng, chosen)
    kind: str | None = None
    if anomaly is True:
        kind = ANOMALIES[machine][rng.integers(len(ANOMALIES[machine]))]
    elif anomaly:
        kind = str(anomaly)
        if kind not in ANOMALIES[machine]:
            raise ParameterError(f"{machine} anomaly {kind!r} is not one of {ANOMALIES[machine]}")
    level = rng.uniform(*SEVERITY_RANGE)
    if severity is not None:
        if not SEVERITY_RANGE[0] <= severity <= SEVERITY_RANGE[1]:
            raise ParameterError(f"severity={severity} is outside the allowed range [0, 1]")
        level = severity
    options: dict[str, Any] = dict(drawn)
    for name, value in drawn.items():
        if name in _NUMERIC[machine]:
            low, high = NUMERIC_RANGES[name]
            try:
                number = float(value)
            except ValueError:
                number = math.nan
            if not low <= number <= high:  # also refuses nan
                raise ParameterError(
                    f"{machine} attribute {name}={value!r} is not a number in the allowed "
                    f"range [{low:g}, {high:g}]"
                )
            options[name] = number
        else:
            known = {v for d in CONDITIONS[machine].values() for v in d[name]}
            if value not in known:
                raise ParameterError(
                    f"{machine} attribute {name}={value!r} is not one of {sorted(known)}"
                )
    y = GENERATORS[machine](seconds, anomaly=kind, severity=level, rng=rng, **options)
    y = GAIN[machine] * y
    peak = float(np.max(np.abs(y)))
    if peak > 0.99:
        y *= 0.99 / peak
    return y.astype(np.float32), drawn


# ---------------------------------------------------------------------------
# A whole factory on disk
# ---------------------------------------------------------------------------


def clip_name(
    domain: str, split: str, label: str, number: int, attributes: Mapping[str, str]
) -> str:
    """The DCASE 2024 file name of a clip, e.g. ``section_00_source_train_normal_0000_rpm_1500_mic_A.wav``."""
    tail = "_".join(f"{k}_{v}" for k, v in attributes.items()) or "noAttribute"
    return f"section_00_{domain}_{split}_{label}_{number:04d}_{tail}.wav"


def _plan(
    n_train_source: int, n_train_target: int, n_test_per_domain: int
) -> list[tuple[str, str, str, int]]:
    """Every clip of one machine type: (split, domain, label, number)."""
    jobs = [("train", "source", "normal", i) for i in range(n_train_source)]
    jobs += [("train", "target", "normal", i) for i in range(n_train_target)]
    for domain in ("source", "target"):
        for label in ("normal", "anomaly"):
            jobs += [("test", domain, label, i) for i in range(n_test_per_domain)]
    return jobs


def _clip_seed(
    seed: int, machine: str, split: str, domain: str, label: str, number: int
) -> list[int]:
    """Entropy of one clip: independent of the sizes, so a clip is the same in any factory."""
    codes = [zlib.crc32(s.encode()) for s in (machine, split, domain, label)]
    return [seed, *codes, number]


def _wav_bytes(y: np.ndarray) -> bytes:
    """A 16-bit PCM WAV file at :data:`SR`, encoded in memory."""
    buffer = io.BytesIO()
    sf.write(buffer, y, SR, subtype="PCM_16", format="WAV")
    return buffer.getvalue()


def _planned_files(machine: str, settings: Mapping[str, Any]) -> list[str]:
    """The files :func:`make_factory` writes for one machine type, relative to its folder.

    The clip names follow from the settings alone: each clip's attributes are
    the first draws of its own generator (see :func:`_clip_seed`).
    """
    files = []
    for split, domain, label, number in _plan(
        int(settings["n_train_source"]),
        int(settings["n_train_target"]),
        int(settings["n_test_per_domain"]),
    ):
        seed = _clip_seed(int(settings["seed"]), machine, split, domain, label, number)
        attributes = _draw_attributes(machine, domain, np.random.default_rng(seed), {})
        files.append(f"{split}/{clip_name(domain, split, label, number, attributes)}")
    return [*files, ATTRIBUTES_FILE]


def _own_file(entry: object) -> bool:
    """True for a marker entry that names a file :func:`make_factory` writes (nothing else is ever deleted)."""
    if not isinstance(entry, str):
        return False
    parts = PurePosixPath(entry).parts
    if parts == (ATTRIBUTES_FILE,):
        return True
    return len(parts) == 2 and parts[0] in ("train", "test") and parts[1].endswith(".wav")


def _recorded_files(machine: str, record: Mapping[str, Any]) -> set[str]:
    """The files a machine's record says :func:`make_factory` wrote.

    Format 1 markers did not list them: they are rebuilt from the recorded
    settings (empty when those are unusable).
    """
    files = record.get("files")
    if isinstance(files, list):
        return {f for f in files if _own_file(f)}
    try:
        return set(_planned_files(machine, record))
    except (KeyError, TypeError, ValueError):
        return set()


def _read_records(dest: Path) -> dict[str, dict]:
    """Per machine type, what the marker in ``dest`` records (empty without a readable marker)."""
    try:
        content = json.loads((dest / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(content, dict):
        return {}
    machines = content.get("machines")
    if content.get("format") == MARKER_FORMAT and isinstance(machines, dict):
        return {m: dict(r) for m, r in machines.items() if m in GENERATORS and isinstance(r, dict)}
    if isinstance(machines, list):  # format 1: one set of settings for all machine types
        record = {k: content.get(k) for k in ("generator_version", *SIZE_KEYS)}
        record["complete"] = content.get("complete") is True
        return {m: dict(record) for m in machines if m in GENERATORS}
    return {}


def _write_records(dest: Path, records: Mapping[str, Mapping[str, Any]]) -> None:
    content = {"format": MARKER_FORMAT, "machines": {m: records[m] for m in sorted(records)}}
    atomic_write(dest / MARKER, json.dumps(content, indent=1) + "\n")


def _differences(record: Mapping[str, Any], settings: Mapping[str, Any]) -> list[str]:
    """The settings in which ``record`` differs from ``settings``, as ``"name=recorded, not asked"``."""
    return [
        f"{key}={record.get(key)!r} instead of {settings[key]!r}"
        for key in SIZE_KEYS
        if record.get(key) != settings[key]
    ]


def _finished(
    machine: str, record: Mapping[str, Any], settings: Mapping[str, Any], folder: Path
) -> bool:
    """True when ``record`` is a finished run of this generator with ``settings`` whose files are all there."""
    return (
        record.get("complete") is True
        and record.get("generator_version") == GENERATOR_VERSION
        and not _differences(record, settings)
        and all((folder / f).is_file() for f in _recorded_files(machine, record))
    )


def _in_the_way(folder: Path, files: Iterable[str]) -> str | None:
    """A path that keeps the clips from being written into ``folder`` without deleting it, or None."""
    for path in (folder.parent, folder, folder / "train", folder / "test"):
        if os.path.lexists(path) and not path.is_dir():
            return f"{path} is a file where a folder must be"
    for name in files:
        if (folder / name).is_dir():
            return f"{folder / name} is a folder where a clip file must be"
    return None


def _remove_own(folder: Path, name: str) -> None:
    """Delete a file an earlier run wrote and this one does not (an old clip), never anything else."""
    path = folder / name
    if (
        _own_file(name)
        and path.is_file()
        and not path.is_symlink()
        and folder.resolve() in path.resolve().parents
    ):
        path.unlink()


def make_factory(
    dest: str | os.PathLike[str],
    *,
    machines: Iterable[str] = MACHINES,
    n_train_source: int = 990,
    n_train_target: int = 10,
    n_test_per_domain: int = 50,
    seconds: float = 10.0,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Write a synthetic factory in the DCASE 2024 Task 2 development-set layout.

    Writes ``<dest>/dev_data/raw/<machine>/train/*.wav``,
    ``<dest>/dev_data/raw/<machine>/test/*.wav`` and
    ``<dest>/dev_data/raw/<machine>/attributes_00.csv`` with DCASE names
    (:func:`clip_name`). The marker file :data:`MARKER` in ``dest`` records,
    per machine type, the settings, the files written and whether the run
    finished. The defaults give the DCASE sizes (990 + 10 training clips,
    50 + 50 test clips per domain, 10 s: about 380 MB per machine type); see
    :data:`QUICK_FACTORY` for a small set.

    Only the machine types asked for are touched; the folders of the others
    stay as they are. For each machine type asked for:

    - a finished run with the same settings whose files are all there is
      skipped (nothing is written);
    - an interrupted run, missing files or clips of an older generator
      version are generated again;
    - a finished run with other settings is regenerated only with
      ``overwrite=True`` (otherwise nothing is changed and an error names the
      differing settings); its clips that the new settings do not have are
      deleted;
    - a folder this function did not write is written into only with
      ``overwrite=True``.

    Files this function did not write (notes, the user's own recordings) are
    never deleted.

    Each clip is generated from its own seed, derived from ``seed`` and its
    machine, split, domain, label and number, so a clip does not depend on
    the sizes asked for.

    Parameters
    ----------
    dest : str or Path
        Data root to write into (created if needed).
    machines : iterable of str
        Machine types, from :data:`MACHINES`.
    n_train_source, n_train_target : int
        Normal training clips per machine type in the source and target domain.
    n_test_per_domain : int
        Test clips per machine type, domain and label (normal and anomaly each).
    seconds : float
        Clip duration, from 2 samples to :data:`MAX_SECONDS`.
    seed : int
        Non-negative seed of the whole factory.
    overwrite : bool
        Regenerate even a finished run with the same settings, regenerate a
        machine type recorded with other settings, and write into machine
        folders that this function did not write.
    progress : bool
        Show a progress bar.

    Returns
    -------
    Path
        ``dest``, the data root to pass to :func:`asdflow.data.scan`.

    Raises
    ------
    ParameterError
        For an unknown machine type, a size or seed that is not a whole
        number >= 0, a duration out of range, or a ``dest`` that is a file,
        lies under a file or cannot be written to.
    AsdflowError
        When, without ``overwrite``, a machine folder exists that this
        function did not write or that holds clips made with other settings,
        or when a file is in the way of the clips; nothing is changed then.
    BusyError
        When another process is writing into ``<dest>/dev_data``.
    """
    machines = tuple(dict.fromkeys(machines))
    for machine in machines:
        if machine not in GENERATORS:
            raise ParameterError(f"machine {machine!r} is not one of {', '.join(GENERATORS)}")
    for name, value in (
        ("n_train_source", n_train_source),
        ("n_train_target", n_train_target),
        ("n_test_per_domain", n_test_per_domain),
        ("seed", seed),
    ):
        try:
            whole = not isinstance(value, bool) and float(value) == int(value) and value >= 0
        except (TypeError, ValueError, OverflowError):  # None, "3", nan, inf
            whole = False
        if not whole:
            raise ParameterError(f"{name}={value!r} must be a whole number >= 0")
    _n_samples(seconds)
    settings: dict[str, Any] = {
        "n_train_source": int(n_train_source),
        "n_train_target": int(n_train_target),
        "n_test_per_domain": int(n_test_per_domain),
        "seconds": float(seconds),
        "seed": int(seed),
    }
    dest = writable_folder(dest, "synth destination")
    raw = dest / "dev_data" / "raw"
    with folder_lock(dest / "dev_data", "data folder"):
        remove_leftovers(dest)
        records = _read_records(dest)
        todo: list[str] = []
        refused: list[str] = []
        for machine in machines:
            folder = raw / machine
            record = records.get(machine)
            if record is None:
                if os.path.lexists(folder) and not overwrite:
                    refused.append(
                        f"{folder} already holds files not written by asdflow.synth (no "
                        f"record in {dest / MARKER}); choose another folder, or pass "
                        "--overwrite (overwrite=True) to write the clips into it (its other "
                        "files are kept)"
                    )
                    continue
            elif not overwrite and _finished(machine, record, settings, folder):
                continue
            elif not overwrite and record.get("complete") is True:
                differences = _differences(record, settings)
                if differences:
                    refused.append(
                        f"{folder} holds {machine} clips made with other settings "
                        f"({', '.join(differences)}); pass --overwrite (overwrite=True) to "
                        f"regenerate {machine}, or choose another folder"
                    )
                    continue
            todo.append(machine)
        plans = {m: _planned_files(m, settings) for m in todo}
        for machine in todo:
            problem = _in_the_way(raw / machine, plans[machine])
            if problem:
                refused.append(f"{problem}; move or rename it and run again")
        if refused:
            raise AsdflowError(
                f"{refused[0]}"
                + (f" (and {len(refused) - 1} more problem(s))" if len(refused) > 1 else "")
                + "; nothing was changed"
            )
        n_clips = sum(len(plan) - 1 for plan in plans.values())
        with tqdm(total=n_clips, desc="synth", unit="clip", disable=not progress) as bar:
            for machine in todo:
                _write_machine(dest, machine, settings, plans[machine], records, bar)
    return dest


def _write_machine(
    dest: Path,
    machine: str,
    settings: Mapping[str, Any],
    files: list[str],
    records: dict[str, dict],
    bar: tqdm,
) -> None:
    """Generate one machine type's clips and attribute table, keeping the marker right at every step.

    Before the first clip, the record lists the files of the earlier run and
    of this one, marked unfinished; after the last, the earlier run's files
    this one did not replace are deleted and the record lists this run's
    files, marked finished.
    """
    folder = dest / "dev_data" / "raw" / machine
    previous = records.get(machine)
    old = _recorded_files(machine, previous) if previous is not None else set()
    record = {"generator_version": GENERATOR_VERSION, **settings}
    records[machine] = {**record, "complete": False, "files": sorted(old | set(files))}
    _write_records(dest, records)
    for split in ("train", "test"):
        (folder / split).mkdir(parents=True, exist_ok=True)
        remove_leftovers(folder / split)
    remove_leftovers(folder)

    rows = []
    seed = int(settings["seed"])
    jobs = _plan(
        int(settings["n_train_source"]),
        int(settings["n_train_target"]),
        int(settings["n_test_per_domain"]),
    )
    for (split, domain, label, number), planned in zip(jobs, files, strict=False):
        rng = np.random.default_rng(_clip_seed(seed, machine, split, domain, label, number))
        y, attributes = generate_clip(
            machine,
            domain=domain,
            anomaly=label == "anomaly",
            seconds=float(settings["seconds"]),
            seed=rng,
        )
        name = clip_name(domain, split, label, number, attributes)
        if f"{split}/{name}" != planned:  # _planned_files must follow generate_clip's draws
            raise AsdflowError(f"internal error: clip {name} was planned as {planned}")
        atomic_write(folder / split / name, _wav_bytes(y))
        row = [f"{machine}/{split}/{name}"]
        for key, value in attributes.items():
            row += [key, value]
        rows.append(row)
        bar.update()
    width = max(len(row) for row in rows) if rows else 1
    header = ["file_name"]
    for i in range(1, (width - 1) // 2 + 1):
        header += [f"d{i}p", f"d{i}v"]
    lines = [",".join(header)] + [",".join(row) for row in sorted(rows)]
    atomic_write(folder / ATTRIBUTES_FILE, "\n".join(lines) + "\n")

    for name in sorted(old - set(files)):
        _remove_own(folder, name)
    records[machine] = {**record, "complete": True, "files": sorted(files)}
    _write_records(dest, records)
