"""Malformed inputs across stages, one table: exit 2, one error line, no run left complete.

Every case builds its bad input under `tmp_path` (copies of the session fixtures, altered)
and returns the CLI arguments plus the fragments the error line must hold: the offending
file (or run folder), and where it applies the row / line and the field.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import invoke

ROLLOUTS = "rollouts.parquet"
NAN = float("nan")


@dataclass
class Inputs:
    tmp: Path
    out: Path
    """The --out (or pipeline --root) of the command under test."""
    policy: Path
    collect: Path
    prm: Path


Case = Callable[[Inputs], tuple[list[Any], list[Any]]]


# ---------------------------------------------------------------- builders


def write(path: Path, content: str | bytes) -> Path:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def collect_copy(x: Inputs, edit: Callable[[list[dict]], Any] | None = None) -> Path:
    """A copy of the session's collect run; `edit(rows)` returns the new rows (or a Table)."""
    data = x.tmp / "data"
    shutil.copytree(x.collect, data)
    if edit is not None:
        path = data / ROLLOUTS
        new = edit(pq.read_table(path).to_pylist())
        pq.write_table(new if isinstance(new, pa.Table) else pa.Table.from_pylist(new), path)
    return data


def set_row(rows: list[dict], i: int, **fields: Any) -> list[dict]:
    rows[i].update(fields)
    return rows


def two_steps(rows: list[dict], i: int, labels: list[float]) -> list[dict]:
    """Row `i` gets two steps with these MC labels (the fixture's rows mostly hold one)."""
    return set_row(rows, i, steps=["1+2=3", "answer 3"], step_labels=labels, step_truth=[1, 1])


def train_prm(x: Inputs, data: Path, *flags: Any) -> list[Any]:
    return ["train-prm", "--data", data, "--out", x.out, "--report-to", "none", *flags]


def collect(x: Inputs, *flags: Any) -> list[Any]:
    return ["collect", "--policy", x.policy, "--out", x.out, "--problems", "2", *flags]


def config_case(text: str | bytes, *needles: str) -> Case:
    def case(x: Inputs):
        cfg = write(x.tmp / "cfg.yaml", text)
        return collect(x, "--config", cfg), [cfg, *needles]

    return case


def rollouts_case(edit: Callable[[list[dict]], Any], *needles: str, flags=()) -> Case:
    def case(x: Inputs):
        data = collect_copy(x, edit)
        return train_prm(x, data, *flags), [data / ROLLOUTS, *needles]

    return case


def task_case(name: str, content: str | bytes | None, *needles: str) -> Case:
    """`collect --task FILE`; content None writes a Parquet file without a question column."""

    def case(x: Inputs):
        path = x.tmp / name
        if content is None:
            pq.write_table(pa.Table.from_pylist([{"problem": "1+1", "answer": "2"}]), path)
        else:
            write(path, content)
        return collect(x, "--task", path), [path, *needles]

    return case


def manifest_case(content: str | dict, *needles: str, target: str = "run") -> Case:
    """`train-prm --data` a collect run whose manifest.json is replaced by `content`."""

    def case(x: Inputs):
        data = collect_copy(x)
        manifest = data / "manifest.json"
        write(manifest, content if isinstance(content, str) else json.dumps(content))
        return train_prm(x, data), [manifest if target == "manifest" else data, *needles]

    return case


def recipe_case(text: str, *needles: str) -> Case:
    def case(x: Inputs):
        path = write(x.tmp / "recipe.yaml", text)
        return ["pipeline", path, "--root", x.out], [path, *needles]

    return case


def prm_folder(x: Inputs, edit_config=None, meta: str | None = None) -> Path:
    """A copy of the session PRM's model folder with config.json / tdrm_prm.json altered."""
    folder = x.tmp / "prm-model"
    shutil.copytree(x.prm / "model", folder)
    if edit_config is not None:
        config = json.loads((folder / "config.json").read_text())
        write(folder / "config.json", edit_config(config))
    if meta is not None:
        write(folder / "tdrm_prm.json", meta)
    return folder


def steps_file(x: Inputs, text: str = "") -> Path:
    good = json.dumps({"problem": "1+2", "steps": ["1+2=3", "answer 3"], "label": -1})
    return write(x.tmp / "steps.jsonl", text or good + "\n")


def eval_prm_case(edit_config=None, meta: str | None = None, *needles: str) -> Case:
    def case(x: Inputs):
        folder = prm_folder(x, edit_config, meta)
        args = ["eval", "--steps-file", steps_file(x), "--prm", folder, "--out", x.out]
        return args, [folder, *needles]

    return case


def base_case(config_text: str, *needles: str) -> Case:
    """`train-prm --base FOLDER` where FOLDER holds only this config.json."""

    def case(x: Inputs):
        base = x.tmp / "base"
        base.mkdir()
        write(base / "config.json", config_text)
        return train_prm(x, x.collect, "--base", base), [base, *needles]

    return case


def bon_samples_case(edit: Callable[[list[dict]], Any], *needles: str) -> Case:
    def case(x: Inputs):
        data = collect_copy(x, edit)
        args = ["bon", "--samples", data, "--prm", x.prm, "--n", "2", "--out", x.out]
        return args, [data / ROLLOUTS, *needles]

    return case


def drop(column: str) -> Callable[[list[dict]], list[dict]]:
    return lambda rows: [{k: v for k, v in row.items() if k != column} for row in rows]


def every_row(**fields: Any) -> Callable[[list[dict]], list[dict]]:
    return lambda rows: [{**row, **fields} for row in rows]


def no_rows(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist([], schema=pa.Table.from_pylist(rows).schema)


def steps_as_text(rows: list[dict]) -> list[dict]:
    return [{**row, "steps": "\n\n".join(row["steps"])} for row in rows]


def eval_steps_file_case(text: str, *needles: str) -> Case:
    def case(x: Inputs):
        path = steps_file(x, text)
        return ["eval", "--steps-file", path, "--prm", x.prm, "--out", x.out], [path, *needles]

    return case


def rollouts_not_parquet(x: Inputs):
    data = collect_copy(x)
    write(data / ROLLOUTS, b"PAR1 this is not a parquet file")
    return train_prm(x, data), [data / ROLLOUTS, "unreadable parquet"]


def wrong_stage(x: Inputs):
    return train_prm(x, x.policy), [x.policy, "'sft'"]


def policy_with_broken_config(x: Inputs):
    model = x.tmp / "model"
    shutil.copytree(x.policy / "model", model)
    write(model / "config.json", "{not json")
    return collect(x, "--policy", model), [model]


GOOD_JSONL = '{"question": "1+2", "answer": "3"}\n'
# A tiny budget, so that a recipe check that regresses costs seconds, not a real training run.
TINY_SFT = (
    "{max_steps: 1, train_problems: 8, hidden_size: 16, layers: 1, heads: 1, eval_problems: 1}"
)
SFT_STEP = f"{{name: sft, stage: sft, args: {TINY_SFT}}}"


def resume_with_tampered_input(x: Inputs):
    """`--resume` of a failed train-prm run whose input's manifest changed since it started."""
    from tdrm_cli.configs.train import TrainPRMConfig
    from tdrm_cli.runs import prepare_run

    data = collect_copy(x)
    run = prepare_run("train-prm", TrainPRMConfig(data=str(data), out=str(x.out)))
    run.add_input("data", data)
    run.fail(RuntimeError("killed"))
    run.release()
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["metrics"]["rows"] = -1  # edited after the run recorded its hash
    write(data / "manifest.json", json.dumps(manifest))
    return train_prm(x, data, "--resume"), [x.out, "input 'data'", "sha256"]


CASES: list[tuple[str, Case]] = [
    # --config FILE.yaml
    ("config-string-for-int", config_case("n: many\n", "'n'", "expected int")),
    ("config-list-for-float", config_case("temperature: [0.5, 1.0]\n", "'temperature'")),
    ("config-unknown-key", config_case("beam_width: 4\n", "'beam_width'")),
    ("config-not-a-mapping", config_case("- n: 4\n", "mapping")),
    ("config-invalid-yaml", config_case("n: [1, 2\n", "not valid YAML")),
    ("config-not-utf8", config_case(b"task: \xff\xfe\n", "not valid YAML")),
    # train-prm: rollouts.parquet
    ("rollouts-missing-column", rollouts_case(drop("correct"), "correct")),
    ("rollouts-steps-not-a-list", rollouts_case(steps_as_text, "row 0", "'steps'", "str")),
    ("rollouts-no-rows", rollouts_case(no_rows, "no rows")),
    ("rollouts-not-parquet", rollouts_not_parquet),
    (
        "rollouts-step-label-nan",
        rollouts_case(
            lambda r: two_steps(r, 3, [0.5, NAN]),
            "row 3",
            "'step_labels'",
            "NaN",
            flags=("--loss", "mc"),
        ),
    ),
    (
        "rollouts-step-label-out-of-range",
        rollouts_case(
            lambda r: two_steps(r, 4, [1.5, 1.0]), "row 4", "'step_labels'", flags=("--loss", "mc")
        ),
    ),
    (
        "rollouts-correct-nan",
        rollouts_case(lambda r: set_row(r, 2, correct=NAN), "row 2", "correct"),
    ),
    ("rollouts-correct-2", rollouts_case(lambda r: set_row(r, 5, correct=2), "row 5", "correct")),
    (
        "rollouts-zero-steps-with-labels",
        rollouts_case(lambda r: set_row(r, 1, steps=[], step_truth=[]), "row 1", "step_labels"),
    ),
    (
        "rollouts-every-row-zero-steps",
        rollouts_case(every_row(steps=[], step_labels=[], step_truth=[]), "no rollouts with steps"),
    ),
    (
        "rollouts-label-count-mismatch",
        rollouts_case(lambda r: set_row(r, 3, step_labels=[0.5] * 3), "row 3", "step_labels"),
    ),
    (
        "rollouts-prompt-null",
        rollouts_case(lambda r: set_row(r, 6, prompt=None), "row 6", "'prompt'"),
    ),
    # --task FILE (JSONL / Parquet)
    (
        "task-jsonl-not-utf8",
        task_case("t.jsonl", GOOD_JSONL.encode() + b'{"q": "\xff"}\n', "line 2", "UTF-8"),
    ),
    (
        "task-jsonl-broken-line",
        task_case("t.jsonl", GOOD_JSONL + '{"question": "1+\n', "line 2", "JSON"),
    ),
    (
        "task-jsonl-missing-answer",
        task_case("t.jsonl", GOOD_JSONL * 2 + '{"question": "2+2"}\n', "line 3", "'answer'"),
    ),
    ("task-jsonl-empty", task_case("t.jsonl", "", "no rows")),
    ("task-jsonl-gz-not-gzip", task_case("t.jsonl.gz", GOOD_JSONL, "unreadable")),
    ("task-parquet-missing-question", task_case("t.parquet", None, "row 1", "'question'")),
    # input run folders
    ("manifest-not-json", manifest_case("{not json", "unreadable", target="manifest")),
    ("manifest-no-status", manifest_case({"stage": "collect"}, "'status'", target="manifest")),
    ("manifest-running", manifest_case({"stage": "collect", "status": "running"}, "'running'")),
    ("input-wrong-stage", wrong_stage),
    # pipeline recipes
    (
        "recipe-unknown-stage",
        recipe_case(
            f"stages:\n  - {SFT_STEP}\n  - {{name: b, stage: nope}}\n", "stages[1]", "'nope'"
        ),
    ),
    (
        "recipe-bad-ref",
        recipe_case(
            f"stages:\n  - {SFT_STEP}\n  - {{name: c, stage: collect, args: {{policy: '@nosuch'}}}}\n",
            "stages[1]",
            "'@nosuch'",
        ),
    ),
    ("recipe-step-not-a-mapping", recipe_case("stages:\n  - sft\n", "stages[0]")),
    ("recipe-not-a-mapping", recipe_case("- sft\n", "mapping")),
    ("recipe-empty", recipe_case("", "'stages'")),
    (
        "recipe-args-not-a-mapping",
        recipe_case("stages:\n  - {name: a, stage: sft, args: [1, 2]}\n", "stages[0]", "'args'"),
    ),
    ("recipe-seed-not-an-int", recipe_case(f"seed: abc\nstages:\n  - {SFT_STEP}\n", "'seed'")),
    (
        "recipe-name-escapes-root",
        recipe_case(
            f"stages:\n  - {{name: ../up, stage: sft, args: {TINY_SFT}}}\n", "stages[0]", "'name'"
        ),
    ),
    (
        "recipe-stage-arg-wrong-type",
        recipe_case("stages:\n  - {name: a, stage: sft, args: {max_steps: abc}}\n", "'max_steps'"),
    ),
    # model folders
    ("base-config-not-json", base_case("{not json", "config.json")),
    ("base-config-no-model-type", base_case('{"hidden_size": 8}', "model_type")),
    ("prm-config-not-json", eval_prm_case(lambda c: "{not json", None, "config.json")),
    (
        "prm-config-no-model-type",
        eval_prm_case(
            lambda c: json.dumps({k: v for k, v in c.items() if k != "model_type"}),
            None,
            "config.json",
            "model_type",
        ),
    ),
    ("prm-meta-not-json", eval_prm_case(None, "[1, 2", "tdrm_prm.json")),
    ("policy-config-not-json", policy_with_broken_config),
    # eval --steps-file, bon --samples
    (
        "steps-file-broken-line",
        eval_steps_file_case('{"problem": "1+2", "steps": \n', "line 1", "JSON"),
    ),
    (
        "steps-file-label-out-of-range",
        eval_steps_file_case(
            json.dumps({"problem": "1+2", "steps": ["answer 3"], "label": 4}) + "\n",
            "line 1",
            "'label'",
        ),
    ),
    ("resume-input-manifest-tampered", resume_with_tampered_input),
    ("samples-missing-column", bon_samples_case(drop("sample_idx"), "sample_idx")),
    (
        "samples-correct-nan",
        bon_samples_case(lambda r: set_row(r, 1, correct=NAN), "row 1", "correct"),
    ),
]


@pytest.mark.parametrize("case", [c for _, c in CASES], ids=[name for name, _ in CASES])
def test_malformed_input_is_one_line_exit_2(case, tmp_path, tiny_policy, tiny_collect, tiny_prm):
    x = Inputs(tmp_path, tmp_path / "out", tiny_policy, tiny_collect, tiny_prm)
    args, needles = case(x)
    result = invoke(*args)
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, result.stderr
    line = lines[0]
    assert line.startswith("error: ") and len(line) > len("error: "), line
    for needle in needles:
        assert str(needle) in line, (str(needle), line)
    manifests = sorted(x.out.rglob("manifest.json")) if x.out.exists() else []
    for manifest in manifests:
        status = json.loads(manifest.read_text()).get("status")
        assert status != "complete", f"{manifest.parent} left '{status}' after a bad input"
