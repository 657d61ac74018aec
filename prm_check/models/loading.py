"""Load a local Hugging Face causal-LM folder safely: no download, no remote code.

Attention is forced to ``eager`` because the fused CPU attention kernel has neither a
double backward nor forward-mode AD, and every curvature method needs one of them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from prm_check.errors import ModelLoadError

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer.model")


@dataclass
class LoadedModel:
    """A model in eval mode, its tokenizer and where it came from."""

    model: torch.nn.Module
    tokenizer: object
    path: Path

    @property
    def pad_id(self) -> int:
        pad = getattr(self.tokenizer, "pad_token_id", None)
        if pad is None:
            pad = getattr(self.tokenizer, "eos_token_id", None)
        return int(pad if pad is not None else 0)


def check_folder(path: Path) -> dict:
    """config.json parsed, after checking weights and tokenizer files are present."""
    if not path.exists():
        raise ModelLoadError(
            f"model path {str(path)!r} does not exist; pass a local folder "
            "written by save_pretrained, or 'builtin:tiny-opt'"
        )
    if not path.is_dir():
        raise ModelLoadError(
            f"model path {str(path)!r} is a file; pass the folder holding "
            "config.json, the weights and the tokenizer"
        )
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise ModelLoadError(f"{str(path)!r} has no config.json: not a save_pretrained folder")
    try:
        cfg = json.loads(cfg_file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{cfg_file} is not readable JSON: {exc}") from exc
    if not any((path / f).is_file() for f in WEIGHT_FILES):
        raise ModelLoadError(f"{str(path)!r} has no weights (looked for {', '.join(WEIGHT_FILES)})")
    if not any((path / f).is_file() for f in TOKENIZER_FILES):
        raise ModelLoadError(
            f"{str(path)!r} has no tokenizer (looked for {', '.join(TOKENIZER_FILES)}); "
            "save it beside the model with tokenizer.save_pretrained(path)"
        )
    return cfg


def _check_causal_lm(path: Path, cfg: dict):
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    model_type = cfg.get("model_type")
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ModelLoadError(
            f"{str(path)!r} is model_type {model_type!r}, not a causal language model "
            f"(known causal LM types include opt, gpt2, llama)"
        )
    try:
        return AutoConfig.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    except Exception as exc:  # transformers raises many types for a bad config
        raise ModelLoadError(f"config.json in {str(path)!r} is invalid: {exc}") from exc


def load_causal_lm(path: str | Path, dtype: torch.dtype = torch.float32) -> LoadedModel:
    """Load model + tokenizer from a local ``save_pretrained`` folder, eval mode, eager attention.

    Raises :class:`ModelLoadError` naming the folder for: missing path, no config, no
    weights, no tokenizer, not a causal LM, unreadable weights.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path).expanduser()
    cfg = check_folder(path)
    config = _check_causal_lm(path, cfg)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path,
            config=config,
            dtype=dtype,
            attn_implementation="eager",
            local_files_only=True,
            trust_remote_code=False,
            use_safetensors=(path / "model.safetensors").is_file()
            or (path / "model.safetensors.index.json").is_file()
            or None,
        )
    except Exception as exc:
        raise ModelLoadError(f"weights in {str(path)!r} are unreadable: {exc}") from exc
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            path, local_files_only=True, trust_remote_code=False
        )
    except Exception as exc:
        raise ModelLoadError(f"tokenizer in {str(path)!r} is unreadable: {exc}") from exc
    model.eval()
    return LoadedModel(model=model, tokenizer=tokenizer, path=path)
