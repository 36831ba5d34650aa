"""`python -m export serve` under load: N real-time WebSocket clients on 127.0.0.1, end-to-end latency and capacity.

    python bench/serve.py [--write] [--bundle dist/tiny_cpu] [--chunk-ms 160 560] [--window-s 12] [--full/--no-full]

For each chunk mode and backend (``--backend pytorch`` and ``onnx``), the server runs in its own process
(``python -m export serve`` on the demo bundle, which ``make demo`` writes; for ``--full``, the target's 24-layer
geometry with random weights in the same server class, no bundle, at 560 ms: PyTorch, and its ONNX export in fp32
and int8 (``export_mode``, ``quantize_dir``) through the ONNX Runtime backend) and N clients in this process each
stream demo test utterances one after another, paced at real time (40 ms of 16-bit PCM every 40 ms), for
``--window-s`` seconds. Measured:

* partial latency: from sending the audio a partial result covers (its ``audio_s``) to receiving that partial;
* final latency: from sending the last sample (and ``end``) to receiving the final result;
* the server's CPU (cores, from /proc) over the window.

N doubles from 1 until the p95 partial latency passes chunk + 100 ms (or N reaches ``--max-clients``); the largest
N that stays within it is the server's real-time capacity on this machine. Beside it, in the same run, the offline
capacity: the most streams whose batched step (``StreamingRunner``, features precomputed, no server) keeps p95
<= the chunk (as bench/streaming.py (c) measures); their ratio is the server's overhead. Client and server share the
2 cores: the clients' own CPU is part of the load, as it would not be on a real deployment.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

PIECE_S = 0.04


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_server(command: list[str], threads: int) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            raise SystemExit(f"server exited ({proc.returncode})")
        if "serving" in line:
            # Keep reading its output (its JSON log: a line per connection): a pipe nobody reads fills up and
            # blocks the server's event loop on its next print.
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
            return proc
    proc.kill()
    raise SystemExit("server did not start in 10 minutes")


async def client(url: str, utterances: list[np.ndarray], stop_at: float, seed: int, stats: dict) -> None:
    import aiohttp

    rng = np.random.default_rng(seed)
    piece = int(PIECE_S * 16000)
    async with aiohttp.ClientSession() as session:
        await asyncio.sleep(float(rng.uniform(0, 0.5)))  # clients do not start in lockstep
        while time.monotonic() < stop_at:
            pcm = utterances[int(rng.integers(len(utterances)))]
            sent_at: list[tuple[int, float]] = []
            async with session.ws_connect(url, max_msg_size=0) as ws:
                ready = await ws.receive_json()
                if ready["type"] != "ready":
                    stats["refused"] += 1
                    return

                async def read():
                    async for msg in ws:
                        data = json.loads(msg.data)
                        now = time.monotonic()
                        covered = int(round(data.get("audio_s", 0) * 16000))
                        if data["type"] == "partial":
                            sent = next((t for n, t in sent_at if n >= covered), None)
                            if sent is not None:
                                stats["partial"].append(now - sent)
                        elif data["type"] == "final":
                            stats["final"].append(now - sent_at[-1][1])
                        else:
                            stats["errors"].append(data)

                reader = asyncio.create_task(read())
                start = time.monotonic()
                for k, pos in enumerate(range(0, len(pcm), piece)):
                    await asyncio.sleep(max(0.0, start + k * PIECE_S - time.monotonic()))
                    await ws.send_bytes(pcm[pos:pos + piece].tobytes())
                    sent_at.append((min(pos + piece, len(pcm)), time.monotonic()))
                await ws.send_str('{"type": "end"}')
                await asyncio.wait_for(reader, 60)


def load_level(url: str, pid: int, utterances, clients: int, window_s: float) -> dict:
    stats = {"partial": [], "final": [], "errors": [], "refused": 0}

    async def main():
        stop_at = time.monotonic() + window_s
        await asyncio.gather(*[client(url, utterances, stop_at, k, stats) for k in range(clients)])

    cpu0, own0, t0 = cpu_seconds(pid), time.process_time(), time.monotonic()
    asyncio.run(main())
    elapsed = time.monotonic() - t0
    p = lambda xs, q: 1000 * float(np.percentile(xs, q)) if xs else float("nan")  # noqa: E731
    return {"clients": clients, "partial_p50": p(stats["partial"], 50), "partial_p95": p(stats["partial"], 95),
            "final_p50": p(stats["final"], 50), "final_p95": p(stats["final"], 95),
            "server_cores": (cpu_seconds(pid) - cpu0) / elapsed,
            "client_cores": (time.process_time() - own0) / elapsed, "partials": len(stats["partial"]),
            "finals": len(stats["final"]), "errors": len(stats["errors"]) + stats["refused"]}


def offline_capacity(model, chunk_ms: int, feats, limit: int) -> int:
    """The most streams whose batched step keeps p95 <= the chunk (doubling), the runner alone."""
    from streamtune.model.chunks import mode_by_ms
    from streamtune.streaming.runner import StreamingRunner

    mode = mode_by_ms(model, chunk_ms)
    best, n = 0, 1
    while n <= limit:
        batch = [feats[k % len(feats)] for k in range(n)]
        times: list[float] = []
        StreamingRunner(model, batch_size=n).streaming(mode, batch, on_step=lambda t: times.append(
            t.encoder_s + t.decoder_s) or len(times) >= 12)
        if float(np.percentile(times[2:], 95)) > chunk_ms / 1000:
            break
        best, n = n, 2 * n
    return best


def full_model(tmp: Path):
    """The full geometry, random weights, its joint's blank raised (bench.full_model)."""
    from bench.full_model import build_full, random_tokenizer, silence_joint

    tokenizer = tmp / "tokenizer"
    model = build_full(tokenizer if tokenizer.is_dir() else random_tokenizer(tmp))
    silence_joint(model)
    return model


def export_full(root: Path, chunk_ms: int) -> None:
    """The full model's ONNX graphs for one mode, fp32 and int8 (what ``export`` writes into a bundle)."""
    from streamtune.export.onnx_export import export_mode, quantize_dir
    from streamtune.model.chunks import mode_by_ms

    model = full_model(root)
    export_mode(model, mode_by_ms(model, chunk_ms), root / "fp32")
    quantize_dir(root / "fp32", root / "int8")


def serve_full(port: int, chunk_ms: int, backend: str, root: Path) -> None:
    """Child: the full geometry with random weights behind the same server class (no bundle); with an ONNX
    backend, over ``export_full``'s graphs in ``root``."""
    from aiohttp import web

    from streamtune.model.chunks import mode_by_ms
    from streamtune.serve.ort_streams import OrtLiveStreams
    from streamtune.serve.server import StreamServer

    model = full_model(root)
    mode = mode_by_ms(model, chunk_ms)
    live = None if backend == "pytorch" else OrtLiveStreams(
        model, mode, root / ("int8" if backend == "onnx-int8" else "fp32"), threads=os.cpu_count() or 1)
    server = StreamServer(model, mode, max_streams=4096, live=live)
    print(f"serving the full geometry at {chunk_ms} ms ({backend})", flush=True)
    web.run_app(server.app(), host="127.0.0.1", port=port, print=None)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", default="dist/tiny_cpu")
    parser.add_argument("--cuts", default="outputs/demo/data/cuts_test.jsonl.gz")
    parser.add_argument("--chunk-ms", type=int, nargs="+", default=[160, 560])
    parser.add_argument("--window-s", type=float, default=12.0)
    parser.add_argument("--max-clients", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--full", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--backends", nargs="+", default=["pytorch", "onnx"], help="for the demo bundle")
    parser.add_argument("--child-full", nargs=4, metavar=("PORT", "CHUNK_MS", "BACKEND", "ROOT"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_full:
        port, ms, backend, root = args.child_full
        serve_full(int(port), int(ms), backend, Path(root))
        return 0

    import torch

    from bench import publish, wait_quiet
    from streamtune.data.reading import load_utterances
    from streamtune.model.build import load_model
    from streamtune.streaming.runner import StreamingRunner

    torch.set_num_threads(args.threads)
    bundle, cuts = REPO / args.bundle, REPO / args.cuts
    if not (bundle / "model.nemo").exists() or not cuts.exists():
        raise SystemExit(f"{bundle} or {cuts} missing: run `make demo` first")
    utts = load_utterances(cuts)
    pcms = [np.clip(np.round(u.audio * 32768), -32768, 32767).astype("<i2") for u in utts]
    model = load_model(bundle / "model.nemo")
    runner = StreamingRunner(model)
    feats = [runner.features(u.audio) for u in utts]
    setups = [(f"demo, {backend}", ms, [sys.executable, "-m", "export", "serve", "--bundle", str(bundle),
                                        "--chunk-ms", str(ms), "--max-streams", "4096", "--port", "{port}",
                                        "--backend", backend])
              for backend in args.backends for ms in args.chunk_ms]
    tmp = tempfile.TemporaryDirectory()
    if args.full:
        print("exporting the full geometry (fp32, int8) ...", flush=True)
        export_full(Path(tmp.name), 560)
        for backend in ("pytorch", "onnx", "onnx-int8"):
            setups.append((f"full (random weights), {backend}", 560, [
                sys.executable, "bench/serve.py", "--child-full", "{port}", "560", backend, tmp.name]))
    rows, capacity = [], {}
    for name, ms, command in setups:
        wait_quiet(300)
        port = free_port()
        server = start_server([c.replace("{port}", str(port)) for c in command], args.threads)
        best = 0
        try:
            n = 1
            while n <= args.max_clients:
                level = load_level(f"ws://127.0.0.1:{port}/ws", server.pid, pcms, n, args.window_s)
                rows.append({"model": name, "chunk_ms": ms, **level})
                print(json.dumps(rows[-1]), flush=True)
                if level["errors"] or not level["partial_p95"] <= ms + 100:
                    break
                best, n = n, 2 * n
        finally:
            server.terminate()
            server.wait(30)
        capacity[name, ms] = best
    tmp.cleanup()
    offline = {ms: offline_capacity(model, ms, feats, 4 * args.max_clients) for ms in args.chunk_ms}
    lines = ["| model | chunk | clients | partial p50 | partial p95 | final p50 | final p95 | server CPU (cores) | "
             "clients' CPU (cores) | partials |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['chunk_ms']} ms | {r['clients']} | {r['partial_p50']:.0f} ms | "
                     f"{r['partial_p95']:.0f} ms | {r['final_p50']:.0f} ms | {r['final_p95']:.0f} ms | "
                     f"{r['server_cores']:.2f} | {r['client_cores']:.2f} | {r['partials']} |")
    lines += ["", "| model | chunk | real-time clients through the server (p95 partial <= chunk + 100 ms) | "
              "offline streams (runner alone, p95 step <= chunk) | server / offline |", "|---|---|---|---|---|"]
    for (name, ms), best in capacity.items():
        off = offline.get(ms) if name == "demo, pytorch" else None
        ratio = f"{best / off:.2f}" if off else "-"
        lines.append(f"| {name} | {ms} ms | {best} | {off if off is not None else '-'} | {ratio} |")
    header = (f"`python bench/serve.py {' '.join(argv if argv is not None else sys.argv[1:])}`".replace(" `", "`")
              + f" — {os.cpu_count()} cores shared by server and clients; {args.threads} torch threads in the "
              f"server (ONNX Runtime: {os.cpu_count()} threads); demo test utterances paced at real time; "
              f"{args.window_s:g} s per level. The full geometry has random weights (its blank raised: almost no "
              "tokens, so decoding is a lower bound); its int8 graphs are `quantize_dir`'s default (dynamic). The "
              "offline column is the PyTorch runner's, beside the PyTorch server's row. The clients "
              "(this process, aiohttp) use CPU on the same cores; their column shows how much of the machine they "
              "took from the server.")
    publish("Serving: WebSocket clients in real time", "\n".join([header, "", *lines]), args.write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
