"""A toy factory: synthetic machine sounds in the DCASE 2024 Task 2 layout.

Real machine recordings are large, slow to download and cannot be shown
in small pieces. This module *builds* machine sounds from the physics of
three machine types, so that the whole pipeline can be taught, tested and
run on a laptop:

``fan``
    A rotating machine. Each blade pushes the air once per revolution, so
    the sound is a harmonic series of the *blade-pass frequency* on top of
    broadband airflow noise. Faults: *imbalance* and a *damaged blade*.
``bearing``
    A rolling-element bearing on a motor shaft. A healthy bearing rolls
    smoothly: broadband noise coloured by the structure's resonances. A
    spalled race is struck by every passing ball: a periodic train of
    impacts, each ringing the structure's resonance.
``valve``
    A solenoid valve on a schedule. Clicks on opening and closing, flow
    noise while open, silence (apart from the background) while closed.
    Faults: a *leak* whistling while closed, a *sticking* plunger that
    closes late.

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
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import numpy as np

from asdflow.data import ATTRIBUTES_FILE, SAMPLE_RATE
from asdflow.errors import AsdflowError, ParameterError
from asdflow.files import atomic_write, folder_lock, remove_leftovers, writable_folder

if TYPE_CHECKING:
    from tqdm import tqdm

SR = SAMPLE_RATE
"""Sample rate of every generated clip, in Hz."""

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

ANOMALIES: dict[str, tuple[str, ...]] = {
    "fan": ("imbalance", "blade"),
    "bearing": ("outer", "inner"),
    "valve": ("leak", "sticking"),
}
"""The fault kinds per machine type; an anomalous clip draws one uniformly."""

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

MAX_SECONDS = 600.0
"""Longest clip :func:`generate_clip` makes, in seconds (about 77 MB per signal in float64)."""

NUMERIC_RANGES: dict[str, tuple[float, float]] = {
    "rpm": (1.0, 60000.0),
    "vel": (1.0, 60000.0),
    "load": (0.0, 500.0),
}
"""Allowed range of the numeric attributes (fan ``rpm``, bearing ``vel`` and ``load``)."""

SIZE_KEYS = ("n_train_source", "n_train_target", "n_test_per_domain", "seconds", "seed")
"""The settings of :func:`make_factory` that the marker records per machine type."""


# ---------------------------------------------------------------------------
# Signal building blocks
# ---------------------------------------------------------------------------


def _n_samples(seconds: float) -> int:
    """Number of samples of a clip of ``seconds``; ParameterError outside [2 samples, MAX_SECONDS]."""
    try:
        seconds = float(seconds)
    except (TypeError, ValueError):
        seconds = math.nan
    if not 2 / SR <= seconds <= MAX_SECONDS:  # also refuses nan
        raise ParameterError(
            f"seconds={seconds} is outside the allowed range [{2 / SR:g}, {MAX_SECONDS:g}] "
            f"(at least 2 samples at {SR} Hz)"
        )
    return int(round(seconds * SR))


def _fast_len(n: int) -> int:
    """The smallest length >= n whose only prime factors are 2, 3 and 5 (fast FFTs)."""
    best = 2 * n
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            p = p35
            while p < n:
                p *= 2
            best = min(best, p)
            p35 *= 3
        p5 *= 5
    return best


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x**2)))


def coloured_noise(
    n: int, rng: np.random.Generator, response: Callable[[np.ndarray], np.ndarray]
) -> np.ndarray:
    """Gaussian noise with a given amplitude spectrum, normalised to unit RMS.

    White noise has the same power at every frequency. Multiplying its
    Fourier transform by an amplitude response ``response(f)`` gives noise
    whose power spectral density is ``response(f) ** 2``: this is how
    airflow, rolling contact and factory ambience are modelled here.

    Parameters
    ----------
    n : int
        Number of samples.
    rng : np.random.Generator
        Source of randomness.
    response : callable
        Maps frequencies in Hz, ``np.ndarray [shape=(n // 2 + 1,)]``, to
        non-negative amplitudes.

    Returns
    -------
    np.ndarray [shape=(n,), dtype=float64]
        Noise with RMS 1.
    """
    size = _fast_len(n)
    spectrum = np.fft.rfft(rng.standard_normal(size))
    spectrum *= response(np.fft.rfftfreq(size, 1 / SR))
    x = np.fft.irfft(spectrum, size)[:n]
    return x / (_rms(x) + 1e-12)


def pink(f: np.ndarray, *, corner: float = 50.0) -> np.ndarray:
    """Amplitude response of pink noise (power falling as 1/f above ``corner`` Hz)."""
    return 1.0 / np.sqrt(np.maximum(f, corner))


def band(f: np.ndarray, *, centre: float, width: float, order: int = 2) -> np.ndarray:
    """Amplitude response of a smooth band around ``centre`` Hz, ``width`` Hz wide at -3 dB.

    Outside the band the amplitude falls as ``|f - centre| ** -order``:
    6 dB per doubling of the distance from the centre, per order.
    """
    return 1.0 / np.sqrt(1.0 + ((f - centre) / (width / 2)) ** (2 * order))


def resonate(x: np.ndarray, modes: Sequence[tuple[float, float, float]]) -> np.ndarray:
    """Pass a signal through structural resonances (two-pole resonators in parallel).

    A struck plate, casing or plunger rings at its natural frequencies and
    the ringing decays exponentially. One resonator with poles at
    :math:`r e^{\\pm i\\theta}`, :math:`\\theta = 2\\pi f / f_s`,
    :math:`r = e^{-\\pi B / f_s}` does exactly that: its response to a unit
    impulse is :math:`r^n \\sin((n + 1)\\theta)`, a sine at f Hz with peak
    amplitude about 1 that decays with time constant
    :math:`\\tau = 1 / (\\pi B)` (bandwidth B = 200 Hz rings for 1.6 ms).
    The filtering is done in the frequency domain, with enough zero padding
    that the ringing does not wrap around.

    Parameters
    ----------
    x : np.ndarray [shape=(n,)]
        Excitation: impulses (impacts) or noise (rolling contact).
    modes : sequence of (float, float, float)
        ``(frequency Hz, bandwidth Hz, weight)`` per resonance. The
        bandwidth is at -3 dB; the wider, the faster the ringing dies out.

    Returns
    -------
    np.ndarray [shape=(n,)]
        The weighted sum of the resonators' outputs.
    """
    n = len(x)
    tail = int(np.ceil(np.log(1e5) / (np.pi * min(b for _, b, _ in modes)) * SR))
    size = _fast_len(n + tail)
    delay = np.exp(-2j * np.pi * np.fft.rfftfreq(size))  # z^-1 on the FFT grid
    response = np.zeros(len(delay), dtype=complex)
    for freq, bandwidth, weight in modes:
        r = np.exp(-np.pi * bandwidth / SR)
        theta = 2 * np.pi * freq / SR
        response += weight * np.sin(theta) / (1 - 2 * r * np.cos(theta) * delay + r * r * delay**2)
    return np.fft.irfft(np.fft.rfft(x, size) * response, size)[:n]


def impulses(n: int, times: np.ndarray, amplitudes: np.ndarray | float) -> np.ndarray:
    """A signal of ``n`` samples that is zero except for impacts at ``times`` (s)."""
    x = np.zeros(n)
    index = np.round(np.asarray(times) * SR).astype(int)
    amplitudes = np.broadcast_to(np.asarray(amplitudes, dtype=float), index.shape)
    keep = (index >= 0) & (index < n)
    np.add.at(x, index[keep], amplitudes[keep])
    return x


def shaft_phase(n: int, rate: float, rng: np.random.Generator, *, wobble: float) -> np.ndarray:
    """Rotation angle of a shaft turning at ``rate`` Hz whose speed wanders slightly.

    A motor never turns at a perfectly constant speed: load and supply
    fluctuate. The speed here is ``rate * (1 + wobble * e(t))`` with
    ``e(t)`` a slow (below about 1 Hz) random process of unit RMS; the angle
    is its running integral, so every harmonic of the shaft rate is smeared
    a little, more so at high orders, as in recordings.

    Returns
    -------
    np.ndarray [shape=(n,)]
        Angle in radians, starting at a random angle.
    """
    drift = coloured_noise(n, rng, lambda f: 1.0 / (1.0 + (f / 0.5) ** 2))
    speed = rate * (1.0 + wobble * drift)
    return rng.uniform(0, 2 * np.pi) + 2 * np.pi * np.cumsum(speed) / SR


def periodic_from_orders(
    phase: np.ndarray, amplitudes: np.ndarray, rng: np.random.Generator, *, size: int = 8192
) -> np.ndarray:
    """A signal locked to a rotating shaft, from the amplitudes of its orders.

    Anything that repeats once per revolution (blade pressure pulses, an
    out-of-balance force) is a sum of *orders*, sines at k times the shaft
    rate. This builds one revolution of that sum as a table (inverse FFT,
    random phase per order) and reads it at the shaft angle ``phase``, so
    speed wander moves every order together.

    Parameters
    ----------
    phase : np.ndarray [shape=(n,)]
        Shaft angle in radians (see :func:`shaft_phase`).
    amplitudes : np.ndarray [shape=(K + 1,)]
        Amplitude of order k = 0..K (order 0 is ignored); K < size / 2.
    rng : np.random.Generator
        Draws the phase of each order.
    size : int
        Table length (samples per revolution).

    Returns
    -------
    np.ndarray [shape=(n,)]
    """
    spectrum = np.zeros(size // 2 + 1, dtype=complex)
    k = np.arange(1, len(amplitudes))
    spectrum[k] = amplitudes[1:] * np.exp(1j * rng.uniform(0, 2 * np.pi, len(k))) * size / 2
    table = np.fft.irfft(spectrum, size)
    position = (phase / (2 * np.pi) % 1.0) * size
    i = position.astype(int) % size
    frac = position - np.floor(position)
    return table[i] * (1 - frac) + table[(i + 1) % size] * frac


def factory_background(n: int, rng: np.random.Generator, level: float) -> np.ndarray:
    """Ambient noise of a workshop: pink noise plus mains hum at 50 Hz and harmonics, RMS ``level``."""
    t = np.arange(n) / SR
    hum = sum(
        a * np.sin(2 * np.pi * 50 * h * t + rng.uniform(0, 2 * np.pi))
        for h, a in ((1, 0.3), (2, 0.5), (3, 0.2))
    )
    x = coloured_noise(n, rng, pink) + hum
    return level * x / _rms(x)


# ---------------------------------------------------------------------------
# The three machines
# ---------------------------------------------------------------------------

FAN_BLADES = 6
"""Number of fan blades: the blade-pass frequency is 6 times the shaft rate."""


def fan_sound(
    seconds: float,
    *,
    rpm: float,
    mic: str = "A",
    anomaly: str | None = None,
    severity: float = 0.5,
    rng: np.random.Generator,
) -> np.ndarray:
    """The sound of an axial fan (pressure units).

    **Tones.** The shaft turns at :math:`f_r = \\mathrm{rpm} / 60` Hz. Each
    of the B = 6 blades pushes a pressure pulse past the microphone once per
    revolution, so an ideal fan repeats B times per revolution: its tones
    are the *blade-pass frequency* :math:`f_{bp} = B f_r` and its harmonics
    :math:`m f_{bp}`, amplitude falling as 1/m. At 1500 rpm: 25 Hz shaft,
    150 Hz blade pass. A real rotor is never perfect: small shaft-rate tones
    (orders 1 and 2) are always present.

    **Airflow noise.** Turbulence in the blade wakes gives broadband noise,
    peaking at a few hundred hertz; its power grows steeply with speed
    (about the fifth power of the tip speed for dipole sources), the tones
    more gently.

    **Faults.**

    - ``"imbalance"``: the rotor's centre of mass is off its axis, so a
      rotating force at the shaft rate shakes the fan. The 1x order grows
      and the blade tones are amplitude-modulated once per revolution, which
      adds sidebands at :math:`m f_{bp} \\pm f_r`. Modulation depth from
      10 % (severity 0) to 50 % (severity 1).
    - ``"blade"``: one blade is bent or chipped, so its pulse differs from
      the others. The sound no longer repeats B times per revolution but
      once: every shaft order appears between the blade tones. Pulse
      difference from 20 % to 100 %.

    **Microphone.** Position ``"B"`` is farther away and off-axis: 4 dB
    quieter and high frequencies fall off above 2.5 kHz.

    Parameters
    ----------
    seconds : float
        Duration.
    rpm : float
        Shaft speed in revolutions per minute.
    mic : {"A", "B"}
        Microphone position.
    anomaly : {None, "imbalance", "blade"}
        The fault, or None for a healthy fan.
    severity : float
        Fault severity in [0, 1].
    rng : np.random.Generator
        Source of randomness.

    Returns
    -------
    np.ndarray [shape=(round(seconds * 16000),), dtype=float64]
    """
    n = _n_samples(seconds)
    f_r = rpm / 60.0
    speed = f_r / 25.0  # relative to 1500 rpm
    max_order = min(int(6000 / f_r), 4000)
    orders = np.arange(max_order + 1)
    amplitudes = np.zeros(max_order + 1)
    blade = orders[FAN_BLADES::FAN_BLADES]
    envelope = 1.0 / (blade / FAN_BLADES) * rng.uniform(0.8, 1.2, len(blade))
    amplitudes[blade] = envelope
    amplitudes[1] = rng.uniform(0.03, 0.05)
    amplitudes[2] = rng.uniform(0.01, 0.02)
    if anomaly == "imbalance":
        depth = 0.1 * 5**severity
        amplitudes[1] += 0.6 * depth
        amplitudes[blade - 1] += 0.5 * depth * envelope
        amplitudes[np.minimum(blade + 1, max_order)] += 0.5 * depth * envelope
    elif anomaly == "blade":
        difference = 0.2 * 5**severity
        pulse = 1.0 / np.maximum(orders / FAN_BLADES, 1.0)
        amplitudes[1:] += difference / FAN_BLADES * pulse[1:] * rng.uniform(0.5, 1.5, max_order)
    elif anomaly is not None:
        raise ParameterError(f"fan anomaly {anomaly!r} is not one of {ANOMALIES['fan']}")
    phase = shaft_phase(n, f_r, rng, wobble=0.003)
    tones = 0.6 * speed**2 * periodic_from_orders(phase, amplitudes, rng)

    def airflow(f: np.ndarray) -> np.ndarray:
        return np.sqrt(f / 300.0) / (1.0 + f / 300.0) / (1.0 + (f / 6000.0) ** 2)

    noise = 0.35 * speed**2.5 * coloured_noise(n, rng, airflow)
    y = tones + noise + factory_background(n, rng, 0.02)
    if mic == "B":
        spectrum = np.fft.rfft(y) * 0.63 / np.sqrt(1 + (np.fft.rfftfreq(n, 1 / SR) / 2500) ** 2)
        y = np.fft.irfft(spectrum, n)
    return y


BEARING_BALLS = 9
"""Number of rolling elements of the simulated bearing."""

BEARING_RATIO = 0.2
"""Ball diameter over pitch diameter, d / D, of the simulated bearing."""

BEARING_MODES = ((1800.0, 120.0, 0.6), (3100.0, 180.0, 1.0), (4700.0, 260.0, 0.5))
"""Structural resonances of the bearing housing: (frequency Hz, bandwidth Hz, weight)."""


def bearing_defect_frequencies(rpm: float) -> dict[str, float]:
    """Characteristic defect frequencies of the simulated bearing, in Hz.

    A ball of diameter d rolls between two races on a pitch circle of
    diameter D (contact angle 0). With n balls and shaft rate
    :math:`f_r`, a point on the outer race is passed
    :math:`\\mathrm{BPFO} = \\tfrac{n}{2} f_r (1 - d/D)` times per second
    and a point on the inner race :math:`\\mathrm{BPFI} = \\tfrac{n}{2} f_r (1 + d/D)`
    times per second. With n = 9 and d/D = 0.2: BPFO = 3.6 f_r,
    BPFI = 5.4 f_r.

    Parameters
    ----------
    rpm : float
        Shaft speed in revolutions per minute.

    Returns
    -------
    dict
        ``{"shaft": f_r, "outer": BPFO, "inner": BPFI}``.
    """
    f_r = rpm / 60.0
    half = BEARING_BALLS / 2 * f_r
    return {"shaft": f_r, "outer": half * (1 - BEARING_RATIO), "inner": half * (1 + BEARING_RATIO)}


def bearing_sound(
    seconds: float,
    *,
    vel: float,
    load: float,
    anomaly: str | None = None,
    severity: float = 0.5,
    rng: np.random.Generator,
) -> np.ndarray:
    """The sound of a rolling-element bearing driven by an electric motor (pressure units).

    **Healthy.** The balls roll on slightly rough races. Rolling contact
    is a random force: broadband noise that the housing filters through its
    resonances (:data:`BEARING_MODES`: 1.8, 3.1 and 4.7 kHz), plus
    occasional random micro-impacts (about 30 per second) from surface roughness. Both grow with the load
    (contact stress) and, more gently, with speed. The motor adds a hum at
    twice the 50 Hz mains frequency (magnetostriction) and a faint
    shaft-rate tone.

    **Faults.** A spall (a pit) on a race is hit by each passing ball. Each
    hit is a short impact that rings the housing resonances, so the fault
    is a *periodic impulse train* at the defect frequency (see
    :func:`bearing_defect_frequencies`) carried by the resonances. The
    period jitters by about 1 % because the balls slip.

    - ``"outer"``: spall on the fixed outer race, in the load zone: impacts
      at BPFO, all of about the same strength.
    - ``"inner"``: spall on the inner race, which turns with the shaft: impacts
      at BPFI, strong while the spall passes through the load zone and weak
      elsewhere, i.e. amplitude-modulated at the shaft rate.

    Impact strength rises 12-fold from severity 0 to 1, and with the load.
    At the low end the impacts are buried in the rolling noise; from about
    severity 0.4 the envelope spectrum of a 2 s clip (the spectrum of the
    magnitude of the band around 3.1 kHz) peaks at the defect frequency.

    Parameters
    ----------
    seconds : float
        Duration.
    vel : float
        Shaft speed in revolutions per minute.
    load : float
        Radial load in % of the rated load.
    anomaly : {None, "outer", "inner"}
        The fault, or None for a healthy bearing.
    severity : float
        Fault severity in [0, 1].
    rng : np.random.Generator
        Source of randomness.

    Returns
    -------
    np.ndarray [shape=(round(seconds * 16000),), dtype=float64]
    """
    n = _n_samples(seconds)
    t = np.arange(n) / SR
    rates = bearing_defect_frequencies(vel)
    stress = 0.5 + load / 100.0
    speed = np.sqrt(rates["shaft"] / 15.0)

    hum = 0.05 * np.sin(2 * np.pi * 100 * t + rng.uniform(0, 2 * np.pi))
    hum += 0.02 * np.sin(2 * np.pi * 200 * t + rng.uniform(0, 2 * np.pi))
    hum += 0.02 * np.sin(shaft_phase(n, rates["shaft"], rng, wobble=0.002))

    contact = rng.standard_normal(n)
    rolling = resonate(contact, BEARING_MODES)
    rolling = 0.08 * stress * speed * rolling / _rms(rolling)
    floor = 0.02 * stress * coloured_noise(n, rng, pink)

    count = rng.poisson(30 * seconds)
    rough = impulses(n, rng.uniform(0, seconds, count), rng.exponential(0.08 * stress, count))

    hits = np.zeros(n)
    if anomaly in ("outer", "inner"):
        rate = rates[anomaly]
        intervals = (1 / rate) * (1 + 0.01 * rng.standard_normal(int(seconds * rate) + 2))
        times = rng.uniform(0, 1 / rate) + np.cumsum(intervals) - intervals[0]
        strength = 0.05 * 12**severity * stress
        if anomaly == "inner":
            zone = rng.uniform(0, 2 * np.pi)
            load_zone = (0.5 + 0.5 * np.cos(2 * np.pi * rates["shaft"] * times + zone)) ** 2
            strength = 2.0 * strength * load_zone
        hits = impulses(n, times, strength * rng.uniform(0.8, 1.2, len(times)))
    elif anomaly is not None:
        raise ParameterError(f"bearing anomaly {anomaly!r} is not one of {ANOMALIES['bearing']}")
    struck = rough + hits
    ringing = resonate(struck, BEARING_MODES)
    return hum + rolling + floor + ringing + factory_background(n, rng, 0.01)


VALVE_PROGRAMS = {"A": (0.5, 0.4), "B": (0.8, 0.3)}
"""Open/close programs of the valve: ``pat`` -> (cycle period s, fraction of the cycle open)."""

VALVE_BACKGROUND = {"low": 0.005, "high": 0.04}
"""RMS of the factory background noise per ``bg`` attribute value (pressure units)."""


def _gate(n: int, opens: np.ndarray, closes: np.ndarray, *, ramp: float = 0.008) -> np.ndarray:
    """1 while the valve is open, 0 while closed, with linear ramps of ``ramp`` s."""
    t = np.arange(n) / SR
    gate = np.zeros(n)
    for a, b in zip(opens, closes, strict=True):
        if b > -ramp and a < t[-1]:
            gate += np.clip((t - a) / ramp, 0, 1) - np.clip((t - b) / ramp, 0, 1)
    return np.clip(gate, 0.0, 1.0)


def valve_sound(
    seconds: float,
    *,
    pat: str,
    bg: str,
    anomaly: str | None = None,
    severity: float = 0.5,
    rng: np.random.Generator,
) -> np.ndarray:
    """The sound of a solenoid valve cycling on a program (pressure units).

    **Program.** Pattern ``pat`` (:data:`VALVE_PROGRAMS`) opens the valve
    once per period for a fixed fraction of it; each clip starts at a
    random point of the cycle and each event jitters by about 2 ms.

    **Events.** Opening, the plunger is pulled up and strikes its stop: a
    sharp click (resonances at 2.6 kHz and 700 Hz). Closing, the spring
    drives it onto the seat: a click at 1.9 kHz, and the suddenly stopped
    liquid column rings the pipe (water hammer): a 120 Hz thump decaying
    in about 20 ms.

    **Flow.** While open, turbulent flow through the orifice gives
    broadband noise centred near 1.2 kHz (about 0.1-2.3 kHz), ramping up
    and down in 8 ms. Closed, the valve is silent.

    **Background.** Factory ambience (pink noise and mains hum) at the level
    of the ``bg`` attribute: the target domain is the noisy workshop.

    **Faults.**

    - ``"leak"``: a worn seat lets fluid through while closed. The jet
      through the narrow gap whistles: band-limited hiss centred at
      4.5-6.5 kHz, present only while the valve is closed (open, there is
      no pressure drop across the seat). RMS from 0.002 to 0.06 (severity 0
      to 1): at the low end far below the flow noise and the loud background,
      audible only in the quiet, high band.
    - ``"sticking"``: a dirty or swollen plunger sticks open: every closing
      comes late (by 5 % to 80 % of the closed time), lands up to 50 %
      harder and may bounce (up to two extra clicks within 15 ms, more
      likely and louder when severe).

    Parameters
    ----------
    seconds : float
        Duration.
    pat : {"A", "B"}
        Open/close program.
    bg : {"low", "high"}
        Background noise level.
    anomaly : {None, "leak", "sticking"}
        The fault, or None for a healthy valve.
    severity : float
        Fault severity in [0, 1].
    rng : np.random.Generator
        Source of randomness.

    Returns
    -------
    np.ndarray [shape=(round(seconds * 16000),), dtype=float64]
    """
    n = _n_samples(seconds)
    period, duty = VALVE_PROGRAMS[pat]
    cycles = int(np.ceil(seconds / period)) + 2
    opens = rng.uniform(-period, 0) + period * np.arange(cycles)
    opens += 0.002 * rng.standard_normal(cycles)
    closes = opens + duty * period + 0.002 * rng.standard_normal(cycles)
    close_strength = rng.uniform(0.9, 1.1, cycles)
    bounce_times: list[float] = []
    bounce_strength: list[float] = []
    if anomaly == "sticking":
        delay = (0.05 + 0.75 * severity) * (1 - duty) * period
        closes += delay * rng.uniform(0.8, 1.2, cycles)
        close_strength *= 1.0 + 0.5 * severity
        for c in closes:
            n_bounces = int(rng.random() < 0.3 + 0.7 * severity) + int(rng.random() < severity)
            for k in range(n_bounces):
                bounce_times.append(c + rng.uniform(0.004, 0.015))
                bounce_strength.append((0.1 + 0.5 * severity) / (k + 1))
    elif anomaly not in (None, "leak"):
        raise ParameterError(f"valve anomaly {anomaly!r} is not one of {ANOMALIES['valve']}")

    open_clicks = impulses(n, opens, rng.uniform(0.9, 1.1, cycles))
    close_clicks = impulses(
        n, np.concatenate([closes, bounce_times]), np.concatenate([close_strength, bounce_strength])
    )
    clicks = resonate(open_clicks, ((2600, 300, 1.0), (700, 120, 0.4)))
    clicks += resonate(close_clicks, ((1900, 250, 0.8), (120, 15, 0.3)))

    gate = _gate(n, opens, closes)
    flow = 0.12 * gate * coloured_noise(n, rng, lambda f: band(f, centre=1200, width=2200))
    y = clicks + flow + factory_background(n, rng, VALVE_BACKGROUND[bg])
    if anomaly == "leak":
        centre = rng.uniform(4500, 6500)
        hiss = coloured_noise(n, rng, lambda f: band(f, centre=centre, width=800))
        y += 0.002 * 30**severity * (1 - gate) * hiss
    return y


GENERATORS: dict[str, Callable[..., np.ndarray]] = {
    "fan": fan_sound,
    "bearing": bearing_sound,
    "valve": valve_sound,
}
"""Signal generator per machine type; each takes its attributes as keyword arguments."""

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
    import soundfile as sf

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
    from tqdm.auto import tqdm

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
