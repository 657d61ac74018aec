"""One interface over prm_check and the peer libraries, on the same model, data and loss.

The loss everywhere is the mean next-token cross-entropy of one full (unpadded) batch,
which is exactly prm_check's token-weighted mean loss (:func:`prm_check.lm.batch_loss_sum`
over ``B·(S−1)`` targets). Peers see the causal LM through :class:`NextTokenLogits`
(``input_ids -> logits[:, :-1]`` flattened to ``[B·(S−1), V]``) and
``torch.nn.CrossEntropyLoss()`` against the shifted ids. Parameters are the same tensors
in the same order for every library (a peer that takes "all parameters with
requires_grad" gets exactly the chosen ones switched on), so flat vectors are comparable.

Each adapter offers, where the library has it:

* ``hvp(v)``        one Hessian-vector product from scratch (graph built inside the call);
* ``trace(m, seed)``, ``diag(m, seed)``   Hutchinson with ``m`` products;
* ``topk(k, seed, tol, budget)``           top-k eigenvalues, products counted;
* ``probes(K, seed)``                      K Hutchinson probes the library's own way
  (for time per probe).

Returned dicts carry ``matvecs`` (products actually used) and, where the library reports
one, a ``stderr``. A capability the library lacks raises :class:`Unsupported`.
"""

from __future__ import annotations

import importlib.metadata as md
import sys
from collections.abc import Sequence

import numpy as np
import torch

LIBS = ("prm_check", "pyhessian", "curvlinops", "hessian-eigenthings")


class Unsupported(RuntimeError):
    """The library has no API for this quantity."""


def version_of(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


class NextTokenLogits(torch.nn.Module):
    """``input_ids [B, S] -> logits [B·(S−1), V]`` of a causal LM (position t predicts t+1)."""

    def __init__(self, lm: torch.nn.Module) -> None:
        super().__init__()
        self.lm = lm

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        logits = self.lm(input_ids=input_ids, use_cache=False).logits[:, :-1, :]
        return logits.reshape(-1, logits.shape[-1])


def _targets(batch) -> torch.Tensor:
    return batch.input_ids[:, 1:].reshape(-1)


def _select(model: torch.nn.Module, names: Sequence[str] | None) -> list[torch.nn.Parameter]:
    """The chosen parameters in model order; only they keep ``requires_grad``."""
    chosen = [p for n, p in model.named_parameters() if names is None or n in set(names)]
    keep = {id(p) for p in chosen}
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)
    return chosen


def _flat(ts: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in ts])


def _split(flat: torch.Tensor, params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    parts = flat.split([p.numel() for p in params])
    return [c.view_as(p) for c, p in zip(parts, params, strict=True)]


def _samples_se(samples: Sequence[float]) -> float:
    s = np.asarray(samples, dtype=float)
    return float(s.std(ddof=1) / np.sqrt(len(s))) if len(s) > 1 else float("nan")


def _eigsh_budget(lin, k: int, budget: int, seed: int) -> dict:
    """scipy ``eigsh`` (ARPACK) with ``ncv = budget/2`` stopped after its first restart
    (about ``budget`` products, counted): the speed table times every eigensolver at about
    the same number of products, converged or not."""
    from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh

    count = [0]

    def mv(x):
        count[0] += 1
        return lin.matvec(x)

    op = LinearOperator(lin.shape, matvec=mv, rmatvec=mv, dtype=lin.dtype)
    v0 = np.random.default_rng(seed).standard_normal(lin.shape[0]).astype(lin.dtype)
    try:
        vals = eigsh(op, k=k, which="LA", v0=v0, ncv=max(k + 2, budget // 2), maxiter=1)[0]
    except ArpackNoConvergence as exc:
        vals = exc.eigenvalues
    return {"eigenvalues": np.sort(vals)[::-1], "matvecs": count[0]}


# --------------------------------------------------------------------------- prm_check
class PrmCheck:
    name = "prm_check"

    def __init__(self, model, batch, names, probes_per_graph: int = 8, method: str = "rev"):
        from prm_check.curvature import HessianOperator

        self.op = HessianOperator(
            model, [batch], names, method=method, probes_per_graph=probes_per_graph
        )
        self.version = version_of("prm_check")

    def hvp(self, v: torch.Tensor) -> torch.Tensor:
        return self.op.matvec(v)

    def trace(self, m: int, seed: int) -> dict:
        from prm_check.curvature import hutchinson_trace

        t = hutchinson_trace(self.op, m, seed)
        return {"estimate": t.estimate, "stderr": t.stderr, "matvecs": t.num_matvecs}

    def diag(self, m: int, seed: int) -> dict:
        from prm_check.curvature import hutchinson_diagonal

        d = hutchinson_diagonal(self.op, m, seed)
        return {"estimate": d.estimate, "stderr": d.stderr, "matvecs": d.num_matvecs}

    def topk(self, k: int, seed: int, tol: float = 0.0, budget: int | None = None) -> dict:
        from prm_check.curvature import top_eigenpairs

        e = top_eigenpairs(self.op, k, seed=seed, tol=tol)
        # a-posteriori bound for a symmetric operator: |λ̂ − λ| ≤ ‖Hx − λ̂x‖ / ‖x‖
        bound = np.abs(e.eigenvalues) * e.residuals * np.linalg.norm(e.eigenvectors, axis=0)
        return {"eigenvalues": e.eigenvalues, "matvecs": e.num_matvecs, "bound": bound}

    def topk_budget(self, k: int, budget: int, seed: int) -> dict:
        return _eigsh_budget(self.op.to_scipy(), k, budget, seed)

    def probes(self, k: int, seed: int) -> None:
        from prm_check.curvature import hutchinson_diagonal

        self.op.probes_per_graph = k
        hutchinson_diagonal(self.op, k, seed, entry_stderr=False)  # the pipeline's setting


# --------------------------------------------------------------------------- PyHessian 0.1
class PyHessian:
    """PyHessian 0.1 (``pyhessian.hessian``): single-batch mode, which builds the gradient
    graph once in the constructor (``loss.backward(create_graph=True)``) and reuses it for
    every product. Its ``trace`` stops when ``|Δmean| / (mean + 1e-6) < tol`` — true at once
    whenever the running mean is negative. It has no diagonal estimator."""

    name = "pyhessian"

    def __init__(self, model, batch, names):
        import pyhessian  # noqa: F401  (import error -> the row records it)

        self.net = NextTokenLogits(model)
        self.params = _select(model, names)
        self.data = (batch.input_ids, _targets(batch))
        self.crit = torch.nn.CrossEntropyLoss()
        self.version = version_of("pyhessian")
        self.count = 0

    def _build(self):
        import importlib

        # the package re-exports the class under the module's name: get the module itself
        phmod = importlib.import_module("pyhessian.hessian")
        for p in self.params:
            p.grad = None
        h = phmod.hessian(self.net, self.crit, data=self.data, cuda=False)
        original = phmod.hessian_vector_product

        def counted(gradsH, params, v):
            self.count += 1
            return original(gradsH, params, v)

        phmod.hessian_vector_product = counted  # count the library's own products
        return h, lambda: setattr(phmod, "hessian_vector_product", original)

    def _release(self) -> None:
        for p in self.params:
            p.grad = None  # the constructor left graph-carrying .grad on every parameter

    def hvp(self, v: torch.Tensor) -> torch.Tensor:
        from pyhessian.utils import hessian_vector_product

        h, restore = self._build()
        try:
            return _flat(hessian_vector_product(h.gradsH, h.params, _split(v, self.params)))
        finally:
            restore()
            del h
            self._release()

    def trace(self, m: int, seed: int, tol: float = 1e-3) -> dict:
        torch.manual_seed(seed)
        h, restore = self._build()
        try:
            samples = h.trace(maxIter=m, tol=tol)
        finally:
            restore()
            del h
            self._release()
        return {
            "estimate": float(np.mean(samples)),
            "stderr": _samples_se(samples),
            "matvecs": len(samples),
        }

    def diag(self, m: int, seed: int) -> dict:
        raise Unsupported("PyHessian 0.1 has no Hessian-diagonal estimator")

    def topk(self, k: int, seed: int, tol: float = 1e-3, budget: int | None = None) -> dict:
        torch.manual_seed(seed)
        self.count = 0
        h, restore = self._build()
        try:
            old = torch.get_default_dtype()
            torch.set_default_dtype(self.params[0].dtype)  # its start vectors use randn()
            try:
                vals, _ = h.eigenvalues(maxIter=(budget or 300) // k, tol=tol, top_n=k)
            finally:
                torch.set_default_dtype(old)
        finally:
            restore()
            del h
            self._release()
        return {"eigenvalues": np.asarray(vals, dtype=float), "matvecs": self.count}

    def topk_budget(self, k: int, budget: int, seed: int) -> dict:
        return self.topk(k, seed, tol=0.0, budget=budget)  # power iteration, budget/k each

    def probes(self, k: int, seed: int) -> None:
        self.trace(k, seed, tol=float("-inf"))  # tol = -inf: exactly k probes, no early stop


# --------------------------------------------------------------------------- curvlinops
class Curvlinops:
    """curvlinops-for-pytorch: ``HessianLinearOperator`` multiplies with
    ``jvp(jacrev(loss))``, vmapped over the columns of a block; its Hutchinson functions
    push all ``m`` probes through one vmapped product (an n×m probe matrix)."""

    name = "curvlinops"

    def __init__(self, model, batch, names, batched: bool = True):
        from curvlinops import HessianLinearOperator

        self.batched = batched
        self.params = _select(model, names)
        self.H = HessianLinearOperator(
            NextTokenLogits(model),
            torch.nn.CrossEntropyLoss(),
            self.params,
            [(batch.input_ids, _targets(batch))],
            check_deterministic=False,
            num_data=batch.input_ids.shape[0],
        )
        self.version = version_of("curvlinops-for-pytorch")

    def hvp(self, v: torch.Tensor) -> torch.Tensor:
        return self.H @ v

    def trace(self, m: int, seed: int) -> dict:
        from curvlinops import hutchinson_trace

        torch.manual_seed(seed)
        return {"estimate": float(hutchinson_trace(self.H, m)), "matvecs": m}

    def diag(self, m: int, seed: int) -> dict:
        from curvlinops import hutchinson_diag

        torch.manual_seed(seed)
        return {"estimate": hutchinson_diag(self.H, m), "matvecs": m}

    def topk(self, k: int, seed: int, tol: float = 0.0, budget: int | None = None) -> dict:
        from scipy.sparse.linalg import LinearOperator, eigsh

        lin = self.H.to_scipy()
        count = [0]

        def mv(x):
            count[0] += 1
            return lin.matvec(x)

        n = lin.shape[0]
        op = LinearOperator(lin.shape, matvec=mv, rmatvec=mv, dtype=lin.dtype)
        v0 = np.random.default_rng(seed).standard_normal(n)
        vals = eigsh(op, k=k, which="LA", v0=v0, tol=tol, ncv=min(n, max(2 * k + 1, 20)))[0]
        return {"eigenvalues": np.sort(vals)[::-1], "matvecs": count[0]}

    def topk_budget(self, k: int, budget: int, seed: int) -> dict:
        return _eigsh_budget(self.H.to_scipy(), k, budget, seed)

    def probes(self, k: int, seed: int, batched: bool | None = None) -> None:
        """``hutchinson_diag(H, k)`` (all k probes vmapped at once) or, unbatched, k calls
        of ``hutchinson_diag(H, 1)`` summed: same estimator, one probe's memory."""
        from curvlinops import hutchinson_diag

        torch.manual_seed(seed)
        if self.batched if batched is None else batched:
            hutchinson_diag(self.H, k)
            return
        total = None
        for _ in range(k):
            d = hutchinson_diag(self.H, 1)
            total = d if total is None else total.add_(d)


# --------------------------------------------------------------------------- eigenthings
class HessianEigenthings:
    """hessian-eigenthings 1.0 (PyPI pre-release): ``HessianOperator`` rebuilds the
    ``create_graph`` gradient for every product; trace by Hutchinson or Hutch++ (its
    default), eigenpairs by Lanczos with ``max_iter`` steps (default ``2k``). No diagonal."""

    name = "hessian-eigenthings"

    def __init__(self, model, batch, names):
        try:
            import hessian_eigenthings as he
        except ImportError as exc:
            raise ImportError(install_error("hessian-eigenthings") or str(exc)) from exc
        self.he = he
        self.params = _select(model, names)
        net = NextTokenLogits(model)
        crit = torch.nn.CrossEntropyLoss()
        self.op = he.HessianOperator(
            model, [(batch.input_ids, _targets(batch))], lambda _m, b: crit(net(b[0]), b[1])
        )
        self.version = version_of("hessian-eigenthings")

    def hvp(self, v: torch.Tensor) -> torch.Tensor:
        return self.op.matvec(v)

    def trace(self, m: int, seed: int, method: str = "hutchinson") -> dict:
        t = self.he.trace(self.op, num_matvecs=m, method=method, seed=seed)
        return {"estimate": t.estimate, "stderr": t.stderr, "matvecs": m}

    def diag(self, m: int, seed: int) -> dict:
        raise Unsupported("hessian-eigenthings has no Hessian-diagonal estimator")

    def topk(
        self,
        k: int,
        seed: int,
        tol: float = 1e-4,
        budget: int | None = None,
        reorthogonalize: bool | None = None,
    ) -> dict:
        """``reorthogonalize=None`` is the library's default: on only for ``max_iter <= 50``."""
        steps = min(budget or 2 * k, self.op.size - 1)
        e = self.he.lanczos(self.op, k=k, max_iter=steps, tol=tol, which="LA", seed=seed,
                            reorthogonalize=reorthogonalize)  # fmt: skip
        vals = e.eigenvalues.detach().double().numpy()
        return {"eigenvalues": vals, "matvecs": e.iterations, "bound": e.residuals.numpy()}

    def topk_budget(self, k: int, budget: int, seed: int) -> dict:
        return self.topk(k, seed, budget=budget)  # Lanczos, max_iter = budget

    def probes(self, k: int, seed: int) -> None:
        self.he.hutchinson(self.op, num_samples=k, seed=seed)


def install_error(dist: str) -> str | None:
    """The last error line of the bench venv's logged install attempt of ``dist``."""
    from pathlib import Path

    log = Path(sys.prefix) / f"{dist}-install.log"
    if not log.is_file():
        return None
    lines = [ln.strip() for ln in log.read_text().splitlines() if ln.startswith("ERROR")]
    return f"pip install {dist}: {lines[-1]}" if lines else None


ADAPTERS = {
    "prm_check": PrmCheck,
    "pyhessian": PyHessian,
    "curvlinops": Curvlinops,
    "hessian-eigenthings": HessianEigenthings,
}
