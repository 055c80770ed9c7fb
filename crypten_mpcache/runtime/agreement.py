"""The start-up agreement: every public parameter that must be equal across the roles.

Each role declares the public parameters it knows (``fields``; e.g. only the client knows
the prompt's length) and may attach public data for the others (``payload``; the owner's
``config.json`` for a helper, which has no model folder). ``agree`` runs in every role on
the same declarations (``runtime.rendezvous.Meeting.exchange``), so every role reaches
the same verdict: the agreed values, or one ``AgreementError`` line that names the field
and the two values, ended before any secret is shared.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

# Checked in this order (the first disagreement is the one reported).
FIELDS = (
    "version",          # crypten_mpcache's version: the protocol code must be the same
    "parties",          # 2 or 3 computing parties
    "dealer",           # ttp (a dealer role) or tfp
    "comparison",       # the secure comparison protocol
    "dcf_max_elements", # hybrid: the largest comparison call that takes DCF keys
    "premask",          # premasked fixed operands or Beaver products
    "model_config",     # a fingerprint of the model's config.json (owner and client)
    "prompt_tokens",    # the prompt's length (public), declared by the client
    "max_new_tokens",   # exactly this many tokens are generated (no early stop)
    "cache",            # the KV cache policy (full, an MPCache variant, a baseline)
    "budget",           # its budget (null: none)
)
# What a generation cannot start without (``budget`` may be declared as null).
REQUIRED = FIELDS


class AgreementError(ValueError):
    """The roles' public parameters differ (or one is missing); the message is one line."""


def fingerprint(config: dict[str, Any]) -> str:
    """A hash of a model config dict, without the fields that name where or with which
    transformers version it was loaded."""
    kept = {k: v for k, v in config.items()
            if not k.startswith("_") and k != "transformers_version"}
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()


def _show(field: str, value: Any) -> str:
    if field == "model_config" and isinstance(value, str):
        return f"{value[:12]}..."
    return json.dumps(value)


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def agree(declared: dict[int, dict[str, Any]], names: dict[int, str],
          required: tuple[str, ...] = REQUIRED) -> dict[str, Any]:
    """``declared``: rank -> {"fields": {...}, "payload": {...}}. Every field declared by
    more than one role must be equal; every ``required`` field declared by some role.
    Returns the agreed fields."""
    known = {f for d in declared.values() for f in d.get("fields", {})}
    order = [f for f in FIELDS if f in known] + sorted(known - set(FIELDS))
    agreed: dict[str, Any] = {}
    for field in order:
        values = [(rank, d["fields"][field]) for rank, d in sorted(declared.items())
                  if field in d.get("fields", {})]
        first_rank, first = values[0]
        for rank, value in values[1:]:
            if _canonical(value) != _canonical(first):
                raise AgreementError(
                    f"the roles disagree on {field}: {names[first_rank]} has "
                    f"{_show(field, first)}, {names[rank]} has {_show(field, value)}")
        agreed[field] = first
    missing = [f for f in required if f not in agreed]
    if missing:
        raise AgreementError(f"no role declared {', '.join(missing)} (is the client "
                             "running a different version?)")
    return agreed


def payload(declared: dict[int, dict[str, Any]], key: str) -> Any:
    """The first role's (rank order) public data under ``key``; None when nobody sent it."""
    for _, d in sorted(declared.items()):
        if key in d.get("payload", {}):
            return d["payload"][key]
    return None
