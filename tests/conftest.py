"""Shared fixtures: composed configs shrunk to CPU size, a small phantom data set, the real images."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shared_model.conf import compose_app
from tests.fixtures import processes

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]


@pytest.hookimpl(optionalhook=True)
def pytest_timeout_set_timer(item, settings):
    """pytest-timeout arms its timer for ``item``: start the clock subprocess waits are cut to."""
    processes.start_test_clock(settings.timeout)


@pytest.hookimpl(optionalhook=True)
def pytest_timeout_cancel_timer(item):
    processes.start_test_clock(None)


def real_data_dir() -> Path | None:
    """``shared/data/real`` beside the checkout (CI lays ../shared next to the clone)."""
    for candidate in (REPO.parent / "shared" / "data" / "real", REPO / "shared" / "data" / "real"):
        if candidate.is_dir():
            return candidate
    return None


@pytest.fixture(scope="session")
def real_dir() -> Path:
    found = real_data_dir()
    if found is None:
        pytest.skip("shared/data/real is not beside this checkout")
    return found


@pytest.fixture(scope="session")
def tiny_model_cfg():
    """The tiny preset exactly as the packaged config defines it."""
    return compose_app("train", []).model


@pytest.fixture(scope="session")
def small_phantom(tmp_path_factory) -> Path:
    """Two training sites of 40 eyes and a held-out site of 30 eyes, 64 px (about a second to make)."""
    from shared_model.data.phantom import PhantomSpec, generate_phantom

    out = tmp_path_factory.mktemp("phantom")
    generate_phantom(PhantomSpec(n_sites=2, images_per_site=40, heldout_images=30, image_size=64, seed=0), out,
                     progress=False)
    return out
