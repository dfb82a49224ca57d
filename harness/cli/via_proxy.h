// --via-proxy of run and check: the server under test put behind a `sockbench proxy` child with
// the given toxics, so that every scenario and check runs through the faults.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "harness/cli/targets.h"
#include "harness/core/net.h"
#include "harness/core/spawn.h"
#include "scenarios/check.h"
#include "scenarios/scenario.h"

namespace sockbench::cli {

// What the proxy child gets: the toxics (a comma list of DIR:TOXIC=ARGS, "" for none) and where
// it listens.
struct ProxySpec {
  std::string toxics;
  std::string listen = "127.0.0.1:0";
  std::vector<int> cpus;  // the proxy's CPU set (the server's, so the client's stays its own)
};

// --via-proxy checked at once: a UsageError naming the flag when its toxics are malformed or the
// transport is not one the proxy forwards (it speaks streams: tcp).
void check_via_proxy_flag(const std::string& toxics, std::string_view transport);

// A `sockbench proxy` child in its own process group, forwarding to `upstream`. Owns the child:
// the destructor stops it. Used from one thread, which must outlive it (see ChildProcess).
class ChildProxy {
 public:
  // Starts it and waits (up to 10 s) for its "listening ADDR" line; on failure `error` says why.
  static std::optional<ChildProxy> start(const Address& upstream, const ProxySpec& spec,
                                         std::string* error);
  Address address() const { return address_; }
  // False once it has exited; `why` (when given) then says how.
  bool alive(std::string* why = nullptr);
  ExitInfo stop() { return child_.stop(std::chrono::seconds(3)); }

 private:
  ChildProxy(ChildProcess child, Address address) : child_(std::move(child)), address_(address) {}
  ChildProcess child_;
  Address address_;
};

// A running server as a scenario sees it, reached through a proxy: the proxy's address, the
// server's name and /proc. Borrows the server; owns the proxy.
class ProxiedServer final : public scenarios::ServerHandle {
 public:
  ProxiedServer(scenarios::ServerHandle& server, ChildProxy proxy)
      : server_(server), proxy_(std::move(proxy)) {}
  Address address() const override { return proxy_.address(); }
  std::string name() const override { return server_.name(); }
  std::optional<ProcSample> sample() override { return server_.sample(); }
  bool alive(std::string* why) override;
  // The proxy's death is its own: the server behind it may be running still.
  std::string exit_error(const std::string& why, std::string_view during) const override;

 private:
  scenarios::ServerHandle& server_;
  ChildProxy proxy_;
  bool proxy_exited_ = false;
};

// A check target behind a proxy: everything is the target's but the address and the serve flags. A
// restartable target gets a proxy per start (on the previous proxy port for a same-port restart)
// and none while stopped, so a stopped server still refuses connections; any other target gets one
// for its whole life (see behind_proxy). Owns the target and the proxy; used from one thread.
class ProxiedTarget final : public scenarios::CheckTarget {
 public:
  ProxiedTarget(std::unique_ptr<scenarios::CheckTarget> target, ProxySpec spec)
      : target_(std::move(target)), spec_(std::move(spec)) {}

  // Starts the proxy in front of the target as it is now. False with `error` when it fails.
  bool start_proxy(bool same_port, std::string* error);

  Address address() const override { return proxy_ ? proxy_->address() : target_->address(); }
  std::string name() const override { return target_->name(); }
  std::optional<ProcSample> sample() override { return target_->sample(); }
  bool alive(std::string* why) override { return target_->alive(why); }
  WireFormat wire() const override { return target_->wire(); }
  bool can_restart() const override { return target_->can_restart(); }
  bool can_observe() const override { return target_->can_observe(); }
  // The proxy accepts every connection at once, whatever the server's accept or backlog: the
  // backlog checks would measure the proxy, so they SKIP.
  bool has_serve_flags() const override { return false; }
  std::string kind() const override { return "--via-proxy"; }
  bool start(const scenarios::StartOptions& options, std::string* error) override;
  std::optional<ExitInfo> stop(std::chrono::milliseconds grace) override;
  bool running() const override { return target_->running(); }
  const scenarios::StartOptions& options() const override { return target_->options(); }
  pid_t pid() const override { return target_->pid(); }
  std::error_code pause_accept(bool paused) override { return target_->pause_accept(paused); }

 private:
  std::unique_ptr<scenarios::CheckTarget> target_;
  ProxySpec spec_;
  std::optional<ChildProxy> proxy_;
  std::optional<Address> last_proxy_address_;
};

// `target` behind a proxy with `spec`'s toxics; a target sockbench does not start gets its proxy
// now. nullptr with `error` when that proxy does not start.
std::unique_ptr<scenarios::CheckTarget> behind_proxy(std::unique_ptr<scenarios::CheckTarget> target,
                                                     const ProxySpec& spec, std::string* error);

}  // namespace sockbench::cli
