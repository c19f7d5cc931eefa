"""`tdrm serve`'s options (kept apart from the server, so `tdrm --help` loads no server)."""

from __future__ import annotations

from dataclasses import dataclass

from tdrm_cli.config import (
    ALLOW_PICKLE_HELP,
    TRUST_REMOTE_CODE_HELP,
    _check,
    check_numbers,
    listed,
    opt,
)
from tdrm_cli.prm_formats import ONE_FORMAT_HELP, OPTION_HELP, check_choices  # no torch
from tdrm_cli.voting import AGGREGATIONS

REWARDS = ("prm", "prm+rlvr")


@dataclass
class ServeConfig:
    """`tdrm serve`: options of the reward server (no run folder: it writes nothing)."""

    prm: str | None = opt(
        None,
        "PRM: a train-prm run folder, a tdrm PRM folder or a public PRM's folder.",
        required=True,
    )
    prm_format: str = opt("auto", ONE_FORMAT_HELP)
    prm_option: list[str] = opt([], OPTION_HELP)
    task: str | None = opt(
        None, "Task whose answer check --reward prm+rlvr uses (default: the PRM's task)."
    )
    reward: str = opt(
        "prm",
        "/get_reward value: prm (aggregated PRM score) or prm+rlvr (w*PRM + (1-w)*verifier).",
    )
    prm_weight: float = opt(0.2, "w of --reward prm+rlvr.")
    agg: str | None = opt(
        None, f"Step-score aggregation: {', '.join(AGGREGATIONS)} (default: the PRM's)."
    )
    host: str = opt("127.0.0.1", "Address to listen on (loopback by default).")
    port: int = opt(5000, "Port to listen on.")
    api_key: str | None = opt(
        None,
        "Require 'Authorization: Bearer KEY' on every request (or set TDRM_SERVE_API_KEY).",
        envvar="TDRM_SERVE_API_KEY",
    )
    max_batch: int = opt(32, "Solutions scored together in one micro-batch.")
    max_wait_ms: float = opt(
        0.0,
        "How long an idle model waits for more requests before scoring (0: a batch is what "
        "queued while it was busy).",
    )
    max_queue: int = opt(256, "Requests waiting beyond this answer 503.")
    max_request_bytes: int = opt(64 * 1024 * 1024, "Larger request bodies answer 413.")
    max_solutions: int = opt(1024, "Requests with more solutions answer 413.")
    max_tokens: int | None = opt(
        None,
        "Solutions (prompt + steps) with more tokens answer 413 (default: the PRM's context).",
    )
    read_timeout_s: float = opt(
        30.0,
        "A client must send its request headers, and then its body, within this many seconds.",
    )
    max_connections: int = opt(1024, "Beyond this many open connections, requests answer 503.")
    trust_remote_code: bool = opt(False, TRUST_REMOTE_CODE_HELP)
    allow_pickle: bool = opt(False, ALLOW_PICKLE_HELP)

    def __post_init__(self) -> None:
        check_numbers(self)
        check_choices([str(self.prm)], [self.prm_format], self.prm_option)
        _check(self.reward in REWARDS, f"--reward {self.reward}: expected {listed(REWARDS)}")
        _check(0.0 <= self.prm_weight <= 1.0, f"--prm-weight {self.prm_weight}: must be in [0, 1]")
        _check(
            self.agg is None or self.agg in AGGREGATIONS,
            f"--agg {self.agg}: expected one of {', '.join(AGGREGATIONS)}",
        )
        _check(0 < self.port < 65536, f"--port {self.port}: must be in 1..65535")
        _check(self.max_batch >= 1, "--max-batch must be >= 1")
        _check(self.max_wait_ms >= 0, "--max-wait-ms must be >= 0")
        _check(self.max_queue >= 1, "--max-queue must be >= 1")
        _check(self.max_request_bytes >= 1024, "--max-request-bytes must be >= 1024")
        _check(self.max_solutions >= 1, "--max-solutions must be >= 1")
        _check(self.max_tokens is None or self.max_tokens >= 1, "--max-tokens must be >= 1")
        _check(self.read_timeout_s > 0, "--read-timeout-s must be > 0")
        _check(self.max_connections >= 1, "--max-connections must be >= 1")
        key = "--api-key (or TDRM_SERVE_API_KEY)"
        _check(self.api_key is None or self.api_key.strip() != "", f"{key} must not be empty")
        _check(
            self.api_key is None or self.api_key == self.api_key.strip(),
            f"{key} must not start or end with whitespace (it could never match)",
        )
