import pytest


@pytest.fixture
def quick() -> list[str]:
    """Overrides for a run of seconds on the embedded digits."""
    return ["trainer.max_epochs=1", "data.batch_size=64", "model.channels=[8,16]", "model.hidden=[32]"]


@pytest.fixture(autouse=True)
def own_data_cache(tmp_path_factory, monkeypatch) -> None:
    """Each test decodes into a cache of its own (runner.data.cache), never the user's ~/.cache/ablate;
    the runs it starts inherit it."""
    monkeypatch.setenv("ABLATE_CACHE", str(tmp_path_factory.mktemp("ablate-cache")))
