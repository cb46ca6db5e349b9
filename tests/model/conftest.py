"""Fixtures for the model tests: the real MovieLens-100k files (from the recbole wheel)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from annfleet.bundle import Bundle
from annfleet.model.data import MovieLens, load_movielens


@pytest.fixture(scope="session")
def movielens() -> MovieLens:
    torch.set_num_threads(2)
    return load_movielens()


@pytest.fixture(scope="session")
def small_bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    """A fast export: one member (the ensemble's export: test_two_tower), 1 epoch, dim 16,
    flat index, 2 shards."""
    from annfleet.model.export import train_and_export
    from annfleet.model.two_tower import TwoTowerConfig

    out: Path = tmp_path_factory.mktemp("ml") / "bundle"
    config = TwoTowerConfig(epochs=1, dim=16, members=1)
    return train_and_export(out, config=config, num_shards=2, index_type="flat", progress=False)
