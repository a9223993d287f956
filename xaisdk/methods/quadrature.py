"""Path-integral quadrature rules for Integrated Gradients: points in [0, 1] and their weights."""

from __future__ import annotations

import numpy as np

from xaisdk.errors import InputError
from xaisdk.limits import GAUSS_LEGENDRE_MAX_NODES, check_size

RULES = ("riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gausslegendre")


def path_rule(rule: str, n_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Points ``alphas`` in [0, 1] and weights summing to 1 that approximate an integral over [0, 1].

    ``riemann_trapezoid`` is the composite trapezoid rule on ``n_steps`` equally spaced points,
    spacing ``1/(n_steps-1)``. (Captum 0.9's "riemann_trapezoid" uses spacing ``1/n_steps`` on the
    same points, so its weights sum to ``1 - 1/n_steps``; ours sum to 1.)

    ``n_steps`` is an integer in [1, ``Limits.n_steps``] (2 for the trapezoid rule; see
    :func:`xaisdk.limits.check_size`); ``gausslegendre`` takes at most
    :data:`~xaisdk.limits.GAUSS_LEGENDRE_MAX_NODES` nodes whatever the limit.

    >>> a, w = path_rule("riemann_middle", 4)
    >>> a.tolist(), w.tolist()
    ([0.125, 0.375, 0.625, 0.875], [0.25, 0.25, 0.25, 0.25])
    >>> a, w = path_rule("gausslegendre", 3)
    >>> round(float((w * a**4).sum()), 6)  # exact for polynomials up to degree 5: int x^4 = 1/5
    0.2
    """
    if not isinstance(rule, str) or rule not in RULES:
        raise InputError(f"rule: expected one of {', '.join(RULES)}, got {rule!r}")
    minimum = 1 if rule in ("gausslegendre", "riemann_left", "riemann_right", "riemann_middle") else 2
    n = check_size(n_steps, "n_steps", minimum=minimum)
    if rule == "gausslegendre" and n > GAUSS_LEGENDRE_MAX_NODES:
        raise InputError(f"n_steps: rule 'gausslegendre' takes at most {GAUSS_LEGENDRE_MAX_NODES} nodes (computing "
                         f"more costs O(n^2) memory and O(n^3) time), got {n}; use a riemann_* rule for more steps")
    if rule == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(n)
        return 0.5 * (nodes + 1.0), 0.5 * weights
    weights = np.full(n, 1.0 / n)
    if rule == "riemann_left":
        alphas = np.arange(n) / n
    elif rule == "riemann_right":
        alphas = (np.arange(n) + 1.0) / n
    elif rule == "riemann_middle":
        alphas = (np.arange(n) + 0.5) / n
    else:
        alphas = np.linspace(0.0, 1.0, n)
        weights = np.full(n, 1.0 / (n - 1))
        weights[[0, -1]] /= 2.0
    return alphas, weights
