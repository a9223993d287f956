"""Bilinear resizing of NCHW image batches."""

from __future__ import annotations

import numpy as np


def resize_bilinear(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize float images (N, C, H, W) in [0, 1] to (N, C, *size) float32, clipped to [0, 1].

    Uses torch.nn.functional.interpolate(mode="bilinear", align_corners=False); when shrinking,
    antialias=True so that the result averages the covered pixels instead of sampling them.

    >>> import numpy as np
    >>> resize_bilinear(np.ones((2, 1, 8, 8), np.float32), (16, 12)).shape
    (2, 1, 16, 12)
    """
    import torch  # imported here so that `import xaisdk.data` stays fast
    import torch.nn.functional as F

    x = np.ascontiguousarray(x, dtype=np.float32)
    height, width = size
    if x.shape[2:] == (height, width):
        return x.copy()
    shrink = height < x.shape[2] or width < x.shape[3]
    with torch.no_grad():
        out = F.interpolate(torch.from_numpy(x), size=(height, width), mode="bilinear",
                            align_corners=False, antialias=shrink)
    # Interpolation weights are convex, so only float rounding can leave [0, 1].
    return np.clip(out.numpy(), 0.0, 1.0).astype(np.float32, copy=False)
