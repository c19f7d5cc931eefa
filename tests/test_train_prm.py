"""`tdrm train-prm` and prm_trainer.py on synthetic collect runs: end to end, recorded losses, bad input, DDP."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import invoke, one_line_error
from tdrm_cli.configs.sample import CollectConfig
from tdrm_cli.runs import prepare_run, read_manifest
from tdrm_cli.tasks.arith import ArithTask
from test_prm import make_tiny_base

# ---------------------------------------------------------------- a synthetic collect run


def corrupt(task: ArithTask, problem, rng: random.Random, cut: bool = True) -> list[str]:
    """The reference solution with one wrong result; later steps carry the error on."""
    start, ops = problem.extra["start"], problem.extra["ops"]
    wrong_at = rng.randrange(len(ops) + 1)  # == len(ops): only the answer is wrong
    value, steps = start, []
    for i, (op, b) in enumerate(ops):
        result = value + b if op == "+" else value - b if op == "-" else value * b
        if i == wrong_at:
            result += rng.choice([-3, -2, -1, 1, 2, 3])
        steps.append(f"{value}{op}{b}={result}")
        value = result
    answer = value + (rng.choice([-2, -1, 1, 2]) if wrong_at == len(ops) else 0)
    steps.append(f"answer {answer}")
    if cut and rng.random() < 0.2:
        steps = steps[: rng.randint(1, len(steps) - 1)]  # cut off before the answer
    return steps


def simulated_mc_labels(truth: list[int], rng: random.Random) -> list[float]:
    """Noisy Math-Shepherd-like estimates with 4 rollouts: high while the prefix is right."""
    labels, ok = [], True
    for t in truth:
        ok = ok and bool(t)
        labels.append(rng.choice([0.75, 1.0, 1.0]) if ok else rng.choice([0.0, 0.0, 0.25]))
    return labels


def make_collect_run(
    path: Path,
    policy: Path,
    problems: int = 16,
    n: int = 4,
    seed: int = 0,
    mc: bool = True,
    cut: bool = True,
) -> Path:
    """A complete collect run folder holding realistic arith rollouts (`cut=False`: every
    rollout keeps all its steps, so all have the same number)."""

    task, rng = ArithTask(ops=3), random.Random(seed)
    rows = []
    for problem in task.problems("train", problems):
        for k in range(n):
            steps = (
                corrupt(task, problem, rng, cut)
                if rng.random() < 0.5
                else task.reference_steps(problem)
            )
            truth = task.step_truth(problem, steps)
            answer = task.extract_answer(steps)
            rows.append(
                {
                    "problem_id": problem.id,
                    "prompt": problem.question,
                    "gold": problem.gold,
                    "steps": steps,
                    "answer": answer,
                    "correct": int(task.is_correct(problem, answer)),
                    "step_labels": simulated_mc_labels(truth, rng) if mc else None,
                    "step_truth": truth,
                    "policy": str(policy),
                    "sample_idx": k,
                }
            )
    return write_collect_run(path, policy, rows, seed)


def write_collect_run(path: Path, policy: Path, rows: list[dict], seed: int = 0) -> Path:
    """A complete collect run folder holding `rows` as its rollouts."""
    import pandas as pd

    run = prepare_run("collect", CollectConfig(policy=str(policy), out=str(path), seed=seed))
    pd.DataFrame(rows).to_parquet(path / "rollouts.parquet")
    run.complete({"rows": len(rows)})
    return path


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    return make_tiny_base(tmp_path_factory.mktemp("base") / "model")


@pytest.fixture(scope="module")
def data(tmp_path_factory, tiny_base):
    return make_collect_run(tmp_path_factory.mktemp("runs") / "collect", tiny_base)


@pytest.fixture(scope="module")
def unlabeled(tmp_path_factory, tiny_base):
    return make_collect_run(
        tmp_path_factory.mktemp("runs") / "collect-nolabels", tiny_base, problems=4, mc=False
    )


TINY = ["--batch-size", "8", "--logging-steps", "1", "--report-to", "none"]

# ---------------------------------------------------------------- end to end


def test_train_prm_end_to_end_default_base_is_the_policy(tiny_policy, tmp_path):
    from transformers import AutoModelForTokenClassification

    from tdrm_cli.prm import load_prm

    data = make_collect_run(tmp_path / "collect", tiny_policy)
    out = tmp_path / "prm"
    result = invoke(
        "train-prm",
        "--data",
        data,
        "--out",
        out,
        "--max-steps",
        "4",
        "--batch-size",
        "8",
        "--logging-steps",
        "2",
        "--eval-fraction",
        "0.25",
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().splitlines()[-1] == str(out)
    manifest = read_manifest(out)
    assert manifest["status"] == "complete" and manifest["stage"] == "train-prm"
    assert set(manifest["inputs"]) == {"data", "base"} and manifest["inputs"]["base"][
        "path"
    ] == str(tiny_policy)
    model_dir = out / "model"
    assert (model_dir / "model.safetensors").is_file() and not list(model_dir.glob("*.bin"))
    assert not (out / "checkpoints").exists() and list((out / "logs").glob("events.out.tfevents.*"))
    assert (
        AutoModelForTokenClassification.from_pretrained(model_dir, num_labels=1).config.num_labels
        == 1
    )
    meta = json.loads((model_dir / "tdrm_prm.json").read_text())
    assert meta["separator"] == "\n\n" and meta["agg"] == "min" and meta["loss"] == "td"
    assert (
        meta["prompt_template"]
        == json.loads((tiny_policy / "model" / "tdrm_policy.json").read_text())["prompt_template"]
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert (
        metrics["train_steps"] == 4 and metrics["eval_rows"] == 16 and metrics["train_rows"] == 48
    )
    for key in ("step_auroc", "outcome_auroc", "smoothness", "smoothness_tokens", "td_error"):
        assert metrics[key] is not None and 0.0 <= metrics[key] <= 1.0, key
    assert set(metrics["outcome_auroc_by_agg"]) == {"min", "last", "prod", "mean"}
    assert isinstance(metrics["degenerate"], bool) and metrics["value_std"] >= 0
    logged = [e for e in json.loads((out / "log_history.json").read_text()) if "loss" in e]
    assert logged and all({"td_error", "smoothness", "smoothness_tokens"} <= set(e) for e in logged)
    scores = load_prm(out).score(["1+2+3"], [["1+2=3", "3+3=6", "answer 6"]])
    assert len(scores[0]) == 3 and all(0 < v < 1 for v in scores[0])


def test_lora_run_saves_a_merged_plain_model(data, tmp_path):
    from tdrm_cli.prm import load_prm

    out = tmp_path / "lora"
    result = invoke(
        "train-prm", "--data", data, "--out", out, "--max-steps", "2", "--lora-r", "4", *TINY
    )
    assert result.exit_code == 0, result.output
    from safetensors import safe_open

    with safe_open(str(out / "model" / "model.safetensors"), "pt") as f:
        assert not any("lora" in k for k in f.keys())
    assert len(load_prm(out).score(["1+2"], [["1+2=3", "answer 3"]])[0]) == 2


def test_resume_continues_from_the_last_checkpoint(data, tmp_path, monkeypatch):
    from tdrm_cli.targets import Targets

    out = tmp_path / "resume"
    args = [
        "train-prm",
        "--data",
        data,
        "--out",
        out,
        "--max-steps",
        "4",
        "--save-steps",
        "2",
        *TINY,
    ]
    calls, real_call = [], Targets.__call__

    def killed_at_step_3(self, values, batch):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("killed")
        return real_call(self, values, batch)

    monkeypatch.setattr(Targets, "__call__", killed_at_step_3)
    assert invoke(*args).exit_code != 0
    assert (
        read_manifest(out)["status"] == "failed" and (out / "checkpoints" / "checkpoint-2").is_dir()
    )
    monkeypatch.undo()
    result = invoke(*args, "--resume")
    assert result.exit_code == 0, result.output
    manifest = read_manifest(out)
    assert (
        manifest["status"] == "complete"
        and manifest["resumed"]
        and manifest["metrics"]["train_steps"] == 4
    )
    logged = [e["step"] for e in json.loads((out / "log_history.json").read_text()) if "loss" in e]
    assert logged == [1, 2, 3, 4] and not (out / "checkpoints").exists()


def test_truth_loss_end_to_end_on_a_collect_run(tiny_collect, tmp_path):
    from tdrm_cli.prm import load_prm

    out = tmp_path / "prm-truth"
    result = invoke(
        "train-prm",
        "--data",
        tiny_collect,
        "--loss",
        "truth",
        "--out",
        out,
        "--max-steps",
        "2",
        "--eval-fraction",
        "0.34",
        *TINY,
    )
    assert result.exit_code == 0, result.output
    stderr = " ".join(result.stderr.split())  # rich wraps long lines
    assert "target exact step truth (prefix-correct)" in stderr
    assert read_manifest(out)["status"] == "complete"
    assert json.loads((out / "model" / "tdrm_prm.json").read_text())["loss"] == "truth"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train_steps"] == 2 and metrics["eval_rows"] > 0
    assert isinstance(metrics["degenerate"], bool) and isinstance(metrics["value_std"], float)
    assert isinstance(metrics["degenerate_reasons"], list)
    assert (metrics["degenerate"] is True) == bool(metrics["degenerate_reasons"])
    if metrics["degenerate"]:  # 2 steps on a few rollouts: usually still at chance
        assert "warning: train-prm: the PRM learned nothing beyond the base rate" in stderr
    assert len(load_prm(out).score(["1+2"], [["1+2=3", "answer 3"]])[0]) == 2


def test_truth_loss_fits_prefix_correct_targets(data, tiny_base, tmp_path, monkeypatch):
    """Every batch's targets under --loss truth are the running minimum of its step truth."""
    import torch

    from tdrm_cli.targets import TARGETS

    seen = []
    real = TARGETS["truth"]

    def spy(spec, values, batch):
        y = real.target(spec, values, batch)
        seen.append((y, batch))
        return y

    monkeypatch.setitem(TARGETS, "truth", real._replace(target=spy))
    out = tmp_path / "truth"
    args = ["--base", tiny_base, "--loss", "truth", "--max-steps", "2", "--eval-fraction", "0"]
    result = invoke("train-prm", "--data", data, "--out", out, *args, *TINY)
    assert result.exit_code == 0, result.output
    assert len(seen) == 2
    for y, batch in seen:
        assert batch["has_truth"].all()
        mask = batch["step_mask"]
        want = torch.cummin(batch["truth_labels"], dim=1).values * mask
        assert torch.equal(y, want) and y[~mask].sum() == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["degenerate"] is None  # nothing held out: nothing to judge


def test_collator_carries_truth_labels():
    import torch

    from tdrm_cli.prm_trainer import StepCollator
    from tdrm_cli.targets import Targets

    features = [
        {
            "input_ids": [1, 5, 6, 7, 8, 9],
            "step_index": [2, 3, 5],
            "prompt_len": 2,
            "terminal": 1.0,
            "mc_labels": None,
            "truth_labels": [1, 0, 1],
        },
        {
            "input_ids": [1, 5, 6],
            "step_index": [2],
            "prompt_len": 2,
            "terminal": 0.0,
            "mc_labels": None,
        },
    ]
    batch = StepCollator(pad_id=0)(features)
    assert batch["has_truth"].tolist() == [True, False]
    assert batch["truth_labels"].tolist() == [[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]]
    y = Targets("truth")(torch.full((2, 3), 0.5), batch)
    assert y.tolist() == [[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]


def rewrite_rollouts(run: Path, **cells) -> Path:
    """Set `column=(row, value)` cells in a collect run's rollouts.parquet (a whole column
    to None with `column=None`)."""
    import pandas as pd

    path = run / "rollouts.parquet"
    frame = pd.read_parquet(path)
    for column, cell in cells.items():
        if cell is None:
            frame[column] = None
        else:
            frame.at[cell[0], column] = cell[1]
    frame.to_parquet(path)
    return path


def test_truth_loss_needs_step_truth(tiny_base, tmp_path):
    run = make_collect_run(tmp_path / "collect", tiny_base, problems=4)
    path = rewrite_rollouts(run, step_truth=None)
    args = ["train-prm", "--data", run, "--loss", "truth", "--out", tmp_path / "r"]
    assert (
        one_line_error(invoke(*args))
        == f"error: {path}: no step_truth (the task cannot check single steps), but --loss truth needs it"
    )
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "value, message",
    [
        (None, "field 'step_truth' is empty, but --loss truth needs it"),
        ([1], "field 'step_truth' has 1 values for "),
        ([1, 2, 1, 1], "field 'step_truth' holds 2 at step 1, expected 0 or 1"),
    ],
)
def test_truth_loss_bad_row_names_file_row_and_field(tiny_base, tmp_path, value, message):
    import pandas as pd

    run = make_collect_run(tmp_path / "collect", tiny_base, problems=4)
    frame = pd.read_parquet(run / "rollouts.parquet")
    row = next(i for i, steps in enumerate(frame["steps"]) if len(steps) == 4)
    path = rewrite_rollouts(run, step_truth=(row, value))
    args = ["train-prm", "--data", run, "--loss", "truth", "--out", tmp_path / "r"]
    name = f"row {row} (problem {frame['problem_id'][row]}, sample {frame['sample_idx'][row]})"
    assert one_line_error(invoke(*args)).startswith(f"error: {path}: {name}: {message}")
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------- recorded losses

# The first four logged training losses on CPU, seed 0, recorded once with this exact setup.
# A change to the target math, the collator, the head or the loss moves these.
RECORDED = {
    "td": [0.692498, 0.694339, 0.671421, 0.867482],
    "nstep-refresh": [0.692136, 0.694661, 0.673946, 0.543850],
    "mc-hard": [0.692021, 0.691127, 0.546434, 0.741469],
    "mix": [0.692420, 0.693620, 0.632736, 0.811899],
}
VARIANTS = {
    "td": ["--loss", "td", "--td-lambda", "0.8", "--gamma", "1.0"],
    "nstep-refresh": ["--loss", "td", "--n-step", "2", "--gamma", "0.8", "--target-refresh", "2"],
    "mc-hard": ["--loss", "mc", "--hard"],
    "mix": ["--loss", "td", "--td-lambda", "0.5", "--td-mix", "0.5"],
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_first_losses_match_recorded_values(variant, data, tiny_base, tmp_path):
    out = tmp_path / variant
    result = invoke(
        "train-prm",
        "--data",
        data,
        "--base",
        tiny_base,
        "--out",
        out,
        "--max-steps",
        "4",
        "--learning-rate",
        "1e-2",
        "--eval-fraction",
        "0",
        "--seed",
        "0",
        *VARIANTS[variant],
        *TINY,
    )
    assert result.exit_code == 0, result.output
    losses = [e["loss"] for e in json.loads((out / "log_history.json").read_text()) if "loss" in e]
    assert losses == pytest.approx(RECORDED[variant], rel=1e-4)


# ---------------------------------------------------------------- bad input


def test_mc_loss_needs_step_labels(unlabeled, tmp_path):
    line = one_line_error(
        invoke("train-prm", "--data", unlabeled, "--loss", "mc", "--out", tmp_path / "r")
    )
    assert (
        line
        == f"error: {unlabeled / 'rollouts.parquet'}: no step_labels (collect with --mc-rollouts > 0), but --loss mc needs them"
    )
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--td-lambda", "1.5"], "error: --td-lambda 1.5: must be in [0, 1]"),
        (["--gamma", "0"], "error: --gamma 0.0: must be in (0, 1]"),
        (["--loss", "mc", "--n-step", "2"], "error: --n-step needs --loss td (got --loss mc)"),
    ],
)
def test_bad_flags(data, tmp_path, flags, message):
    assert (
        one_line_error(invoke("train-prm", "--data", data, "--out", tmp_path / "r", *flags))
        == message
    )


def test_base_that_is_not_a_causal_lm(data, tmp_path):
    t5 = tmp_path / "t5"
    t5.mkdir()
    (t5 / "config.json").write_text(
        json.dumps({"model_type": "t5", "architectures": ["T5ForConditionalGeneration"]})
    )
    line = one_line_error(
        invoke("train-prm", "--data", data, "--base", t5, "--out", tmp_path / "r")
    )
    assert (
        line
        == f"error: --base {t5}: not a causal LM (architectures: T5ForConditionalGeneration, model_type: t5)"
    )
    assert not (tmp_path / "r").exists()


def test_data_must_be_a_complete_collect_run(tiny_base, tmp_path):
    line = one_line_error(invoke("train-prm", "--data", tmp_path, "--out", tmp_path / "r"))
    assert line == f"error: --data {tmp_path}: not a tdrm run folder (no manifest.json)"


# ---------------------------------------------------------------- pieces


def test_split_by_problem_is_disjoint_and_seeded(data):
    from tdrm_cli.configs.train import TrainPRMConfig
    from tdrm_cli.stages.train_prm import load_rollouts, split_by_problem

    frame, _ = load_rollouts(TrainPRMConfig(data=str(data)))
    train, held = split_by_problem(frame, 0.25, seed=0)
    assert len(train) + len(held) == len(frame) and held["problem_id"].nunique() == 4
    assert not set(train["problem_id"]) & set(held["problem_id"])
    assert split_by_problem(frame, 0.25, seed=0)[1].equals(held)
    assert len(split_by_problem(frame, 0.0, seed=0)[1]) == 0


def test_collator_and_targets_agree_with_td():
    import torch

    from tdrm_cli import td
    from tdrm_cli.prm_trainer import StepCollator
    from tdrm_cli.targets import Targets

    features = [
        {
            "input_ids": [1, 5, 6, 7, 8],
            "step_index": [2, 4],
            "prompt_len": 2,
            "terminal": 1.0,
            "mc_labels": [1.0, 0.75],
        },
        {
            "input_ids": [1, 5, 6],
            "step_index": [2],
            "prompt_len": 2,
            "terminal": 0.0,
            "mc_labels": None,
        },
    ]
    batch = StepCollator(pad_id=0)(features)
    assert batch["has_mc"].tolist() == [True, False] and batch["step_tokens"][0].tolist() == [
        1.0,
        2.0,
    ]
    values = torch.tensor([[0.3, 0.6], [0.4, 0.0]])
    mask = batch["step_mask"]
    assert torch.equal(
        Targets("td", 1.0, 0.5)(values, batch),
        td.td_lambda_targets(values, None, batch["terminal"], mask, gamma=1.0, lam=0.5),
    )
    assert torch.equal(
        Targets("td", 0.8, n_step=1)(values, batch),
        td.nstep_targets(values, None, batch["terminal"], mask, n=1, gamma=0.8),
    )
    assert Targets("outcome")(values, batch).tolist() == [[1.0, 1.0], [0.0, 0.0]]
    assert Targets("mc", hard=True)(values, batch).tolist() == [[1.0, 1.0], [0.0, 0.0]]
    mixed = Targets("td", 1.0, 1.0, td_mix=0.5)(values, batch)
    assert mixed.tolist() == [[1.0, 0.875], [0.0, 0.0]]  # row 2 has no MC labels: pure TD (= R = 0)


# ---------------------------------------------------------------- two processes


@pytest.mark.slow
def test_ddp_two_cpu_processes(tiny_base, tmp_path):
    from tdrm_cli.prm import load_prm

    # Equal step counts per rollout, so the mean of the two ranks' per-batch losses is the
    # loss of their union and one process on the same global batch takes the same steps.
    data = make_collect_run(tmp_path / "collect", tiny_base, cut=False)
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    torchrun = Path(sys.executable).parent / "torchrun"
    cmd = [
        str(torchrun),
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "tdrm_cli",
        "train-prm",
        "--data",
        str(data),
        "--out",
        str(out),
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--eval-fraction",
        "0.25",
        "--logging-steps",
        "1",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.strip().splitlines()[-1] == str(out)
    metrics = json.loads((out / "metrics.json").read_text())
    # 48 training rollouts, global batch 8 = 2 ranks x 4: six optimizer steps in one epoch
    assert metrics["world_size"] == 2 and metrics["per_device_batch_size"] == 4
    assert metrics["train_steps"] == 6 and metrics["train_rows"] == 48
    assert read_manifest(out)["status"] == "complete"
    assert len(load_prm(out).score(["1+2"], [["1+2=3", "answer 3"]])[0]) == 2
    # One process on the same global batch of 8: the two ranks' gradients average to the full
    # batch's, so the weights agree up to float noise.
    single = tmp_path / "single"
    args = cmd[cmd.index("train-prm") :]
    args[args.index("--out") + 1] = str(single)
    one = subprocess.run([sys.executable, "-m", "tdrm_cli", *args], env=env, capture_output=True,
                         text=True, timeout=600)  # fmt: skip
    assert one.returncode == 0, one.stderr[-4000:]
    gap = weight_gap(out, single)
    assert gap < 1e-5, gap


def weight_gap(run: Path, other: Path) -> float:
    """Largest |difference| between the `model/` weights of two runs (same tensor names)."""
    from safetensors.torch import load_file

    a, b = (load_file(next((r / "model").glob("*.safetensors"))) for r in (run, other))
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_likelihood_head_end_to_end_and_refusals(tiny_collect, tmp_path):
    from tdrm_cli.prm import load_prm

    out = tmp_path / "prm-lik"
    common = ("train-prm", "--data", tiny_collect, "--head", "likelihood", *TINY)
    result = invoke(*common, "--out", out, "--max-steps", "2", "--eval-fraction", "0.34")
    assert result.exit_code == 0, result.output
    assert json.loads((out / "model" / "tdrm_prm.json").read_text())["head"] == "likelihood"
    prm = load_prm(out)
    assert prm.head == "likelihood"
    assert len(prm.score(["1+2"], [["1+2=3", "answer 3"]])[0]) == 2
    one_line_error(
        invoke(*common, "--out", tmp_path / "x", "--lora-r", "2"),
        "--head likelihood does not combine with --lora-r",
    )
    one_line_error(
        invoke(*common[: -len(TINY)], "--head", "mean", "--out", tmp_path / "y"), "--head mean"
    )
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_first_problems_draws_whole_problems():
    import pandas as pd

    from tdrm_cli.stages.train_prm import first_problems

    frame = pd.DataFrame({"problem_id": [f"p{i // 3}" for i in range(30)], "x": range(30)})
    some = first_problems(frame, 4, seed=0)
    assert some["problem_id"].nunique() == 4 and len(some) == 12  # all 3 rollouts of each
    assert first_problems(frame, 4, seed=0).equals(some)  # seeded
    assert set(first_problems(frame, 6, seed=0)["problem_id"]) > set(some["problem_id"])
    assert len(first_problems(frame, 99, seed=0)) == 30
