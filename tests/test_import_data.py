"""`tdrm import-data`: each public layout (tests/data/public/) becomes a collect-shaped run
that `train-prm` trains on; bad records are one-line errors naming file, line and field."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import invoke, one_line_error
from test_prm import make_tiny_base

DATA = Path(__file__).parent / "data" / "public"
FILES = {
    "math-shepherd": DATA / "math_shepherd.jsonl",
    "trl": DATA / "trl.jsonl",
    "processbench": DATA / "processbench.json",
    "prm800k": DATA / "prm800k.jsonl",
    "tdrm-paper": DATA / "tdrm_paper.jsonl",
}
WITH_STEP_LABELS = ("math-shepherd", "trl", "processbench", "prm800k")
TINY = ["--max-steps", "1", "--batch-size", "4", "--report-to", "none", "--eval-fraction", "0.34"]


def rollouts(run: Path) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(run / "rollouts.parquet").to_pylist()


def manifest(run: Path) -> dict:
    return json.loads((run / "manifest.json").read_text())


def jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return path


def file_records(fmt: str) -> list[dict]:
    path = FILES[fmt]
    if path.suffix == ".json":
        return json.loads(path.read_text())
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def imported(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("imports")
    runs = {}
    for fmt, path in FILES.items():
        result = invoke("import-data", path, "--format", fmt, "--out", root / fmt)
        assert result.exit_code == 0, result.output
        assert result.stdout.strip() == str(root / fmt)
        runs[fmt] = root / fmt
    return runs


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    return make_tiny_base(tmp_path_factory.mktemp("base") / "model")


# ---------------------------------------------------------------- what the file says


def test_trl_rows_are_the_file(imported):
    rows = rollouts(imported["trl"])
    records = file_records("trl")
    assert [r["prompt"] for r in rows] == [r["prompt"] for r in records]
    assert [r["steps"] for r in rows] == [r["completions"] for r in records]
    assert [r["step_labels"] for r in rows] == [[float(v) for v in r["labels"]] for r in records]
    assert [r["correct"] for r in rows] == [int(r["labels"][-1]) for r in records]
    assert all(r["policy"] is None and r["step_truth"] is None for r in rows)


def test_math_shepherd_splits_like_trls_converter(imported):
    """The Math-Shepherd file holds the solutions of trl.jsonl: the question before
    'Step 1:', one step per tag (with its 'Step k:'), + / - as the label."""
    shepherd, trl = rollouts(imported["math-shepherd"]), file_records("trl")
    assert [r["prompt"] for r in shepherd] == [r["prompt"] for r in trl]
    assert [r["steps"] for r in shepherd] == [
        [f"Step {i + 1}: {s}" for i, s in enumerate(r["completions"])] for r in trl
    ]
    assert [r["step_labels"] for r in shepherd] == [[float(v) for v in r["labels"]] for r in trl]
    assert [r["correct"] for r in shepherd] == [int(r["labels"][-1]) for r in trl]
    assert manifest(imported["math-shepherd"])["metrics"]["source_tasks"] == {"GSM8K": 4, "MATH": 2}


def test_processbench_labels_are_one_before_the_first_error(imported):
    rows, records = rollouts(imported["processbench"]), file_records("processbench")
    assert [r["steps"] for r in rows] == [r["steps"] for r in records]
    assert [r["correct"] for r in rows] == [int(r["final_answer_correct"]) for r in records]
    for row, record in zip(rows, records, strict=True):
        first_wrong = record["label"]
        for t, (label, truth) in enumerate(zip(row["step_labels"], row["step_truth"], strict=True)):
            right = first_wrong == -1 or t < first_wrong
            assert (label, truth) == (float(right), int(right))


def test_prm800k_follows_the_chosen_completions(imported):
    rows = rollouts(imported["prm800k"])
    assert [(r["steps"], r["step_labels"], r["step_truth"], r["correct"]) for r in rows] == [
        (["I multiply 6 by 7.", "6 * 7 = 42.", "# Answer\n\n42"], [1.0] * 3, [1] * 3, 1),
        # no chosen completion: labelling stopped at the error it found
        (["I multiply 6 by 7.", "6 * 7 = 36."], [1.0, 0.0], [1, 0], 0),
        # the labeler's own step where every completion was rated -1
        (["3 + 4 = 7.", "# Answer\n\n7"], [1.0, 1.0], [1, 1], 1),
        (["3 + 4 = 7.", "# Answer\n\n8"], [1.0, 0.0], [1, 0], 0),
        (["2 * 5 = 10.", "# Answer\n\n10"], [1.0, 1.0], [1, 1], 1),
    ]
    assert [r["gold"] for r in rows] == ["42", "42", "7", "7", "10"]
    metrics = manifest(imported["prm800k"])["metrics"]
    assert (metrics["rows_read"], metrics["rows_left_out"], metrics["solutions"]) == (6, 1, 5)


def test_tdrm_paper_transitions_come_back_as_solutions(imported):
    rows = rollouts(imported["tdrm-paper"])
    records = [r["conversations"] for r in file_records("tdrm-paper")]
    finished = [r for r in records if r["done"]]
    assert [r["steps"] for r in rows] == [r["state1"].split("\n\n") for r in finished]
    assert [r["correct"] for r in rows] == [r["label"] for r in finished]
    assert all(r["step_labels"] is None for r in rows)


def test_problem_ids_group_a_question_and_count_its_solutions(imported):
    rows = rollouts(imported["trl"])
    by_question = {}
    for row in rows:
        by_question.setdefault(row["prompt"], []).append(row)
    assert len({r["problem_id"] for r in rows}) == len(by_question) == 3
    for group in by_question.values():
        assert len({r["problem_id"] for r in group}) == 1
        assert [r["sample_idx"] for r in group] == list(range(len(group)))


def test_the_run_records_where_its_data_came_from(imported, tmp_path):
    run = imported["processbench"]
    m = manifest(run)
    assert (m["stage"], m["status"]) == ("import-data", "complete")
    assert m["inputs"]["file"]["path"] == str(FILES["processbench"].resolve())
    metrics = m["metrics"]
    assert metrics["source"] == str(FILES["processbench"].resolve())
    assert metrics["format"] == "processbench"
    assert (metrics["rows_read"], metrics["rows_skipped"], metrics["solutions"]) == (5, 0, 5)
    assert json.loads((run / "metrics.json").read_text()) == metrics
    from tdrm_cli.report.terminal import key_metric

    assert key_metric(metrics) == "processbench: 5 solutions, 0 skipped"  # `tdrm runs`' column
    result = invoke("runs", run.parent)
    assert result.exit_code == 0, result.output
    assert "processbench" in result.output


def test_parquet_and_jsonl_import_alike(imported, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "trl.parquet"
    pq.write_table(pa.Table.from_pylist(file_records("trl")), path)
    result = invoke("import-data", path, "--format", "trl", "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert rollouts(tmp_path / "run") == rollouts(imported["trl"])


# ---------------------------------------------------------------- train-prm on the runs


@pytest.mark.parametrize("fmt", list(FILES))
def test_train_prm_trains_on_every_import(fmt, imported, tiny_base, tmp_path):
    losses = ["td", "mc"] if fmt in WITH_STEP_LABELS else ["td", "outcome"]
    for loss in losses:
        out = tmp_path / f"prm-{loss}"
        result = invoke(
            "train-prm", "--data", imported[fmt], "--base", tiny_base, "--loss", loss,
            "--out", out, *TINY,
        )  # fmt: skip
        assert result.exit_code == 0, (loss, result.output)
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["train_steps"] == 1 and math.isfinite(metrics["train_loss"])
        assert metrics["train_rows"] + metrics["eval_rows"] == len(rollouts(imported[fmt]))
        inputs = manifest(out)["inputs"]
        assert inputs["data"]["sha256"] is not None  # the import run, by its manifest


def test_train_prm_on_an_import_needs_base_and_labels(imported, tiny_base, tmp_path):
    one_line_error(
        invoke("train-prm", "--data", imported["trl"], "--out", tmp_path / "a", *TINY),
        "pass --base",
    )
    one_line_error(
        invoke(
            "train-prm",
            "--data",
            imported["tdrm-paper"],
            "--base",
            tiny_base,
            "--loss",
            "mc",
            "--out",
            tmp_path / "b",
            *TINY,
        ),  # fmt: skip
        "no step_labels",
    )


def test_bon_takes_only_collect_runs(imported):
    from tdrm_cli.errors import UsageError
    from tdrm_cli.solutions import rollouts_table

    with pytest.raises(UsageError, match="is a 'import-data' run, expected collect"):
        rollouts_table(imported["trl"], "samples", ("prompt",), ("collect",))


# ---------------------------------------------------------------- bad records


def ms_record(marks: str = "++", question: str = "What is 1 + 1?") -> dict:
    text = f"{question}\nStep 1: 1 + 1 = 2. ки\nStep 2: The answer is: 2 ки"
    label = text.replace("ки", marks[0], 1).replace("ки", marks[1], 1)
    return {"input": text, "label": label, "task": "GSM8K"}


def prm800k_record(rating=1, finish="solution", chosen=0) -> dict:
    step = {"completions": [{"text": "1 + 1 = 2.", "rating": rating}], "chosen_completion": chosen}
    return {
        "question": {"problem": "What is 1 + 1?", "ground_truth_answer": "2"},
        "label": {"steps": [{**step, "human_completion": None}], "finish_reason": finish},
    }


def tdrm_record(**fields) -> dict:
    base = {"question": "What is 1 + 1?", "state1": "Step 1: 2", "state2": "Step 1: 2"}
    return {"conversations": {**base, "reward": 0, "done": 1, "label": 1, **fields}}


TRL_GOOD = {"prompt": "What is 1 + 1?", "completions": ["1 + 1 = 2.", "2"], "labels": [True, True]}
PB_GOOD = {"problem": "What is 1 + 1?", "steps": ["1 + 1 = 2."], "label": -1}
PB_GOOD["final_answer_correct"] = True
ms_no_step_one = ms_record()
ms_no_step_one["input"] = ms_no_step_one["input"].replace("Step 1:", "First:")
ms_no_step_one["label"] = ms_no_step_one["label"].replace("Step 1:", "First:")

BAD = [
    (
        "math-shepherd",
        ms_record(),
        {**ms_record(), "label": ms_record("+?")["label"]},
        "field 'label'",
    ),
    ("math-shepherd", ms_record(), {"input": "What? Step 1: 2", "label": "x"}, "field 'input'"),
    ("math-shepherd", ms_record(), ms_no_step_one, "field 'input' has no 'Step 1:'"),
    ("math-shepherd", ms_record(), {"input": ms_record()["input"]}, "missing field 'label'"),
    ("trl", TRL_GOOD, {**TRL_GOOD, "labels": [True]}, "field 'labels' has 1 labels for 2"),
    ("trl", TRL_GOOD, {**TRL_GOOD, "labels": [True, "yes"]}, "field 'labels[1]'"),
    ("trl", TRL_GOOD, {**TRL_GOOD, "prompt": [{"role": "user"}]}, "field 'prompt'"),
    ("trl", TRL_GOOD, {**TRL_GOOD, "completions": ["ok", "  "]}, "field 'completions[1]' is blank"),
    ("processbench", PB_GOOD, {**PB_GOOD, "label": 3}, "field 'label' is 3, outside -1..0"),
    ("processbench", PB_GOOD, {**PB_GOOD, "steps": []}, "field 'steps' is empty"),
    (
        "processbench",
        PB_GOOD,
        {k: PB_GOOD[k] for k in ("problem", "steps", "label")},
        "missing field 'final_answer_correct'",
    ),  # fmt: skip
    (
        "prm800k",
        prm800k_record(),
        prm800k_record(rating=2),
        "field 'label.steps[0].completions[0].rating' is 2",
    ),  # fmt: skip
    ("prm800k", prm800k_record(), prm800k_record(finish="done"), "field 'label.finish_reason'"),
    (
        "prm800k",
        prm800k_record(),
        prm800k_record(chosen=3),
        "field 'label.steps[0].chosen_completion' is 3",
    ),  # fmt: skip
    ("tdrm-paper", tdrm_record(), tdrm_record(done="yes"), "field 'conversations.done'"),
    ("tdrm-paper", tdrm_record(), tdrm_record(label=0.5), "field 'conversations.label' is 0.5"),
    (
        "tdrm-paper",
        tdrm_record(),
        {"conversations": {"question": "q", "done": 0}},
        "missing field 'conversations.state1'",
    ),  # fmt: skip
    ("trl", TRL_GOOD, [1, 2], "expected a JSON object"),
]


@pytest.mark.parametrize(("fmt", "good", "bad", "message"), BAD)
def test_a_bad_record_names_file_line_and_field(fmt, good, bad, message, tmp_path):
    path = jsonl(tmp_path / "data.jsonl", [good, bad, good])
    out = tmp_path / "run"
    line = one_line_error(invoke("import-data", path, "--format", fmt, "--out", out))
    assert line.startswith(f"error: {path} line 2: {message}"), line
    assert line.endswith("(pass --skip-bad-rows to leave such records out)")
    assert not out.exists()


def test_bad_json_and_json_list_items_are_named_by_line(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps(TRL_GOOD) + "\n\n{not json\n")
    one_line_error(invoke("import-data", path, "--format", "trl"), f"{path} line 3: not valid JSON")
    listed = tmp_path / "bench.json"
    listed.write_text(json.dumps([PB_GOOD, PB_GOOD, {**PB_GOOD, "label": 7}], indent=2))
    bad_line = [i for i, t in enumerate(listed.read_text().splitlines(), 1) if t == "  {"][2]
    one_line_error(
        invoke("import-data", listed, "--format", "processbench", "--out", tmp_path / "r"),
        f"{listed} line {bad_line}: field 'label' is 7",
    )


def test_a_bad_parquet_row_is_named_by_row(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "trl.parquet"
    pq.write_table(pa.Table.from_pylist([TRL_GOOD, {**TRL_GOOD, "labels": [True]}]), path)
    one_line_error(invoke("import-data", path, "--format", "trl"), f"{path} row 2: field 'labels'")


def test_skip_bad_rows_counts_them(tmp_path):
    records = [TRL_GOOD, {**TRL_GOOD, "labels": [True]}, TRL_GOOD, "text", TRL_GOOD]
    path = jsonl(tmp_path / "data.jsonl", records)
    out = tmp_path / "run"
    result = invoke("import-data", path, "--format", "trl", "--skip-bad-rows", "--out", out)
    assert result.exit_code == 0, result.output
    logged = " ".join(result.stderr.split())  # rich wraps long lines
    assert f"skipped 2 bad records (first: {path} line 2: field 'labels'" in logged
    metrics = manifest(out)["metrics"]
    assert (metrics["rows_read"], metrics["rows_skipped"], metrics["solutions"]) == (5, 2, 3)
    assert metrics["skipped_examples"][1] == f"{path} line 4: expected a JSON object"
    assert len(rollouts(out)) == 3


def test_nothing_left_to_import_and_other_refusals(tmp_path):
    path = jsonl(tmp_path / "bad.jsonl", [{"x": 1}, {"y": 2}])
    one_line_error(
        invoke("import-data", path, "--format", "trl", "--skip-bad-rows", "--out", tmp_path / "r"),
        f"{path}: no solutions to import (2 records read, 2 skipped",
    )
    assert not (tmp_path / "r").exists()
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    one_line_error(invoke("import-data", empty, "--format", "trl"), f"{empty}: no records")
    one_line_error(
        invoke("import-data", tmp_path / "nope.jsonl", "--format", "trl"), "no such file"
    )
    one_line_error(invoke("import-data", path, "--format", "alpaca"), "--format alpaca: expected")
    one_line_error(invoke("import-data", path), "--format is required")


def test_a_complete_import_is_kept_unless_overwritten(tmp_path):
    out = tmp_path / "run"
    args = ("import-data", FILES["trl"], "--format", "trl", "--out", out)
    assert invoke(*args).exit_code == 0
    one_line_error(invoke(*args), "already holds a complete run")
    assert invoke(*args, "--overwrite").exit_code == 0


def test_command_line_end_to_end(tmp_path):
    """The installed entry point: stdout is the run folder, logs go to stderr."""
    out = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "tdrm_cli", "import-data", str(FILES["math-shepherd"]),
         "--format", "math-shepherd", "--out", str(out)],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{out}\n"
    assert "6 solutions, 3 problems, 6 math-shepherd records" in " ".join(done.stderr.split())
    assert len(rollouts(out)) == 6


def test_a_pipeline_imports_then_trains(tiny_base, tmp_path):
    """import-data is a pipeline stage: its run is the `@name` train-prm's --data takes."""
    import yaml

    recipe = tmp_path / "public.yaml"
    train = {"data": "@imported", "base": str(tiny_base), "loss": "td", "max_steps": 1}
    train.update(batch_size=4, report_to="none", eval_fraction=0.34)
    recipe.write_text(
        yaml.safe_dump(
            {
                "root": str(tmp_path / "runs"),
                "stages": [
                    {"name": "imported", "stage": "import-data",
                     "args": {"file": str(FILES["trl"]), "format": "trl"}},
                    {"name": "prm", "stage": "train-prm", "args": train},
                ],
            }
        )
    )  # fmt: skip
    result = invoke("pipeline", recipe)
    assert result.exit_code == 0, result.output
    assert manifest(tmp_path / "runs" / "prm")["status"] == "complete"
    assert manifest(tmp_path / "runs" / "imported")["metrics"]["solutions"] == 6
