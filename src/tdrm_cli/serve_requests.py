"""What the reward server's endpoints compute: request bodies in, rewards and values out.

Bad input never reaches the model: wrong shapes or types are a 422, a lone UTF-16
surrogate too, always `{"detail": "<one line>"}`. Work per request is bounded: more than
`max_solutions` solutions, or a solution over `max_tokens` tokens (default: the PRM's
context), is a 413 naming the limit, refused before any forward pass (a text that cannot
fit is refused before it is even tokenized).
"""

from __future__ import annotations

import asyncio
import functools
from typing import TYPE_CHECKING, Any

from tdrm_cli import __version__
from tdrm_cli.errors import UsageError, check_text
from tdrm_cli.process_advantage import step_spans
from tdrm_cli.serve_batcher import MicroBatcher
from tdrm_cli.serve_http import http_error
from tdrm_cli.steps import build_prompt, split_steps
from tdrm_cli.voting import AGGREGATIONS, aggregate

if TYPE_CHECKING:
    from tdrm_cli.serve import ServeConfig

QUESTION_SENTINEL = "\ue000tdrm-question\ue000"
"""Rendered into the PRM's prompt template to find where a question sits in a prompt."""


# ---------------------------------------------------------------- OpenRLHF queries -> (question, steps)


class QueryParser:
    """Recovers the question and the response steps from OpenRLHF's query/prompt texts.

    OpenRLHF sends `query` = decoded prompt + response tokens and `prompts` = the prompt
    text its dataset built. The response is what follows the prompt in the query (special
    end tokens trimmed). The PRM wants the bare question, so the prompt is matched against
    the PRM's own prompt template (rendered once around a sentinel); a prompt that does not
    match is used as the question as it is.
    """

    def __init__(self, prm: Any):
        self.separator: str = prm.separator
        tokenizer = getattr(prm, "tokenizer", None)
        self.end_tokens = [
            t
            for t in {getattr(tokenizer, "eos_token", None), getattr(tokenizer, "pad_token", None)}
            if t
        ]
        self.prefix: str | None = None
        self.suffix: str | None = None
        try:
            rendered = build_prompt(tokenizer, QUESTION_SENTINEL, getattr(prm, "meta", {}))
        except Exception:  # noqa: BLE001 - an odd chat template: questions are used as sent
            rendered = ""
        if rendered.count(QUESTION_SENTINEL) == 1:
            self.prefix, self.suffix = rendered.split(QUESTION_SENTINEL)

    def question(self, prompt: str) -> str:
        prefix, suffix = self.prefix, self.suffix
        if (
            prefix is not None
            and len(prompt) >= len(prefix) + len(suffix)
            and prompt.startswith(prefix)
            and prompt.endswith(suffix)
        ):
            return prompt[len(prefix) : len(prompt) - len(suffix)]
        return prompt.strip()

    def split(self, query: str, prompt: str | None) -> tuple[str, list[str]] | None:
        """(question, steps) of one query, or None when the prompt cannot be located."""
        at = -1 if prompt is None else query.find(prompt)
        if at >= 0:
            return self.question(prompt), self.steps(query[at + len(prompt) :])
        # no prompt sent (older OpenRLHF clients), or decoding changed it: cut the query
        # where the PRM's own template puts the question
        if self.prefix is None:
            return None
        start = query.find(self.prefix) if self.prefix else 0
        end = query.find(self.suffix, start + len(self.prefix)) if self.suffix else -1
        if start < 0 or end < 0:
            return None
        return query[start + len(self.prefix) : end], self.steps(query[end + len(self.suffix) :])

    def steps(self, response: str) -> list[str]:
        trimmed = True
        while trimmed:
            trimmed = False
            response = response.rstrip()
            for token in self.end_tokens:
                if response.endswith(token):
                    response, trimmed = response[: -len(token)], True
        return split_steps(response, self.separator)


# ---------------------------------------------------------------- request bodies


def _text(value: str, where: str) -> str:
    """A string the tokenizer can take: a lone UTF-16 surrogate is a 422."""
    try:
        return check_text(value, f"'{where}'")
    except UsageError as e:
        raise http_error(422, str(e)) from None


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise http_error(422, f"body must be a JSON object, got {_kind(body)}")
    return body


def _kind(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number"
    )


def _strings(body: dict[str, Any], key: str, required: bool = True) -> list[str] | None:
    value = body.get(key)
    if value is None:
        if required:
            raise http_error(422, f"'{key}' is required: a list of strings")
        return None
    if not isinstance(value, list):
        raise http_error(422, f"'{key}' must be a list of strings, got {_kind(value)}")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise http_error(422, f"'{key}[{i}]' must be a string, got {_kind(item)}")
        _text(item, f"{key}[{i}]")
    return value


def _labels(body: dict[str, Any], n: int) -> list[str | None] | None:
    value = body.get("labels")
    if value is None:
        return None
    if not isinstance(value, list) or len(value) != n:
        raise http_error(422, f"'labels' must be a list with one entry per query ({n})")
    out = []
    for i, item in enumerate(value):
        if isinstance(item, bool) or not isinstance(item, (str, int, float, type(None))):
            raise http_error(
                422, f"'labels[{i}]' must be a string, a number or null, got {_kind(item)}"
            )
        out.append(None if item is None else _text(str(item), f"labels[{i}]"))
    return out


LABEL_FLAG = "OpenRLHF 0.11: --data.label_key; older: --label_key"
"""How a client fills `labels`: told whenever --reward prm+rlvr finds them missing."""


def check_gold(labels: list[str | None] | None) -> None:
    """A 422 unless every query has a gold answer: an empty label would score every
    verifier term 0 and train on wrong rewards without a word."""
    if labels is None or None in labels:
        raise http_error(
            422,
            "'labels' (gold answers, one per query) are required with --reward prm+rlvr: "
            f"set the client's label column ({LABEL_FLAG})",
        )
    for i, label in enumerate(labels):
        if not label.strip():
            raise http_error(
                422,
                f"'labels[{i}]' is {'only whitespace' if label else 'empty'}, but --reward "
                "prm+rlvr checks every answer against its label: set the client's label "
                f"column ({LABEL_FLAG})",
            )


def parse_score_request(body: Any) -> tuple[list[str], list[list[str]], str | None]:
    """(problems, step lists, agg override) of a `/score` body, or a 422."""
    body = _object(body)
    steps = body.get("steps")
    if not isinstance(steps, list):
        raise http_error(422, f"'steps' must be a list of step lists, got {_kind(steps)}")
    for i, solution in enumerate(steps):
        if not isinstance(solution, list):
            raise http_error(422, f"'steps[{i}]' must be a list of strings, got {_kind(solution)}")
        for j, step in enumerate(solution):
            if not isinstance(step, str):
                raise http_error(422, f"'steps[{i}][{j}]' must be a string, got {_kind(step)}")
            _text(step, f"steps[{i}][{j}]")
    problems = _problems(body, len(steps), "steps")
    agg = body.get("agg")
    if agg is not None and not isinstance(agg, str):
        raise http_error(422, f"'agg' must be a string, got {_kind(agg)}")
    return problems, steps, agg


def _problems(body: dict[str, Any], n: int, key: str) -> list[str]:
    """'problem' as one string for all `n` solutions, or a list of `n` strings."""
    problem = body.get("problem")
    if isinstance(problem, str):
        return [_text(problem, "problem")] * n
    if isinstance(problem, list):
        problems = _strings(body, "problem")
        if len(problems) != n:
            raise http_error(422, f"'problem' has {len(problems)} entries but '{key}' has {n}")
        return problems
    raise http_error(422, f"'problem' must be a string or a list of strings, got {_kind(problem)}")


def parse_step_rewards_request(body: Any) -> tuple[list[str], list[str]]:
    """(problems, responses) of a `/step_rewards` body, or a 422."""
    body = _object(body)
    responses = _strings(body, "responses")
    return _problems(body, len(responses), "responses"), responses


def parse_reward_request(body: Any) -> tuple[list[str], list[str] | None, list[str | None] | None]:
    """(queries, prompts, labels) of a `/get_reward` body, or a 422."""
    body = _object(body)
    queries = _strings(body, "query")
    prompts = _strings(body, "prompts", required=False)
    if prompts is not None and len(prompts) != len(queries):
        raise http_error(
            422, f"'prompts' has {len(prompts)} entries but 'query' has {len(queries)}"
        )
    return queries, prompts, _labels(body, len(queries))


# ---------------------------------------------------------------- the endpoints


class Endpoints:
    """The answers of /score, /step_rewards, /get_reward, /health and /info for one PRM, HTTP aside.

    `task` (a `tdrm_cli.tasks.Task`) is needed for `--reward prm+rlvr`: its checker gives
    the verifier term from the `labels` OpenRLHF sends. `batcher` is set by the app once
    its event loop runs.
    """

    def __init__(self, prm: Any, cfg: ServeConfig, task: Any = None, model: str | None = None):
        from tdrm_cli.rewards import VerifierReward

        if cfg.max_tokens is not None:
            prm.max_tokens = cfg.max_tokens
        if cfg.reward == "prm+rlvr" and task is None:
            raise UsageError("--reward prm+rlvr needs --task (the verifier's answer check)")
        self.prm, self.cfg, self.task, self.model = prm, cfg, task, model
        self.agg = cfg.agg or getattr(prm, "agg", "min")
        self.surely_too_long = getattr(prm, "surely_too_long", None)
        self.verifier = VerifierReward(task, prm.separator) if cfg.reward == "prm+rlvr" else None
        self.parser = QueryParser(prm)
        self.batcher: MicroBatcher | None = None

    async def step_values(
        self, problems: list[str], solutions: list[list[str]]
    ) -> list[list[float]]:
        """Step values of every solution, after the per-request limits."""
        cfg = self.cfg
        if len(solutions) > cfg.max_solutions:
            raise http_error(
                413,
                f"request holds {len(solutions)} solutions; the limit is {cfg.max_solutions} "
                "(--max-solutions)",
            )
        if self.surely_too_long is not None:
            for i, (question, steps) in enumerate(zip(problems, solutions, strict=True)):
                if self.surely_too_long(question, steps):
                    raise http_error(
                        413,
                        f"solution {i} is over the PRM's limit of {self.prm.max_tokens} tokens "
                        "(--max-tokens)",
                    )
        return await self.batcher.submit(problems, solutions)

    def health(self) -> dict[str, Any]:
        batcher = self.batcher
        cache = len(getattr(self.prm, "_prompts", ()))
        return {
            "status": "ok", "pending": batcher.queue.qsize(), **vars(batcher.stats),
            "prompt_cache": cache,
        }  # fmt: skip

    def info(self) -> dict[str, Any]:
        prm, cfg = self.prm, self.cfg
        meta = getattr(prm, "meta", {}) or {}
        return {
            "model": self.model,
            "aggregation": self.agg,
            "aggregations": list(AGGREGATIONS),
            "separator": prm.separator,
            "reward": cfg.reward,
            "prm_weight": cfg.prm_weight if cfg.reward == "prm+rlvr" else 1.0,
            "task": getattr(self.task, "name", None),
            "prompt_format": meta.get("prompt_format"),
            "trained_with": {k: meta.get(k) for k in ("loss", "td_lambda", "gamma", "n_step") if k in meta},
            "limits": {
                "max_batch": cfg.max_batch, "max_wait_ms": cfg.max_wait_ms,
                "max_queue": cfg.max_queue, "max_request_bytes": cfg.max_request_bytes,
                "max_solutions": cfg.max_solutions, "max_tokens": getattr(prm, "max_tokens", None),
                "read_timeout_s": cfg.read_timeout_s, "max_connections": cfg.max_connections,
            },
            "version": __version__,
        }  # fmt: skip

    async def score(self, body: Any) -> dict[str, Any]:
        problems, solutions, agg_override = parse_score_request(body)
        use = agg_override or self.agg
        if use not in AGGREGATIONS:
            raise http_error(422, f"'agg' {use!r}: expected one of {', '.join(AGGREGATIONS)}")
        values = await self.step_values(problems, solutions)
        scores = [aggregate(v, use) for v in values]
        return {"step_values": values, "scores": scores, "agg": use}

    async def step_rewards(self, body: Any) -> dict[str, Any]:
        """Step values of whole responses, with each step's [start, end) in its response (in
        characters, Python string indices): for token-level rewards (verl, OpenRLHF)."""
        problems, responses = parse_step_rewards_request(body)
        spans = [step_spans(response, self.prm.separator) for response in responses]
        solutions = [[r[a:b] for a, b in s] for r, s in zip(responses, spans, strict=True)]
        values = await self.step_values(problems, solutions)
        offsets = [[[a, b] for a, b in s] for s in spans]
        return {"step_values": values, "offsets": offsets, "separator": self.prm.separator}

    async def get_reward(self, body: Any) -> dict[str, Any]:
        queries, prompts, labels = parse_reward_request(body)
        verifier = self.verifier
        if verifier is not None:
            check_gold(labels)
        questions, solutions = self.split_queries(queries, prompts)
        if verifier is None:
            values = await self.step_values(questions, solutions)
        else:  # the answer check runs beside the PRM (math-verify may take a while)
            completions = [verifier.separator.join(s) for s in solutions]
            check = functools.partial(
                verifier,
                prompts=questions,
                completions=completions,
                question=questions,
                gold=labels,
            )
            loop = asyncio.get_running_loop()
            values, verdicts = await asyncio.gather(
                self.step_values(questions, solutions), loop.run_in_executor(None, check)
            )
        prm_scores = [aggregate(v, self.agg) for v in values]
        extra = {"prm_score": prm_scores, "num_steps": [float(len(s)) for s in solutions]}
        if verifier is None:
            return {"rewards": prm_scores, "scores": prm_scores, "extra_logs": extra}
        w = self.cfg.prm_weight
        rewards = [w * p + (1.0 - w) * v for p, v in zip(prm_scores, verdicts, strict=True)]
        extra["verifier"] = verdicts
        return {"rewards": rewards, "scores": verdicts, "extra_logs": extra}

    def split_queries(
        self, queries: list[str], prompts: list[str] | None
    ) -> tuple[list[str], list[list[str]]]:
        """(questions, step lists) of OpenRLHF's queries, or a 422 naming the first that fails."""
        questions, solutions = [], []
        for i, query in enumerate(queries):
            split = self.parser.split(query, None if prompts is None else prompts[i])
            if split is None:
                raise http_error(
                    422,
                    f"query[{i}]: cannot find where the response starts (no prompts[{i}] in it, "
                    "and it does not follow the PRM's prompt template)",
                )
            questions.append(split[0])
            solutions.append(split[1])
        return questions, solutions
