"""The attribution methods as drivers over the :class:`~xaisdk.runtime.backend.Backend` protocol:
numpy in, numpy out, whatever runs the model (ONNX Runtime, TensorRT, torch).

- :mod:`xaisdk.methods.drivers`: gradient, Integrated and Expected Gradients, DeepLIFT, DeepSHAP,
  Occlusion; :mod:`xaisdk.methods.quadrature` their path rules;
- :mod:`xaisdk.methods.sliding_patch`, :mod:`xaisdk.methods.meaningful_perturbation` and
  :mod:`xaisdk.methods.removal`: feature removal with classic or inpainting fillers;
- :mod:`xaisdk.methods.empty_maps` (refusing all-zero maps), :mod:`xaisdk.methods.deeplift_rules`
  (which layers DeepLIFT's rules cover), :mod:`xaisdk.methods.common` (batching, occlusion windows,
  reference draws, shared with the torch reference methods).

Part of the torch-free core: these modules import numpy, the C++ extension and the core runtime only.
LIME needs scikit-learn and scikit-image and lives with the torch-facing methods in
:mod:`xaisdk.attribution`.

>>> from xaisdk.methods.quadrature import RULES
>>> "riemann_trapezoid" in RULES
True
"""
