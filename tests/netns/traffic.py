"""Real traffic between netns hosts: TCP listeners on one host, probes and long-lived sessions from another.

Run inside a namespace with ``ip netns exec NS python3 tests/netns/traffic.py ...``:

    serve PORT...            accept TCP connections on every port and echo what arrives (runs until killed)
    probe ADDR PORT...       print {"PORT": "open" | "refused" | "filtered"} (each probe waits 0.8 s at most)
    session ADDR PORT        connect once, then per line on stdin send it and print the echo or "timeout"
"""

from __future__ import annotations

import json
import selectors
import socket
import sys
import threading
import time

WAIT = 0.8


def serve(ports: list[int]) -> None:
    sel = selectors.DefaultSelector()
    for port in ports:
        for family, addr in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
            s = socket.socket(family, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.bind((addr, port))
            s.listen(64)
            sel.register(s, selectors.EVENT_READ, "listen")
    print("ready", flush=True)
    while True:
        for key, _ev in sel.select():
            sock = key.fileobj
            if key.data == "listen":
                conn, _peer = sock.accept()
                sel.register(conn, selectors.EVENT_READ, "conn")
            else:
                try:
                    data = sock.recv(4096)
                except OSError:
                    data = b""
                if data:
                    sock.sendall(data)
                else:
                    sel.unregister(sock)
                    sock.close()


def probe_one(addr: str, port: int, out: dict) -> None:
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(WAIT)
    try:
        s.connect((addr, port))
        out[str(port)] = "open"
    except ConnectionRefusedError:
        out[str(port)] = "refused"
    except OSError:
        out[str(port)] = "filtered"
    finally:
        s.close()


def probe(addr: str, ports: list[int]) -> None:
    out: dict = {}
    threads = [threading.Thread(target=probe_one, args=(addr, p, out)) for p in ports]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    print(json.dumps(out), flush=True)


def session(addr: str, port: int) -> None:
    s = socket.create_connection((addr, port), timeout=3)
    print("connected", flush=True)
    for line in sys.stdin:
        msg = line.strip()
        wait = 1.0
        if " " in msg:
            msg, wait_s = msg.split(" ", 1)
            wait = float(wait_s)
        s.settimeout(wait)
        try:
            s.sendall(msg.encode())
            got = b""
            end = time.monotonic() + wait
            # what an earlier, unanswered line sent may arrive first: read up to this line's echo
            while not got.endswith(msg.encode()) and time.monotonic() < end:
                s.settimeout(max(end - time.monotonic(), 0.01))
                got += s.recv(4096)
            print(got.decode() if got else "timeout", flush=True)
        except socket.timeout:
            print("timeout", flush=True)
        except OSError as exc:
            print(f"error {exc}", flush=True)


def main() -> None:
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "serve":
        serve([int(p) for p in args])
    elif cmd == "probe":
        probe(args[0], [int(p) for p in args[1:]])
    elif cmd == "session":
        session(args[0], int(args[1]))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
