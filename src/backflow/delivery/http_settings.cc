#include "backflow/delivery/http_settings.h"

#include <algorithm>
#include <cctype>
#include <utility>

#include "fmt/format.h"

namespace backflow {

std::vector<SettingSpec> HttpSettingSpecs(const HttpSettingsDefaults& defaults) {
  std::vector<SettingSpec> specs;
  SettingSpec base;
  base.key = "base_url";
  base.label = "Base URL";
  base.description = "The API's address. " + defaults.base_url_help +
                     (defaults.base_url_help.empty() ? "" : " ") +
                     "Also for an egress proxy or a test server.";
  base.default_value = defaults.base_url;
  specs.push_back(base);

  SettingSpec rate;
  rate.key = "max_requests_per_second";
  rate.label = "Max requests per second";
  rate.description =
      "Caps the requests (retries included) sent to this destination per second across all of "
      "its mappings, below the vendor's own limit, which is always respected; 0 means no extra "
      "cap. Use it when the API quota is shared with other tools.";
  rate.type = SettingType::kInteger;
  rate.default_value = 0;
  specs.push_back(rate);

  SettingSpec timeout;
  timeout.key = "timeout_ms";
  timeout.label = "Timeout (ms)";
  timeout.description = "How long to wait for each reply before retrying.";
  timeout.type = SettingType::kInteger;
  timeout.default_value = defaults.timeout_ms;
  specs.push_back(timeout);

  SettingSpec retries;
  retries.key = "max_retries";
  retries.label = "Max retries";
  retries.description =
      "Retries per request after timeouts, connection errors, rate limiting and server errors.";
  retries.type = SettingType::kInteger;
  retries.default_value = defaults.max_retries;
  specs.push_back(retries);

  SettingSpec wait;
  wait.key = "max_retry_wait_s";
  wait.label = "Max retry wait (s)";
  wait.description = "Upper bound on any single wait between retries, Retry-After included.";
  wait.type = SettingType::kInteger;
  wait.default_value = 300;
  specs.push_back(wait);

  if (defaults.concurrency > 0) {
    specs.push_back(ConcurrencySettingSpec(defaults.concurrency));
  }
  return specs;
}

SettingSpec ConcurrencySettingSpec(int default_value) {
  SettingSpec c;
  c.key = "concurrency";
  c.label = "Concurrent requests";
  c.description = fmt::format(
      "Batches of one mapping sent at once (1 to {}). More hides network latency; the rate "
      "limits still apply across all of them.",
      kMaxConcurrency);
  c.type = SettingType::kInteger;
  c.default_value = default_value;
  return c;
}

absl::StatusOr<int> ParseConcurrency(const nlohmann::json& settings) {
  auto it = settings.find("concurrency");
  if (it == settings.end() || it->is_null()) return 1;
  if (!it->is_number_integer() || it->get<int64_t>() < 1 || it->get<int64_t>() > kMaxConcurrency) {
    return absl::InvalidArgumentError(
        fmt::format("concurrency: must be a whole number from 1 to {}", kMaxConcurrency));
  }
  return static_cast<int>(it->get<int64_t>());
}

std::unique_ptr<RateLimiter> HttpSettings::UserLimiter(Clock& clock) const {
  if (max_requests_per_second <= 0) return nullptr;
  return std::make_unique<RateLimiter>(clock, max_requests_per_second, std::chrono::seconds(1));
}

absl::StatusOr<HttpSettings> ParseHttpSettings(const nlohmann::json& settings) {
  HttpSettings out;
  auto integer = [&](const char* key, int64_t def, int64_t min) -> absl::StatusOr<int64_t> {
    auto it = settings.find(key);
    if (it == settings.end() || it->is_null()) return def;
    if (!it->is_number_integer() || it->get<int64_t>() < min) {
      return absl::InvalidArgumentError(fmt::format("{}: must be an integer >= {}", key, min));
    }
    return it->get<int64_t>();
  };
  auto base = settings.find("base_url");
  if (base == settings.end() || !base->is_string() || base->get<std::string>().empty()) {
    return absl::InvalidArgumentError("base_url: required");
  }
  out.base_url = base->get<std::string>();
  std::string scheme = out.base_url.substr(0, out.base_url.find(':'));
  std::transform(scheme.begin(), scheme.end(), scheme.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  if ((scheme != "http" && scheme != "https") || out.base_url.find("://") == std::string::npos) {
    return absl::InvalidArgumentError(
        fmt::format("base_url: must start with https:// or http://, got \"{}\"", out.base_url));
  }
  while (out.base_url.ends_with('/')) out.base_url.pop_back();

  absl::StatusOr<int64_t> rps = integer("max_requests_per_second", 0, 0);
  if (!rps.ok()) return rps.status();
  absl::StatusOr<int64_t> timeout = integer("timeout_ms", 30'000, 1);
  if (!timeout.ok()) return timeout.status();
  absl::StatusOr<int64_t> retries = integer("max_retries", 5, 0);
  if (!retries.ok()) return retries.status();
  absl::StatusOr<int64_t> wait = integer("max_retry_wait_s", 300, 0);
  if (!wait.ok()) return wait.status();
  out.max_requests_per_second = *rps;
  out.timeout = std::chrono::milliseconds(*timeout);
  out.retry.max_retries = static_cast<int>(std::min<int64_t>(*retries, 100));
  out.retry.max_wait = std::chrono::seconds(*wait);
  absl::StatusOr<int> concurrency = ParseConcurrency(settings);
  if (!concurrency.ok()) return concurrency.status();
  out.concurrency = *concurrency;
  return out;
}

}  // namespace backflow
