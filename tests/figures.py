"""What a saved plot draws, for tests: the figures that pass through ``reports.save_figure`` (every
search's PNGs do) are summarised by file name, so a test checks the plotted data, not the PNG's size."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def drawn(fig) -> list[dict]:
    """Per axes of ``fig``: title, axis labels, legend entries, texts, and the data of its lines
    (``(label, xy)``), scatters (``(label, offsets)``), bars (``(label, heights)``) and images."""
    from matplotlib.collections import PathCollection
    from matplotlib.container import BarContainer

    axes = []
    for ax in fig.axes:
        legend = ax.get_legend()
        axes.append({
            "title": ax.get_title(), "xlabel": ax.get_xlabel(), "ylabel": ax.get_ylabel(),
            "legend": [t.get_text() for t in legend.get_texts()] if legend else [],
            "texts": [t.get_text() for t in ax.texts],
            "lines": [(line.get_label(), np.column_stack([np.asarray(line.get_xdata(), float),
                                                          np.asarray(line.get_ydata(), float)]))
                      for line in ax.get_lines()],
            "points": [(c.get_label(), np.asarray(c.get_offsets(), float)) for c in ax.collections
                       if isinstance(c, PathCollection)],
            "bars": [(b.get_label(), [p.get_height() for p in b.patches]) for b in ax.containers
                     if isinstance(b, BarContainer)],
            "images": [np.asarray(im.get_array()) for im in ax.images],
        })
    return axes


def capture(monkeypatch) -> dict[str, list[dict]]:
    """From now on, record :func:`drawn` of every figure saved to a file, under the file's name
    (the figure is still written). In-memory PNGs (``figure_png``) are not recorded."""
    from orchestrator import reports

    seen: dict[str, list[dict]] = {}
    save = reports.save_figure

    def recording(fig, path, dpi: int = 120):
        if isinstance(path, (str, Path)):
            seen[Path(path).name] = drawn(fig)
        return save(fig, path, dpi=dpi)

    monkeypatch.setattr(reports, "save_figure", recording)
    return seen


def series(axes: dict, kind: str, label: str) -> np.ndarray:
    """The one ``kind`` ("lines", "points", "bars") entry of ``axes`` labelled ``label``."""
    found = [data for name, data in axes[kind] if name == label]
    assert len(found) == 1, (kind, label, [name for name, _ in axes[kind]])
    return np.asarray(found[0])


def assert_same_points(drawn, expected, rtol: float = 1e-9):
    """``drawn`` (an ``(n, 2)`` array) holds exactly the points ``expected`` (pairs), in any order."""
    got = np.asarray(sorted(map(tuple, np.asarray(drawn, float).reshape(-1, 2))), float).reshape(-1, 2)
    want = np.asarray(sorted(tuple(map(float, p)) for p in expected), float).reshape(-1, 2)
    np.testing.assert_allclose(got, want, rtol=rtol)
