"""Hessian-vector products of a causal LM's token-weighted mean loss over a parameter subset.

The loss is ``L = Σ_b sum_b / N`` with ``sum_b`` the summed next-token cross-entropy of
micro-batch b (:func:`prm_check.lm.batch_loss_sum`, THE loss) and N the valid targets of all
batches, so ``H v = Σ_b H_b v / N``: micro-batching bounds memory and changes nothing else.

Two ways to multiply, one interface:

* ``"rev"`` reverse-over-reverse: ``torch.autograd.grad(create_graph=True)`` once per
  micro-batch, then one more ``autograd.grad`` per probe on the retained graph. Building
  the graph costs about one gradient; each further probe is cheaper, hence ``matmat`` and
  the Hutchinson loop push many probes through one graph.
* ``"fwd"`` forward-over-reverse: ``torch.func.jvp`` of ``torch.func.grad`` (never
  ``jacrev``: torch 2.13 gets LayerNorm blocks wrong under ``jvp(jacrev)``, FACTS.md).

Attention runs on the math SDPA backend inside the operator, because the fused CPU kernels
have neither double backward nor forward-mode AD.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator

from prm_check.budget.allocator import returning_freed_memory
from prm_check.curvature.microbatch import split_batches
from prm_check.curvature.params import ParamSpec, only_these_require_grad, select_parameters
from prm_check.data.batching import Batch
from prm_check.errors import CurvatureError, DataError
from prm_check.lm import batch_loss_sum

METHODS = ("rev", "fwd")
Product = Callable[[Sequence[torch.Tensor]], list[torch.Tensor]]
Sink = Callable[[int, torch.Tensor], None]
SinkProduct = Callable[[Sequence[torch.Tensor], Sink], None]


class _Bound:
    """Callable stand-in for the model with some parameters swapped (for torch.func)."""

    def __init__(self, model: torch.nn.Module, mapping: dict[str, torch.Tensor]) -> None:
        self.model = model
        self.mapping = mapping

    def __call__(self, **kwargs):
        return torch.func.functional_call(self.model, self.mapping, args=(), kwargs=kwargs)


@contextmanager
def _math_attention() -> Iterator[None]:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([SDPBackend.MATH]):
        yield


def _contribution_edges(roots: Sequence[torch.Tensor], params: Sequence[torch.Tensor]):
    """Edges on which a weight's Hessian-vector contributions leave the double backward.

    A Linear weight W enters the graph once, through ``t(W)``, but that node has two
    consumers after ``create_graph``: the forward matmul and the first backward's
    ``δ @ W``. Autograd sums their contributions in ``t``'s input buffer, holding the first
    (W-sized) until the second arrives — for all weights at once, ~n floats. Returns
    ``{consumer node: [(slot, chain node, param index)]}`` for every such single-input
    node that feeds only a selected parameter's accumulator and has ≥ 2 consumers, so a
    hook on each consumer can take its piece (mapped to the parameter's shape by calling
    the chain node) as it is produced.
    """
    index = {p.data_ptr(): i for i, p in enumerate(params)}

    def param_of(node) -> int | None:
        if type(node).__name__ != "AccumulateGrad":
            return None
        return index.get(node.variable.data_ptr())

    seen, stack = set(), [g.grad_fn for g in roots if g.grad_fn is not None]
    consumers: dict = {}
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        for slot, (nxt, _) in enumerate(node.next_functions):
            if nxt is None:
                continue
            consumers.setdefault(nxt, []).append((node, slot))
            stack.append(nxt)
    edges: dict = {}
    for chain, users in consumers.items():
        nexts = [n for n, _ in chain.next_functions]
        if len(users) < 2 or len(nexts) != 1 or nexts[0] is None:
            continue
        i = param_of(nexts[0])
        if i is None:
            continue
        for node, slot in users:
            edges.setdefault(node, []).append((slot, chain, i))
    return edges


class HessianOperator:
    """``H`` of the token-weighted mean loss w.r.t. a named parameter subset, as products.

    Shapes: vectors are flat ``[n]`` in the order of ``param_names`` (see :meth:`flatten`).
    ``dtype`` other than the model's works on a converted deep copy (the caller's model is
    not touched); the model is put in eval mode (dropout would make H random).
    ``max_tokens`` re-splits the batches into micro-batches of at most that many padded
    tokens. ``probes_per_graph`` is how many probes estimators push through one graph.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        batches: Sequence[Batch],
        params: ParamSpec = None,
        method: str = "rev",
        dtype: torch.dtype | None = None,
        probes_per_graph: int = 8,
        max_tokens: int | None = None,
    ) -> None:
        if method not in METHODS:
            raise CurvatureError(f"unknown HVP method {method!r}; expected one of {METHODS}")
        if int(probes_per_graph) < 1:
            raise CurvatureError(f"probes_per_graph must be >= 1, got {probes_per_graph}")
        if not batches:
            raise DataError("no batches: the curvature of an empty data set is undefined")
        self.batches = split_batches(list(batches), max_tokens)
        self.num_tokens = sum(b.num_valid_targets for b in self.batches)
        if self.num_tokens == 0:
            raise DataError(
                f"zero valid tokens in {len(batches)} batch(es): every sequence is shorter "
                "than 2 tokens or padding"
            )
        chosen = select_parameters(model, params)
        if dtype is not None and any(p.dtype != dtype for _, p in chosen):
            model = copy.deepcopy(model).to(dtype)
            chosen = select_parameters(model, params)
        dtypes = {p.dtype for _, p in chosen}
        if len(dtypes) != 1:
            raise CurvatureError(f"selected parameters mix dtypes {sorted(map(str, dtypes))}")
        self.model = model.eval()
        self.method = method
        self.probes_per_graph = int(probes_per_graph)
        self.param_names = [n for n, _ in chosen]
        self.params = [p for _, p in chosen]
        self.shapes = [p.shape for p in self.params]
        self.numels = [p.numel() for p in self.params]
        self.n = int(sum(self.numels))
        self.dtype = self.params[0].dtype
        self.device = self.params[0].device
        self.num_matvecs = 0  # products performed so far (all micro-batches of one = 1)

    # ----------------------------------------------------------------- layout
    @property
    def shape(self) -> tuple[int, int]:
        return (self.n, self.n)

    def flatten(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        """Concatenate per-parameter tensors into one flat ``[n]`` vector."""
        if len(tensors) != len(self.params):
            raise CurvatureError(f"expected {len(self.params)} tensors, got {len(tensors)}")
        return torch.cat([t.reshape(-1) for t in tensors])

    def unflatten(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """Views of a flat ``[n]`` vector shaped like each selected parameter."""
        if flat.shape != (self.n,):
            raise CurvatureError(f"expected a vector of shape ({self.n},), got {tuple(flat.shape)}")
        return [c.view(s) for c, s in zip(flat.split(self.numels), self.shapes, strict=True)]

    # ----------------------------------------------------------------- core
    @contextmanager
    def _scope(self) -> Iterator[None]:
        with ExitStack() as stack:
            stack.enter_context(only_these_require_grad(self.model, self.params))
            stack.enter_context(_math_attention())
            yield

    def _checked(self, loss: torch.Tensor, index: int) -> None:
        value = float(loss.detach())
        if not np.isfinite(value):
            raise CurvatureError(f"non-finite loss {value} on micro-batch #{index}")

    def _zeros_for(self, grads: Sequence[torch.Tensor | None]) -> list[torch.Tensor]:
        return [
            g if g is not None else torch.zeros_like(p)
            for g, p in zip(grads, self.params, strict=True)
        ]

    def micro_batch_products(self) -> Iterator[Product]:
        """Yield, per micro-batch b, a function ``vs -> H_b vs`` (per-parameter lists,
        *unnormalised*: divide by ``num_tokens``). With ``"rev"`` the function reuses one
        retained graph for every call until the iterator advances."""
        for index, batch in enumerate(self.batches):
            if self.method == "rev":
                yield self._rev_product(batch, index)
            else:
                yield self._fwd_product(batch, index)

    def _rev_product(self, batch: Batch, index: int) -> Product:
        live = self._rev_graph(batch, index)

        def product(vs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
            if not live:
                return [torch.zeros_like(p) for p in self.params]
            out = torch.autograd.grad(
                [g for _, g in live],
                self.params,
                grad_outputs=[vs[i] for i, _ in live],
                retain_graph=True,
                allow_unused=True,
            )
            return self._zeros_for(out)

        return product

    def micro_batch_sinks(self) -> Iterator[SinkProduct]:
        """Like :meth:`micro_batch_products`, but ``apply(vs, sink)`` hands ``H_b vs`` to
        ``sink(i, part)`` piece by piece as autograd produces it and frees each piece after
        the sink returns, so the whole product is never held at once. A parameter's part
        may arrive in several pieces that add up to it (sinks must be linear, as
        ``v ⊙ Hv`` is): with ``"rev"``, a weight's product has two contributions — through
        the forward pass and through the first backward — and autograd would otherwise
        buffer the first until the second arrives, ~n floats at the peak (see
        :func:`_contribution_edges`). ``"fwd"`` produces all parts together."""
        for index, batch in enumerate(self.batches):
            if self.method == "rev":
                yield self._rev_sink(batch, index)
            else:
                product = self._fwd_product(batch, index)

                def apply(vs: Sequence[torch.Tensor], sink: Sink, product=product) -> None:
                    for i, part in enumerate(product(vs)):
                        sink(i, part)

                yield apply

    def _rev_graph(self, batch: Batch, index: int) -> list[tuple[int, torch.Tensor]]:
        """The first backward with ``create_graph``: the live gradient parts (index, g).

        Products only need the *graph* behind each ``g``, never its values, so the values'
        memory (n floats) is released — except where the double backward saved that very
        storage for itself, which the pack hook below records, so nothing it reads is lost.
        """
        saved: set[int] = set()

        def pack(t: torch.Tensor) -> torch.Tensor:
            saved.add(t.untyped_storage().data_ptr())
            return t

        with self._scope():
            loss, _ = batch_loss_sum(self.model, batch)
            self._checked(loss, index)
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                grads = torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True)
        live = [(i, g) for i, g in enumerate(grads) if g is not None and g.requires_grad]
        for _, g in live:
            storage = g.untyped_storage()
            if storage.data_ptr() not in saved:
                storage.resize_(0)  # shape and graph stay; the values are never read again
        return live

    def _rev_sink(self, batch: Batch, index: int) -> SinkProduct:
        live = self._rev_graph(batch, index)
        edges = _contribution_edges([g for _, g in live], self.params)

        def apply(vs: Sequence[torch.Tensor], sink: Sink) -> None:
            if not live:
                return
            saved = [p.grad for p in self.params]
            handles = []
            for i, p in enumerate(self.params):
                p.grad = None

                def hook(param: torch.Tensor, i: int = i) -> None:
                    if param.grad is not None:  # None: every piece was taken on its edge
                        sink(i, param.grad)
                    param.grad = None  # freed now, not when the whole product is done

                handles.append(p.register_post_accumulate_grad_hook(hook))
            for consumer, slots in edges.items():

                def take(grad_inputs, _outputs, slots=slots):
                    out = list(grad_inputs)
                    for slot, chain, i in slots:
                        piece = out[slot]
                        if piece is None:
                            continue
                        part = chain(piece)
                        part = part[0] if isinstance(part, tuple | list) else part
                        if 0 in part.stride():  # broadcast: the sink may write in place
                            part = part.clone()
                        # a view of autograd's piece (t(W): transposed), dropped right after
                        sink(i, part)
                        out[slot] = None  # nothing is buffered for the second contribution
                    return tuple(out)

                handles.append(consumer.register_hook(take))
            try:
                with self._scope():
                    torch.autograd.backward(
                        [g for _, g in live],
                        grad_tensors=[vs[i] for i, _ in live],
                        retain_graph=True,
                        inputs=self.params,
                    )
            finally:
                for h in handles:
                    h.remove()
                for p, g in zip(self.params, saved, strict=True):
                    p.grad = g

        return apply

    def _fwd_product(self, batch: Batch, index: int) -> Product:
        names = self.param_names

        def loss_of(*ps: torch.Tensor):
            loss, _ = batch_loss_sum(_Bound(self.model, dict(zip(names, ps, strict=True))), batch)
            return loss, loss.detach()

        grad_fn = torch.func.grad(loss_of, argnums=tuple(range(len(names))), has_aux=True)
        primals = tuple(p.detach() for p in self.params)

        def product(vs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
            with self._scope():
                _, hv, aux = torch.func.jvp(grad_fn, primals, tuple(vs), has_aux=True)
            self._checked(aux, index)
            return list(hv)

        return product

    # ----------------------------------------------------------------- public products
    def matmat(self, V: torch.Tensor) -> torch.Tensor:
        """``H V`` for ``V`` of shape ``[n, k]``; every column goes through the same
        per-micro-batch graph, so k columns cost one graph build plus k cheap passes."""
        V = torch.as_tensor(V)
        if V.ndim != 2 or V.shape[0] != self.n:
            raise CurvatureError(f"expected a matrix of shape ({self.n}, k), got {tuple(V.shape)}")
        V = V.to(self.dtype)
        if not torch.isfinite(V).all():
            raise CurvatureError("probe matrix contains non-finite entries")
        cols = [self.unflatten(V[:, j].contiguous()) for j in range(V.shape[1])]
        out = torch.zeros((self.n, V.shape[1]), dtype=self.dtype, device=self.device)
        with returning_freed_memory():
            for product in self.micro_batch_products():
                for j, vs in enumerate(cols):
                    out[:, j] += self.flatten(product(vs))
                del product  # this graph goes before the next one is built
        self.num_matvecs += V.shape[1]
        return out.div_(self.num_tokens)

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """``H v`` for a flat ``[n]`` vector."""
        v = torch.as_tensor(v)
        if v.shape != (self.n,):
            raise CurvatureError(f"expected a vector of shape ({self.n},), got {tuple(v.shape)}")
        return self.matmat(v.reshape(-1, 1))[:, 0]

    def __matmul__(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(x)
        return self.matvec(x) if x.ndim == 1 else self.matmat(x)

    def gradient(self) -> torch.Tensor:
        """Flat ``[n]`` gradient of the token-weighted mean loss."""
        total = [torch.zeros_like(p) for p in self.params]
        for index, batch in enumerate(self.batches):
            with self._scope():
                loss, _ = batch_loss_sum(self.model, batch)
                self._checked(loss, index)
                grads = torch.autograd.grad(loss, self.params, allow_unused=True)
            for t, g in zip(total, grads, strict=True):
                if g is not None:
                    t.add_(g)
        return self.flatten(total).div_(self.num_tokens)

    @torch.no_grad()
    def loss(self) -> float:
        """The token-weighted mean loss itself."""
        total = 0.0
        with _math_attention():
            for index, batch in enumerate(self.batches):
                loss, _ = batch_loss_sum(self.model, batch)
                self._checked(loss, index)
                total += float(loss)
        return total / self.num_tokens

    def to_scipy(self) -> LinearOperator:
        """A symmetric scipy ``LinearOperator`` (numpy in, numpy out, operator's dtype)."""
        np_dtype = torch.empty((), dtype=self.dtype).numpy().dtype

        def mv(x: np.ndarray) -> np.ndarray:
            x = np.asarray(x).reshape(-1)
            return self.matvec(torch.from_numpy(np.ascontiguousarray(x, dtype=np_dtype))).numpy()

        def mm(X: np.ndarray) -> np.ndarray:
            X = np.ascontiguousarray(X, dtype=np_dtype)
            return self.matmat(torch.from_numpy(X)).numpy()

        return LinearOperator(self.shape, matvec=mv, rmatvec=mv, matmat=mm, dtype=np_dtype)

    def __repr__(self) -> str:
        return (
            f"HessianOperator(n={self.n}, method={self.method!r}, dtype={self.dtype}, "
            f"micro_batches={len(self.batches)}, tokens={self.num_tokens})"
        )
