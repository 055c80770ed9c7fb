"""Inside the parties of a private generation: one party's whole greedy decoding loop.

``generation_party(task)`` is what ``private.generate_ids`` launches in every party
process (``runtime.launcher.launch`` forks it). Party 0 (model owner) loads the real
weights; every other party builds the model from its config alone on the meta device and
never holds, nor allocates, the weights (``weight_checksums`` lets tests check that; the
dealer process never builds a model). Party 1 (client) encrypts its prompt
as one-hot tokens and is the only one to learn the generated tokens: the secure argmax
one-hot is fed back as the next input and stays secret; only its index is opened, to
party 1 (``secure.primitives.reveal``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import crypten
import crypten.communicator as comm
import torch
from accelerate import init_empty_weights
from tqdm import tqdm
from transformers import AutoConfig, AutoModelForCausalLM

from crypten_mpcache.methods import FULL, MethodConfig, resolve_method
from crypten_mpcache.models.llama import SecureModelOptions, secure_argmax, secure_forward
from crypten_mpcache.patches.transformers_llama import patch
from crypten_mpcache.runtime.cost import CostMeter, operator_scope
from crypten_mpcache.runtime.offline import deal_ahead
from crypten_mpcache.secure.cache.kv_cache import SecureKVCache
from crypten_mpcache.secure.cache.method_policy import create_policy, default_policies
from crypten_mpcache.secure.primitives.reveal import (
    RevealLedger,
    debug_reveal_logits,
    reveal_generated_token,
)

CLIENT = 1
OWNER = 0


@dataclass(frozen=True)
class PartyTask:
    """What every party receives. Only party 1 reads ``prompt_ids``; the others use only
    its length (public)."""

    folder: str
    prompt_ids: tuple[int, ...]
    max_new_tokens: int
    premask: bool
    cache: str  # "full" or a method name of eval and bench (knobs included)
    check: bool
    progress: bool
    method: MethodConfig | None = None  # the resolved config (None: resolve ``cache``)
    debug_selections: bool = False  # TESTS ONLY: reveal and return the cache's selections


def party_policy(task: PartyTask, n_layers: int) -> Any:
    """The task's secure cache policy: the full cache, or the engine running the plan of
    the task's method config (for a model of ``n_layers`` layers)."""
    if task.cache == FULL:
        return default_policies().create(FULL)
    config = task.method or resolve_method(task.cache)
    return create_policy(config=config, n_layers=n_layers, debug=task.debug_selections)


def load_party_model(folder: str, owner: bool) -> torch.nn.Module:
    """The owner loads the real weights (straight into the model, without a second copy:
    ``low_cpu_mem_usage``); everyone else builds the skeleton from the config on the meta
    device (accelerate's ``init_empty_weights``): shapes, no weight is ever allocated."""
    if owner:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32,
                                                     low_cpu_mem_usage=True)
    else:
        config = AutoConfig.from_pretrained(folder)
        with init_empty_weights():
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return model.eval()


def weight_checksums(model: torch.nn.Module) -> dict[str, float | None]:
    """A checksum per parameter (None on the meta device: no values held), so tests can
    see whose weights a party holds."""
    return {name: None if p.is_meta else float(p.detach().double().sum())
            for name, p in model.named_parameters()}


def _client_onehot(task: PartyTask, rank: int, vocab: int) -> torch.Tensor:
    ids = list(task.prompt_ids) if rank == CLIENT else [0] * len(task.prompt_ids)
    return torch.nn.functional.one_hot(torch.tensor([ids]), vocab).float()


def _decode_steps(task: PartyTask, rank: int) -> Any:
    steps = range(1, task.max_new_tokens)
    if task.progress and rank == CLIENT and len(steps):
        return tqdm(steps, desc="private decode", unit="token")
    return steps


def generation_party(task: PartyTask) -> dict[str, Any]:
    """One party's whole generation (module level: ``launch`` forks it)."""
    rank = comm.get().get_rank()
    model = load_party_model(task.folder, owner=rank == OWNER)
    checksums = weight_checksums(model)
    policy = party_policy(task, model.config.num_hidden_layers)
    options = SecureModelOptions(src=OWNER, premask=task.premask, policy=policy)
    meter, ledger = CostMeter(), RevealLedger()
    tokens: list[int | None] = []
    logits_seen: list[torch.Tensor] = []

    def emit(logits: Any) -> Any:
        onehot = secure_argmax(logits, options)
        if task.check:
            logits_seen.append(debug_reveal_logits(logits, to=CLIENT))
        tokens.append(reveal_generated_token(onehot, to=CLIENT))
        return onehot

    def phase(name: str, run: Callable[[], Any]) -> Any:
        with meter.phase(name):
            return deal_ahead(name, run)

    def prefill() -> Any:
        with operator_scope("embedding"):
            prompt = crypten.cryptensor(
                _client_onehot(task, rank, model.config.vocab_size), src=CLIENT)
        return emit(secure_forward(model, prompt, cache, 0))

    with ledger:
        handle = phase("setup", lambda: patch(model, options))
        cache = SecureKVCache(model.config.num_hidden_layers, premask=task.premask)
        token = phase("prefill", prefill)
        for step in _decode_steps(task, rank):
            position = len(task.prompt_ids) + step - 1
            token = phase(f"decode/{step}",
                          lambda t=token, p=position: emit(secure_forward(model, t, cache, p)))
        handle.restore()
    return {
        "rank": rank,
        "tokens": tokens if rank == CLIENT else None,
        "logits": torch.stack([t.reshape(-1) for t in logits_seen])
        if rank == CLIENT and logits_seen else None,
        "cost": meter.report(),
        "reveals": ledger.as_dict(),
        "checksums": checksums,
        "selections": policy.records if task.debug_selections else None,
    }
