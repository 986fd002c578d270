import pytest
import torch

from fusionsearch import ModelConfig

#: A narrow network on tiny volumes: fast enough to build dozens per test on 2 CPU cores.
TINY = {"width": 0.125, "depth": 18}
SIZE = 16


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
