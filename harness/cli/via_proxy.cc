#include "harness/cli/via_proxy.h"

#include <fmt/format.h>

#include "harness/cli/options.h"
#include "servers/toxics.h"

namespace sockbench::cli {

void check_via_proxy_flag(const std::string& toxics, std::string_view transport) {
  const auto parsed = servers::parse_toxics(toxics);
  if (!parsed.error.empty()) throw UsageError("--via-proxy: " + parsed.error);
  if (transport == "udp" || transport == "unixgram") {
    throw UsageError(
        fmt::format("--via-proxy: the proxy forwards TCP, not --transport {}", transport));
  }
}

std::optional<ChildProxy> ChildProxy::start(const Address& upstream, const ProxySpec& spec,
                                            std::string* error) {
  ChildProcess::Options options;
  options.argv = {self_executable(),    "proxy",      "--listen",   spec.listen, "--upstream",
                  upstream.to_string(), "--ready-fd", "{ready_fd}", "--quiet"};
  if (!spec.toxics.empty()) {
    options.argv.push_back("--toxic");
    options.argv.push_back(spec.toxics);
  }
  options.cpus = spec.cpus;
  auto child = ChildProcess::spawn(options);
  if (!child) {
    *error = fmt::format("cannot start the proxy: {}", child.error().message());
    return std::nullopt;
  }
  auto address = await_listening(*child, "the proxy", error);
  if (!address) return std::nullopt;
  return ChildProxy(std::move(*child), *address);
}

bool ChildProxy::alive(std::string* why) {
  if (child_.alive()) return true;
  if (why && child_.exit_info()) *why = child_.exit_info()->describe();
  return false;
}

bool ProxiedServer::alive(std::string* why) {
  if (!server_.alive(why)) return false;
  proxy_exited_ = !proxy_.alive(why);
  return !proxy_exited_;
}

std::string ProxiedServer::exit_error(const std::string& why, std::string_view during) const {
  if (!proxy_exited_) return server_.exit_error(why, during);
  return fmt::format("the proxy in front of server {} exited during {} ({})", name(), during, why);
}

bool ProxiedTarget::start_proxy(bool same_port, std::string* error) {
  if (proxy_) last_proxy_address_ = proxy_->address();
  proxy_.reset();
  ProxySpec spec = spec_;
  if (same_port && last_proxy_address_) spec.listen = last_proxy_address_->to_string();
  proxy_ = ChildProxy::start(target_->address(), spec, error);
  return proxy_.has_value();
}

bool ProxiedTarget::start(const scenarios::StartOptions& options, std::string* error) {
  if (!target_->start(options, error)) return false;
  if (start_proxy(options.same_port, error)) return true;
  target_->stop(std::chrono::seconds(3));
  return false;
}

std::optional<ExitInfo> ProxiedTarget::stop(std::chrono::milliseconds grace) {
  if (target_->can_restart() && proxy_) {
    last_proxy_address_ = proxy_->address();
    proxy_.reset();
  }
  return target_->stop(grace);
}

std::unique_ptr<scenarios::CheckTarget> behind_proxy(std::unique_ptr<scenarios::CheckTarget> target,
                                                     const ProxySpec& spec, std::string* error) {
  auto proxied = std::make_unique<ProxiedTarget>(std::move(target), spec);
  if (!proxied->can_restart() && !proxied->start_proxy(false, error)) return nullptr;
  return proxied;
}

}  // namespace sockbench::cli
