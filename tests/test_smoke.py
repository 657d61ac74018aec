import torch

from prm_check.data.batching import make_batches
from prm_check.lm import mean_token_loss
from tests.conftest import make_tiny_gpt2, make_tiny_opt


def test_tiny_models_give_finite_loss():
    seqs = [[1, 2, 3, 4], [5, 6, 7], [8, 9]]
    batches = make_batches(seqs, max_tokens=8, pad_id=0)
    for model in (make_tiny_opt(), make_tiny_gpt2()):
        loss, n = mean_token_loss(model, batches)
        assert n == 3 + 2 + 1
        assert torch.isfinite(torch.tensor(loss))
