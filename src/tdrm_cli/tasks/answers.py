r"""Final answers: pull them out of a solution, check them against the gold answer.

Extraction is pure, linear-time and safe on any text. It takes the last `\boxed{...}`
(braces matched, `\fbox` too), else the last `#### ...` line (GSM8K), else the last
"the (final) answer is ..." / "Answer: ...", and normalizes it: math delimiters,
`\text{...}` wrappers, currency signs, thousands commas and trailing unit words go.

Checking decides equal strings and plain numbers here (most GSM-style answers, in
microseconds) and sends everything else to math-verify (`parse` + `verify`) running in a
worker *process*. math-verify's own timeouts use SIGALRM, which works only in the main
thread and cannot stop a long C call, so this side waits at most `timeout` seconds for
the verdict and kills a late worker (the next call starts a fresh one). That works from
any thread; answers longer than MAX_CHECK_CHARS are refused before they are sent.
"""

from __future__ import annotations

import atexit
import json
import math
import os
import re
import select
import subprocess
import sys
import threading
import time
from collections import deque
from fractions import Fraction
from pathlib import Path

DEFAULT_TIMEOUT = 5.0
"""Seconds one check may take before it counts as wrong."""
MAX_CHECK_CHARS = 1000
"""Longer normalized answers are wrong without asking math-verify."""
MAX_MARKERS = 20
"""How many of the last "answer is" markers are tried before giving up."""
WORKER_START_TIMEOUT = 120.0
"""Seconds the worker may take to import math-verify (sympy) on a busy machine."""

BOXED_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
HASHES_RE = re.compile(r"####[ \t]*([^\n]*)")
ANSWER_IS_RE = re.compile(r"(?:final\s+answer|answer)\**\s*(?:is\b:?|:)\**\s*", re.IGNORECASE)
BRACE_RE = re.compile(r"\\.|[{}]", re.DOTALL)
SENTENCE_END_RE = re.compile(r"\.(?=\s|$)|(?<!\d)\.(?!\d)")
TEXT_WRAPPER_RE = re.compile(
    r"\\(?:text|textbf|textrm|mbox|mathrm|mathbf|operatorname)\s*\{([^{}]*)\}"
)
INT_FRAC_RE = re.compile(r"\\[dt]?frac\s*\{\s*(-?\d+)\s*\}\s*\{\s*(\d+)\s*\}")
THOUSANDS_RE = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
DEGREES_RE = re.compile(r"\^\s*\{?\s*\\circ\s*\}?")
LATEX_SPACE_RE = re.compile(r"\\[,;:! ]|~")
NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:/\d+)?%?"
# A number followed by words is the number ("18 dollars", "17 and not 71"). Words need two
# letters after a space, or one of these units written right after the number ("5cm"),
# so that algebra such as "3x" or "2 x + 1" is not cut.
ATTACHED_UNITS = "cm|mm|km|m|kg|g|mg|ml|L|s|h|hr|hrs|min|mph|ft|lb|lbs|oz"
UNIT_TAIL_RE = re.compile(rf"({NUMBER})(?:\s+[A-Za-z]{{2,}}\b.*|\s*(?:{ATTACHED_UNITS})\b.*)")
PLAIN_NUMBER_RE = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:/\d+)?")
MATH_WRAPPERS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"), ("**", "**"))


# ---------------------------------------------------------------- extraction


def extract_answer(text: str) -> str | None:
    """The normalized final answer a solution states, or None when it states none."""
    for find in (_last_boxed, _last_hashes, _last_answer_is):
        raw = find(text)
        if raw is not None:
            answer = normalize_answer(raw)
            if answer:
                return answer
    return None


def gold_answer(solution: str) -> str:
    """The final answer of a reference solution: its marked answer, else the whole text."""
    return extract_answer(solution) or normalize_answer(solution)


def _last_match(pattern: re.Pattern, text: str) -> re.Match | None:
    found = deque(pattern.finditer(text), maxlen=1)
    return found[0] if found else None


def _last_boxed(text: str) -> str | None:
    last = _last_match(BOXED_RE, text)
    return None if last is None else _braced(text, last.end())


def _braced(text: str, start: int) -> str | None:
    """The text from `start` up to the brace closing the one just before it (None if unclosed)."""
    depth = 1
    for match in BRACE_RE.finditer(text, start):
        token = match.group()
        if token == "{":
            depth += 1
        elif token == "}":
            depth -= 1
            if depth == 0:
                return text[start : match.start()]
    return None


def _last_hashes(text: str) -> str | None:
    last = _last_match(HASHES_RE, text)
    return None if last is None else last.group(1)


def _last_answer_is(text: str) -> str | None:
    # Markers only, so "Answer: The final answer is 40%" finds both and the last one wins.
    # The last few markers and a bounded slice after each keep this linear on any text; a
    # cut answer is still longer than MAX_CHECK_CHARS, so the checker refuses it.
    bound = 2 * MAX_CHECK_CHARS
    for marker in list(deque(ANSWER_IS_RE.finditer(text), maxlen=MAX_MARKERS))[::-1]:
        line_end = text.find("\n", marker.end(), marker.end() + bound)
        rest = text[marker.end() : line_end if line_end >= 0 else marker.end() + bound]
        rest = rest.strip()
        for left, right in MATH_WRAPPERS:  # "$\frac{1}{2}$ because ..." -> the math span
            end = rest.find(right, len(left)) if rest.startswith(left) else -1
            if end > 0:
                rest = rest[: end + len(right)]
                break
        else:
            rest = SENTENCE_END_RE.split(rest, maxsplit=1)[0]
        if normalize_answer(rest):
            return rest
    return None


def normalize_answer(answer: str) -> str:
    r"""`$\$1{,}250.50$ dollars.` -> `1250.50`; idempotent; leaves real math to math-verify."""
    s = answer.strip().replace("\u2212", "-")
    s = _unwrap(s)
    s = TEXT_WRAPPER_RE.sub(r"\1", s)
    s = DEGREES_RE.sub("", s).replace("\\%", "%").replace("\\$", "").replace("$", "")
    s = LATEX_SPACE_RE.sub(" ", s).replace("{,}", ",")
    s = THOUSANDS_RE.sub("", s)
    s = INT_FRAC_RE.sub(r"\1/\2", s)
    s = " ".join(s.split()).rstrip(".,;: ").strip()
    unit = UNIT_TAIL_RE.fullmatch(s)
    return unit.group(1) if unit else s


def _unwrap(s: str) -> str:
    """Peel `$..$`, `\\(..\\)`, `**..**`, a whole-string `\\boxed{..}` and a final period."""
    for _ in range(8):  # real answers need two or three rounds; a bound keeps it linear
        changed = False
        for left, right in MATH_WRAPPERS:
            if len(s) >= len(left) + len(right) and s.startswith(left) and s.endswith(right):
                s, changed = s[len(left) : len(s) - len(right)].strip(), True
        boxed = BOXED_RE.match(s)
        if boxed and s.endswith("}") and _braced(s, boxed.end()) == s[boxed.end() : -1]:
            s, changed = s[boxed.end() : -1].strip(), True
        if s.endswith(".") or s.startswith("*") or s.endswith("*"):
            s, changed = s.rstrip(".").strip("*").strip(), True
        if not changed:
            break
    return s


# ---------------------------------------------------------------- checking


def compare_numbers(gold: str, answer: str) -> bool | None:
    """True/False when both are plain numbers that are clearly equal or unequal; else None."""
    if not (PLAIN_NUMBER_RE.fullmatch(gold) and PLAIN_NUMBER_RE.fullmatch(answer)):
        return None
    try:
        a, b = Fraction(gold), Fraction(answer)
    except (ValueError, ZeroDivisionError):
        return None
    if a == b:
        return True
    # math-verify rounds floats to 6 places; leave near-misses (0.333333 vs 1/3) to it
    return False if abs(a - b) > Fraction(1, 10**4) * max(1, abs(a), abs(b)) else None


class AnswerChecker:
    """math-verify behind a worker process, with a hard timeout that works in any thread.

    One worker per checker (and per OS process: a forked child starts its own). Calls
    from several threads take turns; `timeout` bounds each call's time in the worker.
    """

    worker_command = [
        sys.executable,
        "-c",
        "from tdrm_cli.tasks.answers import worker_main; worker_main()",
    ]

    def __init__(self, timeout: float = DEFAULT_TIMEOUT):
        self.timeout = timeout
        self.timeouts = 0
        """Checks that ran out of time or crashed the worker (each costs a restart)."""
        self._proc: subprocess.Popen | None = None
        self._owner = 0
        self._lock = threading.Lock()

    def check(self, gold: str | None, answer: str | None, timeout: float | None = None) -> bool:
        """Does `answer` state the same value as `gold`? Never raises on odd input.

        `timeout` (default: the checker's) bounds the time in math-verify, not the wait
        for another thread's check or for a (re)started worker to import math-verify.
        """
        if gold is None or answer is None:
            return False
        gold, answer = normalize_answer(gold), normalize_answer(answer)
        if not gold or not answer:
            return False
        if gold == answer:
            return True
        if len(gold) > MAX_CHECK_CHARS or len(answer) > MAX_CHECK_CHARS:
            return False
        verdict = compare_numbers(gold, answer)
        if verdict is not None:
            return verdict
        return self._ask_worker(gold, answer, self.timeout if timeout is None else timeout)

    def close(self) -> None:
        with self._lock:
            self._stop()

    # ------------------------------------------------------------ the worker

    def _ask_worker(self, gold: str, answer: str, timeout: float) -> bool:
        # math-verify's own (SIGALRM) timeouts are on in the worker's main thread: most slow
        # inputs end there, without a restart; our deadline covers the rest
        inner = max(1, math.floor(timeout / 2))
        request = (json.dumps([gold, answer, inner]) + "\n").encode()
        with self._lock:
            proc = self._worker()
            try:
                os.write(proc.stdin.fileno(), request)  # < 64 KiB: never blocks
            except OSError:
                self._stop()
                return False
            reply = _read_line(proc.stdout.fileno(), time.monotonic() + timeout)
            if reply is None:
                self.timeouts += 1
                self._stop()
                return False
            return reply == b"1"

    def _worker(self) -> subprocess.Popen:
        if self._proc is not None and self._owner == os.getpid() and self._proc.poll() is None:
            return self._proc
        if self._owner != os.getpid():
            self._proc = None  # inherited through fork: the parent's worker, not ours
        self._stop()
        env = dict(os.environ, OMP_NUM_THREADS="1")
        src = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
        proc = subprocess.Popen(
            self.worker_command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        if _read_line(proc.stdout.fileno(), time.monotonic() + WORKER_START_TIMEOUT) != b"ready":
            proc.kill()
            proc.wait()
            raise RuntimeError(
                f"answer-check worker did not start (try: {sys.executable} -c 'import math_verify')"
            )
        self._proc, self._owner = proc, os.getpid()
        return proc

    def _stop(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            for pipe in (self._proc.stdin, self._proc.stdout):
                pipe.close()
            self._proc = None


def _read_line(fd: int, deadline: float) -> bytes | None:
    """One line from `fd` before `deadline`, without its newline; None on timeout or EOF."""
    poller = select.poll()  # not select.select: that fails on fds above 1024
    poller.register(fd, select.POLLIN)
    data = b""
    while not data.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not poller.poll(left * 1000):
            return None
        chunk = os.read(fd, 4096)
        if not chunk:
            return None
        data += chunk
    return data[:-1]


def worker_main() -> None:
    """The worker: one JSON `[gold, answer, timeout_s]` line in, one `1`/`0` line out."""
    import functools
    import logging

    replies = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # whatever else prints must not corrupt the replies
    sys.stdout = sys.stderr
    logging.disable(logging.CRITICAL)
    from math_verify import parse, verify

    @functools.lru_cache(maxsize=4096)
    def parsed(text: str, timeout_s: int) -> list:
        return parse(f"${text}$", parsing_timeout=timeout_s)

    # the first parse builds math-verify's grammar (about a second): do it before "ready",
    # so it never counts against a check's timeout
    verify(parsed("\\frac{1}{2}+x^2", 5), parsed("0.5+x^{2}", 5), timeout_seconds=5)
    verify(parsed("50\\%", 5), parsed("\\{1, 2\\}", 5), timeout_seconds=5)
    replies.write("ready\n")
    for line in sys.stdin:
        try:
            gold, answer, timeout_s = json.loads(line)
            ok = verify(
                parsed(gold, timeout_s), parsed(answer, timeout_s), timeout_seconds=timeout_s
            )
        except Exception:  # a verdict must come back whatever happened
            ok = False
        replies.write("1\n" if ok else "0\n")


_default: AnswerChecker | None = None
_default_lock = threading.Lock()


def check_answer(gold: str | None, answer: str | None, timeout: float = DEFAULT_TIMEOUT) -> bool:
    """`AnswerChecker.check` on one shared checker per process (its worker is reused)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = AnswerChecker()
            atexit.register(_default.close)
    return _default.check(gold, answer, timeout)


class FinalAnswerChecking:
    """Task methods for free-text math: the final answer is extracted from the steps and
    checked against the gold with math-verify; single steps cannot be checked exactly."""

    def extract_answer(self, steps: list[str]) -> str | None:
        return extract_answer("\n".join(steps))

    def is_correct(self, problem, answer: str | None) -> bool:
        return check_answer(problem.gold, answer)

    def step_truth(self, problem, steps: list[str]) -> None:
        return None
