import pytest


@pytest.fixture
def quick() -> list[str]:
    """Overrides for a run of seconds on the embedded digits."""
    return ["trainer.max_epochs=1", "data.batch_size=64", "model.channels=[8,16]", "model.hidden=[32]"]
