"""Shared test configuration: GPU tests are skipped where CUDA is absent."""

import pytest


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _isolated_profile_store(request, tmp_path_factory, monkeypatch):
    """Plans without --hw read the per-user profile store and detect the GPU (hwprofiles/defaults.py): tests use
    an empty store of their own, never the developer's home, and (outside the GPU tests) see no GPU, so that the
    default profile is the same on every machine."""
    monkeypatch.setenv("HEADPLAN_PROFILE_DIR", str(tmp_path_factory.mktemp("profile-store")))
    if "gpu" not in request.keywords:
        import hwprofiles.defaults

        monkeypatch.setattr(hwprofiles.defaults, "detect_gpu", lambda timeout_s=10.0: None)
