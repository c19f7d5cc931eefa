"""Training tokens/s: the TD `PRMTrainer` vs a plain `transformers.Trainer` doing token-level regression.

Same model, same batches (same collator output and sampler seed), same optimizer settings.
The plain Trainer regresses the head's logits at the step tokens onto the verdict with
MSE via `compute_loss_func`; the PRM trainer computes TD(lambda) targets, BCE and its
logged metrics. Every optimizer step is timed (data, forward, loss, backward, update);
runs alternate, and each step keeps its fastest time over the repeats, which strips
out bursts from other processes on a shared CPU (both trainers draw the same batches).
Speed alone would pass a trainer that computes garbage fast, so the PRM trainer's logged
losses (every step is logged, by both trainers alike) are checked too: all finite, the
same in every repeat (same seed, same batches), falling (9 in 10 verdicts are correct, a
base rate 24 steps learn: the mean of the last 4 steps' losses at most 0.8x the first
4's; measured about 0.5x), and the first step's equal to the loss recomputed here
independently from that step's batch (a fresh copy of the model, the head read at every
step's last token in a loop, TD(lambda) targets from the recursion
G_L = R, G_t = (1 - lambda) V_{t+1} + lambda G_{t+1}, BCE averaged over real steps).
Needs: PRM trainer tokens/s >= 0.9x the plain Trainer's, and those loss checks.
The last lines print the ratio.
"""

from __future__ import annotations

import math
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
GAMMA, LAMBDA = 1.0, 0.8
NEEDED, TOLERANCE = 0.9, 1e-5  # tokens/s ratio; |logged - recomputed| and across repeats
FALLING = 0.8  # mean loss of the last 4 steps / of the first 4, at most


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
        logging_steps=1,  # every step's loss, to check
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


def training_run(make_trainer) -> dict:
    """One training run: per-step seconds, real (unpadded) tokens, logged losses, first batch."""
    trainer = make_trainer()
    timer, tokens, batches, collate = StepTimer(), [], [], trainer.data_collator

    def counting(features):
        batch = collate(features)
        tokens.append(int(batch["attention_mask"].sum()))
        if not batches:
            batches.append(batch)
        return batch

    trainer.data_collator = counting
    trainer.add_callback(timer)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"times": timer.times, "tokens": tokens, "losses": losses, "first": batches[0]}


def tokens_per_second(runs: list[dict]) -> float:
    """Tokens over the sum of each step's fastest time across repeats."""
    fastest = [min(times) for times in zip(*(r["times"] for r in runs), strict=True)]
    return sum(runs[0]["tokens"]) / sum(fastest)


def reference_loss(model, batch: dict) -> float:
    """The TD(lambda) BCE of one collated batch, written out step by step (no tdrm code)."""
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[
            ..., 0
        ]
    total, count = 0.0, 0
    for i in range(len(logits)):
        ends = batch["step_index"][i][batch["step_mask"][i]].tolist()
        z = [float(logits[i, end]) for end in ends]
        v = [1 / (1 + math.exp(-x)) for x in z]
        g = [0.0] * len(z)
        for t in reversed(range(len(z))):
            if t == len(z) - 1:
                g[t] = float(batch["terminal"][i])
            else:
                g[t] = GAMMA * ((1 - LAMBDA) * v[t + 1] + LAMBDA * g[t + 1])
            g[t] = min(max(g[t], 0.0), 1.0)
        for x, y in zip(z, g, strict=True):  # BCE with logits: softplus(x) - y * x
            total += max(x, 0.0) + math.log1p(math.exp(-abs(x))) - y * x
            count += 1
    return total / count


def loss_checks(td_runs: list[dict], reference: float) -> list[str]:
    """What is wrong with the PRM trainer's logged losses (empty: nothing)."""
    losses = td_runs[0]["losses"]
    problems = []
    if len(losses) != STEPS or not all(math.isfinite(x) for x in losses):
        problems.append(f"{len(losses)} logged losses, not {STEPS} finite ones: {losses[:4]}...")
        return problems
    spread = max(abs(a - b) for r in td_runs for a, b in zip(r["losses"], losses, strict=True))
    if spread > TOLERANCE:
        problems.append(f"losses differ across repeats by {spread:.2e}")
    if abs(losses[0] - reference) > TOLERANCE:
        problems.append(f"first loss {losses[0]:.6f}, recomputed {reference:.6f}")
    if sum(losses[-4:]) > FALLING * sum(losses[:4]):
        first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
        problems.append(f"loss not falling: mean {first:.4f} (first 4), {last:.4f} (last 4)")
    return problems


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        base = policy_folder(Path(tmp) / "policy")
        tokenizer = load_tokenizer(str(base))
        questions, solutions, _ = arith_solutions(ROWS)
        verdicts = [int(i % 10 != 0) for i in range(ROWS)]  # a base rate to learn in 24 steps
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
                targets=Targets("td", GAMMA, LAMBDA),
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
                runs.append(training_run(make))
        reference = reference_loss(model(), td_runs[0]["first"])
    tokens = plain_runs[0]["tokens"]
    assert all(r["tokens"] == tokens for r in td_runs + plain_runs), "batches differ"
    td_rate, plain_rate = tokens_per_second(td_runs), tokens_per_second(plain_runs)
    ratio = td_rate / plain_rate
    losses = td_runs[0]["losses"]
    problems = loss_checks(td_runs, reference)
    print(f"threads {torch.get_num_threads()}, {STEPS} steps x batch {BATCH}, {REPEATS} repeats")
    print(f"plain Trainer (MSE)   {plain_rate:9.0f} tokens/s")
    print(f"PRMTrainer (TD)       {td_rate:9.0f} tokens/s")
    print(f"PRMTrainer losses     {', '.join(f'{x:.4f}' for x in losses)}")
    print(f"first loss            {losses[0]:.6f} logged, {reference:.6f} recomputed")
    ok = ratio >= NEEDED and not problems
    print(
        f"{'PASS' if ok else 'FAIL'}: ratio {ratio:.3f} (needs >= {NEEDED}); losses: "
        f"{'; '.join(problems) or 'finite, equal across repeats, falling, first one recomputed'}"
    )
    return report(
        "`prm_trainer`: PRMTrainer / plain Trainer tokens/s",
        ratio,
        f">= {NEEDED} and losses right",
        ok,
        f"first loss {losses[0]:.4f} vs {reference:.4f} recomputed"
        + (f", {len(problems)} loss checks failed" if problems else ""),
    )


if __name__ == "__main__":
    sys.exit(main())
