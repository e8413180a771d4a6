import pytest

from pushcut.policy.config import LLMConfig, PolicyConfig, VisionConfig


@pytest.fixture
def micro_cfg() -> PolicyConfig:
    """A policy small enough for unit tests: 2 cameras, chunk 3 x 4 dims."""
    return PolicyConfig(
        name="micro",
        vision=VisionConfig(image_size=16, patch_size=8, hidden_size=16, num_layers=1, num_heads=2,
                            intermediate_size=32),
        llm=LLMConfig(hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=64, vocab_size=300,
                      max_positions=256),
        cameras=("head", "left_wrist"),
        action_dim=4,
        chunk_len=3,
        n_bins=32,
        proprio_dim=5,
    )
