"""Packed Rademacher probes and the allocator setting."""

from __future__ import annotations

import subprocess
import sys

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from prm_check.curvature.probes import packed_probe, rademacher, unpack_into


@settings(max_examples=20, deadline=None)
@given(
    shapes=st.lists(st.lists(st.integers(1, 13), min_size=1, max_size=2), min_size=1, max_size=4),
    seed=st.integers(0, 2**31),
    index=st.integers(0, 1000),
)
def test_probe_is_pure_and_plus_minus_one(shapes, seed, index):
    sizes = [torch.Size(s) for s in shapes]
    a = rademacher(sizes, torch.float64, seed, index)
    b = rademacher(sizes, torch.float32, seed, index)
    for x, y, s in zip(a, b, sizes, strict=True):
        assert x.shape == s and set(x.unique().tolist()) <= {-1.0, 1.0}
        assert torch.equal(x.float(), y)  # same signs in any dtype, every time


def test_probes_are_balanced_independent_and_seeded():
    n = 200_003  # not a multiple of 8: the tail is unpacked too
    v0, v1 = (rademacher([torch.Size([n])], torch.float64, 5, k)[0] for k in (0, 1))
    assert abs(float(v0.mean())) < 5 / n**0.5
    assert abs(float((v0 * v1).mean())) < 5 / n**0.5
    assert not torch.equal(v0, rademacher([torch.Size([n])], torch.float64, 6, 0)[0])
    bits = packed_probe([n], 5, 0)
    assert bits[0].dtype == torch.uint8 and bits[0].numel() == (n + 7) // 8
    out = [torch.empty(n)]
    unpack_into(bits, out)
    assert torch.equal(out[0].double(), v0)


def test_allocator_scope_is_reentrant_and_can_be_opted_out():
    code = (
        "from prm_check.budget.allocator import returning_freed_memory as r, _depth\n"
        "import prm_check.budget.allocator as a\n"
        "with r() as x:\n"
        "    with r() as y:\n"
        "        inner = a._depth\n"
        "print(x, y, inner, a._depth)"
    )
    lean = {"PRM_CHECK_MALLOC": "lean", "PATH": ""}
    on = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=lean
    )
    x, y, inner, after = on.stdout.split()
    assert x == y and inner == "2" and after == "0"
    env = {"PATH": ""}  # off by default
    off = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    assert off.stdout.split()[:2] == ["False", "False"]
