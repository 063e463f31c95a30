"""Load test: concurrent HTTP clients against a registered classifier served by
`mlflow models serve` on 127.0.0.1.

    python -m benchmarks.serve_load [--repo .] [--model models:/lmforge-mlm@champion]
                                    [--clients 4] [--seconds 60]

Starts the server (local environment, one uvicorn worker, loopback only), waits until it
answers, then `--clients` threads each POST one docstring per request on a kept-alive
connection for `--seconds`. Any status other than 200, a malformed answer or a connection
error counts as a failed request. Ends with one JSON line: requests, failures, requests per
second and latency percentiles in milliseconds.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

TEXTS = (
    "Return a new list containing all items from the iterable in ascending order.",
    "Open the file and return a corresponding file object.",
    "Create a new socket using the given address family and socket type.",
    "Return the number of seconds since the epoch as a floating point number.",
    "Parse a string as a JSON document and return the Python object.",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`mlflow models serve` in its own process group, stopped with the group."""

    def __init__(self, repo: Path, model_uri: str, port: int, log: Path):
        env = os.environ.copy()
        env.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{repo.resolve() / 'mlflow.db'}")
        env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        # The server execs `uvicorn`: this interpreter's environment must come first on PATH.
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        self.port = port
        self.log = open(log, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local",
             "-h", "127.0.0.1", "-p", str(port), "-w", "1"],
            cwd=repo, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout: float = 300) -> float:
        start = time.perf_counter()
        while time.perf_counter() - start < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow models serve exited with {self.proc.returncode}; see {self.log.name}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/ping")
                if conn.getresponse().status == 200:
                    return time.perf_counter() - start
            except OSError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"mlflow models serve not ready after {timeout:.0f} s; see {self.log.name}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


def client(port: int, until: float, latencies: list[float], failures: list[str], index: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    i = index
    while time.perf_counter() < until:
        body = json.dumps({"inputs": [TEXTS[i % len(TEXTS)]]})
        i += 1
        start = time.perf_counter()
        try:
            conn.request("POST", "/invocations", body, {"Content-Type": "application/json"})
            response = conn.getresponse()
            payload = response.read()
            elapsed = time.perf_counter() - start
            if response.status != 200:
                failures.append(f"HTTP {response.status}: {payload[:200]!r}")
                continue
            predictions = json.loads(payload)["predictions"]
            if not predictions or "label" not in predictions[0]:
                failures.append(f"unexpected answer {payload[:200]!r}")
                continue
            latencies.append(elapsed)
        except (OSError, http.client.HTTPException, ValueError, KeyError) as e:
            failures.append(f"{type(e).__name__}: {e}")
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.close()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))] if ordered else float("nan")


def load(port: int, clients: int, seconds: float) -> dict:
    latencies: list[float] = []
    failures: list[str] = []
    start = time.perf_counter()
    until = start + seconds
    threads = [threading.Thread(target=client, args=(port, until, latencies, failures, i)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    ms = [x * 1000 for x in latencies]
    return {"clients": clients, "seconds": round(wall, 1), "requests": len(latencies) + len(failures),
            "failed": len(failures), "requests_per_s": round(len(latencies) / wall, 2),
            "p50_ms": round(percentile(ms, 50), 1), "p95_ms": round(percentile(ms, 95), 1),
            "p99_ms": round(percentile(ms, 99), 1), "max_ms": round(max(ms, default=float("nan")), 1),
            "first_failures": failures[:3]}


def run(repo: Path, model_uri: str, clients: int, seconds: float, warmup: float = 3.0) -> dict:
    port = free_port()
    server = Server(repo, model_uri, port, Path(tempfile.gettempdir()) / f"lmforge-serve-load-{port}.log")
    try:
        ready = server.wait_ready()
        load(port, 1, warmup)  # first requests build the pipeline and warm caches
        result = load(port, clients, seconds)
    finally:
        server.stop()
    return {"benchmark": "serve_load", "model": model_uri, "host": "127.0.0.1", "server_ready_s": round(ready, 1),
            **result}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.serve_load", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", type=Path, default=Path("."), help="repository with mlflow.db (default: .)")
    parser.add_argument("--model", default="models:/lmforge-mlm@champion", help="model URI to serve")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args(argv)
    result = run(args.repo, args.model, args.clients, args.seconds)
    print(json.dumps(result))
    return 1 if result["failed"] or not result["requests"] else 0


if __name__ == "__main__":
    sys.exit(main())
