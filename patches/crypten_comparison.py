"""Routes CrypTen's comparisons through a chosen protocol (reversible).

Every CrypTen comparison (``lt``, ``ge``, ``relu``, ``sign``, ...) ends in
``MPCTensor._ltz``. ``use("masked")`` replaces it with the dealer-assisted masked
comparison of ``crypten_mpcache.secure.primitives.comparison`` (8 rounds), ``use("dcf")``
with the one-round comparison from dealt DCF keys of
``crypten_mpcache.secure.primitives.dcf_comparison``, ``use("hybrid", dcf_max_elements=T)``
with the DCF comparison for calls of at most T elements and the masked one above (every
call saves the same rounds with DCF, but its keys cost ~3 KiB per element: small calls
are where rounds are cheap to buy; the call's size is public); ``use("crypten")``
restores CrypTen's own. The launcher selects ``LaunchConfig.comparison`` in each party, so that
both the full-cache baseline and MPCache pay for the same comparison.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from crypten.mpc.mpc import MPCTensor
from crypten.mpc.ptype import ptype as Ptype

from crypten_mpcache.patches import Patch, replace_method
from crypten_mpcache.secure.primitives import comparison as masked_comparison
from crypten_mpcache.secure.primitives import dcf_comparison, select

COMPARISONS = ("crypten", "masked", "dcf", "hybrid")


class _HybridSettings:
    # 2048: a SmolLM2 decode step deals 109 MiB with it (the budget: 116), a Llama-2-7B
    # layer at 2048 tokens 25.6 MiB with MPCache (29); docs/fss.md, "One-hots from DPF keys"
    dcf_max_elements: int = 2048


HYBRID = _HybridSettings()


def hybrid_less_than_zero(x: Any) -> Any:
    """[x < 0] by DCF keys for a call of at most ``HYBRID.dcf_max_elements`` elements,
    else by the masked comparison (the choice depends only on the public shape)."""
    if x.numel() <= HYBRID.dcf_max_elements:
        return dcf_comparison.less_than_zero(x)
    return masked_comparison.less_than_zero(x)


def _route_ltz(less_than_zero: Callable[[Any], Any]) -> Callable[[], Callable[[], None]]:
    def install() -> Callable[[], None]:
        def make(original: Callable[..., Any]) -> Callable[..., Any]:
            def _ltz(self):  # type: ignore[no-untyped-def]
                if self.ptype != Ptype.arithmetic:
                    return original(self)
                return less_than_zero(self)
            return _ltz

        return replace_method(MPCTensor, "_ltz", make)

    return install


PATCH = Patch("masked_comparison", "MPCTensor._ltz -> the dealer-assisted masked comparison",
              _route_ltz(masked_comparison.less_than_zero))
DCF_PATCH = Patch("dcf_comparison", "MPCTensor._ltz -> the one-round comparison from dealt "
                  "DCF keys", _route_ltz(dcf_comparison.less_than_zero))
HYBRID_PATCH = Patch("hybrid_comparison", "MPCTensor._ltz -> DCF keys for small calls, the "
                     "masked comparison for large ones", _route_ltz(hybrid_less_than_zero))
_PATCHES = {"masked": PATCH, "dcf": DCF_PATCH, "hybrid": HYBRID_PATCH}


def current() -> str:
    """The comparison protocol this process uses now."""
    return next((name for name, patch in _PATCHES.items() if patch.installed), "crypten")


def priced_as() -> str:
    """The protocol whose unit costs price this process's comparisons in cost models: the
    hybrid's large calls (where the elements are) are masked."""
    protocol = current()
    return "masked" if protocol == "hybrid" else protocol


def validate(comparison: str, dcf_max_elements: int) -> None:
    """ValueError naming the field unless both are valid."""
    if comparison not in COMPARISONS:
        raise ValueError(f"comparison must be one of {COMPARISONS}, got {comparison!r}")
    if dcf_max_elements < 1:
        raise ValueError(f"dcf_max_elements must be >= 1, got {dcf_max_elements}")


def use(comparison: str, dcf_max_elements: int = HYBRID.dcf_max_elements) -> None:
    """Select the comparison protocol of this process: "crypten", "masked", "dcf" or
    "hybrid" (DCF for calls of at most ``dcf_max_elements`` elements)."""
    validate(comparison, dcf_max_elements)
    HYBRID.dcf_max_elements = dcf_max_elements
    # compare-and-select fuses into the DCF opening wherever the DCF comparison serves
    select.FUSED.max_elements = {"dcf": sys.maxsize, "hybrid": dcf_max_elements}.get(
        comparison, 0)
    # the calls that do not fuse take the masked comparison at the caller's width
    select.FUSED.masked_above = comparison in ("masked", "hybrid")
    # an operator's own threshold (the softmax's) replaces the protocol's under hybrid only
    select.FUSED.caller_threshold = comparison == "hybrid"
    for name, patch in _PATCHES.items():
        if name != comparison:
            patch.uninstall()
    if comparison in _PATCHES:
        _PATCHES[comparison].install()
