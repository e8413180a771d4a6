import pytest

from pushcut.policy.config import LLMConfig, PolicyConfig, VisionConfig
from pushcut.sim.config import EnvConfig
from pushcut.training.config import SFTConfig, WandbConfig

MICRO_POLICY = PolicyConfig(
    vision=VisionConfig(image_size=32, patch_size=16, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64),
    llm=LLMConfig(hidden_size=48, num_layers=1, num_heads=4, num_kv_heads=4, intermediate_size=96),
    chunk_len=10,
)
MICRO_ENV = EnvConfig(task="click_bell", image_size=(32, 32), max_steps=60)


@pytest.fixture(scope="session")
def sft_checkpoint(tmp_path_factory):
    """A micro SFT checkpoint on click_bell (2 demos, a few steps): the start of RL tests."""
    from pushcut.training import sft

    root = tmp_path_factory.mktemp("sft")
    cfg = SFTConfig(env=MICRO_ENV, policy=MICRO_POLICY, demos_dir=str(root / "demos"), demos_per_task=2,
                    steps=30, batch_size=8, lr=1e-3, warmup_steps=3, log_every=10, wandb=WandbConfig(mode="disabled"))
    return sft.train(cfg, root / "run", progress=False)
