"""The secure SiLU: a Taylor table read by a dealt one-hot, or its polynomial/sigmoid variants.

Measured on the embedded SmolLM2-135M-Instruct (see ``docs/numerics.md``): MLP gate
pre-activations (input of SiLU) lie in [-33.3, 50.2] (99.9% of |x| below 20). The default
SiLU (``ActivationConfig.method="lookup"``) has no range limit besides the ring.

Charged to ``operator_scope("activation")``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import crypten
import torch
from crypten.encoder import FixedPointEncoder

from crypten_mpcache.runtime.cost import operator_scope
from crypten_mpcache.secure.functions.approx import exp_nonpositive
from crypten_mpcache.secure.functions.lookup import (
    polynomial,
    segment_parts,
    step_opening,
    taylor_table,
)
from crypten_mpcache.secure.primitives.fixed_point import fixed_scale, mul_public_int
from crypten_mpcache.secure.primitives.opened_input import OpenedInput
from crypten_mpcache.secure.primitives.openings import open_together
from crypten_mpcache.secure.primitives.select import (
    difference_bound,
    less_than_zero,
    negative_part_pending,
)

SILU_METHODS = ("lookup", "exp_poly", "piecewise", "sigmoid")


@dataclass(frozen=True)
class ActivationConfig:
    """Knobs of the secure SiLU.

    method:
      "sigmoid": x * CrypTen sigmoid(x) (comparison + exp + 3 reciprocal iterations).
      "exp_poly": silu(x) = relu(x) - |x| * P(exp(-|x|)) with P ~ z/(1+z) on [0, 1]:
        one comparison, one exp, one short polynomial, no reciprocal.
      "piecewise": 0 below -bound, x above bound, x/2 + even polynomial in (x/bound)^2
        in between: two comparisons in the same round and one polynomial.
      "lookup": 0 below -lookup_bound, x above it, and in between the Taylor polynomial
        of the segment x falls in, its coefficients read by a dealt one-hot of the
        segment index (``primitives.onehot``): two comparisons in one round, one opening and
        ``lookup_order`` products.
    degree: polynomial degree (in z for exp_poly, in (x/bound)^2 for piecewise).
    bound: the piecewise breakpoint (silu(-b) ~ -b e^-b is the error beyond it).
    exp_iterations, exp_order: see ``exp_nonpositive``; exp(-a) is valid for a < 2**iters.
    lookup_bound, lookup_steps, lookup_order: the table covers [-lookup_bound,
      lookup_bound) in segments of width 1 / lookup_steps (their number, a power of two,
      is the width W of the dealt one-hot: DPF keys of log2(W) x ~16 bytes per element
      and party, ``primitives.onehot_dealer``).
    input_bound_log2: |x| < 2**input_bound_log2 for every input (SmolLM2's gate
      pre-activations stay below 2**6, ``test_measured_ranges_inside_supported``): the
      gates' DCF keys compare input_bound_log2 + 17 bits, not 63.
    """

    method: str = "lookup"
    degree: int = 6
    bound: float = 7.0
    exp_iterations: int = 8
    exp_order: int = 2
    lookup_bound: float = 16.0
    lookup_steps: int = 4
    lookup_order: int = 2
    input_bound_log2: int = 13

    def __post_init__(self) -> None:
        if self.method not in SILU_METHODS:
            raise ValueError(f"unknown SiLU method {self.method!r}")
        if not 1 <= self.degree <= 16:
            raise ValueError("degree must be in [1, 16]")
        if not self.bound > 0:
            raise ValueError("bound must be positive")
        if not 1 <= self.exp_iterations <= 12:
            raise ValueError("exp_iterations must be in [1, 12]")
        if self.exp_order not in (1, 2, 3):
            raise ValueError("exp_order must be 1, 2 or 3")
        if not 1 <= self.lookup_steps <= 1024 or self.lookup_steps & (self.lookup_steps - 1):
            raise ValueError("lookup_steps must be a power of two in [1, 1024]")
        segments = 2 * self.lookup_bound * self.lookup_steps
        if not (segments >= 16 and segments == int(segments)
                and int(segments) & (int(segments) - 1) == 0):
            raise ValueError("2 * lookup_bound * lookup_steps must be a power of two >= 16")
        if self.lookup_order not in (1, 2):
            raise ValueError("lookup_order must be 1 or 2")
        if not 1 <= self.input_bound_log2 <= 45 or \
                max(self.bound, self.lookup_bound) >= 2.0 ** self.input_bound_log2:
            raise ValueError("input_bound_log2 must be in [1, 45] and hold the bounds")

    @property
    def lookup_width(self) -> int:
        """Segments in the table (the dealt one-hot's width)."""
        return int(2 * self.lookup_bound * self.lookup_steps)


@lru_cache(maxsize=32)
def _fit_poly(kind: str, degree: int, bound: float) -> tuple[float, ...]:
    """Least-squares coefficients c_0..c_degree (float64) of the approximated function."""
    if kind == "sigma_of_z":  # z/(1+z) on z in [0, 1]
        t = torch.linspace(0.0, 1.0, 4001, dtype=torch.float64)
        target = t / (1 + t)
    else:  # silu(x) - x/2 as a polynomial in w = (x/bound)^2, x in [0, bound]
        xs = torch.linspace(0.0, bound, 4001, dtype=torch.float64)
        t = (xs / bound) ** 2
        target = xs * torch.sigmoid(xs) - xs / 2
    design = torch.stack([t ** i for i in range(degree + 1)], dim=1)
    coef = torch.linalg.lstsq(design, target.unsqueeze(1)).solution.squeeze(1)
    return tuple(float(c) for c in coef)


def _poly(x: Any, coeffs: tuple[float, ...]) -> Any:
    out = x.polynomial(list(coeffs[1:])) if len(coeffs) > 1 else x * 0
    return out + coeffs[0]


def _silu_exp_poly(x: Any, config: ActivationConfig) -> Any:
    neg = x._ltz()                                  # scale-1 bit [x < 0]
    neg_x = x * neg                                 # exact (bit times fixed)
    relu = x - neg_x
    absx = x - neg_x * 2
    z = exp_nonpositive(-absx, config.exp_iterations, config.exp_order)
    p = _poly(z, _fit_poly("sigma_of_z", config.degree, 0.0))
    return relu - absx * p


def _outside(x: Any, edge: float, config: ActivationConfig) -> tuple[Any, Any]:
    """Scale-1 bits [x < -edge] and [x > edge], in one comparison round (|x +- edge| <
    2**(input_bound_log2 + 1))."""
    sides = less_than_zero(crypten.stack([x + edge, x.neg() + edge]),
                           difference_bound(config.input_bound_log2))
    return sides[0], sides[1]


@dataclass
class _Gates:
    """The table SiLU's gates: ``mid`` = [|x| <= edge] (scale-1 bits) and ``high_x`` =
    [x > edge] x, so that silu(x) ~ mid inner + high_x."""

    mid: Any
    high_x: Any


def _gates_and_segment(x: Any, config: ActivationConfig
                       ) -> tuple[_Gates, Any, Any, OpenedInput | None]:
    """(gates, one-hot, d, d's opening for order 2) of the table SiLU: the gates'
    comparison, the segment's one-hot and d open together (one round for all three). The gates are
    compare-and-selects (``select.negative_part_pending``): [y < 0] and [y < 0] y for
    y = (x + edge, edge - x) from the comparison's own rounds, so [x > edge] x costs no
    product: edge [x > edge] - [edge - x < 0] (edge - x)."""
    bound, steps = config.lookup_bound, config.lookup_steps
    edge = bound - 4.0 / steps                      # gated-out v may wrap mod W
    gates = negative_part_pending(crypten.stack([x + edge, x.neg() + edge]),
                                  difference_bound(config.input_bound_log2))
    segment, d = segment_parts(x + bound, steps, config.lookup_width)
    step = None
    if config.lookup_order == 1:
        (sides, selected), bits = open_together(gates, segment)
    else:
        (sides, selected), bits, step = open_together(gates, segment, step_opening(d))
    return _Gates(1 - sides[0] - sides[1], _times_public(sides[1], edge) - selected[1]), \
        bits, d, step


def _times_public(bits: Any, value: float) -> Any:
    """bits * value at the fixed-point scale, exact and local (value * 2^16 an integer:
    the gates' edge is a multiple of 1 / lookup_steps)."""
    raw = value * fixed_scale()
    if raw != int(raw):
        raise ValueError(f"{value} is not a multiple of 2^-16")
    out = mul_public_int(bits, torch.tensor(int(raw)))
    out.encoder = FixedPointEncoder()
    return out


def _gated(x: Any, inner: Any, low: Any, high: Any) -> Any:
    """silu(x) ~ 0 below the inner range, x above it, ``inner`` within: both gate
    products in one stacked product (one round)."""
    products = crypten.stack([high, low]) * crypten.stack([x - inner, inner])
    return inner + products[0] - products[1]


def _table_inner(config: ActivationConfig) -> torch.Tensor:
    return taylor_table("silu", -config.lookup_bound, config.lookup_steps,
                        config.lookup_width, config.lookup_order)


def _silu_piecewise(x: Any, config: ActivationConfig) -> Any:
    b = config.bound
    low, high = _outside(x, b, config)
    w = (x * (1.0 / b)).square()
    inner = x * 0.5 + _poly(w, _fit_poly("silu_even", config.degree, b))
    return _gated(x, inner, low, high)


def _silu_lookup(x: Any, config: ActivationConfig) -> Any:
    """SiLU from a table of Taylor coefficients (see ``ActivationConfig``).

    Why a table: with the dealt one-hot (one opened word per element) reading a segment's
    coefficients costs less than any polynomial's products or an exp. The segment index
    v = floor((x + B) * steps) comes from a local truncation of the shares, so it may be
    off by one; the Taylor step d = x + B - v / steps is computed from the same v, so the
    polynomial then reaches one segment further (error ~ max|f'''| (2 / steps)^3 / 6).
    The gates compare x with -+(B - 4 / steps), exactly, so a gated-in v never wraps: a
    2-party truncation is off by at most one, CrypTen's 3-party protocol by -2..+3.
    """
    gates, bits, d, step = _gates_and_segment(x, config)
    inner, _ = polynomial(bits, d, _table_inner(config), step=step)
    return gates.mid * inner + gates.high_x


def silu_times(x: Any, up: Any, *, config: ActivationConfig = ActivationConfig()) -> Any:
    """silu(x) * up (the gated MLP's hidden state). With the table (the default), ``up``
    joins the gates instead of following them: mid * up and (high x) * up ride in the
    table's product round, then inner * (mid up) + (high x) up is one product: 3 rounds
    after the gates' opening, 6 products (silu(x) then * up: one round and 2 more)."""
    if config.method != "lookup":
        return silu(x, config=config) * up
    with operator_scope("activation"):
        gates, bits, d, step = _gates_and_segment(x, config)
        inner, (mid_up, high_x_up) = polynomial(bits, d, _table_inner(config),
                                                [(gates.mid, up), (gates.high_x, up)], step)
        return inner * mid_up + high_x_up


def silu(x: Any, *, config: ActivationConfig = ActivationConfig()) -> Any:
    """SiLU(x) = x * sigmoid(x), accurate over SmolLM2's gate pre-activations."""
    with operator_scope("activation"):
        if config.method == "sigmoid":
            return x * x.sigmoid()
        if config.method == "exp_poly":
            return _silu_exp_poly(x, config)
        if config.method == "lookup":
            return _silu_lookup(x, config)
        return _silu_piecewise(x, config)

