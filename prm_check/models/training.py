"""Training loops of the built-in model: pre-training, full and planted member fine-tunes.

Why a planted fine-tune with held norms: it makes the truly sensitive units known by
construction (ground truth for partition quality) while keeping every planted slice's norm
at its pre-fine-tune value, so ranking units by weight norm cannot find them trivially.
All loops are deterministic for a fixed seed and thread count.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from prm_check.data.batching import pad_batch
from prm_check.errors import DataError
from prm_check.lm import token_losses

Progress = Callable[[str], None]
LAYER_PREFIX = "model.decoder.layers"


@dataclass(frozen=True)
class PlantedSet:
    """fc1 neurons the planted fine-tune may change: per layer, sorted neuron indices.

    A planted neuron j of layer l owns fc1.weight[j, :], fc1.bias[j] and fc2.weight[:, j].
    """

    neurons: dict[int, tuple[int, ...]]
    hidden_size: int

    def unit_ids(self) -> list[str]:
        """Neuron unit ids (fc1 rows), e.g. ``model.decoder.layers.1.fc1[17]``."""
        return [
            f"{LAYER_PREFIX}.{layer}.fc1[{j}]"
            for layer in sorted(self.neurons)
            for j in self.neurons[layer]
        ]

    def num_neurons(self) -> int:
        return sum(len(v) for v in self.neurons.values())

    def num_parameters(self) -> int:
        """Trainable scalars: fc1 row + bias entry + fc2 column per neuron."""
        return self.num_neurons() * (2 * self.hidden_size + 1)

    def parameter_masks(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """Boolean masks (parameter name -> mask of planted entries) for fc1/fc2 tensors."""
        params = dict(model.named_parameters())
        masks: dict[str, torch.Tensor] = {}
        for layer, idx in sorted(self.neurons.items()):
            ids = torch.as_tensor(idx, dtype=torch.long)
            base = f"{LAYER_PREFIX}.{layer}"
            for name, axis in (("fc1.weight", 0), ("fc1.bias", 0), ("fc2.weight", 1)):
                full = f"{base}.{name}"
                if full not in params:
                    raise DataError(f"planted set names {full!r}, which the model lacks")
                m = torch.zeros_like(params[full], dtype=torch.bool)
                m.index_fill_(axis, ids, True)
                masks[full] = m
        return masks

    def to_dict(self) -> dict:
        return {
            "neurons": {str(k): list(v) for k, v in sorted(self.neurons.items())},
            "hidden_size": self.hidden_size,
        }

    @classmethod
    def from_dict(cls, d: dict) -> PlantedSet:
        return cls(
            neurons={int(k): tuple(int(j) for j in v) for k, v in d["neurons"].items()},
            hidden_size=int(d["hidden_size"]),
        )


def choose_planted(
    layers: Sequence[int], ffn_dim: int, hidden_size: int, fraction: float, seed: int
) -> PlantedSet:
    """A seed-determined random ``fraction`` of fc1 neurons in each of ``layers``."""
    if not 0 < fraction <= 1:
        raise DataError(f"planted fraction must be in (0, 1], got {fraction}")
    k = max(1, round(fraction * ffn_dim))
    gen = torch.Generator().manual_seed(seed)
    neurons = {
        int(layer): tuple(sorted(torch.randperm(ffn_dim, generator=gen)[:k].tolist()))
        for layer in layers
    }
    return PlantedSet(neurons=neurons, hidden_size=hidden_size)


@contextmanager
def fixed_threads(n: int) -> Iterator[None]:
    """Run with exactly ``n`` intra-op threads (bitwise-reproducible CPU reductions)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def build_opt(cfg: dict, vocab_size: int, pad_id: int, eos_id: int, seed: int):
    """A randomly initialised OPT causal LM (eager attention, no dropout) from ``seed``."""
    from prm_check.models.random_opt import random_opt

    return random_opt(
        seed,
        pad_id=pad_id,
        eos_id=eos_id,
        vocab_size=vocab_size,
        hidden_size=cfg["hidden"],
        num_hidden_layers=cfg["layers"],
        num_attention_heads=cfg["heads"],
        ffn_dim=cfg["ffn"],
        max_position_embeddings=cfg["max_positions"],
        tie_word_embeddings=True,
    )


class _EpochSampler:
    """Endless batches of indices; a fresh seeded permutation every epoch (no repeats within)."""

    def __init__(self, n: int, batch: int, seed: int) -> None:
        if n < 1:
            raise DataError("cannot sample batches from an empty training set")
        self.n, self.batch = n, batch
        self.gen = torch.Generator().manual_seed(seed)
        self.order: list[int] = []

    def next(self) -> list[int]:
        out: list[int] = []
        while len(out) < self.batch:
            if not self.order:
                self.order = torch.randperm(self.n, generator=self.gen).tolist()
            take = min(self.batch - len(out), len(self.order))
            out += self.order[:take]
            self.order = self.order[take:]
        return out


@dataclass(frozen=True)
class StageConfig:
    """One training stage: steps, AdamW settings and the per-step mix of corpus and records."""

    steps: int
    lr: float
    corpus_batch: int
    record_batch: int
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    record_weight: float = 0.5

    @classmethod
    def from_dict(cls, d: dict) -> StageConfig:
        keys = (
            "steps",
            "lr",
            "corpus_batch",
            "record_batch",
            "weight_decay",
            "grad_clip",
            "record_weight",
        )
        return cls(**{k: d[k] for k in keys if k in d})


# Padded tokens one extra forward/backward call is worth (its fixed Python and kernel-launch
# cost on this model); a length group is split off only when it saves more padding than this.
_CALL_COST_TOKENS = 256


def length_groups(lengths: Sequence[int], call_cost: int = _CALL_COST_TOKENS) -> list[list[int]]:
    """Indices grouped into micro-batches of similar length, minimising padded tokens.

    Sorted by length (stable), then cut into contiguous runs by an exact dynamic programme
    over cost = Σ (group size × its longest length) + ``call_cost`` per group. Why: a member
    batch mixes ~85-token records with ~14-token canaries; padding them into one tensor
    spends ~40 % of the step on padding.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    n = len(order)
    ls = [lengths[i] for i in order]
    best = [0] + [0] * n  # best[j]: cost of the first j sorted items
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        width = ls[j - 1]
        best[j], cut[j] = min((best[i] + width * (j - i) + call_cost, i) for i in range(j))
    groups: list[list[int]] = []
    j = n
    while j > 0:
        groups.append(order[cut[j] : j])
        j = cut[j]
    return groups[::-1]


def mixed_loss(
    model: torch.nn.Module,
    corpus: Sequence[Sequence[int]],
    records: Sequence[Sequence[int]],
    pad_id: int,
    record_weight: float = 0.5,
) -> torch.Tensor:
    """(1 − w)·mean corpus token loss + w·mean record token loss, length-grouped.

    All sequences are padded in groups of similar length (:func:`length_groups`) rather
    than one tensor per source; the value equals the one-tensor loss up to float rounding.
    An empty source contributes nothing.
    """
    seqs = list(corpus) + list(records)
    n_corpus = len(corpus)
    sums = [torch.zeros(()), torch.zeros(())]
    counts = [0, 0]
    for group in length_groups([len(s) for s in seqs]):
        batch = pad_batch([seqs[i] for i in group], pad_id)
        losses, mask = token_losses(model, batch)
        row_sums, row_counts = losses.sum(dim=1), mask.sum(dim=1)
        is_rec = torch.as_tensor([i >= n_corpus for i in group])
        for src, sel in ((0, ~is_rec), (1, is_rec)):
            if bool(sel.any()):
                sums[src] = sums[src] + row_sums[sel].sum()
                counts[src] += int(row_counts[sel].sum())
    weights = (1.0 - record_weight, record_weight)
    loss = torch.zeros(())
    for s, c, w in zip(sums, counts, weights, strict=True):
        if c > 0 and w != 0:
            loss = loss + w * (s / c)
    return loss


def train_stage(
    model: torch.nn.Module,
    corpus: Sequence[Sequence[int]],
    records: Sequence[Sequence[int]],
    cfg: StageConfig,
    *,
    seed: int,
    pad_id: int,
    name: str,
    progress: Progress,
    params: Sequence[torch.nn.Parameter] | None = None,
    before_step: Callable[[], None] | None = None,
    after_step: Callable[[], None] | None = None,
    log_every: int = 50,
) -> dict[str, float]:
    """Minimise (1 − w)·corpus loss + w·record loss (w = ``cfg.record_weight``, default ½).

    ``params`` restricts what the optimiser sees; ``before_step``/``after_step`` hook the
    planted fine-tune's gradient mask and norm projection. Returns loss/time summary.
    """
    if cfg.steps < 1:
        raise DataError(f"stage {name!r}: steps must be >= 1, got {cfg.steps}")
    params = list(model.parameters()) if params is None else list(params)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    corpus_s = _EpochSampler(len(corpus), cfg.corpus_batch, seed * 7919 + 1)
    record_s = _EpochSampler(len(records), cfg.record_batch, seed * 7919 + 2)
    if not 0.0 <= cfg.record_weight <= 1.0:
        raise DataError(f"stage {name!r}: record_weight must be in [0, 1], got {cfg.record_weight}")
    if min(cfg.corpus_batch, cfg.record_batch) < 0 or cfg.corpus_batch + cfg.record_batch < 1:
        raise DataError(f"stage {name!r}: batches must be >= 0 and not both 0")
    model.train()
    t0 = time.perf_counter()
    window: list[float] = []
    first = last = float("nan")
    for step in range(1, cfg.steps + 1):
        loss = mixed_loss(
            model,
            [corpus[i] for i in corpus_s.next()],
            [records[i] for i in record_s.next()],
            pad_id,
            cfg.record_weight,
        )
        opt.zero_grad(set_to_none=False)
        loss.backward()
        if before_step is not None:
            before_step()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        if after_step is not None:
            after_step()
        value = float(loss.detach())
        first = value if step == 1 else first
        window.append(value)
        if step % log_every == 0 or step == cfg.steps:
            last = sum(window) / len(window)
            progress(
                f"[{name}] step {step}/{cfg.steps} loss {last:.3f} "
                f"elapsed {time.perf_counter() - t0:.1f}s"
            )
            window = []
    model.eval()
    return {"loss_first": first, "loss_last": last, "seconds": time.perf_counter() - t0}


class NormProjector:
    """Confines updates to a planted set and holds each planted slice's norm fixed.

    After every optimiser step: entries outside the set are restored bit-exactly; each
    planted fc1 row and fc2 column is rescaled to its original L2 norm (float64 scale);
    each planted bias entry gets its original magnitude with its current sign.
    """

    def __init__(self, model: torch.nn.Module, planted: PlantedSet) -> None:
        self.planted = planted
        named = dict(model.named_parameters())
        self.masks = planted.parameter_masks(model)
        self.params = {n: named[n] for n in self.masks}
        self.original = {n: p.detach().clone() for n, p in self.params.items()}
        self.ids = {
            layer: torch.as_tensor(idx, dtype=torch.long) for layer, idx in planted.neurons.items()
        }
        self.norms: dict[str, torch.Tensor] = {}
        for layer, ids in self.ids.items():
            base = f"{LAYER_PREFIX}.{layer}"
            w1 = self.original[f"{base}.fc1.weight"].double()
            w2 = self.original[f"{base}.fc2.weight"].double()
            self.norms[f"{base}.fc1.weight"] = w1[ids].norm(dim=1)
            self.norms[f"{base}.fc2.weight"] = w2[:, ids].norm(dim=0)
            self.norms[f"{base}.fc1.bias"] = self.original[f"{base}.fc1.bias"][ids].abs()

    def trainable(self) -> list[torch.nn.Parameter]:
        return list(self.params.values())

    def mask_grads(self) -> None:
        for n, p in self.params.items():
            if p.grad is not None:
                p.grad.mul_(self.masks[n])

    @torch.no_grad()
    def project(self) -> None:
        for n, p in self.params.items():
            p.copy_(torch.where(self.masks[n], p, self.original[n]))
        for layer, ids in self.ids.items():
            base = f"{LAYER_PREFIX}.{layer}"
            w1 = self.params[f"{base}.fc1.weight"]
            rows = w1[ids].double()
            scale = self.norms[f"{base}.fc1.weight"] / rows.norm(dim=1).clamp_min(1e-30)
            w1[ids] = (rows * scale[:, None]).to(w1.dtype)
            w2 = self.params[f"{base}.fc2.weight"]
            cols = w2[:, ids].double()
            scale = self.norms[f"{base}.fc2.weight"] / cols.norm(dim=0).clamp_min(1e-30)
            w2[:, ids] = (cols * scale[None, :]).to(w2.dtype)
            b = self.params[f"{base}.fc1.bias"]
            b[ids] = torch.copysign(self.norms[f"{base}.fc1.bias"], b[ids])


def planted_finetune(
    model: torch.nn.Module,
    planted: PlantedSet,
    corpus: Sequence[Sequence[int]],
    records: Sequence[Sequence[int]],
    cfg: StageConfig,
    *,
    seed: int,
    pad_id: int,
    progress: Progress,
) -> dict[str, float]:
    """Fine-tune only the planted slices (everything else frozen), norms held every step."""
    proj = NormProjector(model, planted)
    trainable = {id(p) for p in proj.trainable()}
    for p in model.parameters():
        p.requires_grad_(id(p) in trainable)
    try:
        return train_stage(
            model,
            corpus,
            records,
            cfg,
            seed=seed,
            pad_id=pad_id,
            name="planted",
            progress=progress,
            params=proj.trainable(),
            before_step=proj.mask_grads,
            after_step=proj.project,
        )
    finally:
        for p in model.parameters():
            p.requires_grad_(True)
