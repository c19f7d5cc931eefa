"""The TDRM paper's PRM data (THUDM/TDRM; Hub datasets TDRM-1-step-TD, -2-step-, -3-step-).

A record is one transition, `conversations{question, state1, ..., done, label}`: the
question, `state1` the solution so far ('' before the first step), the state one (or
two, three) steps on (`state2`, or `state3` / `state4` in the n-step sets, with
`reward`, `reward_1`, ...), `done` 1 when `state1` is a finished solution, and then
`label` its verdict (the field names are those `tdrm/tdrm_1_step_train.py` and
`tdrm/tdrm_2_step_train.py` read). Transitions are not solutions, so they are put back
together: every `done` record is one solution, `label` its `correct`, and its steps are
cut at every `state1` of the same question that is a proper prefix of it ending at
white space (the states a solution passes through are each some record's `state1`). The
data carries no per-step labels: the run trains `--loss td` or `--loss outcome`.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from tdrm_cli.public_data.records import BadRow, flag, get, text


def solution(record: Any) -> dict[str, Any]:
    """One transition, checked: question, state, done and (when done) the verdict."""
    conversation = get(record, "conversations")
    name = "conversations"
    question = text(get(conversation, "question", f"{name}.question"), f"{name}.question")
    state = text(get(conversation, "state1", f"{name}.state1"), f"{name}.state1", blank=True)
    done = flag(get(conversation, "done", f"{name}.done"), f"{name}.done")
    label = flag(get(conversation, "label", f"{name}.label"), f"{name}.label") if done else None
    if done and not state.strip():
        raise BadRow(f"field '{name}.state1' is blank, but 'done' says it is a finished solution")
    return {"question": question, "state": state, "done": done, "correct": label}


def assemble(transitions: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    """(where, solution) for every finished state, its steps cut at the recorded states."""
    states: dict[str, set[str]] = defaultdict(set)
    for _, t in transitions:
        if not t["done"]:
            states[t["question"]].add(t["state"])
    out = []
    for where, t in transitions:
        if t["done"]:
            out.append((where, rebuilt(t, states[t["question"]])))
    return out


def rebuilt(terminal: dict[str, Any], states: set[str]) -> dict[str, Any]:
    final = terminal["state"]
    cuts = sorted(
        len(s)
        for s in states
        if 0 < len(s) < len(final)
        and final.startswith(s)
        and (s[-1].isspace() or final[len(s)].isspace())  # a state ends where a step does
    )
    bounds = [0, *cuts, len(final)]
    steps = [final[a:b].strip() for a, b in zip(bounds, bounds[1:], strict=False)]
    return {
        "prompt": terminal["question"],
        "steps": [s for s in steps if s],
        "correct": terminal["correct"],
    }
