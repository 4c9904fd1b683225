"""Shared fixtures: a small synthetic BOP dataset (pyrender) and a 3DGO fitted to it, built once per session."""

import os

import numpy as np
import pytest

os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")
# The test process is the nodes' camera: it sends images with the same Fast DDS profile as the
# nodes get (NodeGraph), set before any DDS participant exists (config/fastdds.xml says why).
os.environ.setdefault("FASTDDS_DEFAULT_PROFILES_FILE",
                      os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "config", "fastdds.xml"))


@pytest.fixture(scope="session")
def dataset(tmp_path_factory):
    from gspose_ros.core import synth

    root = str(tmp_path_factory.mktemp("bop"))
    return synth.generate_dataset(root, obj_ids=(2, 3), n_refs=32, n_tests=4, seed=3, n_multi=3)


@pytest.fixture(scope="session")
def ref_views(dataset):
    from gspose_ros.core import bop

    return bop.load_views(bop.load_split_frames(dataset, "train", 2))


@pytest.fixture(scope="session")
def built(ref_views):
    from gspose_ros.core.build import BuildConfig, build_gaussian_object

    train = [v for i, v in enumerate(ref_views) if i % 8 != 3]
    held = [v for i, v in enumerate(ref_views) if i % 8 == 3]
    progress = []
    result = build_gaussian_object(train, BuildConfig(iterations=600), progress=progress.append)
    return result, held, progress


@pytest.fixture(scope="session")
def built_duck(dataset):
    """The real mesh (Collada duck), for the tracking tests."""
    from gspose_ros.core import bop
    from gspose_ros.core.build import BuildConfig, build_gaussian_object

    views = bop.load_views(bop.load_split_frames(dataset, "train", 3))
    return build_gaussian_object(views, BuildConfig(iterations=800)).gaussians


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def quick_fit_min_score():
    """The pose bar for tests that estimate with these fixtures' 3DGOs: fitted for 600-800 steps
    instead of registration's 2500, they render blurrier and their right poses check lower (the
    duck's in test_multi 0.62-0.72) than the product's bar of 0.7, which was set on fully fitted
    3DGOs (RESULTS.md). Tests of finding and posing run at the previous bar, 0.6."""
    return 0.6
