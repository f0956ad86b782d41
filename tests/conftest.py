import os

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def mmpost_home(tmp_path_factory):
    """A private cache for models and data, so tests never touch the user's cache."""
    home = os.environ.get("MMPOST_TEST_HOME") or str(tmp_path_factory.mktemp("mmpost_home"))
    os.environ["MMPOST_HOME"] = home
    return home


@pytest.fixture(scope="session")
def tiny_model_dir(mmpost_home):
    """The chart2code tiny Qwen2-VL, built offline into the test cache."""
    from mmpost.config import TrainConfig
    from mmpost.tasks.chart2code import Chart2Code

    return Chart2Code(TrainConfig()).model_path()


@pytest.fixture(scope="session")
def chart_reward():
    from mmpost.rewards.chart_render import ChartRender

    reward = ChartRender(workers=2)
    yield reward
    reward.close()


@pytest.fixture(scope="session")
def composed_model_dir(mmpost_home):
    """A composed LLaVA (tiny CLIP ViT + MLP projector + tiny Qwen2 LM), built offline."""
    return _composed(mmpost_home, "clip")


@pytest.fixture(scope="session")
def timm_composed_model_dir(mmpost_home):
    """A composed timm ConvNeXt tower + tiny Qwen2 LM (FastVLM layout), built offline."""
    return _composed(mmpost_home, "convnext_atto")


def _composed(home, tower):
    from pathlib import Path

    from mmpost.models.composed_vlm import build_composed_vlm

    corpus = ["Which differs? the second", "the first image", "Find the red circle."] * 20
    return build_composed_vlm(Path(home) / "models" / f"test-composed-{tower}", corpus, tower=tower, vocab_size=300)
