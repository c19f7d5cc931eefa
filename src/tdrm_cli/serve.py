"""`tdrm serve`: a PRM behind HTTP for OpenRLHF, verl and search clients.

    POST /get_reward   OpenRLHF's remote reward protocol: {"query", "prompts", "labels"}
                       -> {"rewards", "scores", "extra_logs"}, one entry per query
    POST /score        {"problem": str | [str], "steps": [[str]]} -> step values + scores
    GET  /health       liveness, queue depth, counters
    GET  /info         model, aggregation, separator, reward mix, limits, version

Requests from concurrent clients are micro-batched: one worker task takes the first
queued request plus everything queued behind it (up to `max_batch` solutions, waiting up
to `max_wait_ms` for more when the queue runs dry), and scores them all with one
`PRM.score` call in a dedicated thread (the event loop keeps accepting meanwhile); each
request's future gets its own slice. The default wait is 0: a batch is what queued while
the model was busy. Measured with bench/serve_load.py (16 closed-loop clients, CPU):
waiting 5 ms put all 16 clients into one batch and left the model idle a third of the
time while the answers went out and the next requests came in (326 requests/s); with no
wait the clients split into two waves whose HTTP work overlaps the other wave's forward
pass (model busy 98%, 490 requests/s). A wait can help open-loop traffic when a forward
costs the same for 1 or 16 sequences (GPU). The queue is bounded: when it is full a request is answered 503 at
once instead of piling up in memory.

Bad input never reaches the model: bodies over `max_request_bytes` get 413, malformed
JSON 400, wrong shapes or types 422, always `{"detail": "<one line>"}`. Work per request is
bounded too: more than `max_solutions` solutions, or a solution over `max_tokens` tokens
(default: the PRM's context), is a 413 naming the limit, refused before any forward pass
(a text that cannot fit is refused before it is even tokenized). A client that does not
finish its request headers or body within `read_timeout_s` is cut off (408 once the
headers are in), and beyond `max_connections` open connections new requests get 503, so
slow or stuck clients cannot pin the server's sockets.
"""

# No `from __future__ import annotations` here: FastAPI reads the handlers' annotations
# (`request: Request`, imported inside create_app) at run time.
import asyncio
import contextlib
import functools
import hmac
import json
import math
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from tdrm_cli import __version__
from tdrm_cli.errors import UsageError, check_text, error_line
from tdrm_cli.steps import build_prompt, split_steps

REWARDS = ("prm", "prm+rlvr")
QUESTION_SENTINEL = "\ue000tdrm-question\ue000"
"""Rendered into the PRM's prompt template to find where a question sits in a prompt."""


@dataclass
class ServeConfig:
    """`tdrm serve`: options of the reward server (no run folder: it writes nothing)."""

    prm: str | None = None
    task: str | None = None
    reward: str = "prm"
    prm_weight: float = 0.2
    agg: str | None = None
    host: str = "127.0.0.1"
    port: int = 5000
    api_key: str | None = None
    max_batch: int = 32
    max_wait_ms: float = 0.0
    max_queue: int = 256
    max_request_bytes: int = 64 * 1024 * 1024
    max_solutions: int = 1024
    max_tokens: int | None = None
    read_timeout_s: float = 30.0
    max_connections: int = 1024
    trust_remote_code: bool = False
    allow_pickle: bool = False

    def __post_init__(self) -> None:
        from tdrm_cli.prm import AGGREGATIONS

        def check(cond: bool, message: str) -> None:
            if not cond:
                raise UsageError(message)

        for name in ("prm_weight", "max_wait_ms", "read_timeout_s"):
            value = getattr(self, name)
            check(
                math.isfinite(value), f"--{name.replace('_', '-')} {value}: must be a finite number"
            )
        check(self.reward in REWARDS, f"--reward {self.reward}: expected {' or '.join(REWARDS)}")
        check(0.0 <= self.prm_weight <= 1.0, f"--prm-weight {self.prm_weight}: must be in [0, 1]")
        check(
            self.agg is None or self.agg in AGGREGATIONS,
            f"--agg {self.agg}: expected one of {', '.join(AGGREGATIONS)}",
        )
        check(0 < self.port < 65536, f"--port {self.port}: must be in 1..65535")
        check(self.max_batch >= 1, "--max-batch must be >= 1")
        check(self.max_wait_ms >= 0, "--max-wait-ms must be >= 0")
        check(self.max_queue >= 1, "--max-queue must be >= 1")
        check(self.max_request_bytes >= 1024, "--max-request-bytes must be >= 1024")
        check(self.max_solutions >= 1, "--max-solutions must be >= 1")
        check(self.max_tokens is None or self.max_tokens >= 1, "--max-tokens must be >= 1")
        check(self.read_timeout_s > 0, "--read-timeout-s must be > 0")
        check(self.max_connections >= 1, "--max-connections must be >= 1")
        key = "--api-key (or TDRM_SERVE_API_KEY)"
        check(self.api_key is None or self.api_key.strip() != "", f"{key} must not be empty")
        check(
            self.api_key is None or self.api_key == self.api_key.strip(),
            f"{key} must not start or end with whitespace (it could never match)",
        )


# ---------------------------------------------------------------- the micro-batcher


class Overloaded(Exception):
    """The request queue is full."""


@dataclass
class Job:
    """One request's solutions, waiting for their step values."""

    problems: list[str]
    solutions: list[list[str]]
    future: asyncio.Future


@dataclass
class BatchStats:
    requests: int = 0
    solutions: int = 0
    batches: int = 0
    rejected: int = 0
    failed: int = 0
    scoring_seconds: float = 0.0
    """Wall time the model thread spent scoring (its busy time)."""


class MicroBatcher:
    """Collects concurrent requests into single-pass scoring calls on one model thread.

    `score(problems, solutions) -> step values` runs only on this batcher's thread, so the
    model and its tokenizer are never used from two threads at once.
    """

    def __init__(self, score: Callable, max_batch: int, max_wait_ms: float, max_queue: int):
        self.score = score
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.queue: asyncio.Queue[Job] = asyncio.Queue(maxsize=max_queue)
        self.stats = BatchStats()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tdrm-prm")
        self._worker: asyncio.Task | None = None

    def start(self) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        while not self.queue.empty():
            job = self.queue.get_nowait()
            if not job.future.done():
                job.future.set_exception(Overloaded("server shutting down"))
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def submit(self, problems: list[str], solutions: list[list[str]]) -> list[list[float]]:
        if not solutions:
            return []
        job = Job(problems, solutions, asyncio.get_running_loop().create_future())
        try:
            self.queue.put_nowait(job)
        except asyncio.QueueFull:
            self.stats.rejected += 1
            raise Overloaded(
                f"server overloaded: queue full ({self.queue.qsize()} pending), retry later"
            ) from None
        return await job.future

    async def _run(self) -> None:
        while True:
            batch = [await self.queue.get()]
            try:
                await self._collect_and_score(batch)
            except Exception as e:  # noqa: BLE001 - a bug here must not stop the worker
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(e)

    async def _collect_and_score(self, batch: list[Job]) -> None:
        """Add queued jobs to `batch` up to max_batch solutions or max_wait, score, answer.

        `batch` is extended in place, so `_run` can fail every collected job if this raises.
        """
        loop = asyncio.get_running_loop()
        size = len(batch[0].solutions)
        deadline = loop.time() + self.max_wait
        while size < self.max_batch:
            if self.queue.empty():
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    job = await asyncio.wait_for(self.queue.get(), left)
                except TimeoutError:
                    break
            else:
                job = self.queue.get_nowait()
            batch.append(job)
            size += len(job.solutions)
        live = [job for job in batch if not job.future.done()]  # clients that gave up are skipped
        if not live:
            return
        start = time.perf_counter()
        results = await loop.run_in_executor(self._executor, self._score_jobs, live)
        self.stats.scoring_seconds += time.perf_counter() - start
        self.stats.batches += 1
        for job, (values, error) in zip(live, results, strict=True):
            self.stats.requests += 1
            self.stats.solutions += len(job.solutions)
            if job.future.done():
                continue
            if error is None:
                job.future.set_result(values)
            else:
                self.stats.failed += 1
                job.future.set_exception(error)

    def _score_jobs(
        self, jobs: list[Job]
    ) -> list[tuple[list[list[float]] | None, Exception | None]]:
        """Step values per job from one scoring call; on failure, each job alone (so one bad
        request cannot fail the requests it happened to share a batch with)."""
        problems = [p for job in jobs for p in job.problems]
        solutions = [s for job in jobs for s in job.solutions]
        try:
            values = self.score(problems, solutions)
        except Exception as e:  # noqa: BLE001 - reported to the client, the server lives on
            if len(jobs) == 1:
                return [(None, e)]
            return [self._score_jobs([job])[0] for job in jobs]
        out, start = [], 0
        for job in jobs:
            out.append((values[start : start + len(job.solutions)], None))
            start += len(job.solutions)
        return out


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


# ---------------------------------------------------------------- request checking


def _fail(status: int, detail: str):
    from fastapi import HTTPException

    return HTTPException(status_code=status, detail=detail)


async def read_json(request: Any, limit: int, timeout_s: float = 30.0) -> Any:
    """The request body as JSON: 413 over `limit` bytes, 408 when it takes longer than
    `timeout_s` to arrive, 400 when it is not JSON (or nests too deep, or holds an integer
    past Python's digit limit)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit() or len(declared) > 20:
            raise _fail(400, f"bad Content-Length header: {declared[:40]!r}")
        if int(declared) > limit:
            raise _fail(
                413, f"request body is {declared} bytes; the limit is {limit} (--max-request-bytes)"
            )

    async def receive() -> bytearray:
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise _fail(413, f"request body exceeds {limit} bytes (--max-request-bytes)")
        return body

    try:
        body = await asyncio.wait_for(receive(), timeout_s)
    except TimeoutError:
        from fastapi import HTTPException

        raise HTTPException(  # the connection is closed: its body is still unread
            408,
            f"request body not received within {timeout_s:g}s (--read-timeout-s)",
            headers={"Connection": "close"},
        ) from None
    try:
        return json.loads(body)
    except UnicodeDecodeError:
        raise _fail(400, "malformed JSON: body is not UTF-8") from None
    except json.JSONDecodeError as e:
        raise _fail(400, f"malformed JSON: {e.msg} (line {e.lineno}, column {e.colno})") from None
    except RecursionError:
        raise _fail(400, "malformed JSON: nested too deep") from None
    except ValueError as e:  # e.g. an integer of more than 4300 digits
        raise _fail(400, f"malformed JSON: {str(e)[:200]}") from None


def _text(value: str, where: str) -> str:
    """A string the tokenizer can take: a lone UTF-16 surrogate is a 422."""
    try:
        return check_text(value, f"'{where}'")
    except UsageError as e:
        raise _fail(422, str(e)) from None


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise _fail(422, f"body must be a JSON object, got {_kind(body)}")
    return body


def _kind(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number"
    )


def _strings(body: dict[str, Any], key: str, required: bool = True) -> list[str] | None:
    value = body.get(key)
    if value is None:
        if required:
            raise _fail(422, f"'{key}' is required: a list of strings")
        return None
    if not isinstance(value, list):
        raise _fail(422, f"'{key}' must be a list of strings, got {_kind(value)}")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise _fail(422, f"'{key}[{i}]' must be a string, got {_kind(item)}")
        _text(item, f"{key}[{i}]")
    return value


def _labels(body: dict[str, Any], n: int) -> list[str | None] | None:
    value = body.get("labels")
    if value is None:
        return None
    if not isinstance(value, list) or len(value) != n:
        raise _fail(422, f"'labels' must be a list with one entry per query ({n})")
    out = []
    for i, item in enumerate(value):
        if isinstance(item, bool) or not isinstance(item, (str, int, float, type(None))):
            raise _fail(422, f"'labels[{i}]' must be a string, a number or null, got {_kind(item)}")
        out.append(None if item is None else _text(str(item), f"labels[{i}]"))
    return out


def parse_score_request(body: Any) -> tuple[list[str], list[list[str]], str | None]:
    """(problems, step lists, agg override) of a `/score` body, or a 422."""
    body = _object(body)
    steps = body.get("steps")
    if not isinstance(steps, list):
        raise _fail(422, f"'steps' must be a list of step lists, got {_kind(steps)}")
    for i, solution in enumerate(steps):
        if not isinstance(solution, list):
            raise _fail(422, f"'steps[{i}]' must be a list of strings, got {_kind(solution)}")
        for j, step in enumerate(solution):
            if not isinstance(step, str):
                raise _fail(422, f"'steps[{i}][{j}]' must be a string, got {_kind(step)}")
            _text(step, f"steps[{i}][{j}]")
    problem = body.get("problem")
    if isinstance(problem, str):
        problems = [_text(problem, "problem")] * len(steps)
    elif isinstance(problem, list):
        problems = _strings(body, "problem")
        if len(problems) != len(steps):
            raise _fail(422, f"'problem' has {len(problems)} entries but 'steps' has {len(steps)}")
    else:
        raise _fail(422, f"'problem' must be a string or a list of strings, got {_kind(problem)}")
    agg = body.get("agg")
    if agg is not None and not isinstance(agg, str):
        raise _fail(422, f"'agg' must be a string, got {_kind(agg)}")
    return problems, steps, agg


# ---------------------------------------------------------------- the app


def create_app(
    prm: Any, cfg: ServeConfig | None = None, task: Any = None, model: str | None = None
):
    """The FastAPI app serving `prm` (anything with `score`, `separator`, `agg`).

    `task` (a `tdrm_cli.tasks.Task`) is needed for `--reward prm+rlvr`: its checker gives
    the verifier term from the `labels` OpenRLHF sends.
    """
    from fastapi import Depends, FastAPI, Request, Response
    from fastapi.responses import JSONResponse

    from tdrm_cli.prm import AGGREGATIONS, NonFinite, TooLong, aggregate
    from tdrm_cli.rewards import VerifierReward

    cfg = cfg or ServeConfig()
    if cfg.max_tokens is not None:
        prm.max_tokens = cfg.max_tokens
    surely_too_long = getattr(prm, "surely_too_long", None)
    agg = cfg.agg or getattr(prm, "agg", "min")
    if cfg.reward == "prm+rlvr" and task is None:
        raise UsageError("--reward prm+rlvr needs --task (the verifier's answer check)")
    verifier = VerifierReward(task, prm.separator) if cfg.reward == "prm+rlvr" else None
    parser = QueryParser(prm)
    batcher_box: dict[str, MicroBatcher] = {}
    api_key = cfg.api_key.encode() if cfg.api_key else None

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher = MicroBatcher(prm.score, cfg.max_batch, cfg.max_wait_ms, cfg.max_queue)
        batcher.start()
        batcher_box["batcher"] = batcher
        yield
        await batcher.stop()

    async def check_key(request: Request) -> None:
        if api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key):
            from fastapi import HTTPException

            raise HTTPException(
                401,
                "missing or wrong API key (send 'Authorization: Bearer <key>')",
                headers={"WWW-Authenticate": "Bearer"},
            )

    app = FastAPI(
        title="tdrm PRM server", version=__version__, lifespan=lifespan,
        dependencies=[Depends(check_key)] if api_key else [],
        docs_url=None, redoc_url=None, openapi_url=None,
    )  # fmt: skip

    @app.exception_handler(Overloaded)
    async def overloaded(request: Request, exc: Overloaded):
        return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": "1"})

    @app.exception_handler(TooLong)
    async def too_long(request: Request, exc: TooLong):
        return JSONResponse({"detail": f"{exc} (--max-tokens)"}, status_code=413)

    @app.exception_handler(NonFinite)
    async def non_finite(request: Request, exc: NonFinite):
        return JSONResponse({"detail": f"internal error: {exc}"}, status_code=500)

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception):
        return JSONResponse({"detail": f"internal error: {error_line(exc)}"}, status_code=500)

    def answer(content: dict[str, Any]) -> Response:
        # json.dumps straight to bytes: FastAPI's response-model encoding of these plain
        # dicts costs more than the rest of a small request
        # (never NaN: the PRM refuses to give one, and allow_nan=False makes sure)
        return Response(
            json.dumps(content, allow_nan=False).encode(), media_type="application/json"
        )

    async def step_values(problems: list[str], solutions: list[list[str]]) -> list[list[float]]:
        if len(solutions) > cfg.max_solutions:
            raise _fail(
                413,
                f"request holds {len(solutions)} solutions; the limit is {cfg.max_solutions} "
                "(--max-solutions)",
            )
        if surely_too_long is not None:
            for i, (question, steps) in enumerate(zip(problems, solutions, strict=True)):
                if surely_too_long(question, steps):
                    raise _fail(
                        413,
                        f"solution {i} is over the PRM's limit of {prm.max_tokens} tokens "
                        "(--max-tokens)",
                    )
        return await batcher_box["batcher"].submit(problems, solutions)

    @app.get("/health")
    async def health() -> Response:
        batcher = batcher_box["batcher"]
        cache = len(getattr(prm, "_prompts", ()))
        return answer({
            "status": "ok", "pending": batcher.queue.qsize(), **vars(batcher.stats),
            "prompt_cache": cache,
        })  # fmt: skip

    @app.get("/info")
    async def info() -> Response:
        meta = getattr(prm, "meta", {}) or {}
        return answer({
            "model": model,
            "aggregation": agg,
            "aggregations": list(AGGREGATIONS),
            "separator": prm.separator,
            "reward": cfg.reward,
            "prm_weight": cfg.prm_weight if cfg.reward == "prm+rlvr" else 1.0,
            "task": getattr(task, "name", None),
            "prompt_format": meta.get("prompt_format"),
            "trained_with": {k: meta.get(k) for k in ("loss", "td_lambda", "gamma", "n_step") if k in meta},
            "limits": {
                "max_batch": cfg.max_batch, "max_wait_ms": cfg.max_wait_ms,
                "max_queue": cfg.max_queue, "max_request_bytes": cfg.max_request_bytes,
                "max_solutions": cfg.max_solutions, "max_tokens": getattr(prm, "max_tokens", None),
                "read_timeout_s": cfg.read_timeout_s, "max_connections": cfg.max_connections,
            },
            "version": __version__,
        })  # fmt: skip

    @app.post("/score")
    async def score(request: Request) -> Response:
        problems, solutions, agg_override = parse_score_request(
            await read_json(request, cfg.max_request_bytes, cfg.read_timeout_s)
        )
        use = agg_override or agg
        if use not in AGGREGATIONS:
            raise _fail(422, f"'agg' {use!r}: expected one of {', '.join(AGGREGATIONS)}")
        values = await step_values(problems, solutions)
        scores = [aggregate(v, use) for v in values]
        return answer({"step_values": values, "scores": scores, "agg": use})

    @app.post("/get_reward")
    async def get_reward(request: Request) -> Response:
        body = _object(await read_json(request, cfg.max_request_bytes, cfg.read_timeout_s))
        queries = _strings(body, "query")
        prompts = _strings(body, "prompts", required=False)
        if prompts is not None and len(prompts) != len(queries):
            raise _fail(422, f"'prompts' has {len(prompts)} entries but 'query' has {len(queries)}")
        labels = _labels(body, len(queries))
        if verifier is not None and (labels is None or None in labels):
            raise _fail(
                422, "'labels' (gold answers, one per query) are required with --reward prm+rlvr"
            )
        questions, solutions = [], []
        for i, query in enumerate(queries):
            split = parser.split(query, None if prompts is None else prompts[i])
            if split is None:
                raise _fail(
                    422,
                    f"query[{i}]: cannot find where the response starts (no prompts[{i}] in it, "
                    "and it does not follow the PRM's prompt template)",
                )
            questions.append(split[0])
            solutions.append(split[1])
        if verifier is None:
            values = await step_values(questions, solutions)
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
                step_values(questions, solutions), loop.run_in_executor(None, check)
            )
        prm_scores = [aggregate(v, agg) for v in values]
        extra = {"prm_score": prm_scores, "num_steps": [float(len(s)) for s in solutions]}
        if verifier is None:
            return answer({"rewards": prm_scores, "scores": prm_scores, "extra_logs": extra})
        w = cfg.prm_weight
        rewards = [w * p + (1.0 - w) * v for p, v in zip(prm_scores, verdicts, strict=True)]
        extra["verifier"] = verdicts
        return answer({"rewards": rewards, "scores": verdicts, "extra_logs": extra})

    return app


# ---------------------------------------------------------------- `tdrm serve`


def bind(host: str, port: int) -> socket.socket:
    """A bound socket for host:port, or a one-line UsageError (port taken, bad host)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as e:
        raise UsageError(
            f"--host {host} --port {port}: cannot listen ({e.strerror or e})"
        ) from None
    sock.set_inheritable(True)
    return sock


def guarded_protocol(read_timeout_s: float):
    """uvicorn's h11 protocol plus a deadline for a request's headers.

    uvicorn times out only idle keep-alive connections, and only after a response: a client
    that connects and sends half its headers (or nothing) holds a socket forever. Here every
    connection must deliver complete request headers within `read_timeout_s` of opening, or
    of its last response, or it is closed. (The body has its own deadline in `read_json`.)
    """
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11Protocol(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None
        _waiting_for = None

        def _arm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
            self._waiting_for = self.cycle  # a new request replaces the cycle
            self._deadline = self.loop.call_later(read_timeout_s, self._expire)

        def _expire(self) -> None:
            if self.cycle is self._waiting_for and not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()

        def connection_lost(self, exc) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
            super().connection_lost(exc)

    return GuardedH11Protocol


def load_task_for(cfg: ServeConfig, prm: Any):
    from tdrm_cli.console import log
    from tdrm_cli.tasks import load_task

    spec = cfg.task or (getattr(prm, "meta", {}) or {}).get("task")
    if cfg.reward == "prm":
        if cfg.task:
            log(f"--task {cfg.task}: unused by --reward prm; ignored")
        return None
    if not spec:
        raise UsageError("--reward prm+rlvr needs --task (the PRM records no task)")
    return load_task(spec)


def run(cfg: ServeConfig) -> None:
    """Load the PRM, bind host:port, serve until interrupted."""
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError as e:
        raise UsageError(
            f"tdrm serve needs the 'serve' extra ({e.name} is missing): "
            "pip install 'tdrm-cli[serve]'"
        ) from None

    from tdrm_cli.console import log
    from tdrm_cli.prm import load_prm

    if not cfg.prm:
        raise UsageError("--prm is required")
    sock = bind(cfg.host, cfg.port)  # before the slow load: a taken port fails at once
    try:
        start = time.perf_counter()
        prm = load_prm(cfg.prm, "prm", None, cfg.trust_remote_code, cfg.allow_pickle)
        task = load_task_for(cfg, prm)
        app = create_app(prm, cfg, task=task, model=str(cfg.prm))
        if cfg.api_key is None and not _loopback(cfg.host):
            log(
                f"warning: --host {cfg.host} without --api-key: anyone who reaches the port can use it"
            )
        log(
            f"serving {cfg.prm} (agg {cfg.agg or prm.agg}, reward {cfg.reward}) on "
            f"http://{cfg.host}:{cfg.port} after {time.perf_counter() - start:.1f}s load"
        )
        server = uvicorn.Server(
            uvicorn.Config(
                app,
                http=guarded_protocol(cfg.read_timeout_s),
                limit_concurrency=cfg.max_connections,
                timeout_keep_alive=5,
                log_level="warning",
                access_log=False,
                timeout_graceful_shutdown=5,
            )
        )
        server.run(sockets=[sock])
    finally:
        sock.close()


def _loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")
