"""Hostile input to the feature pipeline: stale caches, odd paths, bad numbers, unreadable files.

Each test names the situation, asserts the error class and what its message
says (the file and the fix) or the right result, and that nothing already
there was lost. Permission tests run for real where the user is not root and
are simulated with monkeypatch otherwise (root reads every file).
"""

from __future__ import annotations

import builtins
import errno
import os
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile

from asdflow import data, features, files, modes
from asdflow.cli import main
from asdflow.errors import AudioError, LayoutError, ParameterError
from asdflow.features import FeatureConfig, RowStats, extract, feature_image

SR = 16000
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
needs_non_root = pytest.mark.skipif(IS_ROOT, reason="root reads and writes every file")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(31)


def _noise(rng: np.random.Generator, n: int = 4000) -> np.ndarray:
    return (0.1 * rng.standard_normal(n)).astype(np.float32)


def _write(path: Path, y: np.ndarray) -> Path:
    """Write a float WAV file (through a file object: soundfile cannot open non-UTF-8 names)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as file:
        soundfile.write(file, y, SR, subtype="FLOAT", format="WAV")
    return path


def _layout(root: Path, rng: np.random.Generator) -> Path:
    """A two-clip DCASE layout (machine "fan") under ``root``; returns the machine folder."""
    folder = root / "dev_data" / "raw" / "fan"
    _write(folder / "train" / "section_00_source_train_normal_0001_noAttribute.wav", _noise(rng))
    _write(folder / "test" / "section_00_source_test_normal_0001_noAttribute.wav", _noise(rng))
    return folder


def _cli_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Run the CLI, check it failed with exit code 2 and one error line; return that line."""
    assert main(argv) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(f"asdflow {argv[0]}: error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], lines
    assert "Traceback" not in "\n".join(lines)
    return errors[0]


def _entries(cache: Path) -> list[Path]:
    return sorted(cache.glob("*.npy"))


@pytest.fixture
def count_computations(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    original = features.feature_image

    def counting(y, config=None):
        calls.append(len(y))
        return original(y, config)

    monkeypatch.setattr(features, "feature_image", counting)
    return calls


# -- 1. the cache key is the content -------------------------------------------------


def test_same_size_same_mtime_edit_is_recomputed(tmp_path, rng, count_computations) -> None:
    clip = _write(tmp_path / "clip.wav", _noise(rng))
    cache = tmp_path / "cache"
    before = extract([clip], cache=cache, n_jobs=1, progress=False)[0]
    stat = clip.stat()
    new = _noise(rng)
    _write(clip, new)  # same length and format: same size
    os.utime(clip, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # touch -r: same mtime
    assert (clip.stat().st_size, clip.stat().st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)
    after = extract([clip], cache=cache, n_jobs=1, progress=False)[0]
    assert len(count_computations) == 2
    assert not np.array_equal(before, after)
    np.testing.assert_array_equal(after, feature_image(new))
    assert len(_entries(cache)) == 2  # the old entry is kept, the new one added


def test_file_digest_follows_the_bytes_not_the_name(tmp_path, rng) -> None:
    clip = _write(tmp_path / "a.wav", _noise(rng))
    copy = tmp_path / "b.wav"
    copy.write_bytes(clip.read_bytes())
    digest = features.file_digest(clip)
    assert len(digest) == 32 and int(digest, 16) >= 0
    assert features.file_digest(copy) == digest
    assert features.cache_key(copy, FeatureConfig()) == features.cache_key(clip, FeatureConfig())
    copy.write_bytes(clip.read_bytes()[:-1] + b"\x01")
    assert features.file_digest(copy) != digest
    assert features.cache_key(clip, FeatureConfig(n_mels=64)) != features.cache_key(
        clip, FeatureConfig()
    )


def test_file_digest_of_a_missing_file_names_it(tmp_path) -> None:
    with pytest.raises(AudioError, match=r"gone\.wav: no such file"):
        features.file_digest(tmp_path / "gone.wav")


# -- 2. the cache folder ---------------------------------------------------------------


def test_asdflow_cache_on_a_file_is_one_line(tmp_path, rng, monkeypatch, capsys) -> None:
    _layout(tmp_path / "data", rng)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("I am a file")
    monkeypatch.setenv("ASDFLOW_CACHE", str(blocker))
    line = _cli_error(capsys, ["features", str(tmp_path / "data"), "--jobs", "1"])
    assert "ASDFLOW_CACHE" in line and str(blocker) in line and "is a file" in line
    assert blocker.read_text() == "I am a file"  # untouched
    monkeypatch.setenv("ASDFLOW_CACHE", str(blocker / "below"))
    with pytest.raises(ParameterError, match=r"ASDFLOW_CACHE=.*below.*lies under .*not-a-folder"):
        modes.cache_dir()


def test_cache_argument_on_a_file_is_a_parameter_error(tmp_path, rng) -> None:
    clip = _write(tmp_path / "clip.wav", _noise(rng))
    blocker = tmp_path / "cache.npy"
    blocker.write_bytes(b"x")
    with pytest.raises(ParameterError, match=r"feature cache .*cache\.npy.*is a file"):
        extract([clip], cache=blocker, n_jobs=1, progress=False)
    assert blocker.read_bytes() == b"x"


@pytest.fixture
def two_clips(tmp_path: Path, rng: np.random.Generator) -> list[Path]:
    return [_write(tmp_path / f"clip{i}.wav", _noise(rng)) for i in range(2)]


def _check_read_only_cache(cache: Path, two_clips: list[Path], calls: list[int]) -> None:
    """Extract both clips from a read-only cache holding the first one's image."""
    with pytest.warns(UserWarning) as record:
        images = extract(two_clips, cache=cache, n_jobs=1, progress=False)
    notes = [str(w.message) for w in record if "feature cache" in str(w.message)]
    assert len(notes) == 1, notes
    assert str(cache) in notes[0] and "not writable (permission denied)" in notes[0]
    assert len(calls) == 2  # the cached image was read, only the second one computed
    assert len(_entries(cache)) == 1  # nothing written
    np.testing.assert_array_equal(
        images[1], feature_image(soundfile.read(two_clips[1], dtype="float32")[0])
    )


def test_read_only_cache_still_serves_and_computes_simulated(
    tmp_path, two_clips, monkeypatch, count_computations
) -> None:
    cache = tmp_path / "cache"
    extract(two_clips[:1], cache=cache, n_jobs=1, progress=False)
    real_access = os.access
    monkeypatch.setattr(
        features.os,
        "access",
        lambda path, mode, **kw: False if Path(path) == cache else real_access(path, mode, **kw),
    )
    _check_read_only_cache(cache, two_clips, count_computations)


@needs_non_root
def test_read_only_cache_still_serves_and_computes(tmp_path, two_clips, count_computations) -> None:
    cache = tmp_path / "cache"
    extract(two_clips[:1], cache=cache, n_jobs=1, progress=False)
    cache.chmod(0o555)
    try:
        _check_read_only_cache(cache, two_clips, count_computations)
    finally:
        cache.chmod(0o755)


@needs_non_root
def test_cache_that_cannot_be_created_warns_once(tmp_path, two_clips) -> None:
    parent = tmp_path / "locked"
    parent.mkdir(mode=0o555)
    try:
        with pytest.warns(UserWarning, match=r"locked/features cannot be created \(permission"):
            images = extract(two_clips, cache=parent / "features", n_jobs=1, progress=False)
    finally:
        parent.chmod(0o755)
    assert len(images) == 2 and not (parent / "features").exists()


def test_cache_entry_that_is_a_folder_is_recomputed(tmp_path, two_clips) -> None:
    cache = tmp_path / "cache"
    key = features.cache_key(two_clips[0], FeatureConfig())
    blocker = cache / f"{key}.npy"
    blocker.mkdir(parents=True)
    (blocker / "keep.txt").write_text("mine")
    with pytest.warns(UserWarning, match=r"1 of 2 feature images could not be written.*folder"):
        images = extract(two_clips, cache=cache, n_jobs=1, progress=False)
    expected = feature_image(soundfile.read(two_clips[0], dtype="float32")[0])
    np.testing.assert_array_equal(images[0], expected)
    assert (blocker / "keep.txt").read_text() == "mine"  # nothing of the user's removed
    assert len([p for p in _entries(cache) if p.is_file()]) == 1  # the other clip is cached
    assert not list(cache.glob(f".*{files.TEMP_SUFFIX}"))


def test_failed_entry_writes_warn_once_with_the_count(tmp_path, two_clips, monkeypatch) -> None:
    def disk_full(path, content):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(features.files, "atomic_write", disk_full)
    with pytest.warns(UserWarning) as record:
        images = extract(two_clips, cache=tmp_path / "cache", n_jobs=1, progress=False)
    notes = [str(w.message) for w in record]
    assert len(notes) == 1
    assert "2 of 2 feature images could not be written" in notes[0]
    assert "No space left on device" in notes[0] and str(tmp_path / "cache") in notes[0]
    assert len(images) == 2 and all(np.isfinite(image).all() for image in images)


# -- 3. numbers out of range -------------------------------------------------------------


@pytest.mark.parametrize("n_jobs", [0, -2])
def test_n_jobs_below_one_is_refused(two_clips, n_jobs: int) -> None:
    with pytest.raises(ParameterError, match=rf"n_jobs={n_jobs}: --jobs must be at least 1"):
        extract(two_clips, cache=False, n_jobs=n_jobs, progress=False)


@pytest.mark.parametrize("n_jobs", [1.5, "2", True])
def test_n_jobs_that_is_not_an_integer_is_refused(two_clips, n_jobs) -> None:
    with pytest.raises(ParameterError, match="--jobs must be an integer"):
        extract(two_clips, cache=False, n_jobs=n_jobs, progress=False)


def test_cli_jobs_zero_is_one_line(tmp_path, rng, monkeypatch, capsys) -> None:
    _layout(tmp_path / "data", rng)
    monkeypatch.setenv("ASDFLOW_CACHE", str(tmp_path / "cache"))
    line = _cli_error(capsys, ["features", str(tmp_path / "data"), "--jobs", "0"])
    assert "--jobs must be at least 1" in line


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: FeatureConfig(sr=0), r"FeatureConfig\.sr=0 .*positive integer"),
        (lambda: FeatureConfig(n_fft=512.0), r"FeatureConfig\.n_fft=512\.0"),
        (lambda: FeatureConfig(hop_length=True), r"FeatureConfig\.hop_length=True"),
        (lambda: FeatureConfig(n_samples=16000.5), r"n_samples=16000\.5 .*at least n_fft"),
        (lambda: FeatureConfig(n_samples=100), r"n_samples=100 is shorter than one window"),
        (lambda: FeatureConfig().n_frames(-1), r"n_samples=-1 .*0 or more"),
        (lambda: RowStats(floor=-0.1), r"floor=-0\.1 .*from 0 up to"),
        (lambda: RowStats(floor=float("nan")), r"floor=nan"),
        (lambda: RowStats(floor=1.0), r"floor=1\.0"),
        (lambda: features.nominal_length(["x.wav"], sr=0), r"sr=0 .*positive integer"),
        (lambda: data.load_audio("x.wav", sr=-16000), r"sr=-16000 .*positive integer"),
        (lambda: modes.quick_data_root(seed=-1), r"seed=-1 .*0 or more"),
        (lambda: data.machines(".", dataset="add"), r"dataset='add' is not one of dev, eval"),
    ],
)
def test_numbers_out_of_range_are_parameter_errors(make, match: str) -> None:
    with pytest.raises(ParameterError, match=match):
        make()


# -- 4. a file name that is not UTF-8 ----------------------------------------------------


def _bytes_name(folder: Path, name: bytes) -> Path:
    """The path of a file called ``name`` (raw bytes) in ``folder``; skip where impossible."""
    path = Path(os.fsdecode(os.fsencode(folder) + b"/" + name))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    except (OSError, UnicodeError):
        pytest.skip("this file system does not take file names that are not UTF-8")
    path.unlink()
    return path


def test_non_utf8_clip_name_is_skipped_with_a_printable_warning(
    tmp_path, rng, monkeypatch, capsys
) -> None:
    folder = _layout(tmp_path / "data", rng)
    odd = _bytes_name(folder / "train", b"section_00_source_train_normal_0002_a_\xff.wav")
    _write(odd, _noise(rng))
    with pytest.warns(UserWarning, match=r"not valid UTF-8") as record:
        clips = data.scan(tmp_path / "data")
    message = next(str(w.message) for w in record if "UTF-8" in str(w.message))
    assert r"a_\xff.wav" in message and "rename" in message
    message.encode("utf-8")  # printable: no lone surrogates
    assert len(clips) == 2 and odd not in [clip.path for clip in clips]
    # the command line goes on with the other clips and prints nothing unprintable
    monkeypatch.setenv("ASDFLOW_CACHE", str(tmp_path / "cache"))
    with pytest.warns(UserWarning, match="not valid UTF-8"):
        assert main(["features", str(tmp_path / "data"), "--jobs", "1"]) == 0
    captured = capsys.readouterr()
    (captured.out + captured.err).encode("utf-8")
    assert "fan: 2 clips" in captured.out


def test_non_utf8_path_is_extracted_and_named_printably(tmp_path, rng) -> None:
    y = _noise(rng)
    odd = _write(_bytes_name(tmp_path / "audio", b"clip_\xff.wav"), y)
    (image,) = extract([odd], cache=tmp_path / "cache", n_jobs=1, progress=False)
    np.testing.assert_array_equal(image, feature_image(y))
    assert len(_entries(tmp_path / "cache")) == 1
    assert features.nominal_length([odd]) == len(y)
    missing = _bytes_name(tmp_path / "audio", b"gone_\xfe.wav")
    with pytest.raises(AudioError) as raised:
        extract([missing], cache=False, n_jobs=1, progress=False)
    assert r"gone_\xfe.wav: no such file" in str(raised.value)
    str(raised.value).encode("utf-8")


def test_display_path_escapes_only_bad_bytes() -> None:
    assert data.display_path("fan/clip é.wav") == "fan/clip é.wav"
    assert data.display_path(os.fsdecode(b"fan/clip_\xff.wav")) == r"fan/clip_\xff.wav"
    assert data.display_path(b"clip_\xff.wav") == r"clip_\xff.wav"


# -- 5. attributes_00.csv encodings ---------------------------------------------------------


def test_attribute_table_that_is_not_utf8_names_the_file_and_the_fix(tmp_path, rng) -> None:
    folder = _layout(tmp_path, rng)
    table = folder / data.ATTRIBUTES_FILE
    table.write_bytes(
        "file_name,d1p,d1v\nfan/train/section_00_source_train_normal_0001_noAttribute.wav,"
        "lieu,façade\n".encode("latin-1")
    )
    with pytest.raises(LayoutError) as raised:
        data.scan(tmp_path)
    message = str(raised.value)
    assert str(table) in message and "not UTF-8" in message and "save it as UTF-8" in message
    assert "0xe7" in message  # the byte that is wrong


def test_attribute_table_with_a_byte_order_mark_is_read(tmp_path, rng) -> None:
    folder = _layout(tmp_path, rng)
    (folder / data.ATTRIBUTES_FILE).write_text(
        "file_name,d1p,d1v\nfan/train/section_00_source_train_normal_0001_noAttribute.wav,"
        "lieu,façade\n",
        encoding="utf-8-sig",
    )
    assert (folder / data.ATTRIBUTES_FILE).read_bytes().startswith(b"\xef\xbb\xbf")
    train = data.scan(tmp_path, split="train")
    assert [clip.attributes for clip in train] == [{"lieu": "façade"}]


# -- 6. a data folder that cannot be read ----------------------------------------------------


def test_unlistable_data_folder_is_one_line_simulated(tmp_path, rng, monkeypatch, capsys) -> None:
    folder = _layout(tmp_path / "data", rng)
    denied = folder / "train"
    real_listdir = os.listdir

    def listdir(path="."):
        if Path(path) == denied:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_listdir(path)

    monkeypatch.setattr(data.os, "listdir", listdir)
    with pytest.raises(LayoutError, match=rf"{denied}: permission denied.*chmod -R u\+rX"):
        data.scan(tmp_path / "data")
    monkeypatch.setenv("ASDFLOW_CACHE", str(tmp_path / "cache"))
    line = _cli_error(capsys, ["features", str(tmp_path / "data")])
    assert str(denied) in line and "permission denied" in line


@needs_non_root
@pytest.mark.parametrize("which", ["root", "split"])
def test_unreadable_data_folder_is_one_line(tmp_path, rng, capsys, which: str) -> None:
    folder = _layout(tmp_path / "data", rng)
    locked = tmp_path / "data" if which == "root" else folder / "train"
    locked.chmod(0o000)
    try:
        line = _cli_error(capsys, ["features", str(tmp_path / "data")])
    finally:
        locked.chmod(0o755)
    assert "permission denied" in line and str(locked) in line


# -- 7. an audio file that cannot be read -------------------------------------------------------


@pytest.fixture
def deny_reading(monkeypatch: pytest.MonkeyPatch):
    """Make ``open`` refuse the paths put into the returned set, as for a chmod 000 file."""
    denied: set[Path] = set()
    real_open = builtins.open

    def guarded_open(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and Path(file) in denied:
            raise PermissionError(errno.EACCES, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded_open)
    return denied


def test_unreadable_audio_names_the_file_simulated(tmp_path, two_clips, deny_reading) -> None:
    deny_reading.add(two_clips[1])
    pattern = r"clip1\.wav: cannot be read: permission denied"
    with pytest.raises(AudioError, match=pattern):
        data.load_audio(two_clips[1])
    with pytest.raises(AudioError, match=pattern):  # the content hash of the cache key
        extract(two_clips, cache=tmp_path / "cache", n_jobs=1, progress=False)
    with pytest.raises(AudioError, match=pattern):
        extract(two_clips, cache=False, n_jobs=1, progress=False)
    with pytest.raises(AudioError, match=pattern):
        features.nominal_length(two_clips)


@needs_non_root
def test_unreadable_audio_names_the_file(two_clips) -> None:
    two_clips[0].chmod(0o000)
    try:
        with pytest.raises(AudioError, match=r"clip0\.wav: cannot be read: permission denied"):
            extract(two_clips, cache=False, n_jobs=1, progress=False)
    finally:
        two_clips[0].chmod(0o644)


def test_folder_in_place_of_a_clip_is_named(tmp_path) -> None:
    (tmp_path / "clip.wav").mkdir()
    with pytest.raises(AudioError, match=r"clip\.wav: is a folder, not an audio file"):
        data.load_audio(tmp_path / "clip.wav")


# -- 8. a non-finite feature image ----------------------------------------------------------


def test_non_finite_image_names_the_clip_and_the_rows(tmp_path, two_clips, monkeypatch) -> None:
    import librosa

    real_flatness = librosa.feature.spectral_flatness

    def broken_flatness(*args, **kwargs):
        flatness = real_flatness(*args, **kwargs)
        flatness[..., 3] = np.nan
        return flatness

    monkeypatch.setattr(librosa.feature, "spectral_flatness", broken_flatness)
    with pytest.raises(AudioError, match=r"clip0\.wav: .*1 NaN or infinite value.*flatness rows"):
        extract(two_clips, cache=tmp_path / "cache", n_jobs=1, progress=False)
    assert not _entries(tmp_path / "cache")  # nothing non-finite was cached


# -- 9. the length policy says what it did ---------------------------------------------------


def test_length_policy_reports_cut_and_repeated_clips_once(tmp_path, rng) -> None:
    lengths = {"normal.wav": 16000, "long.wav": 3 * 16000, "short.wav": 1600}
    clips = [_write(tmp_path / name, _noise(rng, n)) for name, n in lengths.items()]
    config = FeatureConfig(n_samples=16000)
    with pytest.warns(UserWarning) as record:
        images = extract(clips, config, cache=tmp_path / "cache", n_jobs=1, progress=False)
    notes = [str(w.message) for w in record]
    assert len(notes) == 1
    assert notes[0].startswith(
        "1 of 3 clips was longer than the nominal 1 s (16000 samples) and was cut to it"
    )
    assert "long.wav" in notes[0] and "; 1 was shorter and was repeated" in notes[0]
    assert "short.wav" in notes[0]
    assert {image.shape for image in images} == {(158, config.n_frames(16000))}
    with warnings.catch_warnings():  # from the cache: nothing computed, nothing to say
        warnings.simplefilter("error")
        extract(clips, config, cache=tmp_path / "cache", n_jobs=1, progress=False)


def test_clips_of_the_nominal_length_give_no_warning(tmp_path, rng) -> None:
    clips = [_write(tmp_path / f"c{i}.wav", _noise(rng, 16000)) for i in range(2)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        extract(clips, FeatureConfig(n_samples=16000), cache=False, n_jobs=1, progress=False)


# -- 10. atomic entries and leftovers ------------------------------------------------------------


def test_stale_temporaries_are_removed_and_fresh_ones_kept(tmp_path, two_clips) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    stale = cache / f".abc.npy.x1{files.TEMP_SUFFIX}"
    fresh = cache / f".def.npy.x2{files.TEMP_SUFFIX}"
    for leftover in (stale, fresh):
        leftover.write_bytes(b"half an entry")
    two_hours_ago = time.time() - 7200
    os.utime(stale, (two_hours_ago, two_hours_ago))
    extract(two_clips, cache=cache, n_jobs=1, progress=False)
    assert not stale.exists()
    assert fresh.exists()  # another process may still be writing it
    assert len(_entries(cache)) == 2


def test_entries_get_the_permissions_of_the_umask(tmp_path, two_clips) -> None:
    mask = os.umask(0o027)
    try:
        extract(two_clips[:1], cache=tmp_path / "cache", n_jobs=1, progress=False)
    finally:
        os.umask(mask)
    (entry,) = _entries(tmp_path / "cache")
    assert entry.stat().st_mode & 0o777 == 0o640
