"""Routes CrypTen's comparisons through a chosen protocol (reversible).

Every CrypTen comparison (``lt``, ``ge``, ``relu``, ``sign``, ...) ends in
``MPCTensor._ltz``. ``use("masked")`` replaces it with the dealer-assisted masked
comparison of ``crypten_mpcache.secure.primitives.comparison``; ``use("crypten")`` restores
CrypTen's own. The launcher selects ``LaunchConfig.comparison`` in each party, so that
both the full-cache baseline and MPCache pay for the same comparison.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from crypten.mpc.mpc import MPCTensor
from crypten.mpc.ptype import ptype as Ptype

from crypten_mpcache.patches import Patch, replace_method
from crypten_mpcache.secure.primitives.comparison import less_than_zero

COMPARISONS = ("crypten", "masked")


def _route_ltz() -> Callable[[], None]:
    def make(original: Callable[..., Any]) -> Callable[..., Any]:
        def _ltz(self):  # type: ignore[no-untyped-def]
            if self.ptype != Ptype.arithmetic:
                return original(self)
            return less_than_zero(self)
        return _ltz

    return replace_method(MPCTensor, "_ltz", make)


PATCH = Patch("masked_comparison", "MPCTensor._ltz -> the dealer-assisted masked comparison",
              _route_ltz)


def current() -> str:
    """The comparison protocol this process uses now."""
    return "masked" if PATCH.installed else "crypten"


def use(comparison: str) -> None:
    """Select the comparison protocol of this process: "crypten" or "masked"."""
    if comparison not in COMPARISONS:
        raise ValueError(f"comparison must be one of {COMPARISONS}, got {comparison!r}")
    if comparison == "masked":
        PATCH.install()
    else:
        PATCH.uninstall()
