import pytest

from tdrm_cli.errors import UsageError
from tdrm_cli.tasks import load_task
from tdrm_cli.tasks.arith import ArithTask


def test_deterministic_and_disjoint_splits():
    task = load_task("arith")
    assert task.problems("train", 50) == load_task("arith").problems("train", 50)
    train = {p.question for p in task.problems("train", 2000)}
    test = {p.question for p in task.problems("test", 300)}
    assert not train & test
    assert load_task("arith:seed=1").problems("train", 5) != task.problems("train", 5)


def test_reference_solution_is_all_correct():
    task = ArithTask(ops=5, max_operand=40)
    for p in task.problems("test", 30):
        steps = task.reference_steps(p)
        assert len(steps) == 6
        assert task.step_truth(p, steps) == [1] * 6
        assert task.is_correct(p, task.extract_answer(steps))
        assert all(0 <= v <= task.max_value for v in p.extra["values"])


def test_step_truth_hand_examples():
    task = ArithTask(ops=3)
    p = next(q for q in task.problems("train", 100) if q.extra["ops"][0][0] == "+")
    start, (op1, b1), values = p.extra["start"], p.extra["ops"][0], p.extra["values"]
    ref = task.reference_steps(p)
    # A wrong middle step whose error is undone later: final answer right, step 1 wrong.
    wrong = f"{start}{op1}{b1}={values[0] + 1}"
    steps = [wrong, *ref[1:]]
    assert task.step_truth(p, steps) == [0, 1, 1, 1]
    assert task.is_correct(p, task.extract_answer(steps))
    # Wrong answer at the end only.
    steps = [*ref[:-1], f"answer {int(p.gold) + 1}"]
    assert task.step_truth(p, steps) == [1, 1, 1, 0]
    assert not task.is_correct(p, task.extract_answer(steps))
    # No answer, garbage and extra steps.
    assert task.extract_answer(ref[:-1]) is None
    assert task.step_truth(p, ["hello", *ref[1:], "extra"]) == [0, 1, 1, 1, 0]
    assert task.step_truth(p, []) == []


def test_options_and_errors():
    assert (
        load_task("arith:ops=2,max_operand=9").problems("test", 1)[0].question.count("+")
        + load_task("arith:ops=2,max_operand=9").problems("test", 1)[0].question.count("-")
        == 2
    )
    with pytest.raises(UsageError, match="unknown task 'nope'"):
        load_task("nope")
    with pytest.raises(UsageError, match="unknown option 'foo'"):
        load_task("arith:foo=1")
    with pytest.raises(UsageError, match="bad value"):
        load_task("arith:ops=x")
    with pytest.raises(UsageError, match="expected train or test"):
        load_task("arith").problems("dev", 1)


def test_mod_option_takes_every_result_modulo():
    task = ArithTask(ops=5, max_operand=9, mul=True, mod=10)
    problems = task.problems("train", 50)
    assert any("*" in p.question for p in problems)
    for p in problems:
        value = p.extra["start"]
        for (op, b), stated in zip(p.extra["ops"], p.extra["values"], strict=True):
            value = {"+": value + b, "-": value - b, "*": value * b}[op] % 10
            assert stated == value and 0 <= value <= 9
        assert p.gold == str(value)
        steps = task.reference_steps(p)
        assert task.step_truth(p, steps) == [1] * len(steps)
        # A step stating the plain (not modular) result is wrong when it differs.
        a, (op, b) = p.extra["start"], p.extra["ops"][0]
        plain = {"+": a + b, "-": a - b, "*": a * b}[op]
        if plain != p.extra["values"][0]:
            assert task.step_truth(p, [f"{a}{op}{b}={plain}"]) == [0]
    # Without mod, the same seed draws the same problems as before the option existed.
    assert ArithTask().problems("train", 1)[0].question == "12-12+13-6-3"
    with pytest.raises(UsageError):
        ArithTask(mod=1)
