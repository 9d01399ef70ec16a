"""A TCP server on port 9000 that answers NAME:<what it got> on every message, keeping connections open."""
import socket
import sys
import threading

NAME = sys.argv[1].encode()


def serve(conn):
    with conn:
        while True:
            data = conn.recv(100)
            if not data:
                return
            conn.sendall(NAME + b":" + data)


srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", 9000))
srv.listen(16)
while True:
    threading.Thread(target=serve, args=(srv.accept()[0],), daemon=True).start()
