"""Open one TCP connection to VIP:9000 and keep it: ask once, wait for the file GO, ask again on the same
connection. Writes what it got to OUT.first and OUT.second (or OUT.error)."""
import os
import socket
import sys
import time

vip, go, out = sys.argv[1], sys.argv[2], sys.argv[3]
try:
    conn = socket.create_connection((vip, 9000), timeout=30)
    conn.sendall(b"one")
    with open(out + ".first", "wb") as handle:
        handle.write(conn.recv(100))
    deadline = time.time() + 600
    while not os.path.exists(go) and time.time() < deadline:
        time.sleep(0.2)
    conn.sendall(b"two")
    with open(out + ".second", "wb") as handle:
        handle.write(conn.recv(100))
except OSError as exc:
    with open(out + ".error", "w") as handle:
        handle.write(repr(exc))
