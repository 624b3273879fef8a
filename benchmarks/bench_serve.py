"""Benchmark: ``retinadet serve`` under concurrent load, with dynamic batching and without.

    python benchmarks/bench_serve.py [--weights best.pt] [--clients 8] [--duration 30] [--images DIR]

Starts the real server (``python -m retinadet serve``, a subprocess on loopback) twice on the same weights and
images: with dynamic batching (``--max-batch 8``) and with ``--max-batch 1`` (one image per forward pass, the
requests served one at a time). Each time ``--clients`` threads POST images to ``/detect`` back to back over
keep-alive connections for ``--duration`` seconds, after a short warm-up. ``--rounds`` alternates the two servers
that many times, so that a machine whose speed drifts (a shared host) weighs on both alike. Prints requests/s, their
ratio, p50/p99 latency, errors and the forward passes the server counted, as a markdown table, then one JSON line.

Without ``--weights`` an untrained ``fast`` model (seeded) is served: its forward pass costs what a trained one's
does. Images: ``--images`` (a folder), else BCCD's JPEGs from ../shared when present, else noise images 640x480.
"""

from __future__ import annotations

import argparse
import http.client
import io
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

ROOT = Path(__file__).resolve().parents[1]
BCCD = ROOT.parent / "shared" / "datasets" / "bccd" / "JPEGImages"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", help="weights to serve (default: an untrained, seeded fast model)")
    p.add_argument("--images", help="a folder of images to send (default: BCCD's, else noise)")
    p.add_argument("--num-images", type=int, default=32, help="how many distinct images the clients cycle through")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--duration", type=float, default=30.0, help="seconds of load per server and round")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds of load before measuring")
    p.add_argument("--rounds", type=int, default=1, help="alternate the two servers this many times")
    p.add_argument("--max-batch", type=int, default=8, help="the batching server's --max-batch")
    p.add_argument("--batch-wait-ms", type=float, default=10.0)
    p.add_argument("--conf", type=float, default=None, help="the requests' conf (default: the server's thresholds)")
    p.add_argument("--device", default="cpu")
    return p.parse_args()


def load_images(folder: str | None, n: int) -> list[bytes]:
    source = Path(folder) if folder else (BCCD if BCCD.is_dir() else None)
    if source is not None:
        files = sorted(f for f in source.iterdir() if f.suffix.lower() in (".jpg", ".jpeg", ".png"))[:n]
        if not files:
            sys.exit(f"no .jpg/.png images in {source}")
        return [f.read_bytes() for f in files]
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def untrained_weights(folder: Path) -> str:
    import torch

    from retinadet.detector import Detector
    from retinadet.weights.checkpoint import make_checkpoint, save_checkpoint

    torch.manual_seed(0)
    det = Detector.from_config("fast", ["cell", "debris", "platelet"], device="cpu")
    return save_checkpoint(folder / "untrained_fast.pt", make_checkpoint(det.model, det.class_names))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(weights: str, max_batch: int, wait_ms: float, device: str, log: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    cmd = [sys.executable, "-m", "retinadet", "serve", "--weights", weights, "--port", str(port), "--device", device,
           "--max-batch", str(max_batch), "--batch-wait-ms", str(wait_ms)]
    with open(log, "w") as fh:  # a file, not a pipe: a full pipe would stall the server's logging
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=fh)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"the server exited ({proc.returncode}): {log.read_text()[-2000:]}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/v2/health/ready")
            ok = conn.getresponse().status == 200
            conn.close()
            if ok:
                return proc, port
        except OSError:
            pass
        time.sleep(0.2)
    proc.kill()
    sys.exit("the server did not become ready in 180 s")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def stats(port: int) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/v2/models/retinadet/stats")
    out = json.loads(conn.getresponse().read())["model_stats"][0]
    conn.close()
    return out


def load(port: int, images: list[bytes], clients: int, seconds: float, conf: float | None) -> dict:
    """``clients`` threads posting images back to back for ``seconds``: latencies (s) of the answered requests and
    the number of failed ones."""
    path = "/detect" + (f"?conf={conf}" if conf is not None else "")
    stop_at = time.monotonic() + seconds
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients

    def client(k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        i = k
        while time.monotonic() < stop_at:
            body = images[i % len(images)]
            i += clients
            t0 = time.perf_counter()
            try:
                conn.request("POST", path, body, {"Content-Type": "application/octet-stream"})
                resp = conn.getresponse()
                resp.read()
                ok = resp.status == 200
            except (OSError, http.client.HTTPException):
                ok = False
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            if ok:
                latencies[k].append(time.perf_counter() - t0)
            else:
                errors[k] += 1
        conn.close()

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"elapsed": time.perf_counter() - started, "latencies": [x for lat in latencies for x in lat],
            "errors": sum(errors)}


def main() -> None:
    args = parse_args()
    images = load_images(args.images, args.num_images)
    servers = {f"dynamic batching (max_batch {args.max_batch}, wait {args.batch_wait_ms:g} ms)": args.max_batch,
               "one at a time (max_batch 1)": 1}
    totals = {name: {"elapsed": 0.0, "latencies": [], "errors": 0, "passes": 0, "images": 0} for name in servers}
    with tempfile.TemporaryDirectory() as tmp:
        weights = args.weights or untrained_weights(Path(tmp))
        for _ in range(args.rounds):
            for name, max_batch in servers.items():
                proc, port = start_server(weights, max_batch, args.batch_wait_ms, args.device, Path(tmp) / "server.log")
                try:
                    load(port, images, args.clients, args.warmup, args.conf)
                    before = stats(port)
                    run = load(port, images, args.clients, args.duration, args.conf)
                    after = stats(port)
                finally:
                    stop_server(proc)
                t = totals[name]
                t["elapsed"] += run["elapsed"]
                t["latencies"] += run["latencies"]
                t["errors"] += run["errors"]
                t["passes"] += after["execution_count"] - before["execution_count"]
                t["images"] += after["inference_count"] - before["inference_count"]
    rows = {}
    for name, t in totals.items():
        lat = np.asarray(t["latencies"]) * 1000
        rows[name] = {"rps": len(lat) / t["elapsed"], "p50_ms": float(np.percentile(lat, 50)) if lat.size else float("nan"),
                      "p99_ms": float(np.percentile(lat, 99)) if lat.size else float("nan"), "errors": t["errors"],
                      "requests": int(lat.size), "passes": t["passes"], "images_per_pass": t["images"] / max(t["passes"], 1)}
    batched, single = (rows[n] for n in servers)
    ratio = batched["rps"] / single["rps"] if single["rps"] else float("nan")
    print(f"\n{args.clients} concurrent clients, {args.duration:g} s x {args.rounds} round(s) per server, "
          f"{len(images)} images ({'--images' if args.images else 'BCCD' if BCCD.is_dir() else 'noise'}), "
          f"{os.cpu_count()} CPU(s), device {args.device}\n")
    print("| server | requests/s | p50 latency | p99 latency | errors | requests | images per forward pass |")
    print("|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['rps']:.2f} | {r['p50_ms']:.0f} ms | {r['p99_ms']:.0f} ms | {r['errors']} | {r['requests']} | "
              f"{r['images_per_pass']:.2f} |")
    print(f"\nthroughput ratio (batching / one at a time): {ratio:.2f}x")
    print(json.dumps({"clients": args.clients, "duration_s": args.duration, "rounds": args.rounds, "ratio": ratio,
                      "servers": rows}))


if __name__ == "__main__":
    main()
