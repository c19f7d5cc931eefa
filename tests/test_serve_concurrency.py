"""Concurrent requests each get their own rewards, in order, when they share a micro-batch.

The served "PRM" is a scorer whose value for a step encodes (question, step index, step
text), so a value handed to the wrong request, the wrong solution or the wrong step is
caught exactly; it sleeps a little per call, so that requests queue behind each other and
the micro-batcher merges them (checked through `/health`).
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
import urllib.request

import pytest

from tdrm_cli.voting import aggregate

SEPARATOR = "\n\n"
TEMPLATE = "Q: {question}\nA:\n\n"


def code(question: str, index: int, step: str) -> float:
    digest = hashlib.sha256(f"{question}|{index}|{step}".encode()).hexdigest()
    return (int(digest[:8], 16) + 1) / (2**32 + 2)  # in (0, 1), distinct per step


class EncodingPRM:
    """Anything with `score`, `separator`, `agg` and `meta` can be served."""

    separator = SEPARATOR
    agg = "min"
    meta = {"prompt_template": TEMPLATE, "separator": SEPARATOR}
    tokenizer = None

    def score(self, problems, solutions, batch_size: int = 32):
        time.sleep(0.05)
        return [
            [code(q, i, step) for i, step in enumerate(steps)]
            for q, steps in zip(problems, solutions, strict=True)
        ]


@pytest.fixture(scope="module")
def port():
    import uvicorn

    from tdrm_cli.serve import ServeConfig, create_app

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        free = sock.getsockname()[1]
    app = create_app(EncodingPRM(), ServeConfig(max_wait_ms=30, max_batch=64))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started
    yield free
    server.should_exit = True
    thread.join(timeout=10)


def post(port: int, path: str, body: dict) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", json.dumps(body).encode(),
        {"Content-Type": "application/json"}, method="POST",
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def health(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=30) as response:
        return json.loads(response.read())


def solutions(client: int, size: int) -> tuple[list[str], list[list[str]]]:
    """`size` solutions of different lengths for client `client`, each its own question."""
    questions = [f"q{client}-{j}" for j in range(size)]
    steps = [[f"c{client} s{j} t{t}" for t in range(2 + (j + client) % 3)] for j in range(size)]
    return questions, steps


def test_concurrent_requests_each_get_their_own_values_in_order(port):
    sizes = [1, 3, 2, 3, 1, 2, 3, 2]  # per client; /score and /get_reward alternate
    answers: dict[int, dict] = {}
    errors: list[BaseException] = []

    def client(i: int) -> None:
        questions, steps = solutions(i, sizes[i])
        try:
            if i % 2 == 0:
                answers[i] = post(port, "/score", {"problem": questions, "steps": steps})
            else:
                prompts = [TEMPLATE.format(question=q) for q in questions]
                queries = [p + SEPARATOR.join(s) for p, s in zip(prompts, steps, strict=True)]
                answers[i] = post(port, "/get_reward", {"query": queries, "prompts": prompts})
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    before = health(port)
    for _ in range(3):  # rounds: every round puts all clients in flight at once
        threads = [threading.Thread(target=client, args=(i,)) for i in range(len(sizes))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert not errors, errors
        for i, size in enumerate(sizes):
            questions, steps = solutions(i, size)
            expected = [
                [code(q, t, s) for t, s in enumerate(st)]
                for q, st in zip(questions, steps, strict=True)
            ]
            if i % 2 == 0:
                assert answers[i]["step_values"] == expected, i
                assert answers[i]["scores"] == [aggregate(v, "min") for v in expected], i
            else:
                assert answers[i]["rewards"] == [aggregate(v, "min") for v in expected], i
                assert answers[i]["extra_logs"]["num_steps"] == [float(len(s)) for s in steps]
    after = health(port)
    requests = after["requests"] - before["requests"]
    assert requests == 3 * len(sizes)
    assert after["batches"] - before["batches"] < requests  # requests did share forward passes
