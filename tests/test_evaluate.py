"""Evaluation: sharding, kill and resume, merge checks, metrics from the records, the report, bad input."""

import json
import re
import shutil
import sys

import pytest

from conftest import ROOT, kill_shard_after_first_part, run_cli, write_yaml
from rlvsdistill.cli import main
from rlvsdistill.config import load_config
from rlvsdistill.evaluate import merge, run_shard
from rlvsdistill.io import UserError


def eval_values(model, problems, out, **extra):
    return {"model_name_or_path": str(model), "dataset_name": str(problems), "prompt_template": "question_only",
            "backend": "hf", "n": 4, "temperature": 0.9, "max_tokens": 16, "seed": 3, "part_size": 3,
            "output_dir": str(out), **extra}


def config(tmp_path, name, values):
    return load_config("eval", write_yaml(tmp_path / f"{name}.yaml", values))


def records(run_dir):
    return [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def unsharded(tmp_path_factory, teacher, sevens):
    """One unsharded evaluation of the teacher on the 24 `sevens` problems."""
    tmp = tmp_path_factory.mktemp("unsharded")
    cfg = config(tmp, "eval", eval_values(teacher / "final", sevens / "problems.jsonl", tmp / "run"))
    run_shard(cfg)
    merge(cfg)
    return tmp / "run"


@pytest.mark.slow
def test_sharded_killed_rerun_and_merged_equals_unsharded(tmp_path, teacher, sevens, unsharded):
    values = eval_values(teacher / "final", sevens / "problems.jsonl", tmp_path / "run", num_shards=2,
                         max_tokens=48)
    cfg_path = write_yaml(tmp_path / "eval.yaml", values)
    shard0 = tmp_path / "run" / "shards" / "shard-00000-of-00002"
    kill_shard_after_first_part("eval", cfg_path, shard0)
    finished_before = sorted(p.name for p in shard0.glob("part-*.jsonl"))
    rerun = run_cli("-m", "rlvsdistill", "eval", "--config", str(cfg_path), "shard_index=0")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"{len(finished_before)} of 4 parts already finished, skipping them" in rerun.stderr
    # The other shard as an indexed Job's pod would run it: the index from JOB_COMPLETION_INDEX.
    other = run_cli("-m", "rlvsdistill", "eval", "--config", str(cfg_path), env={"JOB_COMPLETION_INDEX": "1"})
    assert other.returncode == 0, other.stderr[-3000:]
    merged = run_cli("-m", "rlvsdistill", "eval-merge", "--config", str(cfg_path))
    assert merged.returncode == 0, merged.stderr[-3000:]
    unsharded_cfg = config(tmp_path, "plain", {**values, "num_shards": 1, "output_dir": str(tmp_path / "plain")})
    run_shard(unsharded_cfg)
    merge(unsharded_cfg)
    assert records(tmp_path / "run") == records(tmp_path / "plain")


def test_merge_refuses_missing_and_duplicated_shards(tmp_path, teacher, sevens):
    values = eval_values(teacher / "final", sevens / "problems.jsonl", tmp_path / "run", num_shards=2)
    run_shard(config(tmp_path, "s0", {**values, "shard_index": 0}))
    with pytest.raises(UserError, match=r"shard\(s\) \[1\] of 2 are missing or incomplete"):
        merge(config(tmp_path, "m", values))
    run_shard(config(tmp_path, "s1", {**values, "shard_index": 1}))
    shard1 = tmp_path / "run" / "shards" / "shard-00001-of-00002"
    shutil.copy(shard1 / "part-00000.jsonl", shard1 / "part-00099.jsonl")  # the same samples written twice
    with pytest.raises(UserError, match=r"part-00099.jsonl:1: sample \('p1', 0\) duplicates part-00000.jsonl:1"):
        merge(config(tmp_path, "m", values))


def test_summary_equals_the_metric_functions_on_the_records(unsharded):
    from rlvsdistill.metrics import pass_at_k, summarize
    from rlvsdistill.scoring import samples_from_records

    summary = json.loads((unsharded / "summary.json").read_text())
    recs = records(unsharded)
    recomputed = summarize(samples_from_records(recs))
    assert {k: v for k, v in summary.items() if k != "run"} == json.loads(json.dumps(recomputed))
    sys.path.insert(0, str(ROOT / "tests" / "benchmarks"))
    from bench_scale import old_summarize  # the in-memory summary from before the streaming merge

    before = json.loads(json.dumps(old_summarize(samples_from_records(recs))))
    assert all(summary[k] == v for k, v in before.items()) and summary.keys() - before.keys() == {"run"}
    assert len(recs) == 24 * 4 and [r["sample_index"] for r in recs[:4]] == [0, 1, 2, 3]
    counts = summary["correct_counts"]
    assert 0 < summary["accuracy"] < 1  # the teacher is right often, not always: the metrics are not trivial
    for k in (1, 2, 4):
        expected = sum(pass_at_k(4, c, k) for c in counts.values()) / len(counts)
        assert summary[f"pass@k:k={k}&n=4"] == pytest.approx(expected)
    assert summary["by_level"].keys() == {"1", "2", "3"}


def test_report_on_two_runs(tmp_path, unsharded, tiny_model, sevens):
    base = tmp_path / "base"
    cfg = config(tmp_path, "base", eval_values(tiny_model, sevens / "problems.jsonl", base))
    run_shard(cfg)
    merge(cfg)
    out = tmp_path / "report"
    assert main(["report", str(base), str(unsharded), "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    for png in ("pass_at_k.png", "success_by_bin.png", f"transitions_{unsharded.name}.png", "length_by_bin.png"):
        assert (out / png).stat().st_size > 1000 and png in md
    for run in (base, unsharded):
        s = json.loads((run / "summary.json").read_text())
        row = re.search(rf"^\| {run.name} \| [^|]+ \| (\d+) \| (\d+) \| ([\d.]+) \| ([\d.]+) \|", md, re.M)
        assert row, md
        assert (int(row[1]), int(row[2])) == (s["problems"], 4)
        assert row[3] == f"{s['accuracy']:.3f}"  # the table shows the result file's value
        assert row[4] == f"{s['pass@k:k=4&n=4']:.3f}"


BAD_EVAL = [
    # (change, fragment of the error)
    ({"dataset_name": "gsm8k"},
     "dataset_name: 'gsm8k' is neither math500, math_train, aime2025 nor a .jsonl/.parquet path"),
    ({"model_name_or_path": "/nonexistent/model"}, "model_name_or_path: /nonexistent/model does not exist"),
    ({"ks": [1, 8]}, "ks: pass@8 needs at least 8 samples per problem, but n = 4"),
    ({"shard_index": 2, "num_shards": 2}, "shard_index: 2 is outside 0..1"),
    ({"keyword_match": "regex"}, "keyword_match: 'regex' is not one of word, substring"),
    ({"length_unit": "words"}, "length_unit: 'words' is not one of chars, tokens"),
]


@pytest.mark.parametrize("change,fragment", BAD_EVAL)
def test_bad_eval_config_fails_before_generation(tmp_path, tiny_model, sevens, capsys, change, fragment):
    cfg = write_yaml(tmp_path / "e.yaml", {**eval_values(tiny_model, sevens / "problems.jsonl", tmp_path / "run"),
                                           **change})
    assert main(["eval", "--config", str(cfg)]) == 2
    assert fragment in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_unwritable_output_dir_fails_before_generation(tmp_path, tiny_model, sevens, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    cfg = write_yaml(tmp_path / "e.yaml", eval_values(tiny_model, sevens / "problems.jsonl", blocker / "run"))
    assert main(["eval", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "output_dir: " in err and "is not writable" in err
