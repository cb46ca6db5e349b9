"""Two-tower model: logQ correction, training, TorchScript equivalence."""

from __future__ import annotations

import numpy as np
import torch

from annfleet.model.data import MovieLens, per_user_split
from annfleet.model.features import build_queries
from annfleet.model.two_tower import (
    TwoTowerConfig,
    sampled_softmax_logits,
    sampled_softmax_loss,
    train_two_tower,
)


def test_logq_shifts_logits_by_minus_log_q() -> None:
    g = torch.Generator().manual_seed(0)
    u = torch.nn.functional.normalize(torch.randn(4, 8, generator=g), dim=1)
    v = torch.nn.functional.normalize(torch.randn(6, 8, generator=g), dim=1)
    q = torch.tensor([0.5, 0.1, 0.01, 0.2, 0.05, 0.14])
    plain = sampled_softmax_logits(u, v, None, 0.1)
    corrected = sampled_softmax_logits(u, v, torch.log(q), 0.1)
    assert torch.allclose(corrected - plain, -torch.log(q)[None, :].expand(4, 6), atol=1e-6)
    assert torch.allclose(plain, u @ v.T / 0.1, atol=1e-6)


def test_duplicate_positives_are_not_negatives() -> None:
    u = torch.nn.functional.normalize(torch.ones(2, 4), dim=1)
    v = u.clone()
    items = torch.tensor([7, 7])
    loss = sampled_softmax_loss(u, v, items, items, None, 1.0)
    assert float(loss) < 1e-6  # the other column holds the same item: masked, not a negative


def _small(movielens: MovieLens) -> np.ndarray:
    return per_user_split(movielens).train & (movielens.inter_user <= 150)


def test_loss_decreases_on_a_small_run(movielens: MovieLens) -> None:
    cfg = TwoTowerConfig(dim=16, epochs=3, batch_size=512, lr=1e-2, seed=1)
    model = train_two_tower(movielens, _small(movielens), cfg, progress=False)
    assert len(model.losses) == 3
    assert model.losses[-1] < model.losses[0] - 0.05


def test_deterministic_per_seed(movielens: MovieLens) -> None:
    cfg = TwoTowerConfig(dim=8, epochs=1, batch_size=512, seed=3)
    a = train_two_tower(movielens, _small(movielens), cfg, progress=False)
    b = train_two_tower(movielens, _small(movielens), cfg, progress=False)
    assert a.losses == b.losses


def test_torchscript_equals_eager(movielens: MovieLens, tmp_path) -> None:  # type: ignore[no-untyped-def]
    cfg = TwoTowerConfig(dim=16, epochs=1, seed=0)
    model = train_two_tower(movielens, _small(movielens), cfg, progress=False)
    q = build_queries(movielens, per_user_split(movielens))
    inputs = (torch.from_numpy(q.user), torch.from_numpy(q.recent), torch.from_numpy(q.time))
    path = tmp_path / "tower.pt"
    torch.jit.script(model.user.eval()).save(str(path))
    scripted = torch.jit.load(str(path))
    with torch.no_grad():
        eager = model.user(*inputs)
        script = scripted(*inputs)
    assert eager.shape == (943, 16)
    assert torch.allclose(eager, script, atol=1e-5)
    assert torch.allclose(eager.norm(dim=1), torch.ones(943), atol=1e-5)
