"""Generation backends: seeded, ordered, progress-reporting; vLLM where it can run."""

import importlib.util

import pytest

from tdrm_cli.errors import UsageError
from tdrm_cli.generation import BACKENDS, HFBackend, Sampling, load_backend

PROMPTS = ["12+7-3\n\n", "5+5+5+5\n\n", "30-1\n\n"]


@pytest.fixture(scope="module")
def hf(tiny_policy):
    return HFBackend(str(tiny_policy / "model"), batch_size=4)


def texts(completions):
    return [[c.text for c in group] for group in completions]


def test_hf_is_seeded_ordered_and_reports_progress(hf):
    calls = []
    sampling = Sampling(n=3, temperature=1.0, max_new_tokens=12, seed=5)
    first = hf.generate(PROMPTS, sampling, on_batch=lambda seqs, toks: calls.append((seqs, toks)))
    assert [len(group) for group in first] == [3, 3, 3]
    assert [seqs for seqs, _ in calls] == [4, 4, 1]  # 9 sequences in batches of 4
    assert sum(toks for _, toks in calls) == sum(c.num_tokens for group in first for c in group)
    for c in (c for group in first for c in group):
        assert 0 < c.num_tokens <= 12 and (c.finished or c.num_tokens == 12)
    assert texts(hf.generate(PROMPTS, sampling)) == texts(first)
    assert texts(hf.generate(PROMPTS, Sampling(n=3, max_new_tokens=12, seed=6))) != texts(first)


def test_hf_keeps_the_policy_tokenizer(hf):
    # transformers 5 AutoTokenizer would hand a Qwen2 folder a byte-level Qwen2Tokenizer
    # that drops the newlines of the step separator.
    ids = hf.tokenizer("1+2\n\n3 x", add_special_tokens=False)["input_ids"]
    assert len(ids) == 8 and hf.tokenizer.decode(ids) == "1+2\n\n3 x"


def test_hf_greedy_ignores_the_seed(hf):
    greedy = [Sampling(n=2, temperature=0.0, max_new_tokens=8, seed=s) for s in (0, 1)]
    a, b = (texts(hf.generate(PROMPTS, s)) for s in greedy)
    assert a == b and all(group[0] == group[1] for group in a)


def test_unknown_backend_is_a_usage_error(tiny_policy):
    assert set(BACKENDS) == {"hf", "vllm"}
    with pytest.raises(UsageError, match="--backend nope: unknown backend"):
        load_backend("nope", str(tiny_policy / "model"))


def _vllm_missing() -> str | None:
    if importlib.util.find_spec("vllm") is None:
        return "vllm is not installed (optional extra tdrm-cli[vllm])"
    import torch

    if not torch.cuda.is_available():
        return "vllm needs a CUDA GPU and none is visible"
    return None


@pytest.mark.skipif(_vllm_missing() is not None, reason=_vllm_missing() or "")
def test_vllm_backend_matches_the_interface(tiny_policy):
    backend = load_backend("vllm", str(tiny_policy / "model"), batch_size=4)
    calls = []
    sampling = Sampling(n=2, temperature=1.0, max_new_tokens=12, seed=3)
    out = backend.generate(PROMPTS, sampling, on_batch=lambda seqs, toks: calls.append(seqs))
    assert [len(group) for group in out] == [2, 2, 2] and sum(calls) == 6
    assert all(0 < c.num_tokens <= 12 for group in out for c in group)
    assert texts(backend.generate(PROMPTS, sampling)) == texts(out)  # per-sequence seeds
