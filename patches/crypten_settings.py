"""CrypTen's two per-operation settings served from a snapshot, not from omegaconf (reversible).

Why: CrypTen reads ``cfg.debug.validation_mode`` on every CrypTensor attribute access
(``crypten.debug.register_validation``) and ``cfg.encoder.precision_bits`` in every
``FixedPointEncoder()``. Each read walks CrypTen's config object and omegaconf nodes
(~30 us); a SmolLM2 decode step makes ~120,000 of them per party: about 45% of the
step's seconds, under every comparison protocol (profiled, docs/fss.md "Seconds").

``PATCH`` gives the three CrypTen modules that read them (``crypten.debug``,
``crypten.encoder``, ``crypten.mpc.primitives.arithmetic``) a view of the config: the
two settings come from a snapshot taken whenever CrypTen's config object has been
replaced since the last read (``temp_override``, ``cfg["a.b"] = v`` merges,
``load_config``, ``set_config``: one identity check per read), everything else is
forwarded to the real config. A write INTO the live config tree
(``cfg.debug.validation_mode = True``) replaces nothing and is not seen while the patch
is installed: change these two with ``temp_override``, as CrypTen itself does. The
launcher installs it in each party for the party's lifetime.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import crypten.debug as crypten_debug
import crypten.encoder as crypten_encoder
import crypten.mpc.primitives.arithmetic as crypten_arithmetic
from crypten.config import cfg as crypten_cfg

from crypten_mpcache.patches import Patch

MODULES = (crypten_debug, crypten_encoder, crypten_arithmetic)


class _Subtree:
    """The snapshot's value for its one setting; any other key from the live subtree."""

    def __init__(self, live: Any, **values: Any) -> None:
        self.__dict__.update(values)
        self._live = live

    def __getattr__(self, name: str) -> Any:
        return getattr(self._live, name)


class SettingsView:
    """``debug.validation_mode`` and ``encoder.precision_bits`` from a snapshot of
    ``real``'s config object; any other attribute from ``real``."""

    def __init__(self, real: Any) -> None:
        object.__setattr__(self, "_real", real)
        object.__setattr__(self, "_seen", None)
        object.__setattr__(self, "_debug", None)
        object.__setattr__(self, "_encoder", None)

    def _fresh(self) -> None:
        config = self._real.config
        if config is not self._seen:
            object.__setattr__(self, "_debug", _Subtree(
                config.debug, validation_mode=bool(config.debug.validation_mode)))
            object.__setattr__(self, "_encoder", _Subtree(
                config.encoder, precision_bits=int(config.encoder.precision_bits)))
            object.__setattr__(self, "_seen", config)

    @property
    def debug(self) -> _Subtree:
        self._fresh()
        return self._debug

    @property
    def encoder(self) -> _Subtree:
        self._fresh()
        return self._encoder

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._real, name, value)


def _install() -> Callable[[], None]:
    view = SettingsView(crypten_cfg)
    originals = [(module, module.cfg) for module in MODULES]
    for module in MODULES:
        module.cfg = view

    def undo() -> None:
        for module, original in originals:
            if module.cfg is view:
                module.cfg = original

    return undo


PATCH = Patch("crypten_settings",
              "crypten.debug / crypten.encoder / arithmetic read validation_mode and "
              "precision_bits from a snapshot of CrypTen's config object", _install)
