"""verl custom reward hook: score responses with a running `tdrm serve`.

verl calls `compute_score(data_source, solution_str, ground_truth, extra_info)` once per
response; in verl 0.9 every reward manager of its reward loop does (`naive`, the default of
`reward.reward_manager.name`, and `dapo`, `gdpo`, `rate_limited`, `remote`). It posts to the
server's OpenRLHF-style `/get_reward`, so verl, OpenRLHF and `tdrm rl` get the same reward
for the same text: the aggregated PRM score, or `w*PRM + (1-w)*verifier` when the server
runs `--reward prm+rlvr` (the gold answer is `ground_truth`).

The answer is a dict: `score` is the reward, and the server's per-sample breakdown rides
beside it (`prm_score`, `num_steps`, and `verifier` under `prm+rlvr`). verl's managers take
`result["score"]` as the reward and put every key in `reward_extra_info`, which reaches its
logs; a bare float would be logged as `acc` only.

`compute_score_batch` (one HTTP request for a whole batch) is for older verl's
`reward_model.reward_manager=batch`; verl 0.9's reward loop has no batch manager and never
calls it.

verl passes the response only; the PRM also needs the question, which verl's data
preprocessing keeps in `extra_info` ("question", else "problem" or "prompt").

Environment:
    TDRM_SERVE_URL       server base URL (default http://127.0.0.1:5000)
    TDRM_SERVE_API_KEY   bearer token, when the server runs with --api-key
    TDRM_SERVE_TIMEOUT   seconds per request (default 300)
    TDRM_SERVE_RETRIES   tries on 503 / connection errors, 1 s apart and growing (default 5)

Only the standard library is used, so verl's reward workers need nothing installed
besides `tdrm-cli` itself.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

URL_ENV = "TDRM_SERVE_URL"
API_KEY_ENV = "TDRM_SERVE_API_KEY"
TIMEOUT_ENV = "TDRM_SERVE_TIMEOUT"
RETRIES_ENV = "TDRM_SERVE_RETRIES"
DEFAULT_URL = "http://127.0.0.1:5000"
QUESTION_KEYS = ("question", "problem", "prompt")


class RewardServerError(RuntimeError):
    """The reward server refused a request or could not be reached."""


def compute_score(
    data_source: str, solution_str: str, ground_truth: Any, extra_info: dict | None = None
) -> dict[str, float]:
    """The server's reward for one response and its breakdown (verl's per-sample hook)."""
    return compute_score_batch([data_source], [solution_str], [ground_truth], [extra_info])[0]


def compute_score_batch(
    data_sources: Sequence[str],
    solution_strs: Sequence[str],
    ground_truths: Sequence[Any],
    extra_infos: Sequence[dict | None] | None = None,
    **_: Any,
) -> list[dict[str, float]]:
    """`compute_score` for a batch, in one request (older verl's `batch` reward manager)."""
    extra_infos = list(extra_infos) if extra_infos is not None else [None] * len(solution_strs)
    questions = [question_of(info) for info in extra_infos]
    labels = [None if g is None else str(g) for g in ground_truths]
    # prompt = the bare question: the server uses a prompt that does not match the PRM's
    # template as the question, and everything after it in the query as the response
    body = {
        "query": [q + s for q, s in zip(questions, solution_strs, strict=True)],
        "prompts": questions,
        "labels": labels,
    }
    answer = post("/get_reward", body)
    extra = answer.get("extra_logs") or {}
    return [
        {"score": float(reward), **{key: float(values[i]) for key, values in extra.items()}}
        for i, reward in enumerate(answer["rewards"])
    ]


def question_of(extra_info: dict | None) -> str:
    for key in QUESTION_KEYS:
        value = (extra_info or {}).get(key)
        if isinstance(value, str) and value:
            return value
    raise ValueError(
        f"tdrm PRM reward: extra_info has no question (looked for {', '.join(QUESTION_KEYS)}); "
        "add it in the data preprocessing"
    )


def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST JSON to the server; retries 503 and connection errors, raises on anything else."""
    url = os.environ.get(URL_ENV, DEFAULT_URL).rstrip("/") + path
    headers = {"Content-Type": "application/json"}
    if os.environ.get(API_KEY_ENV):
        headers["Authorization"] = f"Bearer {os.environ[API_KEY_ENV]}"
    timeout = float(os.environ.get(TIMEOUT_ENV, 300))
    tries = max(1, int(os.environ.get(RETRIES_ENV, 5)))
    data = json.dumps(body).encode()
    last = ""
    for attempt in range(tries):
        request = urllib.request.Request(url, data=data, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as e:
            detail = _detail(e)
            if e.code != 503:
                raise RewardServerError(f"{url}: HTTP {e.code}: {detail}") from None
            last = f"HTTP 503: {detail}"
        except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
            last = str(getattr(e, "reason", e))
        if attempt + 1 < tries:
            time.sleep(min(1.0 * (attempt + 1), 10.0))
    raise RewardServerError(f"{url}: no answer after {tries} tries ({last})")


def _detail(error: urllib.error.HTTPError) -> str:
    try:
        return str(json.loads(error.read()).get("detail", ""))
    except (ValueError, AttributeError, OSError):
        return error.reason or ""
