#!/usr/bin/env python3
"""The tutorials' UDP echo server, for `sockbench check --transport udp --server-cmd`:
socketserver.UDPServer with a handler that sends each datagram back to its sender.

    python3 udp_echo_server.py PORT

One fix over the tutorials' version: UDPServer reads with max_packet_size = 8192 bytes, so a
larger datagram is silently cut (the rest is gone, MSG_TRUNC is not looked at) and the cut part
echoed as if whole; check udp/truncation and udp/max-datagram catch exactly that. Here the
buffer holds the largest UDP payload. Stdlib only; quiet unless something unexpected happens.
"""

import socketserver
import sys


class EchoHandler(socketserver.BaseRequestHandler):
    def handle(self):
        data, sock = self.request
        sock.sendto(data, self.client_address)


class Server(socketserver.UDPServer):
    allow_reuse_address = True
    max_packet_size = 65536  # the default, 8192, cuts larger datagrams


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: udp_echo_server.py PORT")
    with Server(("127.0.0.1", int(sys.argv[1])), EchoHandler) as server:
        server.serve_forever()


if __name__ == "__main__":
    main()
