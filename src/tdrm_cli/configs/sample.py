"""Configs of the stages that sample from a policy: `tdrm collect`, `bon`, `search`, `eval`."""

from __future__ import annotations

from dataclasses import dataclass

from tdrm_cli.config import (
    ALLOW_PICKLE_HELP,
    BACKEND_HELP,
    SPLITS,
    TASK_HELP,
    TRUST_REMOTE_CODE_HELP,
    RunConfig,
    _check,
    _one_of,
    listed,
    opt,
)
from tdrm_cli.prm_formats import FORMAT_HELP, OPTION_HELP, check_choices  # no torch
from tdrm_cli.search.methods import METHODS as SEARCH_METHODS  # the registry; no torch
from tdrm_cli.voting import AGGREGATIONS, VOTES


@dataclass
class CollectConfig(RunConfig):
    """`tdrm collect`: policy rollouts, verifier verdicts, MC step labels, exact step truth."""

    policy: str | None = opt(
        None, "Policy: a run folder (sft/rl), a local HF model folder, or a hub id."
    )
    task: str = opt("arith", TASK_HELP)
    split: str = opt("train", f"Which problems to sample: {listed(SPLITS)}.")
    problems: int = opt(200, "Number of problems.")
    n: int = opt(8, "Solutions sampled per problem.")
    mc_rollouts: int = opt(
        4, "Continuations per step prefix for Monte-Carlo step labels (0: none)."
    )
    temperature: float = opt(1.0, "Sampling temperature.")
    top_p: float = opt(1.0, "Nucleus sampling mass.")
    max_new_tokens: int = opt(128, "Token limit per solution.")
    batch_size: int = opt(64, "Sequences per generation batch.")
    backend: str = opt("hf", BACKEND_HELP)
    shard_size: int = opt(25, "Problems per shard written to disk (the unit of --resume).")
    trust_remote_code: bool = opt(False, TRUST_REMOTE_CODE_HELP)
    allow_pickle: bool = opt(False, ALLOW_PICKLE_HELP)

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.policy is not None, "--policy is required")
        _one_of(self.split, SPLITS, "--split")
        _check(self.problems > 0, "--problems must be > 0")
        _check(self.n > 0, "--n must be > 0")
        _check(self.mc_rollouts >= 0, "--mc-rollouts must be >= 0")
        _check(self.temperature >= 0, "--temperature must be >= 0")
        _check(0 < self.top_p <= 1, "--top-p must be in (0, 1]")
        _check(self.max_new_tokens > 0, "--max-new-tokens must be > 0")
        _check(self.batch_size > 0, "--batch-size must be > 0")
        _check(self.shard_size > 0, "--shard-size must be > 0")


@dataclass
class BonConfig(RunConfig):
    """`tdrm bon`: best-of-N with every PRM given, on shared candidates (paired comparison)."""

    policy: str | None = opt(
        None, "Policy to sample from: a run folder (sft/rl), a local HF model folder, or a hub id."
    )
    samples: str | None = opt(
        None,
        "Reuse the rollouts of a complete collect run instead of sampling (excludes --policy).",
    )
    prm: list[str] = opt(
        [],
        "PRM: a train-prm run folder, a tdrm PRM folder or a public PRM's folder (see "
        "--prm-format); repeat for several PRMs.",
    )
    prm_format: list[str] = opt([], FORMAT_HELP)
    prm_option: list[str] = opt([], OPTION_HELP)
    task: str = opt("arith", TASK_HELP)
    split: str = opt("test", f"Which problems to sample: {listed(SPLITS)}.")
    problems: int = opt(200, "Number of problems.")
    n: int = opt(
        16, "Candidates per problem (max N); accuracy is reported at N = 1, 2, 4, ... up to it."
    )
    agg: str = opt("min", f"Step-score aggregation: {', '.join(AGGREGATIONS)}, or all.")
    vote: str = opt(
        "weighted",
        f"Vote over candidates: {', '.join(VOTES)}, or all (majority and pass@N are always reported).",
    )
    subsets: int = opt(
        32, "Random candidate subsets per N < max N (accuracy is their mean, with std)."
    )
    temperature: float = opt(1.0, "Sampling temperature.")
    top_p: float = opt(1.0, "Nucleus sampling mass.")
    max_new_tokens: int = opt(128, "Token limit per solution.")
    batch_size: int = opt(64, "Sequences per generation / PRM scoring batch.")
    backend: str = opt("hf", BACKEND_HELP)
    trust_remote_code: bool = opt(False, TRUST_REMOTE_CODE_HELP)
    allow_pickle: bool = opt(False, ALLOW_PICKLE_HELP)

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(
            self.policy is not None or self.samples is not None, "--policy or --samples is required"
        )
        _check(
            self.policy is None or self.samples is None,
            "--policy and --samples exclude each other (the samples already name their policy)",
        )
        _check(len(self.prm) > 0, "--prm is required (repeat it to compare several PRMs)")
        check_choices(self.prm, self.prm_format, self.prm_option)
        _one_of(self.split, SPLITS, "--split")
        _check(self.problems > 0, "--problems must be > 0")
        _check(self.n > 0, "--n must be > 0")
        _one_of(self.agg, (*AGGREGATIONS, "all"), "--agg")
        _one_of(self.vote, (*VOTES, "all"), "--vote")
        _check(self.subsets > 0, "--subsets must be > 0")
        _check(self.temperature >= 0, "--temperature must be >= 0")
        _check(0 < self.top_p <= 1, "--top-p must be in (0, 1]")
        _check(self.max_new_tokens > 0, "--max-new-tokens must be > 0")
        _check(self.batch_size > 0, "--batch-size must be > 0")


@dataclass
class SearchConfig(RunConfig):
    """`tdrm search`: step-level PRM-guided search (beam, greedy, DVTS)."""

    policy: str | None = opt(
        None, "Policy: a run folder (sft/rl), a local HF model folder, or a hub id."
    )
    prm: list[str] = opt(
        [],
        "PRM: a train-prm run folder, a tdrm PRM folder or a public PRM's folder (see "
        "--prm-format); repeat for several PRMs.",
    )
    prm_format: list[str] = opt([], FORMAT_HELP)
    prm_option: list[str] = opt([], OPTION_HELP)
    method: list[str] = opt(
        ["beam"], f"Search method: {', '.join(SEARCH_METHODS)}, or all; repeat for several."
    )
    task: str = opt("arith", TASK_HELP)
    split: str = opt("test", f"Which problems to solve: {listed(SPLITS)}.")
    problems: int = opt(200, "Number of problems.")
    beam_width: int = opt(4, "Prefixes kept per step (beam), or independent subtrees (dvts).")
    expand: int = opt(4, "Next steps sampled from every kept prefix.")
    agg: str = opt("last", f"Prefix / solution score from step scores: {listed(AGGREGATIONS)}.")
    vote: str = opt(
        "weighted",
        f"Answer pick among the finished solutions: {listed(VOTES)} (naive: the best score).",
    )
    max_depth: int = opt(16, "Step limit per solution.")
    max_step_tokens: int = opt(48, "Token limit per step (a step cut there ends its solution).")
    max_new_tokens: int = opt(256, "Token limit per solution (all its steps together).")
    temperature: float = opt(1.0, "Sampling temperature of the expansions.")
    top_p: float = opt(1.0, "Nucleus sampling mass.")
    batch_size: int = opt(64, "Sequences per generation / PRM scoring batch.")
    trust_remote_code: bool = opt(False, TRUST_REMOTE_CODE_HELP)
    allow_pickle: bool = opt(False, ALLOW_PICKLE_HELP)

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.policy is not None, "--policy is required")
        _check(len(self.prm) > 0, "--prm is required (repeat it to compare several PRMs)")
        check_choices(self.prm, self.prm_format, self.prm_option)
        for method in self.method:
            _check(
                method in (*SEARCH_METHODS, "all"),
                f"--method {method}: expected {', '.join(SEARCH_METHODS)} or all",
            )
        _check(len(self.method) > 0, "--method needs at least one method")
        _one_of(self.split, SPLITS, "--split")
        _check(self.problems > 0, "--problems must be > 0")
        _check(self.beam_width > 0 and self.expand > 0, "--beam-width and --expand must be > 0")
        _one_of(self.agg, AGGREGATIONS, "--agg")
        _one_of(self.vote, VOTES, "--vote")
        _check(self.max_depth > 0, "--max-depth must be > 0")
        _check(
            self.max_step_tokens > 0 and self.max_new_tokens > 0,
            "--max-step-tokens and --max-new-tokens must be > 0",
        )
        _check(self.temperature >= 0, "--temperature must be >= 0")
        _check(0 < self.top_p <= 1, "--top-p must be in (0, 1]")
        _check(self.batch_size > 0, "--batch-size must be > 0")

    @property
    def methods(self) -> list[str]:
        """The methods to run, `all` expanded, duplicates dropped, in the order given."""
        names = [
            m for given in self.method for m in (SEARCH_METHODS if given == "all" else (given,))
        ]
        return list(dict.fromkeys(names))


@dataclass
class EvalConfig(RunConfig):
    """`tdrm eval`: policy accuracy, PRM step quality, and the report of earlier runs."""

    policy: str | None = opt(
        None, "Policy to evaluate: a run folder (sft/rl), a local HF model folder, or a hub id."
    )
    prm: list[str] = opt(
        [],
        "PRM to evaluate on the policy's solutions: a train-prm run, a tdrm PRM folder or a "
        "public PRM's folder (see --prm-format); repeatable.",
    )
    prm_format: list[str] = opt([], FORMAT_HELP)
    prm_option: list[str] = opt([], OPTION_HELP)
    task: str = opt("arith", TASK_HELP)
    split: str = opt("test", f"Which problems to evaluate on: {listed(SPLITS)}.")
    problems: int = opt(200, "Number of problems.")
    k: int = opt(8, "Samples per problem for maj@k, pass@k and the PRM step metrics.")
    temperature: float = opt(1.0, "Sampling temperature of the k samples.")
    max_new_tokens: int = opt(128, "Token limit per solution.")
    batch_size: int = opt(64, "Sequences per generation / PRM scoring batch.")
    steps_file: str | None = opt(
        None,
        "ProcessBench-format rows (problem, steps, label = first wrong step or -1): JSONL, "
        "the released JSON lists (gsm8k.json, ...) or Parquet.",
    )
    threshold: float = opt(
        0.5,
        "ProcessBench's fixed first-error threshold for --steps-file (the official protocol; "
        "0.5 is the published default): the first step scoring below it is the predicted error.",
    )
    threshold_fraction: float = opt(
        0.5, "Share of solutions used to pick the tuned first-error threshold (rest: reported)."
    )
    bon: list[str] = opt([], "bon run folders to include in report.md; repeatable.")
    search: list[str] = opt([], "search run folders to include in report.md; repeatable.")
    rl: list[str] = opt(
        [], "rl run folders to include in report.md (accuracy vs problems seen); repeatable."
    )
    policy_likelihood: bool = opt(
        True,
        "Also score the samples with the policy's own likelihood (an untrained baseline row "
        "'policy-likelihood': each step's value is the lowest probability the policy gives "
        "any token of the steps so far; needs tied embeddings).",
    )
    trust_remote_code: bool = opt(False, TRUST_REMOTE_CODE_HELP)
    allow_pickle: bool = opt(False, ALLOW_PICKLE_HELP)

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(
            self.policy is not None or (self.steps_file is not None and self.prm),
            "--policy is required (or --steps-file with at least one --prm)",
        )
        check_choices(self.prm, self.prm_format, self.prm_option)
        _one_of(self.split, SPLITS, "--split")
        _check(self.problems > 0 and self.k > 0, "--problems and --k must be > 0")
        _check(0.0 < self.threshold < 1.0, f"--threshold {self.threshold}: must be in (0, 1)")
        _check(0.0 < self.threshold_fraction < 1.0, "--threshold-fraction must be in (0, 1)")
        _check(
            self.max_new_tokens > 0 and self.batch_size > 0,
            "--max-new-tokens and --batch-size must be > 0",
        )
