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
