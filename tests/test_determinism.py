"""The same command with the same seed on the CPU writes byte-identical artifacts."""

from __future__ import annotations

from conftest import invoke

COLLECT = ("--problems", "4", "--n", "3", "--mc-rollouts", "2", "--max-new-tokens", "60",
           "--shard-size", "2", "--batch-size", "16")  # fmt: skip


def run(*args) -> None:
    result = invoke(*args)
    assert result.exit_code == 0, result.output


def test_collect_same_seed_same_bytes_other_seed_other_bytes(tiny_policy, tmp_path):
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        run("collect", "--policy", tiny_policy, *COLLECT, "--seed", seed, "--out", tmp_path / name)
    a, b, c = ((tmp_path / n / "rollouts.parquet").read_bytes() for n in "abc")
    assert a == b
    assert a != c  # the seed does reach the sampler


def test_bon_same_seed_same_bytes(tiny_policy, tiny_prm, tmp_path):
    args = ("bon", "--policy", tiny_policy, "--prm", tiny_prm, "--problems", "3", "--n", "4",
            "--max-new-tokens", "60", "--seed", "2")  # fmt: skip
    run(*args, "--out", tmp_path / "a")
    run(*args, "--out", tmp_path / "b")
    for name in ("results.json", "scores.parquet"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
