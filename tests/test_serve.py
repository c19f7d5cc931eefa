"""`tdrm serve`: the real server in a subprocess on a free loopback port, called over HTTP.

Two servers start once for the module (in parallel): a plain `--reward prm` one, and one
with `--api-key`, `--reward prm+rlvr` and a small body limit. Every answer is compared with
the in-process `PRMReward` / `VerifierReward` / `PRM.score` on the same saved PRM.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import invoke
from tdrm_cli.steps import build_prompt, split_steps
from tdrm_cli.tasks.arith import ArithTask
from tdrm_cli.voting import aggregate

KEY = "s3cret-token"
TASK = ArithTask(ops=3)
START_TIMEOUT = 120.0  # transformers import + model load on a busy 2-CPU machine


def make_prm_dir(path: Path) -> Path:
    """A saved PRM (random tiny Qwen2, the sft char tokenizer and prompt template) for arith."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from tdrm_cli.prm import PRM, load_tokenizer, load_value_model, prm_meta
    from tdrm_cli.stages.sft import PROMPT_TEMPLATE, build_char_tokenizer
    from tdrm_cli.steps import DEFAULT_SEPARATOR

    base = path.parent / "base"
    tokenizer = build_char_tokenizer()
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
        tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    Qwen2ForCausalLM(config).save_pretrained(str(base))
    tokenizer.save_pretrained(str(base))
    torch.manual_seed(1)
    tokenizer = load_tokenizer(str(base))
    model = load_value_model(str(base), tokenizer.pad_token_id)
    policy = {"prompt_template": PROMPT_TEMPLATE, "separator": DEFAULT_SEPARATOR, "task": "arith"}
    return PRM(model, tokenizer, prm_meta(tokenizer, policy, agg="min", loss="td")).save(path)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def call(
    port: int, method: str, path: str, body=None, key: str | None = None, raw: bytes | None = None
):
    """(status, JSON answer) of one request; 4xx/5xx answers are returned, not raised."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data, headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


class Server:
    def __init__(self, prm_dir: Path, log: Path, *flags: str):
        self.port = free_port()
        self.log = log
        env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
        env.pop("TDRM_SERVE_API_KEY", None)
        cmd = [sys.executable, "-m", "tdrm_cli", "serve", "--prm", str(prm_dir)]
        cmd += ["--port", str(self.port), *flags]
        self.proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)

    def wait_ready(self, key: str | None = None) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"server exited {self.proc.returncode}: {self.log.read_text()}"
                )
            try:
                if call(self.port, "GET", "/health", key=key)[0] == 200:
                    return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.25)
        raise AssertionError(f"server not ready after {START_TIMEOUT}s: {self.log.read_text()}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def prm_dir(tmp_path_factory):
    return make_prm_dir(tmp_path_factory.mktemp("serve") / "prm")


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    """Where the servers' stdout and stderr go."""
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="module")
def servers(prm_dir, logs):
    plain = Server(prm_dir, logs / "plain.log", "--max-wait-ms", "20")
    guarded = Server(
        prm_dir, logs / "guarded.log", "--api-key", KEY, "--reward", "prm+rlvr",
        "--prm-weight", "0.3", "--max-request-bytes", "4096",
    )  # fmt: skip
    try:
        plain.wait_ready()
        guarded.wait_ready(key=KEY)
        yield plain.port, guarded.port
    finally:
        plain.stop()
        guarded.stop()
    assert plain.proc.returncode is not None and guarded.proc.returncode is not None


@pytest.fixture(scope="module")
def prm(prm_dir):
    from tdrm_cli.prm import load_prm

    return load_prm(prm_dir)


def rollouts(prm, n: int = 6):
    """OpenRLHF-style (questions, prompts, completions, golds): right, cut, wrong, empty."""
    problems = TASK.problems("train", n)
    questions = [p.question for p in problems]
    completions = []
    for i, p in enumerate(problems):
        steps = TASK.reference_steps(p)
        kind = i % 4
        if kind == 1:
            steps = steps[:2]
        elif kind == 2:
            steps = [*steps[:-1], f"answer {int(p.gold) + 1}"]
        elif kind == 3:
            steps = []
        completions.append(prm.separator.join(steps))
    prompts = [build_prompt(prm.tokenizer, q, prm.meta) for q in questions]
    return questions, prompts, completions, [p.gold for p in problems]


def close(a, b, tol=1e-5) -> bool:
    return len(a) == len(b) and all(abs(x - y) <= tol for x, y in zip(a, b, strict=True))


# ---------------------------------------------------------------- OpenRLHF /get_reward


def test_get_reward_equals_in_process_prm_reward(servers, prm):
    from tdrm_cli.rewards import PRMReward

    port, _ = servers
    questions, prompts, completions, golds = rollouts(prm)
    expected = PRMReward(prm)(prompts=prompts, completions=completions, question=questions)
    # OpenRLHF decodes with skip_special_tokens=False: a trailing eos must not change the score
    queries = [
        p + c + (prm.tokenizer.eos_token if i % 2 else "")
        for i, (p, c) in enumerate(zip(prompts, completions, strict=True))
    ]
    status, out = call(
        port, "POST", "/get_reward", {"query": queries, "prompts": prompts, "labels": golds}
    )
    assert status == 200, out
    assert close(out["rewards"], expected) and out["scores"] == out["rewards"]
    assert out["extra_logs"]["prm_score"] == out["rewards"]
    assert out["extra_logs"]["num_steps"] == [
        float(len(c.split("\n\n"))) if c else 0.0 for c in completions
    ]
    # older OpenRLHF clients send the query alone: the PRM's template finds the question
    status, alone = call(port, "POST", "/get_reward", {"query": queries})
    assert status == 200 and close(alone["rewards"], expected)


def test_prm_rlvr_with_api_key(servers, prm):
    from tdrm_cli.rewards import PRMReward, VerifierReward

    _, port = servers
    questions, prompts, completions, golds = rollouts(prm, 4)
    body = {
        "query": [p + c for p, c in zip(prompts, completions, strict=True)],
        "prompts": prompts,
        "labels": golds,
    }
    assert call(port, "POST", "/get_reward", body)[0] == 401
    assert call(port, "POST", "/get_reward", body, key="wrong")[0] == 401
    assert call(port, "GET", "/health")[0] == 401
    status, out = call(port, "POST", "/get_reward", body, key=KEY)
    assert status == 200, out
    prm_part = PRMReward(prm)(prompts=prompts, completions=completions, question=questions)
    verdicts = VerifierReward(TASK)(
        prompts=prompts, completions=completions, question=questions, gold=golds
    )
    assert verdicts == [1.0, 0.0, 0.0, 0.0]
    assert close(
        out["rewards"], [0.3 * p + 0.7 * v for p, v in zip(prm_part, verdicts, strict=True)]
    )
    assert out["scores"] == verdicts and out["extra_logs"]["verifier"] == verdicts
    status, out = call(port, "POST", "/get_reward", {"query": body["query"]}, key=KEY)
    assert status == 422 and "labels" in out["detail"]
    status, out = call(port, "POST", "/score", raw=b"[" * 5000, key=KEY)
    assert status == 413 and "--max-request-bytes" in out["detail"]
    status, info = call(port, "GET", "/info", key=KEY)
    assert status == 200 and info["reward"] == "prm+rlvr" and info["task"] == "arith"


def test_an_empty_label_under_prm_rlvr_is_a_422_on_the_wire_and_in_the_log(servers, logs, prm):
    plain, port = servers
    _, prompts, completions, golds = rollouts(prm, 2)
    queries = [p + c for p, c in zip(prompts, completions, strict=True)]
    # OpenRLHF sends "" for every label when --data.label_key is not set
    for labels, reason in [
        ([golds[0], ""], "'labels[1]' is empty"),
        ([" \n", golds[1]], "'labels[0]' is only whitespace"),
        (["", ""], "'labels[0]' is empty"),
    ]:
        body = {"query": queries, "prompts": prompts, "labels": labels}
        status, out = call(port, "POST", "/get_reward", body, key=KEY)
        assert status == 422 and out["detail"].startswith(reason), out
        assert "--data.label_key" in out["detail"] and "older: --label_key" in out["detail"]
    # --reward prm ignores labels
    assert call(plain, "POST", "/get_reward", {"query": queries, "labels": ["", ""]})[0] == 200
    # OpenRLHF's client drops the body of a 4xx: the reason is on the server's stderr, once
    # for the two empty labels (one mistake, repeated within the log's window)
    expected = "tdrm serve: 422 POST /get_reward: 'labels[1]' is empty, but --reward prm+rlvr"
    deadline = time.monotonic() + 10
    while expected not in (logs / "guarded.log").read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    lines = [line for line in (logs / "guarded.log").read_text().splitlines() if "is empty" in line]
    assert len(lines) == 1 and lines[0].startswith(expected) and "--data.label_key" in lines[0]


# ---------------------------------------------------------------- /score, /info


def test_score_matches_prm_score(servers, prm):
    port, _ = servers
    questions, _, completions, _ = rollouts(prm)
    steps = [c.split(prm.separator) if c else [] for c in completions]
    expected = prm.score(questions, steps)
    status, out = call(port, "POST", "/score", {"problem": questions, "steps": steps})
    assert status == 200, out
    assert all(close(a, b) for a, b in zip(out["step_values"], expected, strict=True))
    assert close(out["scores"], [aggregate(v, "min") for v in expected]) and out["agg"] == "min"
    # one problem for every solution, another aggregation
    status, out = call(
        port, "POST", "/score", {"problem": questions[0], "steps": steps[:2], "agg": "last"}
    )
    assert status == 200 and close(
        out["scores"], [aggregate(v, "last") for v in prm.score([questions[0]] * 2, steps[:2])]
    )
    status, info = call(port, "GET", "/info")
    assert status == 200 and info["aggregation"] == "min" and info["separator"] == "\n\n"
    assert info["version"] and info["model"] == str(Path(info["model"]))


def test_step_rewards_offsets_cut_the_response_into_its_steps(servers, prm):
    port, _ = servers
    questions, _, completions, _ = rollouts(prm)
    responses = [*completions, "  1+2=3\n\n\n\n 3*2=6 \n\nanswer 6\n\n"]  # stray whitespace
    status, out = call(
        port,
        "POST",
        "/step_rewards",
        {"problem": [*questions, questions[0]], "responses": responses},
    )
    assert status == 200, out
    assert out["separator"] == prm.separator and len(out["offsets"]) == len(responses)
    for response, offsets, values, question in zip(
        responses, out["offsets"], out["step_values"], [*questions, questions[0]], strict=True
    ):
        steps = [response[start:end] for start, end in offsets]
        assert steps == split_steps(response, prm.separator)
        assert all(a < b <= c for (a, b), (c, _) in zip(offsets, offsets[1:], strict=False))
        if response == response.strip():  # a clean response is its steps joined
            assert prm.separator.join(steps) == response
        assert close(values, prm.score([question], [steps])[0] if steps else [])
    assert out["offsets"][-1] == [[2, 7], [12, 17], [20, 28]]
    assert out["offsets"][3] == [] and out["step_values"][3] == []  # the empty response


# ---------------------------------------------------------------- bad input, concurrency


@pytest.mark.parametrize(
    "path, raw, status, needle",
    [
        ("/get_reward", b'{"query": [', 400, "malformed JSON"),
        ("/get_reward", b"\xff\xfe", 400, "malformed JSON"),
        ("/get_reward", b"[1, 2]", 422, "JSON object"),
        ("/get_reward", b"{}", 422, "'query' is required"),
        ("/get_reward", b'{"query": "text"}', 422, "'query' must be a list"),
        ("/get_reward", b'{"query": ["a", 3]}', 422, "'query[1]' must be a string"),
        ("/get_reward", b'{"query": ["a"], "prompts": ["a", "b"]}', 422, "'prompts' has 2"),
        ("/get_reward", b'{"query": ["a"], "labels": [{}]}', 422, "'labels[0]' must be a string"),
        ("/get_reward", b'{"query": ["a"], "labels": []}', 422, "'labels' must be a list"),
        ("/get_reward", b'{"query": ["no template here"]}', 422, "cannot find where the response"),
        ("/score", b'{"problem": "q", "steps": ["a"]}', 422, "'steps[0]' must be a list"),
        ("/score", b'{"problem": 1, "steps": []}', 422, "'problem' must be"),
        ("/score", b'{"problem": ["q"], "steps": [[], []]}', 422, "'problem' has 1"),
        ("/score", b'{"problem": "q", "steps": [["a"]], "agg": "max"}', 422, "'agg'"),
        ("/step_rewards", b'{"problem": "q"}', 422, "'responses' is required"),
        ("/step_rewards", b'{"problem": "q", "responses": [["a"]]}', 422, "'responses[0]' must be"),
        ("/step_rewards", b'{"problem": ["q"], "responses": []}', 422, "'problem' has 1"),
        ("/step_rewards", b'{"responses": ["a"]}', 422, "'problem' must be"),
    ],
)  # fmt: skip
def test_bad_requests_get_one_line_4xx(servers, path, raw, status, needle):
    port, _ = servers
    got, out = call(port, "POST", path, raw=raw)
    assert got == status and needle in out["detail"] and "\n" not in out["detail"], out
    assert call(port, "GET", "/health")[0] == 200  # still answering


def test_concurrent_clients_are_micro_batched(servers, prm):
    port, _ = servers
    questions, _, completions, _ = rollouts(prm, 8)
    steps = [c.split(prm.separator) if c else [] for c in completions]
    solo = call(port, "POST", "/score", {"problem": questions, "steps": steps})[1]["scores"]
    before = call(port, "GET", "/health")[1]
    answers: dict[int, list] = {}

    def client(i: int) -> None:
        answers[i] = [
            call(port, "POST", "/score", {"problem": questions[i], "steps": [steps[i]]})
            for _ in range(4)
        ]

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sorted(answers) == list(range(8))
    for i, replies in answers.items():
        assert all(status == 200 and close(out["scores"], [solo[i]]) for status, out in replies)
    after = call(port, "GET", "/health")[1]
    assert after["requests"] - before["requests"] == 32
    assert after["batches"] - before["batches"] < 32  # some requests shared a forward pass


def test_full_queue_answers_overloaded():
    from tdrm_cli.serve import MicroBatcher, Overloaded

    def slow_score(problems, solutions):
        time.sleep(0.2)
        return [[0.5] * len(s) for s in solutions]

    async def main():
        batcher = MicroBatcher(slow_score, max_batch=1, max_wait_ms=0, max_queue=1)
        batcher.start()
        first = asyncio.create_task(batcher.submit(["q"], [["a"]]))
        await asyncio.sleep(0.05)  # the worker holds `first`; the queue is empty again
        second = asyncio.create_task(batcher.submit(["q"], [["a", "b"]]))
        await asyncio.sleep(0)
        with pytest.raises(Overloaded, match=r"queue full \(1 pending\)"):
            await batcher.submit(["q"], [["c"]])
        results = await asyncio.gather(first, second)
        await batcher.stop()
        return results, batcher.stats

    (first, second), stats = asyncio.run(main())
    assert first == [[0.5]] and second == [[0.5, 0.5]]
    assert stats.rejected == 1 and stats.requests == 2


def test_a_failing_request_does_not_fail_its_batch():
    from tdrm_cli.serve import MicroBatcher

    def score(problems, solutions):
        if "boom" in problems:
            raise ValueError("bad solution")
        return [[1.0] * len(s) for s in solutions]

    async def main():
        batcher = MicroBatcher(score, max_batch=8, max_wait_ms=50, max_queue=8)
        batcher.start()
        jobs = [batcher.submit([q], [["a"]]) for q in ("ok", "boom", "fine")]
        results = await asyncio.gather(*jobs, return_exceptions=True)
        await batcher.stop()
        return results, batcher.stats

    (ok, boom, fine), stats = asyncio.run(main())
    assert ok == [[1.0]] and fine == [[1.0]] and isinstance(boom, ValueError)
    assert stats.batches == 1 and stats.failed == 1


# ---------------------------------------------------------------- verl hook, CLI


def test_verl_compute_score(servers, prm, monkeypatch):
    from tdrm_cli.integrations import verl
    from tdrm_cli.rewards import PRMReward

    port, guarded = servers
    questions, prompts, completions, golds = rollouts(prm, 4)
    expected = PRMReward(prm)(prompts=prompts, completions=completions, question=questions)
    monkeypatch.setenv(verl.URL_ENV, f"http://127.0.0.1:{port}")
    one = verl.compute_score(
        "arith", completions[0], golds[0], {"question": questions[0], "index": 0}
    )
    assert abs(one["score"] - expected[0]) < 1e-5 and one["prm_score"] == one["score"]
    assert one["num_steps"] == float(len(completions[0].split(prm.separator)))
    batch = verl.compute_score_batch(
        ["arith"] * 4, completions, golds, [{"question": q} for q in questions]
    )
    assert close([b["score"] for b in batch], expected)
    assert all(sorted(b) == ["num_steps", "prm_score", "score"] for b in batch)
    with pytest.raises(ValueError, match="no question"):
        verl.compute_score("arith", completions[0], golds[0], {})
    monkeypatch.setenv(verl.URL_ENV, f"http://127.0.0.1:{guarded}")
    with pytest.raises(verl.RewardServerError, match="HTTP 401"):
        verl.compute_score("arith", completions[0], golds[0], {"question": questions[0]})
    monkeypatch.setenv(verl.API_KEY_ENV, KEY)
    mixed = verl.compute_score("arith", completions[0], golds[0], {"question": questions[0]})
    assert mixed["verifier"] == 1.0 and mixed["score"] > 0.7
    assert abs(mixed["score"] - (0.3 * mixed["prm_score"] + 0.7)) < 1e-6


@pytest.mark.parametrize(
    "flags, needle",
    [
        (["--reward", "rlvr"], "--reward rlvr: expected prm or prm+rlvr"),
        (["--prm-weight", "2"], "--prm-weight 2.0: must be in [0, 1]"),
        (["--agg", "max"], "--agg max: expected one of"),
        (["--max-queue", "0"], "--max-queue must be >= 1"),
    ],
)
def test_cli_bad_flags_exit_2(prm_dir, flags, needle):
    result = invoke("serve", "--prm", prm_dir, *flags)
    assert (
        result.exit_code == 2
        and needle in result.stderr
        and len(result.stderr.strip().splitlines()) == 1
    )


def test_cli_refuses_a_taken_port_and_a_missing_prm(prm_dir, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = invoke("serve", "--prm", prm_dir, "--port", taken.getsockname()[1])
    assert result.exit_code == 2 and "cannot listen" in result.stderr
    result = invoke("serve", "--prm", tmp_path / "nope", "--port", free_port())
    assert result.exit_code == 2 and "no such" in result.stderr
