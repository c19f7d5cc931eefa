"""Tests for tdrm_cli.td: vectorised targets vs. plain-Python references, plus hand examples."""

import random

import pytest
import torch
import torch.nn.functional as F

from tdrm_cli.td import (
    masked_bce,
    masked_bce_with_logits,
    mc_targets,
    mix_targets,
    nstep_targets,
    outcome_targets,
    smoothness,
    td_error,
    td_lambda_targets,
    truth_targets,
)

# ---------------------------------------------------------------- plain-Python references


def ref_td_lambda(v, r, R, gamma, lam):
    """One row, real steps only (lists): G_L = R, G_t = r_t + γ[(1-λ)V_{t+1} + λG_{t+1}]."""
    L = len(v) - 1
    G = [0.0] * len(v)
    G[L] = R
    for t in range(L - 1, -1, -1):
        G[t] = r[t] + gamma * ((1 - lam) * v[t + 1] + lam * G[t + 1])
    return [min(max(g, 0.0), 1.0) for g in G]


def ref_nstep(v, r, R, n, gamma):
    """One row: y_t = Σ_{k<n} γ^k ρ_{t+k} + γ^n V_{t+n} if t+n ≤ L; ρ_L = R, ρ_{>L} = 0."""
    L = len(v) - 1
    out = []
    for t in range(L + 1):
        y = 0.0
        for k in range(n):
            j = t + k
            rho = r[j] if j < L else (R if j == L else 0.0)
            y += gamma**k * rho
        if t + n <= L:
            y += gamma**n * v[t + n]
        out.append(min(max(y, 0.0), 1.0))
    return out


def random_batch(seed, B=6, S=12, with_rewards=True):
    """Random padded batch; lengths 1..S (length 1 always included); padding filled with junk."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, S + 1, (B,), generator=g)
    lengths[0] = 1
    lengths[1] = S
    mask = torch.arange(S).unsqueeze(0) < lengths.unsqueeze(1)
    values = torch.rand(B, S, generator=g, dtype=torch.float64)
    rewards = 0.2 * torch.randn(B, S, generator=g, dtype=torch.float64) if with_rewards else None
    terminal = torch.randint(0, 2, (B,), generator=g).double()
    values = torch.where(mask, values, torch.full_like(values, 7.0))  # junk in padding
    return values, rewards, terminal, mask, lengths


def row(x, b, n):
    return [float(u) for u in x[b, :n]]


# ---------------------------------------------------------------- reference comparisons


@pytest.mark.parametrize("seed", range(8))
def test_td_lambda_matches_reference(seed):
    rng = random.Random(seed)
    values, rewards, terminal, mask, lengths = random_batch(seed, with_rewards=seed % 2 == 0)
    gamma, lam = rng.uniform(0.01, 1.0), rng.random()
    if seed == 0:
        gamma = 1.0
    out = td_lambda_targets(values, rewards, terminal, mask, gamma=gamma, lam=lam)
    assert out.shape == values.shape
    r = rewards if rewards is not None else torch.zeros_like(values)
    for b, n in enumerate(lengths.tolist()):
        exp = ref_td_lambda(row(values, b, n), row(r, b, n), float(terminal[b]), gamma, lam)
        assert torch.allclose(out[b, :n], torch.tensor(exp, dtype=out.dtype), atol=1e-6)
        assert (out[b, n:] == 0).all()


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("n", [1, 2, 3, 5, 12, 20])
def test_nstep_matches_reference(seed, n):
    rng = random.Random(seed * 31 + n)
    values, rewards, terminal, mask, lengths = random_batch(seed, with_rewards=seed % 2 == 1)
    gamma = rng.uniform(0.01, 1.0)
    out = nstep_targets(values, rewards, terminal, mask, n=n, gamma=gamma)
    r = rewards if rewards is not None else torch.zeros_like(values)
    for b, L1 in enumerate(lengths.tolist()):
        exp = ref_nstep(row(values, b, L1), row(r, b, L1), float(terminal[b]), n, gamma)
        assert torch.allclose(out[b, :L1], torch.tensor(exp, dtype=out.dtype), atol=1e-6)
        assert (out[b, L1:] == 0).all()


# ---------------------------------------------------------------- consistency identities


@pytest.mark.parametrize("seed", range(4))
def test_lambda0_equals_one_step(seed):
    values, rewards, terminal, mask, _ = random_batch(seed)
    for gamma in (1.0, 0.9):
        a = td_lambda_targets(values, rewards, terminal, mask, gamma=gamma, lam=0.0)
        b = nstep_targets(values, rewards, terminal, mask, n=1, gamma=gamma)
        assert torch.allclose(a, b, atol=1e-6)


def discounted_outcome(terminal, mask, gamma):
    L = mask.long().sum(1, keepdim=True) - 1
    t = torch.arange(mask.shape[1]).unsqueeze(0)
    y = gamma ** (L - t).clamp(min=0).double() * terminal.unsqueeze(1)
    return torch.where(mask, y, torch.zeros_like(y))


@pytest.mark.parametrize("gamma", [1.0, 0.9, 0.5])
def test_lambda1_and_long_nstep_equal_mc_return(gamma):
    values, _, terminal, mask, _ = random_batch(3, with_rewards=False)
    exp = discounted_outcome(terminal, mask, gamma)
    mc = td_lambda_targets(values, None, terminal, mask, gamma=gamma, lam=1.0)
    assert torch.allclose(mc, exp, atol=1e-6)
    for n in (12, 13, 100):  # n >= T
        assert torch.allclose(
            nstep_targets(values, None, terminal, mask, n=n, gamma=gamma), exp, atol=1e-6
        )


def test_long_nstep_gamma1_equals_outcome_targets():
    values, _, terminal, mask, _ = random_batch(5, with_rewards=False)
    out = nstep_targets(values, None, terminal, mask, n=12, gamma=1.0)
    assert torch.allclose(out, outcome_targets(terminal, mask).double(), atol=1e-6)
    assert torch.allclose(td_lambda_targets(values, None, terminal, mask, 1.0, 1.0), out)


# ---------------------------------------------------------------- hand-worked examples


def test_td_lambda_hand_example():
    # V = [0.2, 0.5, 0.9], R = 1, γ = 1, λ = 0.5, no rewards:
    # G_2 = R = 1
    # G_1 = (1-0.5)*V_2 + 0.5*G_2 = 0.45 + 0.5   = 0.95
    # G_0 = (1-0.5)*V_1 + 0.5*G_1 = 0.25 + 0.475 = 0.725
    v = torch.tensor([[0.2, 0.5, 0.9, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    out = td_lambda_targets(v, None, torch.tensor([1.0]), mask, gamma=1.0, lam=0.5)
    assert torch.allclose(out, torch.tensor([[0.725, 0.95, 1.0, 0.0]]), atol=1e-6)


def test_nstep_hand_example():
    # V = [0.2, 0.5, 0.9, 0.4], rewards = [0.1, 0, 0, 0], R = 1, n = 2, γ = 0.8, L = 3:
    # y_0 = 0.1 + 0.8*0 + 0.64*V_2 = 0.1 + 0.576 = 0.676
    # y_1 = 0 + 0 + 0.64*V_3       = 0.256
    # y_2 = r_2 + 0.8*R            = 0.8   (R is the terminal transition's reward, no bootstrap)
    # y_3 = R                      = 1.0
    v = torch.tensor([[0.2, 0.5, 0.9, 0.4]])
    r = torch.tensor([[0.1, 0.0, 0.0, 0.0]])
    out = nstep_targets(
        v, r, torch.tensor([1.0]), torch.ones(1, 4, dtype=torch.bool), n=2, gamma=0.8
    )
    assert torch.allclose(out, torch.tensor([[0.676, 0.256, 0.8, 1.0]]), atol=1e-6)


def test_padding_zero_and_clamp():
    v = torch.tensor([[0.9, 0.95, 0.3], [0.1, 0.2, 0.3]])
    r = torch.tensor([[0.5, 0.5, 0.5], [-0.9, -0.9, 0.0]])  # shaping pushes targets outside [0, 1]
    mask = torch.tensor([[True, True, False], [True, True, True]])
    R = torch.tensor([1.0, 0.0])
    for out in (
        td_lambda_targets(v, r, R, mask, gamma=1.0, lam=0.5),
        nstep_targets(v, r, R, mask, n=1),
    ):
        assert out[0, 2] == 0
        assert out[0, 0] == 1.0  # 0.5 + 0.95 (or more) clamped to 1
        assert out[1, 0] == 0.0  # -0.9 + ... clamped to 0
        assert (out >= 0).all() and (out <= 1).all()


def test_gamma_below_one_penalises_long_solutions():
    mask = torch.ones(1, 5, dtype=torch.bool)
    out = td_lambda_targets(torch.zeros(1, 5), None, torch.tensor([1.0]), mask, gamma=0.9, lam=1.0)
    assert torch.allclose(out[0], torch.tensor([0.9**4, 0.9**3, 0.9**2, 0.9, 1.0]))


# ---------------------------------------------------------------- other targets and metrics


def test_mc_and_outcome_targets():
    labels = torch.tensor([[0.0, 0.25, 1.3, 0.7], [0.6, -0.1, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    soft = mc_targets(labels, mask)
    assert torch.allclose(soft, torch.tensor([[0.0, 0.25, 1.0, 0.7], [0.6, 0.0, 0.0, 0.0]]))
    hard = mc_targets(labels, mask, hard=True)
    assert torch.equal(hard, torch.tensor([[0.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 0.0]]))
    out = outcome_targets(torch.tensor([1, 0]), mask)
    assert torch.equal(out, torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]]))
    out = outcome_targets(torch.tensor([1.0, 1.0]), mask)
    assert torch.equal(out, mask.float())


def test_truth_targets_hand_example():
    # prefix-correct: a step is good only if it and every step before it are right
    truth = torch.tensor([[1, 1, 0, 1], [0, 1, 1, 0], [1, 1, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 0, 0]])
    out = truth_targets(truth, mask)
    assert out.dtype == torch.float32
    assert out.tolist() == [[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]]
    # a correct solution keeps 1 everywhere; padding (even padded 1s) is 0
    out = truth_targets(torch.tensor([[1.0, 1.0, 1.0]]), torch.tensor([[True, True, False]]))
    assert out.tolist() == [[1.0, 1.0, 0.0]]
    assert truth_targets(torch.zeros(2, 0), torch.zeros(2, 0, dtype=torch.bool)).shape == (2, 0)


def test_mix_targets():
    td = torch.tensor([[0.2, 0.4, 0.6]])
    mc = torch.tensor([[1.0, 0.0, 0.5]])
    mask = torch.tensor([[True, True, False]])
    out = mix_targets(td, mc, 0.25, mask)
    assert torch.allclose(out, torch.tensor([[0.8, 0.1, 0.0]]))
    out = mix_targets(td, mc, 0.25, mask, mc_mask=torch.tensor([[False, True, True]]))
    assert torch.allclose(out, torch.tensor([[0.2, 0.1, 0.0]]))
    out = mix_targets(td, mc, 0.25, mask, mc_mask=torch.tensor([False]))  # per-row mc_mask
    assert torch.allclose(out, torch.tensor([[0.2, 0.4, 0.0]]))


def test_smoothness():
    v = torch.tensor([[0.1, 0.5, 0.4, 9.0], [0.3, 0.9, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    # pairs: |0.5-0.1| = 0.4, |0.4-0.5| = 0.1 (row 1 has no pairs) -> mean 0.25
    assert torch.allclose(smoothness(v, mask), torch.tensor(0.25))
    tokens = torch.tensor([[5, 4, 0, 7], [3, 3, 3, 3]])
    # d = tokens of step t+1: 0.4/4 = 0.1, 0.1/max(0,1) = 0.1 -> mean 0.1
    assert torch.allclose(smoothness(v, mask, tokens), torch.tensor(0.1))
    none = smoothness(v, torch.tensor([[1, 0, 0, 0], [0, 0, 0, 0]]))
    assert none.dim() == 0 and none.item() == 0.0


def test_td_error():
    v = torch.tensor([[0.2, 0.5, 0.9], [0.0, 0.3, 0.3]])
    y = torch.tensor([[0.4, 0.5, 0.6], [1.0, 5.0, 5.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    assert torch.allclose(td_error(v, y, mask), torch.tensor((0.2 + 0.0 + 0.3 + 1.0) / 4))


def test_masked_bce():
    logits = torch.tensor([[0.3, -1.2, 2.0, 40.0], [1.5, -0.5, 0.0, -40.0]])
    y = torch.tensor([[1.0, 0.0, 0.7, 0.0], [0.2, 1.0, 0.0, 1.0]])
    mask = torch.tensor([[True, True, True, False], [True, True, False, False]])
    p = torch.sigmoid(logits)
    exp = F.binary_cross_entropy(p[mask], y[mask])
    assert torch.allclose(masked_bce(p, y, mask), exp, atol=1e-6)
    assert torch.allclose(masked_bce_with_logits(logits, y, mask), exp, atol=1e-6)
    p_junk = torch.where(mask, p, torch.full_like(p, 3.0))  # out-of-range padding is ignored
    assert torch.allclose(masked_bce(p_junk, y, mask), exp, atol=1e-6)


# ---------------------------------------------------------------- gradients


def test_targets_carry_no_grad():
    values, rewards, terminal, mask, _ = random_batch(1)
    values = values.clone().requires_grad_(True)
    rewards = rewards.clone().requires_grad_(True)
    outs = [
        td_lambda_targets(values, rewards, terminal, mask),
        nstep_targets(values, rewards, terminal, mask, n=3, gamma=0.9),
        mc_targets(values, mask),
        mix_targets(values, values, 0.5, mask),
        truth_targets(values, mask),
    ]
    for out in outs:
        assert not out.requires_grad and out.grad_fn is None
    logits = torch.tensor([[0.5, -1.0, 2.0], [1.0, 0.0, -3.0]], requires_grad=True)
    y = torch.sigmoid(logits) * 0.5  # a target that (wrongly) carries grad
    loss = masked_bce_with_logits(logits, y, torch.ones(2, 3, dtype=torch.bool))
    loss.backward()  # gradient flows to logits only, not through the target: (p - y) / N
    exp = (torch.sigmoid(logits) - y).detach() / 6
    assert torch.allclose(logits.grad, exp, atol=1e-6)
