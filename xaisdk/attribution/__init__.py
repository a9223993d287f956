"""One-vs-one attribution methods (torch reference backend).

Every method attributes ``S_source - S_target`` (``S_source`` alone when ``target`` is None) and
returns a numpy array shaped like ``x``.
"""

from xaisdk.attribution.deeplift import deeplift, deepshap
from xaisdk.attribution.expected_gradients import expected_gradients
from xaisdk.attribution.gradient import grad_x_input, gradient
from xaisdk.attribution.integrated_gradients import integrated_gradients
from xaisdk.attribution.occlusion import occlusion
from xaisdk.attribution.quadrature import RULES, path_rule

METHODS = {
    "gradient": gradient,
    "grad_x_input": grad_x_input,
    "integrated_gradients": integrated_gradients,
    "expected_gradients": expected_gradients,
    "deeplift": deeplift,
    "deepshap": deepshap,
    "occlusion": occlusion,
}

__all__ = [
    "METHODS",
    "RULES",
    "deeplift",
    "deepshap",
    "expected_gradients",
    "grad_x_input",
    "gradient",
    "integrated_gradients",
    "occlusion",
    "path_rule",
]
