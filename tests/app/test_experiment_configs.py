"""Smoke test: every config in experiments/configs/ loads and trains end to end on a small subsample."""

from pathlib import Path

import pytest
from pyro_sdlgm import load_run_config
from pyro_sdlgm.app.runs import train_run

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "experiments" / "configs").glob("*.toml"))


def test_there_are_configs():
    assert CONFIGS


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_trains_on_a_subsample(path, tmp_path):
    overrides = [f"run_dir={str(tmp_path / 'run')!r}", "training.epochs=1", "training.progress=false"]
    if load_run_config(path).task == "unsupervised":
        overrides.append("data.max_examples=200")
    config = load_run_config(path, overrides)
    result = train_run(config)
    assert result["metrics"].get("codes_over_cap", 0) == 0
    assert (tmp_path / "run" / "model.pt").is_file()
