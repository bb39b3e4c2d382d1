"""How close two floating-point results must be: one rule for tests and chapters.

Two correct computations of the same quantity rarely agree to the last bit:
CPUs with and without AVX-512, BLAS libraries, GPUs and thread counts add
the same numbers in different orders. The difference is bounded by the
rounding unit of the data type (``eps``: 1.2e-7 for float32, 2.2e-16 for
float64, 9.8e-4 for float16, 7.8e-3 for bfloat16) times the size of the
numbers involved times the number of roundings that can pile up. Every
numeric comparison of asdflow's tests and book chapters derives its
tolerance from :func:`tolerance` instead of typing a number such as 1e-9,
which float32 arithmetic cannot promise on another machine.

Examples
--------
>>> import numpy as np
>>> from asdflow.tolerance import tolerance
>>> tolerance(np.float64) < 1e-14 < tolerance(np.float32)
True
>>> tolerance("float32", magnitude=100.0, terms=10) == 100 * tolerance("float32", terms=10)
True
"""

from __future__ import annotations

import numpy as np

__all__ = ["SAFETY", "eps", "tolerance"]

SAFETY = 8.0
"""Factor on top of the rounding bound: room for the rounding of inputs and outputs."""

_HALF_TYPES = {"float16": 2.0**-10, "bfloat16": 2.0**-7, "half": 2.0**-10}


def eps(dtype: object) -> float:
    """The rounding unit (machine epsilon) of a NumPy or torch float type, array or tensor.

    Parameters
    ----------
    dtype : dtype, str, array or tensor
        ``np.float32``, ``"float64"``, ``torch.bfloat16``, an array...

    Returns
    -------
    float
        The distance from 1.0 to the next larger number of that type.
    """
    if not isinstance(dtype, type):  # an array or tensor: its dtype (np.float32 is a type)
        dtype = getattr(dtype, "dtype", dtype)
    name = str(dtype).removeprefix("torch.")
    if name in _HALF_TYPES:
        return _HALF_TYPES[name]
    return float(np.finfo(dtype if isinstance(dtype, type) else np.dtype(name)).eps)


def tolerance(dtype: object, magnitude: float = 1.0, *, terms: int = 1) -> float:
    """Absolute tolerance for comparing two computations of one quantity in ``dtype``.

    ``SAFETY * eps(dtype) * magnitude * terms``: the rounding unit, scaled by
    the size of the numbers summed or multiplied (not of the result, which may
    be near 0 after cancellation) and by how many roundings accumulate (the
    length of a sum or a dot product, the number of layers, ...). This is the
    textbook worst-case bound for a sum of ``terms`` numbers, so it holds
    whatever order a CPU, a BLAS library or a GPU adds them in.

    Parameters
    ----------
    dtype : dtype, str, array or tensor
        The type the computation ran in (the lower precision of the two).
    magnitude : float
        Size of the numbers involved, e.g. ``abs(x).max()`` of the inputs.
    terms : int
        Number of roundings that can pile up (1 for an element-wise formula).

    Returns
    -------
    float
    """
    return SAFETY * eps(dtype) * max(float(magnitude), np.finfo(np.float64).tiny) * max(1, terms)
