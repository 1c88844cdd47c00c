"""The endpoint's front: ``Frontend`` does what happens to a request between the socket and the replicas
(auth, a bounded read, admission, the Generator and Scorer calls, metrics) over any handles that answer
``.generate.remote`` / ``.score.remote``, so it is tested with fake ones; ``BestOfN`` is its FastAPI
ingress on Ray Serve."""
from __future__ import annotations

import asyncio
import os
import time
from typing import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve
from ray.exceptions import RayActorError
from starlette.exceptions import HTTPException

from rlhf_ray import models
from rlhf_ray.config import ServeConfig
from rlhf_ray.core import chat, selection
from rlhf_ray.serve import api
from rlhf_ray.serve.api import ApiError


class Metrics:
    """What the endpoint exports through Ray Serve's metrics API (Prometheus, on each node's metrics
    port and Ray's dashboard): counts and timings only, never a prompt's or a completion's text."""

    def __init__(self):
        from ray.serve import metrics

        seconds = [0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60]
        self.requests = metrics.Counter("rlhf_ray_requests", "chat completion requests, by HTTP status",
                                        tag_keys=("status",))
        self.candidates = metrics.Histogram("rlhf_ray_candidates", "candidates per request",
                                            boundaries=[1, 2, 4, 8, 16, 32, 64])
        self.generation = metrics.Histogram("rlhf_ray_generation_seconds", "time to sample a request's candidates",
                                            boundaries=seconds)
        self.scoring = metrics.Histogram("rlhf_ray_scoring_seconds", "time to score a request's candidates",
                                         boundaries=seconds)
        # A gauge: rewards may be negative, which Ray's histogram boundaries cannot be.
        self.reward = metrics.Gauge("rlhf_ray_chosen_reward", "reward of the latest candidate returned")
        self.chosen = metrics.Histogram("rlhf_ray_chosen_index", "index of the candidate returned",
                                        boundaries=[0.5, 1.5, 2.5, 4.5, 8.5, 16.5, 32.5])  # 0, 1, 2, 3-4, ... (Ray needs > 0)

    def status(self, status: int) -> None:
        self.requests.inc(tags={"status": str(status)})

    def observe(self, n: int, generation_s: float, scoring_s: float, rewards) -> None:
        self.candidates.observe(n)
        self.generation.observe(generation_s)
        if rewards is not None and any(r == r for r in rewards):  # not when every candidate went unscored
            best = selection.best_of_n(rewards)
            self.scoring.observe(scoring_s)
            self.reward.set(float(rewards[best]))
            self.chosen.observe(best)


class Frontend:
    """Admission here rather than in Serve's queue, whose 503 is plain text: requests beyond
    ``max_ongoing_requests`` wait, beyond ``max_queued_requests`` more are answered 503 at once.

    A part (generator, scorer) whose replicas stop answering is lost: Serve would hold each request, the
    ones in flight included, until Ray declares the node dead and a replacement replica has started
    (measured here: 24 s after a node was killed; minutes where an engine must load). A watcher calls each
    part's cheap ``info`` every second; one that fails or is not answered within ``PROBE_TIMEOUT_S`` marks
    the part lost: its calls in flight are abandoned and every request needing it is answered 503
    ``replica_lost`` (as is a request whose replica died under it) until a probe is answered again."""

    PROBE_EVERY_S = 1.0
    PROBE_TIMEOUT_S = 5.0  # an idle call; the ingress keeps the generator far below its 256 ongoing requests

    def __init__(self, generator, scorer, s: ServeConfig, key_sha256: str | None, tokenizer, metrics):
        self.gen, self.scorer, self.s, self.tok, self.metrics = generator, scorer, s, tokenizer, metrics
        self.key_sha256 = key_sha256
        self.special = chat.control_tokens(tokenizer)
        self.per_request_seed: bool | None = None
        self.admitted = 0
        self.working = asyncio.Semaphore(s.max_ongoing_requests)
        self.lost = {"generator": asyncio.Event(), "scorer": asyncio.Event()}  # set: its replicas do not answer
        self.watchers: list[asyncio.Task] = []  # started with the first request (they need its event loop)

    def check_headers(self, raw: list[tuple[bytes, bytes]]) -> None:
        try:
            api.check_headers(raw, self.s.max_header_bytes)
        except ApiError as e:
            self.metrics.status(e.status)
            raise

    def models(self, authorization: str) -> dict:
        api.check_key(authorization, self.key_sha256)
        return {"object": "list", "data": [{"id": self.s.model_name, "object": "model", "created": 0,
                                            "owned_by": "rlhf_ray"}]}

    async def answer(self, authorization: str, content_length: str, chunks: AsyncIterator[bytes]) -> dict:
        """The ``chat.completion`` for one request (its status counted), or the ``ApiError`` it gets."""
        try:
            answer = await self._answer(authorization, content_length, chunks)
        except ApiError as e:
            self.metrics.status(e.status)
            raise
        except Exception:
            self.metrics.status(500)
            raise
        self.metrics.status(200)
        return answer

    async def _answer(self, authorization: str, content_length: str, chunks: AsyncIterator[bytes]) -> dict:
        api.check_key(authorization, self.key_sha256)  # before the body is read: no key, no validation messages
        if not self.watchers:
            # A part that scales from zero (min_replicas 0) is not watched: while none of its replicas runs,
            # requests are meant to wait in Serve's queue, which is what makes its autoscaler start one.
            self.watchers = [asyncio.create_task(self._watch(part, handle)) for part, handle, d in
                             (("generator", self.gen, self.s.generator), ("scorer", self.scorer, self.s.scorer))
                             if d.min_replicas > 0]
        body = api.parse(await self.read(content_length, chunks))  # a slow client holds no work slot
        s = self.s
        if self.admitted >= s.max_ongoing_requests + s.max_queued_requests:
            raise ApiError(503, f"overloaded: {self.admitted} requests in progress or queued "
                                f"(max_ongoing_requests + max_queued_requests); retry later", code="overloaded")
        self.admitted += 1
        try:
            async with self.working:
                messages = api.check_messages(body, s, self.special)  # before the quadratic chat rendering
                seed_ok = await self._seed_supported() if body.seed is not None else True
                request = api.engine_request(body, messages, s, self.tok, seed_ok)
                start = time.perf_counter()
                candidates = await self.call("generator", self.gen, "generate", request)
                scored = time.perf_counter()
                rewards = await self.call("scorer", self.scorer, "score", messages, [c["text"] for c in candidates]) \
                    if body.best_of_n else None
                self.metrics.observe(len(candidates), scored - start, time.perf_counter() - scored, rewards)
                return {**api.response(s.model_name, request, candidates, rewards), "stream": body.stream}
        finally:
            self.admitted -= 1

    async def call(self, part: str, handle, method: str, *args):
        """``handle.method.remote(*args)``, or 503 ``replica_lost`` if ``part`` is lost before it answers."""
        lost = self.lost[part]
        if not lost.is_set():
            answer = asyncio.ensure_future(getattr(handle, method).remote(*args))
            gone = asyncio.ensure_future(lost.wait())
            try:
                await asyncio.wait({answer, gone}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                gone.cancel()
                if not answer.done():  # the part was lost, or the client went away (this request cancelled):
                    answer.cancel()    # Serve cancels the call on the replica, which aborts its candidates
            if answer.done():
                try:
                    return answer.result()
                except RayActorError:
                    lost.set()
        raise ApiError(503, f"the {part} replica was lost (its process or node stopped); a replacement is "
                            f"starting: retry later", code="replica_lost")

    async def _watch(self, part: str, handle) -> None:
        while True:
            await asyncio.sleep(self.PROBE_EVERY_S)
            try:
                await asyncio.wait_for(handle.info.remote(), self.PROBE_TIMEOUT_S)
            except Exception:  # dead, unreachable, or not answering in time: requests get 503, not a wait
                self.lost[part].set()
            else:
                self.lost[part].clear()

    async def read(self, content_length: str, chunks: AsyncIterator[bytes]) -> bytes:
        """The body, no more than ``max_request_bytes`` whatever the headers claimed, within ``read_timeout_s``."""
        limit = self.s.max_request_bytes
        if content_length.isdigit() and int(content_length) > limit:
            raise ApiError(413, f"body: {content_length} bytes; the limit is max_request_bytes={limit}")
        data = bytearray()

        async def read() -> None:
            async for chunk in chunks:
                data.extend(chunk)
                if len(data) > limit:
                    raise ApiError(413, f"body: over the limit max_request_bytes={limit}")

        try:
            await asyncio.wait_for(read(), self.s.read_timeout_s)
        except asyncio.TimeoutError:
            raise ApiError(408, f"body: not received within read_timeout_s={self.s.read_timeout_s} s") from None
        return bytes(data)

    async def _seed_supported(self) -> bool:
        if self.per_request_seed is None:
            self.per_request_seed = (await self.gen.info.remote())["per_request_seed"]
        return self.per_request_seed


# No /docs, /redoc or /openapi.json: they would answer without the key.
app = FastAPI(title="rlhf_ray best-of-N", docs_url=None, redoc_url=None, openapi_url=None)


@app.exception_handler(ApiError)
async def _api_error(request: Request, exc: ApiError):
    return JSONResponse(status_code=exc.status, content=exc.body())


@app.exception_handler(HTTPException)
async def _http_error(request: Request, exc: HTTPException):
    # Starlette's own answers (an unknown path: 404, a wrong method: 405) in OpenAI's shape too.
    return JSONResponse(status_code=exc.status_code, content=ApiError(exc.status_code, str(exc.detail)).body(),
                        headers=exc.headers)


@app.exception_handler(Exception)
async def _server_error(request: Request, exc: Exception):
    # A bug or a failed replica: the OpenAI error shape too, without the internals.
    error = ApiError(500, f"internal error ({type(exc).__name__}); the server log has the details")
    return JSONResponse(status_code=500, content=error.body())


@serve.deployment(name="BestOfN")
@serve.ingress(app)
class BestOfN:
    def __init__(self, generator, scorer, s: ServeConfig, key_sha256: str | None):
        node_key = os.environ.get(s.api_key_env)  # a key set on the nodes themselves also works
        digest = key_sha256 or (api.key_digest(node_key) if node_key else None)
        self.front = Frontend(generator, scorer, s, digest, models.chat_tokenizer(s.policy, s.template), Metrics())

    @app.get("/health")
    async def health(self) -> dict:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def list_models(self, request: Request) -> dict:
        self.front.check_headers(request.headers.raw)
        return self.front.models(request.headers.get("authorization", ""))

    @app.post("/v1/chat/completions")
    async def chat_completions(self, raw: Request):
        self.front.check_headers(raw.headers.raw)
        answer = await self.front.answer(raw.headers.get("authorization", ""), raw.headers.get("content-length", ""),
                                         raw.stream())
        if answer.pop("stream"):
            return StreamingResponse(api.stream_events(answer), media_type="text/event-stream")
        return answer
