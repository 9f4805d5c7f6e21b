"""Colour-mapping of depth and disparity maps for logs and `tools/predict.py` (no matplotlib).

The map is magma-like, built from a few hand-picked anchor colours of matplotlib's magma and
linearly interpolated: dark purple for far (low disparity), bright yellow for near.
"""

from __future__ import annotations

import numpy as np

# (position, R, G, B) anchors sampled from matplotlib's "magma" colormap.
_MAGMA_ANCHORS = np.array(
    [
        (0.00, 0.001, 0.000, 0.014),
        (0.13, 0.078, 0.054, 0.211),
        (0.25, 0.232, 0.060, 0.438),
        (0.38, 0.390, 0.100, 0.502),
        (0.50, 0.550, 0.161, 0.506),
        (0.63, 0.716, 0.215, 0.475),
        (0.75, 0.868, 0.288, 0.409),
        (0.88, 0.979, 0.557, 0.377),
        (1.00, 0.987, 0.991, 0.750),
    ]
)


def colorize(values: np.ndarray, vmin: float | None = None, vmax: float | None = None) -> np.ndarray:
    """Maps a [H, W] (or [H, W, 1]) array to uint8 RGB [H, W, 3].

    Args:
      values: the map, e.g. disparity (near = bright).
      vmin, vmax: value range; default the 0th and 95th percentile (Monodepth2's visualisation).
    """
    v = np.asarray(values, dtype=np.float64)
    if v.ndim == 3 and v.shape[-1] == 1:
        v = v[..., 0]
    if v.ndim != 2:
        raise ValueError(f"colorize expects a [H, W] map, got shape {v.shape}")
    finite = v[np.isfinite(v)]
    lo = float(np.min(finite)) if vmin is None and finite.size else (vmin or 0.0)
    hi = float(np.percentile(finite, 95)) if vmax is None and finite.size else (vmax or 1.0)
    t = np.clip((v - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
    t = np.where(np.isfinite(t), t, 0.0)
    rgb = np.stack(
        [np.interp(t, _MAGMA_ANCHORS[:, 0], _MAGMA_ANCHORS[:, c]) for c in (1, 2, 3)], axis=-1
    )
    return (rgb * 255.0 + 0.5).astype(np.uint8)
