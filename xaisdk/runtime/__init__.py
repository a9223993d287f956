"""Attribution loops over numpy gradient backends (ONNX Runtime and the like); imports no torch.

>>> import numpy as np
>>> from xaisdk.runtime import integrated_gradients_loop
>>> x = np.ones((1, 3), dtype=np.float32)
>>> integrated_gradients_loop(lambda batch: 2 * batch, x, 0.0, np.array([0.5]), np.array([1.0]))
array([[1., 1., 1.]], dtype=float32)
"""

import os

# OpenMP threads that spin between the extension's short parallel regions steal the core that the
# gradient function (ONNX Runtime, torch) needs next; sleeping waiters cost ~1 ms less per chunk on
# small VMs. Read once when libgomp loads, so it only applies if nothing loaded OpenMP before us;
# a caller's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from xaisdk.runtime.ig_loop import integrated_gradients_loop  # noqa: E402
from xaisdk.runtime.ig_reference import integrated_gradients_reference  # noqa: E402
from xaisdk.runtime.perturbation import descending_order, perturbation_scores  # noqa: E402

__all__ = ["descending_order", "integrated_gradients_loop", "integrated_gradients_reference", "perturbation_scores"]
