"""`rlvsdistill grade`: outputs, gold lookup by id, and bad input (file:line errors, nothing written)."""

import json

import pytest

from conftest import MATH500, need
from rlvsdistill.cli import main


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_grade_with_problem_ids(tmp_path, capsys):
    problems = need(MATH500)
    first = [json.loads(line) for line in open(problems)][:2]
    rows = []
    for p in first:  # 4 samples each: the gold solution twice, a wrong box, an empty response
        for i, resp in enumerate([p["solution"], p["solution"], "\\boxed{-12345}", ""]):
            rows.append(json.dumps({"unique_id": p["unique_id"], "sample_index": i, "response": resp}))
    inp = write_lines(tmp_path / "responses.jsonl", rows)
    assert main(["grade", str(inp), "--out", str(tmp_path / "out"), "--problems", str(problems), "--workers", "2"]) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["accuracy"] == 0.5 and summary["pass@k:k=4&n=4"] == 1.0
    assert summary["verdicts"]["no_answer"] == 2 and summary["verdicts"]["correct"] == 4
    assert set(summary["by_level"]) == {str(p["level"]) for p in first}
    verdicts = [json.loads(line) for line in (tmp_path / "out" / "verdicts.jsonl").read_text().splitlines()]
    assert [v["verdict"]["status"] for v in verdicts[:4]] == ["correct", "correct", "wrong", "no_answer"]
    assert "accuracy" in capsys.readouterr().out


BAD_INPUTS = [
    # (lines, expected message fragment)
    (['{"gold": "1", "response": "\\\\boxed{1}"}', '{"gold": "1", "response": '], "responses.jsonl:2: not valid JSON"),
    (['{"gold": "1"}'], "responses.jsonl:1: missing field(s) response"),
    (['{"response": "x"}'], "responses.jsonl:1: needs a 'gold' answer or a problem id"),
    (['{"unique_id": "nope", "response": "x"}'], "problem id 'nope' not found"),
    (['[1, 2]'], "responses.jsonl:1: expected a JSON object"),
    (['{"gold": "1", "response": 5}'], "responses.jsonl:1: field 'response' must be a string"),
]


@pytest.mark.parametrize("lines,message", BAD_INPUTS)
def test_bad_input_names_file_and_line(tmp_path, capsys, lines, message):
    inp = write_lines(tmp_path / "responses.jsonl", lines)
    out = tmp_path / "out"
    assert main(["grade", str(inp), "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())


def test_k_above_n_fails_before_grading(tmp_path, capsys):
    inp = write_lines(tmp_path / "r.jsonl", ['{"gold": "1", "response": "\\\\boxed{1}"}'])
    assert main(["grade", str(inp), "--out", str(tmp_path / "out"), "--k", "1,4"]) == 2
    assert "n = 1" in capsys.readouterr().err
    assert not any((tmp_path / "out").iterdir())


def test_missing_input_file(tmp_path, capsys):
    assert main(["grade", str(tmp_path / "absent.jsonl"), "--out", str(tmp_path / "out")]) == 2
    assert "absent.jsonl: no such file" in capsys.readouterr().err


def test_lengths_in_tokens_with_a_tokenizer(tmp_path, tiny_model):
    from transformers import AutoTokenizer

    responses = ["Compute 3 + 4 = 7, so \\\\boxed{7}", "\\\\boxed{8}"]
    inp = write_lines(tmp_path / "r.jsonl", [f'{{"gold": "7", "response": "{r}"}}' for r in responses])
    out = tmp_path / "out"
    assert main(["grade", str(inp), "--out", str(out), "--tokenizer", str(tiny_model), "--length-unit", "tokens"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    tok = AutoTokenizer.from_pretrained(tiny_model)
    lengths = [len(tok(json.loads(f'"{r}"'), add_special_tokens=False)["input_ids"]) for r in responses]
    assert summary["length_unit"] == "tokens"
    assert summary["length"] == {"mean": sum(lengths) / 2, "mean_correct": lengths[0], "mean_wrong": lengths[1]}


def test_lengths_in_characters_by_default_and_tokens_only_where_counted(tmp_path, capsys):
    rows = ['{"gold": "7", "response": "so \\\\boxed{7}", "num_tokens": 4}', '{"gold": "7", "response": "\\\\boxed{8}"}']
    inp = write_lines(tmp_path / "r.jsonl", rows)
    assert main(["grade", str(inp), "--out", str(tmp_path / "chars")]) == 0
    summary = json.loads((tmp_path / "chars" / "summary.json").read_text())
    assert summary["length_unit"] == "chars"
    assert summary["length"] == {"mean": (12 + 9) / 2, "mean_correct": len("so \\boxed{7}"), "mean_wrong": 9}
    assert main(["grade", str(inp), "--out", str(tmp_path / "tokens"), "--length-unit", "tokens"]) == 2
    assert "--length-unit tokens: 1 record(s) of" in capsys.readouterr().err  # the second has no num_tokens
    assert main(["grade", str(inp), "--out", str(tmp_path / "tok"), "--tokenizer", "/nonexistent"]) == 2
    assert "add --length-unit tokens" in capsys.readouterr().err
    assert not (tmp_path / "tokens" / "summary.json").exists() and not (tmp_path / "tok" / "summary.json").exists()


def test_keyword_match_option_counts_words_or_substrings(tmp_path):
    responses = ["Okay, look at the token: ok. \\\\boxed{7}", "Hmm, hmmm. \\\\boxed{8}"]
    inp = write_lines(tmp_path / "r.jsonl", [f'{{"gold": "7", "response": "{r}"}}' for r in responses])
    per_response = {}
    for match in ("word", "substring"):
        assert main(["grade", str(inp), "--out", str(tmp_path / match), "--keyword-match", match]) == 0
        summary = json.loads((tmp_path / match / "summary.json").read_text())
        assert summary["keyword_match"] == match
        per_response[match] = summary["keywords_per_response"]
    assert per_response["word"]["ok"] == {"correct": 1.0, "wrong": 0.0}
    assert per_response["substring"]["ok"] == {"correct": 4.0, "wrong": 0.0}  # Okay, look, token, ok
    assert per_response["word"]["hmm"] == {"correct": 0.0, "wrong": 1.0}
    assert per_response["substring"]["hmm"] == {"correct": 0.0, "wrong": 2.0}
    with pytest.raises(SystemExit) as exit_:
        main(["grade", str(inp), "--out", str(tmp_path / "x"), "--keyword-match", "regex"])
    assert exit_.value.code == 2 and not (tmp_path / "x").exists()
