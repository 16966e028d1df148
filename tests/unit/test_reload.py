"""whisperd.reload: a new configuration refused with its one-line reason, or resolved and compared."""

from __future__ import annotations

from pathlib import Path

import pytest

from whisperd import config
from whisperd.reload import ReloadRefused, plan, read_config


def _write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "whisperd.toml"
    path.write_text(text)
    return str(path)


def test_a_bad_file_is_refused_with_the_config_error(tmp_path):
    with pytest.raises(ReloadRefused, match="the file is empty"):
        read_config(_write(tmp_path, ""))
    with pytest.raises(ReloadRefused, match="nonsense: unknown section"):
        read_config(_write(tmp_path, "[nonsense]\n"))


def test_a_missing_model_is_refused_with_its_reason(tmp_path):
    missing = tmp_path / "gone.pt"
    with pytest.raises(ReloadRefused, match=f"model.name: {missing} does not exist"):
        read_config(_write(tmp_path, f'[model]\nname = "{missing}"\n'))


def test_a_good_file_is_read_and_planned_against_the_running_one(tmp_path):
    model = tmp_path / "model.pt"
    model.write_bytes(b"weights")
    new = read_config(_write(tmp_path, f'[model]\nname = "{model}"\n[workers]\ncount = 3\nthreads = 2\n'))
    running = config.parse({"model": {"name": str(model)}, "workers": {"count": 1, "threads": 1}})
    change = plan(running, new, gpus=0, cores=4)
    assert change.cfg.workers.count == 3 and change.layout.count == 3
    assert change.plan.threads == 2 and not change.plan.replace_workers
    assert plan(running, config.parse({"model": {"name": "tiny"}}), gpus=0, cores=4).plan.replace_workers
