"""Named Hub datasets: each loads by its id at a pinned revision; tested on rows the tests ship (nothing is
downloaded in tests), through the same loader the jobs use."""

import json

import pytest

from conftest import ROOT, write_yaml
from rlvsdistill.config import check_values
from rlvsdistill.data import DATASETS, load_problems

FIXTURE = ROOT / "tests" / "fixtures" / "aime2025_rows.jsonl"


@pytest.fixture
def hub(monkeypatch):
    """`datasets.load_dataset` answering from the shipped fixture; records how it was called."""
    import datasets

    calls = []

    def load_dataset(path, name=None, revision=None, split=None, **kwargs):
        calls.append({"path": path, "name": name, "revision": revision, "split": split})
        rows = [json.loads(line) for line in FIXTURE.read_text().splitlines()]
        return datasets.Dataset.from_list(rows)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


def test_aime2025_loads_by_hub_id_at_a_pinned_revision(hub):
    problems = load_problems("aime2025")
    assert hub == [{"path": "yentinglin/aime_2025", "name": None,
                    "revision": "6f71d77b0b89b9dabe07ab466c51df33f514df7f", "split": "train"}]
    assert [(p.id, p.answer) for p in problems] == [("0", "70"), ("3", "117")]  # the dataset's own ids
    assert problems[0].problem.startswith("Find the sum of all integer bases")
    assert load_problems("aime2025", max_problems=1) == problems[:1]


def test_every_named_dataset_is_pinned_to_a_commit():
    for name, spec in DATASETS.items():
        assert len(spec.revision) == 40 and int(spec.revision, 16) >= 0, name


def test_aime2025_eval_configs_validate(tmp_path):
    configs = sorted((ROOT / "configs" / "paper").glob("eval_*_aime2025.yaml"))
    assert len(configs) == 7  # the two bases, their RL models, the two distilled students, QwQ-32B
    import yaml

    for path in configs:
        values = yaml.safe_load(path.read_text())
        assert values["dataset_name"] == "aime2025"
        assert check_values("eval", values, hardware=False) == []
    bad = write_yaml(tmp_path / "e.yaml", {"model_name_or_path": "m", "dataset_name": "aime2026", "output_dir": "o"})
    assert any("dataset_name: 'aime2026' is neither" in p for p in check_values("eval", yaml.safe_load(bad.read_text()),
                                                                                 hardware=False))
