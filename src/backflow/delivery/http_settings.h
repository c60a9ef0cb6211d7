// The settings every HTTP destination takes, declared once: base_url (the
// vendor's default; regional hosts, proxies and tests override it),
// max_requests_per_second (a cap below the vendor's limit for quotas shared
// with other tools), timeout_ms, max_retries, max_retry_wait_s and, for
// destinations whose sessions may run concurrently, concurrency.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "backflow/catalog/definitions.h"
#include "backflow/common/clock.h"
#include "backflow/delivery/http_delivery.h"
#include "backflow/delivery/rate_limiter.h"
#include "nlohmann/json.hpp"

namespace backflow {

struct HttpSettingsDefaults {
  std::string base_url;       // the vendor's documented endpoint
  std::string base_url_help;  // when to change it (regions, instances)
  int max_retries = 5;
  int64_t timeout_ms = 30'000;
  // When > 0, the `concurrency` setting is declared with this default: the
  // destination's sessions may run at once (Destination::concurrency()).
  int concurrency = 0;
};

// The five SettingSpecs, to append to a destination's own settings.
std::vector<SettingSpec> HttpSettingSpecs(const HttpSettingsDefaults& defaults);

struct HttpSettings {
  std::string base_url;                 // without a trailing '/'
  int64_t max_requests_per_second = 0;  // 0: no user cap
  std::chrono::milliseconds timeout{30'000};
  RetryPolicy retry;
  int concurrency = 1;  // batches of one mapping in flight at once

  // The user's cap as a limiter, or null when there is none.
  std::unique_ptr<RateLimiter> UserLimiter(Clock& clock) const;
};

inline constexpr int kMaxConcurrency = 32;

// The `concurrency` setting (for destinations that declare it without the
// other HTTP settings) and its parser: 1 when unset, kInvalidArgument outside
// 1..kMaxConcurrency.
SettingSpec ConcurrencySettingSpec(int default_value);
absl::StatusOr<int> ParseConcurrency(const nlohmann::json& settings);

// Reads the settings declared by HttpSettingSpecs from validated settings
// (defaults filled in). kInvalidArgument, naming the key, for a base_url that
// is not http(s).
absl::StatusOr<HttpSettings> ParseHttpSettings(const nlohmann::json& settings);

}  // namespace backflow
