"""The built-in default experiment assets ``builtin:tiny-opt``, built once and cached.

Why cached by a key of (recipe, seed, library versions, corpus hash, code version): the
build costs minutes, and the same key must always mean bit-identical weights, so any
change that could alter them changes the folder. The cache is written into a temporary
folder and renamed into place, so an interrupted build never leaves a folder that looks
valid.

Layout of ``<cache_dir>/<key>/``: ``reference/``, ``full/``, ``planted/`` (each a
``save_pretrained`` folder with the tokenizer) and ``data.json`` (splits, canaries,
planted set, recipe, hashes, timings).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from prm_check.data.batching import tokenize_texts
from prm_check.data.corpus import chunk_documents, corpus_documents, corpus_sha256, split_chunks
from prm_check.data.records import canary_insertions
from prm_check.data.splits import DataSplits, build_splits
from prm_check.data.tokenizer import EOS_ID, PAD_ID, train_bpe_tokenizer
from prm_check.errors import ModelLoadError, SpecError
from prm_check.models.training import (
    PlantedSet,
    StageConfig,
    build_opt,
    choose_planted,
    fixed_threads,
    planted_finetune,
    train_stage,
)

__all__ = [
    "BUILTIN_NAME",
    "RECIPE_VERSION",
    "VARIANTS",
    "BuiltinAssets",
    "PlantedSet",
    "build_default",
    "cache_key",
    "default_cache_dir",
    "default_recipe",
    "load_builtin",
]

BUILTIN_NAME = "builtin:tiny-opt"
RECIPE_VERSION = 2  # bump whenever build code changes what the weights or splits are
VARIANTS = ("full", "planted")
_SUBFOLDERS = ("reference", *VARIANTS)

_DEFAULT_RECIPE: dict = {
    "tokenizer": {"vocab_size": 2048},
    "data": {
        "seq_len": 128,
        "corpus_score_fraction": 0.1,
        "corpus_eval_fraction": 0.1,
        "n_public": 1000,
        "n_members": 500,
        "canary_repetitions": [1, 4, 16],
        "canaries_per_rep": 20,
        "n_canary_references": 1000,
    },
    "model": {"hidden": 128, "layers": 4, "heads": 4, "ffn": 512, "max_positions": 128},
    "pretrain": {
        "steps": 350,
        "lr": 1e-3,
        "corpus_batch": 16,
        "record_batch": 32,
        "weight_decay": 0.01,
        "record_weight": 0.5,
    },
    # Recipe 2 (cold build was 383 s on the idle 2-core machine: reference 121 s, full 45 s,
    # planted 215 s; bar 240 s). Every step now pads corpus and records in length groups
    # (training.length_groups): a member batch mixes ~85-token records with ~14-token
    # canaries, and one padded tensor spent ~40 % of the planted step on padding (planted
    # step 0.36 -> 0.20 s, measured idle). Trials below were trained from the recipe-1
    # reference (seed 0, 1 thread, machine shared: s/step are contended, compare ratios
    # only), AUCs on the 250 + 250 eval halves (SE ~0.02-0.03):
    #   full, 16 corpus chunks, record_weight 0.7: loss / calibrated AUC 0.773 / 0.772 at
    #     150 (calibrated below loss) -> rejected;
    #   full, 8 corpus chunks, w 0.5 (0.68x the step cost of 16 chunks): 0.728 / 0.735 at
    #     150, 0.771 / 0.791 at 175, 0.781 / 0.803 at 200 (PPL 73.4 vs reference 88.6),
    #     0.818 / 0.826 at 225, 0.834 / 0.846 at 250 -> 200 steps (widest calibrated margin).
    "full": {
        "steps": 200,
        "lr": 1e-3,
        "corpus_batch": 8,
        "record_batch": 32,
        "record_weight": 0.5,
    },
    # Planted: 25 % of fc1 neurons in every layer (131k trainable scalars), 64 member
    # records per step, lr 3e-3. Recipe 1 (w 0.5, 8 corpus chunks) needed 550 steps for loss
    # / calibrated AUC 0.779 / 0.841 (0.748 at 450). Weighting the record loss up is what
    # speeds memorisation; the corpus term is what keeps perplexity (trials, seed 0):
    #   no corpus: 0.764 / 0.805 at 150 but PPL 160-171 (1.8-1.9x reference) -> rejected;
    #   4 chunks, w 0.7: 0.763 / 0.820 at 300, PPL 86.8;
    #   8 chunks, w 0.7: 0.753 / 0.811 at 250, 0.788 / 0.834 at 300, PPL 85.0;
    #   8 chunks, w 0.85: 0.771 / 0.815 at 200, 0.795 / 0.838 at 250, 0.826 / 0.864 at 300
    #     (PPL 85.4; exposure r=1/4/16: 5.75 / 9.87 / 9.97) -> chosen, 300 steps.
    "planted": {
        "steps": 300,
        "lr": 3e-3,
        "corpus_batch": 8,
        "record_batch": 64,
        "record_weight": 0.85,
        "fraction": 0.25,
        "layers": [0, 1, 2, 3],
    },
    "threads": 2,
}

Progress = Callable[[str], None]


def print_to_stderr(msg: str) -> None:
    """Default progress sink: one line on stderr, flushed (builds take minutes)."""
    print(f"prm_check: {msg}", file=sys.stderr, flush=True)


def default_recipe() -> dict:
    """A fresh deep copy of the default recipe (edit it freely)."""
    return copy.deepcopy(_DEFAULT_RECIPE)


def default_cache_dir() -> Path:
    """``$PRM_CHECK_CACHE`` if set, else ``~/.cache/prm_check``."""
    env = os.environ.get("PRM_CHECK_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "prm_check"


def _versions() -> dict[str, str]:
    import tokenizers
    import torch
    import transformers

    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
    }


def _check_recipe(recipe: dict) -> None:
    for section, keys in _DEFAULT_RECIPE.items():
        if section not in recipe:
            raise SpecError(f"recipe.{section}", None, "a section like the default recipe's")
        if isinstance(keys, dict):
            missing = set(keys) - set(recipe[section])
            if missing:
                raise SpecError(f"recipe.{section}", sorted(missing), "all default keys present")


def cache_key(seed: int, recipe: dict | None = None) -> str:
    """Folder name for (seed, recipe, library versions, corpus text, code version)."""
    recipe = default_recipe() if recipe is None else recipe
    material = {
        "seed": int(seed),
        "recipe": recipe,
        "recipe_version": RECIPE_VERSION,
        "versions": _versions(),
        "corpus_sha256": corpus_sha256(),
    }
    digest = hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()
    return f"tiny-opt-s{int(seed)}-{digest[:16]}"


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _json_sha256(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def _asset_hash(meta: dict, variant: str) -> str:
    """One hash per variant: its weights, reference weights, tokenizer, splits, planted set."""
    return _json_sha256(
        {
            "reference": meta["weights_sha256"]["reference"],
            "variant": meta["weights_sha256"][variant],
            "splits": meta["splits_sha256"],
            "tokenizer": meta["tokenizer_sha256"],
            "planted": meta["planted"] if variant == "planted" else None,
        }
    )


@contextmanager
def _locked(cache_dir: Path, key: str) -> Iterator[None]:
    """Inter-process lock per key, so parallel first uses (xdist) build once."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # non-POSIX: atomic rename still keeps the cache valid
        yield
        return
    with open(cache_dir / f".{key}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _is_complete(folder: Path) -> bool:
    meta = folder / "data.json"
    if not meta.is_file():
        return False
    return all((folder / s / "model.safetensors").is_file() for s in _SUBFOLDERS)


def _save(model, tokenizer, folder: Path) -> None:
    from transformers.utils import logging as hf_logging

    bars_were_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # our own progress lines say what is happening
    try:
        model.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)
    finally:
        if bars_were_on:
            hf_logging.enable_progress_bar()


def build_data(seed: int, recipe: dict | None = None) -> tuple[object, DataSplits]:
    """The built-in tokenizer and data splits alone (under a second, no training).

    Exactly the data the built-in models are trained on, so a local model can be evaluated
    on the same records without building the built-in models.
    """
    recipe = default_recipe() if recipe is None else recipe
    d = recipe["data"]
    docs = corpus_documents()
    tokenizer = train_bpe_tokenizer(docs, recipe["tokenizer"]["vocab_size"])
    corpus = split_chunks(
        chunk_documents(docs, tokenizer, d["seq_len"]),
        seed,
        d["corpus_score_fraction"],
        d["corpus_eval_fraction"],
    )
    splits = build_splits(
        corpus,
        seed,
        n_public=d["n_public"],
        n_members=d["n_members"],
        canary_repetitions=tuple(d["canary_repetitions"]),
        canaries_per_rep=d["canaries_per_rep"],
        n_canary_references=d["n_canary_references"],
    )
    return tokenizer, splits


def _build_into(out: Path, seed: int, recipe: dict, key: str, progress: Progress) -> None:
    """Build everything into ``out`` (a fresh folder); ``data.json`` is written last."""
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    d = recipe["data"]
    tokenizer, splits = build_data(seed, recipe)
    seq = d["seq_len"]
    corpus_ids = tokenize_texts(tokenizer, splits.corpus_train, seq)
    public_ids = tokenize_texts(tokenizer, splits.public, seq)
    member_ids = tokenize_texts(tokenizer, splits.members + canary_insertions(splits.canaries), seq)
    timings["data"] = time.perf_counter() - t0
    progress(
        f"data ready: {len(splits.corpus_train)} corpus chunks, {len(splits.public)} public, "
        f"{len(splits.members)} members, {len(splits.canaries)} canaries "
        f"({timings['data']:.1f}s)"
    )
    logs: dict[str, dict[str, float]] = {}
    with fixed_threads(int(recipe["threads"])):
        model = build_opt(recipe["model"], len(tokenizer), PAD_ID, EOS_ID, seed)
        n_params = sum(p.numel() for p in model.parameters())
        progress(f"pre-training reference model ({n_params:,} parameters)")
        logs["reference"] = train_stage(
            model,
            corpus_ids,
            public_ids,
            StageConfig.from_dict(recipe["pretrain"]),
            seed=seed * 1000 + 1,
            pad_id=PAD_ID,
            name="reference",
            progress=progress,
        )
        _save(model, tokenizer, out / "reference")

        full = copy.deepcopy(model)
        logs["full"] = train_stage(
            full,
            corpus_ids,
            member_ids,
            StageConfig.from_dict(recipe["full"]),
            seed=seed * 1000 + 2,
            pad_id=PAD_ID,
            name="full",
            progress=progress,
        )
        _save(full, tokenizer, out / "full")
        del full

        p = recipe["planted"]
        m = recipe["model"]
        planted = choose_planted(p["layers"], m["ffn"], m["hidden"], p["fraction"], seed)
        progress(
            f"planted fine-tune: {planted.num_neurons()} fc1 neurons, "
            f"{planted.num_parameters():,} trainable parameters"
        )
        logs["planted"] = planted_finetune(
            model,
            planted,
            corpus_ids,
            member_ids,
            StageConfig.from_dict(p),
            seed=seed * 1000 + 3,
            pad_id=PAD_ID,
            progress=progress,
        )
        _save(model, tokenizer, out / "planted")
    for stage, log in logs.items():
        timings[stage] = log["seconds"]
    timings["total"] = time.perf_counter() - t0
    split_dict = splits.to_dict()
    meta = {
        "name": BUILTIN_NAME,
        "seed": seed,
        "cache_key": key,
        "recipe": recipe,
        "recipe_version": RECIPE_VERSION,
        "versions": _versions(),
        "corpus_sha256": corpus_sha256(),
        "planted": planted.to_dict(),
        "weights_sha256": {s: _sha256_file(out / s / "model.safetensors") for s in _SUBFOLDERS},
        "splits_sha256": _json_sha256(split_dict),
        "tokenizer_sha256": _sha256_file(out / "reference" / "tokenizer.json"),
        "train_log": logs,
        "timings": timings,
        "splits": split_dict,
    }
    meta["asset_hash"] = {v: _asset_hash(meta, v) for v in VARIANTS}
    (out / "data.json").write_text(json.dumps(meta, indent=1))


def build_default(
    seed: int = 0,
    *,
    force: bool = False,
    cache_dir: Path | None = None,
    progress: Progress = print_to_stderr,
    recipe: dict | None = None,
) -> Path:
    """Build (or find) reference + full + planted assets for ``seed``; return the folder."""
    recipe = default_recipe() if recipe is None else copy.deepcopy(recipe)
    _check_recipe(recipe)
    cache_dir = (default_cache_dir() if cache_dir is None else Path(cache_dir)).expanduser()
    key = cache_key(seed, recipe)
    final = cache_dir / key
    with _locked(cache_dir, key):
        if not force and _is_complete(final):
            return final
        progress(f"building {BUILTIN_NAME} seed {seed} into {final}")
        for stale in cache_dir.glob(f".{key}.tmp-*"):  # we hold the lock: these are dead builds
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.tmp-", dir=cache_dir))
        try:
            _build_into(tmp, seed, recipe, key, progress)
            trash = None
            if final.exists():
                trash = Path(tempfile.mkdtemp(prefix=f".{key}.old-", dir=cache_dir))
                os.replace(final, trash / "old")
            os.replace(tmp, final)
            if trash is not None:
                shutil.rmtree(trash, ignore_errors=True)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    timings = json.loads((final / "data.json").read_text())["timings"]
    progress(f"built {key}: " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()))
    return final


@dataclass
class BuiltinAssets:
    """One variant of the built-in model with its reference model, data and provenance."""

    variant: str
    seed: int
    path: Path
    model: object
    reference_model: object
    tokenizer: object
    pad_id: int
    splits: DataSplits
    planted: PlantedSet | None
    recipe: dict
    cache_key: str
    asset_hash: str
    build_timings: dict[str, float]


def _read_meta(folder: Path) -> dict:
    try:
        meta = json.loads((folder / "data.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(
            f"{folder / 'data.json'} is unreadable ({exc}); rebuild with force=True "
            "(prm-check build-default --force)"
        ) from exc
    for s in _SUBFOLDERS:
        got = _sha256_file(folder / s / "model.safetensors")
        if got != meta["weights_sha256"][s]:
            raise ModelLoadError(
                f"weights in {folder / s} do not match their recorded hash (corrupt cache); "
                "rebuild with force=True (prm-check build-default --force)"
            )
    return meta


def load_builtin(
    variant: str = "planted",
    seed: int = 0,
    *,
    force: bool = False,
    cache_dir: Path | None = None,
    progress: Progress = print_to_stderr,
    recipe: dict | None = None,
) -> BuiltinAssets:
    """Load (building on first use) the ``full`` or ``planted`` variant and its reference."""
    if variant not in VARIANTS:
        raise SpecError("variant", variant, f"one of {', '.join(VARIANTS)}")
    from prm_check.models.loading import load_causal_lm

    folder = build_default(seed, force=force, cache_dir=cache_dir, progress=progress, recipe=recipe)
    meta = _read_meta(folder)
    target = load_causal_lm(folder / variant)
    reference = load_causal_lm(folder / "reference")
    return BuiltinAssets(
        variant=variant,
        seed=int(meta["seed"]),
        path=folder / variant,
        model=target.model,
        reference_model=reference.model,
        tokenizer=target.tokenizer,
        pad_id=PAD_ID,
        splits=DataSplits.from_dict(meta["splits"]),
        planted=PlantedSet.from_dict(meta["planted"]) if variant == "planted" else None,
        recipe=meta["recipe"],
        cache_key=meta["cache_key"],
        asset_hash=meta["asset_hash"][variant],
        build_timings=dict(meta["timings"]),
    )
