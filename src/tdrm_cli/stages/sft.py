"""`tdrm sft`: train the embedded default policy from scratch.

A small Qwen2-architecture causal LM, built from a config with a character tokenizer
made here (no download), is trained with `transformers.Trainer` on the task's
reference solutions, saved as a normal HF folder, and evaluated by greedy pass@1 on
held-out problems. The result is the policy every later stage starts from.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from tdrm_cli.configs.train import SFTConfig
from tdrm_cli.console import console, log
from tdrm_cli.runs import Run, atomic_write_json, run_stage, save_model
from tdrm_cli.solutions import sample_graded, split_and_grade
from tdrm_cli.steps import DEFAULT_SEPARATOR, POLICY_META, join_steps
from tdrm_cli.tasks import Problem, Task, load_task

PROMPT_TEMPLATE = "{question}\n\n"
CHARS = "0123456789+-*/=:()., \n?abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]


def build_char_tokenizer():
    """A character-level fast tokenizer: every character is one token, BOS prepended.

    Tokens are spelled in the byte-level alphabet (a space is 'Ġ', a newline 'Ċ') and
    decoded by the byte-level decoder: transformers 5 `AutoTokenizer` loads a Qwen2
    folder as `Qwen2Tokenizer`, which keeps the vocabulary and the BOS template but puts
    its own byte-level pre-tokenizer and decoder around them, so a saved folder then reads
    every string the same way whichever class opens it (the ids are those of the plain
    characters: whitespace used to be spelled as itself, which Qwen2Tokenizer dropped).
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    spelled = [byte_level.pre_tokenize_str(ch)[0][0] for ch in CHARS]
    vocab = {tok: i for i, tok in enumerate(SPECIALS + spelled)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated"), byte_level]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        clean_up_tokenization_spaces=False,
    )


def build_model(cfg: SFTConfig, tokenizer: Any):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.hidden_size * 4,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        num_key_value_heads=cfg.heads,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return Qwen2ForCausalLM(config)


def load_init(ref: str) -> tuple[Any, Any]:
    """(tokenizer, causal LM) of the policy `--init` names, to train further."""
    import torch
    from transformers import AutoModelForCausalLM

    from tdrm_cli.generation import load_tokenizer, model_load_errors, weights_kwargs
    from tdrm_cli.runs import resolve_model

    model_dir, _ = resolve_model(ref, "init", ("sft", "rl"))
    with model_load_errors(f"--init {ref}"):
        tokenizer = load_tokenizer(model_dir)
        model = AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=torch.float32, **weights_kwargs(model_dir)
        )
    return tokenizer, model


class SFTDataset:
    """Prompt tokens masked out of the loss; the solution and EOS are learned."""

    def __init__(self, task: Task, problems: list[Problem], tokenizer: Any):
        # One batched call each (the fast tokenizer encodes a list in one go).
        prompts = tokenizer([PROMPT_TEMPLATE.format(question=p.question) for p in problems])
        answers = tokenizer(
            [join_steps(task.reference_steps(p)) for p in problems], add_special_tokens=False
        )
        self.rows = []
        for prompt, answer in zip(prompts["input_ids"], answers["input_ids"], strict=True):
            answer = [*answer, tokenizer.eos_token_id]
            self.rows.append((prompt + answer, [-100] * len(prompt) + answer))

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        ids, labels = self.rows[i]
        return {"input_ids": ids, "labels": labels}


def pad_collator(pad_id: int):
    import torch

    def collate(batch: list[dict[str, list[int]]]) -> dict[str, Any]:
        width = max(len(b["input_ids"]) for b in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, b in enumerate(batch):
            n = len(b["input_ids"])
            ids[i, :n] = torch.tensor(b["input_ids"])
            labels[i, :n] = torch.tensor(b["labels"])
            mask[i, :n] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}

    return collate


def greedy_pass1(model: Any, tokenizer: Any, task: Task, problems: list[Problem]) -> float:
    """Greedy pass@1 of an in-memory policy on `problems` (one batch)."""
    from tdrm_cli.generation import HFBackend, Sampling

    prompts = [PROMPT_TEMPLATE.format(question=p.question) for p in problems]
    was_training = model.training
    model.eval()
    completions = HFBackend.wrap(model, tokenizer, batch_size=max(len(prompts), 1)).generate(
        prompts, Sampling(temperature=0.0, max_new_tokens=96)
    )
    model.train(was_training)
    right = [
        split_and_grade(task, p, c[0].text, DEFAULT_SEPARATOR)[2]
        for p, c in zip(problems, completions, strict=True)
    ]
    return sum(right) / len(right)


def stop_at_pass1(task: Task, problems: list[Problem], tokenizer: Any, target: float, every: int):
    """A Trainer callback: every `every` steps, greedy pass@1 on `problems` (held aside from
    the training problems); training stops once it reaches `target` (`.reached` then holds
    the step and the value)."""
    from transformers import TrainerCallback

    class StopAtPass1(TrainerCallback):
        reached: tuple[int, float] | None = None

        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step % every == 0 and model is not None:
                value = greedy_pass1(model, tokenizer, task, problems)
                if value >= target:
                    log(
                        f"sft: greedy pass@1 {value:.3f} >= {target} at step {state.global_step}; stopping"
                    )
                    self.reached = (state.global_step, value)
                    control.should_training_stop = True
            return control

    return StopAtPass1()


ATTEMPT_FILE = "attempt.json"
"""Under `checkpoints/`: which `--restarts` attempt the checkpoints belong to (for --resume)."""


def attempt_seed(seed: int, attempt: int) -> int:
    """The seed of restart `attempt` (attempt 0 is the run's own seed)."""
    return seed + 1000 * attempt


def train(cfg: SFTConfig, run: Run, task: Task) -> Path:
    """Train (with `--restarts`, again from fresh weights while `--stop-at-pass1` is not
    reached), save the policy, record what happened in the manifest metrics."""
    from tdrm_cli.checkpoints import steps_run

    ckpt_dir = run.path / "checkpoints"
    first = 0
    if cfg.resume and (ckpt_dir / ATTEMPT_FILE).is_file():
        saved = json.loads((ckpt_dir / ATTEMPT_FILE).read_text(encoding="utf-8"))["attempt"]
        first = min(int(saved), cfg.restarts)
    for attempt in range(first, cfg.restarts + 1):
        if attempt > first or not cfg.resume:
            shutil.rmtree(ckpt_dir, ignore_errors=True)
        atomic_write_json(ckpt_dir / ATTEMPT_FILE, {"attempt": attempt})
        seed = attempt_seed(cfg.seed, attempt)
        trainer, tokenizer, result, stopper = train_once(cfg, run, task, seed, attempt == first)
        if stopper is None or stopper.reached is not None or attempt == cfg.restarts:
            break
        log(
            f"sft: attempt {attempt + 1} (seed {seed}) never reached greedy pass@1 "
            f"{cfg.stop_at_pass1}; restarting from fresh weights with seed "
            f"{attempt_seed(cfg.seed, attempt + 1)}"
        )
    model_dir = run.path / "model"
    save_model(trainer.model, tokenizer, model_dir)  # no pickled training_args.bin
    meta = {"prompt_template": PROMPT_TEMPLATE, "separator": DEFAULT_SEPARATOR, "task": cfg.task}
    atomic_write_json(model_dir / POLICY_META, meta)
    metrics = run.manifest["metrics"]
    metrics["train_loss"] = round(float(result.training_loss), 4)
    metrics["train_steps"] = int(result.global_step)
    metrics["steps_run"] = steps_run(trainer)
    if stopper is not None:
        metrics["stopped_at_pass1"] = (
            None if stopper.reached is None else round(stopper.reached[1], 4)
        )
        metrics["attempts"] = attempt + 1
        metrics["attempt_seed"] = seed
        if stopper.reached is None:
            log(f"sft: greedy pass@1 never reached {cfg.stop_at_pass1}; trained every step")
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    return model_dir


def train_once(cfg: SFTConfig, run: Run, task: Task, seed: int, resume: bool):
    """One training from fresh weights (or `--init`) with `seed`: (trainer, tokenizer,
    train result, the --stop-at-pass1 callback or None)."""
    import torch
    from transformers import Trainer, TrainingArguments, set_seed

    from tdrm_cli.checkpoints import (
        NoFinalCheckpoint,
        StepCounter,
        StopOnNonFinite,
        check_finite,
        last_checkpoint,
    )
    from tdrm_cli.trainer_bar import training_bar

    set_seed(seed)
    if cfg.init is None:
        tokenizer = build_char_tokenizer()
        model = build_model(cfg, tokenizer)
    else:
        tokenizer, model = load_init(cfg.init)
    n_params = sum(p.numel() for p in model.parameters())
    shape = f"{model.config.num_hidden_layers}x{model.config.hidden_size}"
    start = f", from {cfg.init}" if cfg.init else ""
    log(f"policy: Qwen2 {shape}, {n_params / 1e6:.2f}M parameters, vocab {len(tokenizer)}{start}")
    problems = task.problems(
        "train", cfg.train_problems + (cfg.check_problems if cfg.stop_at_pass1 else 0)
    )
    dataset = SFTDataset(task, problems[: cfg.train_problems], tokenizer)
    callbacks = [NoFinalCheckpoint(), StopOnNonFinite(), StepCounter()]
    stopper = None
    if cfg.stop_at_pass1 is not None:
        stopper = stop_at_pass1(
            task, problems[cfg.train_problems :], tokenizer, cfg.stop_at_pass1, cfg.check_every
        )
        callbacks.append(stopper)
    ckpt_dir = run.path / "checkpoints"
    args = TrainingArguments(
        output_dir=str(ckpt_dir),
        per_device_train_batch_size=cfg.batch_size,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=0.05,
        weight_decay=0.01,
        logging_steps=50,
        logging_first_step=True,  # the progress bar shows a loss from the first step on
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=1,
        report_to="none",
        seed=seed,
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
        disable_tqdm=True,  # the rich bar of training_bar instead
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=pad_collator(tokenizer.pad_token_id),
        callbacks=callbacks,
    )
    checkpoint = last_checkpoint(ckpt_dir) if resume and cfg.resume else None
    with training_bar(trainer, "sft", {"loss": "loss"}):
        result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    check_finite(trainer.model, result.training_loss, "sft")
    return trainer, tokenizer, result, stopper


def evaluate_policy(model_dir: Path, task: Task, n_problems: int, seed: int) -> dict[str, float]:
    """Greedy pass@1 on held-out problems, and how often temperature-1 samples hold a wrong step."""
    from tdrm_cli.generation import HFBackend, Sampling

    problems = task.problems("test", n_problems)
    backend = HFBackend(str(model_dir), batch_size=200)
    prompts = [PROMPT_TEMPLATE.format(question=p.question) for p in problems]
    greedy, sampled = (
        sample_graded(backend, task, problems, prompts, sampling, DEFAULT_SEPARATOR)
        for sampling in (
            Sampling(n=1, temperature=0.0, max_new_tokens=96),
            Sampling(n=1, temperature=1.0, max_new_tokens=96, seed=seed),
        )
    )
    correct = [g[0]["correct"] for g in greedy]
    truths = [s[0]["step_truth"] for s in sampled]
    wrong_step = [t is not None and (len(t) == 0 or min(t) == 0) for t in truths]
    n = max(len(problems), 1)
    return {
        "pass@1": round(sum(correct) / n, 4),
        "sample_wrong_step_frac": round(sum(wrong_step) / n, 4),
        "eval_problems": len(problems),
    }


def run(cfg: SFTConfig) -> Path:
    task = load_task(cfg.task)
    if not hasattr(task, "reference_steps"):
        from tdrm_cli.errors import UsageError

        raise UsageError(f"--task {cfg.task}: has no reference solutions to train a policy on")
    if cfg.init is not None:
        from tdrm_cli.runs import resolve_model

        resolve_model(cfg.init, "init", ("sft", "rl"))  # a bad --init leaves no run folder
    with run_stage("sft", cfg) as run:
        if cfg.init is not None:
            run.add_input("init", cfg.init)
        model_dir = train(cfg, run, task)
        if cfg.eval_problems:
            metrics = evaluate_policy(model_dir, task, cfg.eval_problems, cfg.seed)
            run.manifest["metrics"].update(metrics)
            console.print(
                f"[bold]sft[/] greedy pass@1 = {metrics['pass@1']:.3f} on {metrics['eval_problems']} held-out "
                f"problems; T=1 samples with a wrong step: {metrics['sample_wrong_step_frac']:.3f}"
            )
        atomic_write_json(run.path / "metrics.json", run.manifest["metrics"])
        run.complete()
    return run.path
