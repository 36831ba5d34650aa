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
  message over the size limit, no message for ``--idle-s`` seconds, or a connection over ``--max-streams`` (close
  code 1013, try again later).

Who may connect: a request whose ``Host`` names none of the server's names (the loopback names, ``--host``, and
``--allow-host``) is refused with HTTP 403 (a DNS-rebinding page cannot reach it), and so is a WebSocket whose
``Origin`` is neither the server's own (the same scheme-less host and port as its ``Host``) nor listed with
``--allow-origin``: a web page the user visits cannot open streams. Clients that send no ``Origin`` (programs, not
browsers) are not affected. Each refusal is one line in the log.

One compute thread steps every stream that has a chunk ready in one batched cache-aware step
(:class:`streamtune.streaming.live.LiveStreams`); streams join and leave at any time, and each gets exactly the tokens
``StreamingRunner.streaming`` gives its audio. The server binds to 127.0.0.1 unless told otherwise and has no
authentication: put it behind your own proxy to expose it.
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


def load_bundle_model(bundle: Path, chunk_ms: int | None, device: str, expect_manifest_sha256: str | None = None):
    """The bundle's model (after ``verify`` passes) and the chunk mode to serve."""
    from streamtune.export.verify import VerifyError, verified
    from streamtune.model.chunks import chunk_modes

    try:  # the model verify decoded the sample with: read once, hashed, checked against the manifest
        _, model = verified(bundle, expect_manifest_sha256)
    except VerifyError as err:
        raise UserError(f"bundle {bundle} fails `python -m export verify`: {err}; export it again") from None
    model = model.to(device)
    modes = chunk_modes(model)
    if chunk_ms is None:
        return model, modes[0]
    for mode in modes:
        if mode.chunk_ms == chunk_ms:
            return model, mode
    raise UserError(f"--chunk-ms {chunk_ms}: the model streams at {', '.join(str(m.chunk_ms) for m in modes)} ms")


class StreamServer:
    """The aiohttp application: the page, the WebSocket endpoint, and the compute thread over LiveStreams."""

    def __init__(self, model, mode, max_streams: int, idle_s: float = 30.0, max_message_kib: int = 256,
                 device: str = "cpu", endpoint=None, allow_hosts: tuple[str, ...] | None = (),
                 allow_origins: tuple[str, ...] = (), max_backlog_s: float = 5.0):
        from streamtune.streaming.live import LiveStreams

        # endpoint: streamtune.streaming.endpoint.EndpointRules (None: one segment per stream, ended by `end`).
        self.live = LiveStreams(model, mode, device=device, max_batch=max(1, max_streams), endpoint=endpoint)
        self.mode = mode
        self.max_streams = max_streams
        self.idle_s = idle_s
        self.max_message_bytes = max_message_kib * 1024
        # None: any Host (a server bound to every address without --allow-host cannot know its names).
        self.allow_hosts = None if allow_hosts is None else {h.lower().strip("[]") for h in (*LOOPBACK, *allow_hosts)}
        self.allow_origins = {o.rstrip("/").lower() for o in allow_origins}
        self.clients: dict[str, asyncio.Queue] = {}
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
                    self.steps += 1
                    self.loop.call_soon_threadsafe(self._deliver, updates)
                else:
                    self.live.wait(0.05)
        except Exception as err:  # noqa: BLE001 - reported, then the whole server stops
            self.fatal = f"{type(err).__name__}: {err}"
            self._log(f"fatal: the compute loop stopped: {self.fatal}; shutting down")
            if self.on_fatal is not None:
                self.on_fatal()

    def _deliver(self, updates) -> None:
        for update in updates:
            queue = self.clients.get(update.stream)
            if queue is not None:
                queue.put_nowait(update)
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
        for sid, ws in list(self.sockets.items()):
            self.live.drop(sid)
            await self._error(ws, "shutting_down", "the server is shutting down; reconnect to another one",
                              close_code=1001)

    async def _on_cleanup(self, app) -> None:
        self._stop.set()  # the compute thread sees it after its step (within its 50 ms wait when idle)
        if self._thread is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join, SHUTDOWN_S / 2)

    def refusal(self, request) -> str | None:
        """Why a request may not be served (its Host or its Origin), or None."""
        from urllib.parse import urlsplit

        host = (request.host or "").lower()
        name = urlsplit(f"//{host}").hostname or ""
        if self.allow_hosts is not None and name not in self.allow_hosts:
            return (f"Host '{host}' is not one of this server's names ({', '.join(sorted(self.allow_hosts))}); "
                    "add it with --allow-host")
        origin = request.headers.get("Origin")
        if origin is not None and request.path == "/ws":
            origin = origin.rstrip("/").lower()
            own = {f"http://{host}", f"https://{host}"}
            if origin not in own and origin not in self.allow_origins:
                return f"Origin '{origin}' is not this server's own; allow a page's origin with --allow-origin"
        return None

    @staticmethod
    def _log(line: str) -> None:
        print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {line}", flush=True)

    async def _who_may_connect(self, app, handler):
        from aiohttp import web

        async def check(request):
            why = self.refusal(request)
            if why is not None:
                self._log(f"refused {request.remote} {request.method} {request.path}: {why}")
                return web.Response(status=403, text=why + "\n")
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

    async def _info(self, request):
        from aiohttp import web

        return web.json_response({"chunk_ms": self.mode.chunk_ms, "sample_rate": self.live.sample_rate,
                                  "streams": len(self.clients), "max_streams": self.max_streams})

    # ----- WebSocket -------------------------------------------------------------------------
    async def _error(self, ws, code: str, message: str, close_code: int = 1008) -> None:
        try:
            await ws.send_json({"type": "error", "code": code, "message": message})
            await ws.close(code=close_code, message=code.encode())
        except ConnectionError:  # the client has gone already
            pass

    async def _send_results(self, ws, queue: asyncio.Queue) -> bool:
        """Send the stream's results until its last final; False when the client reset the connection first."""
        try:
            await self._send_loop(ws, queue)
            return True
        except ConnectionError:  # the handler drops the stream
            return False

    async def _send_loop(self, ws, queue: asyncio.Queue) -> None:
        while True:
            update = await queue.get()
            message = {"type": "final" if update.final else "partial", "segment": update.segment,
                       "text": update.text, "tokens": update.tokens, "audio_s": round(update.audio_s, 4),
                       "words": [[w, round(a, 4), round(b, 4)] for w, a, b in update.words]}
            if update.error is not None:
                self._log(f"stream {update.stream} failed in a decoding step: {update.error}")
                await self._error(ws, "internal", "decoding this stream failed on the server; the stream is closed "
                                  "(other streams go on): try again", close_code=1011)
                return
            if update.final:
                message.update(start_s=update.start_s, end_s=update.end_s, reason=update.reason, last=update.last)
            await ws.send_json(message)
            if update.last:
                await ws.close()
                return

    async def _websocket(self, request):
        from aiohttp import WSMsgType, web

        ws = web.WebSocketResponse(max_msg_size=4 * self.max_message_bytes)
        await ws.prepare(request)
        if len(self.clients) >= self.max_streams:
            await self._error(ws, "over_capacity", f"the server is serving its maximum of {self.max_streams} "
                              "streams; try again later", close_code=1013)
            return ws
        sid = uuid.uuid4().hex
        queue: asyncio.Queue = asyncio.Queue()
        self.clients[sid] = queue
        self.sockets[sid] = ws
        self.progressed[sid] = asyncio.Event()
        fed = 0
        self.live.open(sid)
        await ws.send_json({"type": "ready", "sample_rate": self.live.sample_rate, "format": "pcm_s16le",
                            "chunk_ms": self.mode.chunk_ms, "stream": sid})
        sender = asyncio.create_task(self._send_results(ws, queue))
        ended = False
        try:
            while not ended:
                await self._backpressure(sid, fed, sender)
                try:
                    msg = await asyncio.wait_for(ws.receive(), timeout=self.idle_s)
                except asyncio.TimeoutError:
                    await self._error(ws, "idle", f"no message for {self.idle_s:g} s; stream closed")
                    break
                if msg.type == WSMsgType.BINARY:
                    data = msg.data
                    if len(data) > self.max_message_bytes:
                        await self._error(ws, "message_too_large", f"a binary message of {len(data)} bytes; the "
                                          f"limit is {self.max_message_bytes} (send audio in smaller pieces)",
                                          close_code=1009)
                        break
                    if len(data) % 2:
                        await self._error(ws, "bad_frame", f"a binary message of {len(data)} bytes: audio is 16-bit "
                                          "little-endian PCM, an even number of bytes per message", close_code=1003)
                        break
                    self.live.feed(sid, np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0)
                    fed += len(data) // 2
                elif msg.type == WSMsgType.TEXT:
                    kind = control_message(msg.data)
                    if kind == "endpoint":
                        self.live.cut(sid)
                        continue
                    if kind != "end":
                        await self._error(ws, "bad_message", 'text messages are {"type": "end"} or {"type": '
                                          '"endpoint"}; audio goes in binary messages', close_code=1003)
                        break
                    self.live.end(sid)
                    ended = True
                elif msg.type == WSMsgType.ERROR:
                    break  # aiohttp closed it (e.g. a message far over the limit: close code 1009)
                else:  # the client closed
                    break
            if ended:
                await self._until_final(ws, sender)
        finally:
            delivered = (sender.done() and not sender.cancelled() and sender.exception() is None
                         and sender.result())
            if not sender.done():
                sender.cancel()
            if not delivered:
                self.live.drop(sid)  # left before its last final (even after `end`): stop computing for it
            for table in (self.clients, self.sockets, self.covered, self.progressed):
                table.pop(sid, None)
        return ws

    async def _until_final(self, ws, sender: asyncio.Task) -> None:
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
            await self._error(ws, "bad_message", 'nothing may follow {"type": "end"}', close_code=1003)


def serve(bundle: Path, options: ServeOptions, expect_manifest_sha256: str | None = None) -> None:
    """Load, probe the capacity (unless ``max_streams`` is given), and serve until interrupted."""
    from aiohttp import web

    from streamtune.streaming.endpoint import EndpointRules, default_rules, describe
    from streamtune.streaming.live import probe_capacity

    model, mode = load_bundle_model(bundle, options.chunk_ms, options.device, expect_manifest_sha256)
    endpoint = default_rules(model.tokenizer) if options.endpoint == "auto" else EndpointRules(options.endpoint)
    endpoint = replace(endpoint, **options.endpoint_settings)  # checked again: contradictions are errors
    endpoint.token_id(model.tokenizer)  # a clear error before serving when eou is asked of a model without it
    max_streams = options.max_streams
    if max_streams is None:
        began = time.perf_counter()
        max_streams = max(1, probe_capacity(model, mode, options.device))
        print(f"capacity probe: {max_streams} streams step within half a {mode.chunk_ms} ms chunk on this machine "
              f"({time.perf_counter() - began:.1f} s; set --max-streams to choose)", flush=True)
    if options.host not in LOOPBACK:
        print(f"warning: listening on {options.host}: anyone who reaches it can stream (no authentication)",
              flush=True)
    wildcard = options.host in ("0.0.0.0", "::", "")
    if wildcard and not options.allow_hosts:
        print(f"warning: listening on every address ({options.host or 'all'}) without --allow-host: the Host header "
              "is not checked (name the addresses clients use with --allow-host)", flush=True)
    hosts = None if wildcard and not options.allow_hosts else (*([] if wildcard else [options.host]),
                                                                *options.allow_hosts)
    server = StreamServer(model, mode, max_streams, options.idle_s, options.max_message_kib, options.device,
                          endpoint, hosts, tuple(options.allow_origins), options.max_backlog_s)
    print(f"serving {bundle} at {mode.chunk_ms} ms chunks, at most {max_streams} streams, endpointing: "
          f"{describe(endpoint)}: "
          f"http://{options.host}:{options.port}/ (page), ws://{options.host}:{options.port}/ws", flush=True)
    server.on_fatal = lambda: os.kill(os.getpid(), signal.SIGTERM)  # aiohttp's graceful shutdown, then exit 1
    web.run_app(server.app(), host=options.host, port=options.port, print=None, shutdown_timeout=SHUTDOWN_S / 2)
    print("stopped", flush=True)
    if server.fatal is not None:
        raise SystemExit(1)
