"""Accurate nonlinear functions on CrypTen MPCTensors for a real Llama (SmolLM2-135M).

CrypTen computes in fixed point with 16 fractional bits. Its ``inv_sqrt`` is accurate
only on about [0.1, 100] and its ``reciprocal`` breaks above ~1e3, while a real model's
RMSNorm inputs and long softmax rows leave those ranges. Both are handled here by
*range reduction*: a handful of comparisons against public thresholds ``low * ratio**j``
(one batched comparison round on a per-row scalar, so it is cheap) give the bucket of
the secret value; the value is scaled into [low, low*ratio) by a secret one-hot mix of
public factors; on that small interval 1/sqrt is read from a Taylor table
(``secure.lookup``) and 1/x comes from Newton iterations started by a linear fit, and the
bucket's factor is re-applied as an exact scale-1 integer so that small results keep all
their fractional bits.

Measured ranges on the embedded SmolLM2-135M-Instruct (plaintext forward hooks, 6 essays
of ``assets.essay_texts()`` truncated to 1024 tokens plus 4 chat-templated prompts; see
``docs/numerics.md`` and the slow test ``test_measured_ranges_inside_supported``):

- mean(x^2) at the input of every RMSNorm (61 norms): [0.00594, 1.12e6], with single
  activations up to |x| = 25,199. ``NormConfig`` covers [4**-8, 4**13] ~ [1.5e-5, 6.7e7]
  (also the small inputs of randomly initialised test models and of embedding rows).
- MLP gate pre-activations (input of SiLU): [-33.3, 50.2] (99.9% of |x| below 20). The
  default SiLU (``ActivationConfig.method="lookup"``) has no range limit besides the ring.

Every public function is charged to an ``operator_scope`` kind: norm, activation,
softmax, argmax. All results carry the standard fixed-point encoder (comparison bits are
re-encoded), so that they can be multiplied with public fixed-point tensors safely.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import crypten
import torch
from crypten.encoder import FixedPointEncoder

from crypten_mpcache.runtime.cost import operator_scope
from crypten_mpcache.secure.fixed_point import mul_public_int, to_fixed
from crypten_mpcache.secure.lookup import segment_polynomial, taylor_table

# --------------------------------------------------------------------------- helpers


def ge_public(x: Any, thresholds: torch.Tensor) -> Any:
    """Scale-1 bits [x >= t] for public thresholds broadcast along a new last dim."""
    return x.unsqueeze(-1).ge(thresholds.to(torch.float64))


def _scale_pow2(y: Any, exponent: int) -> Any:
    """y * 2**exponent: an exact integer product or one public-integer truncation."""
    if exponent > 0:
        return mul_public_int(y, torch.tensor(2 ** exponent))
    if exponent < 0:
        return y.div(2 ** -exponent)
    return y


@lru_cache(maxsize=64)
def _linear_fit(kind: str, low: float, high: float) -> tuple[float, float]:
    """(a, b) minimising the relative error of a + b*v on [low, high] for 1/v or 1/sqrt v."""
    v = torch.linspace(low, high, 2001, dtype=torch.float64)
    target = v.rsqrt() if kind == "inv_sqrt" else v.reciprocal()
    design = torch.stack([torch.ones_like(v), v], dim=1) / target.unsqueeze(1)
    coef = torch.linalg.lstsq(design, torch.ones_like(v).unsqueeze(1)).solution.squeeze(1)
    return float(coef[0]), float(coef[1])


@dataclass(frozen=True)
class RangeReduction:
    """Buckets [low * ratio**j, low * ratio**(j+1)), j = 0..buckets-1, for a positive secret.

    Values below ``low`` fall in bucket 0 and values above the last edge in the last
    bucket; Newton then starts far from the root and may not converge, so choose the
    range with margin over what you measured.
    """

    low: float
    ratio: int
    buckets: int

    def __post_init__(self) -> None:
        if not self.low > 0:
            raise ValueError(f"low must be positive, got {self.low}")
        if self.ratio < 2 or (self.ratio & (self.ratio - 1)):
            raise ValueError(f"ratio must be a power of two >= 2, got {self.ratio}")
        exponent = math.log2(self.low)
        if abs(exponent - round(exponent)) > 1e-9:
            raise ValueError(f"low must be a power of two, got {self.low}")
        if self.buckets < 1:
            raise ValueError(f"buckets must be >= 1, got {self.buckets}")

    @property
    def high(self) -> float:
        return self.low * self.ratio ** self.buckets

    @property
    def edges(self) -> torch.Tensor:
        """The buckets' inner edges (buckets - 1 of them)."""
        return torch.tensor([self.low * self.ratio ** j for j in range(1, self.buckets)],
                            dtype=torch.float64)

    def onehot(self, v: Any) -> Any:
        """Scale-1 one-hot (..., buckets) of v's bucket: one batched comparison round."""
        if self.buckets == 1:
            return None
        return self.onehot_from_bits(ge_public(v, self.edges))

    def onehot_from_bits(self, above: Any) -> Any:
        """The one-hot from the scale-1 bits [v >= edge_j] (..., buckets - 1): local."""
        ones = above[..., :1] * 0 + 1
        zeros = above[..., :1] * 0
        padded_hi = crypten.cat([ones, above], dim=-1)    # [v >= edge_j], j = 0..buckets-1
        padded_lo = crypten.cat([above, zeros], dim=-1)   # [v >= edge_{j+1}]
        return padded_hi - padded_lo

    def normalize(self, v: Any, onehot: Any) -> Any:
        """v / (low * ratio**bucket), in [1, ratio): one multiplication round.

        Each bucket's factor 2**e is applied to v itself: an exact integer product where
        e >= 0, one batched division by public integers where e < 0 (factors below 2**-16
        would encode as zero). Dividing v, not v scaled up by 1 / low, keeps the dividend
        small: a 2-party truncation fails with probability ~ |dividend| / 2**63, so a low
        ``low`` costs no reliability.
        """
        exponents = [-round(math.log2(self.low * self.ratio ** j)) for j in range(self.buckets)]
        if onehot is None:
            return _scale_pow2(v, exponents[0])
        column = v.unsqueeze(-1)                        # both ops broadcast it
        up = [2 ** e for e in exponents if e >= 0]
        down = [2 ** -e for e in exponents if e < 0]
        parts = [mul_public_int(column, torch.tensor(up))] if up else []
        parts += [column.div(torch.tensor(down))] if down else []
        return (crypten.cat(parts, dim=-1) * onehot).sum(-1)

    def pow2_factor(self, onehot: Any, exponents: list[int]) -> Any:
        """sum_j onehot_j * 2**exponents[j] at the fixed-point scale, exactly (local).

        Powers of two down to 2**-16 are exact in fixed point; building the factor from
        the scale-1 one-hot by integer share products loses nothing.
        """
        if min(exponents) < -16:
            raise ValueError("factors below 2**-16 are not representable; use fewer buckets")
        ints = torch.tensor([2 ** (e + 16) for e in exponents], dtype=torch.long)
        out = onehot.clone()
        out.share = out.share * ints
        out.encoder = FixedPointEncoder()
        return out.sum(-1)


def exp_nonpositive(d: Any, iterations: int = 8, order: int = 2) -> Any:
    """exp(d) for d <= 0 as T(d / 2**it) ** (2**it), T the Taylor polynomial of given order.

    CrypTen's exp uses order 1, whose relative error grows like d**2 / 2**(it+1) (5% at
    d = -5); order 2 costs one extra round and is below 0.3% for d >= -10. Valid for
    d > -1.5 * 2**iterations (the base stays positive).
    """
    y = d.div(2 ** iterations)
    base = y + 1
    if order >= 2:
        y2 = y.square()
        base = base + y2 * 0.5
        if order >= 3:
            base = base + y2 * y * (1.0 / 6.0)
    for _ in range(iterations):
        base = base.square()
    return base


def _newton_inv_sqrt(v: Any, low: float, high: float, iters: int) -> Any:
    a, b = _linear_fit("inv_sqrt", low, high)
    y = v * b + a
    for _ in range(iters):
        y = y * (3 - v * y.square()) * 0.5
    return y


def _newton_reciprocal(v: Any, low: float, high: float, iters: int) -> Any:
    a, b = _linear_fit("reciprocal", low, high)
    y = v * b + a
    for _ in range(iters):
        y = y * (2 - v * y)
    return y


# --------------------------------------------------------------------------- RMSNorm


@dataclass(frozen=True)
class NormConfig:
    """Knobs of the secure RMSNorm.

    low, ratio, buckets: the range-reduction buckets of mean(x^2) + eps (RangeReduction);
        low must be a power of 4, ratio 4 or 16.
    coarse_shift, coarse_switch: squaring a massive activation (|x| ~ 25,000 in SmolLM2)
        at 16 fractional bits makes CrypTen's 2-party truncation wrap with probability
        ~x^2 / 2**32. mean(x^2) is therefore computed twice, from x (fine) and from
        x / 2**coarse_shift (coarse); one comparison per row picks the coarse value when it
        is >= coarse_switch. Below the switch no element can wrap; above it the coarse
        value has ample relative precision.
    medium_shift, medium_switch: the same between fine and coarse. Rows below the coarse
        switch still hold single elements up to |x| ~ 135 on SmolLM2 (x^2 ~ 18,000):
        their fine squares made ~0.7% of 55-token prefills wrap (measured, see
        docs/numerics.md). Such rows (mean(x^2) >= medium_switch) take mean((x/2**s)^2)
        * 4**s instead, 4**s times less likely to wrap; the fine value is kept only for
        rows below medium_switch, whose elements are all small. 0 turns it off.
    inv_sqrt: how 1/sqrt is taken on [1, ratio): "lookup" (default: a dealt one-hot reads
        the segment's quadratic Taylor coefficients from a public table, 3 rounds; its
        dealer sends ratio * lookup_steps words per row, one row per token) or "newton"
        (a linear start and ``newton_iters`` Newton steps, 3 rounds each).
    lookup_steps: table segments per unit (a power of two); the table covers
        [0.5, ratio + 0.5). Error ~ (15/8) (2 / steps)^3 / 6 relative when the index is
        off by one (9.5e-5 at 32).
    newton_iters: Newton iterations of 1/sqrt on [1, ratio) ("newton" only).
    """

    low: float = 4.0 ** -8
    ratio: int = 4
    buckets: int = 21
    coarse_shift: int = 7
    coarse_switch: float = 64.0
    medium_shift: int = 3
    medium_switch: float = 1.0
    inv_sqrt: str = "lookup"
    lookup_steps: int = 32
    newton_iters: int = 3

    def __post_init__(self) -> None:
        RangeReduction(self.low, self.ratio, self.buckets)  # validates
        if self.inv_sqrt not in ("lookup", "newton"):
            raise ValueError(f"inv_sqrt must be 'lookup' or 'newton', got {self.inv_sqrt!r}")
        if not 1 <= self.lookup_steps <= 256 or self.lookup_steps & (self.lookup_steps - 1):
            raise ValueError("lookup_steps must be a power of two in [1, 256]")
        m = math.log(self.low, 4)
        if abs(m - round(m)) > 1e-9:
            raise ValueError(f"low must be a power of 4, got {self.low}")
        if self.ratio not in (4, 16):
            raise ValueError(f"ratio must be 4 or 16, got {self.ratio}")
        if not 0 <= self.coarse_shift <= 14:
            raise ValueError("coarse_shift must be in [0, 14]")
        if not self.coarse_switch > 0:
            raise ValueError("coarse_switch must be positive")
        if self.medium_shift and not 0 < self.medium_shift < self.coarse_shift:
            raise ValueError("medium_shift must be 0 (off) or in (0, coarse_shift)")
        if self.medium_shift and not 0 < self.medium_switch < self.coarse_switch:
            raise ValueError("medium_switch must be in (0, coarse_switch)")
        if self.newton_iters < 0:
            raise ValueError("newton_iters must be >= 0")

    @property
    def reduction(self) -> RangeReduction:
        return RangeReduction(self.low, self.ratio, self.buckets)


def _apply_weight(y: Any, weight: Any) -> Any:
    if weight is None:
        return y
    if isinstance(weight, torch.Tensor) or _is_cryptensor(weight):
        return y * weight
    return weight.mul(y)                                  # a premasked fixed operand


def _is_cryptensor(value: Any) -> bool:
    return crypten.is_encrypted_tensor(value)


def _shifts(config: NormConfig) -> list[int]:
    """The estimates' shifts: fine (0), then medium and coarse when configured."""
    if config.coarse_shift == 0:
        return [0]
    return [0, *([config.medium_shift] if config.medium_shift else []), config.coarse_shift]


def _switches(config: NormConfig) -> list[float]:
    """Estimate i >= 1 takes over when its value is >= switch i - 1 (coarsest wins)."""
    if config.coarse_shift == 0:
        return []
    return [*([config.medium_switch] if config.medium_shift else []), config.coarse_switch]


def mean_square_estimates(x: Any, config: NormConfig = NormConfig()) -> Any:
    """``(E, ..., 1)``: mean((x / 2**s)^2) * 4**s for each shift s of ``config`` (fine,
    medium, coarse), all squares in one round. The 4**s times smaller squares keep
    massive activations from wrapping CrypTen's truncation; ``rms_norm`` picks the
    coarsest estimate above its switch."""
    shifts = _shifts(config)
    scaled = crypten.stack([x.div(2 ** s) if s else x for s in shifts])
    squares = scaled.square().mean(-1, keepdim=True)
    factors = torch.tensor([4 ** s for s in shifts]).view(-1, *([1] * x.dim()))
    return mul_public_int(squares, factors)


def _take_over(values: Any, bits: list[Any]) -> Any:
    """values[0], replaced by values[i] wherever bits[i - 1] is set (later ones win);
    exact in the ring, so a wrapped value that is not taken cancels."""
    out = values[0]
    for i, bit in enumerate(bits, start=1):
        out = out + bit * (values[i] - out)
    return out


def _inv_sqrt_normalized(v_n: Any, config: NormConfig) -> Any:
    """1 / sqrt(v_n) for v_n in [1, ratio)."""
    if config.inv_sqrt == "newton":
        return _newton_inv_sqrt(v_n, 1.0, float(config.ratio), config.newton_iters)
    steps = config.lookup_steps
    table = taylor_table("inv_sqrt", 0.5, steps, config.ratio * steps, 2)
    return segment_polynomial(v_n - 0.5, steps, table)


def inv_rms_parts(x: Any, eps: float, config: NormConfig = NormConfig()) -> tuple[Any, Any]:
    """(S, y_n) with 1 / sqrt(mean(x^2, -1) + eps) = S * y_n (keepdim): S an exact power
    of two, y_n in (1/sqrt(ratio), 1].

    Why every estimate goes the whole way: the switches between the estimates and the
    range-reduction buckets are then ONE comparison round on per-row scalars (the
    estimates' bucket bits do not wait for the pick), and the pick moves to the end,
    applied to (S, y_n). The estimates are per-row scalars, so the extra work is small.
    v = v_n * low * ratio**e with v_n in [1, ratio); S = (low * ratio**e)**-1/2.
    """
    red = config.reduction
    v = mean_square_estimates(x, config) + eps
    switches = _switches(config)
    edges = red.edges                                   # empty with one bucket
    thresholds = torch.cat([edges, torch.tensor(switches, dtype=torch.float64) + eps])
    bits = ge_public(v, thresholds) if len(thresholds) else None   # one comparison round
    onehot = red.onehot_from_bits(bits[..., : len(edges)]) if red.buckets > 1 else None
    y_n = _inv_sqrt_normalized(red.normalize(v, onehot), config)
    m = round(-math.log2(red.low)) // 2
    r = round(math.log2(red.ratio)) // 2
    picks = [bits[i, ..., len(edges) + i - 1] for i in range(1, len(switches) + 1)]
    if onehot is None:
        return torch.tensor(2.0 ** m), _take_over(y_n, picks)
    scale = red.pow2_factor(onehot, [m - r * j for j in range(red.buckets)])
    both = _take_over(crypten.stack([scale, y_n], dim=1), picks)
    return both[0], both[1]


def rms_norm(x: Any, weight: Any, eps: float, *, config: NormConfig = NormConfig()) -> Any:
    """x * inv_sqrt(mean(x^2, -1) + eps) * weight, accurate over the real SmolLM2 range.

    ``weight``: an MPCTensor, a public tensor, an object with ``.mul(y)`` (a premasked
    fixed operand) or None. x is first multiplied by the exact power of two S ~ 1/rms
    (so that no product is large enough to wrap), then by y_n in (0.5, 1].
    """
    with operator_scope("norm"):
        scale, y_n = inv_rms_parts(x, eps, config)
        y = (x * scale) * y_n
        return _apply_weight(y, weight)


# --------------------------------------------------------------------------- SiLU


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
        segment index (``secure.onehot``): two comparisons in one round, one opening and
        ``lookup_order`` products.
    degree: polynomial degree (in z for exp_poly, in (x/bound)^2 for piecewise).
    bound: the piecewise breakpoint (silu(-b) ~ -b e^-b is the error beyond it).
    exp_iterations, exp_order: see ``exp_nonpositive``; exp(-a) is valid for a < 2**iters.
    lookup_bound, lookup_steps, lookup_order: the table covers [-lookup_bound,
      lookup_bound) in segments of width 1 / lookup_steps (their number, a power of two,
      is the width of the dealt one-hot: the dealer's words per element).
    """

    method: str = "lookup"
    degree: int = 6
    bound: float = 7.0
    exp_iterations: int = 8
    exp_order: int = 2
    lookup_bound: float = 16.0
    lookup_steps: int = 4
    lookup_order: int = 2

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


def _outside(x: Any, edge: float) -> tuple[Any, Any]:
    """Scale-1 bits [x < -edge] and [x > edge], in one comparison round."""
    sides = crypten.stack([x + edge, x.neg() + edge])._ltz()
    return sides[0], sides[1]


def _gated(x: Any, inner: Any, low: Any, high: Any) -> Any:
    """silu(x) ~ 0 below the inner range, x above it, ``inner`` within: both gate
    products in one stacked product (one round)."""
    products = crypten.stack([high, low]) * crypten.stack([x - inner, inner])
    return inner + products[0] - products[1]


def _silu_piecewise(x: Any, config: ActivationConfig) -> Any:
    b = config.bound
    low, high = _outside(x, b)
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
    bound, steps = config.lookup_bound, config.lookup_steps
    low, high = _outside(x, bound - 4.0 / steps)   # gated-out v may wrap mod W
    table = taylor_table("silu", -bound, steps, config.lookup_width, config.lookup_order)
    inner = segment_polynomial(x + bound, steps, table)
    return _gated(x, inner, low, high)


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


# --------------------------------------------------------------------------- softmax


@dataclass(frozen=True)
class SoftmaxConfig:
    """Knobs of the masked softmax.

    fill: public value that masked scores take before the row max (must be below every
        real score; it never reaches exp's output because masked exps are zeroed).
    exp_iterations, exp_order: see ``exp_nonpositive``; exp(d) is valid for d > -2**iters.
    ratio, buckets: range reduction of the denominator, which lies in [1, allowed count]:
        rows of up to ratio**buckets allowed entries are exact to Newton precision.
    newton_iters: Newton iterations of 1/d on [1, ratio).
    """

    fill: float = -(2.0 ** 12)
    exp_iterations: int = 8
    exp_order: int = 2
    ratio: int = 4
    buckets: int = 9
    newton_iters: int = 3

    def __post_init__(self) -> None:
        if not self.fill < 0:
            raise ValueError("fill must be negative")
        if not 1 <= self.exp_iterations <= 12:
            raise ValueError("exp_iterations must be in [1, 12]")
        if self.exp_order not in (1, 2, 3):
            raise ValueError("exp_order must be 1, 2 or 3")
        RangeReduction(1.0, self.ratio, self.buckets)
        if math.log2(self.ratio) * (self.buckets - 1) > 16:
            raise ValueError("ratio**(buckets-1) must be <= 2**16 (fixed-point factor)")
        if self.newton_iters < 1:
            raise ValueError("newton_iters must be >= 1")


def reciprocal(d: Any, reduction: RangeReduction, iters: int) -> Any:
    """1/d for d in [low, high]: range reduction + Newton from a linear fit on [1, ratio).

    The result is y_n * 2**-(e log2 ratio) with an exact power of two; its absolute error
    is ~2**-16 (the output encoding's), whatever the magnitude of d.
    """
    onehot = reduction.onehot(d)
    d_n = reduction.normalize(d, onehot)
    y_n = _newton_reciprocal(d_n, 1.0, float(reduction.ratio), iters)
    if onehot is None:
        return y_n * (1.0 / reduction.low)
    m = -round(math.log2(reduction.low))
    r = round(math.log2(reduction.ratio))
    return y_n * reduction.pow2_factor(onehot, [m - r * j for j in range(reduction.buckets)])


def masked_softmax(scores: Any, mask01: torch.Tensor, dim: int = -1,
                   *, config: SoftmaxConfig = SoftmaxConfig()) -> Any:
    """Softmax over ``dim`` restricted to positions where the PUBLIC ``mask01`` is 1.

    Masked positions are exactly 0. No additive -inf masks: masked scores are replaced by
    a moderate public fill for the max, their differences by 0 for the exp (which is only
    valid above -384), and exps are multiplied by the integer mask.
    """
    with operator_scope("softmax"):
        mask = torch.as_tensor(mask01).to(torch.long)
        if dim not in (-1, scores.dim() - 1):
            mask = mask.expand(scores.size()).transpose(dim, -1)
            scores = scores.transpose(dim, -1)
        filled = mul_public_int(scores, mask) + (1 - mask).to(torch.float64) * config.fill
        row_max = tournament_max(filled)
        # masked differences become 0 before exp (fill - max would be far outside exp's
        # range: its 2**8 squarings of garbage wrap, harmless but wasted); then exact 0s
        diffs = mul_public_int(filled - row_max, mask)
        exps = exp_nonpositive(diffs, config.exp_iterations, config.exp_order)
        exps = mul_public_int(exps, mask)
        denom = exps.sum(-1, keepdim=True)
        reduction = RangeReduction(1.0, config.ratio, config.buckets)
        out = exps * reciprocal(denom, reduction, config.newton_iters)
        out = mul_public_int(out, mask)
        if dim not in (-1, scores.dim() - 1):
            out = out.transpose(dim, -1)
        return out


# --------------------------------------------------------------------------- argmax


def _tournament(x: Any) -> tuple[Any, list[tuple[Any, int]]]:
    """Max over the last dim by a tournament of ADJACENT pairs, keeping each level's bits.

    Adjacent pairing keeps every node's index range contiguous with the left node holding
    the lower indices, so "right wins only if strictly greater" gives ties to the lowest
    index. ceil(log2 n) rounds of comparisons, n - 1 comparisons in all.
    """
    levels: list[tuple[Any, int]] = []  # ([right > left] scale-1 bits, pairs) per level
    values = x
    while values.size(-1) > 1:
        n = values.size(-1)
        pairs = n // 2
        left = values[..., 0:2 * pairs:2]
        right = values[..., 1:2 * pairs:2]
        right_wins = right.gt(left)
        winners = left + right_wins * (right - left)         # bit times fixed: exact
        values = crypten.cat([winners, values[..., 2 * pairs:]], dim=-1) if n % 2 else winners
        levels.append((right_wins, pairs))
    return values, levels


def tournament_max(x: Any) -> Any:
    """Max over the last dim (keepdim), n - 1 comparisons in ceil(log2 n) rounds."""
    return _tournament(x)[0]


def _expand_winner(levels: list[tuple[Any, int]], like: Any) -> Any:
    """Walk the tournament back down: one exact scale-1 multiplication round per level."""
    weights = None
    for right_wins, pairs in reversed(levels):
        if weights is None:                                  # the final: a single pair
            weights = crypten.stack([1 - right_wins, right_wins], dim=-1).flatten(-2)
            continue
        paired = weights[..., :pairs]
        right_part = paired * right_wins
        expanded = crypten.stack([paired - right_part, right_part], dim=-1).flatten(-2)
        if weights.size(-1) > pairs:                         # the odd element passed through
            expanded = crypten.cat([expanded, weights[..., pairs:]], dim=-1)
        weights = expanded
    if weights is None:                                      # a single element
        weights = like._ltz() * 0 + 1
    return weights


def tournament_argmax(x: Any) -> tuple[Any, Any]:
    """(max keepdim, scale-1 one-hot) over the last dim; ties go to the LOWEST index."""
    values, levels = _tournament(x)
    return values, _expand_winner(levels, x)


def argmax_onehot(x: Any, dim: int = -1) -> Any:
    """Secret one-hot of the maximum along ``dim`` (exactly one 1; lowest index on ties)."""
    with operator_scope("argmax"):
        moved = dim not in (-1, x.dim() - 1)
        if moved:
            x = x.transpose(dim, -1)
        _, onehot = tournament_argmax(x)
        onehot = to_fixed(onehot)
        return onehot.transpose(dim, -1) if moved else onehot
