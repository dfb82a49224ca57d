#include "scenarios/tls_probe.h"

#include <fmt/format.h>
#include <poll.h>

#include "harness/core/frame.h"

namespace sockbench::scenarios {
namespace {

constexpr Millis kConnectTimeout{2000};

}  // namespace

tls::Config probe_config(const CheckOptions& options) {
  tls::Config config;
  config.version = options.tls_version;
  config.ciphers = options.tls_ciphers;
  config.insecure = true;
  return config;
}

std::optional<TlsProbe> TlsProbe::connect(const Address& address, tls::Config config, Outcome& o,
                                          const ConnectOptions& connect_options) {
  config.role = tls::Role::kClient;
  std::string error;
  auto context = tls::Context::make(config, &error);
  if (!context) {
    o.fail("TLS context: " + error);
    return std::nullopt;
  }
  auto client = Client::connect(address, kConnectTimeout, connect_options);
  if (!client) {
    o.fail("connect: " + errno_name(client.error().value()));
    return std::nullopt;
  }
  auto session = tls::Session::make(context, &error);
  if (!session) {
    o.fail("TLS session: " + error);
    return std::nullopt;
  }
  return TlsProbe(std::move(*client), std::move(session));
}

bool TlsProbe::handshake(Millis timeout) {
  return pump(timeout, [this] { return session_->handshake_done(); });
}

std::optional<std::string> TlsProbe::exchange(std::string_view payload, Millis timeout) {
  const std::string frame = encode_frame(payload);
  got_.clear();
  if (session_->send(frame) == tls::Session::State::kFailed) return std::nullopt;
  if (!pump(timeout, [&] { return got_.size() >= frame.size(); })) return std::nullopt;
  return got_.substr(0, frame.size());
}

bool TlsProbe::close_cleanly(Millis timeout) {
  session_->close();
  pump(timeout, [this] { return session_->state() == tls::Session::State::kClosed; });
  return session_->state() == tls::Session::State::kClosed;
}

std::string TlsProbe::seal(std::string_view plaintext) {
  session_->send(plaintext);
  return std::exchange(session_->output(), {});
}

std::string TlsProbe::seal_close() {
  session_->close();
  return std::exchange(session_->output(), {});
}

Received TlsProbe::exchange_sealed(std::string_view ciphertext, size_t n, Millis timeout,
                                   std::span<const size_t> pieces, Millis gap) {
  Received got = client_.exchange_decoded(
      ciphertext, n, timeout, pieces, gap, [this](std::string_view arrived, std::string& plain) {
        return session_->receive(arrived, plain) != tls::Session::State::kFailed;
      });
  if (got.eof) session_->transport_eof();
  if (session_->state() == tls::Session::State::kFailed) why_ = session_->error();
  return got;
}

ProbeResult probe_rr_tls(const Address& address, const tls::Config& config, int clients,
                         size_t payload_size, Millis duration, Millis timeout) {
  ProbeResult result;
  std::vector<TlsProbe> probes;
  for (int i = 0; i < clients; ++i) {
    Outcome ignored;
    auto probe = TlsProbe::connect(address, config, ignored);
    if (!probe || !probe->handshake(timeout)) {
      ++result.errors[probe ? "TLS handshake: " + probe->why() : "connect"];
      continue;
    }
    probes.push_back(std::move(*probe));
  }
  result.connected = static_cast<int>(probes.size());
  const auto end = SteadyClock::now() + duration;
  uint64_t seq = 0;
  while (!probes.empty() && SteadyClock::now() < end) {
    for (auto it = probes.begin(); it != probes.end();) {
      const std::string payload = make_payload(payload_size, seq++);
      const auto start = SteadyClock::now();
      const auto reply = it->exchange(payload, timeout);
      if (!reply) {
        ++result.timed_out;
        it = probes.erase(it);
        continue;
      }
      result.latency.record(static_cast<uint64_t>(
          std::chrono::duration_cast<std::chrono::nanoseconds>(SteadyClock::now() - start)
              .count()));
      if (*reply == encode_frame(payload)) {
        ++result.completed;
      } else {
        ++result.wrong;
      }
      ++it;
    }
  }
  return result;
}

bool TlsProbe::pump(Millis timeout, const std::function<bool()>& done) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  char buffer[16384];
  for (;;) {
    std::string& out = session_->output();
    if (!out.empty()) {
      if (auto ec = client_.send(out, timeout)) {
        why_ = "send: " + errno_name(ec.value());
        return false;
      }
      out.clear();
    }
    if (done()) return true;
    if (session_->state() == tls::Session::State::kFailed || eof_) return false;
    const auto left =
        std::chrono::duration_cast<Millis>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      why_ = fmt::format("nothing within {} ms", timeout.count());
      return false;
    }
    pollfd p{client_.fd(), POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) continue;
    auto n = recv_some(client_.fd(), std::span<char>(buffer, sizeof buffer));
    if (!n) {
      if (n.error().value() == EAGAIN || n.error().value() == EINTR) continue;
      why_ = errno_name(n.error().value());
      eof_ = true;
      session_->transport_eof();
      continue;
    }
    if (*n == 0) {
      eof_ = true;
      session_->transport_eof();
      continue;
    }
    session_->receive(std::string_view(buffer, *n), got_);
  }
}

}  // namespace sockbench::scenarios
