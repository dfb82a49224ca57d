#!/usr/bin/env python3
"""The tutorials' chat server, for `sockbench check --protocol chat --server-cmd` and
`sockbench run --scenario broadcast --server-cmd`: one thread, the selectors module, every
length-prefixed message (struct.pack('>I', len(data)) + data) relayed to every other client.

    python3 chat_server.py PORT [--blocking]

The tutorials' version writes each relayed message with sendall() to every other client in turn,
so one client that never reads stalls everybody once its socket buffers are full (check
chat/slow-reader catches exactly that: --blocking keeps that defect, to show it). By default each
client has an output buffer written when its socket is writable, bounded at 4 MiB: a client that
falls further behind is disconnected. Stdlib only; quiet unless something unexpected happens.
"""

import selectors
import socket
import struct
import sys

LIMIT = 4 << 20
MAX_FRAME = 16 << 20


class Client:
    def __init__(self, sock):
        self.sock = sock
        self.inbuf = bytearray()
        self.out = bytearray()


def main():
    args = sys.argv[1:]
    blocking = "--blocking" in args
    args = [a for a in args if a != "--blocking"]
    if len(args) != 1:
        sys.exit("usage: chat_server.py PORT [--blocking]")
    sel = selectors.DefaultSelector()
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", int(args[0])))
    listener.listen(128)
    listener.setblocking(False)
    sel.register(listener, selectors.EVENT_READ, None)
    clients = {}

    def drop(client):
        sel.unregister(client.sock)
        client.sock.close()
        del clients[client.sock]

    def watch(client):
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if client.out else 0)
        sel.modify(client.sock, events, client)

    def relay(sender, frame):
        for other in list(clients.values()):
            if other is sender:
                continue
            if blocking:
                other.sock.setblocking(True)
                try:
                    other.sock.sendall(frame)
                except OSError:
                    drop(other)
                    continue
                other.sock.setblocking(False)
            elif len(other.out) + len(frame) > LIMIT:
                drop(other)
            else:
                other.out += frame
                watch(other)

    while True:
        for key, events in sel.select():
            if key.data is None:
                try:
                    sock, _ = listener.accept()
                except BlockingIOError:
                    continue
                sock.setblocking(False)
                clients[sock] = Client(sock)
                sel.register(sock, selectors.EVENT_READ, clients[sock])
                continue
            client = key.data
            if client.sock not in clients:
                continue
            if events & selectors.EVENT_WRITE and client.out:
                try:
                    sent = client.sock.send(client.out)
                except BlockingIOError:
                    sent = 0
                except OSError:
                    drop(client)
                    continue
                del client.out[:sent]
                watch(client)
            if events & selectors.EVENT_READ:
                try:
                    data = client.sock.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    drop(client)
                    continue
                client.inbuf += data
                while len(client.inbuf) >= 4:
                    (length,) = struct.unpack(">I", client.inbuf[:4])
                    if length > MAX_FRAME:
                        drop(client)
                        break
                    if len(client.inbuf) < 4 + length:
                        break
                    frame = bytes(client.inbuf[: 4 + length])
                    del client.inbuf[: 4 + length]
                    relay(client, frame)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        pass
