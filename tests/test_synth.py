"""Tests of asdflow.synth: physics of the toy machines, determinism and the factory on disk."""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from asdflow import cli, data, synth
from asdflow.errors import AsdflowError, ParameterError

SR = synth.SR
TINY = {"n_train_source": 3, "n_train_target": 1, "n_test_per_domain": 1, "seconds": 0.25}

# One operating condition per machine type, so that normal groups differ only by chance.
FIXED = {
    "fan": {"rpm": "1500", "mic": "A"},
    "bearing": {"vel": "900", "load": "40"},
    "valve": {"pat": "A", "bg": "low"},
}


def band_spectrum(y: np.ndarray, n_fft: int = 4096) -> np.ndarray:
    """Mean power in 64 log-spaced bands from 20 Hz to 8 kHz, in dB (like a log-mel spectrum)."""
    frames = np.lib.stride_tricks.sliding_window_view(y, n_fft)[:: n_fft // 2]
    power = np.mean(np.abs(np.fft.rfft(frames * np.hanning(n_fft), axis=1)) ** 2, axis=0)
    freqs = np.fft.rfftfreq(n_fft, 1 / SR)
    edges = np.unique(np.searchsorted(freqs, np.geomspace(20, 8000, 65)))
    bands = np.add.reduceat(power, edges[:-1]) / np.diff(edges)
    return 10 * np.log10(bands + 1e-12)


@functools.cache
def group_spectrum(
    machine: str, *, anomaly: bool | str, seeds: range, severity: float | None = None
) -> np.ndarray:
    """Mean band spectrum of 2 s clips of one operating condition, one per seed."""
    spectra = [
        band_spectrum(
            synth.generate_clip(
                machine,
                anomaly=anomaly,
                severity=severity,
                attributes=FIXED[machine],
                seconds=2.0,
                seed=seed,
            )[0]
        )
        for seed in seeds
    ]
    return np.mean(spectra, axis=0)


def distance(a: np.ndarray, b: np.ndarray) -> float:
    """RMS difference of two log spectra, in dB."""
    return float(np.sqrt(np.mean((a - b) ** 2)))


def digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# --------------------------------------------------------------------------- single clips


@pytest.mark.parametrize(
    ("machine", "anomaly"),
    [(m, False) for m in synth.MACHINES]
    + [(m, k) for m in synth.MACHINES for k in synth.ANOMALIES[m]],
)
@pytest.mark.parametrize("domain", ["source", "target"])
def test_generate_clip_shape_range_attributes(machine: str, anomaly, domain: str) -> None:
    y, attributes = synth.generate_clip(
        machine, domain=domain, anomaly=anomaly, severity=1.0, seconds=0.5, seed=3
    )
    assert y.dtype == np.float32 and y.shape == (SR // 2,)
    assert np.all(np.isfinite(y))
    assert 0.01 < np.max(np.abs(y)) <= 0.99
    conditions = synth.CONDITIONS[machine][domain]
    assert set(attributes) == set(conditions)
    assert all(attributes[k] in conditions[k] for k in conditions)


@pytest.mark.parametrize("machine", synth.MACHINES)
def test_generate_clip_is_deterministic(machine: str) -> None:
    first, a1 = synth.generate_clip(machine, anomaly=True, seconds=0.5, seed=11)
    again, a2 = synth.generate_clip(machine, anomaly=True, seconds=0.5, seed=11)
    other, _ = synth.generate_clip(machine, anomaly=True, seconds=0.5, seed=12)
    assert np.array_equal(first, again) and a1 == a2
    assert not np.allclose(first, other)


def test_generate_clip_keeps_fixed_attributes() -> None:
    for seed in range(5):
        _, attributes = synth.generate_clip("fan", attributes={"mic": "B"}, seconds=0.1, seed=seed)
        assert attributes["mic"] == "B"


@pytest.mark.parametrize(
    "options",
    [
        {"machine": "pump"},
        {"machine": "fan", "domain": "other"},
        {"machine": "fan", "anomaly": "leak"},
        {"machine": "fan", "anomaly": True, "severity": 1.5},
        {"machine": "fan", "attributes": {"load": "20"}},
        {"machine": "fan", "attributes": {"rpm": "fast"}},
        {"machine": "valve", "attributes": {"pat": "Z"}},
    ],
)
def test_generate_clip_rejects_bad_options(options: dict) -> None:
    machine = options.pop("machine")
    with pytest.raises(ParameterError):
        synth.generate_clip(machine, seconds=0.1, seed=0, **options)


@pytest.mark.parametrize("machine", synth.MACHINES)
def test_anomalies_differ_spectrally_from_normal(machine: str) -> None:
    """Normal vs anomalous clips differ far more than two disjoint groups of normal clips."""
    normal_a = group_spectrum(machine, anomaly=False, seeds=range(0, 10))
    normal_b = group_spectrum(machine, anomaly=False, seeds=range(10, 20))
    chance = distance(normal_a, normal_b)
    for kind in synth.ANOMALIES[machine]:
        drawn = group_spectrum(machine, anomaly=kind, seeds=range(20, 30))  # random severities
        evident = group_spectrum(machine, anomaly=kind, seeds=range(20, 30), severity=1.0)
        assert distance(normal_a, drawn) > 2 * chance, (kind, chance)
        assert distance(normal_a, evident) > 5 * chance, (kind, chance)


@pytest.mark.parametrize("machine", synth.MACHINES)
def test_severity_makes_anomalies_more_evident(machine: str) -> None:
    normal = group_spectrum(machine, anomaly=False, seeds=range(0, 10))
    for kind in synth.ANOMALIES[machine]:
        subtle = group_spectrum(machine, anomaly=kind, seeds=range(20, 30), severity=0.0)
        evident = group_spectrum(machine, anomaly=kind, seeds=range(20, 30), severity=1.0)
        assert distance(normal, evident) > 2 * distance(normal, subtle), kind


def test_fan_tones_at_blade_pass_frequency() -> None:
    """A healthy fan at 1500 rpm (25 Hz) with 6 blades is loudest at 150 Hz."""
    y, _ = synth.generate_clip("fan", attributes={"rpm": "1500", "mic": "A"}, seconds=2.0, seed=0)
    spectrum = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    freqs = np.fft.rfftfreq(len(y), 1 / SR)
    assert abs(freqs[np.argmax(spectrum)] - synth.FAN_BLADES * 25.0) < 1.0


def test_fan_imbalance_raises_shaft_rate_tone() -> None:
    def shaft_level(anomaly) -> float:
        y, _ = synth.generate_clip(
            "fan", anomaly=anomaly, severity=1.0, attributes=FIXED["fan"], seconds=2.0, seed=5
        )
        spectrum = np.abs(np.fft.rfft(y * np.hanning(len(y))))
        freqs = np.fft.rfftfreq(len(y), 1 / SR)
        return float(spectrum[(freqs > 23) & (freqs < 27)].max())

    assert shaft_level("imbalance") > 5 * shaft_level(False)


@pytest.mark.parametrize("kind", ["outer", "inner"])
def test_bearing_fault_repeats_at_defect_frequency(kind: str) -> None:
    """The envelope spectrum of a faulty bearing peaks at its defect frequency."""
    y, _ = synth.generate_clip(
        "bearing", anomaly=kind, severity=1.0, attributes=FIXED["bearing"], seconds=2.0, seed=1
    )
    spectrum = np.fft.rfft(y)
    freqs = np.fft.rfftfreq(len(y), 1 / SR)
    spectrum[(freqs < 2500) | (freqs > 3700)] = 0  # keep the 3.1 kHz resonance only
    analytic = np.fft.irfft(spectrum, len(y))
    envelope = np.abs(analytic + 1j * np.fft.irfft(-1j * spectrum, len(y)))
    envelope_spectrum = np.abs(np.fft.rfft(envelope - envelope.mean()))
    band = (freqs > 20) & (freqs < 150)
    peak = freqs[band][np.argmax(envelope_spectrum[band])]
    expected = synth.bearing_defect_frequencies(900.0)[kind]
    assert abs(peak - expected) < 2.0


def test_valve_leak_hisses_only_while_closed() -> None:
    """The leak adds a 4.5-6.5 kHz hiss, silent while the valve is open (40 % of pattern A)."""
    options = {"attributes": FIXED["valve"], "seconds": 2.0, "seed": 2, "severity": 1.0}
    normal, _ = synth.generate_clip("valve", **options)
    leaking, _ = synth.generate_clip("valve", anomaly="leak", **options)
    freqs = np.fft.rfftfreq(len(normal), 1 / SR)
    hiss_band = (freqs > 4500) & (freqs < 6500)
    power = [np.sum(np.abs(np.fft.rfft(y))[hiss_band] ** 2) for y in (normal, leaking)]
    assert power[1] > 10 * power[0]
    # The leak draws its randomness last: the difference is the hiss alone.
    hiss = (leaking - normal).reshape(-1, SR // 100)  # 10 ms frames
    level = np.sqrt(np.mean(hiss**2, axis=1))
    silent = np.mean(level < 0.02 * level.max())
    period, duty = synth.VALVE_PROGRAMS["A"]
    assert duty - 0.1 < silent < duty + 0.02


def test_defect_frequencies_formula() -> None:
    rates = synth.bearing_defect_frequencies(600.0)
    n, ratio = synth.BEARING_BALLS, synth.BEARING_RATIO
    assert rates["shaft"] == pytest.approx(10.0)
    assert rates["outer"] == pytest.approx(n / 2 * 10.0 * (1 - ratio))
    assert rates["inner"] == pytest.approx(n / 2 * 10.0 * (1 + ratio))


def test_resonator_rings_at_its_frequency_and_decays() -> None:
    x = np.zeros(SR // 4)
    x[0] = 1.0
    h = synth.resonate(x, [(2000.0, 100.0, 1.0)])
    assert abs(np.max(np.abs(h)) - 1.0) < 0.05
    freqs = np.fft.rfftfreq(len(h), 1 / SR)
    assert abs(freqs[np.argmax(np.abs(np.fft.rfft(h)))] - 2000.0) < 10.0
    tau = 1 / (np.pi * 100.0)  # time constant of a 100 Hz bandwidth
    later = int(round(3 * tau * SR))
    assert np.max(np.abs(h[later : later + 16])) < np.exp(-3) * 1.1


# --------------------------------------------------------------------------- the factory on disk


def test_factory_is_deterministic(tmp_path: Path) -> None:
    a = synth.make_factory(
        tmp_path / "a", machines=("fan", "valve"), seed=4, progress=False, **TINY
    )
    b = synth.make_factory(
        tmp_path / "b", machines=("fan", "valve"), seed=4, progress=False, **TINY
    )
    c = synth.make_factory(
        tmp_path / "c", machines=("fan", "valve"), seed=5, progress=False, **TINY
    )
    digest_a = digest(a)
    assert digest_a == digest(b)
    wavs_a = {h for name, h in digest_a.items() if name.endswith(".wav")}
    wavs_c = {h for name, h in digest(c).items() if name.endswith(".wav")}
    assert not wavs_a & wavs_c


def test_clip_does_not_depend_on_factory_size(tmp_path: Path) -> None:
    small = synth.make_factory(tmp_path / "s", machines=("bearing",), progress=False, **TINY)
    big = synth.make_factory(
        tmp_path / "b", machines=("bearing",), progress=False, **{**TINY, "n_train_source": 5}
    )
    small_clips = data.scan(small)
    big_names = {c.name for c in data.scan(big)}
    assert len(big_names) == len(small_clips) + 2
    for clip in small_clips:
        assert clip.name in big_names
        other = big / clip.path.relative_to(small)
        assert other.read_bytes() == clip.path.read_bytes()


def test_factory_layout_and_attribute_table(tmp_path: Path) -> None:
    root = synth.make_factory(tmp_path, machines=("fan",), progress=False, **TINY)
    folder = root / "dev_data" / "raw" / "fan"
    rows = (folder / "attributes_00.csv").read_text().splitlines()
    assert rows[0] == "file_name,d1p,d1v,d2p,d2v"
    wavs = sorted(p.relative_to(folder.parent) for p in folder.rglob("*.wav"))
    assert sorted(Path(row.split(",")[0]) for row in rows[1:]) == wavs
    for row in rows[1:]:
        name, p1, v1, p2, v2 = row.split(",")
        assert name.endswith(f"_{p1}_{v1}_{p2}_{v2}.wav")
    assert not list(root.rglob("*.part")) and not list(root.rglob("*.asdflow-tmp"))
    marker = json.loads((root / synth.MARKER).read_text())
    assert marker["format"] == synth.MARKER_FORMAT and list(marker["machines"]) == ["fan"]
    record = marker["machines"]["fan"]
    assert record["complete"] is True and record["n_train_source"] == TINY["n_train_source"]
    listed = {f for f in record["files"] if f.endswith(".wav")}
    assert listed == {p.relative_to(folder).as_posix() for p in folder.rglob("*.wav")}


def test_factory_second_call_is_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synth.make_factory(tmp_path, machines=("valve",), progress=False, **TINY)
    before = digest(tmp_path)

    def fail(*args, **kwargs):
        raise AssertionError("a complete factory must not be generated again")

    monkeypatch.setattr(synth, "generate_clip", fail)
    assert synth.make_factory(tmp_path, machines=("valve",), progress=False, **TINY) == tmp_path
    assert digest(tmp_path) == before
    with pytest.raises(AssertionError, match="must not be generated"):
        synth.make_factory(tmp_path, machines=("valve",), progress=False, overwrite=True, **TINY)


def test_factory_other_parameters_need_overwrite_and_keep_other_machines(tmp_path: Path) -> None:
    synth.make_factory(tmp_path, machines=("fan", "valve"), progress=False, **TINY)
    valve = digest(tmp_path / "dev_data" / "raw" / "valve")
    bigger = {**TINY, "n_test_per_domain": 2}
    with pytest.raises(AsdflowError, match=r"n_test_per_domain=1 instead of 2.*overwrite"):
        synth.make_factory(tmp_path, machines=("bearing", "fan"), progress=False, **bigger)
    assert data.machines(tmp_path) == ["fan", "valve"]  # nothing was changed, not even bearing
    synth.make_factory(tmp_path, machines=("bearing", "fan"), progress=False, overwrite=True,
                       **bigger)  # fmt: skip
    assert data.machines(tmp_path) == ["bearing", "fan", "valve"]
    assert len(data.scan(tmp_path, machines="fan", split="test")) == 8
    assert digest(tmp_path / "dev_data" / "raw" / "valve") == valve
    records = json.loads((tmp_path / synth.MARKER).read_text())["machines"]
    assert {m: r["n_test_per_domain"] for m, r in records.items()} == {
        "bearing": 2, "fan": 2, "valve": 1,
    }  # fmt: skip


def test_interrupted_factory_is_redone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = synth.generate_clip
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) > 4:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(synth, "generate_clip", interrupted)
    with pytest.raises(KeyboardInterrupt):
        synth.make_factory(tmp_path, machines=("fan",), progress=False, **TINY)
    record = json.loads((tmp_path / synth.MARKER).read_text())["machines"]["fan"]
    assert record["complete"] is False
    monkeypatch.setattr(synth, "generate_clip", real)
    synth.make_factory(tmp_path, machines=("fan",), progress=False, **TINY)
    record = json.loads((tmp_path / synth.MARKER).read_text())["machines"]["fan"]
    assert record["complete"] is True
    assert len(data.scan(tmp_path)) == 3 + 1 + 4


def test_factory_refuses_foreign_folders(tmp_path: Path) -> None:
    foreign = tmp_path / "dev_data" / "raw" / "fan" / "train"
    foreign.mkdir(parents=True)
    (foreign / "keep.txt").write_text("someone else's data")
    with pytest.raises(AsdflowError, match=r"fan.*overwrite=True"):
        synth.make_factory(tmp_path, machines=("fan",), progress=False, **TINY)
    assert (foreign / "keep.txt").exists()
    synth.make_factory(tmp_path, machines=("fan",), progress=False, overwrite=True, **TINY)
    assert (foreign / "keep.txt").read_text() == "someone else's data"  # written into, not deleted
    assert len(list((tmp_path / "dev_data" / "raw" / "fan").rglob("*.wav"))) == 3 + 1 + 4


def test_quick_factory_sizes() -> None:
    q = synth.QUICK_FACTORY
    assert len(q["machines"]) >= 3 and set(q["machines"]) <= set(synth.MACHINES)
    assert q["n_train_source"] >= 5 * q["n_train_target"] > 0
    assert q["seconds"] <= 2.0


# --------------------------------------------------------------------------- command line


def test_cli_synth(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["synth", str(tmp_path), "--quick", "--machine", "bearing", "--seconds", "0.25"]
    assert cli.main([*argv, "--train-source", "2", "--test-per-domain", "1"]) == 0
    out = capsys.readouterr().out
    assert "synthetic factory ready" in out
    clips = data.scan(tmp_path)
    n_target = synth.QUICK_FACTORY["n_train_target"]
    assert len(clips) == 2 + n_target + 4
    assert {len(data.load_audio(c.path)) for c in clips} == {SR // 4}


def test_cli_synth_rejects_bad_sizes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["synth", str(tmp_path), "--quick", "--seconds", "0"]) == 2
    assert "seconds" in capsys.readouterr().err
    # positive but shorter than 2 samples: refused by synth, naming the value and the range
    assert cli.main(["synth", str(tmp_path), "--quick", "--seconds", "0.00005"]) == 2
    err = capsys.readouterr().err
    assert "seconds=5e-05" in err and "[0.000125, 600]" in err and len(err.splitlines()) == 1
    assert not (tmp_path / synth.MARKER).exists()
