"""Training tokens/s: the TD `PRMTrainer` vs a plain `transformers.Trainer` doing token-level regression.

Same model, same batches (same collator output and sampler seed), same optimizer settings.
The plain Trainer regresses the head's logits at the step tokens onto the verdict with
MSE via `compute_loss_func`; the PRM trainer computes TD(lambda) targets, BCE and its
logged metrics. Every optimizer step is timed (data, forward, loss, backward, update);
runs alternate, and each step keeps its fastest time over the repeats, which strips
out bursts from other processes on a shared CPU (both trainers draw the same batches).
Needs: PRM trainer tokens/s >= 0.9x the plain Trainer's. The last lines print the ratio.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch
from common import arith_solutions, policy_folder, report
from transformers import Trainer, TrainerCallback, TrainingArguments

from tdrm_cli.prm import PRM, load_tokenizer, load_value_model, prm_meta
from tdrm_cli.prm_trainer import PRMTrainer, StepCollator
from tdrm_cli.steps import read_policy_meta
from tdrm_cli.targets import Targets

ROWS, BATCH, STEPS, REPEATS = 512, 16, 24, 4


def regression_collator(collate: StepCollator):
    """The same padded batch, with per-token float labels (NaN = no step ends here)."""

    def collate_plain(features):
        batch = collate(features)
        labels = torch.full(batch["input_ids"].shape, float("nan"))
        for i, mask in enumerate(batch["step_mask"]):
            labels[i, batch["step_index"][i, mask]] = batch["terminal"][i]
        return {
            "input_ids": batch["input_ids"],
            "attention_mask": batch["attention_mask"],
            "labels": labels,
        }

    return collate_plain


def regression_loss(outputs, labels, num_items_in_batch=None):
    logits = outputs.logits[..., 0]
    real = ~labels.isnan()
    return torch.nn.functional.mse_loss(logits[real], labels[real])


def args(tmp: str) -> TrainingArguments:
    return TrainingArguments(
        output_dir=tmp,
        per_device_train_batch_size=BATCH,
        max_steps=STEPS,
        learning_rate=3e-4,
        report_to="none",
        save_strategy="no",
        logging_steps=10,
        seed=0,
        use_cpu=True,
        dataloader_num_workers=0,
        remove_unused_columns=False,
        disable_tqdm=True,
    )


class StepTimer(TrainerCallback):
    """Wall time of every optimizer step, from the end of the previous one."""

    def __init__(self):
        self.times: list[float] = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.last = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        now = time.perf_counter()
        self.times.append(now - self.last)
        self.last = now


def step_times_and_tokens(make_trainer) -> tuple[list[float], list[int]]:
    """Per-step seconds and real (unpadded) tokens of one training run."""
    trainer = make_trainer()
    timer, tokens, collate = StepTimer(), [], trainer.data_collator

    def counting(features):
        batch = collate(features)
        tokens.append(int(batch["attention_mask"].sum()))
        return batch

    trainer.data_collator = counting
    trainer.add_callback(timer)
    trainer.train()
    return timer.times, tokens


def tokens_per_second(runs: list[tuple[list[float], list[int]]]) -> float:
    """Tokens over the sum of each step's fastest time across repeats."""
    fastest = [min(times) for times in zip(*(t for t, _ in runs), strict=True)]
    return sum(runs[0][1]) / sum(fastest)


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        base = policy_folder(Path(tmp) / "policy")
        tokenizer = load_tokenizer(str(base))
        questions, solutions, verdicts = arith_solutions(ROWS)
        encoder = PRM(
            load_value_model(str(base), tokenizer.pad_token_id),
            tokenizer,
            prm_meta(tokenizer, read_policy_meta(base)),
        )
        items = []
        for question, steps, verdict in zip(questions, solutions, verdicts, strict=True):
            e = encoder.encode(question, steps)
            items.append(
                {
                    "input_ids": e.ids,
                    "step_index": e.ends,
                    "prompt_len": e.prompt_len,
                    "terminal": float(verdict),
                    "mc_labels": None,
                }
            )
        collate = StepCollator(tokenizer.pad_token_id)

        def model():
            torch.manual_seed(0)
            return load_value_model(str(base), tokenizer.pad_token_id)

        def td_trainer():
            return PRMTrainer(
                model=model(),
                args=args(tmp + "/td"),
                train_dataset=items,
                data_collator=collate,
                targets=Targets("td", 1.0, 0.8),
            )

        def plain_trainer():
            return Trainer(
                model=model(),
                args=args(tmp + "/plain"),
                train_dataset=items,
                data_collator=regression_collator(collate),
                compute_loss_func=regression_loss,
            )

        td_runs, plain_runs = [], []
        for repeat in range(REPEATS):  # alternate which goes first
            order = [(plain_runs, plain_trainer), (td_runs, td_trainer)]
            for runs, make in order if repeat % 2 == 0 else order[::-1]:
                runs.append(step_times_and_tokens(make))
    assert all(tokens == plain_runs[0][1] for _, tokens in td_runs + plain_runs), "batches differ"
    td_rate, plain_rate = tokens_per_second(td_runs), tokens_per_second(plain_runs)
    ratio = td_rate / plain_rate
    print(f"threads {torch.get_num_threads()}, {STEPS} steps x batch {BATCH}, {REPEATS} repeats")
    print(f"plain Trainer (MSE)   {plain_rate:9.0f} tokens/s")
    print(f"PRMTrainer (TD)       {td_rate:9.0f} tokens/s")
    ok = ratio >= 0.9
    print(f"ratio {ratio:.3f}" if ok else f"FAILED ratio {ratio:.3f} (need >= 0.9)")
    return report("`prm_trainer`: PRMTrainer / plain Trainer tokens/s", ratio, ">= 0.9", ok)


if __name__ == "__main__":
    sys.exit(main())
