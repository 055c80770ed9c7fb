"""Every hook into third-party code, each one explicit and reversible (``crypten_mpcache.patches``).

A patch here is only the hook: the logic it installs lives with the protocol or model it
serves. Which patch is installed where:

* ``crypten_compat``: CrypTen 0.4.1 on torch 2.x. Process-wide, installed once by
  ``import crypten_mpcache`` (CrypTen cannot even be imported without it).
* ``crypten_comparison``: ``MPCTensor._ltz`` -> the masked comparison
  (``crypten_mpcache.secure.primitives.comparison``). Scoped: the launcher installs it in each party
  for the lifetime of the party.
* ``crypten_dealer``: CrypTen's ``TTPServer`` learns the requests of our dealer-assisted
  protocols, and ``TTPClient`` tallies dealer traffic. Scoped: the launcher installs them
  in each party and in the dealer process.
* ``crypten_distributed``: CrypTen's ``DistributedCommunicator`` forms its process group on
  the store the roles of ``crypten-mpcache party`` met on, with the per-step timeout.
  Scoped: ``startup(store, step_timeout_s)`` for a ``with`` block, in a role's process.
  Its ``OPENING_PATCH`` opens two parties' shares by one exchange of messages
  (``crypten_mpcache.runtime.opening``); the launcher installs it in each party.
* ``crypten_settings``: CrypTen's modules read ``validation_mode`` and ``precision_bits``
  (every attribute access, every encoder) from a snapshot instead of omegaconf. Scoped:
  the launcher installs it in each party for the lifetime of the party.
* ``transformers_llama``: one Llama-family model instance -> encrypted modules. Scoped:
  ``patched(model)`` for a ``with`` block.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Patch:
    """One reversible hook: ``install`` runs the hook (once) and keeps its undo."""

    name: str
    doc: str
    _install: Callable[[], Callable[[], None]]
    _undo: Callable[[], None] | None = field(default=None, repr=False)

    @property
    def installed(self) -> bool:
        return self._undo is not None

    def install(self) -> None:
        if self._undo is None:
            self._undo = self._install()

    def uninstall(self) -> None:
        if self._undo is not None:
            self._undo()
            self._undo = None


def replace_method(owner: type, name: str,
                   make: Callable[[Callable[..., Any]], Callable[..., Any]]
                   ) -> Callable[[], None]:
    """Set ``owner.name`` to ``make(original)``; the returned undo puts the original back
    only while ours is still in place (a later hook on top is left alone)."""
    original = owner.__dict__[name]
    replacement = make(original)
    setattr(owner, name, replacement)

    def undo() -> None:
        if owner.__dict__.get(name) is replacement:
            setattr(owner, name, original)

    return undo
