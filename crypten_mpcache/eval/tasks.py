"""Long-context tasks built from real text (Paul Graham essays), deterministic per seed.

Every sample is a token sequence split in two parts so that the same tokens can be fed
two ways: ``context_ids`` are always fed at prefill; ``query_ids`` (the question, the
chat turn end and the answer prefix) are fed at prefill too (``--query-at prefill``) or
one token at a time after prefill (``--query-at decode``), so that static eviction
cannot see the question. Both modes see exactly the same token ids.

Tasks (``TASKS`` maps a name to its builder):
- passkey: a 5-digit pass key sentence hidden at depth d inside essay text.
- needle: a natural-language fact sentence hidden at depth d inside essay text.
- kv-retrieval: a JSON-like list of random key/value pairs; ask for one key's value.
- ppl: an essay prefix of the context length; score the next ``ppl_tokens`` real tokens.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

PROMPT_STYLES = ("chat", "plain")
DEPTHS = (0.1, 0.3, 0.5, 0.7, 0.9)


@dataclass(frozen=True)
class TaskConfig:
    """How prompts look; shared by every task builder."""

    style: str = "chat"
    ppl_tokens: int = 64
    system: str = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

    def __post_init__(self) -> None:
        if self.style not in PROMPT_STYLES:
            raise ValueError(f"prompt style must be one of {PROMPT_STYLES}, got {self.style!r}")
        if self.ppl_tokens < 1:
            raise ValueError("ppl_tokens must be >= 1")


@dataclass(frozen=True)
class Sample:
    """One task instance: token ids, the reference answer and where the fact sits."""

    task: str
    index: int
    context_ids: tuple[int, ...]
    query_ids: tuple[int, ...]
    answer: str
    target_ids: tuple[int, ...] = ()
    max_new_tokens: int = 0
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def length(self) -> int:
        return len(self.context_ids) + len(self.query_ids)


class Haystack:
    """The essays tokenized once, with the token offsets where each essay starts."""

    def __init__(self, tokenizer: Any, texts: Sequence[str]) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.starts: list[int] = []
        for text in texts:
            self.starts.append(len(self.ids))
            self.ids.extend(encode(tokenizer, text.strip() + "\n\n"))
        self._ends: dict[int, bool] = {}

    def ends_sentence(self, token: int) -> bool:
        """Whether ``token`` ends a sentence: an inserted fact reads naturally after it."""
        if token not in self._ends:
            piece = self.tokenizer.decode([token]).rstrip(" ")
            self._ends[token] = piece.endswith((".", "!", "?", "\n"))
        return self._ends[token]

    def window(self, rng: random.Random, length: int) -> list[int]:
        """``length`` consecutive tokens starting at a random essay start (wraps around)."""
        if length <= 0:
            return []
        start = rng.choice(self.starts)
        ids = self.ids
        out = ids[start:start + length]
        while len(out) < length:
            out = out + ids[:length - len(out)]
        return out


def encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _frame(cfg: TaskConfig, tokenizer: Any, instruction: str, question: str,
           answer_prefix: str) -> tuple[list[int], list[int]]:
    """Token ids before the haystack and after it (the query part), for the prompt style."""
    if cfg.style == "chat":
        head = (f"<|im_start|>system\n{cfg.system}<|im_end|>\n"
                f"<|im_start|>user\n{instruction}\n\n")
        tail = f"\n\n{question}<|im_end|>\n<|im_start|>assistant\n{answer_prefix}"
    else:
        head = f"{instruction}\n\n"
        tail = f"\n\n{question}\n{answer_prefix}"
    return encode(tokenizer, head), encode(tokenizer, tail)


def _insert_at_depth(hay: Haystack, window: list[int], fact: list[int], depth: float,
                     ) -> tuple[list[int], int]:
    """Insert ``fact`` at the sentence boundary of ``window`` nearest to ``depth``."""
    target = round(depth * len(window))
    ends = [i + 1 for i, t in enumerate(window) if hay.ends_sentence(t)]
    pos = min(ends, key=lambda p: abs(p - target)) if ends else target
    if abs(pos - target) > max(4, len(window) // 20):
        pos = target
    return window[:pos] + fact + window[pos:], pos


def _haystack_sample(name: str, index: int, hay: Haystack, cfg: TaskConfig, context: int,
                     rng: random.Random, fact_text: str, question: str, answer: str,
                     answer_prefix: str, instruction: str, max_new_tokens: int) -> Sample:
    tok = hay.tokenizer
    head, query = _frame(cfg, tok, instruction, question, answer_prefix)
    fact = encode(tok, " " + fact_text.strip() + " ")
    room = context - len(head) - len(query) - len(fact)
    if room < 16:
        raise ValueError(f"context {context} is too short for task {name}")
    depth = DEPTHS[index % len(DEPTHS)]
    body, pos = _insert_at_depth(hay, hay.window(rng, room), fact, depth)
    start = len(head) + pos
    ctx = head + body
    return Sample(
        task=name, index=index, context_ids=tuple(ctx), query_ids=tuple(query),
        answer=answer, max_new_tokens=max_new_tokens,
        meta={"depth": depth, "fact_start": start, "fact_len": len(fact),
              "fact_depth": pos / (len(body) - len(fact))})


def build_passkey(index: int, hay: Haystack, cfg: TaskConfig, context: int,
                  rng: random.Random) -> Sample:
    key = f"{rng.randint(10000, 99999)}"
    return _haystack_sample(
        "passkey", index, hay, cfg, context, rng,
        fact_text=f"The pass key is {key}. Remember it. {key} is the pass key.",
        question="What is the pass key? Answer with the 5-digit number only.",
        answer=key, answer_prefix="The pass key is",
        instruction=("There is an important piece of information hidden inside a lot of "
                     "irrelevant text. Find it and memorize it."),
        max_new_tokens=8)


_NEEDLE_CITIES = ("Paris", "Boston", "Kyoto", "Lima", "Oslo", "Nairobi", "Toronto", "Seville")
_NEEDLE_ACTIVITIES = (
    "eat a sandwich and sit in the park on a sunny day",
    "ride a bicycle along the river at sunset",
    "visit the old harbor and watch the fishing boats",
    "drink hot chocolate in a tiny cafe near the station",
    "climb the hill behind the cathedral at dawn",
    "listen to street musicians in the central square",
    "swim in the cold lake before breakfast",
    "browse the used bookshops on a rainy afternoon",
)


def build_needle(index: int, hay: Haystack, cfg: TaskConfig, context: int,
                 rng: random.Random) -> Sample:
    """The classic needle-in-a-haystack fact, with a seeded city and activity."""
    city = rng.choice(_NEEDLE_CITIES)
    activity = rng.choice(_NEEDLE_ACTIVITIES)
    return _haystack_sample(
        "needle", index, hay, cfg, context, rng,
        fact_text=f"The best thing to do in {city} is to {activity}.",
        question=f"What is the best thing to do in {city}?",
        answer=activity, answer_prefix=f"The best thing to do in {city} is to",
        instruction=("There is an important fact hidden inside a lot of irrelevant text. "
                     "Find it and memorize it."),
        max_new_tokens=16)


def _kv_token(rng: random.Random) -> str:
    return f"{rng.getrandbits(16):04x}-{rng.getrandbits(16):04x}"


def build_kv(index: int, hay: Haystack, cfg: TaskConfig, context: int,
             rng: random.Random) -> Sample:
    tok = hay.tokenizer
    instruction = "JSON data below: a list of key/value pairs. Each key is unique."
    probe_key = _kv_token(rng)
    head, query = _frame(cfg, tok, instruction,
                         f'What is the value of key "{probe_key}"? Answer with the value only.',
                         f'The value of key "{probe_key}" is "')
    entry = lambda k, v: encode(tok, f' {{"key": "{k}", "value": "{v}"}},\n')
    opening, closing = encode(tok, "[\n"), encode(tok, "]")
    room = context - len(head) - len(query) - len(opening) - len(closing) - 4
    pairs: list[tuple[str, str]] = []
    used = 0
    while True:  # fill the context with pairs; entry lengths vary with the hex digits
        pair = (_kv_token(rng), _kv_token(rng))
        size = len(entry(*pair))
        if used + size > room:
            break
        pairs.append(pair)
        used += size
    if len(pairs) < 2:
        raise ValueError(f"context {context} is too short for task kv-retrieval")
    depth = DEPTHS[index % len(DEPTHS)]
    probe_at = min(len(pairs) - 1, int(depth * len(pairs)))
    answer = pairs[probe_at][1]
    pairs[probe_at] = (probe_key, answer)
    body: list[int] = list(opening)
    fact_start, fact_len = 0, 0
    for i, pair in enumerate(pairs):
        ids = entry(*pair)
        if i == probe_at:
            fact_start, fact_len = len(head) + len(body), len(ids)
        body.extend(ids)
    body.extend(closing)
    ctx = head + body
    return Sample(
        task="kv-retrieval", index=index, context_ids=tuple(ctx), query_ids=tuple(query),
        answer=answer, max_new_tokens=12,
        meta={"depth": depth, "pairs": len(pairs), "fact_start": fact_start, "fact_len": fact_len,
              "fact_depth": (fact_start - len(head) - len(opening)) / used})


def build_ppl(index: int, hay: Haystack, cfg: TaskConfig, context: int,
              rng: random.Random) -> Sample:
    ids = hay.window(rng, context + cfg.ppl_tokens)
    return Sample(task="ppl", index=index, context_ids=tuple(ids[:context]), query_ids=(),
                  answer="", target_ids=tuple(ids[context:]), meta={})


Builder = Callable[[int, Haystack, TaskConfig, int, random.Random], Sample]
TASKS: dict[str, Builder] = {
    "passkey": build_passkey,
    "needle": build_needle,
    "kv-retrieval": build_kv,
    "ppl": build_ppl,
}


def build_samples(task: str, hay: Haystack, cfg: TaskConfig, context: int, count: int,
                  seed: int) -> list[Sample]:
    """``count`` samples of ``task`` at ``context`` tokens; sample i depends only on (seed, i)."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose from {sorted(TASKS)}")
    return [TASKS[task](i, hay, cfg, context, random.Random(f"{seed}:{task}:{context}:{i}"))
            for i in range(count)]
