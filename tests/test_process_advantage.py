"""`tdrm rl --advantage process|td`: the dense advantages against loop references, the
token-to-step mapping, and a tiny end-to-end run."""

from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import invoke, one_line_error
from tdrm_cli import process_advantage as pa
from tdrm_cli.steps import split_steps

SEP = "\n\n"


# ---------------------------------------------------------------- loop references


def reference_process(step_values, verdicts, group, scale="group", eps=1e-4):
    """DeepSeekMath's process GRPO written out: per group, every step reward (PRM values, the
    verdict as the last one) normalised by the group's mean and (Bessel) std; a step's
    advantage is the sum of its own and the later normalised rewards."""
    rewards = [list(v[:-1]) + [float(t)] for v, t in zip(step_values, verdicts, strict=True)]
    flat_all = [r for row in rewards for r in row]
    out = []
    for g in range(0, len(rewards), group):
        rows = rewards[g : g + group]
        flat = [r for row in rows for r in row]
        mean = sum(flat) / len(flat)
        pool = flat if scale == "group" else flat_all
        pool_mean = sum(pool) / len(pool)
        std = math.sqrt(sum((r - pool_mean) ** 2 for r in pool) / (len(pool) - 1))
        for row in rows:
            normalised = [(r - mean) / (std + eps) if scale != "none" else r - mean for r in row]
            out.append([sum(normalised[j:]) for j in range(len(row))])
    return out


def reference_td(values, verdict, baseline, gamma):
    """r_t + gamma V(s_t+1) - V(s_t) step by step, V(s_1) = baseline, V(s_T+1) = 0, r_T = verdict."""
    before = [baseline, *values[:-1]]
    out = []
    for t in range(len(values)):
        last = t == len(values) - 1
        reward = verdict if last else 0.0
        after = 0.0 if last else values[t]
        out.append(reward + gamma * after - before[t])
    return out


def run_process(step_values, verdicts, group, scale="group"):
    rewards, mask = pa.pad_steps(pa.process_rewards(step_values, verdicts))
    got = pa.process_advantages(rewards, mask, group, scale)
    return [got[i, : len(v) or 1].tolist() for i, v in enumerate(step_values)]


GROUPS = (
    # group 1: ragged steps, mixed verdicts
    ([0.9, 0.8, 0.7], 1.0),
    ([0.6, 0.2], 0.0),
    ([0.5], 1.0),
    # group 2: another spread, a completion without steps
    ([0.3, 0.9, 0.4, 0.8], 0.0),
    ([], 0.0),
    ([0.7, 0.6], 1.0),
)


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_process_advantage_equals_the_loop_reference(scale):
    values, verdicts = [v for v, _ in GROUPS], [t for _, t in GROUPS]
    got = run_process(values, verdicts, 3, scale)
    want = reference_process([v or [0.0] for v in values], verdicts, 3, scale)
    for g, w in zip(got, want, strict=True):
        assert g == pytest.approx(w, abs=1e-5)
    # the verdict replaced the last PRM value: a wrong answer after confident steps ends low
    assert got[0][-1] > 0 > got[1][-1]


def test_a_group_of_equally_right_completions_gets_zero_advantage_not_nan():
    # every step reward the same (all right, a PRM sure of every step): std 0, advantage 0
    for values in ([[1.0, 1.0], [1.0, 1.0], [1.0, 1.0]], [[0.3], [0.8], [0.5]]):
        got = run_process(values, [1.0, 1.0, 1.0], 3)
        assert all(math.isfinite(a) and a == 0.0 for row in got for a in row), got
    # all right, the PRM's steps differing: finite, and still the reference
    values = [[0.5, 0.9, 1.0], [0.5, 0.4, 1.0], [0.5, 0.9, 1.0]]
    got = run_process(values, [1.0, 1.0, 1.0], 3)
    assert got == [pytest.approx(w, abs=1e-5) for w in reference_process(values, [1.0] * 3, 3)]


def test_critic_advantage_on_a_hand_made_trajectory():
    values = [[0.6, 0.8, 0.9], [0.4, 0.2, 0.0], [0.0]]  # third: no steps (the verdict alone)
    verdicts, baseline = [1.0, 0.0, 1.0], [0.5, 0.5, 0.5]
    for gamma in (1.0, 0.9):
        padded, mask = pa.pad_steps(values)
        got = pa.critic_advantages(
            padded, mask, torch.tensor(verdicts), torch.tensor(baseline), gamma
        )
        for i, row in enumerate(values):
            want = reference_td(row, verdicts[i], baseline[i], gamma)
            assert got[i, : len(row)].tolist() == pytest.approx(want, abs=1e-6)
            assert (got[i, len(row) :] == 0).all()
    # at gamma 1 the TD errors telescope to the outcome advantage verdict - baseline
    padded, mask = pa.pad_steps(values)
    got = pa.critic_advantages(padded, mask, torch.tensor(verdicts), torch.tensor(baseline))
    assert got.sum(1).tolist() == pytest.approx([0.5, -0.5, 0.5], abs=1e-6)
    # intermediate step rewards add to their own step only
    bonus = torch.tensor([[0.25, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    with_bonus = pa.critic_advantages(
        padded, mask, torch.tensor(verdicts), torch.tensor(baseline), 1.0, bonus
    )
    assert (with_bonus - got).tolist()[0] == pytest.approx([0.25, 0.0, 0.0])
    assert pa.group_mean(torch.tensor([1.0, 0.0, 0.0, 1.0]), 2).tolist() == [0.5] * 4


def test_critic_step_rewards_from_a_step_reward_source():
    """`--advantage td --step-reward ...`: the source's rewards, moved from td.py's
    transitions (step t -> t+1) onto the critic's steps (before j -> after j), worked by hand."""
    from tdrm_cli.step_rewards import StepRewardOptions, StepRewards

    values = [[0.6, 0.8, 0.9], [0.3]]  # 3 steps; 1 step
    padded, mask = pa.pad_steps(values)
    verdicts = torch.tensor([1.0, 0.0])
    length = StepRewards(StepRewardOptions(step_reward="length", step_cost=0.1))
    rewards, terminal = pa.critic_rewards(length, verdicts, mask)
    # td.py: -0.1 on every transition; the critic's first step enters from the bare question
    assert rewards.flatten().tolist() == pytest.approx([0.0, -0.1, -0.1, 0.0, 0.0, 0.0])
    assert terminal.tolist() == [1.0, 0.0]
    got = pa.critic_advantages(padded, mask, terminal, torch.tensor([0.5, 0.5]), 1.0, rewards)
    # row 0: 0 + 0.6 - 0.5 = 0.1; -0.1 + 0.8 - 0.6 = 0.1; -0.1 + 1 + 0 - 0.8 = 0.1
    assert got[0].tolist() == pytest.approx([0.1, 0.1, 0.1], abs=1e-6)
    assert got[0].sum().item() == pytest.approx((1.0 - 0.2) - 0.5)  # return - baseline
    assert got[1].tolist() == pytest.approx([0.0 + 0.0 - 0.5, 0.0, 0.0], abs=1e-6)
    # shaping: R = CosFn(L, 4, 1, 0.5) for a right answer (L = 3: 0.5 + 0.25 (1 + cos 3pi/4))
    shaping = StepRewards(StepRewardOptions(step_reward="shaping", shaping_max_steps=4))
    rewards, terminal = pa.critic_rewards(shaping, verdicts, mask)
    assert rewards is None
    assert terminal.tolist() == pytest.approx([0.5 + 0.25 * (1 + math.cos(3 * math.pi / 4)), 0.0])
    assert pa.critic_rewards(None, verdicts, mask) == (None, verdicts)


# ---------------------------------------------------------------- text -> steps -> tokens


@pytest.mark.parametrize(
    "text",
    ["1+2=3\n\n3*2=6\n\nanswer 6", "  a\n\n\n\n b \n\n", "", "\n\n", "one step", "x\n\ny\n\n\nz"],
)
def test_step_spans_cut_exactly_the_steps_of_split_steps(text):
    spans = pa.step_spans(text, SEP)
    assert [text[a:b] for a, b in spans] == split_steps(text, SEP)
    assert all(a < b for a, b in spans) and spans == sorted(spans)


class PiecesTokenizer:
    """A hand-made tokenizer: token i decodes to PIECES[i] ('' for a special token)."""

    PIECES = ["1+2", "=3", "\n\n", "3*", "2=6", "\n", "\nans", "wer 6", ""]

    def decode(self, ids, skip_special_tokens=True):
        return "".join(self.PIECES[i] for i in ids)

    def batch_decode(self, rows, skip_special_tokens=True):
        return [self.decode(r) for r in rows]


def test_tokens_map_to_the_step_they_end_in():
    tokenizer, ids = PiecesTokenizer(), list(range(9))
    text = tokenizer.decode(ids)
    spans = pa.step_spans(text, SEP)
    assert [text[a:b] for a, b in spans] == ["1+2=3", "3*2=6", "answer 6"]
    ends = pa.token_char_ends(tokenizer, ids, text)
    assert ends == [3, 5, 7, 9, 12, 13, 17, 22, 22]
    # the separator after a step belongs to it; "\nans" ends in step 3; the end token joins it
    assert pa.token_steps(ends, spans) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert pa.token_steps(ends, []) == [0] * 9  # no steps: one step of everything
    step_advantages = torch.tensor([[1.0, 2.0, 3.0]])
    tokens = pa.token_advantages(step_advantages, [pa.token_steps(ends, spans)], 11)
    assert tokens.tolist() == [[1.0] * 3 + [2.0] * 3 + [3.0] * 3 + [0.0, 0.0]]


class LeadingSpaceTokenizer(PiecesTokenizer):
    """SentencePiece-like: a decode drops the leading space of its text, so tokens decoded
    one at a time do not join into the whole decode (the prefix decodes are used)."""

    PIECES = [" answer", " is", " 6", "\n\n", " done", ""]

    def decode(self, ids, skip_special_tokens=True):
        return super().decode(ids).removeprefix(" ")


def test_token_ends_where_single_tokens_do_not_decode_alone():
    tokenizer = LeadingSpaceTokenizer()
    text = tokenizer.decode(range(6))
    assert text == "answer is 6\n\n done"
    ends = pa.token_char_ends(tokenizer, list(range(6)))
    assert ends == [6, 9, 11, 13, 18, 18]
    assert pa.token_steps(ends, pa.step_spans(text, SEP)) == [0, 0, 0, 0, 1, 1]


def test_token_mapping_with_the_character_tokenizer():
    from tdrm_cli.stages.sft import build_char_tokenizer

    tokenizer = build_char_tokenizer()
    text = "3+4=0\n\n0*2=0\n\nanswer 0"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ends = pa.token_char_ends(tokenizer, ids)
    assert ends == [*range(1, len(text) + 1), len(text)]
    steps = pa.token_steps(ends, pa.step_spans(text, SEP))
    assert steps == [0] * 7 + [1] * 7 + [2] * 8 + [2]


# ---------------------------------------------------------------- the trainer, end to end


@pytest.fixture(scope="module")
def prm_dir(tiny_policy, tmp_path_factory):
    """A PRM (fresh head on the tiny policy) splitting steps on single newlines: the tiny
    policy's samples rarely hold the blank line between steps, so this gives them several."""
    from tdrm_cli.prm import PRM, load_tokenizer, load_value_model, prm_meta
    from tdrm_cli.steps import read_policy_meta

    base = str(tiny_policy / "model")
    torch.manual_seed(0)
    tokenizer = load_tokenizer(base)
    meta = prm_meta(tokenizer, {**read_policy_meta(base), "separator": "\n"}, agg="min", loss="td")
    model = load_value_model(base, tokenizer.pad_token_id)
    return PRM(model, tokenizer, meta).save(tmp_path_factory.mktemp("prm") / "prm")


TINY = ("--problems", "4", "--batch-size", "2", "--num-generations", "3", "--max-steps", "2",
        "--max-completion-length", "48", "--learning-rate", "1e-3", "--report-to", "none")  # fmt: skip


@pytest.mark.parametrize("advantage", ["process", "td", "td+length"])
def test_rl_with_dense_advantages_end_to_end(
    tiny_policy, prm_dir, tmp_path, monkeypatch, advantage
):
    advantage, _, step_reward = advantage.partition("+")
    cost = 0.05
    from tdrm_cli.prm import load_prm
    from tdrm_cli.process_grpo import ProcessGRPOTrainer

    seen = []
    dense = ProcessGRPOTrainer.dense_advantages

    def recorded(self, width):
        out = dense(self, width)
        inputs, completions, ids, rewards = self._scored
        seen.append(([x["question"] for x in inputs], completions, ids, rewards.clone(), out))
        return out

    monkeypatch.setattr(ProcessGRPOTrainer, "dense_advantages", recorded)
    out = tmp_path / "rl"
    extra = ("--step-reward", step_reward, "--step-cost", str(cost)) if step_reward else ()
    result = invoke("rl", "--policy", tiny_policy, "--prm", prm_dir, "--reward", "prm+rlvr",
                    "--advantage", advantage, *extra, *TINY, "--eval-problems", "2",
                    "--out", out)  # fmt: skip
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["advantage"] == advantage and metrics["train_steps"] == 2
    assert len(seen) == 2

    # every token's advantage is its step's, recomputed here from the PRM, the task's check
    # and the loop references (the character tokenizer: a token is one character, or a
    # special token that adds none and joins the step before it)
    prm = load_prm(prm_dir)
    questions, completions, ids, rewards, got = seen[0]
    assert got.dim() == 2 and got.shape[0] == len(completions)
    steps = [split_steps(c, prm.separator) for c in completions]
    values = [prm.score([q], [s])[0] if s else [] for q, s in zip(questions, steps, strict=True)]
    verdicts = rewards[:, 1].tolist()  # reward functions: prm, verifier
    if advantage == "process":
        want = reference_process([v or [0.0] for v in values], verdicts, 3)
    else:
        # --step-reward length: every step after the first costs `cost` (td.py's transitions),
        # and the baseline is the group's mean return (verdict minus the costs)
        costs = [[0.0] + [-cost if step_reward else 0.0] * (len(v or [0.0]) - 1) for v in values]
        returns = [t + sum(c) for t, c in zip(verdicts, costs, strict=True)]
        baselines = [
            sum(returns[g : g + 3]) / 3 for g in range(0, len(returns), 3) for _ in range(3)
        ]
        want = [
            [a + c for a, c in zip(reference_td(v or [0.0], t, b, 1.0), cs, strict=True)]
            for v, t, b, cs in zip(values, verdicts, baselines, costs, strict=True)
        ]
    specials = set(prm.tokenizer.all_special_ids)
    for i, text in enumerate(completions):
        spans, char, step = pa.step_spans(text, prm.separator), 0, 0
        for k, token in enumerate(ids[i]):
            if token not in specials:
                step = max([j for j, (a, _) in enumerate(spans) if a <= char] or [0])
                char += 1
            assert got[i, k].item() == pytest.approx(want[i][step], abs=1e-4), (i, k, text)
        assert char == len(text) and (got[i, len(ids[i]) :] == 0).all()
    assert any(len(w) > 1 and len(set(w)) > 1 for w in want)  # some completion is dense


def test_dense_advantages_need_a_prm(tiny_policy, tmp_path):
    one_line_error(
        invoke("rl", "--policy", tiny_policy, "--advantage", "process", "--reward", "rlvr",
               "--out", tmp_path / "r"),
        "--advantage process needs --prm",
    )  # fmt: skip
    one_line_error(
        invoke(
            "rl",
            "--policy",
            tiny_policy,
            "--advantage",
            "dense",
            "--reward",
            "rlvr",
            "--out",
            tmp_path / "r",
        ),
        "--advantage dense",
        "outcome",
    )
