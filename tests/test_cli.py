"""The command line: private generation end to end, JSON output, and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from crypten_mpcache.cli import main
from crypten_mpcache.testing import tiny_llama_checkpoint


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    return tiny_llama_checkpoint(tmp_path_factory.mktemp("tiny"), seed=3, context=64)


def test_generate_writes_the_documented_json(tiny_folder, tmp_path, capsys):
    out = tmp_path / "run.json"
    code = main(["generate", "--model", str(tiny_folder), "--prompt", "Hello there",
                 "--max-new-tokens", "3", "--dealer", "tfp", "--check", "--quiet",
                 "--json", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "plaintext check: MATCH" in printed and "decode (mean/step)" in printed
    data = json.loads(out.read_text())
    for key in ("generated_ids", "text", "plaintext_ids", "match", "max_abs_logit_error",
                "prompt_tokens", "parties", "dealer", "cost"):
        assert key in data, key
    assert len(data["generated_ids"]) == 3 and data["match"] is True
    assert data["generated_ids"] == data["plaintext_ids"]
    assert data["dealer"] == "tfp" and data["parties"] == 2
    cost = data["cost"]
    assert set(cost["prefill"]) >= {"bytes", "rounds", "seconds"}
    assert [s["step"] for s in cost["decode"]] == [1, 2]
    assert all(s["bytes"] > 0 and s["rounds"] > 0 for s in cost["decode"])
    assert {"linear", "softmax", "norm", "activation", "argmax"} <= set(cost["operators"])


def _error_of(argv: list[str], capsys, command: str = "generate") -> str:
    """Bad input: one line ``crypten-mpcache <command>: error: ...``, exit status 2."""
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 2, captured
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"crypten-mpcache {command}: error: "), \
        captured.err
    assert "Traceback" not in captured.err
    return lines[0]


def test_empty_prompt(tiny_folder, capsys):
    assert "prompt is empty" in _error_of(
        ["generate", "--model", str(tiny_folder), "--prompt", "  "], capsys)


def test_prompt_longer_than_the_context(tiny_folder, capsys):
    long_prompt = "word " * 200
    assert "exceeds the model's context" in _error_of(
        ["generate", "--model", str(tiny_folder), "--prompt", long_prompt,
         "--no-chat-template"], capsys)


def test_unknown_model_folder(tmp_path, capsys):
    assert "unknown model folder" in _error_of(
        ["generate", "--model", str(tmp_path / "nowhere")], capsys)


def test_unsupported_architecture_names_the_supported_ones(tmp_path, capsys):
    from transformers import GPT2Config

    GPT2Config(n_layer=1, n_embd=8, n_head=2,
               architectures=["GPT2LMHeadModel"]).save_pretrained(tmp_path)
    message = _error_of(["generate", "--model", str(tmp_path)], capsys)
    assert "GPT2LMHeadModel" in message and "LlamaForCausalLM" in message


def test_invalid_party_count(tiny_folder, capsys):
    assert "parties must be 2 or 3" in _error_of(
        ["generate", "--model", str(tiny_folder), "--parties", "5"], capsys)


def test_invalid_dealer_is_a_one_line_error(capsys):
    assert "invalid choice: 'bank'" in _error_of(["generate", "--dealer", "bank"], capsys)


@pytest.mark.parametrize("argv,command,expected", [
    (["bench", "--shape", "tiny", "--cache", "bogus"], "bench", "unknown cache"),
    (["bench", "--shape", "tiny", "--budget", "5"], "bench", "expected a fraction"),
    (["bench", "--shape", "tiny", "--context", "a,b"], "bench", "bad list"),
    (["eval", "--method", "full,magic"], "eval", "unknown method"),
    (["eval", "--budget", "0,0.1"], "eval", "expected a fraction"),
    (["eval", "--shard", "3"], "eval", "--shard takes I/N"),
    (["generate", "--max-new-tokens", "0"], "generate", "positive integer"),
])
def test_every_command_reports_bad_input_the_same_way(argv, command, expected, capsys):
    assert expected in _error_of(argv, capsys, command)


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(ValueError, match="unknown model folder"):
        main(["--debug", "generate", "--model", str(tmp_path / "nowhere")])


def test_help_is_quick_and_names_every_command():
    done = subprocess.run([sys.executable, "-m", "crypten_mpcache", "--help"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert all(name in done.stdout for name in ("generate", "eval", "bench"))


def test_demo_walkthrough_runs(tmp_path):
    demo = Path(__file__).resolve().parents[1] / "demos" / "private_generation.py"
    result = subprocess.run([sys.executable, str(demo), "--tiny", "--max-new-tokens", "2"],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "party 0 learned None" in result.stdout
    assert "matches plaintext greedy: True" in result.stdout


def _checked_generation(tmp_path, capsys, cache: str, budget: int) -> dict:
    """``generate --check`` of 3 tokens on a ~120-token prompt (tiny Llama, TFP) with
    ``cache`` at ``budget`` tokens; returns the JSON it wrote (exit status asserted 0)."""
    folder = tiny_llama_checkpoint(tmp_path / "m", seed=3, context=256)
    out = tmp_path / f"{cache}.json"
    code = main(["generate", "--model", str(folder), "--no-chat-template",
                 "--prompt", "Tell me a story about a dragon. " * 15,
                 "--max-new-tokens", "3", "--dealer", "tfp", "--cache", cache,
                 "--budget", str(budget), "--check", "--quiet", "--json", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    return json.loads(out.read_text())


def test_generate_with_mpcache_and_a_budget_matches_plaintext_mpcache(tmp_path, capsys):
    """A budget of 72 tokens on a ~120-token prompt: above the forced sink and recent
    tokens (32), so the shipped default selects clusters with a secure top-k at every
    decode step (a budget below 32 would select nothing and test no selection)."""
    data = _checked_generation(tmp_path, capsys, "mpcache", 72)
    assert data["cache"] == "mpcache" and data["match"] is True
    assert data["prompt_tokens"] > 72
    operators = data["cost"]["operators"]
    for kind in ("similarity", "topk", "gather"):  # the selection ran under MPC
        cost = operators.get(kind, {"bytes": 0, "rounds": 0})
        assert cost["bytes"] > 0 and cost["rounds"] > 0, (kind, sorted(operators))


def test_budget_without_mpcache_is_rejected(tiny_folder, capsys):
    assert "need cache='mpcache'" in _error_of(
        ["generate", "--model", str(tiny_folder), "--budget", "0.1"], capsys)


def test_malformed_budget_is_a_one_line_error(capsys):
    assert "expected a fraction like 0.05" in _error_of(["generate", "--budget", "lots"],
                                                       capsys)


def test_h2o_is_refused_before_any_party_starts(tiny_folder, capsys):
    message = _error_of(["generate", "--model", str(tiny_folder), "--cache", "h2o",
                         "--budget", "0.5"], capsys)
    assert "accumulated" in message and "streaming" in message


def test_generate_runs_a_baseline_and_checks_it_against_plaintext(tmp_path, capsys):
    """StreamingLLM at 40 tokens on a ~120-token prompt: the secure cache evicts, and
    --check compares with the plaintext run of the same method."""
    data = _checked_generation(tmp_path, capsys, "streaming", 40)
    assert data["cache"] == "streaming" and data["match"] is True
    assert data["prompt_tokens"] > 40 and data["max_abs_logit_error"] < 0.1
