// The one table of models, correct ones first in preference order; `sockbench list` prints it.
#include <algorithm>

#include "servers/poller.h"
#include "servers/reactor.h"
#include "servers/server.h"

namespace sockbench::servers {

const std::vector<ModelInfo>& registry() {
  static const std::vector<ModelInfo> models = {
      {"threaded", "one thread per client, blocking I/O", false,
       [](const ServerConfig& config) { return make_threaded_server(config); }},
      {"select", "single-threaded reactor over select(2); refuses fds >= FD_SETSIZE", false,
       [](const ServerConfig& config) {
         return make_reactor_server(config, make_select_poller());
       }},
      {"poll", "single-threaded reactor over poll(2), the portable one", false,
       [](const ServerConfig& config) { return make_reactor_server(config, make_poll_poller()); }},
      {"epoll", "single-threaded reactor over level-triggered epoll(7)", false,
       [](const ServerConfig& config) { return make_reactor_server(config, make_epoll_poller()); }},
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
  };
  return models;
}

const ModelInfo* find_model(std::string_view name) {
  const auto& models = registry();
  const auto it = std::find_if(models.begin(), models.end(),
                               [name](const ModelInfo& model) { return model.name == name; });
  return it == models.end() ? nullptr : &*it;
}

}  // namespace sockbench::servers
