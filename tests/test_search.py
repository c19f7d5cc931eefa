"""`tdrm search`: methods on a fake policy/PRM with a known best path, HF step generation, end to end."""

from __future__ import annotations

import dataclasses
import json

import pandas as pd
import pytest

from conftest import invoke
from tdrm_cli.configs.sample import SearchConfig
from tdrm_cli.errors import UsageError
from tdrm_cli.search.methods import METHODS, Prefix, Step
from tdrm_cli.search.policy import HFStepPolicy
from tdrm_cli.search.scoring import KVScorer, OnePassScorer
from tdrm_cli.stages.search import evaluate, solution_rows
from tdrm_cli.tasks import Problem
from tdrm_cli.tasks.arith import ArithTask
from test_bon import make_prm, one_line_error

# ---------------------------------------------------------------- a fake policy and PRM

# The tree every prefix can grow: "a" looks best after one step but leads to a wrong answer;
# "b" looks worse first and leads to the right one. Beam search (width 2) must find b.
NEXT = {"": ["a", "b"], "a": ["a2"], "a2": ["answer 1"], "b": ["b2"], "b2": ["answer 7"]}
VALUE = {"a": 0.9, "b": 0.6, "a2": 0.2, "b2": 0.7, "answer 1": 0.1, "answer 7": 0.95}


class FakePolicy:
    def __init__(self):
        self.calls = []

    def next_steps(self, prefixes, n, seed):
        self.calls.append([list(p.steps) for p in prefixes])
        out = []
        for p in prefixes:
            menu = NEXT[p.steps[-1] if p.steps else ""]
            out.append(
                [
                    Step(
                        menu[i % len(menu)],
                        3,
                        "eos" if menu[i % len(menu)].startswith("answer") else "separator",
                    )
                    for i in range(n)
                ]
            )
        return out


class FakePRM:
    def score(self, problems, solutions, batch_size=32):
        return [[VALUE[s] for s in steps] for steps in solutions]


PROBLEM = Problem("p0", "q", "7")


def search(method: str, **settings):
    cfg = SearchConfig(
        policy="fake", prm=["fake"], **{"beam_width": 2, "expand": 2, "agg": "last", **settings}
    )
    policy = FakePolicy()
    result = METHODS[method](
        [PROBLEM.question], policy, OnePassScorer(FakePRM()), ArithTask(), cfg, seed=0
    )
    rows = solution_rows(result, [PROBLEM], ArithTask(), method, "fake", cfg.agg)
    return result, rows, evaluate(rows, [PROBLEM], result.tokens, method, "fake", "naive"), policy


def test_beam_search_finds_the_known_best_path():
    result, rows, summary, policy = search("beam")
    assert sorted(r["steps"] for r in rows) == [["a", "a2", "answer 1"], ["b", "b2", "answer 7"]]
    assert summary["accuracy_naive"] == 1.0 and summary["accuracy"] == 1.0
    best = max(rows, key=lambda r: r["score"])
    assert best["steps"] == ["b", "b2", "answer 7"] and best["step_scores"] == [0.6, 0.7, 0.95]
    # prefixes are continued, never regenerated: every call gets the kept prefixes only
    assert policy.calls == [[[]], [["a"], ["b"]], [["b", "b2"], ["a", "a2"]]]  # best first
    # tokens: root 4 expansions + 2 x 2 + 2 x 2, 3 tokens each
    assert result.tokens == [12 * 3] and result.depth == 3


def test_greedy_follows_the_locally_best_step_into_the_trap():
    _, rows, summary, _ = search("greedy")
    assert [r["steps"] for r in rows] == [["a", "a2", "answer 1"]]
    assert summary["accuracy"] == 0.0 and summary["oracle"] == 0.0


def test_dvts_grows_independent_subtrees():
    result, rows, _, policy = search("dvts", beam_width=3)
    assert sorted(r["tree"] for r in rows) == [0, 1, 2]
    assert len(policy.calls[0]) == 3  # one root per subtree


def test_depth_and_token_limits_end_solutions():
    _, rows, _, _ = search("beam", max_depth=2)
    assert {r["ended"] for r in rows} == {"depth"} and all(len(r["steps"]) == 2 for r in rows)
    _, rows, _, _ = search("greedy", max_new_tokens=3)
    assert [(r["steps"], r["ended"]) for r in rows] == [
        (["a"], "token-budget"),
        (["b"], "token-budget"),
    ]


def test_method_flag_reads_the_registry():
    """`--method` takes the registry's names (or all), its help lists them, and the
    registry is importable without torch (config.py imports it for `tdrm --help`)."""
    import subprocess
    import sys

    assert SearchConfig(policy="p", prm=["q"], method=["all"]).methods == list(METHODS)
    (method,) = [f for f in dataclasses.fields(SearchConfig) if f.name == "method"]
    assert all(name in method.metadata["help"] for name in METHODS)
    with pytest.raises(UsageError, match=", ".join(METHODS)):
        SearchConfig(policy="p", prm=["q"], method=["nope"])
    code = "import sys, tdrm_cli.cli; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# ---------------------------------------------------------------- the HF step generator


def test_hf_steps_stop_at_the_separator(tiny_policy):
    policy = HFStepPolicy(str(tiny_policy / "model"), batch_size=16, max_step_tokens=12)
    problems = ArithTask().problems("test", 2)
    prefix = ArithTask().reference_steps(problems[0])[:1]
    prefixes = [Prefix(problems[0].question, prefix), Prefix(problems[1].question, [])]
    steps = policy.next_steps(prefixes, 4, seed=0)
    assert [len(s) for s in steps] == [4, 4]
    assert policy.text(problems[0].question, prefix).endswith(prefix[0] + "\n\n")
    for step in (s for group in steps for s in group):
        assert step.stop in ("separator", "eos", "length") and "\n\n" not in step.text
        assert 0 < step.num_tokens <= 12
        assert (step.state is not None) == (step.stop == "separator")
        if step.stop == "length":
            assert step.num_tokens == 12
    assert [[s.text for s in g] for g in steps] == [
        [s.text for s in g] for g in policy.next_steps(prefixes, 4, seed=0)
    ]


class StepShape:
    """A logits processor: steps shaped `D+D=DD` + separator, digits chosen by the model."""

    def __init__(self, tokenizer, template="D+D=DD\n\n"):
        import torch

        self.tokenizer, self.template = tokenizer, template
        self.digits = torch.tensor(tokenizer.encode("0123456789", add_special_tokens=False))
        self.literal = {
            ch: tokenizer.encode(ch, add_special_tokens=False)[0] for ch in set(template) - {"D"}
        }

    def __call__(self, input_ids, scores):
        import torch

        allowed = torch.zeros_like(scores, dtype=torch.bool)
        for row, tail in enumerate(
            self.tokenizer.batch_decode(input_ids[:, -12:], skip_special_tokens=True)
        ):
            ch = self.template[(len(tail) - tail.rfind("\n\n") - 2) % len(self.template)]
            allowed[row, self.digits if ch == "D" else self.literal[ch]] = True
        return scores.masked_fill(~allowed, float("-inf"))


def fresh_kv(model, ids):
    """Keys/values of `ids` from one plain forward pass (no padding, no reuse)."""
    import torch
    from transformers import DynamicCache

    from tdrm_cli.prefix_cache import cache_arg

    cache = DynamicCache()
    with torch.inference_mode():
        model(input_ids=torch.tensor([ids]), use_cache=True, **{cache_arg(model): cache})
    return [(layer.keys[0], layer.values[0]) for layer in cache.layers]


def test_continuing_from_the_kv_cache_equals_rereading_the_prefix(tiny_policy, tmp_path):
    """Three steps deep: cached continuation == whole prefix re-read, for the policy and the PRM."""
    import torch

    from tdrm_cli.prm import load_prm

    cached = HFStepPolicy(
        str(tiny_policy / "model"), batch_size=8, temperature=0, max_step_tokens=12
    )
    plain = HFStepPolicy(
        str(tiny_policy / "model"), batch_size=8, temperature=0, max_step_tokens=12, cache=False
    )
    for policy in (cached, plain):  # the barely trained policy rarely writes well-formed steps
        policy.generate_kwargs = {"logits_processor": [StepShape(policy.tokenizer)]}
    prm = load_prm(make_prm(tmp_path / "prm", tiny_policy, seed=3))
    kv, one_pass = KVScorer(prm, batch_size=4), OnePassScorer(prm, batch_size=4)
    questions = [p.question for p in ArithTask().problems("test", 3)]
    # Different prefix lengths share every batch, so padding on both sides is exercised.
    nodes = [Prefix(q, ["1+1=2"] * k) for k, q in enumerate(questions)]
    prm_states = [None] * len(nodes)
    for _ in range(3):
        steps = [group[0] for group in cached.next_steps(nodes, 1, seed=0)]
        again = [
            group[0]
            for group in plain.next_steps([Prefix(p.question, p.steps) for p in nodes], 1, seed=0)
        ]
        assert [s.text for s in steps] == [s.text for s in again]
        assert all(s.stop == "separator" and s.text.strip() for s in steps)
        for step in steps:
            reference = fresh_kv(cached.backend.model, step.state.ids[:-1])
            for (k, v), (k0, v0) in zip(step.state.kv, reference, strict=True):
                assert torch.allclose(k, k0, atol=1e-5) and torch.allclose(v, v0, atol=1e-5)
        nodes = [
            Prefix(p.question, [*p.steps, s.text.strip()], s.state)
            for p, s in zip(nodes, steps, strict=True)
        ]
        scored = kv.score_last(
            [Prefix(p.question, p.steps, st) for p, st in zip(nodes, prm_states, strict=True)]
        )
        assert [v for v, _ in scored] == pytest.approx(
            [v for v, _ in one_pass.score_last(nodes)], abs=1e-5
        )
        prm_states = [st for _, st in scored]


# ---------------------------------------------------------------- end to end and bad input


def test_search_end_to_end(tiny_policy, tmp_path):
    prm = make_prm(tmp_path / "prm-a", tiny_policy, seed=1)
    args = [
        "search",
        "--policy",
        tiny_policy,
        "--prm",
        prm,
        "--method",
        "all",
        "--problems",
        "3",
        "--beam-width",
        "2",
        "--expand",
        "2",
        "--max-depth",
        "6",
        "--max-step-tokens",
        "16",
        "--batch-size",
        "32",
    ]
    result = invoke(*args, "--out", tmp_path / "s1")
    assert result.exit_code == 0, result.output
    out = tmp_path / "s1"
    assert result.stdout.strip().splitlines()[-1] == str(out)
    results = json.loads((out / "results.json").read_text())
    assert [(r["method"], r["prm"]) for r in results["rows"]] == [
        ("beam", "prm-a"),
        ("greedy", "prm-a"),
        ("dvts", "prm-a"),
    ]
    assert all(r["tokens_per_problem"] > 0 for r in results["rows"])
    scores = pd.read_parquet(out / "scores.parquet")
    assert set(scores["method"]) == {"beam", "greedy", "dvts"}
    assert all(
        len(s) == len(v) for s, v in zip(scores["steps"], scores["step_scores"], strict=True)
    )
    assert (out / "search_accuracy_vs_tokens.png").stat().st_size > 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and set(manifest["inputs"]) == {"policy", "prm0"}
    again = invoke(*args, "--out", tmp_path / "s2")
    assert (
        again.exit_code == 0
        and (tmp_path / "s2" / "results.json").read_text() == (out / "results.json").read_text()
    )


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--beam-width", "0"], "error: --beam-width and --expand must be > 0"),
        (["--method", "mcts"], "error: --method mcts: expected beam, greedy, dvts or all"),
    ],
)
def test_bad_flags(tiny_policy, tmp_path, flags, message):
    prm = make_prm(tmp_path / "prm", tiny_policy)
    assert (
        one_line_error(
            invoke("search", "--policy", tiny_policy, "--prm", prm, "--out", tmp_path / "r", *flags)
        )
        == message
    )


def test_prm_that_is_a_policy_is_refused(tiny_policy, tmp_path):
    line = one_line_error(
        invoke("search", "--policy", tiny_policy, "--prm", tiny_policy, "--out", tmp_path / "r")
    )
    assert line == f"error: --prm {tiny_policy}: is a 'sft' run, expected train-prm"
    assert not (tmp_path / "r").exists()
