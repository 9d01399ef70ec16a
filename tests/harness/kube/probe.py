"""A client that connects to a Service every INTERVAL seconds until SIGINT, then writes what it saw as JSON.

Runs on the node (standard library only; the VM's python3):

    python3 probe.py 10.96.12.34:80 --interval 0.05 --out /run/probe.json

Each attempt is a new TCP connection and an HTTP GET; it succeeds when an HTTP status line comes back within
--timeout. The result: attempts, failures, the longest time without an answer (from the last success before a
failure to the first success after it, or to the end), and the failed attempts' times and errors (the first 50).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import time


def attempt(host: str, port: int, timeout: float) -> str:
    """'' on an HTTP answer, else the error."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(f"GET / HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
            head = sock.recv(64)
            return "" if head.startswith(b"HTTP/") else f"no HTTP answer: {head[:20]!r}"
    except OSError as exc:
        return type(exc).__name__ + (f": {exc.strerror}" if getattr(exc, "strerror", None) else "")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("target", help="HOST:PORT")
    parser.add_argument("--interval", type=float, default=0.05)
    parser.add_argument("--timeout", type=float, default=1.0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    host, port = args.target.rsplit(":", 1)
    stop = []
    signal.signal(signal.SIGINT, lambda *_args: stop.append(True))
    signal.signal(signal.SIGTERM, lambda *_args: stop.append(True))
    started = time.monotonic()
    attempts = 0
    failed = []
    last_ok = None
    gap = 0.0
    in_gap = False
    while not stop:
        t = time.monotonic()
        error = attempt(host, int(port), args.timeout)
        attempts += 1
        if error:
            failed.append({"at": round(t - started, 3), "error": error})
            in_gap = True
        else:
            if in_gap:
                gap = max(gap, t - (last_ok if last_ok is not None else started))
                in_gap = False
            last_ok = t
        next_at = t + args.interval
        pause = next_at - time.monotonic()
        if pause > 0 and not stop:
            time.sleep(pause)
    ended = time.monotonic()
    if in_gap:
        gap = max(gap, ended - (last_ok if last_ok is not None else started))
    result = {"target": args.target, "interval": args.interval, "seconds": round(ended - started, 3),
              "attempts": attempts, "failures": len(failed), "longest_gap": round(gap, 3), "failed": failed[:50]}
    with open(args.out + ".part", "w", encoding="utf-8") as fh:
        json.dump(result, fh)
    os.replace(args.out + ".part", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
