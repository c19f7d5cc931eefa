"""`tdrm serve`: a PRM behind HTTP for OpenRLHF, verl and search clients.

    POST /get_reward   OpenRLHF's remote reward protocol: {"query", "prompts", "labels"}
                       -> {"rewards", "scores", "extra_logs"}, one entry per query
    POST /score        {"problem": str | [str], "steps": [[str]]} -> step values + scores
    POST /step_rewards {"problem": str | [str], "responses": [str]} -> step values + each
                       step's [start, end) character offsets in its response
    GET  /health       liveness, queue depth, counters
    GET  /info         model, aggregation, separator, reward mix, limits, version

This module wires the app (routes, API key, error answers) and runs it; the pieces live
beside it: `serve_config` (the options), `serve_requests` (what each endpoint computes,
the checks of request bodies), `serve_batcher` (concurrent requests scored in one pass on
one model thread, a bounded queue: 503 when full) and `serve_http` (size and time limits
on requests, connections and sockets). Every error answer is `{"detail": "<one line>"}`
(the list: docs/design.md#reward-server), and the same line goes to stderr (rate-limited
per reason), since some clients never show the body of a failed request.
"""

# No `from __future__ import annotations` here: FastAPI reads the handlers' annotations
# (`request: Request`, imported inside create_app) at run time.
import contextlib
import hmac
import json
import time
from typing import Any

from tdrm_cli import __version__
from tdrm_cli.errors import UsageError, error_line
from tdrm_cli.prm_formats import load_scoring_prms
from tdrm_cli.serve_batcher import MicroBatcher, Overloaded
from tdrm_cli.serve_config import ServeConfig
from tdrm_cli.serve_http import ErrorLog, bind, guarded_protocol, read_json
from tdrm_cli.serve_requests import Endpoints


def create_app(
    prm: Any, cfg: ServeConfig | None = None, task: Any = None, model: str | None = None
):
    """The FastAPI app serving `prm` (anything with `score`, `separator`, `agg`).

    `task` (a `tdrm_cli.tasks.Task`) is needed for `--reward prm+rlvr`: its checker gives
    the verifier term from the `labels` OpenRLHF sends.
    """
    from fastapi import Depends, FastAPI, Request, Response

    cfg = cfg or ServeConfig()
    endpoints = Endpoints(prm, cfg, task, model)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        endpoints.batcher = MicroBatcher(prm.score, cfg.max_batch, cfg.max_wait_ms, cfg.max_queue)
        endpoints.batcher.start()
        yield
        await endpoints.batcher.stop()

    app = FastAPI(
        title="tdrm PRM server", version=__version__, lifespan=lifespan,
        dependencies=[Depends(bearer_check(cfg.api_key))] if cfg.api_key else [],
        docs_url=None, redoc_url=None, openapi_url=None,
    )  # fmt: skip
    add_error_answers(app, ErrorLog())

    def answer(content: dict[str, Any]) -> Response:
        # json.dumps straight to bytes: FastAPI's response-model encoding of these plain
        # dicts costs more than the rest of a small request
        # (never NaN: the PRM refuses to give one, and allow_nan=False makes sure)
        return Response(
            json.dumps(content, allow_nan=False).encode(), media_type="application/json"
        )

    async def body(request: Request) -> Any:
        return await read_json(request, cfg.max_request_bytes, cfg.read_timeout_s)

    @app.get("/health")
    async def health() -> Response:
        return answer(endpoints.health())

    @app.get("/info")
    async def info() -> Response:
        return answer(endpoints.info())

    @app.post("/score")
    async def score(request: Request) -> Response:
        return answer(await endpoints.score(await body(request)))

    @app.post("/step_rewards")
    async def step_rewards(request: Request) -> Response:
        return answer(await endpoints.step_rewards(await body(request)))

    @app.post("/get_reward")
    async def get_reward(request: Request) -> Response:
        return answer(await endpoints.get_reward(await body(request)))

    return app


def bearer_check(api_key: str):
    """A FastAPI dependency: 401 unless the request sends `Authorization: Bearer <api_key>`."""
    from fastapi import HTTPException, Request

    expected = api_key.encode()

    async def check_key(request: Request) -> None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected):
            raise HTTPException(
                401,
                "missing or wrong API key (send 'Authorization: Bearer <key>')",
                headers={"WWW-Authenticate": "Bearer"},
            )

    return check_key


def add_error_answers(app: Any, log: ErrorLog) -> None:
    """One-line `{"detail"}` answers for request errors (4xx), a full queue (503), a
    too-long solution (413), a NaN from the model and any other failure (500), each one
    also written to `log`."""
    from fastapi import Request
    from fastapi.exception_handlers import http_exception_handler
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    from tdrm_cli.prm import NonFinite, TooLong

    def logged(request: Request, status: int, detail: str, **kwargs: Any) -> JSONResponse:
        log(status, request.method, request.url.path, detail)
        return JSONResponse({"detail": detail}, status_code=status, **kwargs)

    @app.exception_handler(HTTPException)  # http_error, 401, and routing's 404 / 405
    async def request_error(request: Request, exc: HTTPException):
        log(exc.status_code, request.method, request.url.path, exc.detail)
        return await http_exception_handler(request, exc)

    @app.exception_handler(Overloaded)
    async def overloaded(request: Request, exc: Overloaded):
        return logged(request, 503, str(exc), headers={"Retry-After": "1"})

    @app.exception_handler(TooLong)
    async def too_long(request: Request, exc: TooLong):
        return logged(request, 413, f"{exc} (--max-tokens)")

    @app.exception_handler(NonFinite)
    async def non_finite(request: Request, exc: NonFinite):
        return logged(request, 500, f"internal error: {exc}")

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception):
        return logged(request, 500, f"internal error: {error_line(exc)}")


# ---------------------------------------------------------------- `tdrm serve`


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

    sock = bind(cfg.host, cfg.port)  # before the slow load: a taken port fails at once
    try:
        start = time.perf_counter()
        (prm,) = load_scoring_prms(
            [cfg.prm], [cfg.prm_format], cfg.prm_option, "prm", None, cfg.trust_remote_code,
            cfg.allow_pickle,
        )  # fmt: skip
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
