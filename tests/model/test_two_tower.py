"""Two-tower model: logQ correction, training, TorchScript equivalence."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from annfleet.model.data import MovieLens, per_user_split
from annfleet.model.export import export_model
from annfleet.model.features import build_queries
from annfleet.model.two_tower import (
    TwoTower,
    TwoTowerConfig,
    TwoTowerEnsemble,
    all_item_vectors,
    build_examples,
    full_softmax_loss,
    items_without_interactions,
    logq_correction,
    recency_bag,
    sampled_softmax_logits,
    sampled_softmax_loss,
    served_item_vectors,
    train_two_tower,
    two_tower_loss,
    user_item_mask,
    user_vectors,
)
from annfleet.router.tower import TowerEmbedder
from annfleet.router.users import RequestContext


def test_logq_shifts_logits_by_minus_log_q() -> None:
    g = torch.Generator().manual_seed(0)
    u = torch.nn.functional.normalize(torch.randn(4, 8, generator=g), dim=1)
    v = torch.nn.functional.normalize(torch.randn(6, 8, generator=g), dim=1)
    q = torch.tensor([0.5, 0.1, 0.01, 0.2, 0.05, 0.14])
    plain = sampled_softmax_logits(u, v, None, 0.1)
    corrected = sampled_softmax_logits(u, v, torch.log(q), 0.1)
    assert torch.allclose(corrected - plain, -torch.log(q)[None, :].expand(4, 6), atol=1e-6)
    assert torch.allclose(plain, u @ v.T / 0.1, atol=1e-6)


def test_logq_correction_is_weighted_log_expected_count() -> None:
    p = np.array([0.0, 0.5, 0.25, 0.25])
    cand = np.array([1, 3, 2])
    full = logq_correction(p, cand, batch=4)
    assert np.allclose(full, np.log([2.0, 1.0, 1.0]))
    assert np.allclose(logq_correction(p, cand, batch=4, weight=0.5), 0.5 * full)
    # mixed uniform negatives: + M / N expected occurrences of every item
    assert np.allclose(logq_correction(p, cand, batch=4, uniform=6), np.log([4.0, 3.0, 3.0]))


def test_duplicate_positives_are_not_negatives() -> None:
    u = torch.nn.functional.normalize(torch.ones(2, 4), dim=1)
    v = u.clone()
    items = torch.tensor([7, 7])
    loss = sampled_softmax_loss(u, v, items, items, None, 1.0)
    assert float(loss) < 1e-6  # the other column holds the same item: masked, not a negative


def test_full_softmax_does_not_count_the_users_other_items_as_negatives() -> None:
    # three candidate items; row 0's positive is column 0 and column 1 is another of its items
    u = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), dim=1)
    v = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    target = torch.tensor([0, 2])
    logits = u @ v.T
    plain = full_softmax_loss(u, v, target, None, 1.0)
    assert torch.isclose(plain, torch.nn.functional.cross_entropy(logits, target))
    exclude = torch.tensor([[True, True, False], [False, False, True]])
    masked = full_softmax_loss(u, v, target, exclude, 1.0)  # row 1's positive stays
    keep0 = torch.tensor([0, 2])  # row 0: column 1 is not a negative
    expect = (
        -(torch.log_softmax(logits[0, keep0], dim=0)[0] + torch.log_softmax(logits[1], dim=0)[2])
        / 2
    )
    assert torch.isclose(masked, expect)
    assert masked < plain


def test_full_softmax_candidates_are_the_training_items(movielens: MovieLens, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # an item with no training interaction (a held-out cold item) is never a candidate
    train = _small(movielens)
    cold = int(movielens.inter_item[train][0])
    train &= movielens.inter_item != cold
    candidates: list[np.ndarray] = []
    original = TwoTower.item_vectors

    def spy(self, index, id_known=None):  # type: ignore[no-untyped-def]
        candidates.append(index.numpy().copy())
        return original(self, index, id_known)

    monkeypatch.setattr(TwoTower, "item_vectors", spy)
    cfg = TwoTowerConfig(
        dim=8, epochs=1, batch_size=2048, full_softmax=True, content_loss=0.5, members=1
    )
    train_two_tower(movielens, train, cfg, progress=False)
    expect = np.unique(movielens.inter_item[train])
    assert len(candidates) == 2 * -(-int(train.sum()) // 2048)  # warm + content-only per batch
    assert all(np.array_equal(c, expect) for c in candidates)
    assert cold not in expect


def test_user_item_mask_is_each_rows_users_train_items(movielens: MovieLens) -> None:
    train = _small(movielens)
    ex = build_examples(movielens, train, 5)
    rows = np.array([0, len(ex.item) - 1, 40])
    mask = user_item_mask(ex, rows, movielens.num_items)
    for r, row in zip(rows, mask, strict=True):
        user = movielens.inter_user[np.flatnonzero(train)[r]]
        items = movielens.inter_item[train & (movielens.inter_user == user)]
        assert set(np.flatnonzero(row)) == set(items.tolist())


def _small(movielens: MovieLens) -> np.ndarray:
    return per_user_split(movielens).train & (movielens.inter_user <= 150)


def test_loss_decreases_on_a_small_run(movielens: MovieLens) -> None:
    cfg = TwoTowerConfig(dim=16, epochs=3, batch_size=512, lr=1e-2, seed=1, members=1)
    model = train_two_tower(movielens, _small(movielens), cfg, progress=False)
    assert len(model.losses) == 3
    assert model.losses[-1] < model.losses[0] - 0.05


@pytest.mark.parametrize("full", [False, True])
def test_deterministic_per_seed(movielens: MovieLens, full: bool) -> None:
    cfg = TwoTowerConfig(
        dim=8,
        epochs=1,
        batch_size=512,
        seed=3,
        full_softmax=full,
        mask_user_items=full,
        members=1,
    )
    a = train_two_tower(movielens, _small(movielens), cfg, progress=False)
    b = train_two_tower(movielens, _small(movielens), cfg, progress=False)
    assert a.losses == b.losses


def test_torchscript_equals_eager(movielens: MovieLens, tmp_path) -> None:  # type: ignore[no-untyped-def]
    cfg = TwoTowerConfig(dim=16, epochs=1, seed=0, members=1)
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


def test_fine_year_separates_items_that_differ_only_in_release_year(movielens: MovieLens) -> None:
    # the first 1995 and the first 1998 release: the same 5-year bucket
    years = movielens.item_release_year
    a = int(np.flatnonzero(years == 1995)[0])
    b = int(np.flatnonzero(years == 1998)[0])
    for fine in (False, True):
        model = TwoTower(movielens, TwoTowerConfig(dim=8, fine_year=fine))
        f = model.features
        assert f.year[a] == f.year[b]  # one coarse bucket (1995-1999)
        # swap b's content for a's except the year: only the fine year differs
        f.genres[b], f.title[b] = f.genres[a].clone(), f.title[a].clone()
        with torch.no_grad():
            vec = model.item_vectors(torch.tensor([a, b]), torch.tensor([False, False]))
        assert torch.allclose(vec[0], vec[1]) != fine


@pytest.mark.parametrize("full_softmax", [False, True])
def test_content_loss_adds_the_softmax_over_content_only_vectors(
    movielens: MovieLens, full_softmax: bool
) -> None:
    torch.manual_seed(0)
    cfg = TwoTowerConfig(
        dim=8, content_loss=0.5, cold_loss=0.0, fine_year=True, full_softmax=full_softmax
    )
    model = TwoTower(movielens, cfg)
    user = torch.nn.functional.normalize(torch.randn(3, 8), dim=1)
    pos = torch.tensor([5, 7, 50])
    cand = torch.tensor([5, 7, 50, 100])  # positives first, and sorted (the full softmax's)
    known = torch.tensor([True, False, True, True])
    log_q = torch.tensor([0.1, 0.2, 0.3, 0.4])

    def softmax(v: torch.Tensor) -> torch.Tensor:
        if full_softmax:  # no logQ: nothing is sampled
            return full_softmax_loss(user, v, torch.tensor([0, 1, 2]), None, cfg.temperature)
        return sampled_softmax_loss(user, v, pos, cand, log_q, cfg.temperature)

    with torch.no_grad():
        both = two_tower_loss(model, user, pos, cand, known, log_q)
        full = softmax(model.item_vectors(cand, known))
        alone = softmax(model.item_vectors(cand, torch.zeros(4, dtype=torch.bool)))
        model.config = replace(model.config, content_loss=0.0)
        plain = two_tower_loss(model, user, pos, cand, known, log_q)
    assert torch.isclose(both, full + 0.5 * alone)
    assert torch.isclose(plain, full)
    assert not torch.isclose(full, alone)


def test_shared_item_embedding_is_one_parameter_and_scripts(movielens: MovieLens, tmp_path) -> None:  # type: ignore[no-untyped-def]
    cfg = TwoTowerConfig(dim=8, share_items=True, fine_year=True)
    model = TwoTower(movielens, cfg).eval()
    assert model.user.item is model.item.item_id
    plain = TwoTower(movielens, replace(cfg, share_items=False))
    size = sum(p.numel() for p in model.parameters())
    assert size == sum(p.numel() for p in plain.parameters()) - plain.user.item.weight.numel()
    path = tmp_path / "tower.pt"
    torch.jit.script(model.user.eval()).save(str(path))
    q = build_queries(movielens, per_user_split(movielens))
    inputs = (torch.from_numpy(q.user), torch.from_numpy(q.recent), torch.from_numpy(q.time))
    with torch.no_grad():
        assert torch.allclose(model.user(*inputs), torch.jit.load(str(path))(*inputs), atol=1e-5)


def test_ensemble_serves_the_mean_of_its_members_scores_as_one_tower(  # type: ignore[no-untyped-def]
    movielens: MovieLens, tmp_path
) -> None:
    cfg = TwoTowerConfig(dim=8, epochs=1, batch_size=512, seed=2, members=2)
    model = train_two_tower(movielens, _small(movielens), cfg, progress=False)
    assert isinstance(model, TwoTowerEnsemble) and len(model.members) == 2
    assert cfg.out_dim == 16 and len(model.losses) == 1
    # member 0 is the plain model of the same seed, member 1 a differently seeded one
    assert [m.config.seed for m in model.members] == [2, 1002]
    assert all(m.config.members == 1 for m in model.members)
    assert model.members[0].losses != model.members[1].losses
    q = build_queries(movielens, per_user_split(movielens))
    users = user_vectors(model, q.user[:50], q.recent[:50], q.time[:50])
    items = all_item_vectors(model, movielens.num_items)
    assert users.shape == (50, 16) and items.shape == (movielens.num_items + 1, 16)
    assert np.allclose(np.linalg.norm(users, axis=1), 1.0, atol=1e-5)
    assert np.allclose(np.linalg.norm(items[1:], axis=1), 1.0, atol=1e-5)
    mean = (
        sum(
            user_vectors(m, q.user[:50], q.recent[:50], q.time[:50])
            @ all_item_vectors(m, movielens.num_items).T
            for m in model.members
        )
        / 2
    )
    assert np.allclose(users @ items.T, mean, atol=1e-5)
    # cold items: content only in every member
    cold = all_item_vectors(model, movielens.num_items, cold=np.array([5]))
    assert not np.allclose(cold[5], items[5]) and np.allclose(cold[6], items[6])
    cold_all = all_item_vectors(model, movielens.num_items, cold=np.arange(movielens.num_items + 1))
    # served as one two-tower: the bundle holds the 16-wide item vectors, one TorchScript
    # user tower, and the router's embedder gives the exported user vectors back
    # the bundle knows _small's interactions only: an item with none there is served from
    # its content alone, every other one as all_item_vectors gives it
    served = served_item_vectors(model, movielens, _small(movielens))
    untrained = items_without_interactions(movielens, _small(movielens))
    warm = np.setdiff1d(np.arange(1, movielens.num_items + 1), untrained)
    assert len(untrained) and np.allclose(served[warm], items[warm])
    assert np.allclose(served[untrained], cold_all[untrained], atol=1e-6)
    bundle = export_model(
        tmp_path / "bundle",
        movielens,
        model,
        cfg,
        train=_small(movielens),
        num_shards=2,
        index_type="flat",
        progress=False,
    )
    assert bundle.dim == 16 and bundle.manifest["user_tower"]["output"]["shape"] == ["B", 16]
    ids, vectors = bundle.users()  # type: ignore[misc]
    embedder = TowerEmbedder(bundle)
    row = int(np.flatnonzero(ids == 1)[0])
    ts = int(bundle.table("user_last_ts")[row])
    assert np.allclose(embedder.embed(1, RequestContext(timestamp=ts)), vectors[row], atol=1e-5)
    for s in range(bundle.num_shards):  # the shards hold the ensemble's item vectors
        shard_ids = np.load(bundle.shard_dir(s) / "ids.npy", allow_pickle=False)
        stored = np.load(bundle.shard_dir(s) / "vectors.npy", allow_pickle=False)
        index = np.searchsorted(movielens.item_ids, shard_ids) + 1
        assert np.allclose(stored, served[index], atol=1e-6)


@pytest.mark.parametrize("full_softmax", [False, True])
def test_cold_loss_adds_the_softmax_with_the_positive_scored_from_content_alone(
    movielens: MovieLens, full_softmax: bool
) -> None:
    torch.manual_seed(0)
    cfg = TwoTowerConfig(dim=8, content_loss=0.0, cold_loss=0.5, full_softmax=full_softmax)
    model = TwoTower(movielens, cfg)
    user = torch.nn.functional.normalize(torch.randn(3, 8), dim=1)
    pos = torch.tensor([5, 7, 50])
    cand = torch.tensor([5, 7, 50, 100])
    known = torch.tensor([True, False, True, True])
    log_q = None if full_softmax else torch.tensor([0.1, 0.2, 0.3, 0.4])
    with torch.no_grad():
        both = two_tower_loss(model, user, pos, cand, known, log_q)
        served = model.item_vectors(cand, known)
        content = model.item_vectors(cand, torch.zeros(4, dtype=torch.bool))
        model.config = replace(cfg, cold_loss=0.0)
        plain = two_tower_loss(model, user, pos, cand, known, log_q)
    # by hand: the served logits, each row's positive (column i) replaced by its content score
    logits = user @ served.T / cfg.temperature
    cold = user @ content.T / cfg.temperature
    if log_q is not None:
        logits, cold = logits - log_q, cold - log_q
    target = torch.arange(3)
    logits[target, target] = cold[target, target]
    expect = torch.nn.functional.cross_entropy(logits, target)
    assert torch.isclose(both, plain + 0.5 * expect)
    # the content score replaces a different logit: the term is not the served softmax again
    assert not torch.isclose(expect, plain)


def test_cold_loss_trains_content_scores_against_the_served_items(movielens: MovieLens) -> None:
    # the cold softmax's gradient reaches the content path of the positive and the id
    # embeddings of the negatives (calibration against served vectors), and trains
    cfg = TwoTowerConfig(dim=8, content_loss=0.0, cold_loss=1.0, item_id_dropout=0.0)
    model = TwoTower(movielens, cfg)
    user = torch.nn.functional.normalize(torch.randn(2, 8), dim=1)
    pos, cand = torch.tensor([5, 7]), torch.tensor([5, 7, 50])
    known = torch.ones(3, dtype=torch.bool)
    with_cold = two_tower_loss(model, user, pos, cand, known, None)
    model.config = replace(cfg, cold_loss=0.0)
    without = two_tower_loss(model, user, pos, cand, known, None)
    (with_cold - without).backward()
    grad = model.item.item_id.weight.grad
    assert grad is not None and float(grad[50].abs().sum()) > 0  # a negative's id
    assert float(grad[5].abs().sum()) > 0  # positives are negatives of the other row
    assert float(model.item.genres.weight.grad.abs().sum()) > 0  # type: ignore[union-attr]


def test_an_item_with_no_interactions_is_served_from_its_content(movielens: MovieLens) -> None:
    train = _small(movielens)
    counts = np.bincount(movielens.inter_item[train], minlength=movielens.num_items + 1)
    held = int(np.argmax(counts))  # the busiest item of the set, held out entirely
    train &= movielens.inter_item != held
    untrained = items_without_interactions(movielens, train)
    assert held in untrained and 0 not in untrained
    assert np.array_equal(
        untrained,
        np.flatnonzero(
            np.bincount(movielens.inter_item[train], minlength=movielens.num_items + 1)[1:] == 0
        )
        + 1,
    )
    cfg = TwoTowerConfig(dim=8, epochs=1, batch_size=512, seed=4, members=1, cold_loss=0.5)
    model = train_two_tower(movielens, train, cfg, progress=False)
    served = served_item_vectors(model, movielens, train)
    with torch.no_grad():
        idx = torch.tensor([held])
        content = model.item_vectors(idx, torch.tensor([False])).numpy()[0]
        by_id = model.item_vectors(idx, torch.tensor([True])).numpy()[0]
        empty = model.item_vectors(torch.tensor([0]), torch.tensor([False])).numpy()[0]
    assert np.allclose(served[held], content, atol=1e-6)
    assert not np.allclose(served[held], by_id, atol=1e-3)  # not its untrained id embedding
    assert not np.allclose(served[held], empty, atol=1e-3)  # nor the no-content default
    # content-derived: two untrained items with different genres get different vectors
    genres = movielens.item_genres
    other = next(int(i) for i in untrained if not np.array_equal(genres[i], genres[held]))
    assert not np.allclose(served[held], served[other], atol=1e-3)
    assert np.isclose(np.linalg.norm(served[held]), 1.0, atol=1e-5)


def test_recency_bag_weights_the_valid_items_by_their_positions() -> None:
    items = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4)
    valid = torch.tensor([[0.0, 1.0, 1.0], [1.0, 1.0, 1.0]])
    mean = recency_bag(torch.zeros(3), items, valid)  # equal logits: the mean of valid items
    assert torch.allclose(mean[0], items[0, 1:].mean(0))
    assert torch.allclose(mean[1], items[1].mean(0))
    last = recency_bag(torch.tensor([0.0, 0.0, 50.0]), items, valid)  # all weight on the newest
    assert torch.allclose(last, items[:, 2], atol=1e-4)
    none = recency_bag(torch.zeros(3), items, torch.zeros(2, 3))
    assert torch.equal(none, torch.zeros(2, 4))


def test_recency_pool_is_off_by_default_and_scripts(movielens: MovieLens, tmp_path) -> None:  # type: ignore[no-untyped-def]
    plain = TwoTower(movielens, TwoTowerConfig(dim=8))
    assert plain.user.recency.numel() == 0
    side = plain.user.query.in_features  # the user's and the request's own features
    assert plain.user.mlp[0].in_features == side + 3 * 64
    model = TwoTower(movielens, TwoTowerConfig(dim=8, recency_pool=True)).eval()
    assert model.user.recency.shape == (TwoTowerConfig().recent_len,)
    assert model.user.mlp[0].in_features == side + 4 * 64
    with torch.no_grad():
        model.user.recency.copy_(torch.linspace(-1.0, 1.0, model.user.recent_len))
    path = tmp_path / "tower.pt"
    torch.jit.script(model.user).save(str(path))
    q = build_queries(movielens, per_user_split(movielens))
    inputs = (torch.from_numpy(q.user), torch.from_numpy(q.recent), torch.from_numpy(q.time))
    with torch.no_grad():
        assert torch.allclose(model.user(*inputs), torch.jit.load(str(path))(*inputs), atol=1e-5)
