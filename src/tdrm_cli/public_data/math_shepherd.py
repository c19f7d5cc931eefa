"""Math-Shepherd (peiyi9979/Math-Shepherd, `math-shepherd.jsonl`): automatic MC step labels.

A record is `{"input", "label", "task"}`. `input` is the question followed by the
solution, each step ending in the tag `ки`; the question is the text before the first
"Step 1:". `label` is the same text with `+` (the step's continuations reached the gold
answer) or `-` in place of each tag. Those are hard Monte-Carlo labels, so they become
`step_labels` (1.0 / 0.0); the last step's label is the solution's own verdict, so it is
also `correct`. The layout is the dataset card's and TRL's converter's
(huggingface/trl `examples/datasets/math_shepherd.py`, commit 0ad367a).
"""

from __future__ import annotations

import re
from typing import Any

from tdrm_cli.public_data.records import BadRow, bad, get, text

TAG = "ки"
FIRST_STEP = re.compile(r"[Ss]tep 1:")


def solution(record: Any) -> dict[str, Any]:
    source = text(get(record, "input"), "input")
    labelled = text(get(record, "label"), "label")
    pieces = source.split(TAG)
    if len(pieces) < 2:
        raise bad("input", f"has no step tag '{TAG}'")
    if pieces[-1].strip():
        raise bad("input", f"has text after its last step tag '{TAG}'")
    marks, at = [], 0
    for i, piece in enumerate(pieces[:-1]):
        at += len(piece)
        mark = labelled[at : at + 1]
        if mark not in ("+", "-"):
            raise bad("label", f"has {mark or 'nothing'!r} at step tag {i + 1}, expected + or -")
        marks.append(mark)
        at += 1
    if "".join(p + m for p, m in zip(pieces, [*marks, ""], strict=True)).rstrip() != (
        labelled.rstrip()
    ):
        raise bad("label", "is not the input with + or - in place of each step tag")
    first = FIRST_STEP.search(pieces[0])
    if first is None:
        raise bad("input", "has no 'Step 1:' before its first step tag (the question ends there)")
    question = pieces[0][: first.start()].strip()
    if not question:
        raise bad("input", "has no question before 'Step 1:'")
    steps = [pieces[0][first.start() :].strip(), *(p.strip() for p in pieces[1:-1])]
    for i, step in enumerate(steps):
        if not step:
            raise BadRow(f"field 'input': step {i + 1} is empty")
    task = record.get("task")
    labels = [1.0 if m == "+" else 0.0 for m in marks]
    return {
        "prompt": question,
        "steps": steps,
        "correct": int(labels[-1]),
        "step_labels": labels,
        "source_task": task if isinstance(task, str) else None,
    }
