"""Tests of asdflow.data: the DCASE layout, clip names, attributes and audio loading."""

from __future__ import annotations

import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asdflow import data, synth
from asdflow.errors import AudioError, LayoutError
from asdflow.tolerance import tolerance

SR = data.SAMPLE_RATE


def touch_wav(path: Path, seconds: float = 0.05) -> Path:
    """Write a short silent 16 kHz clip (names are what these tests look at)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.zeros(int(seconds * SR), dtype=np.float32), SR, subtype="PCM_16")
    return path


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


# --------------------------------------------------------------------------- scan on the factory


def test_scan_counts_domains_labels(factory: Path) -> None:
    q = synth.QUICK_FACTORY
    clips = data.scan(factory)
    assert [c.path for c in clips] == sorted(c.path for c in clips)
    assert len(clips) == len(q["machines"]) * (
        q["n_train_source"] + q["n_train_target"] + 4 * q["n_test_per_domain"]
    )
    counts = Counter((c.machine, c.split, c.domain, c.label) for c in clips)
    for machine in q["machines"]:
        assert counts[machine, "train", "source", "normal"] == q["n_train_source"]
        assert counts[machine, "train", "target", "normal"] == q["n_train_target"]
        assert counts[machine, "train", "source", "anomaly"] == 0
        for domain in ("source", "target"):
            for label in ("normal", "anomaly"):
                assert counts[machine, "test", domain, label] == q["n_test_per_domain"]
    assert {c.dataset for c in clips} == {"dev"}
    assert {c.section for c in clips} == {"00"}
    assert data.machines(factory) == sorted(q["machines"])


def test_scan_numbers_and_anomaly_flag(factory: Path) -> None:
    n = synth.QUICK_FACTORY["n_test_per_domain"]
    clips = data.scan(factory, machines="fan", split="test", domain="target")
    anomalies = [c for c in clips if c.is_anomaly]
    normals = [c for c in clips if c.is_anomaly is False]
    assert sorted(c.number for c in anomalies) == list(range(n))
    assert sorted(c.number for c in normals) == list(range(n))


@pytest.mark.parametrize(
    ("options", "check"),
    [
        ({"machines": ["valve"]}, lambda c: c.machine == "valve"),
        ({"machines": ["fan", "bearing"]}, lambda c: c.machine in ("fan", "bearing")),
        ({"split": "train"}, lambda c: c.split == "train" and c.label == "normal"),
        ({"domain": "target"}, lambda c: c.domain == "target"),
        ({"dataset": "dev"}, lambda c: c.dataset == "dev"),
    ],
)
def test_scan_filters(factory: Path, options: dict, check) -> None:
    everything = data.scan(factory)
    chosen = data.scan(factory, **options)
    assert chosen == [c for c in everything if check(c)]
    assert 0 < len(chosen) <= len(everything)


def test_scan_attributes_match_names_and_conditions(factory: Path) -> None:
    for clip in data.scan(factory):
        conditions = synth.CONDITIONS[clip.machine][clip.domain]
        assert set(clip.attributes) == set(conditions)
        for name, value in clip.attributes.items():
            assert value in conditions[name]
            assert f"_{name}_{value}" in clip.name


def test_target_attribute_differs_from_source(factory: Path) -> None:
    for machine in synth.QUICK_FACTORY["machines"]:
        clips = data.scan(factory, machines=machine)
        seen = {
            domain: {
                name: {c.attributes[name] for c in clips if c.domain == domain}
                for name in synth.CONDITIONS[machine][domain]
            }
            for domain in ("source", "target")
        }
        disjoint = [
            name for name in seen["source"] if not seen["source"][name] & seen["target"][name]
        ]
        assert len(disjoint) == 1, (machine, seen)


# --------------------------------------------------------------------------- names


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (
            "section_00_source_train_normal_0001_pro_A_vel_4_loc_A.wav",
            ("source", "normal", 1, {"pro": "A", "vel": "4", "loc": "A"}),
        ),
        (
            "section_00_target_train_normal_0000_car_B1_spd_31V_mic_1.wav",
            ("target", "normal", 0, {"car": "B1", "spd": "31V", "mic": "1"}),
        ),
        ("section_00_source_train_normal_0990_noAttribute.wav", ("source", "normal", 990, {})),
        ("section_00_target_train_normal_0007.wav", ("target", "normal", 7, {})),
        ("section_00_source_train_normal_0002_m-n_W.wav", ("source", "normal", 2, {"m-n": "W"})),
    ],
)
def test_names_parse(tmp_path: Path, name: str, expected: tuple) -> None:
    touch_wav(tmp_path / "dev_data" / "raw" / "ToyCar" / "train" / name)
    (clip,) = data.scan(tmp_path)
    assert (clip.domain, clip.label, clip.number, clip.attributes) == expected
    assert (clip.machine, clip.split, clip.section, clip.dataset) == (
        "ToyCar",
        "train",
        "00",
        "dev",
    )


def test_numbering_from_0000_and_from_0001(tmp_path: Path) -> None:
    raw = tmp_path / "dev_data" / "raw"
    for number in (0, 1, 2):
        touch_wav(raw / "fan" / "test" / f"section_00_source_test_anomaly_{number:04d}_x_1.wav")
    for number in (1, 2, 3):
        touch_wav(raw / "valve" / "test" / f"section_00_source_test_anomaly_{number:04d}_x_1.wav")
    assert [c.number for c in data.scan(tmp_path, machines="fan")] == [0, 1, 2]
    assert [c.number for c in data.scan(tmp_path, machines="valve")] == [1, 2, 3]


def test_eval_test_names_have_unknown_domain_and_label(tmp_path: Path) -> None:
    raw = tmp_path / "eval_data" / "raw" / "Scanner"
    touch_wav(raw / "test" / "section_00_0003.wav")
    touch_wav(raw / "test" / "section_00_0000.wav")
    touch_wav(raw / "train" / "section_00_target_train_normal_0004_noAttribute.wav")
    clips = data.scan(tmp_path)
    assert [(c.split, c.domain, c.label, c.number) for c in clips] == [
        ("test", "unknown", "unknown", 0),
        ("test", "unknown", "unknown", 3),
        ("train", "target", "normal", 4),
    ]
    assert all(c.dataset == "eval" and c.attributes == {} for c in clips)
    assert [c.is_anomaly for c in clips] == [None, None, False]
    assert data.scan(tmp_path, domain="unknown") == clips[:2]
    assert data.machines(tmp_path) == ["Scanner"]
    with pytest.raises(LayoutError, match="dev_data/raw"):
        data.scan(tmp_path, dataset="dev")


def test_attribute_table_takes_precedence_over_names(tmp_path: Path) -> None:
    folder = tmp_path / "dev_data" / "raw" / "gearbox"
    listed = "section_00_source_train_normal_0000_volt_1.0_wt_30.wav"
    unlisted = "section_00_source_train_normal_0001_volt_1.5_wt_50.wav"
    odd_but_listed = "section_00_source_train_normal_0002_a_b_c.wav"
    for name in (listed, unlisted, odd_but_listed):
        touch_wav(folder / "train" / name)
    (folder / "attributes_00.csv").write_text(
        "file_name,d1p,d1v,d2p,d2v\n"
        f"gearbox/train/{listed},volt,2.0,wt,31\n"
        f"gearbox/train/{odd_but_listed},noAttribute,,,\n"
    )
    by_number = {c.number: c.attributes for c in data.scan(tmp_path)}
    assert by_number == {0: {"volt": "2.0", "wt": "31"}, 1: {"volt": "1.5", "wt": "50"}, 2: {}}


def test_malformed_attribute_table_raises(tmp_path: Path) -> None:
    folder = tmp_path / "dev_data" / "raw" / "fan"
    touch_wav(folder / "train" / "section_00_source_train_normal_0000_x_1.wav")
    (folder / "attributes_00.csv").write_text("name,attribute\nfoo,bar\n")
    with pytest.raises(LayoutError, match=r"attributes_00\.csv.*file_name"):
        data.scan(tmp_path)


def test_odd_names_are_reported_and_skipped(tmp_path: Path) -> None:
    train = tmp_path / "dev_data" / "raw" / "slider" / "train"
    good = touch_wav(train / "section_00_source_train_normal_0000_vel_1.wav")
    odd = [
        touch_wav(train / "section_00_source_train_normal_abcd.wav"),  # no number
        touch_wav(train / "section_00_source_train_normal_0001_vel.wav"),  # odd attributes
        touch_wav(train / "section_00_source_test_normal_0002_vel_1.wav"),  # test name in train/
        touch_wav(train / "recording.wav"),
    ]
    (train / "notes.txt").write_text("not audio")
    odd.append(train / "notes.txt")
    touch_wav(train / "._section_00_source_train_normal_0000_vel_1.wav")  # macOS companion file
    with pytest.warns(UserWarning, match=r"skipped 5 file\(s\)") as record:
        clips = data.scan(tmp_path)
    assert [c.path for c in clips] == [good]
    message = str(record[0].message)
    assert sum(str(path) in message for path in odd) == 3


def test_good_layout_scans_without_warning(factory: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert data.scan(factory, machines="bearing")


# --------------------------------------------------------------------------- bad layouts


def test_missing_root_raises(tmp_path: Path) -> None:
    with pytest.raises(LayoutError, match=r"does not exist.*dev_data/raw/<machine>"):
        data.scan(tmp_path / "nowhere")


def test_root_without_raw_folders_raises(tmp_path: Path) -> None:
    touch_wav(tmp_path / "fan" / "train" / "section_00_source_train_normal_0000_x_1.wav")
    with pytest.raises(LayoutError, match=r"dev_data/raw.*eval_data/raw"):
        data.scan(tmp_path)
    with pytest.raises(LayoutError):
        data.machines(tmp_path)


def test_missing_machine_raises(factory: Path) -> None:
    with pytest.raises(LayoutError, match=r"ToyCar.*found: bearing, fan, valve.*<machine>"):
        data.scan(factory, machines=["fan", "ToyCar"])


@pytest.mark.parametrize(
    "options", [{"split": "validation"}, {"domain": "both"}, {"dataset": "add"}]
)
def test_bad_filter_values_raise(factory: Path, options: dict) -> None:
    with pytest.raises(ValueError, match=repr(next(iter(options.values())))):
        data.scan(factory, **options)


def test_describe_counts(factory: Path) -> None:
    q = synth.QUICK_FACTORY
    text = data.describe(factory)
    lines = text.splitlines()
    n_clips = len(q["machines"]) * (
        q["n_train_source"] + q["n_train_target"] + 4 * q["n_test_per_domain"]
    )
    assert lines[0].startswith(f"{n_clips} clips")
    n = q["n_test_per_domain"]
    for machine in q["machines"]:
        train = next(
            line.split() for line in lines if line.startswith(f"{machine} ") and "train" in line
        )
        test = next(
            line.split() for line in lines if line.startswith(f"{machine} ") and "test" in line
        )
        assert train[3:] == [str(q["n_train_source"]), "0", str(q["n_train_target"]), "0", "0"]
        assert test[3:] == [str(n), str(n), str(n), str(n), "0"]
    assert "  fan: mic=A,B; rpm=1200,1500,2100" in lines


# --------------------------------------------------------------------------- load_audio


def test_load_audio_pcm16_roundtrip(tmp_path: Path, rng: np.random.Generator) -> None:
    y = (0.5 * rng.uniform(-1, 1, SR // 2)).astype(np.float32)
    path = tmp_path / "clip.wav"
    sf.write(path, y, SR, subtype="PCM_16")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = data.load_audio(path)
    assert loaded.dtype == np.float32 and loaded.shape == y.shape
    # not a rounding tolerance: 16-bit PCM has steps of 1 / 32768
    np.testing.assert_allclose(loaded, y, atol=1 / 32768)


def test_load_audio_resamples_with_warning(tmp_path: Path) -> None:
    rate, seconds, freq = 44100, 0.5, 440.0
    t = np.arange(int(rate * seconds)) / rate
    path = tmp_path / "fast.wav"
    sf.write(path, 0.5 * np.sin(2 * np.pi * freq * t), rate, subtype="PCM_16")
    with pytest.warns(UserWarning, match=r"fast\.wav.*44100 Hz.*16000 Hz"):
        y = data.load_audio(path)
    assert y.dtype == np.float32
    assert abs(len(y) - seconds * SR) <= 1
    spectrum = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    peak = np.fft.rfftfreq(len(y), 1 / SR)[np.argmax(spectrum)]
    assert abs(peak - freq) <= 2.0  # frequency resolution is 2 Hz for 0.5 s


def test_load_audio_downmixes_stereo(tmp_path: Path, rng: np.random.Generator) -> None:
    stereo = rng.uniform(-0.5, 0.5, (SR // 4, 2)).astype(np.float32)
    path = tmp_path / "stereo.wav"
    sf.write(path, stereo, SR, subtype="FLOAT")
    y = data.load_audio(path)
    assert y.shape == (SR // 4,)
    # float32 mean of two channels, on either side: two roundings of values up to 0.5
    np.testing.assert_allclose(
        y, stereo.mean(axis=1), rtol=0, atol=tolerance(np.float32, 0.5, terms=2)
    )


def test_load_audio_empty_file_raises(tmp_path: Path) -> None:
    path = tmp_path / "empty.wav"
    sf.write(path, np.zeros(0, dtype=np.float32), SR, subtype="PCM_16")
    with pytest.raises(AudioError, match=r"empty\.wav.*no samples"):
        data.load_audio(path)


@pytest.mark.parametrize("content", [b"", b"this is not a sound file at all" * 10])
def test_load_audio_garbage_raises(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "garbage.wav"
    path.write_bytes(content)
    with pytest.raises(AudioError, match=r"garbage\.wav.*cannot be read"):
        data.load_audio(path)


def test_load_audio_non_finite_raises(tmp_path: Path) -> None:
    y = np.zeros(1000, dtype=np.float32)
    y[[10, 500]] = [np.nan, np.inf]
    path = tmp_path / "nan.wav"
    sf.write(path, y, SR, subtype="FLOAT")
    with pytest.raises(AudioError, match=r"nan\.wav.*2 NaN or infinite"):
        data.load_audio(path)


def test_load_audio_missing_file_raises(tmp_path: Path) -> None:
    with pytest.raises(AudioError, match=r"missing\.wav.*no such file"):
        data.load_audio(tmp_path / "missing.wav")


def test_load_audio_reads_factory_clip(factory: Path) -> None:
    clip = data.scan(factory, machines="valve", split="test")[0]
    y = data.load_audio(clip.path)
    assert y.shape == (int(synth.QUICK_FACTORY["seconds"] * SR),)
    assert 0.01 < np.max(np.abs(y)) <= 0.99
