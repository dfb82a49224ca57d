#!/usr/bin/env python3
"""A small external server for `sockbench check --server-cmd`, in the style of the Python socket
tutorials but done right: selectors, non-blocking sockets, length-prefixed framing (the
send_msg/recv_msg helpers' struct.pack('>I', len(data)) + data), and every classic trap handled.

    python3 echo_server.py PORT [framed|echo]

- recv() may return part of a frame or several frames: input is buffered and framed by length.
- send() may take part of the reply: the rest is kept and sent when the socket is writable; a
  client that does not read stops being read above 1 MiB of pending output (backpressure).
- SO_REUSEADDR before bind, so a restart while TIME_WAIT holds the port works.
- A peer that resets or goes away (ConnectionResetError, BrokenPipeError) closes that
  connection only; Python ignores SIGPIPE, so a write to a closed peer is an exception.
- A frame longer than 16 MiB is a protocol error: that connection is closed, nothing allocated.
- EMFILE on accept(): the listener is left alone for 100 ms (or until a connection closes)
  instead of spinning.
Stdlib only; quiet unless something unexpected happens.
"""

import errno
import selectors
import socket
import struct
import sys
import time

MAX_FRAME = 16 << 20
HIGH_WATER = 1 << 20
EMFILE_BACKOFF = 0.1


class Connection:
    def __init__(self, sock):
        self.sock = sock
        self.inbuf = bytearray()
        self.out = bytearray()
        self.eof = False
        self.events = selectors.EVENT_READ


class Server:
    def __init__(self, port, protocol):
        self.protocol = protocol
        self.selector = selectors.DefaultSelector()
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", port))
        self.listener.listen(128)
        self.listener.setblocking(False)
        self.selector.register(self.listener, selectors.EVENT_READ, None)
        self.accept_paused_until = None

    def run(self):
        while True:
            timeout = None
            if self.accept_paused_until is not None:
                timeout = max(0.0, self.accept_paused_until - time.monotonic())
                if timeout == 0.0:
                    self.resume_accepting()
                    timeout = None
            for key, mask in self.selector.select(timeout):
                if key.data is None:
                    self.accept_all()
                else:
                    self.serve(key.data, mask)

    def pause_accepting(self):
        if self.accept_paused_until is None:
            self.selector.unregister(self.listener)
        self.accept_paused_until = time.monotonic() + EMFILE_BACKOFF

    def resume_accepting(self):
        if self.accept_paused_until is not None:
            self.accept_paused_until = None
            self.selector.register(self.listener, selectors.EVENT_READ, None)

    def accept_all(self):
        while True:
            try:
                sock, _ = self.listener.accept()
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self.pause_accepting()
                    return
                if e.errno in (errno.ECONNABORTED, errno.EPROTO, errno.EINTR):
                    continue
                raise
            sock.setblocking(False)
            conn = Connection(sock)
            self.selector.register(sock, conn.events, conn)

    def close(self, conn):
        self.selector.unregister(conn.sock)
        conn.sock.close()
        # An fd was freed: accept() may succeed again.
        self.resume_accepting()

    def serve(self, conn, mask):
        if mask & selectors.EVENT_WRITE and not self.flush(conn):
            return
        if mask & selectors.EVENT_READ and conn.events & selectors.EVENT_READ:
            try:
                data = conn.sock.recv(256 << 10)
            except BlockingIOError:
                data = None
            except OSError:  # ConnectionResetError and friends
                self.close(conn)
                return
            if data == b"":
                conn.eof = True
            elif data:
                if not self.take(conn, data):
                    self.close(conn)
                    return
            if not self.flush(conn):
                return
        if conn.eof and not conn.out:
            self.close(conn)
            return
        events = 0
        if not conn.eof and len(conn.out) <= HIGH_WATER:
            events |= selectors.EVENT_READ
        if conn.out:
            events |= selectors.EVENT_WRITE
        if events != conn.events:
            conn.events = events
            self.selector.modify(conn.sock, events, conn)

    def take(self, conn, data):
        """Appends the replies to `data`; False on a protocol error."""
        if self.protocol == "echo":
            conn.out += data
            return True
        conn.inbuf += data
        start = 0
        buf = conn.inbuf
        while len(buf) - start >= 4:
            (length,) = struct.unpack_from(">I", buf, start)
            if length > MAX_FRAME:
                return False
            end = start + 4 + length
            if len(buf) < end:
                break
            conn.out += buf[start:end]
            start = end
        if start:
            del buf[:start]
        return True

    def flush(self, conn):
        """Sends what the kernel takes; False when the connection was closed."""
        while conn.out:
            try:
                sent = conn.sock.send(conn.out)
            except BlockingIOError:
                return True
            except OSError:  # BrokenPipeError, ConnectionResetError
                self.close(conn)
                return False
            del conn.out[:sent]
        return True


def main():
    if len(sys.argv) < 2 or len(sys.argv) > 3:
        sys.exit("usage: echo_server.py PORT [framed|echo]")
    protocol = sys.argv[2] if len(sys.argv) == 3 else "framed"
    if protocol not in ("framed", "echo"):
        sys.exit("protocol must be framed or echo")
    Server(int(sys.argv[1]), protocol).run()


if __name__ == "__main__":
    main()
