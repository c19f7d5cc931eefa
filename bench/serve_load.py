"""`tdrm serve` under load: micro-batched vs one request at a time, on loopback.

One PRM, two servers on free 127.0.0.1 ports: the default micro-batcher, and
`--max-batch 1 --max-wait-ms 0` (every request its own forward pass; otherwise the same
code, so HTTP work still overlaps scoring). Each load phase: 16 concurrent keep-alive
clients (asyncio tasks in one thread, so the load generator takes little CPU) x 30
OpenRLHF `/get_reward` requests of one 8-step solution each (what verl's per-sample
`compute_score` sends), a 60 s timeout per request and a 300 s cap per phase. After a
concurrent warm-up of each server the phases alternate, batched / one-at-a-time then the
other way round, for 7 rounds: on a shared machine the background load changes from
second to second, so each round's ratio compares two neighbouring phases and the median
of the round ratios is reported, beside the server CPU time per request (which does not
depend on the background load).

Columns: requests/s (median over rounds), p50/p99 latency (all requests), server CPU ms
per answered request, batches, mean requests per batch, how busy the model thread was,
answers by status. Every request must be answered 200 with the right reward: each
returned reward is checked against the one computed in this process beforehand
(`load_prm(...).score` of the request's question and steps, aggregated with the PRM's
`agg`) to 1e-5; a 200 with another reward counts as "wrong reward" and as lost
(lost = sent - answered right). Needs: median ratio >= 2 at 16 clients and no request
lost. The last lines print the ratio.

The gated PRM is small (SERVE_BENCH_HIDDEN x SERVE_BENCH_LAYERS, default 32 x 2), so what
is measured is the serving path. On CPU a forward pass costs about linearly in the batch
once the model is big enough to be compute-bound, so a larger PRM on CPU gains less; the
sft default 128 x 4 is measured too (`--default-rounds` rounds, 0 skips it), its ratio
reported beside the gated one and its rewards checked alike, its ratio not gated. On a
GPU a batch of 16 costs about what one sequence costs. SERVE_BENCH_FLAGS adds flags to
the batched server (e.g. "--max-wait-ms 5").

    python bench/serve_load.py [--rounds 7] [--default-rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from common import arith_solutions, policy_folder, report

from tdrm_cli.prm import PRM, load_prm, load_tokenizer, load_value_model, prm_meta
from tdrm_cli.steps import build_prompt, read_policy_meta
from tdrm_cli.voting import aggregate

CLIENTS, REQUESTS, STEPS = 16, 30, 8
REQUEST_TIMEOUT, PHASE_CAP, START_CAP = 60.0, 300.0, 180.0
NEEDED_RATIO, TOLERANCE = 2.0, 1e-5
HIDDEN = int(os.environ.get("SERVE_BENCH_HIDDEN", 32))
LAYERS = int(os.environ.get("SERVE_BENCH_LAYERS", 2))
DEFAULT_SIZE = (128, 4, 4)  # the sft default: hidden, layers, heads
WRONG = "wrong reward"
SERVERS = {  # extra flags of the micro-batched server: SERVE_BENCH_FLAGS="--max-wait-ms 5"
    "micro-batched": os.environ.get("SERVE_BENCH_FLAGS", "").split(),
    "one at a time": ["--max-batch", "1", "--max-wait-ms", "0"],
}


def make_prm(root: Path, hidden: int, layers: int, heads: int) -> Path:
    base = policy_folder(root / "base", hidden=hidden, layers=layers, heads=heads)
    tokenizer = load_tokenizer(str(base))
    model = load_value_model(str(base), tokenizer.pad_token_id)
    meta = prm_meta(tokenizer, read_policy_meta(base), agg="min", loss="td")
    return PRM(model, tokenizer, meta).save(root / "prm")


def request_bodies(prm_dir: Path) -> list[tuple[bytes, float]]:
    """64 `/get_reward` bodies, each with the reward the saved PRM gives it in this process."""
    prm = load_prm(prm_dir)
    questions, solutions, _ = arith_solutions(64, steps=STEPS)
    expected = [aggregate(v, prm.agg) for v in prm.score(questions, solutions)]
    bodies = []
    for question, steps, reward in zip(questions, solutions, expected, strict=True):
        prompt = build_prompt(prm.tokenizer, question, prm.meta)
        body = {"query": [prompt + prm.separator.join(steps)], "prompts": [prompt]}
        bodies.append((json.dumps(body).encode(), reward))
    return bodies


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def request(port: int, method: str, path: str, body: bytes | None = None, conn=None):
    """(status, JSON) of one request, on `conn` (kept alive by the caller) or a fresh one."""
    own = conn is None
    conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        if own:
            conn.close()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc; NaN elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def start_server(prm_dir: Path, log: Path, flags: list[str]) -> tuple[subprocess.Popen, int]:
    port = free_port()
    cmd = [sys.executable, "-m", "tdrm_cli", "serve", "--prm", str(prm_dir), "--port", str(port)]
    proc = subprocess.Popen([*cmd, *flags], stdout=log.open("w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + START_CAP
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited {proc.returncode}:\n{log.read_text()}")
        try:
            if request(port, "GET", "/health")[0] == 200:
                return proc, port
        except OSError:
            pass
        time.sleep(0.25)
    proc.kill()
    raise SystemExit(f"server not ready after {START_CAP:.0f}s:\n{log.read_text()}")


async def post(reader, writer, port: int, body: bytes) -> tuple[int, list]:
    """One keep-alive HTTP/1.1 POST /get_reward on an open connection: (status, rewards)."""
    head = (
        f"POST /get_reward HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    writer.write(head.encode() + body)
    status_line = await reader.readline()
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    answer = json.loads(await reader.readexactly(length))
    return int(status_line.split()[1]), answer.get("rewards") if isinstance(answer, dict) else None


def right(rewards, expected: float) -> bool:
    return (
        isinstance(rewards, list)
        and len(rewards) == 1
        and isinstance(rewards[0], int | float)
        and abs(rewards[0] - expected) <= TOLERANCE
    )


def load(port: int, bodies: list[tuple[bytes, float]], requests: int) -> dict:
    """CLIENTS concurrent clients x `requests` each; every request timed, its status counted
    (a 200 whose reward is not the expected one as WRONG).

    The clients are asyncio tasks in one thread (like wrk or locust's fast clients), so the
    load generator takes little of the CPU the server runs on.
    """
    latencies: list[float] = []
    statuses: Counter = Counter()

    async def client(i: int, stop_at: float) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for k in range(requests):
            if time.monotonic() > stop_at:
                break  # unsent requests count as lost
            start = time.perf_counter()
            body, expected = bodies[(i * requests + k) % len(bodies)]
            try:
                status, rewards = await asyncio.wait_for(
                    post(reader, writer, port, body), REQUEST_TIMEOUT
                )
                if status == 200 and not right(rewards, expected):
                    status = WRONG
            except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError) as e:
                status = type(e).__name__
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            latencies.append(time.perf_counter() - start)
            statuses[status] += 1
        writer.close()

    async def main() -> float:
        stop_at = time.monotonic() + PHASE_CAP
        start = time.perf_counter()
        await asyncio.gather(*(client(i, stop_at) for i in range(CLIENTS)))
        return time.perf_counter() - start

    wall = asyncio.run(main())
    return {"wall": wall, "latencies": latencies, "statuses": statuses, "sent": CLIENTS * requests}


def phase(proc: subprocess.Popen, port: int, bodies: list[tuple[bytes, float]]) -> dict:
    before, cpu_before = request(port, "GET", "/health")[1], cpu_seconds(proc.pid)
    result = load(port, bodies, REQUESTS)
    after, cpu_after = request(port, "GET", "/health")[1], cpu_seconds(proc.pid)
    answered = result["statuses"][200]
    result.update(
        rps=answered / result["wall"],
        batches=after["batches"] - before["batches"],
        scored=after["requests"] - before["requests"],
        busy=(after["scoring_seconds"] - before["scoring_seconds"]) / result["wall"],
        cpu_ms=1000 * (cpu_after - cpu_before) / max(answered, 1),
    )
    return result


def summary(name: str, phases: list[dict]) -> tuple[str, int]:
    """The table line of one server, and how many requests were lost (wrong rewards included)."""
    latencies = sorted(x for p in phases for x in p["latencies"])
    statuses = sum((p["statuses"] for p in phases), Counter())
    sent = sum(p["sent"] for p in phases)
    lost = sent - statuses[200]
    rps = statistics.median(p["rps"] for p in phases)
    p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
    batches, scored = sum(p["batches"] for p in phases), sum(p["scored"] for p in phases)
    cpu = statistics.median(p["cpu_ms"] for p in phases)
    busy = statistics.median(p["busy"] for p in phases)
    line = (
        f"{name:<15}{rps:>8.1f}{1000 * statistics.median(latencies):>9.1f}{1000 * p99:>9.1f}"
        f"{cpu:>11.2f}{batches:>9}{scored / max(batches, 1):>7.1f}{100 * busy:>6.0f}%  "
        f"{statuses[200]}/{sent} answered 200 right, lost {lost}, statuses {dict(statuses)}"
    )
    return line, lost


def measure(root: Path, size: tuple[int, int, int], rounds: int) -> dict[str, list[dict]]:
    """Both servers on a fresh PRM of `size` (hidden, layers, heads): per server, its phases."""
    results: dict[str, list[dict]] = {name: [] for name in SERVERS}
    prm_dir = make_prm(root, *size)
    bodies = request_bodies(prm_dir)
    servers = {}
    try:
        for name, flags in SERVERS.items():
            servers[name] = start_server(prm_dir, root / f"{len(servers)}.log", flags)
            load(servers[name][1], bodies, 10)  # warm-up: first batches of each shape allocate
        for r in range(rounds):  # the order flips every round: drift in load cancels
            for name in list(servers)[:: 1 if r % 2 == 0 else -1]:
                results[name].append(phase(*servers[name], bodies))
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return results


def show(
    size: tuple[int, int, int], rounds: int, results: dict[str, list[dict]]
) -> tuple[float, int]:
    """Print one PRM size's table; (median round ratio, requests lost)."""
    print(
        f"{rounds} rounds x {CLIENTS} clients x {REQUESTS} /get_reward requests (1 solution of "
        f"{STEPS} steps each) per server, 127.0.0.1, PRM hidden {size[0]} x {size[1]} layers, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, {os.cpu_count()} CPUs"
    )
    print(
        f"{'server':<15}{'req/s':>8}{'p50 ms':>9}{'p99 ms':>9}{'cpu ms/req':>11}{'batches':>9}{'mean':>7}"
    )
    lost = 0
    for name, phases in results.items():
        line, server_lost = summary(name, phases)
        lost += server_lost
        print(line)
    ratios = [b["rps"] / s["rps"] for b, s in zip(*results.values(), strict=True)]
    print(f"ratios by round: {', '.join(f'{r:.2f}' for r in ratios)}")
    cpu = [statistics.median(p["cpu_ms"] for p in phases) for phases in results.values()]
    print(
        f"server CPU per answered request: {cpu[0]:.2f} ms vs {cpu[1]:.2f} ms, i.e. "
        f"{cpu[1] / cpu[0]:.2f}x the requests per CPU-second (load-independent)"
    )
    return statistics.median(ratios), lost


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="Rounds on the gated small PRM.")
    parser.add_argument(
        "--default-rounds",
        type=int,
        default=3,
        help="Rounds on the sft-default-size PRM (reported, not gated; 0 skips it).",
    )
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sizes = {(HIDDEN, LAYERS, 2): args.rounds}  # the gated size first
    if args.default_rounds > 0 and DEFAULT_SIZE[:2] != (HIDDEN, LAYERS):
        sizes[DEFAULT_SIZE] = args.default_rounds
    measured: dict[tuple[int, int, int], tuple[float, int]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for size, rounds in sizes.items():
            root = Path(tmp) / f"{size[0]}x{size[1]}"
            results = measure(root, size, rounds)
            measured[size] = show(size, rounds, results)
    gated = (HIDDEN, LAYERS, 2)
    ratio, lost = measured[gated]
    lost_all = sum(lost for _, lost in measured.values())
    ok = ratio >= NEEDED_RATIO and lost_all == 0
    others = [
        f"{size[0]} x {size[1]}: {r:.2f}x" for size, (r, _) in measured.items() if size != gated
    ]
    print(
        f"{'PASS' if ok else 'FAIL'}: needs median ratio >= {NEEDED_RATIO} and 0 lost "
        f"(lost {lost_all}, wrong rewards included)"
    )
    print(
        f"ratio {ratio:.2f}x (micro-batched vs one-at-a-time requests/s, {CLIENTS} clients, "
        f"PRM {HIDDEN} x {LAYERS}){'; ' + ', '.join(others) + ' (not gated)' if others else ''}"
    )
    detail = ", ".join([f"lost {lost_all}", *(f"PRM {o}" for o in others)])
    return report(
        f"`serve_load`: micro-batched / one-at-a-time req/s, {CLIENTS} clients",
        ratio,
        f">= {NEEDED_RATIO:g} and 0 lost or wrong",
        ok,
        detail,
    )


if __name__ == "__main__":
    sys.exit(main())
