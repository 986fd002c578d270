import pytest
import torch

from fusionsearch import ModelConfig

#: A narrow network on tiny volumes: fast enough to build dozens per test on 2 CPU cores.
TINY = {"width": 0.125, "depth": 18}
SIZE = 16
#: ``fusionsearch run`` options for candidates that take seconds, on every fold ...
TINY_EVERY_FOLD = ["--size", "16", "--width", "0.125", "--epochs", "2", "--patience", "2",
                   "--batch-size", "8", "--folds", "3", "--gpus", "0"]  # fmt: skip
#: ... or a search of fold 0 only, without baselines.
TINY_RUN = [*TINY_EVERY_FOLD, "--fold", "0", "--no-unimodal"]


@pytest.fixture(autouse=True)
def _torch_threads():
    torch.set_num_threads(2)


def tiny_config(**overrides) -> ModelConfig:
    return ModelConfig(**{**TINY, **overrides})


def randomise(model: torch.nn.Module, seed: int = 0) -> None:
    """Give every parameter and normalisation buffer non-trivial values (a stand-in for training)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                noise = torch.randn(tensor.shape, generator=generator) * 0.3
                tensor.copy_(noise.abs() + 0.5 if name.endswith("running_var") else noise)


def cached_data(manifest_path, cache_root, preprocess, folds: int = 3):
    """Build the preprocessing cache of a manifest and return the DataConfig that opens it."""
    from fusionsearch.cache import cache_manifest
    from fusionsearch.manifest import read_manifest

    return cache_manifest(read_manifest(manifest_path), cache_root, preprocess, folds=folds, workers=2)
