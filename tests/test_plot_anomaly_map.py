"""Tests of asdflow.plots.plot_anomaly_map."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest

from asdflow.features import GROUPS, ROW_GROUPS
from asdflow.plots import plot_anomaly_map
from asdflow.tolerance import tolerance

matplotlib.use("Agg")


@pytest.mark.parametrize(
    ("rows", "labels"),
    [(None, list(GROUPS)), (("zcr", "mel"), ["mel", "zcr"]), (("chroma",), ["chroma"])],
)
def test_labels_the_kept_groups_in_image_order(rows, labels):
    import matplotlib.pyplot as plt

    n_rows = sum(ROW_GROUPS[g].stop - ROW_GROUPS[g].start for g in labels)
    amap = np.random.default_rng(0).random((n_rows, 30))
    _, ax = plt.subplots(figsize=(6, 12))  # tall enough that every label fits at min_height
    ax = plot_anomaly_map(amap, rows=rows, title="a map", vmin=0.0, vmax=1.0, ax=ax)
    assert [t.get_text() for t in ax.get_yticklabels()] == labels
    assert ax.get_title() == "a map"
    mesh = ax.collections[0]
    assert mesh.get_clim() == (0.0, 1.0)
    # one-row groups are drawn at least min_height (6) mel rows tall, row 0 on top
    bottom, top = ax.get_ylim()
    expected = sum(max(ROW_GROUPS[g].stop - ROW_GROUPS[g].start, 6) for g in labels)
    # float64 row edges: a sum of one height per row
    assert (bottom, top) == (
        pytest.approx(expected, rel=0, abs=tolerance("float64", expected, terms=n_rows)),
        0.0,
    )
    # time axis in seconds: 30 frames of 512 samples (the default hop) at 16 kHz
    seconds = 30 * 512 / 16000
    assert ax.get_xlim()[1] == pytest.approx(
        seconds, rel=0, abs=tolerance("float64", seconds, terms=30)
    )
    plt.close(ax.figure)


def test_refuses_maps_of_other_rows():
    with pytest.raises(ValueError, match="128 rows"):
        plot_anomaly_map(np.zeros((158, 10)), rows=("mel",))
    with pytest.raises(ValueError, match="unknown"):
        plot_anomaly_map(np.zeros((128, 10)), rows=("mfcc",))


def test_book_style_keeps_the_group_labels_readable_at_page_width():
    """A default figure of book_style fits the page's column (688 px) and its labels are >= 9 px."""
    import matplotlib.pyplot as plt

    from asdflow.features import FeatureConfig
    from asdflow.plots import book_style, plot_feature_image

    with matplotlib.rc_context():
        book_style()
        config = FeatureConfig()
        for ax in (
            plot_anomaly_map(np.zeros((config.n_rows, 20)), config=config),
            plot_feature_image(np.ones((config.n_rows, 20)), config=config),
        ):
            fig = ax.figure
            fig.canvas.draw()
            width_px = fig.get_window_extent().width  # pixels at the figure's dpi
            assert width_px <= 688
            for label in ax.get_yticklabels() + ax.get_xticklabels():
                assert label.get_fontsize() * fig.dpi / 72 >= 9
            # every group, the one-row ones included, is taller than its label
            edges = sorted({round(line.get_ydata()[0], 6) for line in ax.lines} | {0.0})
            edges.append(ax.get_ylim()[0])
            px_per_unit = ax.get_window_extent().height / ax.get_ylim()[0]
            label_px = ax.get_yticklabels()[0].get_fontsize() * fig.dpi / 72
            assert min(np.diff(edges)) * px_per_unit >= label_px
            plt.close(fig)
