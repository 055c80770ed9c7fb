"""A walk-through of private generation with crypten_mpcache.

Part 1 uses the secure modules inside YOUR OWN CrypTen function, launched with CrypTen's
``crypten.mpc.run_multiprocess`` decorator: party 0 encrypts a Llama's weights, party 1
encrypts its prompt as one-hot tokens, and the patched model computes the next token on
secret shares; only that token is revealed, to party 1.

Part 2 is the one-call API, ``private_generate``, which does the same for a whole greedy
generation and reports what it cost.

    python demos/private_generation.py            # the embedded SmolLM2-135M-Instruct
    python demos/private_generation.py --tiny     # a tiny random Llama (seconds; tests)
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

import crypten_mpcache  # installs the CrypTen fixes before crypten is used
from crypten_mpcache import SecureModelOptions, patched, secure_forward
from crypten_mpcache.assets import smollm2_folder
from crypten_mpcache.generation_party import load_party_model
from crypten_mpcache.models.llama import secure_argmax
from crypten_mpcache.private import tokenize_prompt
from crypten_mpcache.runtime.report import format_cost
from crypten_mpcache.secure.cache.kv_cache import SecureKVCache
from crypten_mpcache.secure.primitives.reveal import reveal_generated_token
from crypten_mpcache.testing import tiny_llama_checkpoint

PROMPT = "What is the capital of France?"


def part1_own_function(folder: Path, prompt_ids: list[int]) -> int:
    """The secure modules inside a function launched by CrypTen's own decorator."""
    # crypten itself: imported here, after ``import crypten_mpcache`` (at the top) has
    # installed the fixes it needs on torch 2.x (isort would put it first at the top).
    import crypten
    import crypten.communicator as comm

    crypten.cfg.mpc.provider = "TTP"  # a separate trusted dealer process

    @crypten.mpc.run_multiprocess(world_size=2)
    def next_token() -> int | None:
        rank = comm.get().get_rank()
        # party 0 loads the real weights; party 1 builds the model from its config only
        model = load_party_model(str(folder), owner=rank == 0)
        with patched(model, SecureModelOptions(src=0)):
            vocab = model.config.vocab_size
            ids = prompt_ids if rank == 1 else [0] * len(prompt_ids)  # length is public
            onehot = torch.nn.functional.one_hot(torch.tensor([ids]), vocab).float()
            prompt = crypten.cryptensor(onehot, src=1)  # the client's secret prompt
            cache = SecureKVCache(model.config.num_hidden_layers)
            logits = secure_forward(model, prompt, cache, 0)
            return reveal_generated_token(secure_argmax(logits), to=1)  # party 1 only

    owner_view, client_view = next_token()
    print(f"part 1: party 0 learned {owner_view}; party 1 learned token {client_view}")
    return int(client_view)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="use a tiny random Llama")
    parser.add_argument("--max-new-tokens", type=int, default=8)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = tiny_llama_checkpoint(Path(tmp)) if args.tiny else smollm2_folder()
        prompt_ids, tokenizer = tokenize_prompt(PROMPT, folder, chat_template=True)
        first = part1_own_function(folder, prompt_ids)

        result = crypten_mpcache.private_generate(
            PROMPT, max_new_tokens=args.max_new_tokens, model_path=str(folder),
            dealer="ttp", check=True, progress=False)
        print(f"part 2: generated {result.text!r}")
        print(f"        matches plaintext greedy: {result.match}; "
              f"max |logit error| {result.max_abs_logit_error:.4f}")
        assert result.generated_ids[0] == first, "part 1 and part 2 disagree on token 1"
        print(format_cost(result.cost, max_steps=3))


if __name__ == "__main__":
    main()
