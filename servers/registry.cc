// The one table of models, correct ones first in preference order; `sockbench list` prints it.
#include <fmt/format.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>

#include "harness/core/cpus.h"
#include "harness/core/eprint.h"
#include "servers/dgram.h"
#include "servers/poller.h"
#include "servers/reactor.h"
#include "servers/server.h"

namespace sockbench::servers {
namespace {

const std::vector<ModelInfo>& builtin_models() {
  // Datagram-only models: no stream, so neither chat nor http.
  static const std::vector<std::string> kAllProtocols = {"echo", "framed", "discard"};
  // Chat needs several clients served at once over a stream: not the iterative model, and not a
  // datagram-only one.
  static const std::vector<std::string> kWithChat = {"echo", "framed", "discard", "chat", "http"};
  static const std::vector<std::string> kDatagramOnly = {"udp", "unixgram"};
  static const std::vector<ModelInfo> models = {
      {"threaded", "one thread per client, blocking I/O", false,
       [](const ServerConfig& config) { return make_threaded_server(config); }, false, kWithChat},
      {"select", "single-threaded reactor over select(2); refuses fds >= FD_SETSIZE", false,
       [](const ServerConfig& config) { return make_reactor_server(config, make_select_poller()); },
       false, kWithChat, stream_and_datagram_transports()},
      {"poll", "single-threaded reactor over poll(2), the portable one", false,
       [](const ServerConfig& config) { return make_reactor_server(config, make_poll_poller()); },
       false, kWithChat, stream_and_datagram_transports()},
      {"epoll", "single-threaded reactor over level-triggered epoll(7)", false,
       [](const ServerConfig& config) { return make_reactor_server(config, make_epoll_poller()); },
       false, kWithChat, stream_and_datagram_transports()},
      {.name = "iterative",
       .description = "one client at a time, blocking I/O, served to its end before the next "
                      "accept (socketserver.TCPServer); one slow client stalls all",
       .make = [](const ServerConfig& config) { return make_iterative_server(config); },
       .concurrency = ClientConcurrency::kOne},
      {.name = "pool",
       .description = "fixed pool of --workers threads (default: the server's CPUs) serving "
                      "queued connections with blocking I/O; N slow clients stall N workers",
       .make = [](const ServerConfig& config) { return make_pool_server(config); },
       .protocols = kWithChat,
       .concurrency = ClientConcurrency::kWorkers},
      {.name = "coro",
       .description = "single thread, a C++20 coroutine per connection over the epoll poller",
       .make = make_coro_server,
       .protocols = kWithChat},
      {.name = "asio",
       .description = "single thread, an asio::awaitable per connection on one asio::io_context",
       .make = make_asio_server,
       .protocols = kWithChat},
      {"udp-blocking", "recvfrom/sendto on one thread, one datagram at a time (UDPServer)", false,
       [](const ServerConfig& config) { return make_udp_blocking_server(config); }, false,
       kAllProtocols, kDatagramOnly},
      // The faulty twins: each is one correct model with exactly one defect switched on, to prove
      // that the check named in its description can fail.
      {"faulty-single-recv",
       "epoll, but takes each recv() as one whole frame, ignoring the length prefix; caught by "
       "check partial",
       true,
       [](const ServerConfig& config) {
         return make_reactor_server(config, make_epoll_poller(), {.one_recv_is_one_message = true});
       }},
      {"faulty-no-reuseaddr",
       "epoll, but never sets SO_REUSEADDR, so a restart fails with EADDRINUSE while its old "
       "connections are in TIME_WAIT; caught by check timewait",
       true,
       [](const ServerConfig& config) {
         return make_reactor_server(config, make_epoll_poller(), {.ignore_reuseaddr = true});
       }},
      {"faulty-sigpipe",
       "epoll, but writes without MSG_NOSIGNAL and keeps SIGPIPE's default action, so a write to "
       "a peer that has gone kills it; caught by check errors/sigpipe",
       true,
       [](const ServerConfig& config) {
         return make_reactor_server(config, make_epoll_poller(), {.send_without_nosignal = true});
       },
       /*restore_sigpipe_default=*/true},
      {"faulty-blocking",
       "poll, but reads a whole frame with blocking recv inside the reactor, so one slow client "
       "stalls all; caught by check errors/slow-clients",
       true,
       [](const ServerConfig& config) {
         return make_reactor_server(config, make_poll_poller(), {.block_until_whole_frame = true});
       }},
      {"faulty-fd-leak",
       "epoll, but never closes a connection's fd when the peer goes away; caught by check "
       "errors/abort-mid-frame and errors/kill-mid-frame",
       true,
       [](const ServerConfig& config) {
         return make_reactor_server(config, make_epoll_poller(), {.leak_connection_fds = true});
       }},
      {"faulty-emfile-spin",
       "epoll, but on EMFILE keeps the listener watched and retries accept() at once (100% CPU "
       "while out of fds); caught by check errors/emfile",
       true,
       [](const ServerConfig& config) {
         return make_reactor_server(config, make_epoll_poller(), {.retry_accept_on_emfile = true});
       }},
      {"faulty-tls-blocking",
       "epoll, but reads a new connection's handshake (its first bytes, until they are answered) "
       "waiting on it alone, so a client that stalls mid-handshake stalls everyone; caught by "
       "check tls/stalled-handshake (check --tls)",
       true,
       [](const ServerConfig& config) {
         return make_reactor_server(config, make_epoll_poller(), {.block_until_first_reply = true});
       }},
      {"faulty-chat-blocking",
       "epoll, but its chat fan-out writes each frame to each member in turn and waits until that "
       "one took it all, so one member that never reads stalls every other; caught by check "
       "chat/slow-reader",
       true,
       [](const ServerConfig& config) {
         return make_reactor_server(config, make_epoll_poller(), {.block_on_each_member = true});
       },
       false, kWithChat},
      {"faulty-udp-truncate",
       "udp-blocking, but reads into a 1,024-byte buffer and echoes a cut datagram as if whole; "
       "caught by check udp/truncation and udp/max-datagram",
       true,
       [](const ServerConfig& config) {
         return make_udp_blocking_server(config, {.recv_buffer = 1024, .echo_truncated = true});
       },
       false, kAllProtocols, kDatagramOnly},
  };
  return models;
}

// Models added by ModelRegistration; written only during static initialisation.
std::vector<ModelInfo>& registered_models() {
  static std::vector<ModelInfo> models;
  return models;
}

}  // namespace

ModelRegistration::ModelRegistration(ModelInfo model) {
  auto& added = registered_models();
  const auto taken = [&](const std::vector<ModelInfo>& models) {
    return std::any_of(models.begin(), models.end(),
                       [&](const ModelInfo& m) { return m.name == model.name; });
  };
  if (model.name.empty() || taken(builtin_models()) || taken(added)) {
    eprint("sockbench: model name '{}' is empty or already registered\n", model.name);
    std::abort();
  }
  added.push_back(std::move(model));
}

const std::vector<ModelInfo>& registry() {
  static const std::vector<ModelInfo> models = [] {
    std::vector<ModelInfo> all;
    const std::vector<ModelInfo>* lists[] = {&builtin_models(), &registered_models()};
    for (const bool faulty : {false, true}) {
      for (const auto* list : lists) {
        for (const auto& model : *list) {
          if (model.faulty == faulty) all.push_back(model);
        }
      }
    }
    return all;
  }();
  return models;
}

bool ModelInfo::serves(std::string_view transport) const {
  return std::find(transports.begin(), transports.end(), transport) != transports.end();
}

std::vector<std::string> model_names(bool faulty, std::string_view transport) {
  std::vector<std::string> names;
  for (const auto& model : registry()) {
    if (model.faulty == faulty && model.serves(transport)) names.push_back(model.name);
  }
  return names;
}

const std::vector<ProtocolInfo>& protocols() {
  static const std::vector<ProtocolInfo> all = {
      {"echo", "raw bytes back (RFC 862)"},
      {"framed", "4-byte big-endian length + payload, answered with the same frame"},
      {"discard", "read and drop (RFC 863)"},
      {"chat",
       "framed input; each frame is relayed byte-identical to every other connection, never "
       "answered; a member that falls --chat-limit bytes behind is disconnected"},
      {"http",
       "HTTP/1.1: GET / (a short text) and GET /bytes/N (N bytes), keep-alive, pipelining, "
       "Connection: close; a malformed request is answered 400 and closed"},
  };
  return all;
}

int pool_workers(const ServerConfig& config) {
  if (config.workers > 0) return config.workers;
  return std::max(static_cast<int>(available_cpus().size()), 1);
}

size_t concurrent_clients(const ModelInfo& model, const ServerConfig& config) {
  switch (model.concurrency) {
    case ClientConcurrency::kUnbounded:
      return 0;
    case ClientConcurrency::kOne:
      return 1;
    case ClientConcurrency::kWorkers:
      return static_cast<size_t>(pool_workers(config));
  }
  return 0;
}

const ModelInfo* find_model(std::string_view name) {
  const auto& models = registry();
  const auto it = std::find_if(models.begin(), models.end(),
                               [name](const ModelInfo& model) { return model.name == name; });
  return it == models.end() ? nullptr : &*it;
}

}  // namespace sockbench::servers
