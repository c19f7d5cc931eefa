"""`tdrm bon`, `search`, `eval` and `serve` end to end with public PRMs (the `trl` and
`math-shepherd` formats, tiny random models), each stage's saved step scores equal to the
adapter's own; `rl --prm-update online` refuses them."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from conftest import invoke, one_line_error
from prm_format_models import math_shepherd_prm, trl_prm

TOL = 1e-5


@pytest.fixture(scope="module")
def public(tmp_path_factory):
    root = tmp_path_factory.mktemp("public")
    return {"trl": trl_prm(root / "trl-prm"), "shepherd": math_shepherd_prm(root / "shepherd")}


def scorer(folder, **options):
    from tdrm_cli.prm_formats import load_scoring_prm

    return load_scoring_prm(folder, options=options)


def assert_scores(prm, prompts, steps, saved):
    want = prm.score(list(prompts), [list(s) for s in steps])
    got = [list(v) for v in saved]
    assert len(got) == len(want) > 0
    for g, w in zip(got, want, strict=True):
        assert len(g) == len(w) and all(abs(a - b) < TOL for a, b in zip(g, w, strict=True))


def test_bon_with_two_public_formats(public, tiny_collect, tmp_path):
    out = tmp_path / "bon"
    result = invoke(
        "bon", "--samples", tiny_collect, "--n", "4", "--problems", "3",
        "--prm", public["trl"], "--prm", public["shepherd"],
        "--prm-option", "2:recipe=openrlhf", "--prm-option", "agg=mean", "--out", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    frame = pd.read_parquet(out / "scores.parquet")
    assert_scores(scorer(public["trl"]), frame["prompt"], frame["steps"], frame["scores_trl-prm"])
    shepherd = scorer(public["shepherd"], recipe="openrlhf")
    assert_scores(shepherd, frame["prompt"], frame["steps"], frame["scores_shepherd"])
    assert json.loads((out / "manifest.json").read_text())["status"] == "complete"


@pytest.mark.parametrize("name", ["trl", "shepherd"])
def test_search_with_a_public_prm(public, tiny_policy, tmp_path, name):
    out = tmp_path / "search"
    result = invoke(
        "search", "--policy", tiny_policy, "--prm", public[name], "--problems", "2",
        "--beam-width", "2", "--expand", "2", "--max-depth", "4", "--max-step-tokens", "12",
        "--out", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    frame = pd.read_parquet(out / "scores.parquet")
    assert set(frame["prm"]) == {public[name].name}
    assert_scores(scorer(public[name]), frame["prompt"], frame["steps"], frame["step_scores"])


def test_eval_steps_file_with_forced_formats(public, tmp_path):
    rows = [
        {"problem": "3+4-2", "steps": ["3+4=7", "7-2=5", "answer 5"], "label": -1},
        {"problem": "3+4-2", "steps": ["3+4=8", "8-2=6", "answer 6"], "label": 0},
        {"problem": "9-1+5", "steps": ["9-1=8", "8+5=12", "answer 12"], "label": 1},
    ]
    path = tmp_path / "pb.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "eval"
    result = invoke(
        "eval", "--steps-file", path, "--prm", public["trl"], "--prm", public["shepherd"],
        "--prm-format", "trl", "--prm-format", "math-shepherd", "--out", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())["steps_file"]
    assert set(metrics) == {"trl-prm", "shepherd"}
    assert all(m["solutions"] == 3 for m in metrics.values())


def test_stage_errors_are_one_line(public, tiny_policy, tiny_prm, tmp_path):
    out = tmp_path / "r"
    args = ["bon", "--policy", tiny_policy, "--prm", public["trl"], "--out", out]
    one_line_error(invoke(*args, "--prm-option", "recipe=card"), "no given PRM's format takes it")
    one_line_error(invoke(*args, "--prm-format", "nope"), "--prm-format nope: expected")
    one_line_error(invoke(*args, "--prm-option", "step_separator"), "expected KEY=VALUE")
    rl = invoke(
        "rl", "--policy", tiny_policy, "--prm", public["trl"], "--reward", "prm",
        "--prm-update", "online", "--out", out,
    )  # fmt: skip
    one_line_error(rl, "--prm-update online trains tdrm's value head", "'trl' PRM")
    assert not out.exists()


def test_serve_scores_with_public_prms(public):
    from tdrm_cli.steps import DEFAULT_SEPARATOR
    from test_serve import Server, call

    problems = ["1+2-3", "7-5+1"]
    steps = [["1+2=3", "3-3=0", "answer 0"], ["7-5=2", "answer 3"]]
    servers = {
        "trl": Server(public["trl"], public["trl"] / "serve.log", "--max-wait-ms", "5"),
        "shepherd": Server(
            public["shepherd"],
            public["shepherd"] / "serve.log",
            "--prm-format",
            "math-shepherd",
            "--prm-option",
            "agg=last",
        ),  # fmt: skip
    }
    try:
        for name, server in servers.items():
            server.wait_ready()
            status, answer = call(
                server.port, "POST", "/score", {"problem": problems, "steps": steps}
            )
            assert status == 200, answer
            prm = scorer(public[name])
            assert_scores(prm, problems, steps, answer["step_values"])
            status, info = call(server.port, "GET", "/info")
            assert info["separator"] == DEFAULT_SEPARATOR
            assert info["aggregation"] == ("last" if name == "shepherd" else "min")
    finally:
        for server in servers.values():
            server.stop()
