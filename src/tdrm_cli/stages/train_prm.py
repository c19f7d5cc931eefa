"""`tdrm train-prm`: fit a process reward model to TD, n-step, MC, exact-truth or outcome targets.

setup (rollouts, backbone, encoding) -> train (`prm_trainer.PRMTrainer`, a
`transformers.Trainer`, so accelerate/DeepSpeed, checkpoints, `--resume` and `--report-to`
come from the library) -> save (`model/` + `tdrm_prm.json`) -> held-out metrics. The
target math lives in `td.py`; this file only wires it up.

Multi-process runs (`torchrun --nproc_per_node N -m tdrm_cli train-prm ...`) split the
global `--batch-size` across ranks; only rank 0 writes the run folder.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any

from tdrm_cli import td
from tdrm_cli.configs.train import TrainPRMConfig
from tdrm_cli.console import console, log
from tdrm_cli.errors import UsageError, first_line
from tdrm_cli.metrics import degeneracy
from tdrm_cli.prm import (
    PRM,
    Encoded,
    check_causal_lm,
    check_head,
    load_tokenizer,
    load_value_model,
    prm_meta,
)
from tdrm_cli.prm_trainer import PRMTrainer, StepCollator, step_features
from tdrm_cli.runs import (
    Run,
    atomic_write_json,
    open_run,
    rank,
    resolve_model,
    world_size,
)
from tdrm_cli.solutions import is_list, rollouts_table, row_problem
from tdrm_cli.step_rewards import STEP_REWARDS
from tdrm_cli.steps import read_policy_meta
from tdrm_cli.targets import MC_LABELS, TARGETS, Needs, Targets
from tdrm_cli.voting import AGGREGATIONS, aggregate

REQUIRED_COLUMNS = ("problem_id", "prompt", "steps", "correct")


# ---------------------------------------------------------------- rollouts


def _row_name(frame, i: int) -> str:
    row = frame.iloc[i]
    sample = f", sample {row['sample_idx']}" if "sample_idx" in frame.columns else ""
    return f"row {i} (problem {row['problem_id']}{sample})"


def needed_columns(cfg: TrainPRMConfig) -> dict[str, tuple[str, Needs]]:
    """column -> (the option that needs it, what it is): the labels `--loss` fits, and the
    MC labels `--td-mix` mixes in (in some rows at least: a row without is plain TD)."""
    needs = {}
    loss = TARGETS[cfg.loss].needs
    if loss is not None:
        needs[loss.column] = (f"--loss {cfg.loss}", loss)
    if cfg.td_mix is not None:
        needs.setdefault(MC_LABELS.column, ("--td-mix", MC_LABELS))
    rewards = STEP_REWARDS[cfg.step_reward].needs
    if rewards is not None:
        needs.setdefault(rewards.column, (f"--step-reward {cfg.step_reward}", rewards))
    return needs


def load_rollouts(cfg: TrainPRMConfig):
    """(the collect run's rollouts with steps, how many rows without steps were dropped).

    Every row is checked for what `--loss` needs; a bad one is a UsageError naming it."""
    path, table = rollouts_table(cfg.data, "data", REQUIRED_COLUMNS)
    frame = table.to_pandas()
    if frame.empty:
        raise UsageError(f"{path}: no rows")
    frame = frame.reset_index(drop=True)
    needs = needed_columns(cfg)
    for column, (flag, need) in needs.items():
        if column not in frame.columns or all(v is None for v in frame[column]):
            raise UsageError(
                f"{path}: no {column} ({need.source}), but {flag} needs {need.pronoun}"
            )
    columns = [c for c in (*REQUIRED_COLUMNS, "step_labels", "step_truth") if c in frame.columns]
    loss = TARGETS[cfg.loss].needs  # every row needs what its loss fits, and its step rewards read
    flags = {loss.column: f"--loss {cfg.loss}"} if loss else {}
    rewards = STEP_REWARDS[cfg.step_reward].needs
    if rewards is not None:
        flags.setdefault(rewards.column, f"--step-reward {cfg.step_reward}")
    for i, row in enumerate(frame[columns].itertuples(index=False, name=None)):
        problem = row_problem(dict(zip(columns, row, strict=True)), flags)
        if problem:
            raise UsageError(f"{path}: {_row_name(frame, i)}: {problem}")
    frame["steps"] = [[] if steps is None else list(steps) for steps in frame["steps"]]
    for column in ("step_labels", "step_truth"):
        frame[column] = [_as_list(v) for v in frame[column]] if column in frame.columns else None
    keep = [len(s) > 0 for s in frame["steps"]]
    if not any(keep):
        raise UsageError(f"{path}: no rollouts with steps to train on (all {len(frame)} have none)")
    return frame[keep].reset_index(drop=True), len(keep) - sum(keep)


def _as_list(value: Any) -> list | None:
    return None if value is None or not is_list(value) else list(value)


def split_by_problem(frame, fraction: float, seed: int):
    """(train, held-out): whole problems go to one side, the same way for a given seed."""
    ids = sorted(frame["problem_id"].unique())
    random.Random(seed).shuffle(ids)
    n_eval = (
        min(max(round(len(ids) * fraction), 1), len(ids) - 1)
        if fraction > 0 and len(ids) > 1
        else 0
    )
    held_out = frame["problem_id"].isin(set(ids[:n_eval]))
    return frame[~held_out].reset_index(drop=True), frame[held_out].reset_index(drop=True)


def first_problems(frame, n: int, seed: int):
    """The rollouts of `n` of the frame's problems (a seeded draw; all when it has fewer)."""
    ids = sorted(frame["problem_id"].unique())
    random.Random(f"train-problems|{seed}").shuffle(ids)
    return frame[frame["problem_id"].isin(set(ids[:n]))].reset_index(drop=True)


def resolve_base(cfg: TrainPRMConfig, frame) -> tuple[str, str]:
    """(reference as given, loadable model folder): `--base`, else the policy that made the data."""
    ref = cfg.base
    if ref is None:
        policies = frame["policy"].dropna().unique() if "policy" in frame.columns else []
        if len(policies) != 1:
            raise UsageError(
                f"--data {cfg.data}: rollouts name {len(policies)} policies; pass --base"
            )
        ref = str(policies[0])
    model_dir, _ = resolve_model(ref, "base", ("sft", "rl"))
    return ref, model_dir


def encode_rows(prm: PRM, frame) -> list[dict[str, Any]]:
    """One training item per rollout: piecewise token ids, step ends, verdict, MC labels and
    exact step truth (None where missing or not one value per step)."""
    items = []
    for question, steps, correct, labels, truth in zip(
        frame["prompt"],
        frame["steps"],
        frame["correct"],
        frame["step_labels"],
        frame["step_truth"],
        strict=True,
    ):
        truth = truth if truth is not None and len(truth) == len(steps) else None
        items.append(step_features(prm.encode(question, steps), float(correct), labels, truth))
    return items


# ---------------------------------------------------------------- setup


def apply_lora(model, cfg: TrainPRMConfig):
    """LoRA adapters on the backbone (peft picks the modules), full training of the head."""
    if not cfg.lora_r:
        return model
    try:
        from peft import LoraConfig, TaskType, get_peft_model
    except ImportError:
        raise UsageError("--lora-r: peft is not installed (pip install 'tdrm-cli[lora]')") from None
    lora = LoraConfig(
        task_type=TaskType.TOKEN_CLS, r=cfg.lora_r, lora_alpha=2 * cfg.lora_r, lora_dropout=0.0
    )
    try:
        return get_peft_model(model, lora)
    except ValueError as e:
        raise UsageError(f"--lora-r {cfg.lora_r}: {first_line(e)}") from None


def reporting(cfg: TrainPRMConfig, run: Run) -> tuple[list[str], list[Any]]:
    """Trainer `report_to` plus callbacks; tensorboard writes to the run's `logs/` on rank 0."""
    wanted = [r.strip() for r in cfg.report_to.split(",") if r.strip() and r.strip() != "none"]
    callbacks = []
    if "tensorboard" in wanted:
        wanted.remove("tensorboard")
        if rank() == 0:
            from torch.utils.tensorboard import SummaryWriter
            from transformers.integrations import TensorBoardCallback

            callbacks.append(TensorBoardCallback(SummaryWriter(log_dir=str(run.path / "logs"))))
    return wanted or ["none"], callbacks


def training_args(cfg: TrainPRMConfig, run: Run, report_to: list[str]):
    import torch
    from transformers import TrainingArguments

    cuda = torch.cuda.is_available()
    return TrainingArguments(
        output_dir=str(run.path / "checkpoints"),
        per_device_train_batch_size=cfg.batch_size // world_size(),
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=0.05,
        weight_decay=0.01,
        logging_steps=cfg.logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=1,
        report_to=report_to,
        seed=cfg.seed,
        use_cpu=not cuda,
        bf16=cuda and torch.cuda.is_bf16_supported(),
        dataloader_num_workers=0,
        remove_unused_columns=False,  # the collator needs step_index, terminal, mc_labels
        ddp_find_unused_parameters=False,
        disable_tqdm=True,  # the rich bar of training_bar instead
    )


# ---------------------------------------------------------------- train, save, evaluate


def check_base_head(cfg: TrainPRMConfig, base: str) -> None:
    """`--head likelihood` needs a backbone with tied input/output embeddings."""
    from transformers import AutoConfig

    from tdrm_cli.generation import model_load_errors

    if cfg.head != "linear":
        with model_load_errors(f"--base {base}"):
            config = AutoConfig.from_pretrained(base, trust_remote_code=cfg.trust_remote_code)
        check_head(cfg.head, config, f"--head {cfg.head} on --base {base}")


def train(cfg: TrainPRMConfig, run: Run, base: str, frame) -> tuple[PRM, dict[str, Any]]:
    import torch
    from transformers import set_seed

    from tdrm_cli.checkpoints import (
        NoFinalCheckpoint,
        StepCounter,
        StopOnNonFinite,
        check_finite,
        last_checkpoint,
        steps_run,
    )
    from tdrm_cli.trainer_bar import training_bar

    set_seed(cfg.seed)  # the new head's initialisation
    tokenizer = load_tokenizer(base, cfg.trust_remote_code)
    # float32 master weights whatever the checkpoint holds (transformers 5 loads dtype="auto");
    # bf16 on a GPU comes from the Trainer's autocast.
    model = load_value_model(
        base,
        tokenizer.pad_token_id,
        "base",
        cfg.trust_remote_code,
        dtype=torch.float32,
        allow_pickle=cfg.allow_pickle,
        new_head="value head initialised: new, as intended",
    )
    meta = prm_meta(
        tokenizer,
        read_policy_meta(base),
        agg=cfg.agg,
        head=cfg.head,
        loss=cfg.loss,
        base=str(Path(ref).resolve()) if Path(ref := cfg.base or base).exists() else str(ref),
        gamma=cfg.gamma,
        td_lambda=cfg.td_lambda,
        n_step=cfg.n_step,
        td_mix=cfg.td_mix,
        **({"step_reward": cfg.step_reward} if cfg.step_reward != "none" else {}),
    )
    encoder = PRM(model, tokenizer, meta)
    items = encode_rows(encoder, frame)
    model = apply_lora(model, cfg)
    report_to, callbacks = reporting(cfg, run)
    trainer = PRMTrainer(
        model=model,
        args=training_args(cfg, run, report_to),
        train_dataset=items,
        data_collator=StepCollator(tokenizer.pad_token_id),
        processing_class=tokenizer,
        callbacks=[*callbacks, NoFinalCheckpoint(), StopOnNonFinite(), StepCounter()],
        targets=Targets.from_config(cfg),
        target_refresh=cfg.target_refresh,
        head=cfg.head,
    )
    checkpoint = last_checkpoint(run.path / "checkpoints") if cfg.resume else None
    with training_bar(trainer, "train-prm", {"loss": "loss", "td_error": "TD error"}):
        result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    trainer.accelerator.wait_for_everyone()  # no rank may still write a checkpoint when rank 0 cleans up
    trained = trainer.accelerator.unwrap_model(trainer.model)
    if cfg.lora_r:
        trained = trained.merge_and_unload()
    check_finite(trained, result.training_loss, "train-prm")
    stats = {
        "train_loss": round(float(result.training_loss), 6),
        "train_steps": int(result.global_step),
        "steps_run": steps_run(trainer),
        "train_rows": len(items),
        "train_problems": int(frame["problem_id"].nunique()),
        "world_size": world_size(),
        "per_device_batch_size": cfg.batch_size // world_size(),
    }
    if rank() == 0:
        atomic_write_json(run.path / "log_history.json", trainer.state.log_history)
    return PRM(trained, tokenizer, meta), stats


def auroc(labels: list[int], scores: list[float]) -> float | None:
    """ROC AUC, or None when only one class is present (undefined)."""
    from tdrm_cli.metrics import auroc as pairwise_auroc

    value = pairwise_auroc(scores, labels)
    return None if value is None else round(value, 4)


def _padded(values: list[list[float]], encoded: list[Encoded]):
    """`[rows, steps]` values, step mask and tokens per step for the td.py metrics."""
    import torch

    shape = (len(values), max(len(v) for v in values))
    value_tensor, mask, step_tokens = (
        torch.zeros(shape),
        torch.zeros(shape, dtype=torch.bool),
        torch.ones(shape),
    )
    for i, (e, v) in enumerate(zip(encoded, values, strict=True)):
        value_tensor[i, : len(v)] = torch.tensor(v)
        mask[i, : len(v)] = True
        step_tokens[i, : len(v)] = torch.tensor(e.step_tokens, dtype=torch.float32)
    return value_tensor, mask, step_tokens


def _label_batch(frame, mask) -> dict[str, Any]:
    """The step labels of the held-out rows, padded like a `StepCollator` batch (what a
    `--step-reward` may read)."""
    import torch

    labels = torch.zeros(mask.shape)
    has = torch.zeros(mask.shape[0], dtype=torch.bool)
    for i, row in enumerate(frame["step_labels"]):
        if row is not None and len(row) == int(mask[i].sum()):
            labels[i, : len(row)] = torch.tensor(row, dtype=torch.float32)
            has[i] = True
    return {"mc_labels": labels, "has_mc": has, "step_mask": mask}


def heldout_metrics(prm: PRM, frame, targets: Targets) -> dict[str, Any]:
    """Step AUROC vs step_truth, outcome AUROC per aggregation, smoothness, mean |TD error|,
    and `metrics.degeneracy` (`value_std`, `degenerate`, `degenerate_reasons`).

    The TD error uses the run's TD settings for every `--loss`, so PRMs trained on
    different targets are compared on the same yardstick.
    """
    import torch

    encoded = [prm.encode(q, s) for q, s in zip(frame["prompt"], frame["steps"], strict=True)]
    values = prm.score_encoded(encoded)
    truth_pairs = [
        (t, v)
        for row_truth, row_values in zip(frame["step_truth"], values, strict=True)
        if row_truth is not None and len(row_truth) == len(row_values)
        for t, v in zip(row_truth, row_values, strict=True)
    ]
    correct = [int(c) for c in frame["correct"]]
    by_agg = {agg: auroc(correct, [aggregate(v, agg) for v in values]) for agg in AGGREGATIONS}
    value_tensor, mask, step_tokens = _padded(values, encoded)
    terminal = torch.tensor(correct, dtype=torch.float32)
    y = targets.td(value_tensor, terminal, mask, _label_batch(frame, mask))
    flags = degeneracy(
        values,
        step=([v for _, v in truth_pairs], [t for t, _ in truth_pairs]) if truth_pairs else None,
        outcome=([aggregate(v, prm.agg) for v in values], correct),
    )
    return {
        "eval_rows": len(frame),
        "step_auroc": auroc([t for t, _ in truth_pairs], [v for _, v in truth_pairs])
        if truth_pairs
        else None,
        "outcome_auroc": by_agg[prm.agg],
        "outcome_auroc_by_agg": by_agg,
        "smoothness": round(float(td.smoothness(value_tensor, mask)), 6),
        "smoothness_tokens": round(float(td.smoothness(value_tensor, mask, step_tokens)), 6),
        "td_error": round(float(td.td_error(value_tensor, y, mask)), 6),
        **flags,
    }


def run(cfg: TrainPRMConfig) -> Path:
    frame, without_steps = load_rollouts(cfg)
    base_ref, base = resolve_base(cfg, frame)
    check_causal_lm(base, "base", cfg.trust_remote_code)
    check_base_head(cfg, base)
    if world_size() > 1 and cfg.out is None:
        raise UsageError(
            "--out is required with several processes (every rank must write the same folder)"
        )
    if cfg.batch_size % world_size():
        raise UsageError(
            f"--batch-size {cfg.batch_size}: not divisible by {world_size()} processes"
        )
    train_frame, eval_frame = split_by_problem(frame, cfg.eval_fraction, cfg.seed)
    if cfg.train_problems is not None:
        train_frame = first_problems(train_frame, cfg.train_problems, cfg.seed)
    target = Targets.from_config(cfg).label()
    with open_run("train-prm", cfg) as run:
        run.add_input("data", cfg.data)
        run.add_input("base", base_ref)
        if rank() == 0:
            if without_steps:  # logged once every input has passed its checks
                log(f"skipping {without_steps} rollouts without steps (nothing to score)")
            log(
                f"train-prm: {len(train_frame)} train / {len(eval_frame)} held-out rollouts, base {base}, "
                f"target {target}, gamma {cfg.gamma}, {world_size()} process(es)"
            )
        prm, metrics = train(cfg, run, base, train_frame)
        if rank() != 0:
            return run.path
        prm.save(run.path / "model")
        if len(eval_frame):
            metrics.update(heldout_metrics(prm, eval_frame, Targets.from_config(cfg)))
        else:  # nothing held out: nothing to judge the PRM on
            metrics.update(degenerate=None, degenerate_reasons=[])
        atomic_write_json(run.path / "metrics.json", metrics)
        shutil.rmtree(run.path / "checkpoints", ignore_errors=True)  # kept until here for --resume
        run.complete(metrics)
        console.print(
            f"[bold]train-prm[/] held-out step AUROC {metrics.get('step_auroc')}, outcome AUROC "
            f"({cfg.agg}) {metrics.get('outcome_auroc')}, smoothness {metrics.get('smoothness')}"
        )
        if metrics["degenerate"]:
            console.print(
                "[yellow]warning: train-prm: the PRM learned nothing beyond the base rate on the "
                f"held-out rollouts ({'; '.join(metrics['degenerate_reasons'])})[/]",
                highlight=False,
            )
    return run.path
