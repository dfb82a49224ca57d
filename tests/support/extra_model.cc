// A model added from its own file, linked only into sockbench_with_extra_model: a reactor over
// poll(2) under the name "extra". Its one registration line is all it takes to appear in
// `sockbench list`, `--server all` and every check (tests/cli_registry_test.cc).
#include "servers/poller.h"
#include "servers/reactor.h"
#include "servers/server.h"

namespace {

using namespace sockbench::servers;

const ModelRegistration kExtra{
    {"extra", "test-only: a reactor over poll(2), registered from its own file", false,
     [](const ServerConfig& config) { return make_reactor_server(config, make_poll_poller()); }}};

}  // namespace
