"""ProcessBench (Qwen/ProcessBench: `gsm8k.json`, `math.json`, `olympiadbench.json`,
`omnimath.json`, each a JSON list): human-marked first errors.

A record is `{"id", "generator", "problem", "steps", "final_answer_correct", "label"}`;
`label` is the index of the first wrong step, -1 when every step is right. Steps before
it get 1, it and every later step 0: as prefix correctness (a prefix holding an error is
wrong) that is exact, so it is both `step_labels` and `step_truth` (`tdrm eval
--steps-file` reads `label` alike up to the first error and leaves later steps out of its
AUROC). `final_answer_correct` is `correct`.
"""

from __future__ import annotations

from typing import Any

from tdrm_cli.public_data.records import bad, flag, get, integer, text, text_list


def solution(record: Any) -> dict[str, Any]:
    question = text(get(record, "problem"), "problem")
    steps = text_list(get(record, "steps"), "steps")
    first_wrong = integer(get(record, "label"), "label")
    if not -1 <= first_wrong < len(steps):
        raise bad("label", f"is {first_wrong}, outside -1..{len(steps) - 1} for {len(steps)} steps")
    correct = flag(get(record, "final_answer_correct"), "final_answer_correct")
    cut = len(steps) if first_wrong < 0 else first_wrong
    truth = [1] * cut + [0] * (len(steps) - cut)
    return {
        "prompt": question,
        "steps": steps,
        "correct": correct,
        "step_labels": [float(t) for t in truth],
        "step_truth": truth,
    }
