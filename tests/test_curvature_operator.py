"""HessianOperator against a dense float64 Hessian, micro-batching, subsets, typed errors.

The dense reference is ``jacfwd(jacrev(f, chunk_size=1))``: torch 2.13's vmapped
``torch.func.hessian`` / ``jacrev(jacrev)`` get the LayerNorm-weight rows wrong (the
result is not even symmetric), see ``test_reference_is_symmetric``.
"""

from __future__ import annotations

import functools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from prm_check.curvature import HessianOperator
from prm_check.data.batching import Batch, make_batches
from prm_check.errors import CurvatureError, DataError
from prm_check.lm import batch_loss_sum
from tests.conftest import make_tiny_gpt2, make_tiny_opt

F64 = torch.float64


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # tiny models: thread fan-out only adds contention on a busy 2-core box
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny(kind: str, seed: int, hidden: int = 4, heads: int = 2):
    if kind == "opt":
        return make_tiny_opt(seed, hidden=hidden, heads=heads, ffn=8, vocab=8, dtype=F64)
    return make_tiny_gpt2(seed, hidden=hidden, heads=heads, vocab=8, dtype=F64)


def ragged(seed: int, lengths: tuple[int, ...], max_tokens: int = 64) -> list[Batch]:
    g = torch.Generator().manual_seed(seed)
    seqs = [torch.randint(2, 8, (n,), generator=g).tolist() for n in lengths]
    return make_batches(seqs, max_tokens, pad_id=0)


def dense_hessian(model, batches, names):
    """Dense H of the token-weighted mean loss over ``names`` (independent of the operator)."""
    params = dict(model.named_parameters())
    shapes = [params[n].shape for n in names]
    numels = [params[n].numel() for n in names]
    total = sum(b.num_valid_targets for b in batches)

    def f(flat):
        parts = [c.view(s) for c, s in zip(flat.split(numels), shapes, strict=True)]
        mapping = dict(zip(names, parts, strict=True))

        def bound(**kw):
            return torch.func.functional_call(model, mapping, args=(), kwargs=kw)

        return sum(batch_loss_sum(bound, b)[0] for b in batches) / total

    flat = torch.cat([params[n].detach().reshape(-1) for n in names])
    return torch.func.jacfwd(torch.func.jacrev(f, chunk_size=1))(flat).detach(), f, flat


@functools.lru_cache(maxsize=8)
def case(kind: str, seed: int, lengths: tuple[int, ...]):
    model = tiny(kind, seed)
    batches = ragged(seed, lengths)
    names = [
        n for n, _ in model.named_parameters() if "embed_positions" not in n and "wpe" not in n
    ]
    H, f, flat = dense_hessian(model, batches, names)
    return model, batches, names, H, f, flat


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().detach())


@settings(max_examples=3, deadline=None)
@given(
    kind=st.sampled_from(["opt", "gpt2"]),
    seed=st.integers(0, 3),
    lengths=st.sampled_from([(5, 3, 7), (9, 2, 4, 6)]),
)
def test_hvp_matches_dense_both_methods(kind, seed, lengths):
    model, batches, names, H, _, _ = case(kind, seed, lengths)
    v = torch.randn(H.shape[0], generator=torch.Generator().manual_seed(seed), dtype=F64)
    for method in ("rev", "fwd"):
        op = HessianOperator(model, batches, names, method=method)
        assert rel(op.matvec(v), H @ v) <= 1e-8, method
    V = torch.randn(H.shape[0], 3, generator=torch.Generator().manual_seed(seed + 1), dtype=F64)
    assert rel(HessianOperator(model, batches, names).matmat(V), H @ V) <= 1e-8


@settings(max_examples=3, deadline=None)
@given(seed=st.integers(0, 3), method=st.sampled_from(["rev", "fwd"]))
def test_streamed_parts_equal_the_product(seed, method):
    """micro_batch_sinks hands out every parameter's part, possibly in pieces (a weight's
    forward and backward contributions separately); they add up to H v exactly."""
    model, batches, names, H, _, _ = case("opt", seed, (5, 3, 7))
    op = HessianOperator(model, batches, names, method=method, max_tokens=8)
    v = torch.randn(op.n, generator=torch.Generator().manual_seed(seed), dtype=F64)
    vs = op.unflatten(v)
    acc = [torch.zeros_like(p) for p in op.params]
    seen: list[int] = []
    grads_before = [p.grad for p in op.params]
    for apply in op.micro_batch_sinks():
        calls: list[int] = []
        apply(vs, lambda i, part, calls=calls: (calls.append(i), acc[i].add_(part)))
        seen += calls
    assert set(seen) == set(range(len(op.params)))
    assert rel(op.flatten(acc) / op.num_tokens, H @ v) <= 1e-8
    assert [p.grad for p in op.params] == grads_before  # .grad untouched


@pytest.mark.parametrize("kind", ["opt", "gpt2"])
def test_graph_gradient_values_are_released_and_products_stay_exact(kind):
    """The retained graph keeps no copy of g's values unless the double backward saved
    that storage itself, and products through such a graph are still exact."""
    model, batches, names, H, _, _ = case(kind, 1, (5, 3, 7))
    op = HessianOperator(model, batches, names, method="rev")
    live = op._rev_graph(op.batches[0], 0)
    released = [g for _, g in live if g.untyped_storage().size() == 0]
    assert len(released) >= len(live) // 2, "most gradient values should be freed"
    v = torch.randn(op.n, generator=torch.Generator().manual_seed(3), dtype=F64)
    assert rel(op.matvec(v), H @ v) <= 1e-8
    assert rel(op.matmat(torch.stack([v, -2 * v], 1))[:, 1], -2 * (H @ v)) <= 1e-8


def test_reference_is_symmetric():
    _, _, _, H, _, _ = case("opt", 0, (5, 3, 7))
    assert rel(H, H.T) <= 1e-8


@settings(max_examples=6, deadline=None)
@given(
    kind=st.sampled_from(["opt", "gpt2"]),
    seed=st.integers(0, 100),
    lengths=st.lists(st.integers(2, 11), min_size=2, max_size=6),
    max_tokens=st.integers(2, 30),
    method=st.sampled_from(["rev", "fwd"]),
)
def test_micro_batched_equals_full_batch(kind, seed, lengths, max_tokens, method):
    model = tiny(kind, seed % 3)
    full = ragged(seed, tuple(lengths), max_tokens=10_000)
    assert len(full) == 1
    micro = HessianOperator(model, full, method=method, max_tokens=max_tokens)
    whole = HessianOperator(model, full, method=method)
    v = torch.randn(whole.n, generator=torch.Generator().manual_seed(seed), dtype=F64)
    assert rel(micro.matvec(v), whole.matvec(v)) <= 1e-10
    assert rel(micro.gradient(), whole.gradient()) <= 1e-10
    assert micro.loss() == pytest.approx(whole.loss(), rel=1e-12)


def test_gradient_and_loss_match_reference():
    model, batches, names, _, f, flat = case("opt", 0, (5, 3, 7))
    op = HessianOperator(model, batches, names)
    assert op.loss() == pytest.approx(float(f(flat).detach()), rel=1e-12)
    assert rel(op.gradient(), torch.func.grad(f)(flat)) <= 1e-10


def test_subset_is_principal_submatrix_and_autograd_restricted():
    model, batches, names, H, _, _ = case("opt", 1, (5, 3, 7))
    op = HessianOperator(model, batches, "model.decoder.layers.*.fc?.weight")
    assert op.param_names == [
        "model.decoder.layers.0.fc1.weight",
        "model.decoder.layers.0.fc2.weight",
    ]
    offsets = {}
    start = 0
    for n in names:
        k = dict(model.named_parameters())[n].numel()
        offsets[n] = (start, start + k)
        start += k
    idx = torch.cat([torch.arange(*offsets[n]) for n in op.param_names])
    v = torch.randn(op.n, dtype=F64)
    assert rel(op.matvec(v), H[idx][:, idx] @ v) <= 1e-8
    flags = [p.requires_grad for p in model.parameters()]
    assert all(flags), "requires_grad flags must be restored"


def test_regex_and_exact_patterns_and_tied_embedding_once():
    model = tiny("opt", 0)
    op = HessianOperator(model, ragged(0, (4, 5)), ["re:.*layers\\.0\\.fc1\\..*"])
    assert op.param_names == [
        "model.decoder.layers.0.fc1.weight",
        "model.decoder.layers.0.fc1.bias",
    ]
    all_op = HessianOperator(model, ragged(0, (4, 5)))
    assert "lm_head.weight" not in all_op.param_names
    assert all_op.n == sum(p.numel() for p in model.parameters())


def test_float32_operator_from_float64_model_leaves_model_untouched():
    model = tiny("opt", 0)
    op = HessianOperator(model, ragged(0, (4, 5)), dtype=torch.float32)
    assert op.dtype == torch.float32
    assert next(model.parameters()).dtype == F64
    v = torch.randn(op.n)
    ref = HessianOperator(model, ragged(0, (4, 5))).matvec(v.double())
    assert rel(op.matvec(v).double(), ref) <= 1e-4


def test_to_scipy_roundtrip():
    import numpy as np

    model, batches, names, H, _, _ = case("opt", 0, (5, 3, 7))
    lin = HessianOperator(model, batches, names).to_scipy()
    x = np.random.default_rng(0).standard_normal((H.shape[0], 2))
    assert rel(torch.from_numpy(lin @ x), H @ torch.from_numpy(x)) <= 1e-8


def test_sdpa_model_works_via_math_backend():
    model = tiny("opt", 0)
    model.config._attn_implementation = "sdpa"
    v = torch.randn(sum(p.numel() for p in model.parameters()), dtype=F64)
    for method in ("rev", "fwd"):
        out = HessianOperator(model, ragged(0, (4, 5)), method=method).matvec(v)
        assert torch.isfinite(out).all()


# ------------------------------------------------------------------ typed errors
def test_empty_subset_is_a_typed_error():
    with pytest.raises(CurvatureError, match="empty parameter subset"):
        HessianOperator(tiny("opt", 0), ragged(0, (4,)), params=[])


def test_unknown_parameter_name_is_named():
    with pytest.raises(CurvatureError, match="no_such_layer"):
        HessianOperator(tiny("opt", 0), ragged(0, (4,)), params=["model.no_such_layer.*"])


def test_zero_valid_tokens_is_a_data_error():
    one_token = Batch(torch.tensor([[3, 0, 0]]), torch.tensor([[1, 0, 0]]))
    with pytest.raises(DataError, match="zero valid tokens"):
        HessianOperator(tiny("opt", 0), [one_token])
    with pytest.raises(DataError):
        HessianOperator(tiny("opt", 0), [])


def test_non_finite_loss_is_a_typed_error_with_value():
    model = tiny("opt", 0)
    with torch.no_grad():
        model.model.decoder.final_layer_norm.weight.fill_(float("nan"))
    op = HessianOperator(model, ragged(0, (4, 5)))
    for call in (op.loss, op.gradient, lambda: op.matvec(torch.ones(op.n, dtype=F64))):
        with pytest.raises(CurvatureError, match="non-finite loss nan"):
            call()


def test_bad_method_and_shapes():
    model = tiny("opt", 0)
    with pytest.raises(CurvatureError, match="'adjoint'"):
        HessianOperator(model, ragged(0, (4,)), method="adjoint")
    op = HessianOperator(model, ragged(0, (4,)))
    with pytest.raises(CurvatureError, match="shape"):
        op.matvec(torch.ones(op.n + 1, dtype=F64))
