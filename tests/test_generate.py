"""Teacher sampling sharded like evaluation (issue 12): an indexed Job's shards, resumable parts, one merge, the
filters after it; a killed shard resumes without redoing its finished parts; bad shards are named."""

import json

import pytest

from conftest import kill_shard_after_first_part, run_cli, write_yaml
from rlvsdistill.config import load_config
from rlvsdistill.io import UserError
from rlvsdistill.train.generate import main as generate
from rlvsdistill.train.generate import merge_main


def gen_values(model, problems, tmp_path, **extra):
    return {"model_name_or_path": str(model), "dataset_name": str(problems), "max_problems": 8,
            "prompt_template": "question_only", "backend": "hf", "n": 3, "max_tokens": 32, "seed": 5,
            "keep": "all", "max_per_problem": 2, "part_size": 1, "output_file": str(tmp_path / "distill.jsonl"),
            **extra}


def config(tmp_path, name, values):
    return load_config("generate", write_yaml(tmp_path / f"{name}.yaml", values))


@pytest.mark.slow
def test_sharded_generate_killed_resumes_and_merges_to_the_unsharded_output(tmp_path, tiny_model, sevens):
    values = gen_values(tiny_model, sevens / "problems.jsonl", tmp_path, num_shards=2)
    cfg_path = write_yaml(tmp_path / "gen.yaml", values)
    shard0 = tmp_path / "distill.samples" / "shards" / "shard-00000-of-00002"
    kill_shard_after_first_part("generate", cfg_path, shard0)
    finished = {p.name: p.stat().st_mtime_ns for p in shard0.glob("part-*.jsonl")}
    rerun = run_cli("-m", "rlvsdistill", "generate", "--config", str(cfg_path), "shard_index=0")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"{len(finished)} of 4 parts already finished, skipping them" in rerun.stderr
    assert all(shard0.joinpath(name).stat().st_mtime_ns == t for name, t in finished.items())  # not redone
    assert not (tmp_path / "distill.jsonl").exists()  # a shard alone writes no distillation data
    other = run_cli("-m", "rlvsdistill", "generate", "--config", str(cfg_path), env={"JOB_COMPLETION_INDEX": "1"})
    assert other.returncode == 0, other.stderr[-3000:]
    merged = run_cli("-m", "rlvsdistill", "generate-merge", "--config", str(cfg_path))
    assert merged.returncode == 0, merged.stderr[-3000:]
    stats = json.loads((tmp_path / "distill.jsonl.summary.json").read_text())
    assert (stats["samples"], stats["dropped_over_max_per_problem"], stats["kept"]) == (24, 8, 16)

    plain = tmp_path / "plain"
    generate(config(tmp_path, "plain", {**values, "num_shards": 1, "output_file": str(plain / "distill.jsonl")}))
    assert (tmp_path / "distill.samples" / "samples.jsonl").read_bytes() == \
        (plain / "distill.samples" / "samples.jsonl").read_bytes()  # record for record, byte for byte
    assert (tmp_path / "distill.jsonl").read_bytes() == (plain / "distill.jsonl").read_bytes()


def test_generate_refuses_a_shard_of_another_run_and_a_truncated_part(tmp_path, tiny_model, sevens):
    values = gen_values(tiny_model, sevens / "problems.jsonl", tmp_path, max_problems=4, max_tokens=8)
    generate(config(tmp_path, "first", values))
    shard = tmp_path / "distill.samples" / "shards" / "shard-00000-of-00001"
    # The same directory, sampled with another seed: its shard is not this run's.
    with pytest.raises(UserError, match=r"identity.json: this shard belongs to another run \(seed: 5 there, 6 here"):
        generate(config(tmp_path, "other", {**values, "seed": 6}))
    with pytest.raises(UserError, match=r"identity.json: this shard belongs to another run"):
        merge_main(config(tmp_path, "other", {**values, "seed": 6}))
    part = shard / "part-00002.jsonl"
    part.write_bytes(part.read_bytes()[:-40])  # cut short: a copy interrupted midway
    (tmp_path / "distill.jsonl").unlink()
    again = config(tmp_path, "again", values)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(UserError, match=r"part-00002.jsonl: 2 complete record\(s\), expected 3 \(truncated\?\)"):
        generate(again)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing half-written


def test_a_teacher_that_keeps_nothing_writes_no_file_and_says_why(tmp_path, tiny_model, sevens):
    values = gen_values(tiny_model, sevens / "problems.jsonl", tmp_path, max_problems=2, max_tokens=4,
                        keep="correct")  # an untrained model: nothing correct
    with pytest.raises(UserError, match=r"no sample passed the filters \(6 sampled, 6 incorrect"):
        generate(config(tmp_path, "g", values))
    assert not (tmp_path / "distill.jsonl").exists()  # the demo's marker for this stage stays absent
    assert json.loads((tmp_path / "distill.jsonl.summary.json").read_text())["dropped_incorrect"] == 6


def test_one_teacher_run_filtered_per_student_without_sampling_again(tmp_path, tiny_model, sevens):
    """Issue 18, why 4: the teacher is sampled once; each student's config only filters its merged samples
    (teacher_samples) into its own file, and one sampled with other settings is refused, naming the keys."""
    values = gen_values(tiny_model, sevens / "problems.jsonl", tmp_path, max_problems=4, max_tokens=8,
                        max_per_problem=None)
    generate(config(tmp_path, "teacher", values))
    samples = tmp_path / "distill.samples"
    before = {p: p.stat().st_mtime_ns for p in samples.rglob("*") if p.is_file()}
    student = {k: v for k, v in values.items() if k != "part_size"}
    student.update(teacher_samples=str(samples), output_file=str(tmp_path / "student.jsonl"), max_per_problem=1)
    stats = generate(config(tmp_path, "student", student))
    assert (stats["samples"], stats["kept"]) == (12, 4)  # all 12 samples read, one kept per problem
    assert len((tmp_path / "student.jsonl").read_text().splitlines()) == 4
    assert {p: p.stat().st_mtime_ns for p in samples.rglob("*") if p.is_file()} == before  # nothing sampled again
    with pytest.raises(UserError, match=r"teacher_samples: .* was sampled with other settings \(seed: 5 there, 6 here"):
        generate(config(tmp_path, "other", {**student, "seed": 6, "output_file": str(tmp_path / "x.jsonl")}))
    assert not (tmp_path / "x.jsonl").exists()
