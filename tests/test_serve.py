"""`python -m export serve`: real WebSocket clients on 127.0.0.1 against the server over an exported bundle.

Each client's final tokens must be exactly StreamingRunner.streaming's for its audio, whatever the number of
clients and the interleaving; bad clients get one clear error each and disturb no one; a real Chromium with a
fake microphone fed from a wav sees the words appear in the page.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import threading

import numpy as np
import pytest

from tests.helpers import REPO, value_of

ARTEFACTS = REPO / "outputs" / "test-artefacts"


class Running:
    """A StreamServer on an ephemeral port, in a thread with its own event loop."""

    def __init__(self, server):
        self.server = server
        self.port = None
        self._ready = threading.Event()
        self._stop = None
        self._loop = None
        self.thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)
        self.thread.start()
        assert self._ready.wait(120), "server did not start"

    async def _main(self):
        from aiohttp import web

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        runner = web.AppRunner(self.server.app())
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self):
        self._loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(30)


def _model(bundle):
    """The bundle's model in float64: a stream's tokens must be those of StreamingRunner.streaming on its audio
    whatever else is in its batch, and in float32 the batched kernels round differently for other batch shapes
    (encoder outputs ~1e-6 apart), which can flip a near-tie between two tokens; in float64 (~1e-15) the test
    checks the streaming itself (windows, caches, features, hypotheses), not the kernels' rounding."""
    from streamtune.serve.server import load_bundle_model

    model, mode = load_bundle_model(bundle, None, "cpu")
    return model.double(), mode


@pytest.fixture(scope="module")
def served(bundle):
    from streamtune.serve.server import StreamServer

    model, mode = _model(bundle)
    running = Running(StreamServer(model, mode, max_streams=16, idle_s=3.0, max_message_kib=64))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def utterances(bundle, words_overrides):
    """The ten-word test set as 16-bit PCM, and the tokens StreamingRunner.streaming gives each."""
    from streamtune.data.reading import load_utterances
    from streamtune.streaming.runner import StreamingRunner

    cuts = value_of(words_overrides, "data.test")
    model, mode = _model(bundle)
    runner = StreamingRunner(model, batch_size=4)
    out = []
    for utt in load_utterances(cuts):
        pcm = np.clip(np.round(utt.audio * 32768), -32768, 32767).astype("<i2")
        out.append((utt, pcm, pcm.astype(np.float32) / 32768))
    decoded = runner.streaming(mode, [runner.features(audio) for _, _, audio in out])
    return [(utt, pcm, tokens) for (utt, pcm, _), tokens in zip(out, decoded.tokens)]


async def _client(url: str, pcm: np.ndarray, seed: int, stop_after: int | None = None,
                  endpoint_at: int | None = None) -> dict:
    """Send ``pcm`` in pieces of random sizes as fast as the server takes them, then end; the messages back.
    ``endpoint_at``: ask for the end of the turn once that many samples are sent."""
    import aiohttp

    rng = np.random.default_rng(seed)
    got = {"partials": [], "final": None, "finals": [], "errors": []}
    async with aiohttp.ClientSession() as session, session.ws_connect(url + "/ws") as ws:
        ready = await ws.receive_json()
        assert ready["type"] == "ready" and ready["format"] == "pcm_s16le" and ready["sample_rate"] == 16000

        async def read():
            async for msg in ws:
                data = json.loads(msg.data)
                if data["type"] == "partial":
                    got["partials"].append(data)
                elif data["type"] == "final":
                    got["final"] = data
                    got["finals"].append(data)
                else:
                    got["errors"].append(data)

        reader = asyncio.create_task(read())
        pos = 0
        try:
            while pos < len(pcm) and not reader.done():  # (the server may close the stream with an error)
                n = int(rng.integers(200, 4000))
                await ws.send_bytes(pcm[pos:pos + n].tobytes())
                pos += n
                await asyncio.sleep(float(rng.uniform(0, 0.004)))
                if endpoint_at is not None and pos >= endpoint_at:
                    await ws.send_str(json.dumps({"type": "endpoint"}))
                    endpoint_at = None
                if stop_after is not None and pos >= stop_after:
                    await ws.close()  # leave mid-stream, without "end"
                    reader.cancel()
                    return got
            if not reader.done():
                await ws.send_str(json.dumps({"type": "end"}))
        except ConnectionError:  # the server closed the stream (an error message says why)
            pass
        await asyncio.wait_for(reader, 120)
    return got


def _run_clients(url: str, items: list, options: dict | None = None) -> list[dict]:
    """Every item's client at once; ``options[k]``: the k-th client's keyword arguments."""

    async def main():
        return await asyncio.gather(*[_client(url, pcm, seed=k, **(options or {}).get(k, {}))
                                      for k, pcm in enumerate(items)])
    return asyncio.run(main())


@pytest.mark.parametrize("clients", [1, 4, 16])
def test_concurrent_clients_get_exactly_the_runners_tokens(served, utterances, clients):
    chosen = [utterances[k % len(utterances)] for k in range(clients)]
    results = _run_clients(served.url, [pcm for _, pcm, _ in chosen])
    for (utt, _, tokens), got in zip(chosen, results):
        assert not got["errors"], got["errors"]
        assert got["final"]["tokens"] == tokens, utt.id
        assert got["partials"], "partial results arrive before the final"
        covered = [p["audio_s"] for p in got["partials"]]
        assert covered == sorted(covered) and covered[-1] <= len(utt.audio) / 16000 + 0.2
        words = got["final"]["words"]
        assert [w for w, _, _ in words] == got["final"]["text"].split()


def test_a_client_leaving_mid_stream_disturbs_no_one(served, utterances):
    import urllib.request

    chosen = utterances[:5]
    pcms = [pcm for _, pcm, _ in chosen]

    async def main():
        return await asyncio.gather(*[_client(served.url, pcm, seed=k, stop_after=len(pcm) // 2 if k == 2 else None)
                                      for k, pcm in enumerate(pcms)])
    results = asyncio.run(main())
    for k, ((utt, _, tokens), got) in enumerate(zip(chosen, results)):
        if k != 2:
            assert got["final"]["tokens"] == tokens, utt.id
    assert results[2]["final"] is None
    info = json.loads(urllib.request.urlopen(served.url + "/info").read())
    assert info["streams"] == 0, "the departed stream was dropped"
    assert _run_clients(served.url, [pcms[0]])[0]["final"]["tokens"] == chosen[0][2], "still serving"


@pytest.fixture(scope="module")
def served_turns(bundle):
    """The server cutting each session into turns with the default rules."""
    from streamtune.serve.server import StreamServer
    from streamtune.streaming.endpoint import EndpointRules

    model, mode = _model(bundle)
    running = Running(StreamServer(model, mode, max_streams=8, max_message_kib=64,
                                   endpoint=EndpointRules()))
    yield running
    running.stop()


PAGE_TOKEN = "page-token-" + "0123456789abcdef"


@pytest.fixture(scope="module")
def served_page(bundle):
    """The turn-taking server that asks for a token (--token-file): the page gets it from its URL's fragment."""
    from streamtune.serve.server import StreamServer
    from streamtune.streaming.endpoint import EndpointRules

    model, mode = _model(bundle)
    running = Running(StreamServer(model, mode, max_streams=8, max_message_kib=64, endpoint=EndpointRules(),
                                   token=PAGE_TOKEN))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def turn_sessions(bundle, words_overrides, tmp_path_factory):
    """Four sessions of 2-3 turns of the ten-word test set as PCM, and the runner's segments for each."""
    from streamtune.data.reading import load_utterances
    from streamtune.data.turns import TurnPlan, prepare_turns
    from streamtune.streaming.endpoint import EndpointRules
    from streamtune.streaming.runner import StreamingRunner
    from tests.helpers import seeded

    cuts = prepare_turns(value_of(words_overrides, "data.test"), tmp_path_factory.mktemp("turns"), sessions=4,
                         seed=seeded(5), plan=TurnPlan(turns=(2, 3)))
    model, mode = _model(bundle)
    runner = StreamingRunner(model, batch_size=4)
    pcms = [np.clip(np.round(u.audio * 32768), -32768, 32767).astype("<i2") for u in load_utterances(cuts)]
    out = runner.streaming(mode, [runner.features(p.astype(np.float32) / 32768) for p in pcms],
                           endpoint=EndpointRules())
    return list(zip(pcms, out.segments))


def test_a_session_of_several_turns_gets_the_runners_finals(served_turns, turn_sessions):
    """One final per turn, with exactly the tokens, segment numbers and reasons the runner gives the same audio
    with the same rules; partials name the open segment; the last final says so."""
    results = _run_clients(served_turns.url, [pcm for pcm, _ in turn_sessions])
    for (_, segments), got in zip(turn_sessions, results):
        assert not got["errors"], got["errors"]
        finals = got["finals"]
        assert [(f["segment"], f["tokens"], f["reason"], f["end_s"]) for f in finals] == \
            [(s.index, s.tokens, s.reason, s.end_s) for s in segments]
        assert [f["last"] for f in finals] == [False] * (len(finals) - 1) + [True]
        segments_seen = [p["segment"] for p in got["partials"]]
        assert segments_seen == sorted(segments_seen) and set(segments_seen) <= {s.index for s in segments}
    assert any(sum(1 for s in segments if s.tokens) >= 2 for _, segments in turn_sessions), \
        "no session was cut into turns"


def test_a_client_can_end_its_turn(served_turns, turn_sessions):
    pcm, _ = turn_sessions[0]
    got = _run_clients(served_turns.url, [pcm], {0: {"endpoint_at": len(pcm) // 3}})[0]
    reasons = [f["reason"] for f in got["finals"]]
    assert reasons.count("forced") == 1 and reasons[-1] == "end", reasons
    assert [f["segment"] for f in got["finals"]] == list(range(len(reasons)))


def test_clients_that_send_end_and_reset_leave_nothing_behind(bundle, utterances, capfd):
    """40 clients send their audio and `end`, then reset the connection before their final: no stream is left in
    the server or its compute state, no traceback in the log (a send to a reset socket once raised in the handler);
    then a client is served as before."""
    import time
    import urllib.request

    import aiohttp

    from streamtune.serve.server import StreamServer

    model, mode = _model(bundle)
    running = Running(StreamServer(model, mode, max_streams=64))
    pcm = utterances[0][1]
    try:
        async def one():
            session = aiohttp.ClientSession()
            ws = await session.ws_connect(running.url + "/ws")
            await ws.receive_json()
            await ws.send_bytes(pcm.tobytes())
            await ws.send_str(json.dumps({"type": "end"}))
            ws._response.connection.transport.abort()  # a reset, not a close handshake
            await session.close()

        async def main():
            await asyncio.gather(*[one() for _ in range(40)])
        asyncio.run(main())
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (running.server.clients or running.server.live.streams):
            time.sleep(0.1)
        info = json.loads(urllib.request.urlopen(running.url + "/info").read())
        assert info["streams"] == 0 and not running.server.live.streams
        assert _run_clients(running.url, [pcm])[0]["final"]["tokens"] == utterances[0][2]
    finally:
        running.stop()
    captured = capfd.readouterr()
    assert "Traceback" not in captured.out + captured.err and "never retrieved" not in captured.out + captured.err


def test_a_failing_step_fails_its_streams_only_and_serving_goes_on(bundle, utterances, capfd):
    """An exception in one batched step: the streams in that batch get an `internal` error and are closed, the
    server keeps serving (the next client gets exactly the runner's tokens), /healthz stays 200; a compute loop that
    dies makes /healthz 503. The clients are held back by a tight backlog, so a failed stream's handler must notice
    the failure while it waits (its slot is freed)."""
    import time
    import urllib.error
    import urllib.request

    from streamtune.serve.server import StreamServer

    model, mode = _model(bundle)
    running = Running(StreamServer(model, mode, max_streams=8, max_backlog_s=0.1))
    live = running.server.live
    real, calls = live._step_group, []

    def broken_once(*args):
        calls.append(1)
        if len(calls) == 1:  # the first batched step: there always is one
            raise RuntimeError("injected")
        return real(*args)

    live._step_group = broken_once
    # Sessions of four utterances: longer than the backlog allowed ahead (two 1120 ms chunks and 0.1 s), so that
    # the clients are held back while the failure happens.
    from streamtune.streaming.runner import StreamingRunner

    pcms = [np.concatenate([utterances[(k + j) % len(utterances)][1] for j in range(4)]) for k in range(3)]
    runner = StreamingRunner(model, batch_size=3)
    expected = runner.streaming(mode, [runner.features(p.astype(np.float32) / 32768) for p in pcms]).tokens
    try:
        results = _run_clients(running.url, pcms)
        failed = [r for r in results if r["errors"]]
        assert failed and all(r["errors"][0]["code"] == "internal" and r["final"] is None for r in failed)
        for tokens, r in zip(expected, results):
            assert r["errors"] or r["final"]["tokens"] == tokens
        assert _run_clients(running.url, [utterances[3][1]])[0]["final"]["tokens"] == utterances[3][2]
        assert json.loads(urllib.request.urlopen(running.url + "/info").read())["streams"] == 0
        assert json.loads(urllib.request.urlopen(running.url + "/healthz").read())["status"] == "ok"
        live.step = lambda: 1 / 0  # the loop itself dies
        live.open("poke")  # wakes it
        deadline = time.monotonic() + 10
        while running.server.fatal is None and time.monotonic() < deadline:
            time.sleep(0.05)
        with pytest.raises(urllib.error.HTTPError) as down:
            urllib.request.urlopen(running.url + "/healthz")
        assert down.value.code == 503 and "ZeroDivisionError" in down.value.read().decode()
    finally:
        running.stop()
    log = capfd.readouterr().out
    assert "RuntimeError: injected" in log and "Traceback" not in log


@pytest.mark.e2e
def test_a_flood_of_audio_is_held_back_not_buffered(bundle, utterances):
    """One client tries to send 1 GiB of audio (9 hours) as fast as it can: the server stops reading its socket once
    it is `max_backlog_s` ahead of decoding, so the audio it holds for the stream (queued and not yet featurised)
    stays within that bound plus one message and a chunk, the process' RSS grows by less than 64 MB (the server
    and the flooding client both live in it), the client's sends block, and a second client is served meanwhile."""
    import threading
    import time

    import aiohttp

    from streamtune.serve.server import StreamServer

    model, mode = _model(bundle)
    running = Running(StreamServer(model, mode, max_streams=4, max_backlog_s=2.0))
    live, rate = running.server.live, 16000
    real_step = live.step

    def slow_step():  # a loaded server: at most ~20x real time, whatever this machine's speed
        time.sleep(0.05)
        return real_step()

    live.step = slow_step
    # 1 GiB, sent from one 2-minute piece over and over (the test does not hold a GiB itself).
    piece = np.concatenate([utterances[0][1]] * (120 * rate // len(utterances[0][1])))
    total = (1 << 30) // 2
    held, flooder, done, rss = [0], [], threading.Event(), [_rss(), 0]

    def watch():  # the audio the server holds for the flooding stream: queued, and taken in but not featurised
        while not done.is_set():
            rss[1] = max(rss[1], _rss())
            if flooder:
                queued = sum(len(x[2]) for x in list(live._inbox) if x[0] == "feed" and x[1] == flooder[0])
                stream = live.streams.get(flooder[0])
                held[0] = max(held[0], queued + (len(stream.audio) if stream is not None else 0))
            time.sleep(0.01)

    async def flood():
        sent = 0
        async with aiohttp.ClientSession() as session, session.ws_connect(running.url + "/ws") as ws:
            flooder.append((await ws.receive_json())["stream"])
            began = time.monotonic()
            while sent < total and time.monotonic() - began < 4.0:
                at = sent % (len(piece) - 3200)
                await ws.send_bytes(piece[at:at + 3200].tobytes())  # 0.2 s per message
                sent += 3200
        return sent

    async def main():
        return await asyncio.gather(flood(), _client(running.url, utterances[1][1], seed=1))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        sent, other = asyncio.run(main())
    finally:
        done.set()
        running.stop()
    assert sent < total / 100, f"{sent / rate:.0f} s of audio went out in 4 s: nothing held the client back"
    assert held[0] <= (2.0 + 0.2 + mode.chunk_ms / 1000 + 0.5) * rate, held[0] / rate
    assert rss[1] - rss[0] < 64 << 20, f"RSS grew by {(rss[1] - rss[0]) >> 20} MB"
    assert other["final"]["tokens"] == utterances[1][2]


def _rss() -> int:
    """This process' resident set, in bytes (/proc)."""
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


@pytest.mark.e2e
def test_sigterm_tells_every_stream_and_exits_within_five_seconds(bundle, utterances):
    """`python -m export serve` as a user runs it, two clients streaming without pause and a third flooding it
    with audio as fast as it can (held back): SIGTERM closes all three with a `shutting_down` error and the process
    exits 0 within 5 s, without a traceback."""
    import signal
    import socket
    import subprocess
    import sys
    import time

    import aiohttp

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "export", "serve", "--bundle", str(bundle), "--port", str(port),
                             "--max-streams", "4"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        for line in proc.stdout:
            if line.startswith("serving "):
                break
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # "serving" is said just before the socket listens
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        pcm = np.concatenate([utterances[0][1]] * 50)

        async def stream(session, results, flood=False):
            async with session.ws_connect(f"http://127.0.0.1:{port}/ws") as ws:
                await ws.receive_json()
                try:
                    for k in range(0, 1000 * len(pcm) if flood else len(pcm), 1600):
                        at = k % (len(pcm) - 1600)
                        await ws.send_bytes(pcm[at:at + 1600].tobytes())
                        if not flood:
                            await asyncio.sleep(0.01)
                except ConnectionError:
                    pass
                async for msg in ws:
                    data = json.loads(msg.data)
                    if data["type"] == "error":
                        results.append(data["code"])

        async def main():
            results = []
            async with aiohttp.ClientSession() as session:
                clients = [asyncio.create_task(stream(session, results, flood=k == 2)) for k in range(3)]
                await asyncio.sleep(2.0)
                began = time.monotonic()
                proc.send_signal(signal.SIGTERM)
                await asyncio.wait_for(asyncio.gather(*clients), 30)
            return results, began

        results, began = asyncio.run(main())
        rest = proc.communicate(timeout=30)[0]
        took = time.monotonic() - began
    finally:
        proc.kill()
    assert results == ["shutting_down"] * 3
    assert proc.returncode == 0 and took <= 5.0, (proc.returncode, took)
    assert "Traceback" not in rest and "stopped" in rest, rest[-2000:]


def _one_message(url: str, send) -> tuple[dict, int | None]:
    """Connect, let ``send(ws)`` misbehave, return (the error message, the close code); the (empty) finals of
    turns it ended are passed over."""
    import aiohttp

    async def main():
        async with aiohttp.ClientSession() as session, session.ws_connect(url + "/ws") as ws:
            first = await ws.receive_json()
            if first["type"] == "ready":
                await send(ws)
                first = await ws.receive_json()
                while first["type"] == "final" and not first["last"]:
                    first = await ws.receive_json()
            closing = await ws.receive()
            return first, ws.close_code if closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED) \
                else closing.type
    return asyncio.run(main())


def test_bad_clients_get_one_clear_error_each(served):
    async def odd(ws):
        await ws.send_bytes(b"\x01\x02\x03")

    async def chatter(ws):
        await ws.send_str("hello")

    async def too_big(ws):
        await ws.send_bytes(b"\x00" * (64 * 1024 + 2))

    async def silent(ws):
        await asyncio.sleep(3.5)

    async def no_audio(ws):  # messages, but no audio: idle all the same
        for _ in range(8):
            await ws.send_str(json.dumps({"type": "endpoint"}))
            await asyncio.sleep(0.5)

    async def deep(ws):  # once a RecursionError in the server and a close without a word
        await ws.send_str("[" * 200_000)

    cases = {odd: ("bad_frame", "even number of bytes", 1003), chatter: ("bad_message", '{"type": "end"} or', 1003),
             deep: ("bad_message", '{"type": "end"} or', 1003),
             too_big: ("message_too_large", "limit is 65536", 1009), silent: ("idle", "no audio for 3 s", 1008),
             no_audio: ("idle", "no audio for 3 s", 1008)}
    for send, (code, text, close) in cases.items():
        error, closed = _one_message(served.url, send)
        assert error["type"] == "error" and error["code"] == code and text in error["message"], error
        assert closed == close, (code, closed)


def test_pages_of_other_origins_and_other_host_names_are_refused(bundle, capfd):
    """A page the user visits elsewhere cannot open a stream (its Origin), nor can a DNS-rebinding page (its Host);
    the server's own page and a listed origin can; each refusal is one log line."""
    import urllib.error
    import urllib.request

    import aiohttp

    from streamtune.serve.server import StreamServer

    model, mode = _model(bundle)
    running = Running(StreamServer(model, mode, max_streams=4, allow_origins=("https://app.example",)))
    port = running.port
    cases = {"another site's page": {"Origin": "http://evil.example"},
             "a rebinding page": {"Host": f"evil.example:{port}", "Origin": f"http://evil.example:{port}"},
             "the server's own page": {"Origin": running.url}, "a listed origin": {"Origin": "https://app.example"},
             "a program (no Origin)": {}}
    try:
        async def main():
            out = {}
            async with aiohttp.ClientSession() as session:
                for name, headers in cases.items():
                    try:
                        async with session.ws_connect(running.url + "/ws", headers=headers) as ws:
                            out[name] = (await ws.receive_json())["type"]
                    except aiohttp.WSServerHandshakeError as err:
                        out[name] = err.status
            return out
        assert asyncio.run(main()) == {"another site's page": 403, "a rebinding page": 403,
                                       "the server's own page": "ready", "a listed origin": "ready",
                                       "a program (no Origin)": "ready"}
        request = urllib.request.Request(running.url + "/info", headers={"Host": "evil.example"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request)
        assert refused.value.code == 403 and "--allow-host" in refused.value.read().decode()
    finally:
        running.stop()
    out = capfd.readouterr().out
    log = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    refused = [(r["status"], r["path"]) for r in log if r["event"] == "refused"]
    assert refused == [(403, "/ws"), (403, "/ws"), (403, "/info")] and "Traceback" not in out, out[-3000:]


def test_over_capacity_is_refused_clearly(bundle, utterances):
    import aiohttp

    from streamtune.serve.server import StreamServer

    model, mode = _model(bundle)
    running = Running(StreamServer(model, mode, max_streams=2))
    try:
        async def main():
            async with aiohttp.ClientSession() as session:
                held = [await session.ws_connect(running.url + "/ws") for _ in range(2)]
                for ws in held:
                    assert (await ws.receive_json())["type"] == "ready"
                extra = await session.ws_connect(running.url + "/ws")
                refused = await extra.receive_json()
                await extra.receive()
                code = extra.close_code
                for ws in held:
                    await ws.close()
                return refused, code
        refused, code = asyncio.run(main())
        assert refused["code"] == "over_capacity" and "maximum of 2 streams" in refused["message"] and code == 1013
        # Once the two have left, a new client is served.
        assert _run_clients(running.url, [utterances[0][1]])[0]["final"]["tokens"] == utterances[0][2]
    finally:
        running.stop()


def _onnx_server(bundle, endpoint=None):
    from streamtune.serve.server import StreamServer, load_bundle, onnx_streams

    model, mode, manifest = load_bundle(bundle, None, "cpu")
    live = onnx_streams(bundle, model, mode, "onnx", manifest, endpoint)
    return Running(StreamServer(model, mode, max_streams=16, live=live)), mode


def _onnx_reference(bundle, mode, pcms, endpoint=None):
    """What OrtStreamingDecoder (export's and verify's decoder) gives each audio, export-fed (features in float64,
    as the backend computes them, then float32): tokens, or with ``endpoint`` the segments' tokens."""
    from streamtune.export.onnx_decoder import OrtStreamingDecoder
    from streamtune.serve.server import load_bundle_model
    from streamtune.streaming.endpoint import Turns
    from streamtune.streaming.runner import StreamingRunner

    model, _ = load_bundle_model(bundle, None, "cpu")
    runner = StreamingRunner(model.double(), batch_size=1, feeding="export")
    decoder = OrtStreamingDecoder(bundle / "onnx" / f"{mode.chunk_ms}ms")
    frame_s = runner.hop_samples() * runner.subsampling / 16000
    out = []
    for pcm in pcms:
        feats = runner.features(pcm.astype(np.float64) / 32768).float().numpy()
        if endpoint is None:
            out.append(decoder.decode(feats)[0])
            continue
        segments = []
        decoder.decode(feats, turns=Turns(endpoint, frame_s), segments=segments,
                       silence_frames=runner.silence_frames(), hop_s=runner.hop_samples() / 16000)
        out.append([seg.tokens for seg in segments])
    return out


def test_the_onnx_backend_gives_each_client_the_onnx_decoders_tokens(bundle, utterances):
    """`--backend onnx`: the bundle's ONNX graphs step every stream with a chunk ready in one batch; each of 8
    clients sending at once, in pieces of random sizes, gets exactly the tokens OrtStreamingDecoder (what export
    checks against PyTorch and verify against the sample) gives its audio alone; with turn-taking, exactly its
    segments."""
    from streamtune.streaming.endpoint import EndpointRules

    pcms = [pcm for _, pcm, _ in utterances[:8]]
    running, mode = _onnx_server(bundle)
    try:
        results = _run_clients(running.url, pcms)
    finally:
        running.stop()
    assert [r["final"]["tokens"] for r in results] == _onnx_reference(bundle, mode, pcms)
    # Turns of at most a second: sessions of two utterances and a second of silence are cut, whatever the model.
    rules = EndpointRules(trailing_silence_s=0.5, leading_silence_s=0.6, max_segment_s=1.0)
    sessions = [np.concatenate([pcms[k], np.zeros(16000, "<i2"), pcms[k + 1]]) for k in range(0, 8, 2)]
    running, mode = _onnx_server(bundle, rules)
    try:
        results = _run_clients(running.url, sessions)
    finally:
        running.stop()
    expected = _onnx_reference(bundle, mode, sessions, rules)
    assert [[f["tokens"] for f in r["finals"]] for r in results] == expected
    assert all(len(segments) > 1 for segments in expected)


def _raw_client(port: int, rcvbuf: int = 4096):
    """A WebSocket client on a plain socket with a small receive buffer: the handshake is read byte by byte (so
    nothing after it is), then the caller only ever sends."""
    import base64
    import socket

    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def _binary_frame(payload: bytes) -> bytes:
    """A masked binary WebSocket frame (clients must mask)."""
    n, mask = len(payload), os.urandom(4)
    size = bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + n.to_bytes(2, "big")
    data = np.frombuffer(payload, np.uint8) ^ np.resize(np.frombuffer(mask, np.uint8), n)
    return bytes([0x82]) + size + mask + data.tobytes()


def _metrics(url: str, headers: dict | None = None) -> dict[str, float]:
    """/metrics parsed by prometheus_client's own parser: {name{labels}: value}."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(urllib.request.Request(url + "/metrics", headers=headers or {})).read().decode()
    return {name + ("{" + ",".join(f"{k}={v}" for k, v in sorted(labels.items())) + "}" if labels else ""): value
            for family in text_string_to_metric_families(text) for name, labels, value, *_ in family.samples}


@pytest.mark.e2e
def test_a_client_that_never_reads_is_dropped_and_what_waits_for_it_is_bounded(bundle, utterances, capfd):
    """A client streams audio as fast as the server takes it and never reads a result: once its socket buffers
    are full, the server's next send cannot go out; after `send_timeout_s` the client is dropped (its stream and
    slot freed, one log line, counted in /metrics). Meanwhile the results waiting for it stay one partial plus its
    finals (partials are replaced, not queued), and another client gets exactly the runner's tokens."""
    import threading
    import time

    from streamtune.serve.server import StreamServer

    model, mode = _model(bundle)
    # Small socket buffers: the ten-word model's results fill them within seconds (256 KiB by default).
    running = Running(StreamServer(model, mode, max_streams=4, send_timeout_s=2.0, socket_buffer_kib=16))
    server, most, state = running.server, [0], {"sent_s": 0.0, "failed_at": None}
    pcm = np.concatenate([utterances[k % len(utterances)][1] for k in range(40)])  # a minute or so
    frames = [_binary_frame(pcm[k:k + 3200].tobytes()) for k in range(0, len(pcm), 3200)]
    began = time.monotonic()

    def never_reads():
        sock = _raw_client(running.port)
        sock.settimeout(90)
        try:
            for k, frame in enumerate(frames * 20):
                sock.sendall(frame)
                state["sent_s"] = (k + 1) * 0.2
        except OSError:  # the server aborted the connection
            state["failed_at"] = time.monotonic() - began
        finally:
            sock.close()

    def watch():
        while state["failed_at"] is None and time.monotonic() - began < 120:
            most[0] = max([most[0], *(len(o) for o in list(server.clients.values()))])
            time.sleep(0.005)

    threads = [threading.Thread(target=f, daemon=True) for f in (never_reads, watch)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        assert _run_clients(running.url, [utterances[1][1]])[0]["final"]["tokens"] == utterances[1][2]
        threads[0].join(120)
        assert state["failed_at"] is not None, f"still connected after sending {state['sent_s']:.0f} s of audio"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (server.clients or server.live.streams):
            time.sleep(0.05)
        assert not server.clients and not server.live.streams
        metrics = _metrics(running.url)
        assert metrics['streamtune_dropped_clients_total{reason=not_reading}'] == 1.0, metrics
        assert metrics["streamtune_streams"] == 0.0
    finally:
        running.stop()
    assert most[0] <= 2, f"{most[0]} results waited for one client"  # a partial, and a final at most
    log = [json.loads(line) for line in capfd.readouterr().out.splitlines() if line.startswith("{")]
    dropped = [r for r in log if r["event"] == "dropped"]
    assert len(dropped) == 1 and "unread for 2 s" in dropped[0]["reason"], log
    print(f"dropped after {state['failed_at']:.1f} s, having sent {state['sent_s']:.0f} s of audio")


def test_a_token_is_asked_of_streams_and_metrics_and_never_logged(bundle, utterances, capfd):
    """--token-file: a WebSocket or /metrics request without the token (or with another) gets 401 and one log
    line; the header or the page's subprotocol opens a stream; the page, /info and /healthz stay open."""
    import urllib.error
    import urllib.request

    import aiohttp

    from streamtune.serve.server import StreamServer

    token = "s3cret-" + "x" * 24
    model, mode = _model(bundle)
    running = Running(StreamServer(model, mode, max_streams=4, token=token))
    try:
        async def main():
            out = {}
            async with aiohttp.ClientSession() as session:
                for name, kwargs in {"none": {}, "wrong": {"headers": {"Authorization": "Bearer " + "y" * 31}},
                                     "header": {"headers": {"Authorization": f"Bearer {token}"}},
                                     "page": {"protocols": (f"bearer.{token}",)}}.items():
                    try:
                        async with session.ws_connect(running.url + "/ws", **kwargs) as ws:
                            out[name] = ((await ws.receive_json())["type"], ws.protocol)
                    except aiohttp.WSServerHandshakeError as err:
                        out[name] = err.status
            return out
        assert asyncio.run(main()) == {"none": 401, "wrong": 401, "header": ("ready", None),
                                       "page": ("ready", f"bearer.{token}")}
        for path in ("/", "/info", "/healthz"):
            assert urllib.request.urlopen(running.url + path).status == 200
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(running.url + "/metrics")
        assert refused.value.code == 401
        assert _metrics(running.url, {"Authorization": f"Bearer {token}"})["streamtune_refused_total{reason=token}"] \
            == 3.0
    finally:
        running.stop()
    out = capfd.readouterr().out
    log = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert [r["status"] for r in log if r["event"] == "refused"] == [401, 401, 401]
    assert token not in out


@pytest.mark.parametrize("content, needle", [(None, "cannot be read"), ("short", "16-512 letters"),
                                             ("two words " * 4, "16-512 letters"), ("dir", "not a regular file")])
def test_serve_refuses_a_token_file_it_cannot_use_in_one_line(bundle, tmp_path, capsys, content, needle):
    from streamtune.stages.export.__main__ import main
    from tests.helpers import one_line_error

    path = tmp_path / "token"
    if content == "dir":
        path.mkdir()
    elif content is not None:
        path.write_text(content + "\n")
    code = main(["serve", "--bundle", str(bundle), "--token-file", str(path)])
    one_line_error(code, capsys.readouterr().err, "--token-file", needle)


def test_serve_refuses_a_backend_the_bundle_lacks_in_one_line(bundle, capsys):
    from streamtune.stages.export.__main__ import main
    from tests.helpers import one_line_error

    code = main(["serve", "--bundle", str(bundle), "--backend", "onnx-int8", "--max-streams", "1"])
    one_line_error(code, capsys.readouterr().err, "--backend onnx-int8: the bundle has no onnx/", "export.int8=true")


def test_a_session_ends_at_its_maximum_with_its_last_final(bundle, utterances):
    """--max-session-s: a client that streams on is sent its last final (reason `max_session`) at the limit and
    closed; what it sent before is decoded as if it had sent `end` then."""
    import aiohttp

    from streamtune.serve.server import StreamServer

    model, mode = _model(bundle)
    running = Running(StreamServer(model, mode, max_streams=4, max_session_s=2.0))
    pcm = np.concatenate([u[1] for u in utterances] * 4)
    try:
        async def main():
            got = []
            async with aiohttp.ClientSession() as session, session.ws_connect(running.url + "/ws") as ws:
                await ws.receive_json()

                async def read():
                    async for msg in ws:
                        got.append(json.loads(msg.data))
                reader = asyncio.create_task(read())
                try:
                    for k in range(0, len(pcm), 1600):  # 0.1 s every 0.05 s: on and on
                        await ws.send_bytes(pcm[k:k + 1600].tobytes())
                        await asyncio.sleep(0.05)
                except ConnectionError:
                    pass
                await asyncio.wait_for(reader, 60)
            return got
        got = asyncio.run(main())
    finally:
        running.stop()
    finals = [m for m in got if m["type"] == "final"]
    assert len(finals) == 1 and finals[0]["last"] and finals[0]["reason"] == "max_session", got[-3:]
    assert 2.0 <= finals[0]["audio_s"] < len(pcm) / 16000 / 2, finals[0]["audio_s"]


def _browser():
    """(chromium, chromedriver) or a skip saying which is missing: `make test` installs both."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    missing = [name for name, path in (("chromium", chromium), ("chromium-driver", driver)) if not path]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed (`make setup` installs them with apt-get)")
    return chromium, driver


@pytest.mark.e2e
def test_browser_microphone_page_shows_the_words(served_page, utterances, tmp_path):
    """Debian's Chromium opens the page (with the server's token in its URL's fragment) with a fake microphone
    playing a test utterance; the page streams it, shows
    partial results, then exactly the final the server sent (read from Chromium's own log of WebSocket frames).
    The browser resamples the microphone, so the audio differs from the file's: against the reference, most
    words (a tolerance any trained ten-word model meets), not the runner's exact tokens."""
    import soundfile as sf
    from selenium import webdriver
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from streamtune.data.text import normalise_text

    chromium, driver = _browser()
    utt, pcm, tokens = max(utterances, key=lambda u: len(u[0].text.split()))
    wav = tmp_path / "mic.wav"
    silence = np.zeros(16000, dtype="<i2")
    sf.write(wav, np.concatenate([silence, pcm, silence, silence]), 16000, subtype="PCM_16")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--use-fake-ui-for-media-stream",
                "--use-fake-device-for-media-stream", f"--use-file-for-fake-audio-capture={wav}%noloop",
                "--autoplay-policy=no-user-gesture-required"):
        options.add_argument(arg)
    browser = webdriver.Chrome(service=Service(driver), options=options)
    words = lambda text: set(normalise_text(text, lowercase=True, strip_punctuation=True).split())  # noqa: E731
    try:
        browser.get(served_page.url + f"/#token={PAGE_TOKEN}")  # the server asks for a token
        WebDriverWait(browser, 30).until(lambda b: b.find_element(By.ID, "chunk").text.isdigit())
        browser.find_element(By.ID, "mic").click()
        WebDriverWait(browser, 60).until(lambda b: b.find_element(By.ID, "partial").text)
        partial = browser.find_element(By.ID, "partial").text
        # The microphone file ends in two seconds of silence: wait until it has all been heard.
        WebDriverWait(browser, 60).until(lambda b: float(b.execute_script(
            "return (typeof ctx !== 'undefined' && ctx) ? ctx.currentTime : 0") or 0) > len(pcm) / 16000 + 2.5)
        browser.find_element(By.ID, "mic").click()  # stop: "end", then the final result
        # Every turn's final shown: the page says "done" once the last one ("last": true) is in.
        try:
            WebDriverWait(browser, 60).until(lambda b: b.find_element(By.ID, "status").text == "done")
        except TimeoutException:
            frames = [json.loads(e["message"])["message"] for e in browser.get_log("performance")]
            sockets = [(f["method"], f["params"].get("response", {}).get("payloadData", "")[:160])
                       for f in frames if "webSocket" in f["method"]
                       and f["params"].get("response", {}).get("opcode", 1) == 1]  # not the audio
            pytest.fail(f"no last final in 60 s; the page says {browser.find_element(By.ID, 'status').text!r}; "
                        f"server: fatal={served_page.server.fatal!r}; WebSocket events: {sockets[-40:]}")
        final = browser.find_element(By.ID, "final").text
        latency = browser.find_element(By.ID, "latency").text
        frames = [json.loads(e["message"])["message"] for e in browser.get_log("performance")]
        ARTEFACTS.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(ARTEFACTS / "serve_page.png"))
    finally:
        browser.quit()
    received = [json.loads(f["params"]["response"]["payloadData"]) for f in frames
                if f["method"] == "Network.webSocketFrameReceived" and f["params"]["response"]["opcode"] == 1]
    finals = [m for m in received if m["type"] == "final"]
    # One final per turn the server closed (the trailing silence may end the turn before "end"), the last one last.
    assert [m["last"] for m in finals] == [False] * (len(finals) - 1) + [True], finals
    assert [m["segment"] for m in finals] == list(range(len(finals)))
    assert final == " ".join(m["text"] for m in finals if m["text"]), (final, finals)
    assert partial and any(m["type"] == "partial" for m in received)
    assert len(words(final) & words(utt.text)) >= len(words(utt.text)) / 2, (utt.text, final)
    assert latency.isdigit(), latency
    assert os.path.getsize(ARTEFACTS / "serve_page.png") > 1000
