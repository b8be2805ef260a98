"""The multi-instance (top-down) stages' geometry, in plain numpy: how much the centroid stage downscales
whole frames (:func:`centroid_scale`), how large the centred-instance stage's crops are
(:func:`instance_crop`), and the instance centres found in a centroid heatmap (:func:`find_peaks`: max-pool
non-maximum suppression, a threshold, sub-pixel refinement). Where the crops lie:
:func:`kpconv.model.multi.crop_boxes_tf`, the one definition the training pipeline and prediction share.

Pixel convention: continuous, pixel ``i``'s centre at ``i + 0.5`` (as everywhere in kpconv).
"""
from __future__ import annotations

import math
from typing import Sequence, Tuple

import numpy as np

# The centroid stage: frames are downscaled so that the median instance (its box's longer side) is
# CENTROID_TARGET_PX pixels at the model's input (never upscaled): small animals in wide frames keep
# enough pixels to be found, large ones do not make the first stage expensive. Neighbours must stay apart
# too: the 5th-percentile distance between an instance's centre and its nearest neighbour's in the same
# frame keeps CENTROID_MIN_SEPARATION_PX (3 heatmap cells of stride 4: two peaks, not one, under the 3x3
# non-maximum suppression), so touching animals among bigger ones are not merged by the downscale.
# The neighbour rule enlarges the size rule's scale at most CENTROID_MAX_SEPARATION_GAIN times (instances that
# overlap almost entirely, as the synthetic benchmark's figures may, would otherwise ask for full resolution).
CENTROID_TARGET_PX = 32.0
CENTROID_MIN_SEPARATION_PX = 12.0
CENTROID_SEPARATION_PERCENTILE = 5
CENTROID_MAX_SEPARATION_GAIN = 2.0
# The centred-instance stage: crops cover the 90th-percentile instance box times CROP_MARGIN plus
# CROP_PAD pixels, rounded up to CROP_MULTIPLE; crops larger than CROP_MAX_INPUT pixels are downscaled to it.
# Small instances are upscaled (at most CROP_MAX_UPSCALE times) so that the 90th-percentile box keeps
# CROP_MIN_INSTANCE_PX pixels at the model's input: a 25x12 px animal is posed from about 64 px, where a
# heatmap cell of stride 4 is 1.6 original pixels, not 4 (OKS of such animals allows errors of ~3 px).
CROP_PERCENTILE = 90
CROP_MARGIN = 1.2
CROP_PAD = 16
CROP_MULTIPLE = 32
CROP_MAX_INPUT = 192
CROP_MIN_INSTANCE_PX = 64.0
CROP_MAX_UPSCALE = 4.0


def centroid_scale(box_sides: Sequence[float], target: float = CENTROID_TARGET_PX,
                   neighbour_distances: Sequence[float] = (), separation: float = CENTROID_MIN_SEPARATION_PX
                   ) -> float:
    """The factor whole frames are resized by for the centroid stage: the median of ``box_sides`` (each
    instance box's longer side, in stored pixels) becomes ``target`` pixels, and the
    :data:`CENTROID_SEPARATION_PERCENTILE` of ``neighbour_distances`` (each instance centre's distance to the
    nearest other centre of its frame) at least ``separation`` pixels (enlarging the first factor at most
    :data:`CENTROID_MAX_SEPARATION_GAIN` times); at most 1. Rounded up to 1/64."""
    sides = np.asarray([s for s in box_sides if s > 0], np.float64)
    if sides.size == 0:
        return 1.0
    s = target / float(np.median(sides))
    near = np.asarray([d for d in neighbour_distances if d > 0], np.float64)
    if near.size:
        s = max(s, min(CENTROID_MAX_SEPARATION_GAIN * s,
                       separation / float(np.percentile(near, CENTROID_SEPARATION_PERCENTILE))))
    s = min(1.0, s)
    return max(1.0 / 64, math.ceil(s * 64) / 64)


def instance_crop(box_sides: Sequence[float], percentile: float = CROP_PERCENTILE, margin: float = CROP_MARGIN,
                  pad: int = CROP_PAD, multiple: int = CROP_MULTIPLE, max_input: int = CROP_MAX_INPUT,
                  min_instance: float = CROP_MIN_INSTANCE_PX, max_upscale: float = CROP_MAX_UPSCALE
                  ) -> Tuple[int, float]:
    """``(crop, scale)`` of the centred-instance stage: its input is ``crop`` x ``crop`` pixels (a multiple
    of ``multiple``), covering ``crop / scale`` stored pixels around an instance centre. The region covers
    the ``percentile`` instance box side times ``margin`` plus ``pad``; above ``max_input`` it is downscaled;
    when that box side is under ``min_instance`` pixels the region is upscaled (at most ``max_upscale``
    times) so that it keeps ``min_instance`` pixels, within ``max_input``."""
    sides = np.asarray([s for s in box_sides if s > 0], np.float64)
    side = float(np.percentile(sides, percentile)) if sides.size else 64.0
    need = side * margin + pad
    up = min(max_upscale, max(1.0, min_instance / max(side, 1e-6)))
    scale = min(up, max_input / need)
    crop = max(multiple, int(math.ceil(need * scale / multiple)) * multiple)
    return crop, round(scale, 6)


def find_peaks(heatmap, threshold: float = 0.2, max_peaks: int = 0, window: int = 3
               ) -> Tuple[np.ndarray, np.ndarray]:
    """Local maxima of one heatmap ``(h, w)``: ``(xy (N, 2) in heatmap cells, continuous convention,
    values (N,))``, strongest first. A peak is the maximum of its ``window`` x ``window`` neighbourhood
    (max-pool non-maximum suppression, :func:`scipy.ndimage.maximum_filter`) and at least ``threshold``;
    its position is refined to sub-cell by a quadratic fit of the log heatmap through its neighbours along
    each axis (offset clipped to half a cell). ``max_peaks`` > 0 keeps that many. Plateaus give one peak."""
    from scipy.ndimage import maximum_filter

    hm = np.asarray(heatmap, np.float32)
    if hm.ndim != 2:
        raise ValueError(f"expected one heatmap (h, w), got shape {hm.shape}")
    h, w = hm.shape
    is_max = (hm == maximum_filter(hm, size=window, mode="constant", cval=-np.inf)) & (hm >= threshold)
    ys, xs = np.nonzero(is_max)
    values = hm[ys, xs]
    order = np.lexsort((xs, ys, -values))           # strongest first, ties in raster order
    ys, xs, values = ys[order], xs[order], values[order]
    keep, taken = [], np.zeros_like(is_max)
    for i, (y, x) in enumerate(zip(ys, xs)):        # a plateau's other maxima next to a kept one: dropped
        y0, y1, x0, x1 = max(0, y - 1), min(h, y + 2), max(0, x - 1), min(w, x + 2)
        if taken[y0:y1, x0:x1].any():
            continue
        taken[y, x] = True
        keep.append(i)
        if max_peaks and len(keep) >= max_peaks:
            break
    ys, xs, values = ys[keep], xs[keep], values[keep]
    log = np.log(np.maximum(hm, 1e-6))

    def offset(lo, c, hi):
        den = lo - 2.0 * c + hi
        off = np.where(den < -1e-6, 0.5 * (lo - hi) / np.where(den < -1e-6, den, -1.0), 0.0)
        return np.clip(off, -0.5, 0.5)

    dx = np.where((xs > 0) & (xs < w - 1), offset(log[ys, np.maximum(xs - 1, 0)], log[ys, xs],
                                                  log[ys, np.minimum(xs + 1, w - 1)]), 0.0)
    dy = np.where((ys > 0) & (ys < h - 1), offset(log[np.maximum(ys - 1, 0), xs], log[ys, xs],
                                                  log[np.minimum(ys + 1, h - 1), xs]), 0.0)
    xy = np.stack([xs + 0.5 + dx, ys + 0.5 + dy], -1).astype(np.float64).reshape(-1, 2)
    return xy, values.astype(np.float64)
