// The single-threaded readiness reactor shared by the select, poll and epoll models: the models
// differ only in the Poller they hand it, so a comparison measures the syscall and nothing else.
#pragma once

#include <chrono>
#include <cstddef>
#include <memory>

#include "servers/poller.h"
#include "servers/server.h"

namespace sockbench::servers {

// Knobs of the reactor. The defaults are the correct behaviour. Faulty twins (deliberately
// broken variants, see DESIGN.md: one recv taken as one message, SIGPIPE kills it, blocking
// read inside the reactor, fd leak, EMFILE spin...) add one flag here per defect, default off,
// and the reactor branches on it at the one place the defect lives.
struct ReactorOptions {
  // Bytes read from one connection per readiness event, so that one fast client cannot keep the
  // loop to itself; level-triggering brings the loop back for the rest on the next turn.
  size_t read_budget = 256 << 10;
  size_t read_chunk = 64 << 10;  // bytes asked of one recv()
  // Backpressure: once more output than this is pending (the reply to the current frame can add
  // up to one maximum frame on top), the connection's input is not read until the output has
  // drained, so a client that does not read cannot grow server memory without bound.
  size_t high_water = 1 << 20;
  // How long the listener is left unwatched after accept() fails with EMFILE/ENFILE (or until a
  // connection closes), so fd exhaustion never turns into a busy loop.
  std::chrono::milliseconds emfile_backoff{100};

  // Defects of the faulty twins, one each (see registry.cc for which check catches which).
  // faulty-single-recv: every recv()'s bytes are handed to a session that takes them as one
  // whole message (make_one_recv_one_message_session) instead of a stream.
  bool one_recv_is_one_message = false;
  // faulty-no-reuseaddr: bind() never sets SO_REUSEADDR, whatever ServerConfig::reuseaddr says.
  bool ignore_reuseaddr = false;
  // faulty-sigpipe: replies are written with a plain send(), without MSG_NOSIGNAL, so writing to
  // a connection the peer has reset raises SIGPIPE (fatal unless the process ignores it).
  bool send_without_nosignal = false;
  // faulty-blocking: once a connection is readable, the reactor reads one whole frame (framed
  // protocol) before it returns to the loop, waiting on that connection alone, so a client that
  // trickles its frame stalls every other client. A stop() still ends the wait.
  bool block_until_whole_frame = false;
  // faulty-fd-leak: a connection that ends (EOF, error, protocol error) is dropped from the
  // poller but its fd is never closed.
  bool leak_connection_fds = false;
  // faulty-emfile-spin: on EMFILE/ENFILE the listener stays watched and accept() is retried on
  // the very next turn, a busy loop for as long as the process is out of fds.
  bool retry_accept_on_emfile = false;
  // faulty-chat-blocking: chat fan-out writes each frame to each member in turn and waits on that
  // member alone until the kernel took all of it (the tutorials' `for c in clients:
  // c.sendall(msg)`), so one member that does not read stalls every other. A stop() still ends
  // the wait.
  bool block_on_each_member = false;
  // faulty-tls-blocking: serving TLS, a new connection is read at once, waiting on it alone, until
  // its session answers (the handshake's first flight), so a client that stalls mid-handshake
  // stalls every other client. Without TLS it is epoll. A stop() still ends the wait.
  bool block_until_first_reply = false;
};

// A Server whose run() drives `poller` on the calling thread. Owns the poller.
std::unique_ptr<Server> make_reactor_server(const ServerConfig& config,
                                            std::unique_ptr<Poller> poller,
                                            ReactorOptions options = {});

}  // namespace sockbench::servers
