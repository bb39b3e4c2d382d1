"""Machine sound models: the signals of the toy factory, built from physics.

:mod:`asdflow.synth` writes clips in the DCASE 2024 Task 2 layout; this
module makes the sounds. Each machine type is one function of a duration,
its operating conditions (keyword arguments), a fault and its severity,
that returns a signal at :data:`SR` (16 kHz) in arbitrary pressure units,
``np.ndarray [shape=(round(seconds * 16000),), dtype=float64]``:

``fan`` (:func:`fan_sound`)
    A rotating machine. Each blade pushes the air once per revolution, so
    the sound is a harmonic series of the *blade-pass frequency* on top of
    broadband airflow noise. Faults: *imbalance* and a *damaged blade*.
``bearing`` (:func:`bearing_sound`)
    A rolling-element bearing on a motor shaft. A healthy bearing rolls
    smoothly: broadband noise coloured by the structure's resonances. A
    spalled race is struck by every passing ball: a periodic train of
    impacts, each ringing the structure's resonance.
``valve`` (:func:`valve_sound`)
    A solenoid valve on a schedule. Clicks on opening and closing, flow
    noise while open, silence (apart from the background) while closed.
    Faults: a *leak* whistling while closed, a *sticking* plunger that
    closes late.

:data:`GENERATORS` maps each machine type to its function and
:data:`ANOMALIES` lists its faults. The models are built from a few signal
blocks: noise with a given spectrum (:func:`coloured_noise`, with the
responses :func:`pink` and :func:`band`), impacts (:func:`impulses`)
ringing structural resonances (:func:`resonate`), tones locked to a
rotating shaft (:func:`shaft_phase`, :func:`periodic_from_orders`) and the
workshop's background (:func:`factory_background`).

The clips of every synthetic factory come from these functions: a change
that alters their output must bump :data:`asdflow.synth.GENERATOR_VERSION`,
so that cached factories are rebuilt.

Examples
--------
>>> import numpy as np
>>> from asdflow import sounds
>>> y = sounds.bearing_sound(0.5, vel=900.0, load=40.0, anomaly="outer", severity=1.0,
...                          rng=np.random.default_rng(0))
>>> y.shape, y.dtype
((8000,), dtype('float64'))
>>> round(sounds.bearing_defect_frequencies(900.0)["outer"], 1)
54.0
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from asdflow.data import SAMPLE_RATE
from asdflow.errors import ParameterError

__all__ = [
    "ANOMALIES",
    "BEARING_BALLS",
    "BEARING_MODES",
    "BEARING_RATIO",
    "FAN_BLADES",
    "GENERATORS",
    "MAX_SECONDS",
    "SR",
    "VALVE_BACKGROUND",
    "VALVE_PROGRAMS",
    "band",
    "bearing_defect_frequencies",
    "bearing_sound",
    "coloured_noise",
    "factory_background",
    "fan_sound",
    "impulses",
    "periodic_from_orders",
    "pink",
    "resonate",
    "shaft_phase",
    "valve_sound",
]

SR = SAMPLE_RATE
"""Sample rate of every generated clip, in Hz."""

MAX_SECONDS = 600.0
"""Longest clip the sound models (and :func:`asdflow.synth.generate_clip`) make, in seconds (about 77 MB per signal in float64)."""

ANOMALIES: dict[str, tuple[str, ...]] = {
    "fan": ("imbalance", "blade"),
    "bearing": ("outer", "inner"),
    "valve": ("leak", "sticking"),
}
"""The fault kinds per machine type: the ``anomaly`` values its sound model takes (an anomalous clip of :func:`asdflow.synth.generate_clip` draws one uniformly)."""


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
