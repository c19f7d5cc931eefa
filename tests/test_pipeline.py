"""`tdrm pipeline`: recipes validate up front, complete stages are skipped, failed ones resumed."""

import os
from pathlib import Path

import pytest

from conftest import invoke
from tdrm_cli.errors import UsageError
from tdrm_cli.pipeline import load_recipe
from tdrm_cli.runs import read_manifest

RECIPES = sorted((Path(__file__).parent.parent / "recipes").glob("*.yaml"))
TINY_SFT = "{task: 'arith:ops=2', max_steps: 2, train_problems: 32, hidden_size: 16, layers: 1, heads: 1, eval_problems: 2}"


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_every_recipe_loads_against_the_stage_schemas(path):
    assert path.read_text().startswith("#"), "a recipe begins with a comment giving its command"
    assert "tdrm " in path.read_text().splitlines()[0]
    recipe = load_recipe(path)
    assert recipe.steps


def test_recipe_errors(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("stages:\n  - {name: a, stage: nope}\n")
    with pytest.raises(UsageError, match="unknown stage 'nope'"):
        load_recipe(path)
    path.write_text("stages:\n  - {name: a, stage: sft, args: {bogus: 1}}\n")
    with pytest.raises(UsageError, match="unknown key 'bogus'"):
        load_recipe(path)
    path.write_text("stages:\n  - {name: a, stage: sft, args: {task: '@b'}}\n")
    with pytest.raises(UsageError, match="'@b' does not name an earlier stage"):
        load_recipe(path)
    path.write_text("root: x\nstagez: []\n")
    with pytest.raises(UsageError, match="unknown key 'stagez'"):
        load_recipe(path)


def test_skips_complete_and_resumes_failed(tmp_path, monkeypatch):
    import tdrm_cli.stages.sft as sft

    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"# tdrm pipeline r.yaml\nroot: {tmp_path / 'runs'}\nseed: 1\nstages:\n"
        f"  - {{name: a, stage: sft, args: {TINY_SFT}}}\n"
        f"  - {{name: b, stage: sft, args: {TINY_SFT}}}\n"
    )
    calls = []
    real = sft.evaluate_policy

    def flaky(model_dir, *args):
        calls.append(Path(model_dir).parent.name)
        if len(calls) == 2:  # stage b fails after training, on its first try
            raise RuntimeError("injected failure")
        return real(model_dir, *args)

    monkeypatch.setattr(sft, "evaluate_policy", flaky)
    first = invoke("pipeline", recipe)
    assert first.exit_code != 0
    assert read_manifest(tmp_path / "runs" / "a")["status"] == "complete"
    failed = read_manifest(tmp_path / "runs" / "b")
    assert failed["status"] == "failed" and "injected failure" in failed["error"]

    second = invoke("pipeline", recipe)
    assert second.exit_code == 0, second.output
    assert second.stdout.strip().splitlines()[-1] == str(tmp_path / "runs")
    assert calls == ["a", "b", "b"]  # a skipped, b resumed
    resumed = read_manifest(tmp_path / "runs" / "b")
    assert resumed["status"] == "complete" and resumed["resumed"] is True
    assert (tmp_path / "runs" / "pipeline.json").is_file()

    third = invoke("pipeline", recipe)
    assert third.exit_code == 0 and calls == ["a", "b", "b"]  # nothing ran again


def test_complete_stage_with_other_settings_is_refused(tmp_path):
    recipe = tmp_path / "r.yaml"
    text = f"root: {tmp_path / 'runs'}\nstages:\n  - {{name: a, stage: sft, args: {TINY_SFT}}}\n"
    recipe.write_text(text)
    assert invoke("pipeline", recipe).exit_code == 0
    recipe.write_text(text.replace("max_steps: 2", "max_steps: 3"))
    result = invoke("pipeline", recipe)
    assert result.exit_code == 2
    assert "complete, but run with max_steps=2 where the recipe now says 3" in result.stderr


def test_complete_stage_from_before_a_new_option_is_still_skipped(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"root: {tmp_path / 'runs'}\nstages:\n  - {{name: a, stage: sft, args: {TINY_SFT}}}\n"
    )
    assert invoke("pipeline", recipe).exit_code == 0
    saved = tmp_path / "runs" / "a" / "config.yaml"
    lines = saved.read_text().splitlines(keepends=True)
    saved.write_text("".join(line for line in lines if not line.startswith("heads:")))
    result = invoke("pipeline", recipe)  # as if `heads` were added to sft after this run
    assert result.exit_code == 0, result.stderr
    assert "a: complete, skipped" in result.stderr


def test_second_pipeline_on_the_same_root_is_refused(tmp_path):
    from tdrm_cli.runs import FolderLock

    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"root: {tmp_path / 'root'}\nstages:\n  - {{name: sft, stage: sft, args: {TINY_SFT}}}\n"
    )
    (tmp_path / "root").mkdir()
    held = FolderLock.acquire(tmp_path / "root")  # as a running pipeline would
    try:
        result = invoke("pipeline", recipe)
        assert result.exit_code == 2
        assert f"--root {tmp_path / 'root'}: in use by pid {os.getpid()}" in result.stderr
        assert not (tmp_path / "root" / "sft").exists()
    finally:
        held.release()
    assert invoke("pipeline", recipe).exit_code == 0


SHRINK = {
    "sft": {
        "max_steps": 4,
        "train_problems": 64,
        "eval_problems": 4,
        "check_every": 2,
        "check_problems": 4,
    },
    "collect": {"problems": 4, "n": 4, "mc_rollouts": 1, "shard_size": 2},
    "train-prm": {"max_steps": 2, "batch_size": 4, "eval_fraction": 0.5},
    "bon": {"problems": 3, "n": 4, "subsets": 2},
    "search": {"problems": 2, "beam_width": 2, "expand": 2, "max_depth": 8},
    "rl": {
        "problems": 4,
        "eval_every": 1,
        "eval_problems": 3,
        "num_generations": 2,
        "batch_size": 2,
        "max_completion_length": 32,
    },
    "eval": {"problems": 3, "k": 2},
}


def test_the_demo_recipe_runs_end_to_end_on_a_tiny_budget(tmp_path):
    """Every stage, option and `@ref` of recipes/demo.yaml as shipped, with only the sizes cut."""
    import json

    import yaml

    recipe = yaml.safe_load((Path(__file__).parent.parent / "recipes" / "demo.yaml").read_text())
    recipe["root"] = str(tmp_path / "demo")
    for step in recipe["stages"]:
        step["args"].update(SHRINK[step["stage"]])
    path = tmp_path / "demo.yaml"
    path.write_text("# tdrm pipeline demo.yaml\n" + yaml.safe_dump(recipe))
    result = invoke("pipeline", path)
    assert result.exit_code == 0, result.output
    # every stage's bar stands in for the Trainer's printed dicts; no table cuts a word
    assert "{'loss'" not in result.output and "…" not in result.stderr, result.stderr
    root = tmp_path / "demo"
    for step in recipe["stages"]:
        assert read_manifest(root / step["name"])["status"] == "complete", step["name"]
    sft = json.loads((root / "sft" / "metrics.json").read_text())
    assert sft["attempts"] == 3 and sft["stopped_at_pass1"] is None  # 4 steps: never reached
    prm_meta = json.loads((root / "prm-td" / "model" / "tdrm_prm.json").read_text())
    assert prm_meta["head"] == "likelihood" and prm_meta["base"].endswith("verifier")
    metrics = json.loads((root / "eval" / "metrics.json").read_text())
    assert {"prm-td", "prm-mc", "prm-truth"} <= set(metrics["prm"])
    report = (root / "eval" / "report.md").read_text()
    assert "minus majority" in report and "coupling" in report.lower()
    assert "The paper's directions, as measured here" in report
    assert "TD-PRM beats MC-PRM at Best-of-N" in report
    assert "PRM quality against training data and generation cost" in report
    assert "### Search against sampling at the same token budget" in report
    assert read_manifest(root / "prm-td-30")["metrics"]["train_problems"] <= 30
    # make demo-seeds' table over roots: the same root twice has zero spread.
    from tdrm_cli.report import seed_numbers, seeds_table

    numbers = seed_numbers(root)
    assert numbers["policy greedy pass@1"] == metrics["policy"]["pass@1"]
    assert "Best-of-4 majority" in numbers and "rl-td final accuracy" in numbers
    assert {"rl-td-process final accuracy", "rl-mc-process final accuracy"} <= set(numbers)
    assert numbers["rl-td-critic minus rl-td"] == (
        numbers["rl-td-critic final accuracy"] - numbers["rl-td final accuracy"]
    )
    assert read_manifest(root / "rl-td-critic")["metrics"]["advantage"] == "td"
    assert "rl-td-process (prm+rlvr, process advantage)" in report
    assert read_manifest(root / "rl-td-process")["metrics"]["advantage"] == "process"
    assert "policy-likelihood step AUROC" in numbers
    gain = numbers["Best-of-4 prm-td/min/weighted minus majority"]
    assert gain == numbers["Best-of-4 prm-td/min/weighted"] - numbers["Best-of-4 majority"]
    table = seeds_table([root, root])
    assert table.count("± 0.000") == sum(v is not None for v in numbers.values())
