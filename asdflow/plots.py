"""Figures of the pipeline: one function per figure, each returning its matplotlib Axes.

Every function draws into ``ax`` when given one (so figures compose into
subplots) and creates a new figure otherwise; ``ax.figure`` is the figure.
matplotlib is imported when a function is called, not with the module.

The book's chapters call :func:`book_style` once and make every figure
:data:`WIDTH` inches wide, so that a figure is shown at its own size in the
page's text column and its labels keep their size in points.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from asdflow.errors import ParameterError
from asdflow.features import FeatureConfig

if TYPE_CHECKING:
    from collections.abc import Sequence

    from matplotlib.axes import Axes

    from asdflow.features import FeatureConfig


WIDTH = 6.7
"""Width of the book's figures in inches: at :data:`DPI` it is 670 px, a little
less than the website's text column (688 px in a 1280 px wide window, room left
for the few pixels a layout adds), so the page shows a figure at its own size
and never scales its text down."""

DPI = 100
"""Pixels per inch of the figures as the website stores them (PNG)."""

BOOK_STYLE: dict[str, Any] = {
    "figure.figsize": (WIDTH, 3.2),
    "figure.dpi": DPI,
    "font.size": 10,
    "axes.titlesize": 10,
    "axes.labelsize": 10,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "legend.fontsize": 9,
    "legend.title_fontsize": 9,
    "figure.titlesize": 11,
}
"""matplotlib settings of the book: :data:`WIDTH` and :data:`DPI`, and text of
9-11 pt, i.e. 12-15 px on the page (a point is 1/72 inch)."""


def book_style() -> None:
    """Apply :data:`BOOK_STYLE` to matplotlib (every figure made afterwards).

    Examples
    --------
    >>> import matplotlib
    >>> book_style()
    >>> matplotlib.rcParams["figure.figsize"] == [WIDTH, 3.2]
    True
    """
    # deferred: the module imports matplotlib only where it draws
    import matplotlib.style

    matplotlib.style.use(BOOK_STYLE)


def _row_heights(sizes: Sequence[int], ax: Axes, min_height: float) -> np.ndarray:
    """Display height of every row: groups at least ``min_height`` rows tall, and tall enough
    for their label (1.2 times the tick label size) in the axes' present height."""
    # deferred: the module imports matplotlib only where it draws
    import matplotlib

    sizes_array = np.asarray(sizes, dtype=np.float64)
    label_pt = (
        1.2
        * matplotlib.font_manager.FontProperties(
            size=matplotlib.rcParams["ytick.labelsize"]
        ).get_size_in_points()
    )
    axes_pt = ax.get_window_extent().height * 72 / ax.figure.dpi
    least = min_height
    for _ in range(20):  # a few steps settle it: which groups are small depends on `least`
        total = np.maximum(sizes_array, least).sum()
        needed = label_pt * total / max(axes_pt, 1.0)
        if needed <= least or needed > sizes_array.sum():
            break
        least = needed
    return np.concatenate([np.full(size, max(1.0, least / size)) for size in sizes])


def plot_feature_image(
    image: np.ndarray,
    *,
    config: FeatureConfig | None = None,
    ax: Axes | None = None,
    title: str | None = None,
    per_row: bool = True,
    min_height: float = 6.0,
) -> Axes:
    """Show a feature image with its row groups labelled.

    Row 0 (the lowest mel band) is at the top, as in the image the encoder
    sees; white lines separate the groups (mel, chroma, contrast, tonnetz,
    rms, centroid, bandwidth, flatness, zcr), whose names label the y axis.
    Every group is drawn at least ``min_height`` mel bands tall, so that the
    one-row groups at the bottom stay visible.

    Parameters
    ----------
    image : np.ndarray [shape=(n_rows, t)]
        A raw image from :func:`asdflow.features.feature_image` or a
        standardised one from :meth:`asdflow.features.RowStats.transform`.
    config : FeatureConfig, optional
        The recipe of the image, for the row groups and the time axis
        (default: the report's).
    ax : matplotlib Axes, optional
        Where to draw; a new figure otherwise.
    title : str, optional
        Axes title.
    per_row : bool
        Rescale every row to [0, 1] for display (the default, for raw
        images: their rows range from 0-1 for chroma and flatness to
        thousands of Hz for the centroid, so one colour scale would show only
        the largest rows). ``False`` shows the values as they are on a
        colour scale symmetric about 0, clipped at the 99th percentile of
        ``|image|``: the view of a standardised image.
    min_height : float
        Least display height of a group, in rows of the mel group (whose
        rows are drawn one unit tall); more where the axes are too short
        for the groups' labels.

    Returns
    -------
    matplotlib.axes.Axes
        The axes drawn into; ``ax.figure`` is its figure.
    """
    # deferred: pyplot picks a backend on import; only drawing needs it
    import matplotlib.pyplot as plt

    config = config or FeatureConfig()
    image = np.asarray(image, dtype=np.float64)
    if image.ndim != 2 or image.shape[0] != config.n_rows:
        raise ParameterError(
            f"expected an image of {config.n_rows} rows (n_rows, t), got shape {image.shape}; "
            "pass the FeatureConfig it was made with"
        )
    groups = config.row_groups()
    if ax is None:
        _, ax = plt.subplots(figsize=(WIDTH, 4.5), layout="constrained")

    heights = _row_heights([rows.stop - rows.start for rows in groups.values()], ax, min_height)
    y_edges = np.concatenate([[0.0], np.cumsum(heights)])
    t_edges = np.arange(image.shape[1] + 1) * (config.hop_length / config.sr)
    if per_row:
        low = image.min(axis=1, keepdims=True)
        span = image.max(axis=1, keepdims=True) - low
        shown = (image - low) / np.where(span > 0, span, 1.0)
        mesh = ax.pcolormesh(t_edges, y_edges, shown, cmap="magma", vmin=0.0, vmax=1.0)
        label = "value, each row rescaled to [0, 1]"
    else:
        limit = float(np.percentile(np.abs(image), 99)) or 1.0
        mesh = ax.pcolormesh(t_edges, y_edges, image, cmap="RdBu_r", vmin=-limit, vmax=limit)
        label = "standardised value"
    ax.figure.colorbar(mesh, ax=ax, label=label, pad=0.01)

    for rows in list(groups.values())[1:]:
        ax.axhline(y_edges[rows.start], color="white", linewidth=0.8)
    ax.set_yticks([(y_edges[rows.start] + y_edges[rows.stop]) / 2 for rows in groups.values()])
    ax.set_yticklabels(list(groups))
    ax.set_ylim(y_edges[-1], 0.0)
    ax.set_xlabel("time (s)")
    if title is not None:
        ax.set_title(title)
    return ax


def plot_anomaly_map(
    amap: np.ndarray,
    *,
    rows: Sequence[str] | None = None,
    config: FeatureConfig | None = None,
    ax: Axes | None = None,
    title: str | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    min_height: float = 6.0,
    colorbar: bool = True,
) -> Axes:
    """Show an anomaly map over time and feature rows, its row groups labelled.

    The layout is that of :func:`plot_feature_image` (row 0 at the top, every
    group at least ``min_height`` mel bands tall, white lines between groups),
    so a map and its feature image can be read side by side.

    Parameters
    ----------
    amap : np.ndarray [shape=(n_kept_rows, t)]
        One anomaly map, e.g. ``CFlowDetector.anomaly_maps(images)[i]``
        (higher = less likely under the training clips).
    rows : sequence of str, optional
        The row groups the map covers, as in ``CFlowConfig.rows`` (default:
        all groups of ``config``). Given in any order; the map's rows are
        the groups' rows in the image's order.
    config : FeatureConfig, optional
        The recipe of the image, for the row groups and the time axis
        (default: the report's).
    ax : matplotlib Axes, optional
        Where to draw; a new figure otherwise.
    title : str, optional
        Axes title.
    vmin, vmax : float, optional
        Colour range (default: the map's minimum and maximum). Pass the same
        values to maps that should be compared.
    min_height : float
        Least display height of a group, in rows of the mel group; more
        where the axes are too short for the groups' labels.
    colorbar : bool
        Draw a colour bar beside the axes.

    Returns
    -------
    matplotlib.axes.Axes
        The axes drawn into; ``ax.figure`` is its figure.
    """
    # deferred: pyplot picks a backend on import; only drawing needs it
    import matplotlib.pyplot as plt

    config = config or FeatureConfig()
    every = config.row_groups()
    names = list(every) if rows is None else [name for name in every if name in set(rows)]
    unknown = sorted(set(rows or ()) - set(every))
    if unknown or not names:
        raise ParameterError(
            f"unknown or no row groups {unknown or rows}; use names of {list(every)}"
        )
    sizes = [every[name].stop - every[name].start for name in names]
    amap = np.asarray(amap, dtype=np.float64)
    if amap.ndim != 2 or amap.shape[0] != sum(sizes):
        raise ParameterError(
            f"expected a map of {sum(sizes)} rows (groups {names}) x frames, got shape "
            f"{amap.shape}; pass the rows the detector kept (CFlowConfig.rows)"
        )
    if ax is None:
        _, ax = plt.subplots(figsize=(WIDTH, 4.5), layout="constrained")

    heights = _row_heights(sizes, ax, min_height)
    y_edges = np.concatenate([[0.0], np.cumsum(heights)])
    starts = np.concatenate([[0], np.cumsum(sizes)])
    t_edges = np.arange(amap.shape[1] + 1) * (config.hop_length / config.sr)
    mesh = ax.pcolormesh(t_edges, y_edges, amap, cmap="inferno", vmin=vmin, vmax=vmax)
    if colorbar:
        ax.figure.colorbar(mesh, ax=ax, label="anomaly map", pad=0.01)
    for start in starts[1:-1]:
        ax.axhline(y_edges[start], color="white", linewidth=0.8)
    ax.set_yticks(
        [(y_edges[a] + y_edges[b]) / 2 for a, b in zip(starts[:-1], starts[1:], strict=True)]
    )
    ax.set_yticklabels(names)
    ax.set_ylim(y_edges[-1], 0.0)
    ax.set_xlabel("time (s)")
    if title is not None:
        ax.set_title(title)
    return ax
