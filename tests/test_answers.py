r"""Answer extraction and checking on realistic model outputs, and the timeout guarantees."""

from __future__ import annotations

import sys
import threading
import time

import pytest

from tdrm_cli.tasks.answers import (
    MAX_CHECK_CHARS,
    AnswerChecker,
    check_answer,
    compare_numbers,
    extract_answer,
    gold_answer,
    normalize_answer,
)

# (model output, extracted answer, gold, verdict)
OUTPUTS = [
    # \boxed{}
    ("She pays 3 * 4 = 12 dollars.\n\nSo the answer is \\boxed{12}.", "12", "12", True),
    ("Total: $48 + 24 = 72$.\n\n$\\boxed{72}$", "72", "72", True),
    ("The final answer is $\\boxed{\\frac{3}{4}}$.", "3/4", "0.75", True),
    ("\\boxed{\\dfrac{1}{2}}", "1/2", "\\frac{2}{4}", True),
    (
        "Each slice is \\boxed{\\frac{\\sqrt{2}}{2}}",
        "\\frac{\\sqrt{2}}{2}",
        "\\frac{1}{\\sqrt{2}}",
        True,
    ),
    ("First \\boxed{10}, but wait, I made an error.\n\nCorrected: \\boxed{12}", "12", "12", True),
    ("\\boxed{\\text{18 dollars}}", "18", "18", True),
    ("The set is \\boxed{\\{1, 2, 3\\}}", "\\{1, 2, 3\\}", "\\{3, 2, 1\\}", True),
    ("So x = \\boxed{x^{2} + 2x + 1}", "x^{2} + 2x + 1", "(x+1)^2", True),
    ("\\fbox{7}", "7", "7", True),
    ("The answer is \\boxed{1{,}250}.", "1250", "1250", True),
    ("Hence the angle is \\boxed{90^\\circ}.", "90", "90", True),
    ("We get \\boxed{ 5 }.", "5", "5", True),
    ("The answer is \\boxed{8}", "8", "9", False),
    # GSM8K ####
    ("48/2 = <<48/2=24>>24 clips in May.\n48+24 = <<48+24=72>>72\n#### 72", "72", "72", True),
    ("#### 1,234,567", "1234567", "1234567", True),
    ("#### $18.00", "18.00", "18", True),
    ("Profit is 5 - 3 = 2\n#### 2\n", "2", "3", False),
    ("#### -15", "-15", "-15", True),
    # "The answer is" and friends
    ("So she has 5 + 7 = 12 apples left. The answer is 12.", "12", "12", True),
    ("The answer is $18.", "18", "18", True),
    ("The answer is 3.50 dollars.", "3.50", "3.5", True),
    ("Therefore, the final answer is $\\frac{5}{2}$. I hope it is correct.", "5/2", "2.5", True),
    ("**Answer:** 72 apples", "72", "72", True),
    ("Final Answer: The final answer is 40%. I hope it is correct.", "40%", "40", True),
    ("Answer: 5cm", "5", "5", True),
    ("The answer is: 1,000 meters", "1000", "1000", True),
    ("The answer is:\n\n$$120$$", "120", "120", True),
    ("Answer: -7.", "-7", "-7", True),
    ("The answer is 0.333333", "0.333333", "\\frac{1}{3}", True),
    ("The answer is 17 and not 71.", "17", "71", False),
    ("The total cost is $45.\n\n**Answer: 45**", "45", "45", True),
    ("The answer is **2/3** of the pie.", "2/3", "\\frac{2}{3}", True),
    ("The answer is \\(\\frac{7}{8}\\).", "7/8", "0.875", True),
    ("\\boxed{\\$1,234.56}", "1234.56", "1234.56", True),
    ("Answer: 12 km/h", "12", "12", True),
    ("answer: x = 4", "x = 4", "4", True),
    ("the answer is 3x", "3x", "3", False),
    # no answer
    ("Let me think step by step. First we add 3 and 4.", None, "7", False),
    ("The result is \\boxed{4", None, "4", False),  # truncated, never closed
    ("", None, "0", False),
    ("#### \n", None, "0", False),
    ("The answer is \\boxed{}", None, "0", False),
]


@pytest.mark.parametrize(("output", "expected", "gold", "verdict"), OUTPUTS)
def test_extract_and_check(output, expected, gold, verdict):
    answer = extract_answer(output)
    assert answer == expected
    assert check_answer(gold_answer(gold), answer) is verdict


def test_priority_boxed_over_hashes_over_answer_is():
    assert extract_answer("The answer is 3.\n#### 4\nso \\boxed{5}") == "5"
    assert extract_answer("The answer is 3.\n#### 4") == "4"


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        ("$\\$1{,}250.50$ dollars.", "1250.50"),
        ("\\(42\\)", "42"),
        ("−3", "-3"),
        ("12,34", "12,34"),
        ("1, 2, 3", "1, 2, 3"),
        ("\\text{C}", "C"),
        ("\\tfrac{1}{4}", "1/4"),
        ("$x = 5$", "x = 5"),
    ],
)
def test_normalize(raw, normal):
    assert normalize_answer(raw) == normal
    assert normalize_answer(normal) == normal  # idempotent


def test_gold_answer_from_a_solution():
    assert gold_answer("Natalia sold 48/2 = 24 in May.\n#### 72") == "72"
    assert gold_answer(" 1,000 ") == "1000"
    assert gold_answer("\\frac{1}{2}") == "1/2"


def test_compare_numbers_decides_only_clear_cases():
    assert compare_numbers("72", "72.0") is True
    assert compare_numbers("72", "73") is False
    assert compare_numbers("1/2", "0.5") is True
    assert compare_numbers("0.3333333", "1/3") is None  # math-verify's rounding decides
    assert compare_numbers("x", "1") is None
    assert compare_numbers("1/0", "1") is None


# ---------------------------------------------------------------- pathological inputs

HUGE = "The answer is " + "9" * 100_000
DEEP = "\\boxed{" + "\\frac{1}{" * 20_000 + "2" + "}" * 20_001
BRACES = "\\boxed{" * 50_000 + "1"


@pytest.mark.parametrize(
    "text",
    [
        HUGE,
        DEEP,
        BRACES,
        "####" * 30_000,
        "answer is " * 20_000,
        "answer: ." * 12_000,
        "$" * 100_000,
        "." * 100_000,
    ],
)
def test_extraction_is_fast_on_pathological_text(text):
    start = time.perf_counter()
    gold_answer(text)  # extraction, then normalization of the whole text
    assert time.perf_counter() - start < 1.0


@pytest.fixture(scope="module")
def checker():
    checker = AnswerChecker(timeout=2.0)
    yield checker
    checker.close()


SLOW = [
    ("100k-char answer", "99", "9" * 100_000 + "x"),
    ("deep nesting under the size cap", "5", "\\sqrt{" * 130 + "2" + "}" * 130),
    ("power tower", "5", "9^{9^{9^{9}}}"),
    ("deep parentheses", "5", "(" * 400 + "1" + ")" * 400),
]


@pytest.mark.parametrize(("what", "gold", "answer"), SLOW, ids=[s[0] for s in SLOW])
def test_returns_within_timeout_in_main_thread(checker, what, gold, answer):
    checker.check("1", "x")  # worker started outside the timed part
    start = time.monotonic()
    assert checker.check(gold, answer) is False
    assert time.monotonic() - start < checker.timeout + 0.5


def test_returns_within_timeout_in_a_thread(checker):
    checker.check("1", "x")
    results = {}

    def work():
        start = time.monotonic()
        results["verdict"] = checker.check("5", "9^{9^{9^{9}}}")
        results["ok"] = checker.check("\\frac{1}{2}", "\\frac{2}{4}")
        results["seconds"] = time.monotonic() - start

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert results["verdict"] is False and results["ok"] is True
    assert results["seconds"] < checker.timeout + 1.0


def test_a_hung_worker_is_killed_and_replaced():
    """The hard deadline: a worker that never answers costs `timeout`, then a restart."""
    hung = AnswerChecker(timeout=0.5)
    hung.worker_command = [
        sys.executable,
        "-c",
        "print('ready', flush=True); import time; time.sleep(60)",
    ]
    try:
        start = time.monotonic()
        assert hung.check("2", "x+1") is False
        assert time.monotonic() - start < 1.5
        assert hung.timeouts == 1 and hung._proc is None
        hung.worker_command = AnswerChecker.worker_command
        assert hung.check("x+1", "1+x") is True  # a fresh, working worker
    finally:
        hung.close()


def test_size_cap_answers_without_the_worker():
    lazy = AnswerChecker()
    assert lazy.check("5", "x" * (MAX_CHECK_CHARS + 1)) is False
    assert lazy.check("72", "72.00") is True and lazy.check("72", "71") is False
    assert lazy._proc is None  # none of these needed math-verify


def test_none_and_empty():
    assert check_answer("5", None) is False
    assert check_answer(None, "5") is False
    assert check_answer("", "") is False
