"""The graded-solution record: one validator (the stricter rule per field), one separator rule."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tdrm_cli.solutions import graded, row_problem, separator_of
from tdrm_cli.steps import DEFAULT_SEPARATOR
from tdrm_cli.tasks.arith import ArithTask

GOOD = {
    "problem_id": "p0",
    "prompt": "2+3-1",
    "gold": "4",
    "sample_idx": 0,
    "steps": ["2+3=5", "5-1=4", "answer 4"],
    "answer": "4",
    "correct": 1,
    "step_labels": [0.5, 1.0, 1.0],
    "step_truth": [1, 1, 1],
}


def test_a_good_record_passes_as_lists_and_as_numpy_cells():
    assert row_problem(GOOD) is None
    as_read = {**GOOD, "steps": np.array(GOOD["steps"]), "step_truth": np.array([1, 1, 1])}
    assert row_problem(as_read) is None


@pytest.mark.parametrize(
    "change, message",
    [
        ({"problem_id": None}, "field 'problem_id' is empty"),
        ({"problem_id": 7}, "field 'problem_id' is 7, expected text"),
        ({"prompt": "  "}, "field 'prompt' is blank, expected the question text"),
        ({"gold": math.nan}, "field 'gold' is empty"),
        ({"sample_idx": 1.5}, "field 'sample_idx' is 1.5, expected an integer"),
        ({"sample_idx": True}, "field 'sample_idx' is True, expected an integer"),
        ({"answer": 4}, "field 'answer' is 4, expected text or null"),
        ({"correct": True}, "field 'correct' is True, expected 0 or 1"),
        ({"correct": 2}, "field 'correct' is 2, expected 0 or 1"),
        ({"steps": "2+3=5"}, "field 'steps' is a str, expected a list of strings"),
        ({"step_truth": [1, 2, 1]}, "field 'step_truth' holds 2 at step 1, expected 0 or 1"),
        ({"step_labels": [0.5, 1.0]}, "field 'step_labels' has 2 labels for 3 steps"),
        ({"step_labels": [0.5, math.nan, 1.0]}, "field 'step_labels' is NaN at step 1"),
        ({"step_labels": [0.5, 1.5, 1.0]}, "field 'step_labels' is 1.5 at step 1"),
    ],
)
def test_each_field_has_one_rule(change, message):
    assert row_problem({**GOOD, **change}).startswith(message)


def test_needed_per_step_fields_are_named_with_the_option_that_needs_them():
    row = {**GOOD, "step_labels": None, "step_truth": None}
    assert row_problem(row) is None
    assert row_problem(row, {"step_labels": "--loss mc"}) == (
        "field 'step_labels' is empty, but --loss mc needs it"
    )
    assert row_problem(row, {"step_truth": "--loss truth"}) == (
        "field 'step_truth' is empty, but --loss truth needs it"
    )


def test_only_the_fields_a_row_holds_are_checked():
    row = {k: GOOD[k] for k in ("problem_id", "prompt", "steps", "correct")}
    assert row_problem(row) is None


def test_separator_absent_or_null_is_the_default():
    assert separator_of({}) == separator_of({"separator": None}) == DEFAULT_SEPARATOR
    assert separator_of({"separator": " | "}) == " | "


def test_graded_splits_checks_and_marks_each_step():
    task = ArithTask()
    problem = task.problems("test", 1)[0]
    record = graded(task, problem, "not a step\n\nanswer nothing", DEFAULT_SEPARATOR)
    assert record["problem_id"] == problem.id and record["prompt"] == problem.question
    assert record["steps"] == ["not a step", "answer nothing"]
    assert record["correct"] == 0
    assert record["step_truth"] == task.step_truth(problem, record["steps"])
