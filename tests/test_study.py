"""The study as one plan (issue 18): configs/study/paper.yaml covers every cell of Tables 3 and 4 and the distilled
models' evaluations; a plan with a shared output, a missing input or a cycle is refused, naming the study file and
the run key, before anything is sent."""

import re

import pytest
import yaml

from conftest import ROOT
from rlvsdistill.cli import main

PAPER_STUDY = ROOT / "configs" / "study" / "paper.yaml"
EVAL = "configs/paper/eval_qwen2.5_math_1.5b_math500.yaml"
SFT = "configs/paper/sft_qwen2.5_math_1.5b.yaml"


def plan(capsys, path):
    code = main(["study", "plan", str(path)])
    out, err = capsys.readouterr()
    return code, out, err


def study_file(tmp_path, runs, **extra):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({"cluster": "configs/cluster/single-node.yaml", **extra, "runs": runs}))
    return path


def test_the_paper_study_plans_every_cell_of_tables_3_and_4_and_the_distilled_evals(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    code, out, err = plan(capsys, "configs/study/paper.yaml")
    assert code == 0, err
    assert "no collision, no cycle" in out.splitlines()[0]
    study = yaml.safe_load(PAPER_STUDY.read_text())["runs"]
    listed = {line.split()[1] for line in out.splitlines()[2:]}
    assert listed == set(study)  # every run is in the printed plan
    table3 = [(r["table3"]["model"], r["table3"]["split"], r["table3"]["row"]) for r in study.values() if "table3" in r]
    assert sorted(table3) == sorted((m, s, row) for m in ("qwen2.5-math-1.5b", "qwen2.5-3b")
                                    for s in ("math500", "math-train") for row in ("base", "RL"))
    table4 = [tuple(r["table4"][k] for k in ("model", "student", "teacher", "split")) for r in study.values()
              if "table4" in r]
    rows = [("base", "-"), ("base", "base"), ("RL", "-"), ("RL", "RL"), ("base", "RL")]
    assert sorted(table4) == sorted((m, s, t, split) for m in ("qwen2.5-math-1.5b", "qwen2.5-3b")
                                    for s, t in rows for split in ("train", "test"))  # 10 rows x train/test
    # The distilled students are evaluated on the three splits, each after its own SFT run.
    distilled = {k: r for k, r in study.items() if k.startswith("eval-distilled-")}
    assert len(distilled) == 6
    for key in distilled:
        row = next(line for line in out.splitlines() if line.split()[1:2] == [key])
        assert re.search(r"\bsft-qwq32b-(1-5b|3b)\b", row)  # after the SFT run that makes its model
    for student in ("1-5b", "3b"):  # teacher sampling, then SFT, per student
        sft_row = next(line for line in out.splitlines() if line.split()[1:2] == [f"sft-qwq32b-{student}"])
        assert f"generate-qwq32b-for-{student}" in sft_row
    # GPUs x hours per run, and a total
    first = out.splitlines()[2].split()
    assert float(first[3]) * float(first[4]) == float(first[5])
    assert re.search(r"53 runs, [\d.]+ GPU-hours", out)


def test_a_shared_output_dir_is_refused_naming_both_runs(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    path = study_file(tmp_path, {"a": {"config": EVAL, "hours": 1},
                                 "b": {"config": EVAL, "hours": 1, "overrides": {"seed": 1}}})
    code, _, err = plan(capsys, path)
    assert code == 2
    assert f"{path}: runs.b: writes /data/runs/eval-qwen2.5_math_1.5b_math500, and runs.a writes" in err
    assert "give each its own output_dir" in err


def test_a_declared_continuation_needs_an_equal_config_hash(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    same = study_file(tmp_path, {"a": {"config": EVAL, "hours": 1},
                                 "b": {"config": EVAL, "hours": 1, "continues": "a"}})
    code, out, err = plan(capsys, same)
    assert code == 0, err
    assert re.search(r"^2\s+b\s.*\sa\s", out, re.M)  # b runs after the run it continues
    other = study_file(tmp_path, {"a": {"config": EVAL, "hours": 1},
                                  "b": {"config": EVAL, "hours": 1, "continues": "a", "overrides": {"seed": 1}}})
    code, _, err = plan(capsys, other)
    assert code == 2
    assert re.search(r"runs\.b: .*declared to continue one another, but their config hashes differ "
                     r"\([0-9a-f]{12} vs [0-9a-f]{12}\)", err)


def test_an_input_no_run_makes_is_refused_unless_listed_as_existing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    runs = {"ev": {"config": EVAL, "hours": 1, "overrides": {"model_name_or_path": "/data/runs/nowhere/final"}}}
    code, _, err = plan(capsys, study_file(tmp_path, runs))
    assert code == 2
    assert (f"{tmp_path}/study.yaml: runs.ev: model_name_or_path: /data/runs/nowhere/final is made by no run of "
            "the study and is not listed under existing:") in err
    code, _, err = plan(capsys, study_file(tmp_path, runs, existing=["nowhere"]))  # relative: under the root
    assert code == 0, err


def test_a_cycle_is_refused_naming_it(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    runs = {"ev": {"config": EVAL, "hours": 1, "overrides": {"model_name_or_path": "/data/runs/tuned/final",
                                                              "output_dir": "ev"}},
            "tuned": {"config": SFT, "hours": 1, "overrides": {"dataset_name": "/data/runs/ev/data.jsonl",
                                                                "output_dir": "tuned"}}}
    code, _, err = plan(capsys, study_file(tmp_path, runs))
    assert code == 2
    assert f"{tmp_path}/study.yaml: runs.ev: the runs form a cycle: ev -> tuned -> ev" in err


def test_a_filter_whose_sampling_differs_from_its_teacher_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    runs = {"teacher": {"config": "configs/paper/generate_qwq32b_math_train.yaml", "hours": 1},
            "student-eval": {"config": "configs/paper/eval_qwen2.5_3b_math_train.yaml", "hours": 1},
            "filter": {"config": "configs/paper/generate_qwq32b_for_qwen2.5_3b.yaml", "hours": 1,
                       "overrides": {"temperature": 0.7}}}
    code, _, err = plan(capsys, study_file(tmp_path, runs))
    assert code == 2
    assert "runs.filter: teacher_samples: runs.teacher samples with other settings (temperature: 0.6 there, 0.7 here)" \
        in err


def test_every_problem_of_a_bad_study_file_is_named(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    runs = {"Bad_Key": {"config": EVAL, "hours": 1}, "nohours": {"config": EVAL, "overrides": {"output_dir": "x"}},
            "typo": {"config": EVAL, "hours": 1, "tabel3": {}, "overrides": {"output_dir": "y"}}}
    code, _, err = plan(capsys, study_file(tmp_path, runs))
    assert code == 2
    assert "runs.Bad_Key: the key is the run name" in err
    assert "runs.nohours: hours: required" in err
    assert "runs.typo: tabel3: unknown key" in err


def test_report_paper_fills_tables_3_and_4_from_the_demo_studys_runs(tmp_path, tiny_model, capsys, monkeypatch):
    """The demo study's evaluation runs, made by `eval` with the demo's config on its task (a tiny model, a few
    problems): `report --paper --study` puts each finished run's numbers in its cells beside the paper's rows."""
    import json

    from conftest import run_cli
    from rlvsdistill.demo import write_task

    monkeypatch.chdir(ROOT)
    write_task(tmp_path / "task", pretrain=10, train=6, test=6)
    for run in ("eval-base", "eval-grpo"):  # eval-distilled is left unfinished
        proc = run_cli("-m", "rlvsdistill", "eval", "--config", "configs/demo/eval.yaml",
                       f"model_name_or_path={tiny_model}", f"dataset_name={tmp_path}/task/test.jsonl",
                       f"output_dir={tmp_path}/{run}", "n=4", "max_tokens=8")
        assert proc.returncode == 0, proc.stderr[-2000:]
    code = main(["report", "--paper", "--study", "configs/study/demo.yaml", "--root", str(tmp_path),
                 "--out", str(tmp_path / "paper")])
    out = capsys.readouterr().out
    assert code == 0
    md = (tmp_path / "paper" / "paper_tables.md").read_text()
    assert md in out and "## Table 3" in md and "## Table 4" in md
    base = json.loads((tmp_path / "eval-base" / "summary.json").read_text())
    grpo = json.loads((tmp_path / "eval-grpo" / "summary.json").read_text())
    pct = lambda x: f"{100 * x:.1f}%"  # noqa: E731
    assert (f"| Qwen2.5-Math-1.5B | MATH-500 | base | eval-base | 4 | {pct(base['accuracy'])} / 60.6% | "
            f"{pct(base['maj@n:n=4'])} / 72.0% | {pct(base['pass@k:k=4&n=4'])} / 97.2% |") in md
    assert f"| Qwen2.5-Math-1.5B | MATH-500 | RL | eval-grpo | 4 | {pct(grpo['accuracy'])} / 74.2% |" in md
    assert "| Qwen2.5-3B | MATH-500 | base | - | - | - / 54.9% |" in md  # a cell the demo does not make
    assert f"| Qwen2.5-Math-1.5B | base | - | - | - / 64.0% | eval-base | {pct(base['accuracy'])} / 62.6% |" in md
    assert "| Qwen2.5-Math-1.5B | base | base | - | - / 74.7% | - | - / 63.4% |" in md  # Table 4's 10 rows
    assert md.count("| Qwen2.5-") == 8 + 10
