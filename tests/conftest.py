"""Shared fixtures: a tiny MIMIR config (hidden 32, 2 layers, 16x16 images, patch 4) and a batch of images."""

import pytest
import torch
from transformers.utils import logging

from mimir_hf import MimirConfig

logging.set_verbosity_error()


def tiny_config(**overrides) -> MimirConfig:
    fields = dict(
        image_size=16,
        patch_size=4,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        decoder_hidden_size=16,
        decoder_num_hidden_layers=1,
        decoder_num_attention_heads=2,
        decoder_intermediate_size=32,
        num_labels=4,
    )
    fields.update(overrides)
    return MimirConfig(**fields)


@pytest.fixture
def config() -> MimirConfig:
    return tiny_config()


@pytest.fixture
def images() -> torch.Tensor:
    return torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(0))


@pytest.fixture
def labels() -> torch.Tensor:
    return torch.tensor([0, 1, 2, 3, 0, 1])


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
