import json

from conftest import invoke
from tdrm_cli.runs import read_manifest


def test_sft_end_to_end(tiny_policy):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    manifest = read_manifest(tiny_policy)
    assert manifest["status"] == "complete" and manifest["stage"] == "sft"
    model_dir = tiny_policy / "model"
    assert (model_dir / "model.safetensors").is_file()
    assert not list(model_dir.glob("*.bin")) and not (tiny_policy / "checkpoints").exists()
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    assert model.config.model_type == "qwen2" and len(tokenizer) == model.config.vocab_size
    metrics = json.loads((tiny_policy / "metrics.json").read_text())
    assert 0.0 <= metrics["pass@1"] <= 1.0 and metrics["eval_problems"] == 8
    assert json.loads((model_dir / "tdrm_policy.json").read_text())["separator"] == "\n\n"


def test_sft_prints_run_path_last_and_refuses_complete(tmp_path):
    out = tmp_path / "sft"
    args = [
        "sft",
        "--out",
        out,
        "--max-steps",
        "2",
        "--train-problems",
        "64",
        "--hidden-size",
        "16",
        "--layers",
        "1",
        "--heads",
        "1",
        "--eval-problems",
        "0",
    ]
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().splitlines()[-1] == str(out)
    again = invoke(*args)
    assert again.exit_code == 2
    assert "already holds a complete run" in again.stderr
    assert invoke(*args, "--overwrite").exit_code == 0


def test_every_stage_loads_the_policy_tokenizer_intact(tiny_policy):
    """Every loader the stages use must round-trip text (plain AutoTokenizer, which
    transformers 5 resolves to the model type's tokenizer: test_plain_transformers.py)."""
    from tdrm_cli.configs.train import RLConfig
    from tdrm_cli.generation import load_tokenizer
    from tdrm_cli.prm import load_tokenizer as prm_load_tokenizer
    from tdrm_cli.stages.rl import load_policy_tokenizer

    model_dir = str(tiny_policy / "model")
    text = "12+7-3\n\n12+7=19\n\nanswer 16"
    loaders = [
        load_tokenizer(model_dir),
        prm_load_tokenizer(model_dir),
        load_policy_tokenizer(RLConfig(policy=str(tiny_policy), reward="rlvr"), model_dir),
    ]
    for tokenizer in loaders:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert len(ids) == len(text)
        assert tokenizer.decode(ids) == text


def test_stop_at_pass1_stops_at_the_first_check_that_reaches_it(tmp_path, monkeypatch):
    from tdrm_cli.stages import sft

    checked = []

    def fake_pass1(model, tokenizer, task, problems):
        checked.append(len(problems))
        return [0.1, 0.4, 0.7, 0.9][len(checked) - 1]

    monkeypatch.setattr(sft, "greedy_pass1", fake_pass1)
    args = ["sft", "--out", tmp_path / "s", "--max-steps", "40", "--train-problems", "200"]
    tiny = ["--hidden-size", "16", "--layers", "1", "--heads", "1", "--eval-problems", "0"]
    flags = ["--stop-at-pass1", "0.6", "--check-every", "5", "--check-problems", "7"]
    result = invoke(*args, *tiny, *flags)
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "s" / "metrics.json").read_text())
    # Checks at steps 5, 10, 15: the third (0.7) reaches 0.6, so training ends at step 15.
    assert checked == [7, 7, 7]
    assert metrics["train_steps"] == 15 and metrics["stopped_at_pass1"] == 0.7


def test_restarts_train_again_from_fresh_weights_until_the_target_is_reached(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from tdrm_cli.stages import sft

    values = iter([0.1, 0.2, 0.1, 0.3, 0.8])  # attempt 1: 2 checks, 2: 2 checks, 3: reaches

    def fake_pass1(model, tokenizer, task, problems):
        return next(values)

    monkeypatch.setattr(sft, "greedy_pass1", fake_pass1)
    args = ["sft", "--out", tmp_path / "s", "--max-steps", "10", "--train-problems", "100"]
    tiny = ["--hidden-size", "16", "--layers", "1", "--heads", "1", "--eval-problems", "0"]
    flags = ["--stop-at-pass1", "0.6", "--check-every", "5", "--restarts", "3", "--seed", "4"]
    result = invoke(*args, *tiny, *flags)
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "s" / "metrics.json").read_text())
    assert metrics["attempts"] == 3 and metrics["attempt_seed"] == 2004
    assert metrics["stopped_at_pass1"] == 0.8 and metrics["train_steps"] == 5
    assert not (tmp_path / "s" / "checkpoints").exists()
    # the third attempt is exactly a fresh run with its seed: nothing carried over
    values = iter([0.8])
    fresh = [*flags[:4], "--seed", "2004"]
    assert invoke(*args[:2], tmp_path / "f", *args[3:], *tiny, *fresh).exit_code == 0
    restarted = load_file(tmp_path / "s" / "model" / "model.safetensors")
    alone = load_file(tmp_path / "f" / "model" / "model.safetensors")
    assert all((restarted[k] == alone[k]).all() for k in alone)
    refused = invoke("sft", "--restarts", "2", "--out", tmp_path / "t")
    assert refused.exit_code == 2 and "--restarts needs --stop-at-pass1" in refused.stderr


def test_greedy_pass1_grades_the_models_greedy_solutions(tiny_policy):
    from transformers import AutoModelForCausalLM

    from tdrm_cli.generation import HFBackend, Sampling
    from tdrm_cli.stages.sft import PROMPT_TEMPLATE, greedy_pass1
    from tdrm_cli.steps import split_steps
    from tdrm_cli.tasks import grade, load_task

    task = load_task("arith")
    problems = task.problems("train", 12)
    model_dir = tiny_policy / "model"
    backend = HFBackend(str(model_dir), batch_size=12)
    greedy = backend.generate(
        [PROMPT_TEMPLATE.format(question=p.question) for p in problems],
        Sampling(n=1, temperature=0.0, max_new_tokens=96),
    )
    expected = sum(
        grade(task, p, split_steps(g[0].text))[1] for p, g in zip(problems, greedy, strict=True)
    )
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    assert greedy_pass1(model, backend.tokenizer, task, problems) == expected / 12


def test_init_continues_from_a_policy(tiny_policy, tmp_path):
    from safetensors.torch import load_file

    out = tmp_path / "more"
    flags = ["--max-steps", "3", "--train-problems", "64", "--eval-problems", "0"]
    result = invoke("sft", "--init", tiny_policy, "--out", out, *flags)
    assert result.exit_code == 0, result.output
    before = load_file(tiny_policy / "model" / "model.safetensors")
    after = load_file(out / "model" / "model.safetensors")
    assert before.keys() == after.keys()  # same architecture as the policy, not the defaults
    assert any(not (before[k] == after[k]).all() for k in before)  # and trained further
    assert read_manifest(out)["inputs"]["init"]["path"] == str(tiny_policy.resolve())
    missing = invoke("sft", "--init", tmp_path / "nope", "--out", tmp_path / "x", *flags)
    assert missing.exit_code == 2 and not (tmp_path / "x").exists()


def test_resume_runs_only_the_steps_after_the_checkpoint(tmp_path, monkeypatch):
    """A run killed at step 13 resumes from checkpoint-10: 10 more steps, the same weights."""
    from safetensors.torch import load_file
    from transformers import Trainer

    flags = ["--max-steps", "20", "--save-steps", "10", "--train-problems", "64",
             "--hidden-size", "16", "--layers", "1", "--heads", "1", "--eval-problems", "0"]  # fmt: skip
    assert invoke("sft", "--out", tmp_path / "whole", *flags).exit_code == 0
    real, calls = Trainer.training_step, []

    def killed_once(self, *args, **kwargs):
        calls.append(self.state.global_step)
        if self.state.global_step == 13 and calls.count(13) == 1:
            raise RuntimeError("killed")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "training_step", killed_once)
    out = tmp_path / "crashed"
    assert invoke("sft", "--out", out, *flags).exit_code != 0
    assert read_manifest(out)["status"] == "failed"
    result = invoke("sft", "--out", out, "--resume", *flags)
    assert result.exit_code == 0, result.output
    metrics = read_manifest(out)["metrics"]
    assert metrics["train_steps"] == 20 and metrics["steps_run"] == 10, metrics
    whole = load_file(tmp_path / "whole" / "model" / "model.safetensors")
    resumed = load_file(out / "model" / "model.safetensors")
    assert max((whole[k] - resumed[k]).abs().max().item() for k in whole) < 1e-5
