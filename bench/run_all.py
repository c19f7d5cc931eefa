"""Run every benchmark in bench/ and print one markdown table of their goals.

Each bench/*.py (except common.py and this file) runs as its own subprocess, one after
another; its output goes to stderr as it comes, so progress stays visible. A benchmark
ends by printing `BENCH {json}` (see `common.report`); each such line becomes a row
metric | measured ratio | goal | pass/fail. A benchmark that crashes or prints no BENCH
line gets an "error" row that fails. The table goes to stdout; the exit code is 1 if any
row fails, else 0.

    python bench/run_all.py                    # everything (many minutes on a CPU)
    python bench/run_all.py --only serve       # names containing "serve"
    python bench/run_all.py --quick            # fewer repeats/problems where a script has flags
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from common import BENCH_PREFIX

HERE = Path(__file__).resolve().parent
SKIP = {"common.py", Path(__file__).name}
# --quick: smaller runs, for the scripts that take size flags (the others have fixed sizes).
QUICK = {
    "collect_throughput": ["--problems", "16", "--repeats", "3"],
    "rl_reward_overhead": ["--steps", "3", "--repeats", "1"],
    "grpo_advantage": ["--steps", "3", "--repeats", "1"],
    "search_cost": ["--problems", "2", "--repeats", "1"],
    "demo_generation": ["--problems", "32", "--repeats", "1"],
    "serve_load": ["--rounds", "3", "--default-rounds", "1"],
}


def scripts(only: list[str]) -> list[Path]:
    found = sorted(p for p in HERE.glob("*.py") if p.name not in SKIP)
    return [p for p in found if not only or any(s in p.stem for s in only)]


def run(script: Path, extra: list[str]) -> tuple[int, list[dict], float]:
    """(exit code, parsed BENCH lines, seconds); stdout and stderr pass through to stderr."""
    cmd = [sys.executable, "-u", str(script), *extra]
    print(f"== {script.relative_to(HERE.parent)} {' '.join(extra)}".rstrip(), file=sys.stderr)
    start = time.perf_counter()
    rows = []
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=HERE.parent) as proc:
        for line in proc.stdout:
            sys.stderr.write(line)
            sys.stderr.flush()
            if line.startswith(BENCH_PREFIX):
                try:
                    rows.append(json.loads(line[len(BENCH_PREFIX) :]))
                except json.JSONDecodeError:
                    rows.append({"metric": f"`{script.stem}`", "error": "unreadable BENCH line"})
    return proc.returncode, rows, time.perf_counter() - start


def table_rows(script: Path, code: int, rows: list[dict]) -> list[tuple[str, str, str, bool]]:
    """(metric, measured, goal, passed) for each BENCH line, or one error row."""
    if not rows:
        why = "crashed" if code else "no BENCH line"
        return [(f"`{script.stem}`", f"error ({why}, exit {code})", "-", False)]
    out = []
    for row in rows:
        if "error" in row:
            out.append((row["metric"], f"error ({row['error']})", "-", False))
            continue
        measured = f"{row['ratio']:.3f}"
        if row.get("detail"):
            measured += f" ({row['detail']})"
        passed = bool(row["pass"])
        if passed and code:  # the goal held, yet the script failed afterwards
            measured += f", exit {code}"
            passed = False
        out.append((row["metric"], measured, row["goal"], passed))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="NAME",
        help="Run only the scripts whose name contains NAME (repeatable).",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"Smaller runs of {', '.join(sorted(QUICK))} (fewer problems/repeats).",
    )
    args = parser.parse_args()
    chosen = scripts(args.only)
    if not chosen:
        parser.error(f"no benchmark matches {args.only}")
    table, times, start = [], [], time.perf_counter()
    for script in chosen:
        extra = QUICK.get(script.stem, []) if args.quick else []
        code, rows, seconds = run(script, extra)
        table += table_rows(script, code, rows)
        times.append(f"{script.stem} {seconds:.0f} s")
    print(
        f"== wall time {time.perf_counter() - start:.0f} s: {', '.join(times)}",
        file=sys.stderr,
    )
    print("| metric | measured ratio | goal | pass/fail |")
    print("|---|---|---|---|")
    for metric, measured, goal, passed in table:
        print(f"| {metric} | {measured} | {goal} | {'pass' if passed else 'FAIL'} |")
    return 0 if all(passed for *_, passed in table) else 1


if __name__ == "__main__":
    sys.exit(main())
