import pytest

from pushcut.policy.export import ExportConfig, export
from tests.training.conftest import MICRO_ENV, sft_checkpoint  # noqa: F401  (session fixture)


@pytest.fixture(scope="session")
def bundle(sft_checkpoint, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("bundle") / "bundle"
    return export(ExportConfig(env=MICRO_ENV, checkpoint=str(sft_checkpoint), out_dir=str(out),
                               parity_env_samples=4, parity_random_samples=4))
