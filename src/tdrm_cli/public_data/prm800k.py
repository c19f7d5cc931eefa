"""PRM800K (openai/prm800k, `prm800k/data/phase{1,2}_{train,test}.jsonl`): human step ratings.

A record is one labelled solution: `question.problem`, `question.ground_truth_answer`,
and `label.steps[]`, each with its candidate `completions[]` (`text`, `rating` -1, 0 or
+1), the index `chosen_completion` of the one the solution went on with, or else a
`human_completion` the labeler wrote (a good step). The solution is the chosen step at
every step. Where no step was chosen nor written, labelling stopped there: a completion
rated -1 is the error it found and ends the solution; otherwise the solution ends before
that step. Ratings 1 and 0 (fine, no progress) are good steps, -1 a bad one:
`step_labels` 1.0 / 0.0, and `step_truth` is prefix correctness (0 from the first bad
step on). `label.finish_reason` gives the verdict: `solution` (the labeler reached the
correct answer) is correct unless the last step is rated -1, `found_error` wrong;
`give_up` and `bad_problem` carry no verdict, so such records are left out (counted).
The layout is the repository README's (commit 00811d6); TRL's `examples/datasets/prm800k.py`
reads it alike.
"""

from __future__ import annotations

from typing import Any

from tdrm_cli.public_data.records import bad, get, integer, kind, text

FINISH_REASONS = ("solution", "found_error", "give_up", "bad_problem")
WITHOUT_VERDICT = ("give_up", "bad_problem")


def solution(record: Any) -> dict[str, Any] | None:
    question = get(record, "question")
    problem = text(get(question, "problem", "question.problem"), "question.problem")
    gold = question.get("ground_truth_answer")
    label = get(record, "label")
    finish = get(label, "finish_reason", "label.finish_reason")
    if finish not in FINISH_REASONS:
        raise bad(
            "label.finish_reason", f"is {kind(finish)}, expected one of {', '.join(FINISH_REASONS)}"
        )
    if finish in WITHOUT_VERDICT:
        return None
    raw_steps = get(label, "steps", "label.steps")
    if not isinstance(raw_steps, list):
        raise bad("label.steps", "is not a list")
    steps, ratings = [], []
    for i, step in enumerate(raw_steps):
        chosen = chosen_step(step, f"label.steps[{i}]")
        if chosen is None:
            break
        steps.append(chosen[0])
        ratings.append(chosen[1])
        if chosen[2]:  # labelling stopped at the error it found
            break
    if not steps:
        raise bad("label.steps", "holds no chosen step")
    truth, ok = [], True
    for rating in ratings:
        ok = ok and rating != -1
        truth.append(int(ok))
    return {
        "prompt": problem,
        "gold": gold if isinstance(gold, str) and gold.strip() else None,
        "steps": steps,
        "correct": int(finish == "solution" and ratings[-1] != -1),
        "step_labels": [0.0 if r == -1 else 1.0 for r in ratings],
        "step_truth": truth,
    }


def chosen_step(step: Any, name: str) -> tuple[str, int, bool] | None:
    """(text, rating, last) of the step the solution takes at `step`, or None where it ends."""
    completions = get(step, "completions", name) or []
    if not isinstance(completions, list):
        raise bad(f"{name}.completions", "is not a list")
    index = step.get("chosen_completion")
    human = step.get("human_completion")
    if index is not None:
        index = integer(index, f"{name}.chosen_completion")
        if not 0 <= index < len(completions):
            raise bad(
                f"{name}.chosen_completion",
                f"is {index}, but the step has {len(completions)} completions",
            )
        return (*rated(completions[index], f"{name}.completions[{index}]"), False)
    if human is not None:  # phase 1: the labeler's own step (labelers wrote +1 steps)
        where = f"{name}.human_completion"
        if isinstance(human, dict):
            return text(get(human, "text", f"{where}.text"), f"{where}.text"), 1, False
        return text(human, where), 1, False
    for j, completion in enumerate(completions):
        step_text, rating = rated(completion, f"{name}.completions[{j}]")
        if rating == -1:
            return step_text, rating, True
    return None


def rated(completion: Any, name: str) -> tuple[str, int]:
    step_text = text(get(completion, "text", f"{name}.text"), f"{name}.text")
    rating = get(completion, "rating", f"{name}.rating")
    if isinstance(rating, bool) or rating not in (-1, 0, 1):
        raise bad(f"{name}.rating", f"is {kind(rating)}, expected -1, 0 or 1")
    return step_text, int(rating)
