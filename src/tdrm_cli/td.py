"""Temporal-difference targets and metrics for step-level process reward models.

Conventions (all functions are pure and vectorised over padded ``[batch, steps]`` tensors):

* ``mask`` (bool or float, ``[batch, steps]``) is True for real steps; real steps form a
  left-aligned prefix, so row ``b`` has steps ``0 .. L_b`` with ``L_b = length_b - 1``.
* ``values`` holds V̄_t, the *detached* step values; target functions call ``.detach()``
  defensively, so targets never carry gradients.
* ``rewards[b, t]`` (optional, ``None`` = zeros) is the reward of the transition t -> t+1.
  ``terminal`` (``[batch]``) is the verifier verdict R (1 correct, 0 wrong) and is the reward
  of the final transition out of step L into the terminal state, whose value is 0.
  Hence ``rewards[:, L]`` is unused.
* TD(λ):   G_L = R,   G_t = rewards[t] + γ[(1-λ) V̄_{t+1} + λ G_{t+1}]  for t < L.
  λ=0 is TD(0) (= 1-step target), λ=1 is the Monte-Carlo return (γ^(L-t)·R with zero rewards).
* n-step:  y_t = Σ_{k<n} γ^k ρ_{t+k} + γ^n V̄_{t+n}·[t+n ≤ L], with ρ_j = rewards[j] (j < L),
  ρ_L = R, ρ_j = 0 (j > L). n=1 equals TD(0); n ≥ length gives the outcome return.
* Truth:   y_t = min_{s <= t} truth_s, exact prefix correctness: step t is good only if it
  and every step before it are correct (step_truth from the task, e.g. [1,1,0,1] -> [1,1,0,0]).
* Targets are clamped to [0, 1] and padded positions are 0.

Note: with γ < 1 and zero intermediate rewards, early steps are pulled toward γ^(T-t)·R,
which penalises long solutions; γ = 1 avoids this length bias.

For training, prefer ``masked_bce_with_logits(logits, targets, mask)`` (values = sigmoid(logits))
over ``masked_bce`` on probabilities, for numerical safety.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "td_lambda_targets",
    "nstep_targets",
    "mc_targets",
    "truth_targets",
    "outcome_targets",
    "mix_targets",
    "smoothness",
    "td_error",
    "masked_bce",
    "masked_bce_with_logits",
]


def _bool(mask: torch.Tensor) -> torch.Tensor:
    """Bool view of a bool/float mask."""
    return mask if mask.dtype == torch.bool else mask > 0


def _f(x: torch.Tensor) -> torch.Tensor:
    """Detached floating-point tensor (ints/bools are cast to float32)."""
    x = torch.as_tensor(x).detach()
    return x if x.is_floating_point() else x.float()


def _prep(values, rewards, terminal, mask):
    """Detach inputs, build bool mask, zero rewards, per-row last index L and terminal R."""
    v = _f(values)
    m = _bool(mask)
    r = torch.zeros_like(v) if rewards is None else _f(rewards).to(v)
    R = _f(terminal).to(v).reshape(-1)
    last = m.long().sum(dim=1) - 1  # -1 for empty rows
    return v, r, R, m, last


def _finish(y: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Clamp targets to [0, 1] and zero padded positions."""
    return torch.where(m, y.clamp(0.0, 1.0), torch.zeros_like(y))


def td_lambda_targets(values, rewards, terminal, mask, gamma: float = 1.0, lam: float = 0.8):
    """TD(λ) targets: G_L = R, G_t = r_t + γ[(1-λ)V̄_{t+1} + λG_{t+1}] for t < L."""
    v, r, R, m, last = _prep(values, rewards, terminal, mask)
    B, S = v.shape
    G = torch.zeros_like(v)
    nxt_g = torch.zeros(B, dtype=v.dtype, device=v.device)
    nxt_v = torch.zeros_like(nxt_g)
    for t in range(S - 1, -1, -1):  # loop over steps only; all rows at once
        g = r[:, t] + gamma * ((1.0 - lam) * nxt_v + lam * nxt_g)
        g = torch.where(last == t, R, torch.where(last > t, g, torch.zeros_like(g)))
        G[:, t] = g
        nxt_g, nxt_v = g, v[:, t]
    return _finish(G, m)


def _shift(x: torch.Tensor, k: int) -> torch.Tensor:
    """Shift left along steps by k: out[:, t] = x[:, t+k], zero beyond the end."""
    S = x.shape[1]
    if k >= S:
        return torch.zeros_like(x)
    return torch.cat([x[:, k:], torch.zeros_like(x[:, :k])], dim=1)


def nstep_targets(values, rewards, terminal, mask, n: int, gamma: float = 1.0):
    """n-step targets: y_t = Σ_{k<n} γ^k ρ_{t+k} + γ^n V̄_{t+n} (bootstrap only if t+n ≤ L)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    v, r, R, m, last = _prep(values, rewards, terminal, mask)
    S = v.shape[1]
    idx = torch.arange(S, device=v.device).unsqueeze(0)
    L = last.unsqueeze(1)
    rho = torch.where(idx < L, r, torch.zeros_like(r))
    rho = torch.where(idx == L, R.unsqueeze(1).expand_as(r), rho)
    vb = torch.where(idx <= L, v, torch.zeros_like(v))
    y = torch.zeros_like(v)
    for k in range(min(n, S)):
        y = y + gamma**k * _shift(rho, k)
    y = y + gamma**n * _shift(vb, n)
    return _finish(y, m)


def mc_targets(step_labels, mask, hard: bool = False):
    """Monte-Carlo step labels: soft as given, or hard = (label > 0); clamped, padding 0."""
    y = _f(step_labels)
    if hard:
        y = (y > 0).to(y.dtype)
    m = _bool(mask)
    return _finish(y, m)


def truth_targets(step_truth, mask):
    """Prefix-correct targets from exact 0/1 step truth: the running minimum along the steps.

    Step t's target is 1 only if it and every step before it are correct, so an early
    mistake makes every later step wrong ([1, 1, 0, 1] -> [1, 1, 0, 0]); padding 0.
    """
    m = _bool(mask)
    y = (_f(step_truth) > 0).to(torch.float32)
    if y.shape[1]:
        y = torch.cummin(y, dim=1).values  # padding lies after the real steps: no effect on them
    return _finish(y, m)


def outcome_targets(terminal, mask):
    """Outcome targets: the verdict R broadcast to every real step."""
    m = _bool(mask)
    R = _f(terminal).to(m.device).reshape(-1, 1)
    return _finish(R.expand(m.shape).clone(), m)


def mix_targets(td, mc, alpha: float, mask, mc_mask=None):
    """Mix α·td + (1-α)·mc where mc exists (mc_mask True), else td; padding 0."""
    m = _bool(mask)
    td, mc = _f(td), _f(mc).to(_f(td))
    mixed = alpha * td + (1.0 - alpha) * mc
    if mc_mask is not None:
        cm = _bool(mc_mask)
        if cm.dim() == 1:
            cm = cm.unsqueeze(1)
        mixed = torch.where(cm, mixed, td)
    return _finish(mixed, m)


def smoothness(values, mask, step_tokens=None):
    """Local Lipschitz measure: mean over consecutive real pairs of |V_{t+1} - V_t| / d."""
    m = _bool(mask)
    v = values.float()
    pair = m[:, 1:] & m[:, :-1]
    diff = (v[:, 1:] - v[:, :-1]).abs()
    if step_tokens is not None:
        diff = diff / step_tokens[:, 1:].float().clamp(min=1.0)
    diff = torch.where(pair, diff, torch.zeros_like(diff))
    return diff.sum() / pair.sum().clamp(min=1)


def _masked_mean(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Mean of x over positions where m is True (0 when there are none)."""
    x = torch.where(m, x, torch.zeros_like(x))
    return x.sum() / m.sum().clamp(min=1)


def td_error(values, targets, mask):
    """Mean absolute TD error |targets - values| over real steps."""
    m = _bool(mask)
    return _masked_mean((targets.float() - values.float()).abs(), m)


def masked_bce(values, targets, mask):
    """BCE(V, y) averaged over real steps, with V given as probabilities in (0, 1)."""
    m = _bool(mask)
    p = torch.where(m, values.float(), torch.full_like(values.float(), 0.5))
    y = torch.where(m, targets.detach().float(), torch.zeros_like(p))
    return _masked_mean(F.binary_cross_entropy(p, y, reduction="none"), m)


def masked_bce_with_logits(logits, targets, mask):
    """Recommended loss: BCE-with-logits (V = sigmoid(logits)) averaged over real steps."""
    m = _bool(mask)
    z = torch.where(m, logits.float(), torch.zeros_like(logits.float()))
    y = torch.where(m, targets.detach().float(), torch.zeros_like(z))
    return _masked_mean(F.binary_cross_entropy_with_logits(z, y, reduction="none"), m)
