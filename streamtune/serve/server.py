"""``python -m export serve --bundle dist/<name>``: a streaming WebSocket server over a verified bundle.

    python -m export serve --bundle dist/tiny_cpu [--chunk-ms 160] [--host 127.0.0.1] [--port 8765]

Protocol (one WebSocket per stream, at ``ws://HOST:PORT/ws``; the page at ``http://HOST:PORT/`` is a client):

* the server first sends ``{"type": "ready", "sample_rate": 16000, "format": "pcm_s16le", "chunk_ms": ...}``;
* the client sends audio as **binary** messages of 16 kHz mono 16-bit little-endian PCM (any number of whole
  samples per message, at most ``--max-message-kib``), then the **text** message ``{"type": "end"}``; it may
  send ``{"type": "endpoint"}`` at any time to end its turn itself;
* a session is a sequence of segments (turns), cut by the endpointing rules (``--endpoint``,
  :mod:`streamtune.streaming.endpoint`): the server sends ``{"type": "partial", "segment", "text", "tokens",
  "words", "audio_s"}`` for the open segment after each chunk it decoded (``audio_s``: the audio the result
  covers; ``words``: ``[word, emitted at, last token emitted at]`` in audio seconds), and at each endpoint
  ``{"type": "final", "segment", "text", "tokens", "words", "audio_s", "start_s", "end_s", "reason", "last"}``;
  after ``end``, the last segment's final (``"last": true``), then it closes;
* anything else gets ``{"type": "error", "code", "message"}`` and a close: a binary message of an odd number of
  bytes, text that is not ``end`` / ``endpoint`` (or longer than 1 KiB, or not JSON), audio after ``end``, a
  message over the size limit, no audio for ``--idle-s`` seconds, or a connection over ``--max-streams`` (close
  code 1013, try again later); a session is ended (its last final sent) after ``--max-session-s``; a client whose
  results cannot be sent for ``--send-timeout-s`` is dropped.

Who may connect: a request whose ``Host`` names none of the server's names (the loopback names, ``--host``, and
``--allow-host``) is refused with HTTP 403 (a DNS-rebinding page cannot reach it), and so is a WebSocket whose
``Origin`` is neither the server's own (the same scheme-less host and port as its ``Host``) nor listed with
``--allow-origin``: a web page the user visits cannot open streams. Clients that send no ``Origin`` (programs, not
browsers) are not affected. With ``--token-file``, ``/ws`` and ``/metrics`` want ``Authorization: Bearer TOKEN``
(the page: the subprotocol ``bearer.TOKEN``, from ``/#token=TOKEN``); else HTTP 401. Each refusal is one line in
the log (JSON lines: :meth:`StreamServer._log`); ``/healthz`` and ``/metrics`` (Prometheus) are for operators.

One compute thread steps every stream that has a chunk ready in one batched cache-aware step
(:class:`streamtune.streaming.live.LiveStreams`); streams join and leave at any time, and each gets exactly the tokens
``StreamingRunner.streaming`` gives its audio. The server binds to 127.0.0.1 unless told otherwise; to expose it,
give it a token and put it behind your own TLS proxy. Limits, flags and defaults: docs/serving.md.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from streamtune.errors import UserError

PAGE = Path(__file__).with_name("page.html")
LOOPBACK = ("127.0.0.1", "localhost", "::1")
SHUTDOWN_S = 5.0  # SIGTERM to exit, at most (the compute thread is a daemon: a long step does not hold it up)
HEALTHY_WITHIN_S = 10.0  # /healthz: the compute loop turned within this long (a step of a full batch included)
MAX_TEXT_BYTES = 1024  # control messages are small JSON objects


def control_message(text: str) -> str | None:
    """The ``type`` of a client's text message, None for anything that is not a small JSON object (a message of
    200,000 ``[`` is refused by its size, a deeply nested one within it by the parser's depth limit)."""
    if len(text) > MAX_TEXT_BYTES:
        return None
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return value.get("type") if isinstance(value, dict) else None


@dataclass
class ServeOptions:
    chunk_ms: int | None = None  # default: the model's default (first) chunk mode
    host: str = "127.0.0.1"
    port: int = 8765
    max_streams: int | None = None  # default: a capacity probe at start-up
    idle_s: float = 30.0
    max_message_kib: int = 256
    device: str = "cpu"
    max_backlog_s: float = 5.0  # audio a stream may have sent ahead of decoding before the server stops reading it
    # Endpointing (streamtune.streaming.endpoint): "auto" (<EOU> when the model has it, else the rules), "rules",
    # "eou" or "none", with the EndpointRules fields given here replacing the method's defaults.
    endpoint: str = "auto"
    endpoint_settings: dict = field(default_factory=dict)
    # Host names (besides the loopback names and `host`) a request's Host header may name, and page origins
    # (scheme://host[:port]) besides the server's own that may open WebSockets.
    allow_hosts: list[str] = field(default_factory=list)
    allow_origins: list[str] = field(default_factory=list)
    max_session_s: float = 3600.0  # a stream is ended (its last final sent) after this long
    send_timeout_s: float = 10.0  # a client whose results cannot be sent for this long is dropped
    token: str | None = None  # required of WebSocket and /metrics clients when set (--token-file)
    backend: str = "pytorch"  # or "onnx" / "onnx-int8": the bundle's ONNX Runtime graphs (ort_streams.py)


def load_bundle(bundle: Path, chunk_ms: int | None, device: str, expect_manifest_sha256: str | None = None):
    """(the bundle's model after ``verify`` passes, the chunk mode to serve, the verified manifest)."""
    from streamtune.export.verify import VerifyError, verified
    from streamtune.model.chunks import chunk_modes

    try:  # the model verify decoded the sample with: read once, hashed, checked against the manifest
        _, model, manifest = verified(bundle, expect_manifest_sha256)
    except VerifyError as err:
        raise UserError(f"bundle {bundle} fails `python -m export verify`: {err}; export it again") from None
    model = model.to(device)
    modes = chunk_modes(model)
    for mode in modes:
        if chunk_ms is None or mode.chunk_ms == chunk_ms:
            return model, mode, manifest
    raise UserError(f"--chunk-ms {chunk_ms}: the model streams at {', '.join(str(m.chunk_ms) for m in modes)} ms")


def load_bundle_model(bundle: Path, chunk_ms: int | None, device: str, expect_manifest_sha256: str | None = None):
    """The bundle's model (after ``verify`` passes) and the chunk mode to serve."""
    return load_bundle(bundle, chunk_ms, device, expect_manifest_sha256)[:2]


BACKENDS = ("pytorch", "onnx", "onnx-int8")


def onnx_streams(bundle: Path, model, mode, backend: str, manifest: dict, endpoint, max_batch: int = 256):
    """The ONNX Runtime backend over the bundle's ``onnx/<ms>ms`` (``onnx``) or ``onnx/<ms>ms-int8`` graphs, loaded
    from the bytes verify checked (streamtune.serve.ort_streams)."""
    from streamtune.serve.ort_streams import OrtLiveStreams

    name = f"{mode.chunk_ms}ms" + ("-int8" if backend == "onnx-int8" else "")
    mode_dir = bundle / "onnx" / name
    if not (mode_dir / "encoder.onnx").is_file():
        have = sorted(p.name for p in (bundle / "onnx").iterdir()) if (bundle / "onnx").is_dir() else []
        raise UserError(f"--backend {backend}: the bundle has no onnx/{name}/ (it has: {', '.join(have) or 'none'}"
                        f"{'; export with export.int8=true' if backend == 'onnx-int8' else ''})")
    hashes = {rel.rsplit("/", 1)[1]: meta["sha256"] for rel, meta in manifest["files"].items()
              if rel.startswith(f"onnx/{name}/")}
    return OrtLiveStreams(model, mode, mode_dir, max_batch=max_batch, endpoint=endpoint,
                          threads=os.cpu_count() or 1, hashes=hashes)


class StreamServer:
    """The aiohttp application: the page, the WebSocket endpoint, and the compute thread over LiveStreams."""

    def __init__(self, model, mode, max_streams: int, idle_s: float = 30.0, max_message_kib: int = 256,
                 device: str = "cpu", endpoint=None, allow_hosts: tuple[str, ...] | None = (),
                 allow_origins: tuple[str, ...] = (), max_backlog_s: float = 5.0, max_session_s: float = 3600.0,
                 send_timeout_s: float = 10.0, token: str | None = None, socket_buffer_kib: int = 256,
                 live=None):
        from streamtune.streaming.live import LiveStreams

        # endpoint: streamtune.streaming.endpoint.EndpointRules (None: one segment per stream, ended by `end`).
        # live: the streams of another backend (onnx_streams); default PyTorch.
        self.live = live if live is not None else LiveStreams(model, mode, device=device,
                                                              max_batch=max(1, max_streams), endpoint=endpoint)
        self.mode = mode
        self.max_streams = max_streams
        self.idle_s = idle_s
        self.max_message_bytes = max_message_kib * 1024
        # None: any Host (a server bound to every address without --allow-host cannot know its names).
        self.allow_hosts = None if allow_hosts is None else {h.lower().strip("[]") for h in (*LOOPBACK, *allow_hosts)}
        self.allow_origins = {o.rstrip("/").lower() for o in allow_origins}
        self.max_session_s = max_session_s
        self.send_timeout_s = send_timeout_s
        self.socket_buffer = socket_buffer_kib * 1024
        self.token = token
        self.clients: dict[str, Outbox] = {}
        # Backpressure: per stream, the samples its results cover so far, and an event set when that grows.
        # At least two chunks and a little more: a stream needs a whole chunk (and the STFT's reach) to step.
        rate = self.live.sample_rate
        self.max_backlog = max(int(max_backlog_s * rate), int(2 * mode.chunk_ms / 1000 * rate) + rate // 10)
        self.covered: dict[str, int] = {}
        self.progressed: dict[str, asyncio.Event] = {}
        self.sockets: dict[str, object] = {}  # the open WebSockets, closed with a word at shutdown
        self.loop: asyncio.AbstractEventLoop | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.steps = 0
        self.beat = time.monotonic()  # the compute loop's last turn (/healthz)
        self.fatal: str | None = None  # why the compute loop stopped, if it did
        self.on_fatal = None  # called (from the compute thread) when it stops; serve() ends the process
        self.fed: dict[str, int] = {}  # samples each stream has sent
        self.metrics = Metrics(self)

    # ----- compute thread --------------------------------------------------------------------
    def _compute(self) -> None:
        """The compute loop. A failing batch fails its own streams inside ``LiveStreams.step``; anything else is
        fatal: the process stops (exit status 1, for a supervisor to restart it) instead of answering HTTP while
        nothing decodes."""
        try:
            while not self._stop.is_set():
                self.beat = time.monotonic()
                updates = self.live.step()
                if updates:
                    self.metrics.step_seconds.observe(time.monotonic() - self.beat)
                    self.steps += 1
                    self.loop.call_soon_threadsafe(self._deliver, updates)
                else:
                    self.live.wait(0.05)
        except Exception as err:  # noqa: BLE001 - reported, then the whole server stops
            self.fatal = f"{type(err).__name__}: {err}"
            self._log("fatal", message=f"the compute loop stopped: {self.fatal}; shutting down")
            if self.on_fatal is not None:
                self.on_fatal()

    def _deliver(self, updates) -> None:
        for update in updates:
            outbox = self.clients.get(update.stream)
            if outbox is not None:
                outbox.put(update)
                self.covered[update.stream] = int(update.audio_s * self.live.sample_rate)
                self.progressed[update.stream].set()

    async def _backpressure(self, sid: str, fed: int, sender: asyncio.Task) -> None:
        """Wait while the stream has sent more than ``max_backlog`` samples ahead of what is decoded: the socket is
        not read meanwhile, so the client's sends block (TCP flow control) instead of the server's memory growing.
        Ends too when the stream's sender has (its last result or an error sent, or the client gone)."""
        while fed - self.covered.get(sid, 0) > self.max_backlog and not sender.done():
            event = self.progressed[sid]
            event.clear()
            waiter = asyncio.ensure_future(event.wait())
            await asyncio.wait({waiter, sender}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()

    # ----- HTTP ------------------------------------------------------------------------------
    def app(self):
        from aiohttp import web

        app = web.Application(middlewares=[self._who_may_connect])
        app.router.add_get("/", self._page)
        app.router.add_get("/ws", self._websocket)
        app.router.add_get("/info", self._info)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/metrics", self._metrics)
        app.on_startup.append(self._on_startup)
        app.on_shutdown.append(self._on_shutdown)
        app.on_cleanup.append(self._on_cleanup)
        return app

    async def _on_startup(self, app) -> None:
        self.loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._compute, name="streamtune-compute", daemon=True)
        self._thread.start()

    async def _on_shutdown(self, app) -> None:
        """SIGTERM / SIGINT: no new streams (the listening socket is closed first); every open stream is told and
        closed, and nothing more is computed (queued audio is discarded)."""
        self._stop.set()
        self._log("shutting_down", streams=len(self.sockets))
        for sid in list(self.sockets):
            self.live.drop(sid)
        # Told all at once, and given at most a part of the shutdown bound (a client that does not read is not
        # waited for).
        told = [self._error(ws, "shutting_down", "the server is shutting down; reconnect to another one",
                            close_code=1001) for ws in list(self.sockets.values())]
        if told:
            await asyncio.wait([asyncio.ensure_future(t) for t in told], timeout=SHUTDOWN_S / 4)

    async def _on_cleanup(self, app) -> None:
        self._stop.set()  # the compute thread sees it after its step (within its 50 ms wait when idle)
        if self._thread is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join, SHUTDOWN_S / 2)

    def refusal(self, request) -> tuple[int, str, str] | None:
        """(HTTP status, why, what) when a request may not be served (its Host, its Origin, its token), or None."""
        from urllib.parse import urlsplit

        host = (request.host or "").lower()
        name = urlsplit(f"//{host}").hostname or ""
        if self.allow_hosts is not None and name not in self.allow_hosts:
            return 403, (f"Host '{host}' is not one of this server's names ({', '.join(sorted(self.allow_hosts))}); "
                         "add it with --allow-host"), "host"
        origin = request.headers.get("Origin")
        if origin is not None and request.path == "/ws":
            origin = origin.rstrip("/").lower()
            own = {f"http://{host}", f"https://{host}"}
            if origin not in own and origin not in self.allow_origins:
                return 403, f"Origin '{origin}' is not this server's own; allow a page's origin with --allow-origin", \
                    "origin"
        if self.token is not None and request.path in ("/ws", "/metrics") and self._offered_token(request) is None:
            return 401, ("this server needs a token: the header 'Authorization: Bearer TOKEN' (or, from a browser, "
                         "the page opened as /#token=TOKEN)"), "token"
        return None

    def _offered_token(self, request) -> str | None:
        """How the request carries the server's token: ``header``, or the WebSocket subprotocol
        ``bearer.TOKEN`` (browsers cannot set headers on a WebSocket; the page sends that), else None."""
        import hmac

        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), self.token.encode()):
            return "header"
        for protocol in request.headers.get("Sec-WebSocket-Protocol", "").split(","):
            protocol = protocol.strip()
            if protocol.startswith("bearer.") and hmac.compare_digest(protocol[7:].encode(), self.token.encode()):
                return protocol
        return None

    @staticmethod
    def _log(event: str, **fields) -> None:
        """One JSON object per line: when, what happened, and its details (structured, for log collectors)."""
        record = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "event": event, **fields}
        print(json.dumps(record, default=str), flush=True)

    async def _who_may_connect(self, app, handler):
        from aiohttp import web

        async def check(request):
            refused = self.refusal(request)
            if refused is not None:
                status, why, what = refused
                self.metrics.refused.labels(what).inc()
                self._log("refused", peer=request.remote, method=request.method, path=request.path, status=status,
                          reason=why)
                return web.Response(status=status, text=why + "\n")
            return await handler(request)

        return check

    async def _page(self, request):
        from aiohttp import web

        return web.Response(text=PAGE.read_text(), content_type="text/html")

    async def _healthz(self, request):
        """200 while the compute loop is alive and turning (it turns at least every 50 ms when idle), else 503."""
        from aiohttp import web

        alive = self._thread is not None and self._thread.is_alive() and self.fatal is None
        stalled = time.monotonic() - self.beat
        if alive and stalled < HEALTHY_WITHIN_S:
            return web.json_response({"status": "ok", "steps": self.steps})
        return web.json_response({"status": "down", "fatal": self.fatal, "last_turn_s_ago": round(stalled, 1)},
                                 status=503)

    async def _metrics(self, request):
        """Prometheus text format (prometheus_client): streams, refusals, errors, dropped clients, step times,
        audio waiting to be decoded."""
        from aiohttp import web

        body, content_type = self.metrics.render()
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def _info(self, request):
        from aiohttp import web

        return web.json_response({"chunk_ms": self.mode.chunk_ms, "sample_rate": self.live.sample_rate,
                                  "streams": len(self.clients), "max_streams": self.max_streams})

    # ----- WebSocket -------------------------------------------------------------------------
    async def _error(self, ws, code: str, message: str, close_code: int = 1008, sid: str | None = None) -> None:
        self.metrics.errors.labels(code).inc()
        if sid is not None:
            self._log("stream_error", stream=sid, code=code, message=message)
        try:
            await asyncio.wait_for(ws.send_json({"type": "error", "code": code, "message": message}),
                                   self.send_timeout_s)
            await asyncio.wait_for(ws.close(code=close_code, message=code.encode()), self.send_timeout_s)
        except (ConnectionError, asyncio.TimeoutError):  # the client has gone already, or does not read
            pass

    async def _send_results(self, ws, outbox: Outbox, sid: str, transport) -> str:
        """Send the stream's results until its last final: ``sent``; ``reset`` when the client reset the connection
        first; ``not_reading`` when a send could not go out for ``send_timeout_s`` (the connection is then
        aborted: the handler's receive ends and the stream is dropped)."""
        try:
            await self._send_loop(ws, outbox)
            return "sent"
        except ConnectionError:  # the handler drops the stream
            return "reset"
        except asyncio.TimeoutError:
            self.metrics.dropped.labels("not_reading").inc()
            self._log("dropped", stream=sid, reason=f"its results went unread for {self.send_timeout_s:g} s")
            if transport is not None:
                transport.abort()
            return "not_reading"

    async def _send_loop(self, ws, outbox: Outbox) -> None:
        while True:
            update = await outbox.get()
            message = {"type": "final" if update.final else "partial", "segment": update.segment,
                       "text": update.text, "tokens": update.tokens, "audio_s": round(update.audio_s, 4),
                       "words": [[w, round(a, 4), round(b, 4)] for w, a, b in update.words]}
            if update.error is not None:
                self._log("stream_failed", stream=update.stream, message=f"a decoding step failed: {update.error}")
                await self._error(ws, "internal", "decoding this stream failed on the server; the stream is closed "
                                  "(other streams go on): try again", close_code=1011)
                return
            if update.final:
                message.update(start_s=update.start_s, end_s=update.end_s, reason=update.reason, last=update.last)
            await asyncio.wait_for(ws.send_json(message), self.send_timeout_s)
            if update.last:
                outbox.sent_last = True
                await asyncio.wait_for(ws.close(), self.send_timeout_s)
                return

    async def _websocket(self, request):
        from aiohttp import WSMsgType, web

        _bound_buffers(request.transport, self.socket_buffer)
        offered = self._offered_token(request) if self.token is not None else None
        # heartbeat: a ping after send_timeout_s without a frame from the client; no pong within half that: closed.
        ws = web.WebSocketResponse(max_msg_size=4 * self.max_message_bytes, heartbeat=self.send_timeout_s,
                                   writer_limit=self.socket_buffer,  # a blocked client noticed within that much
                                   protocols=(offered,) if offered not in (None, "header") else ())
        await ws.prepare(request)
        self.metrics.connections.inc()
        if len(self.clients) >= self.max_streams:
            self.metrics.refused.labels("over_capacity").inc()
            self._log("refused", peer=request.remote, path=request.path, reason="over capacity",
                      max_streams=self.max_streams)
            await self._error(ws, "over_capacity", f"the server is serving its maximum of {self.max_streams} "
                              "streams; try again later", close_code=1013)
            return ws
        sid = uuid.uuid4().hex
        outbox = Outbox()
        self.clients[sid] = outbox
        self.sockets[sid] = ws
        self.progressed[sid] = asyncio.Event()
        self.fed[sid] = fed = 0
        self.live.open(sid)
        opened = time.monotonic()
        self._log("connected", stream=sid, peer=request.remote)
        await ws.send_json({"type": "ready", "sample_rate": self.live.sample_rate, "format": "pcm_s16le",
                            "chunk_ms": self.mode.chunk_ms, "stream": sid})
        sender = asyncio.create_task(self._send_results(ws, outbox, sid, request.transport))
        ended, last_audio, how = False, opened, "client closed"
        try:
            while not ended:
                await self._backpressure(sid, fed, sender)
                now = time.monotonic()
                # Idle is time without audio (control messages do not keep a stream open); a session has a maximum.
                idle_at, session_at = last_audio + self.idle_s, opened + self.max_session_s
                try:
                    msg = await asyncio.wait_for(ws.receive(), timeout=max(0.0, min(idle_at, session_at) - now))
                except asyncio.TimeoutError:
                    if time.monotonic() >= session_at:  # the last final is sent, as after `end`
                        self._log("session_limit", stream=sid, max_session_s=self.max_session_s)
                        self.live.end(sid, reason="max_session")
                        ended = True
                        continue
                    how = "idle"
                    await self._error(ws, "idle", f"no audio for {self.idle_s:g} s; stream closed", sid=sid)
                    break
                if msg.type == WSMsgType.BINARY:
                    data = msg.data
                    if len(data) > self.max_message_bytes:
                        how = "message_too_large"
                        await self._error(ws, how, f"a binary message of {len(data)} bytes; the limit is "
                                          f"{self.max_message_bytes} (send audio in smaller pieces)",
                                          close_code=1009, sid=sid)
                        break
                    if len(data) % 2:
                        how = "bad_frame"
                        await self._error(ws, how, f"a binary message of {len(data)} bytes: audio is 16-bit "
                                          "little-endian PCM, an even number of bytes per message", close_code=1003,
                                          sid=sid)
                        break
                    self.live.feed(sid, np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0)
                    fed += len(data) // 2
                    self.fed[sid] = fed
                    self.metrics.audio_seconds.inc(len(data) / 2 / self.live.sample_rate)
                    last_audio = time.monotonic()
                elif msg.type == WSMsgType.TEXT:
                    kind = control_message(msg.data)
                    if kind == "endpoint":
                        self.live.cut(sid)
                        continue
                    if kind != "end":
                        how = "bad_message"
                        await self._error(ws, how, 'text messages are {"type": "end"} or {"type": "endpoint"}; '
                                          "audio goes in binary messages", close_code=1003, sid=sid)
                        break
                    self.live.end(sid)
                    ended = True
                elif msg.type == WSMsgType.ERROR:
                    how = f"connection error ({ws.exception()})"
                    break  # aiohttp closed it (e.g. a message far over the limit: close code 1009)
                else:  # the client closed, reset, or missed the heartbeat
                    break
            if ended:
                how = "ended"
                await self._until_final(ws, sender, sid)
        finally:
            outcome = (sender.result() if sender.done() and not sender.cancelled() and sender.exception() is None
                       else "sent" if outbox.sent_last else "unsent")  # (the close handshake may be cut short)
            if sender.done() and not sender.cancelled() and sender.exception() is not None:
                err = sender.exception()
                self._log("send_failed", stream=sid, message=f"{type(err).__name__}: {err}")
            if not sender.done():
                sender.cancel()
            if outcome != "sent":
                self.live.drop(sid)  # left before its last final (even after `end`): stop computing for it
                if outcome != "not_reading" and how in ("client closed", "ended"):
                    self.metrics.dropped.labels("left").inc()
                    how = "left before its last final"
            for table in (self.clients, self.sockets, self.covered, self.progressed, self.fed):
                table.pop(sid, None)
            self._log("closed", stream=sid, how="not reading" if outcome == "not_reading" else how,
                      audio_s=round(fed / self.live.sample_rate, 2), seconds=round(time.monotonic() - opened, 2))
        return ws

    async def _until_final(self, ws, sender: asyncio.Task, sid: str) -> None:
        """After ``end``: wait for the last final while watching the socket, so that a client that resets or closes
        before it arrives is noticed at once (its queued audio is then not decoded), and anything it sends is an
        error."""
        from aiohttp import WSMsgType

        receiving = asyncio.ensure_future(ws.receive())
        done, _ = await asyncio.wait({sender, receiving}, return_when=asyncio.FIRST_COMPLETED)
        if sender in done:
            receiving.cancel()
            return
        msg = receiving.result()
        if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
            await self._error(ws, "bad_message", 'nothing may follow {"type": "end"}', close_code=1003, sid=sid)


def _bound_buffers(transport, size: int) -> None:
    """Fixed kernel buffers for a stream's connection (Linux otherwise grows them to 4 MB out and 32 MB in): the
    audio a flooding client has in flight and the results a client that does not read leaves in the server's
    kernel stay within ``size`` bytes each way (256 KiB: about 8 s of audio), as does what waits in the process to
    be written, so backpressure and the send timeout act within seconds."""
    import socket

    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is not None:
        for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            sock.setsockopt(socket.SOL_SOCKET, option, size)
        transport.set_write_buffer_limits(high=size)  # and what waits in this process to go out


class Outbox:
    """A stream's results waiting to be sent: every final, in order, and only the newest partial (a partial
    carries the whole open segment, so one waiting behind a newer one is stale): what a slow reader makes the
    server hold is bounded by its finals, not by the chunks decoded."""

    def __init__(self):
        from collections import deque

        self.items = deque()
        self.ready = asyncio.Event()
        self.sent_last = False  # the stream's last final went out

    def put(self, update) -> None:
        if not update.final and self.items and not self.items[-1].final:
            self.items[-1] = update
        else:
            self.items.append(update)
        self.ready.set()

    async def get(self):
        while not self.items:
            self.ready.clear()
            await self.ready.wait()
        return self.items.popleft()

    def __len__(self) -> int:
        return len(self.items)


class Metrics:
    """The server's Prometheus metrics (prometheus_client), in a registry of its own."""

    def __init__(self, server: StreamServer):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = registry = CollectorRegistry()
        rate = server.live.sample_rate
        Gauge("streamtune_streams", "Streams open", registry=registry).set_function(lambda: len(server.clients))
        Gauge("streamtune_max_streams", "Streams served at once at most", registry=registry).set(server.max_streams)
        Gauge("streamtune_backlog_seconds", "Audio received and not yet decoded, summed over streams",
              registry=registry).set_function(
            lambda: sum(max(0, n - server.covered.get(sid, 0)) for sid, n in list(server.fed.items())) / rate)
        Gauge("streamtune_outbox_messages", "Results waiting to be sent, summed over streams",
              registry=registry).set_function(lambda: sum(len(o) for o in list(server.clients.values())))
        self.connections = Counter("streamtune_connections", "WebSocket connections accepted", registry=registry)
        self.refused = Counter("streamtune_refused", "Requests refused, by reason", ["reason"], registry=registry)
        self.errors = Counter("streamtune_stream_errors", "Streams closed with an error, by code", ["code"],
                              registry=registry)
        self.dropped = Counter("streamtune_dropped_clients", "Clients dropped before their last final: left, or "
                               "not reading their results", ["reason"], registry=registry)
        self.audio_seconds = Counter("streamtune_audio_seconds", "Audio received", registry=registry)
        self.step_seconds = Histogram("streamtune_step_seconds", "Compute loop steps that decoded something",
                                      buckets=(.005, .01, .02, .04, .08, .16, .32, .64, 1.28, 2.56), registry=registry)

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def read_token(path: Path) -> str:
    """The bearer token in ``path`` (its one line): at least 16 characters of letters, digits and ``-._~``
    (what a WebSocket subprotocol may carry)."""
    import re
    import stat

    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise UserError(f"--token-file {path}: not a regular file")
        token = Path(path).read_text().strip()
    except OSError as err:
        raise UserError(f"--token-file {path}: cannot be read ({err.strerror})") from None
    if not re.fullmatch(r"[A-Za-z0-9._~-]{16,512}", token):
        raise UserError(f"--token-file {path}: the token must be one line of 16-512 letters, digits or -._~ "
                        "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))' > FILE)")
    return token


def serve(bundle: Path, options: ServeOptions, expect_manifest_sha256: str | None = None) -> None:
    """Load, probe the capacity (unless ``max_streams`` is given), and serve until interrupted."""
    from aiohttp import web

    from streamtune.streaming.endpoint import EndpointRules, default_rules, describe
    from streamtune.streaming.live import probe_capacity

    if options.backend not in BACKENDS:
        raise UserError(f"--backend {options.backend}: choose one of {', '.join(BACKENDS)}")
    if options.backend != "pytorch" and options.device != "cpu":
        raise UserError(f"--backend {options.backend} runs ONNX Runtime on the CPU; drop --device {options.device}")
    model, mode, manifest = load_bundle(bundle, options.chunk_ms, options.device, expect_manifest_sha256)
    if options.endpoint == "none":  # no turn-taking, but no result grows without bound: a cap on segments only
        endpoint = EndpointRules("rules", trailing_silence_s=None, leading_silence_s=None)
    else:
        endpoint = default_rules(model.tokenizer) if options.endpoint == "auto" else EndpointRules(options.endpoint)
    endpoint = replace(endpoint, **options.endpoint_settings)  # checked again: contradictions are errors
    endpoint.token_id(model.tokenizer)  # a clear error before serving when eou is asked of a model without it
    live = None if options.backend == "pytorch" else onnx_streams(bundle, model, mode, options.backend, manifest,
                                                                   endpoint)
    max_streams = options.max_streams
    if max_streams is None:
        began = time.perf_counter()
        max_streams = max(1, probe_capacity(model, mode, options.device, live=live))
        print(f"capacity probe ({options.backend}): {max_streams} streams step within half a {mode.chunk_ms} ms "
              f"chunk on this machine ({time.perf_counter() - began:.1f} s; set --max-streams to choose)", flush=True)
    if options.host not in LOOPBACK and options.token is None:
        print(f"warning: listening on {options.host}: anyone who reaches it can stream (no --token-file)",
              flush=True)
    wildcard = options.host in ("0.0.0.0", "::", "")
    if wildcard and not options.allow_hosts:
        print(f"warning: listening on every address ({options.host or 'all'}) without --allow-host: the Host header "
              "is not checked (name the addresses clients use with --allow-host)", flush=True)
    hosts = None if wildcard and not options.allow_hosts else (*([] if wildcard else [options.host]),
                                                                *options.allow_hosts)
    server = StreamServer(model, mode, max_streams, options.idle_s, options.max_message_kib, options.device,
                          endpoint, hosts, tuple(options.allow_origins), options.max_backlog_s, options.max_session_s,
                          options.send_timeout_s, options.token, live=live)
    print(f"serving {bundle} at {mode.chunk_ms} ms chunks ({options.backend}), at most {max_streams} streams, "
          "endpointing: "
          f"{describe(endpoint)}: "
          f"http://{options.host}:{options.port}/ (page), ws://{options.host}:{options.port}/ws", flush=True)
    server.on_fatal = lambda: os.kill(os.getpid(), signal.SIGTERM)  # aiohttp's graceful shutdown, then exit 1
    web.run_app(server.app(), host=options.host, port=options.port, print=None, shutdown_timeout=SHUTDOWN_S / 2)
    print("stopped", flush=True)
    if server.fatal is not None:
        raise SystemExit(1)
