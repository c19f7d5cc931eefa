"""Hostile inputs through the real `tdrm` executable: non-finite and absurd options,
paths that cannot be a run folder, files that break parsers (deep nesting, 5001-digit
integers, lone surrogates), broken model files and PRM metadata, diverging training.

Every case runs `python -m tdrm_cli ...` in a subprocess and must end with exit 2, one
`error:` line on stderr naming the file or field, no traceback, and no run folder left
marked complete.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from test_malformed_inputs import Inputs, write

HUGE_INT = "9" * 5001
NESTED = "[" * 50_000 + "]" * 50_000


Case = Callable[[Inputs], tuple[list[Any], list[str]]]


def tdrm(*args: Any, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    environ = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    environ.pop("TDRM_SERVE_API_KEY", None)
    environ.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "tdrm_cli", *map(str, args)],
        capture_output=True, text=True, env=environ, timeout=300,
    )  # fmt: skip


def flags(*args: Any, needles: tuple[str, ...] = ()) -> Case:
    """`tdrm ARGS --out OUT`: the error must name every needle."""
    return lambda x: ([*args, "--out", x.out], list(needles))


def config_file(stage: str, text: str, *needles: str) -> Case:
    def case(x: Inputs):
        path = write(x.tmp / "c.yaml", text)
        return [stage, "--config", path, "--out", x.out], [str(path), *needles]

    return case


def out_path(make: Callable[[Path], Path], *needles: str) -> Case:
    """`sft --out P` for a P that cannot become a run folder."""

    def case(x: Inputs):
        out = make(x.tmp)
        return ["sft", "--out", out, "--max-steps", "1"], ["--out", *needles]

    return case


def a_file(tmp: Path) -> Path:
    return write(tmp / "afile", "x") / "sub"


def dangling(tmp: Path) -> Path:
    (tmp / "link").symlink_to(tmp / "nowhere")
    return tmp / "link"


def task_file(text: str, *needles: str) -> Case:
    def case(x: Inputs):
        path = write(x.tmp / "t.jsonl", text)
        args = ["collect", "--policy", x.policy, "--task", path, "--problems", "1"]
        return [*args, "--out", x.out], [str(path), *needles]

    return case


def steps_file(text: str, *needles: str) -> Case:
    def case(x: Inputs):
        path = write(x.tmp / "steps.jsonl", text)
        return ["eval", "--steps-file", path, "--prm", x.prm, "--out", x.out], [str(path), *needles]

    return case


def prm_copy(x: Inputs, edit: Callable[[Path], Any]) -> Path:
    folder = x.tmp / "prm-model"
    shutil.copytree(x.prm / "model", folder)
    edit(folder)
    return folder


def prm_case(edit: Callable[[Path], Any], *needles: str, serve: bool = False) -> Case:
    """A broken copy of the session PRM, given to `eval --steps-file` (or to `serve`)."""

    def case(x: Inputs):
        folder = prm_copy(x, edit)
        if serve:
            return ["serve", "--prm", folder, "--port", "1"], [str(folder), *needles]
        steps = write(x.tmp / "steps.jsonl", STEPS_ROW)
        return ["eval", "--steps-file", steps, "--prm", folder, "--out", x.out], list(needles)

    return case


def edit_meta(**fields: Any) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        meta = json.loads((folder / "tdrm_prm.json").read_text())
        write(folder / "tdrm_prm.json", json.dumps({**meta, **fields}))

    return edit


def truncate_weights(size: int) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        with (folder / "model.safetensors").open("r+b") as f:
            f.truncate(size)

    return edit


def unknown_model_type(folder: Path) -> None:
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="nosuchmodel", auto_map={"AutoConfig": "x.Config"})
    write(folder / "config.json", json.dumps(config))


def diverging_training(x: Inputs):
    args = ["train-prm", "--data", x.collect, "--learning-rate", "1e38", "--max-steps", "3"]
    return [*args, "--batch-size", "4", "--report-to", "none", "--out", x.out], [
        "training diverged",
        "--learning-rate",
    ]


def pipeline_only_nosuch(x: Inputs):
    recipe = write(x.tmp / "r.yaml", "stages:\n  - {name: sft, stage: sft, args: {}}\n")
    return ["pipeline", recipe, "--root", x.out, "--only", "nosuch"], ["--only nosuch", "sft"]


def pipeline_root_a_file(x: Inputs):
    recipe = write(x.tmp / "r.yaml", "stages:\n  - {name: sft, stage: sft, args: {}}\n")
    root = write(x.tmp / "rootfile", "x")
    return ["pipeline", recipe, "--root", root], [str(root), "not a folder"]


def recipe_zero_heads(x: Inputs):
    recipe = write(x.tmp / "r.yaml", "stages:\n  - {name: sft, stage: sft, args: {heads: 0}}\n")
    return ["pipeline", recipe, "--root", x.out], ["--heads"]


STEPS_ROW = json.dumps({"problem": "1+2", "steps": ["1+2=3", "answer 3"], "label": -1}) + "\n"

CASES: list[tuple[str, Case]] = [
    # non-finite and absurd options (item 3, 4)
    ("lr-inf", flags("sft", "--learning-rate", "inf", needles=("--learning-rate inf", "finite"))),
    ("temperature-nan", flags("collect", "--policy", "p", "--temperature", "nan",
                              needles=("--temperature nan",))),
    ("yaml-nan", config_file("train-prm", "data: d\nlearning_rate: .nan\n", "finite")),
    ("n-10e23", flags("collect", "--policy", "p", "--n", str(10**23), needles=("--n", "at most"))),
    ("subsets-1e9", flags("bon", "--policy", "p", "--prm", "q", "--subsets", str(10**9),
                          needles=("--subsets", "at most"))),
    ("beam-width-1e5", config_file("search", "policy: p\nprm: q\nbeam_width: 100000\n",
                                   "--beam-width", "at most")),
    ("diverging-training", diverging_training),
    # impossible model shapes (item 6)
    ("heads-0", flags("sft", "--heads", "0", needles=("--heads",))),
    ("hidden-size-negative", flags("sft", "--hidden-size", "-4", needles=("--hidden-size",))),
    ("recipe-heads-0", recipe_zero_heads),
    # run folders that cannot be (item 6)
    ("out-under-a-file", out_path(a_file, "afile", "Not a directory")),
    ("out-in-proc", out_path(lambda tmp: Path("/proc/tdrm-x"), "/proc/tdrm-x")),
    ("out-dangling-link", out_path(dangling, "dangling")),
    ("out-name-too-long", out_path(lambda tmp: tmp / ("a" * 300), "too long")),
    ("pipeline-root-a-file", pipeline_root_a_file),
    ("pipeline-only-nosuch", pipeline_only_nosuch),
    # parsers (item 6)
    ("yaml-nested", config_file("sft", f"task: {NESTED}\n", "not valid YAML")),
    ("yaml-huge-int", config_file("sft", f"seed: {HUGE_INT}\n", "not valid YAML")),
    ("jsonl-nested", task_file(f'{{"question": {NESTED}}}\n', "line 1", "not valid JSON")),
    ("jsonl-huge-int", task_file(f'{{"question": "q", "answer": {HUGE_INT}}}\n', "line 1")),
    ("jsonl-surrogate", task_file('{"question": "\\ud800", "answer": "1"}\n', "'question'",
                                  "lone surrogate")),
    ("steps-file-surrogate", steps_file(
        '{"problem": "1", "steps": ["\\udfff"], "label": -1}\n', "line 1", "lone surrogate")),
    ("steps-file-huge-int", steps_file(
        f'{{"problem": "1", "steps": ["a"], "label": {HUGE_INT}}}\n', "line 1")),
    # broken model files (items 6, 7)
    ("safetensors-truncated", prm_case(truncate_weights(100), "SafetensorError")),
    ("safetensors-empty", prm_case(truncate_weights(0), "SafetensorError")),
    ("prm-unknown-model-type", prm_case(unknown_model_type, "custom code")),
    ("prm-meta-agg-median", prm_case(edit_meta(agg="median"), "tdrm_prm.json", "'agg'")),
    ("prm-meta-separator-number", prm_case(edit_meta(separator=5), "'separator'")),
    ("prm-meta-template-no-question", prm_case(edit_meta(prompt_template="Q: {q}\n"),
                                               "'prompt_template'")),
    ("serve-prm-meta-agg-median", prm_case(edit_meta(agg="median"), "'agg'", serve=True)),
    ("serve-prm-meta-template", prm_case(edit_meta(prompt_template="no placeholder"),
                                         "'prompt_template'", serve=True)),
]  # fmt: skip


@pytest.mark.parametrize("case", [c for _, c in CASES], ids=[name for name, _ in CASES])
def test_hostile_input_is_one_line_exit_2(case, tmp_path, tiny_policy, tiny_collect, tiny_prm):
    x = Inputs(tmp_path, tmp_path / "out", tiny_policy, tiny_collect, tiny_prm)
    args, needles = case(x)
    result = tdrm(*args)
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    lines = result.stderr.strip().splitlines()
    assert lines and "Traceback" not in result.stderr, result.stderr[-3000:]
    line = lines[-1]  # progress bars and log lines may come first
    assert line.startswith("error: ") and all(not x.startswith("error: ") for x in lines[:-1])
    for needle in needles:
        assert needle in line, (needle, line)
    if x.out.exists():
        for manifest in x.out.rglob("manifest.json"):
            status = json.loads(manifest.read_text()).get("status")
            assert status != "complete", f"{manifest.parent} left '{status}'"


@pytest.mark.parametrize(
    "env, args, needle",
    [
        ({"TDRM_SERVE_API_KEY": ""}, [], "TDRM_SERVE_API_KEY is set but empty"),
        ({"TDRM_SERVE_API_KEY": " x"}, [], "whitespace"),
        ({}, ["--api-key", " x"], "whitespace"),
        ({}, ["--api-key", ""], "must not be empty"),
        ({}, ["--prm-weight", "nan"], "--prm-weight nan"),
        ({}, ["--max-wait-ms", "inf"], "--max-wait-ms inf: must be a finite number"),
        ({}, ["--max-solutions", "0"], "--max-solutions must be >= 1"),
    ],
)
def test_serve_refuses_bad_keys_and_limits(tiny_prm, env, args, needle):
    result = tdrm("serve", "--prm", tiny_prm, "--port", "1", *args, env=env)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and needle in lines[0], result.stderr


def test_an_echoed_value_stays_one_short_line(tmp_path):
    config = write(tmp_path / "c.yaml", "task: " + json.dumps("arith\nx" + "y" * 5_000_000) + "\n")
    result = tdrm("sft", "--config", config, "--out", tmp_path / "out")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr[:500]
    assert lines[0].startswith("error: --task") and len(lines[0]) <= 2100


def test_a_disk_full_write_fails_the_run_with_one_line(tmp_path, monkeypatch):
    """ENOSPC while a stage writes (monkeypatched: no tmpfs to fill on a CI machine)."""
    import errno

    from conftest import invoke
    from tdrm_cli import runs

    def full(path, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    out = tmp_path / "out"
    monkeypatch.setattr(runs, "atomic_write_bytes", full)
    result = invoke("sft", "--out", out, "--max-steps", "1")
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert "No space left on device" in lines[0] and "manifest.json" in lines[0]
    assert not (out / "manifest.json").exists()  # nothing could be written, nothing claims done


def test_weights_are_written_world_readable(tiny_policy, tiny_prm):
    for folder in (tiny_policy / "model", tiny_prm / "model"):
        assert (folder / "model.safetensors").stat().st_mode & 0o777 == 0o644


def test_a_problem_longer_than_the_policy_context_is_refused(tmp_path, tiny_policy):
    task = write(tmp_path / "t.jsonl", json.dumps({"question": "1+" * 600, "answer": "1"}) + "\n")
    result = tdrm("collect", "--policy", tiny_policy, "--task", task, "--problems", "1",
                  "--n", "1", "--mc-rollouts", "0", "--out", tmp_path / "out")  # fmt: skip
    line = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert line.startswith("error: ") and "longer than the policy's context" in line, line
