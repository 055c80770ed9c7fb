"""Routes CrypTen's comparisons through a chosen protocol (reversible).

Every CrypTen comparison (``lt``, ``ge``, ``relu``, ``sign``, ...) ends in
``MPCTensor._ltz``. ``use("masked")`` replaces it with the dealer-assisted masked
comparison of ``crypten_mpcache.secure.primitives.comparison`` (8 rounds), ``use("dcf")``
with the one-round comparison from dealt DCF keys of
``crypten_mpcache.secure.primitives.dcf_comparison``; ``use("crypten")`` restores
CrypTen's own. The launcher selects ``LaunchConfig.comparison`` in each party, so that
both the full-cache baseline and MPCache pay for the same comparison.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from crypten.mpc.mpc import MPCTensor
from crypten.mpc.ptype import ptype as Ptype

from crypten_mpcache.patches import Patch, replace_method
from crypten_mpcache.secure.primitives import comparison as masked_comparison
from crypten_mpcache.secure.primitives import dcf_comparison

COMPARISONS = ("crypten", "masked", "dcf")


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
_PATCHES = {"masked": PATCH, "dcf": DCF_PATCH}


def current() -> str:
    """The comparison protocol this process uses now."""
    return next((name for name, patch in _PATCHES.items() if patch.installed), "crypten")


def use(comparison: str) -> None:
    """Select the comparison protocol of this process: "crypten", "masked" or "dcf"."""
    if comparison not in COMPARISONS:
        raise ValueError(f"comparison must be one of {COMPARISONS}, got {comparison!r}")
    for name, patch in _PATCHES.items():
        if name != comparison:
            patch.uninstall()
    if comparison in _PATCHES:
        _PATCHES[comparison].install()
