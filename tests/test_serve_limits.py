"""`tdrm serve` under hostile clients: bounded work per request, deadlines for slow
clients, no NaN on the wire. A real server in a subprocess on a loopback port, with a
short `--read-timeout-s` so the deadlines can be watched."""

from __future__ import annotations

import math
import socket
import threading
import time

import pytest

from test_serve import Server, call, make_prm_dir

READ_TIMEOUT_S = 2.0
MAX_SOLUTIONS = 8


@pytest.fixture(scope="module")
def prm_dir(tmp_path_factory):
    return make_prm_dir(tmp_path_factory.mktemp("serve-limits") / "prm")


@pytest.fixture(scope="module")
def port(prm_dir, tmp_path_factory):
    server = Server(
        prm_dir, tmp_path_factory.mktemp("logs") / "limits.log",
        "--read-timeout-s", str(READ_TIMEOUT_S), "--max-solutions", str(MAX_SOLUTIONS),
    )  # fmt: skip
    try:
        server.wait_ready()
        yield server.port
    finally:
        server.stop()


SMALL = {"problem": "3+4*2 = ?", "steps": [["3+4=7", "answer 7"]]}


def timed(port: int, body) -> tuple[float, int, dict]:
    start = time.perf_counter()
    status, out = call(port, "POST", "/score", body)
    return time.perf_counter() - start, status, out


def test_an_over_long_solution_is_refused_while_small_requests_answer(port):
    huge = {"problem": "q", "steps": [["1" * 1_000_000]]}  # 1 MB: refused before tokenizing
    just_over = {"problem": "q", "steps": [["1+1=2"] * 120]}  # ~720 tokens > 512: tokenized
    results: dict[str, tuple[float, int, dict]] = {}
    threads = [
        threading.Thread(target=lambda k=k, b=b: results.__setitem__(k, timed(port, b)))
        for k, b in (("huge", huge), ("just_over", just_over))
    ]
    for t in threads:
        t.start()
    small = [timed(port, SMALL) for _ in range(3)]
    for t in threads:
        t.join(timeout=60)
    for seconds, status, out in small:
        assert status == 200 and seconds < 1.0, (seconds, status, out)
    for name in ("huge", "just_over"):
        seconds, status, out = results[name]
        assert status == 413 and "--max-tokens" in out["detail"], (name, out)
        assert "512 tokens" in out["detail"] and seconds < 10.0, (name, seconds, out)
    assert call(port, "GET", "/info")[1]["limits"]["max_tokens"] == 512


def test_too_many_solutions_is_a_413_naming_the_limit(port):
    body = {"problem": "q", "steps": [["1+1=2"]] * (MAX_SOLUTIONS + 1)}
    status, out = call(port, "POST", "/score", body)
    assert status == 413 and f"limit is {MAX_SOLUTIONS} (--max-solutions)" in out["detail"], out
    status, out = call(port, "POST", "/score", {**body, "steps": body["steps"][:MAX_SOLUTIONS]})
    assert status == 200 and len(out["scores"]) == MAX_SOLUTIONS


def half_sent(port: int, headers_only: bool) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    head = "POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n"
    sock.sendall(head.encode() if headers_only else (head + "\r\n" + '{"problem": ').encode())
    return sock


def closed_by_server(sock: socket.socket, within_s: float) -> bool:
    """True when the server closes the connection (after a 408 or without a word)."""
    sock.settimeout(within_s)
    try:
        while chunk := sock.recv(65536):
            del chunk
        return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_slow_clients_are_cut_off_and_health_keeps_answering(port):
    socks = [half_sent(port, headers_only=i % 2 == 0) for i in range(300)]
    try:
        start = time.perf_counter()
        status, health = call(port, "GET", "/health")
        assert status == 200 and time.perf_counter() - start < 1.0
        assert all(closed_by_server(s, READ_TIMEOUT_S + 10) for s in socks)
        assert time.perf_counter() - start < READ_TIMEOUT_S + 10
    finally:
        for s in socks:
            s.close()
    assert call(port, "GET", "/health")[0] == 200


def test_a_half_sent_body_gets_408(port):
    sock = half_sent(port, headers_only=False)
    sock.settimeout(READ_TIMEOUT_S + 10)
    reply = b""
    while chunk := sock.recv(65536):
        reply += chunk
    sock.close()
    assert reply.startswith(b"HTTP/1.1 408") and b"--read-timeout-s" in reply, reply[:300]


@pytest.mark.parametrize(
    "raw, status, needle",
    [
        (b"[" * 100_000 + b"]" * 100_000, 400, "nested too deep"),
        (b'{"problem": "q", "steps": [], "n": ' + b"9" * 5001 + b"}", 400, "malformed JSON"),
        (b'{"problem": "q", "steps": [["\\ud800"]]}', 422, "'steps[0][0]' is not valid Unicode"),
        (b'{"problem": "\\udfff", "steps": [["a"]]}', 422, "'problem' is not valid Unicode"),
    ],
)
def test_json_bombs_and_broken_text_are_4xx(port, raw, status, needle):
    got, out = call(port, "POST", "/score", raw=raw)
    assert got == status and needle in out["detail"], out
    assert call(port, "GET", "/health")[0] == 200


def test_the_prompt_cache_is_bounded(port, prm_dir, monkeypatch):
    from tdrm_cli import prm as prm_module

    monkeypatch.setattr(prm_module, "PROMPT_CACHE", 4)
    prm = prm_module.load_prm(prm_dir)
    for i in range(10):
        prm.score([f"{i}+1 = ?"], [["answer 1"]])
    assert list(prm._prompts) == [f"{i}+1 = ?" for i in range(6, 10)]
    prm.score(["6+1 = ?"], [["answer 1"]])  # a hit moves to the back
    assert list(prm._prompts)[-1] == "6+1 = ?"
    assert isinstance(call(port, "GET", "/health")[1]["prompt_cache"], int)


def test_a_prm_with_nan_weights_is_refused_and_nan_values_never_leave(prm_dir, tmp_path):
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    from tdrm_cli.errors import UsageError
    from tdrm_cli.prm import NonFinite, load_prm

    bad = tmp_path / "nan-prm"
    shutil.copytree(prm_dir, bad)
    weights = load_file(bad / "model.safetensors")
    name = next(k for k in weights if k.endswith("score.weight"))
    weights[name] = torch.full_like(weights[name], math.nan)
    save_file(weights, bad / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(UsageError, match="holds non-finite values"):
        load_prm(bad)
    prm = load_prm(prm_dir)
    with torch.no_grad():
        prm.model.score.weight.fill_(math.nan)  # as if it broke after loading
    with pytest.raises(NonFinite, match="non-finite"):
        prm.score(["q"], [["a"]])


def test_the_error_log_writes_one_line_per_reason_per_window():
    from tdrm_cli.serve_http import ErrorLog

    lines: list[str] = []
    now = [0.0]
    log = ErrorLog(every_s=10.0, write=lines.append, clock=lambda: now[0])
    log(422, "POST", "/get_reward", "'labels[0]' is empty")
    log(422, "POST", "/get_reward", "'labels[3]' is empty")  # the same mistake: held back
    log(413, "POST", "/score", "request holds 2000 solutions\nsecond line")  # another: written
    now[0] = 9.0
    log(422, "POST", "/get_reward", "'labels[1]' is empty")  # held back
    assert lines == [
        "tdrm serve: 422 POST /get_reward: 'labels[0]' is empty",
        "tdrm serve: 413 POST /score: request holds 2000 solutions\\nsecond line",
    ]
    now[0] = 12.0  # the window is over: written, with the count of those held back
    log(422, "POST", "/get_reward", "'labels[2]' is empty")
    assert lines[-1] == (
        "tdrm serve: 422 POST /get_reward: 'labels[2]' is empty (and 2 more like it in the last 12s)"
    )
    log(422, "POST", "/get_reward", "'labels[2]' is empty")
    assert len(lines) == 3


def test_the_error_log_remembers_a_bounded_number_of_reasons():
    from tdrm_cli.serve_http import ErrorLog

    lines: list[str] = []
    log = ErrorLog(every_s=10.0, write=lines.append, clock=lambda: 0.0)
    for i in range(3 * ErrorLog.MAX_REASONS):
        path = "/" + "".join("abcdefghij"[int(d)] for d in str(i))  # a new reason each time
        log(404, "GET", path, "Not Found")
    assert len(lines) == 3 * ErrorLog.MAX_REASONS and len(log.last) <= ErrorLog.MAX_REASONS
