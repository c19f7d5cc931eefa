"""Dense GRPO advantages from a PRM's step values (`tdrm rl --advantage`), as pure functions.

Every GRPO framework reduces a PRM to one scalar per completion. Here the PRM's step values
reach the tokens of each step instead (docs/design.md#rl-advantages):

- `outcome`: TRL's own GRPO advantage, one number per completion (the default).
- `process`: DeepSeekMath's process-supervised GRPO (arXiv 2402.03300, section 4.1.3). A
  completion of K steps has step rewards r_1..r_K: the PRM's values of steps 1..K-1 and the
  verifier's verdict (0/1) as r_K, *replacing* the PRM's value of the last step (the PRM's
  last value estimates that verdict; the verifier knows it). All step rewards of a group's
  completions are normalised together by the group's mean and std, r~ = (r - mean) /
  (std + 1e-4) (TRL's epsilon: a group of equal rewards gets 0, not a division by zero),
  and a token of step j gets sum over j' >= j of r~_j'.
- `td`: the PRM as a critic. With V(s_1) the group's mean verdict (the value of the bare
  question, GRPO's baseline: the PRM scores no empty prefix), V(s_j) the PRM's value after
  step j-1, V(s_K+1) = 0 and r_K = verdict, a token of step j gets the TD error
  r_j + gamma V(s_j+1) - V(s_j) (r_j = 0 before the last step unless `--step-reward`
  gives rewards, `critic_rewards`; with rewards V(s_1) is the group's mean return). At gamma 1 the errors of a completion sum to verdict - baseline, the outcome
  advantage before scaling. Not normalised: the values are already in the verdict's units.

A completion with no steps counts as one step (its verdict). Steps are those of
`steps.split_steps`; `step_spans` gives their character offsets, and a token belongs to the
step its last character falls in, the separator after a step (and any whitespace) to that
step.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Sequence
from typing import Any

ADVANTAGES = {
    "outcome": "one GRPO advantage per completion (TRL's)",
    "process": "PRM step values on each step's tokens, group-normalised (DeepSeekMath process GRPO)",
    "td": "the PRM as critic: each step's tokens get its TD error r + gamma V(next) - V",
}
"""`--advantage` names -> what they give the tokens (the trainers: `process_grpo.TRAINERS`)."""

EPSILON = 1e-4  # TRL's: advantages / (std + 1e-4)


# ---------------------------------------------------------------- text -> steps -> tokens


def step_spans(text: str, separator: str) -> list[tuple[int, int]]:
    """[start, end) of every step of `split_steps(text, separator)`: `text[start:end]` is the step."""
    spans, at = [], 0
    for piece in text.split(separator):
        stripped = piece.strip()
        if stripped:
            start = at + (len(piece) - len(piece.lstrip()))
            spans.append((start, start + len(stripped)))
        at += len(piece) + len(separator)
    return spans


def token_char_ends(tokenizer: Any, ids: Sequence[int], text: str | None = None) -> list[int]:
    """Where each token's text ends in the decoded completion.

    Fast path: every token decoded alone (one batch in the Rust tokenizer when there is
    one), used when the pieces join into the completion's text (character and byte-level
    BPE tokenizers on whole characters). Otherwise (a character split over tokens, a
    SentencePiece leading space) every prefix is decoded: the end of token k is the length
    of the first k+1 tokens' text, a running maximum capped at the text's length.
    """
    ids = list(ids)
    text = tokenizer.decode(ids, skip_special_tokens=True) if text is None else text
    backend = getattr(tokenizer, "backend_tokenizer", None)
    decode = backend.decode_batch if backend is not None else tokenizer.batch_decode
    pieces = decode([[i] for i in ids], skip_special_tokens=True)
    if "".join(pieces) == text:
        return list(itertools.accumulate(len(piece) for piece in pieces))
    prefixes = decode([ids[: k + 1] for k in range(len(ids))], skip_special_tokens=True)
    ends, top = [], 0
    for prefix in prefixes:
        top = min(max(top, len(prefix)), len(text))
        ends.append(top)
    return ends


def token_steps(char_ends: Sequence[int], spans: Sequence[tuple[int, int]]) -> list[int]:
    """The step (0-based) of every token given its character end; 0 for all when no steps.

    A token belongs to the step holding its last character; what lies between steps (the
    separator) belongs to the step before it; a token adding no text (end-of-sequence)
    joins the step of the token before it.
    """
    starts = [start for start, _ in spans[1:]]
    out, previous_end = [], 0
    for end in char_ends:
        last_char = end - 1 if end > previous_end else previous_end - 1
        out.append(bisect.bisect_right(starts, last_char) if last_char >= 0 else 0)
        previous_end = max(previous_end, end)
    return out


# ---------------------------------------------------------------- the advantages (tensors)


def pad_steps(rows: Sequence[Sequence[float]], device: Any = None):
    """Ragged per-step numbers -> ([N, S] float tensor zero-padded, [N, S] bool mask)."""
    import torch

    width = max((len(r) for r in rows), default=0) or 1
    values = torch.zeros(len(rows), width, device=device)
    mask = torch.zeros(len(rows), width, dtype=torch.bool, device=device)
    for i, row in enumerate(rows):
        values[i, : len(row)] = torch.tensor(list(row), dtype=torch.float32)
        mask[i, : len(row)] = True
    return values, mask


def process_rewards(
    step_values: Sequence[Sequence[float]], verdicts: Sequence[float]
) -> list[list[float]]:
    """Step rewards of `process`/`td`: the PRM's values with the verdict replacing the last one
    (a completion without steps: [verdict])."""
    return [[*values[:-1], float(v)] for values, v in zip(step_values, verdicts, strict=True)]


def reverse_cumsum(x):
    """out[..., j] = sum over j' >= j of x[..., j']."""
    return x.flip(-1).cumsum(-1).flip(-1)


def process_advantages(
    rewards, mask, num_generations: int, scale: str = "group", eps: float = EPSILON
):
    """[N, S] step advantages of `process` from [N, S] step rewards (rows grouped by
    `num_generations` in order, as GRPO lays them out).

    `scale` follows GRPO's scale_rewards: `group` divides by the group's std of all its step
    rewards, `batch` by the whole batch's, `none` only subtracts the group mean. The std is
    Bessel-corrected, as TRL's (0 for fewer than two step rewards).
    """
    import torch

    groups = rewards.shape[0] // num_generations
    flat, flat_mask = rewards.reshape(groups, -1), mask.reshape(groups, -1).float()
    count = flat_mask.sum(1, keepdim=True)
    mean = (flat * flat_mask).sum(1, keepdim=True) / count.clamp(min=1)
    normalised = flat - mean
    if scale != "none":
        if scale == "group":
            squares, n = ((normalised**2) * flat_mask).sum(1, keepdim=True), count
        else:  # batch: one std over every step reward of the batch
            all_mean = (flat * flat_mask).sum() / flat_mask.sum().clamp(min=1)
            squares = (((flat - all_mean) ** 2) * flat_mask).sum().reshape(1, 1)
            n = flat_mask.sum().reshape(1, 1)
        std = torch.where(n > 1, (squares / (n - 1).clamp(min=1)).sqrt(), torch.zeros_like(n))
        normalised = normalised / (std + eps)
    normalised = (normalised * flat_mask).reshape(rewards.shape)
    return reverse_cumsum(normalised) * mask


def critic_advantages(values, mask, verdicts, baseline, gamma: float = 1.0, step_rewards=None):
    """[N, S] step advantages of `td`: r_j + gamma V(s_j+1) - V(s_j) on step j.

    `values` [N, S] are the PRM's values after each step (padded), `verdicts` and `baseline`
    [N] the verdict and V(s_1) of each completion, `step_rewards` [N, S] optional
    intermediate rewards (0 when None). The verdict is the last step's reward and replaces
    the PRM's value there (V after the last step is 0: the episode ended).
    """
    import torch

    lengths = mask.sum(1)
    last = torch.nn.functional.one_hot((lengths - 1).clamp(min=0), mask.shape[1]).bool() & mask
    before = torch.cat([baseline.reshape(-1, 1).to(values), values[:, :-1]], dim=1)
    after = torch.where(last, torch.zeros_like(values), values)
    rewards = torch.zeros_like(values) if step_rewards is None else step_rewards.to(values)
    rewards = rewards + last.to(values) * verdicts.reshape(-1, 1).to(values)
    return (rewards + gamma * after - before) * mask


def critic_rewards(source: Any, verdicts, mask):
    """(step rewards [N, S], terminal rewards [N]) of `td` under a `--step-reward` source
    (`step_rewards.StepRewards`; None: zeros and the verdicts).

    The source speaks `td.py`'s language: `rewards[:, t]` is the reward of the move from
    step t to step t+1, and the terminal reward R is the value after the last step. A
    critic step j runs from before step j to after it, so its reward is the source's
    `rewards[:, j-1]` (0 for the first step: no source reward enters it), and R (shaped
    by `shaping`) is the last step's reward, with V after it 0.
    """
    import torch

    if source is None:
        return None, verdicts
    rewards, terminal = source(verdicts, mask)
    terminal = torch.as_tensor(terminal).to(verdicts)
    if rewards is None:
        return None, terminal
    rewards = rewards.to(verdicts)
    shifted = torch.cat([torch.zeros_like(rewards[:, :1]), rewards[:, :-1]], dim=1)
    return shifted * mask, terminal


def group_mean(verdicts, num_generations: int):
    """Each completion's group mean of `verdicts` ([N] -> [N])."""
    return verdicts.reshape(-1, num_generations).mean(1).repeat_interleave(num_generations)


def token_advantages(step_advantages, token_step_lists: Sequence[Sequence[int]], width: int):
    """[B, width] per-token advantages: token k of completion i gets step_advantages[i, step]."""
    import torch

    out = torch.zeros(len(token_step_lists), width, device=step_advantages.device)
    for i, steps in enumerate(token_step_lists):
        n = min(len(steps), width)
        if n:
            index = torch.tensor(list(steps[:n]), device=step_advantages.device)
            out[i, :n] = step_advantages[i, index]
    return out
