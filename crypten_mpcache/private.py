"""Private greedy generation: the model owner's weights and the client's prompt stay secret.

The client-side API: ``PrivateGenerationConfig`` (validated before any party starts),
``private_generate`` / ``generate_ids``, which launch ``generation_party.generation_party``
in every party process, and the ``GenerationResult`` with the plaintext check. Party 0
(model owner) loads the real weights and encrypts them; party 1 (client) builds the same
model from its config alone, encrypts its prompt as one-hot tokens and is the only one to
learn the generated tokens. With 3 parties, party 2 is a helper built from the config like
party 1. The dealer is a trusted third process ("ttp", default) or
party 0 ("tfp": tests and cost measurement only).

Decoding runs exactly ``max_new_tokens`` tokens (public): no early stop on EOS, which
would leak. The secure argmax one-hot is fed back as the next input and stays secret; only
its index is opened, to party 1 (``secure.primitives.reveal``).

Phases of the cost report: ``setup`` (weight encryption and premasking, once),
``prefill`` (the prompt forward, the first token), ``decode/<i>`` for token i >= 1.

    result = private_generate("What is the capital of France?", max_new_tokens=8)
    result.text, result.cost["decode"][0]["bytes"]

With ``cache="mpcache"`` (or any MPCache variant name of ``eval`` and ``bench``, e.g.
``"mpcache:paper"`` or ``"mpcache+cluster_sizes=16/8"``) the encrypted KV cache is evicted
by the engine (``secure.cache.method_policy``) with ``methods.resolve_method(cache, budget)``:
the configuration ``eval`` and ``bench`` run under that name and ``budget`` (a ratio of
the context or a token count per decode step). ``mpcache=`` (an ``MPCacheConfig``)
replaces the knobs of ``cache="mpcache"`` and is put at ``budget`` the same way
(``MPCacheConfig.at_budget``). ``check=True`` compares with the PLAINTEXT generation of
the same config (``plaintext.generate_fed``).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoTokenizer

from crypten_mpcache.algorithm.plan import Amount, check_amount
from crypten_mpcache.assets import smollm2_folder
from crypten_mpcache.config import MPCACHE, MPCacheConfig
from crypten_mpcache.generation_party import (
    CLIENT,
    PartyTask,
    generation_party,
    load_party_model,
)
from crypten_mpcache.methods import (
    BASELINE_NAMES,
    FULL,
    MethodConfig,
    is_known,
    known_methods,
    resolve_method,
)
from crypten_mpcache.models import check_architecture
from crypten_mpcache.plaintext import generate_fed
from crypten_mpcache.runtime.cost import combine
from crypten_mpcache.runtime.launcher import COMPARISONS, DEALERS, LaunchConfig, launch
from crypten_mpcache.runtime.offline import DEALINGS

DEFAULT_PROMPT = ("In two short sentences, explain why the sky looks blue on a clear day "
                  "and why sunsets often look red or orange.")
# Evicts by attention accumulated at every decode step: the secure cache does not compute it.
SECURE_UNSUPPORTED = ("h2o",)


def secure_methods() -> tuple[str, ...]:
    """The method names ``generate`` runs (MPCache variants may also add knobs)."""
    return tuple(m for m in known_methods() if m not in SECURE_UNSUPPORTED)


@dataclass(frozen=True)
class PrivateGenerationConfig:
    """The knobs of one private generation (validated on construction)."""

    max_new_tokens: int = 16
    model_path: str | None = None  # None: the embedded SmolLM2-135M-Instruct
    parties: int = 2
    dealer: str = "ttp"
    comparison: str = "hybrid"
    dcf_max_elements: int = LaunchConfig.dcf_max_elements  # hybrid: calls up to it by DCF
    dealing: str = "ahead"  # the TTP's material: a phase at a time, before it (or on-demand)
    cache: str = FULL  # full, or a method name of eval and bench (``secure_methods``)
    check: bool = False  # also run the plaintext model and compare (reveals logits)
    premask: bool = True
    progress: bool = True
    chat_template: bool = True
    timeout_s: float = 7200.0
    budget: Amount | None = None  # tokens attended per decode step (not for full)
    mpcache: MPCacheConfig | None = None  # cache="mpcache" only: replaces its knobs

    def __post_init__(self) -> None:
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be an int >= 1, got {self.max_new_tokens!r}")
        if self.parties not in (2, 3):
            raise ValueError(f"parties must be 2 or 3 (owner, client[, helper]), "
                             f"got {self.parties!r}")
        if self.dealer not in DEALERS:
            raise ValueError(f"dealer must be one of {DEALERS}, got {self.dealer!r}")
        if self.comparison not in COMPARISONS:
            raise ValueError(f"comparison must be one of {COMPARISONS}, got "
                             f"{self.comparison!r}")
        if not is_known(self.cache):
            raise ValueError(f"unknown cache policy {self.cache!r}; generate runs "
                             f"{', '.join(secure_methods())} (an MPCache variant may add "
                             "knobs: mpcache+field=value)")
        if self.cache in SECURE_UNSUPPORTED:
            raise ValueError(f"cache {self.cache!r} evicts by the attention accumulated at "
                             "every decode step, which the secure cache does not compute; "
                             f"generate runs {', '.join(secure_methods())}")
        if self.model_path is not None and not (Path(self.model_path) / "config.json").is_file():
            raise ValueError(f"unknown model folder {self.model_path!r}: no config.json there "
                             "(give a local transformers checkpoint folder, or None for the "
                             "embedded SmolLM2)")
        if self.dealing not in DEALINGS:
            raise ValueError(f"dealing must be one of {DEALINGS}, got {self.dealing!r}")
        if not self.timeout_s > 0:
            raise ValueError("timeout_s must be positive")
        self.launch_config()  # the comparison's threshold: validated there
        check_amount("budget", self.budget, allow_none=True)
        if self.mpcache is not None and not isinstance(self.mpcache, MPCacheConfig):
            raise ValueError(f"mpcache must be an MPCacheConfig, got {self.mpcache!r}")
        if self.cache == FULL and (self.budget is not None or self.mpcache is not None):
            raise ValueError(f"budget and mpcache options need cache='mpcache' or another "
                             f"evicting method, not {self.cache!r}")
        if self.mpcache is not None and self.cache != MPCACHE:
            raise ValueError(f"mpcache= replaces the knobs of cache='mpcache'; "
                             f"cache={self.cache!r} names its own (give one of the two)")
        if self.cache in BASELINE_NAMES and self.budget is None:
            raise ValueError(f"cache {self.cache!r} needs a budget (a ratio like 0.05 or a "
                             "token count like 128)")
        self.method_config()  # a bad knob or budget fails here, before any party starts

    def method_config(self) -> MethodConfig | None:
        """The method config of the run (None for the full cache): ``resolve_method(cache,
        budget)``, the config of ``eval`` and ``bench``, or ``mpcache`` at ``budget``."""
        if self.cache == FULL:
            return None
        if self.mpcache is not None:
            return self.mpcache if self.budget is None else self.mpcache.at_budget(self.budget)
        return resolve_method(self.cache, self.budget)

    def model_folder(self) -> Path:
        if self.model_path is not None:
            return Path(self.model_path)
        return smollm2_folder()

    def launch_config(self) -> LaunchConfig:
        return LaunchConfig(parties=self.parties, dealer=self.dealer,  # type: ignore[arg-type]
                            comparison=self.comparison, dealing=self.dealing,
                            timeout_s=self.timeout_s,
                            dcf_max_elements=self.dcf_max_elements)


@dataclass
class GenerationResult:
    """What the client learns (tokens, text) plus the measured cost and optional check."""

    generated_ids: list[int]
    text: str | None
    prompt_tokens: int
    parties: int
    dealer: str
    cache: str
    premask: bool
    comparison: str
    cost: dict[str, Any]
    dealing: str = "ahead"
    reveals: dict[str, dict[str, int]] = field(default_factory=dict)
    seconds: float = 0.0
    plaintext_ids: list[int] | None = None
    match: bool | None = None
    max_abs_logit_error: float | None = None

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(asdict(self), indent=indent)


# --- public model information (no weights) ---------------------------------------------


def public_model_config(folder: Path) -> Any:
    """The model's config (public), after checking that its architecture is supported."""
    config = AutoConfig.from_pretrained(str(folder))
    names = list(getattr(config, "architectures", None) or [])
    check_architecture(names[0] if names else type(config).__name__)
    return config


def tokenize_prompt(prompt: str, folder: Path, chat_template: bool) -> tuple[list[int], Any]:
    """Token ids of the prompt (the tokenizer is public; the ids are the client's secret)."""
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    if chat_template and getattr(tokenizer, "chat_template", None):
        encoded = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True)
        if hasattr(encoded, "keys"):
            encoded = encoded["input_ids"]
        return [int(t) for t in encoded], tokenizer
    return [int(t) for t in tokenizer(prompt)["input_ids"]], tokenizer


def check_prompt_length(prompt_ids: list[int], config: Any, max_new_tokens: int) -> None:
    if not prompt_ids:
        raise ValueError("the prompt is empty")
    context = int(getattr(config, "max_position_embeddings", 0) or 0)
    if context and len(prompt_ids) + max_new_tokens > context:
        raise ValueError(f"prompt of {len(prompt_ids)} tokens + {max_new_tokens} new tokens "
                         f"exceeds the model's context of {context} tokens")


# --- the client-side API ---------------------------------------------------------------


def cost_summary(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-party meter reports -> {setup, prefill, decode: [...], operators, phase_operators}."""
    merged = combine(reports)
    phases = {p["phase"]: {k: v for k, v in p.items() if k != "phase"}
              for p in merged["phases"]}
    decode = [{"step": int(name.split("/")[1]), **value}
              for name, value in phases.items() if name.startswith("decode/")]
    return {"setup": phases.get("setup"), "prefill": phases.get("prefill"), "decode": decode,
            "operators": merged["operators"], "phase_operators": merged["phase_operators"]}


def plaintext_reference(folder: Path, prompt_ids: list[int], generated: list[int],
                        steps: int) -> tuple[list[int], torch.Tensor]:
    """(plaintext greedy ids, plaintext logits along the PRIVATE tokens' prefix)."""
    model = load_party_model(str(folder), owner=True)
    with torch.no_grad():
        sequence = list(prompt_ids)
        for _ in range(steps):
            logits = model(torch.tensor([sequence])).logits[0, -1]
            sequence.append(int(logits.argmax()))
        forced = torch.tensor([list(prompt_ids) + generated[:-1]])
        teacher = model(forced).logits[0, len(prompt_ids) - 1:]
    return sequence[len(prompt_ids):], teacher


def plaintext_method_reference(folder: Path, prompt_ids: list[int], generated: list[int],
                               steps: int, config: MethodConfig
                               ) -> tuple[list[int], torch.Tensor]:
    """Like ``plaintext_reference`` with the method ``config`` applied
    (``plaintext.generate_fed``): greedy ids, and logits along the PRIVATE tokens' prefix
    (a cache policy needs step-by-step runs)."""
    model = load_party_model(str(folder), owner=True)
    plain_ids, _, _ = generate_fed(model, config, prompt_ids, steps)
    _, teacher, _ = generate_fed(model, config, prompt_ids, steps, feed=generated)
    return plain_ids, teacher


def party_task(config: PrivateGenerationConfig, prompt_ids: list[int]) -> PartyTask:
    """What every party of this generation receives (``generate`` and ``party`` alike;
    a party other than the client gets zeros of the prompt's public length)."""
    return PartyTask(str(config.model_folder()), tuple(int(t) for t in prompt_ids),
                     config.max_new_tokens, config.premask, config.cache, config.check,
                     config.progress, config.method_config())


def generation_result(outputs: list[dict[str, Any]], prompt_tokens: int,
                      config: PrivateGenerationConfig, tokenizer: Any,
                      seconds: float) -> GenerationResult:
    """The client's result from every party's output in rank order (the client's own
    with its tokens; the others' costs and reveal counts)."""
    generated = [int(t) for t in outputs[CLIENT]["tokens"]]
    return GenerationResult(
        generated_ids=generated,
        text=tokenizer.decode(generated, skip_special_tokens=True) if tokenizer else None,
        prompt_tokens=prompt_tokens, parties=config.parties, dealer=config.dealer,
        cache=config.cache, premask=config.premask, comparison=config.comparison,
        cost=cost_summary([o["cost"] for o in outputs]),
        dealing=config.dealing if config.dealer == "ttp" else "none",
        reveals={f"party{o['rank']}": o["reveals"]["counts"] for o in outputs},
        seconds=seconds)


def generate_ids(prompt_ids: list[int], config: PrivateGenerationConfig | None = None,
                 tokenizer: Any = None) -> GenerationResult:
    """Private greedy generation from token ids (the client's secret)."""
    config = config or PrivateGenerationConfig()
    folder = config.model_folder()
    model_config = public_model_config(folder)
    prompt_ids = [int(t) for t in prompt_ids]
    check_prompt_length(prompt_ids, model_config, config.max_new_tokens)
    method = config.method_config()
    start = time.perf_counter()
    outputs = launch(generation_party, party_task(config, prompt_ids),
                     config=config.launch_config())
    result = generation_result(outputs, len(prompt_ids), config, tokenizer,
                               time.perf_counter() - start)
    client, generated = outputs[CLIENT], result.generated_ids
    if config.check:
        if method is not None:
            plain_ids, plain_logits = plaintext_method_reference(
                folder, prompt_ids, generated, config.max_new_tokens, method)
        else:
            plain_ids, plain_logits = plaintext_reference(folder, prompt_ids, generated,
                                                          config.max_new_tokens)
        error = (client["logits"].float() - plain_logits.float()).abs().max()
        result.plaintext_ids, result.match = plain_ids, plain_ids == generated
        result.max_abs_logit_error = float(error)
    return result


def private_generate(prompt: str | None = None, *, max_new_tokens: int = 16,
                     model_path: str | None = None, parties: int = 2, dealer: str = "ttp",
                     comparison: str = "hybrid", dealing: str = "ahead",
                     cache: str = "full", check: bool = False, premask: bool = True,
                     progress: bool = True, chat_template: bool = True,
                     budget: Amount | None = None,
                     mpcache: MPCacheConfig | None = None,
                     dcf_max_elements: int = LaunchConfig.dcf_max_elements
                     ) -> GenerationResult:
    """Generate ``max_new_tokens`` tokens privately (see the module docstring; ``cache``
    and ``budget`` mean what they mean in ``eval`` and ``bench``)."""
    config = PrivateGenerationConfig(
        max_new_tokens=max_new_tokens, model_path=model_path, parties=parties, dealer=dealer,
        comparison=comparison, dealing=dealing, cache=cache, check=check, premask=premask,
        progress=progress, chat_template=chat_template, budget=budget, mpcache=mpcache,
        dcf_max_elements=dcf_max_elements)
    prompt = DEFAULT_PROMPT if prompt is None else prompt
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("the prompt is empty")
    folder = config.model_folder()
    public_model_config(folder)
    prompt_ids, tokenizer = tokenize_prompt(prompt, folder, config.chat_template)
    return generate_ids(prompt_ids, config, tokenizer)
