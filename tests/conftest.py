import pytest


@pytest.fixture(scope="session")
def voc_root(tmp_path_factory):
    """A small synthetic VOC root shared by the tests that only read it."""
    from wavecam.data.synthetic import make_synthetic_voc

    return make_synthetic_voc(tmp_path_factory.mktemp("voc"), n_train=24, n_val=8, size=64, seed=0)


@pytest.fixture(autouse=True)
def _label_cache(tmp_path, monkeypatch):
    # Keep derived-label caches out of the user's home directory.
    monkeypatch.setenv("WAVECAM_CACHE", str(tmp_path / "cache"))
