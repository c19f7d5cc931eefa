"""File tasks: JSONL / JSONL.gz / Parquet rows, field mapping, splits, one-line errors."""

from __future__ import annotations

import gzip
import json

import pytest

from conftest import invoke
from tdrm_cli.errors import UsageError
from tdrm_cli.tasks import load_task
from tdrm_cli.tasks.files import FileTask


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


GSM_ROWS = [
    {
        "problem": "Natalia sold 48 clips in April and half as many in May. How many in total?",
        "solution": "In May she sold 48/2 = 24 clips.\nIn total 48 + 24 = 72.\n#### 72",
    },
    {"problem": "What is half of one?", "solution": "\\frac{1}{2}"},
    {"problem": "A shirt costs $1,250. What is the price?", "solution": 1250},
]


def test_jsonl_with_field_mapping(tmp_path):
    path = write_jsonl(tmp_path / "gsm.jsonl", GSM_ROWS)
    task = load_task(f"{path}:question=problem,answer=solution,test_fraction=0")
    assert isinstance(task, FileTask)
    problems = task.problems("train", 10)
    assert [p.gold for p in problems] == ["72", "1/2", "1250"]
    assert [p.id for p in problems] == ["gsm-1", "gsm-2", "gsm-3"]
    assert task.reference_steps(problems[0]) == [
        "In May she sold 48/2 = 24 clips.",
        "In total 48 + 24 = 72.",
        "#### 72",
    ]
    assert task.reference_steps(problems[1]) == ["#### 1/2"]
    for p in problems:  # every reference solution passes its own check
        assert task.is_correct(p, task.extract_answer(task.reference_steps(p)))
    assert task.is_correct(problems[1], task.extract_answer(["so the answer is \\boxed{0.5}"]))
    assert not task.is_correct(problems[0], task.extract_answer(["The answer is 71."]))
    assert task.step_truth(problems[0], ["x"]) is None
    assert task.problems("train", 2) == problems[:2]


def test_split_column_and_hashed_split(tmp_path):
    rows = [
        {"question": f"q{i}", "answer": str(i), "split": "test" if i % 4 == 0 else "train"}
        for i in range(40)
    ]
    path = write_jsonl(tmp_path / "s.jsonl", rows)
    task = load_task(path)  # a `split` field is used when present
    assert [p.question for p in task.problems("test", 100)] == [f"q{i}" for i in range(0, 40, 4)]

    plain = [{"question": f"question {i}", "answer": str(i)} for i in range(400)]
    path = write_jsonl(tmp_path / "h.jsonl", plain)
    train = {p.question for p in load_task(f"{path}:test_fraction=0.25").problems("train", 1000)}
    test = {p.question for p in load_task(f"{path}:test_fraction=0.25").problems("test", 1000)}
    assert not train & test and len(train | test) == 400
    assert 60 < len(test) < 140
    # the split of a question does not depend on the other rows
    write_jsonl(tmp_path / "h2.jsonl", plain[::-1][:200])
    test2 = {
        p.question
        for p in load_task(f"{tmp_path / 'h2.jsonl'}:test_fraction=0.25").problems("test", 1000)
    }
    assert test2 == {q for q in test if int(q.split()[1]) >= 200}


def test_parquet_and_gzip(tmp_path):
    import pandas as pd

    pd.DataFrame(GSM_ROWS).astype({"solution": str}).to_parquet(tmp_path / "gsm.parquet")
    task = load_task(f"{tmp_path / 'gsm.parquet'}:question=problem,answer=solution,test_fraction=0")
    assert [p.gold for p in task.problems("train", 5)] == ["72", "1/2", "1250"]
    assert task.problems("train", 5)[0].id == "gsm-1"

    with gzip.open(tmp_path / "gsm.jsonl.gz", "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(row) + "\n" for row in GSM_ROWS)
    task = load_task(
        f"{tmp_path / 'gsm.jsonl.gz'}:question=problem,answer=solution,test_fraction=0"
    )
    assert [p.gold for p in task.problems("train", 5)] == ["72", "1/2", "1250"]


def bad_files(tmp_path):
    rows = [{"question": "a", "answer": "1"}, {"question": "b"}]
    missing = write_jsonl(tmp_path / "missing.jsonl", rows)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"question": "a", "answer": "1"}\n\n{"question": "b", "answer": \n')
    binary = tmp_path / "latin1.jsonl"
    binary.write_bytes('{"question": "caf\u00e9", "answer": "1"}\n'.encode("latin-1"))
    array = write_jsonl(tmp_path / "array.jsonl", [[1, 2]])
    null = write_jsonl(tmp_path / "null.jsonl", [{"question": "a", "answer": None}])
    nested = write_jsonl(tmp_path / "nested.jsonl", [{"question": "a", "answer": {"x": 1}}])
    split = write_jsonl(
        tmp_path / "split.jsonl", [{"question": "a", "answer": "1", "split": "validation"}]
    )
    nosplit = write_jsonl(
        tmp_path / "nosplit.jsonl",
        [{"question": "a", "answer": "1", "split": "train"}, {"question": "b", "answer": "2"}],
    )
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    gz = tmp_path / "fake.jsonl.gz"
    gz.write_text("not gzip")
    parquet = tmp_path / "bad.parquet"
    parquet.write_text("not parquet")
    return [
        (missing, f"{missing} line 2: missing field 'answer'"),
        (str(broken), f"{broken} line 3: not valid JSON"),
        (str(binary), f"{binary} line 1: not valid UTF-8"),
        (array, f"{array} line 1: expected a JSON object, got list"),
        (null, f"{null} line 1: field 'answer' is empty"),
        (nested, f"{nested} line 1: field 'answer' is a dict, expected text or a number"),
        (split, f"{split} line 1: field 'split' is 'validation', expected train or test"),
        (nosplit, f"{nosplit} line 2: missing field 'split'"),
        (f"{missing}:answer=solution", f"{missing} line 1: missing field 'solution'"),
        (
            f"{missing}:bogus=1",
            f"--task {missing}: unknown option 'bogus' (known: question, answer, split, test_fraction)",
        ),
        (
            f"{missing}:test_fraction=2",
            f"--task {missing}: test_fraction must be a number in [0, 1]",
        ),
        (str(empty), f"--task {empty}: the file has no rows"),
        (str(tmp_path / "nope.jsonl"), f"--task {tmp_path / 'nope.jsonl'}: no such file"),
    ] + [(str(gz), None), (str(parquet), None)]


def test_bad_files_raise_one_line_usage_errors(tmp_path):
    for spec, message in bad_files(tmp_path):
        with pytest.raises(UsageError) as info:
            load_task(spec)
        text = str(info.value)
        assert "\n" not in text
        if message is not None:
            assert text == message


def test_parquet_missing_column_names_row_and_field(tmp_path):
    import pandas as pd

    pd.DataFrame({"question": ["a", "b"], "answer": ["1", None]}).to_parquet(tmp_path / "p.parquet")
    with pytest.raises(UsageError, match=r"p\.parquet row 2: field 'answer' is empty$"):
        load_task(str(tmp_path / "p.parquet"))
    with pytest.raises(UsageError, match=r"p\.parquet row 1: missing field 'solution'$"):
        load_task(f"{tmp_path / 'p.parquet'}:answer=solution")


def test_cli_reports_bad_row_and_exits_2(tmp_path):
    path = write_jsonl(
        tmp_path / "data.jsonl", [{"question": "a", "answer": "1"}] * 6 + [{"question": "b"}]
    )
    result = invoke("sft", "--task", path, "--out", tmp_path / "run")
    assert result.exit_code == 2
    assert result.stderr.strip() == f"error: {path} line 7: missing field 'answer'"
    assert "Traceback" not in result.output and not (tmp_path / "run").exists()

    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"question": "a", "answer": "1"}\n{oops\n')
    result = invoke("sft", "--task", broken, "--out", tmp_path / "run")
    assert result.exit_code == 2
    assert result.stderr.strip() == f"error: {broken} line 2: not valid JSON"


def test_file_split_too_small(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"question": "a", "answer": "1"}])
    task = load_task(f"{path}:test_fraction=0")
    assert len(task.problems("train", 100)) == 1
    with pytest.raises(UsageError, match="no test rows"):
        task.problems("test", 5)
