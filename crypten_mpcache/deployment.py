"""A private generation as separate role processes (``crypten-mpcache party``).

What each role brings and sees:

* ``owner`` (party 0): ``model_path``, the checkpoint folder; the only process that reads
  weights. It sends its ``config.json`` (public) to the helper. It learns the prompt's
  length (public), never its ids or the generated tokens.
* ``client`` (party 1): the prompt (text, or token ids) and the request (max new tokens,
  cache, budget). ``model_path`` here is a folder with the model's ``config.json`` and
  tokenizer (the embedded SmolLM2 by default, as ``generate``); weights there, if any, are
  never opened: the client builds the model on the meta device. The only process that
  sees the prompt and the tokens; it gathers the parties' cost reports (public counts).
* ``helper`` (party 2 of 3) and ``dealer``: no model folder, no prompt; the helper builds
  the model from the owner's config on the meta device.

Every role declares its public parameters (``runtime.agreement.FIELDS``); the owner and
helper may pin the request's fields too (a mismatch ends every role). The party work is
``generation_party`` on the ``PartyTask`` of ``private.party_task``, and the client's
result is ``private.generation_result``: the code path of ``generate``, with the roles as
processes of their own (``runtime.roles``) instead of forks of one launcher.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crypten_mpcache import __version__
from crypten_mpcache.algorithm.plan import Amount
from crypten_mpcache.assets import smollm2_folder
from crypten_mpcache.generation_party import CLIENT, generation_party
from crypten_mpcache.private import (
    DEFAULT_PROMPT,
    GenerationResult,
    PrivateGenerationConfig,
    check_prompt_length,
    generation_result,
    party_task,
    public_model_config,
    tokenize_prompt,
)
from crypten_mpcache.runtime.agreement import fingerprint, payload
from crypten_mpcache.runtime.rendezvous import check_link, parse_address
from crypten_mpcache.runtime.roles import MISMATCH, RoleOptions, RoleSession

REQUEST_FIELDS = ("max_new_tokens", "cache", "budget")


@dataclass(frozen=True)
class PartyRequest:
    """One role's command line. ``max_new_tokens``/``cache``/``budget``: the client's
    request (defaults 16 / full / none); for the owner or helper, a pin (None: accept
    the client's)."""

    options: RoleOptions
    model_path: str | None = None
    prompt: str | None = None
    prompt_ids: tuple[int, ...] | None = None
    chat_template: bool = True
    max_new_tokens: int | None = None
    cache: str | None = None
    budget: Amount | None = None
    premask: bool = True
    progress: bool = False

    def __post_init__(self) -> None:
        role = self.options.role
        if role != "client" and (self.prompt is not None or self.prompt_ids is not None):
            raise ValueError(f"only the client has a prompt; the {role} must not be given "
                             "one")
        if role in ("helper", "dealer") and self.model_path is not None:
            raise ValueError(f"the {role} holds no model: do not give it --model")
        if role == "dealer" and any(getattr(self, f) is not None for f in REQUEST_FIELDS):
            raise ValueError("the dealer takes no request fields (--max-new-tokens, "
                             "--cache, --budget)")
        if self.prompt is not None and self.prompt_ids is not None:
            raise ValueError("give --prompt or --prompt-ids, not both")


@dataclass
class RoleOutcome:
    """What this role may show: the agreed public parameters; the client's result."""

    role: str
    agreed: dict[str, Any]
    result: GenerationResult | None = None
    seconds: float = 0.0


@dataclass
class _Prepared:
    fields: dict[str, Any]
    payload: dict[str, Any] = field(default_factory=dict)
    folder: Path | None = None
    prompt_ids: list[int] | None = None
    tokenizer: Any = None


def _common(request: PartyRequest) -> dict[str, Any]:
    o = request.options
    fields = {"version": __version__, "parties": o.parties, "dealer": o.dealer}
    if o.role != "dealer":
        fields.update(comparison=o.comparison, dcf_max_elements=o.dcf_max_elements,
                      dealing=o.dealing, premask=request.premask)
    return fields


def _prepare(request: PartyRequest) -> _Prepared:
    """Everything a role checks and reads before it meets the others."""
    role, fields = request.options.role, _common(request)
    if role == "dealer":
        return _Prepared(fields)
    pins = {f: getattr(request, f) for f in REQUEST_FIELDS if getattr(request, f) is not None}
    if role == "helper":
        return _Prepared({**fields, **pins})
    folder = Path(request.model_path) if request.model_path else smollm2_folder()
    if not (folder / "config.json").is_file():
        raise ValueError(f"unknown model folder {str(folder)!r}: no config.json there")
    config = public_model_config(folder)
    fields["model_config"] = fingerprint(config.to_dict())
    if role == "owner":
        text = (folder / "config.json").read_text()
        return _Prepared({**fields, **pins}, {"config_json": text}, folder)
    generation = _generation_config(request, folder, request.max_new_tokens or 16,
                                    request.cache or "full", request.budget)
    ids, tokenizer = _client_prompt(request, folder, config)
    check_prompt_length(ids, config, generation.max_new_tokens)
    fields.update(prompt_tokens=len(ids), max_new_tokens=generation.max_new_tokens,
                  cache=generation.cache, budget=generation.budget)
    return _Prepared(fields, {}, folder, ids, tokenizer)


def _client_prompt(request: PartyRequest, folder: Path, config: Any) -> tuple[list[int], Any]:
    if request.prompt_ids is not None:
        ids = [int(t) for t in request.prompt_ids]
        bad = [t for t in ids if not 0 <= t < config.vocab_size]
        if bad:
            raise ValueError(f"prompt token id {bad[0]} is outside the model's vocabulary "
                             f"(0..{config.vocab_size - 1})")
        return ids, None
    prompt = DEFAULT_PROMPT if request.prompt is None else request.prompt
    if not prompt.strip():
        raise ValueError("the prompt is empty")
    return tokenize_prompt(prompt, folder, request.chat_template)


def _generation_config(request: PartyRequest, folder: Path, max_new_tokens: int, cache: str,
                       budget: Amount | None) -> PrivateGenerationConfig:
    o = request.options
    return PrivateGenerationConfig(
        max_new_tokens=max_new_tokens, model_path=str(folder), parties=o.parties,
        dealer=o.dealer, comparison=o.comparison, dcf_max_elements=o.dcf_max_elements,
        dealing=o.dealing, cache=cache,
        premask=request.premask,
        progress=request.progress and o.role == "client", budget=budget,
        timeout_s=o.step_timeout_s)


def run_role(request: PartyRequest, announce: Callable[[str], None]) -> RoleOutcome:
    """Run one role of one private generation in this process (see the module doc).
    Raises ValueError/RendezvousError before the role has joined; after that, a failure
    ends the process with one line (``announce``) and a non-zero status."""
    check_link(parse_address(request.options.rendezvous), request.options.link_is_protected)
    prepared = _prepare(request)
    if request.options.role == "owner":
        _quiet_model_loading()
    session = RoleSession(request.options, announce)
    session.open()
    agreed, declared = session.agree(prepared.fields, prepared.payload)
    start = time.perf_counter()
    if request.options.role == "dealer":
        session.run(None)
        session.finish()
        return RoleOutcome("dealer", agreed, seconds=time.perf_counter() - start)
    with tempfile.TemporaryDirectory(prefix="crypten-mpcache-helper-") as scratch:
        folder = prepared.folder or _owner_config_folder(session, declared, agreed, scratch)
        try:
            config = _generation_config(request, folder, agreed["max_new_tokens"],
                                        agreed["cache"], agreed["budget"])
        except ValueError as error:
            session.fail(str(error), MISMATCH)
        ids = prepared.prompt_ids if prepared.prompt_ids is not None \
            else [0] * int(agreed["prompt_tokens"])
        output = session.run(generation_party, party_task(config, ids))
    seconds = time.perf_counter() - start
    session.post("report", {"rank": output["rank"], "cost": output["cost"],
                            "reveals": output["reveals"]})
    result = None
    if request.options.role == "client":
        others = [r for r in range(request.options.parties) if r != CLIENT]
        reports = session.collect("report", others)
        outputs = [output if r == CLIENT else reports[r] for r in range(len(others) + 1)]
        result = generation_result(outputs, len(ids), config, prepared.tokenizer, seconds)
    session.finish()
    return RoleOutcome(request.options.role, agreed, result, seconds)


def _owner_config_folder(session: RoleSession, declared: dict[int, dict[str, Any]],
                         agreed: dict[str, Any], scratch: str) -> Path:
    """The helper's model folder: the owner's config.json alone (public)."""
    text = payload(declared, "config_json")
    folder = Path(scratch)
    if not isinstance(text, str):
        session.fail("the model owner sent no config.json", MISMATCH)
    (folder / "config.json").write_text(text)
    if fingerprint(public_model_config(folder).to_dict()) != agreed["model_config"]:
        session.fail("the model owner's config.json does not match its declared "
                     "fingerprint", MISMATCH)
    return folder


def _quiet_model_loading() -> None:
    """No weight-loading progress bars in a role's output."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
