"""TRL's stepwise-supervision layout (trl-lib/math_shepherd, trl-lib/prm800k, `PRMTrainer`).

A record is `{"prompt", "completions", "labels"}`: the question, the steps, and one
boolean per step (true: the step is good). The labels become `step_labels` (1.0 / 0.0);
the last one stands for the solution's verdict (`correct`), as in Math-Shepherd, where
TRL's converter takes them from.
"""

from __future__ import annotations

from typing import Any

from tdrm_cli.public_data.records import bad, flag, get, text, text_list


def solution(record: Any) -> dict[str, Any]:
    prompt = get(record, "prompt")
    if isinstance(prompt, list):
        raise bad("prompt", "is a list of messages (conversational); expected the question text")
    question = text(prompt, "prompt")
    steps = text_list(get(record, "completions"), "completions")
    labels = get(record, "labels")
    if not isinstance(labels, list):
        raise bad("labels", "is not a list, expected one true/false per completion")
    if len(labels) != len(steps):
        raise bad("labels", f"has {len(labels)} labels for {len(steps)} completions")
    values = [float(flag(v, f"labels[{i}]")) for i, v in enumerate(labels)]
    return {
        "prompt": question,
        "steps": steps,
        "correct": int(values[-1]),
        "step_labels": values,
    }
