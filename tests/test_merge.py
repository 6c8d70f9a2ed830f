"""The streaming eval-merge on synthetic shards (no model): equal to the previous in-memory merge, memory that
does not grow with the samples, and bad shards refused by name with nothing written."""

import json
import sys
import tracemalloc
from pathlib import Path

import pytest

from conftest import ROOT
from rlvsdistill.config import EvalConfig
from rlvsdistill.evaluate import merge
from rlvsdistill.io import UserError

sys.path.insert(0, str(ROOT / "tests" / "benchmarks"))
from bench_scale import old_merge, synthesize  # noqa: E402


def synthetic(tmp_path, problems, n, shards=4, **extra):
    values = synthesize(tmp_path, problems, n, shards, mean_tokens=extra.pop("mean_tokens", 20), **extra)
    return EvalConfig(**values)


def test_streaming_merge_equals_the_old_merge_on_128k_samples(tmp_path):
    cfg = synthetic(tmp_path, 500, 256)
    old_dir = tmp_path / "old"
    old_dir.mkdir()
    old = old_merge(cfg, old_dir)
    new = merge(cfg)
    run = Path(cfg.output_dir)
    written = json.loads((run / "summary.json").read_text())
    assert written == json.loads((old_dir / "summary.json").read_text())
    assert new.keys() == old.keys()
    for key in old:
        assert new[key] == old[key], key
    assert (run / "samples.jsonl").read_bytes() == (old_dir / "samples.jsonl").read_bytes()
    assert written["problems"] == 500 and sum(written["verdicts"].values()) == 128_000
    # Not a degenerate run: the synthetic difficulties fill every bin and both correct and wrong samples exist.
    assert all(row["problems"] > 0 for row in written["difficulty_bins"])
    assert 0.2 < written["accuracy"] < 0.8 and written["maj@n:n=256"] != written["accuracy"]


def _peak_merge_bytes(cfg, fn) -> int:
    tracemalloc.start()
    try:
        fn(cfg)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_merge_memory_grows_with_the_problems_not_the_samples(tmp_path):
    small = synthetic(tmp_path / "small", 32, 32, part_size=4)
    large = synthetic(tmp_path / "large", 256, 32, part_size=4)  # 8x the problems and samples
    added = (256 - 32) * 32
    (tmp_path / "o1").mkdir(), (tmp_path / "o2").mkdir()
    old_growth = (_peak_merge_bytes(large, lambda c: old_merge(c, tmp_path / "o2"))
                  - _peak_merge_bytes(small, lambda c: old_merge(c, tmp_path / "o1"))) / added
    new_growth = (_peak_merge_bytes(large, merge) - _peak_merge_bytes(small, merge)) / added
    # The new merge keeps one problem's aggregates and its per_problem block of summary.json (~5 KB with the 27
    # Table 5 keywords, i.e. ~150 bytes per sample at n = 32, and ~20 bytes at the paper's n = 256); the old one
    # kept every record (a whole response each).
    assert new_growth < 250 and old_growth > 10 * new_growth, (new_growth, old_growth)


def _outputs(cfg):
    run = Path(cfg.output_dir)
    return sorted(p.name for p in run.iterdir() if p.is_file())


def _shard(cfg, index=0):
    return Path(cfg.output_dir) / "shards" / f"shard-{index:05d}-of-{cfg.num_shards:05d}"


def test_a_truncated_part_is_named_and_nothing_is_written(tmp_path):
    cfg = synthetic(tmp_path, 16, 8, shards=2, part_size=2)
    part = _shard(cfg, 1) / "part-00001.jsonl"
    data = part.read_bytes()
    part.write_bytes(data[: len(data) // 2])  # cut inside a record
    lineno = data[: len(data) // 2].count(b"\n") + 1
    with pytest.raises(UserError, match=rf"part-00001.jsonl:{lineno}: not valid JSON"):
        merge(cfg)
    assert _outputs(cfg) == []  # no samples.jsonl, summary.json or marker, and no temporary file left
    lines = data.splitlines(keepends=True)
    part.write_bytes(b"".join(lines[:-3]))  # cut at a line boundary: a problem is short of samples
    with pytest.raises(UserError, match=r"1 problem\(s\) do not have n = 8 samples, e.g. \{'.*': 5\} "
                                        r"\('.*' ends at .*part-00001.jsonl:13: a truncated part\?\)"):
        merge(cfg)
    assert _outputs(cfg) == []


def test_a_shard_from_another_run_is_refused(tmp_path):
    cfg = synthetic(tmp_path, 16, 8, shards=2, part_size=2)
    manifest = _shard(cfg, 1) / "identity.json"
    recorded = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**recorded, "seed": 7}))
    with pytest.raises(UserError, match=r"shard-00001-of-00002/identity.json: this shard belongs to another run "
                                        r"\(seed: 7 there, 0 here\)"):
        merge(cfg)
    manifest.write_text(json.dumps(recorded))
    # A part of shard 0 copied into shard 1: its problems belong to shard 0.
    (_shard(cfg, 1) / "part-00009.jsonl").write_bytes((_shard(cfg, 0) / "part-00000.jsonl").read_bytes())
    with pytest.raises(UserError, match=r"part-00009.jsonl:1: problem '.*' belongs to shard 0, not 1"):
        merge(cfg)
    assert _outputs(cfg) == []


def test_parts_out_of_order_are_refused(tmp_path):
    cfg = synthetic(tmp_path, 16, 8, shards=2, part_size=2)
    shard = _shard(cfg, 0)
    first, second = shard / "part-00000.jsonl", shard / "part-00001.jsonl"
    a, b = first.read_bytes(), second.read_bytes()
    first.write_bytes(b), second.write_bytes(a)  # as if written by runs with different problem sets
    with pytest.raises(UserError, match=r"part-00001.jsonl:1: sample .* is out of problem order in its shard"):
        merge(cfg)
    assert _outputs(cfg) == []


def test_resuming_a_shard_with_another_config_is_refused_before_any_work(tmp_path):
    from dataclasses import replace

    from rlvsdistill.evaluate import run_shard

    cfg = synthetic(tmp_path, 16, 8, shards=2, part_size=2)
    part = _shard(cfg, 0) / "part-00000.jsonl"
    before = part.read_bytes()
    (_shard(cfg, 0) / ".complete").unlink()  # as if killed midway
    with pytest.raises(UserError, match=r"shard-00000-of-00002/identity.json: this shard belongs to another run "
                                        r"\(n: 8 there, 16 here; seed: 0 there, 5 here\)"):
        run_shard(replace(cfg, n=16, seed=5, shard_index=0))  # fails before loading the (absent) model
    assert part.read_bytes() == before and not (Path(cfg.output_dir) / "run_record.json").exists()


def test_merge_measures_as_the_config_says(tmp_path):
    """keyword_match and length_unit (config keys) reach the merge: the summary equals ``summarize`` with them, and
    merging a finished run again with other values rewrites its summary (no sampling again)."""
    from rlvsdistill.io import read_jsonl
    from rlvsdistill.metrics import summarize
    from rlvsdistill.scoring import samples_from_records

    cfg = synthetic(tmp_path, 16, 8, shards=2)
    first = merge(cfg)
    assert (first["keyword_match"], first["length_unit"]) == ("word", "chars")
    cfg.keyword_match, cfg.length_unit = "substring", "tokens"
    summary = merge(cfg)
    assert json.loads((Path(cfg.output_dir) / "summary.json").read_text())["length_unit"] == "tokens"
    records = [rec for _, rec in read_jsonl(Path(cfg.output_dir) / "samples.jsonl")]
    expected = summarize(samples_from_records(records), keyword_match="substring", length_unit="tokens")
    assert (summary["keyword_match"], summary["length_unit"]) == ("substring", "tokens")
    assert summary["per_problem"] == json.loads(json.dumps(expected["per_problem"]))
    assert summary["length"]["mean"] == sum(r["num_tokens"] for r in records) / len(records)
