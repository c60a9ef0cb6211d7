#include "backflow/destinations/salesforce/salesforce_destination.h"

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <regex>
#include <set>
#include <span>
#include <utility>

#include "absl/status/status.h"
#include "backflow/common/clock.h"
#include "backflow/common/errors.h"
#include "backflow/common/fmt_absl.h"
#include "backflow/common/http_client.h"
#include "backflow/common/status_macros.h"
#include "backflow/common/url.h"
#include "backflow/delivery/http_delivery.h"
#include "backflow/delivery/http_settings.h"
#include "backflow/delivery/jwt_bearer.h"
#include "backflow/delivery/rate_limiter.h"
#include "backflow/destinations/destination.h"
#include "fmt/format.h"
#include "fmt/ranges.h"
#include "nlohmann/json.hpp"

namespace backflow {
namespace {

using json = nlohmann::json;

constexpr char kUserAgent[] = "backflow/0.1";
constexpr char kActionId[] = "upsert_record";
constexpr int kMaxBatchRecords = 10'000;
constexpr int kDefaultBulkThreshold = 2'000;
constexpr int64_t kDefaultBulkJobTimeoutS = 900;
constexpr int64_t kDefaultTimeoutMs = 120'000;
// Salesforce wants exp within 3 minutes; 150 s leaves room for clock skew.
constexpr std::chrono::seconds kAssertionLifetime{150};
// Nothing is sent for this long after the daily allocation ran out (the
// window is rolling: the next request after it is the re-check).
constexpr std::chrono::minutes kDailyHold{15};
// Wait suggested after the concurrent long-running request limit.
constexpr std::chrono::seconds kConcurrentWait{30};
constexpr std::chrono::milliseconds kLockBackoff{1000};
constexpr std::chrono::seconds kFirstPoll{1};
constexpr std::chrono::seconds kMaxPoll{30};
// Bulk API 2.0 takes 150 MB per upload and advises staying near 100 MB.
constexpr size_t kMaxJobBytes = 100 * 1024 * 1024;
constexpr size_t kMaxBulkFieldChars = 32'000;
constexpr size_t kMaxBulkRecordChars = 400'000;
// SOQL text per lookup query: conservative, so the URL stays far below
// Salesforce's 16 KB limit once percent-encoded.
constexpr size_t kMaxSoqlChars = 4'000;

std::string Dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

std::string Lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

bool IEquals(const std::string& a, const std::string& b) { return Lower(a) == Lower(b); }

bool IsApiName(const std::string& s) {
  static const std::regex kName("^[A-Za-z][A-Za-z0-9_]*$");
  return std::regex_match(s, kName);
}

std::string StringMember(const json& doc, const char* key) {
  if (!doc.is_object()) return "";
  auto it = doc.find(key);
  return it != doc.end() && it->is_string() ? it->get<std::string>() : "";
}

// ---------------------------------------------------------------- errors

struct SfError {
  std::string code;
  std::string message;
  std::vector<std::string> fields;
};

SfError ErrorFrom(const json& e) {
  SfError out;
  out.code = StringMember(e, "errorCode");
  if (out.code.empty()) out.code = StringMember(e, "statusCode");
  out.message = StringMember(e, "message");
  if (e.is_object() && e.contains("fields") && e["fields"].is_array()) {
    for (const json& f : e["fields"]) {
      if (f.is_string()) out.fields.push_back(f.get<std::string>());
    }
  }
  return out;
}

// The error envelope: [{"message","errorCode","fields"}] (or one object).
std::vector<SfError> ParseErrors(const std::string& body) {
  std::vector<SfError> out;
  json doc = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (doc.is_array()) {
    for (const json& e : doc) {
      if (e.is_object()) out.push_back(ErrorFrom(e));
    }
  } else if (doc.is_object()) {
    out.push_back(ErrorFrom(doc));
  }
  return out;
}

std::string ErrorText(const SfError& e) {
  std::string out = e.code.empty() ? e.message : e.code + ": " + e.message;
  if (!e.fields.empty()) out += fmt::format(" (fields: {})", fmt::join(e.fields, ", "));
  return out;
}

std::string ErrorsText(const std::vector<SfError>& errors) {
  std::vector<std::string> parts;
  for (const SfError& e : errors) parts.push_back(ErrorText(e));
  return parts.empty() ? "" : BodySnippet(fmt::format("{}", fmt::join(parts, "; ")));
}

// What Salesforce said in a failed reply.
std::string ReplyText(const HttpResponse& r) {
  std::string text = ErrorsText(ParseErrors(r.body));
  if (!text.empty()) return text;
  return r.body.empty() ? "(empty body)" : BodySnippet(r.body);
}

std::string FirstCode(const HttpResponse& r) {
  std::vector<SfError> errors = ParseErrors(r.body);
  return errors.empty() ? "" : errors.front().code;
}

// Whole-request codes that mean the mapping or settings are wrong: every
// record would fail the same way, so the run stops instead of bisecting.
bool IsConfigurationCode(const std::string& code) {
  static const std::set<std::string> kCodes = {"INVALID_FIELD",
                                               "NOT_FOUND",
                                               "INVALID_TYPE",
                                               "INVALIDJOB",
                                               "API_DISABLED_FOR_ORG",
                                               "API_CURRENTLY_DISABLED",
                                               "FUNCTIONALITY_NOT_ENABLED",
                                               "INVALID_OPERATION_WITH_EXPIRED_PASSWORD",
                                               "MALFORMED_QUERY",
                                               "INVALID_QUERY_FILTER_OPERATOR",
                                               "INSUFFICIENT_ACCESS_OR_READONLY",
                                               "INVALID_SESSION_ID"};
  return kCodes.count(code) > 0;
}

std::optional<SforceApiUsage> UsageOf(const HttpResponse& r) {
  std::optional<std::string> h = r.Header("sforce-limit-info");
  if (!h) return std::nullopt;
  return ParseSforceLimitInfo(*h);
}

bool IsRequestLimit(const HttpResponse& r) {
  return r.status == 403 && FirstCode(r) == "REQUEST_LIMIT_EXCEEDED";
}

// REQUEST_LIMIT_EXCEEDED while the daily allocation has room left: the
// concurrent long-running request limit, which clears within seconds.
// Without Sforce-Limit-Info the daily allocation is assumed used up, so a
// limit Backflow cannot tell apart is never hammered.
bool IsConcurrentLimit(const HttpResponse& r) {
  if (!IsRequestLimit(r)) return false;
  std::optional<SforceApiUsage> usage = UsageOf(r);
  return usage && usage->limit > 0 && usage->used < usage->limit;
}

// Adds what to do to a refused JWT bearer grant, by Salesforce's description.
absl::Status ExplainGrant(const absl::Status& s, const std::string& username,
                          const std::string& audience) {
  if (s.code() != absl::StatusCode::kUnauthenticated) return s;
  std::string m = Lower(std::string(s.message()));
  std::string advice;
  if (m.find("hasn't approved") != std::string::npos ||
      m.find("not admin approved") != std::string::npos ||
      m.find("invalid_app_access") != std::string::npos) {
    advice = fmt::format(
        "The user {} is not pre-authorised for the connected app: in Salesforce Setup > App "
        "Manager > your app > Manage > Edit Policies, set Permitted Users to \"Admin approved "
        "users are pre-authorized\", then add the user's profile (Manage Profiles) or a "
        "permission set (Manage Permission Sets) that includes the user",
        username);
  } else if (m.find("client identifier invalid") != std::string::npos ||
             m.find("invalid_client") != std::string::npos) {
    advice =
        "consumer_key does not name a connected app of this org: copy the Consumer Key from Setup "
        "> App Manager > your app > View > Manage Consumer Details (a new app can take up to 10 "
        "minutes to become usable)";
  } else if (m.find("audience") != std::string::npos) {
    advice = fmt::format(
        "The JWT audience {} was refused: production orgs need https://login.salesforce.com and "
        "sandboxes https://test.salesforce.com (set login_url, or audience when login_url is a "
        "My Domain URL)",
        audience);
  } else if (m.find("expired") != std::string::npos) {
    advice = "The assertion was refused as expired: check this machine's clock (NTP)";
  } else if (m.find("invalid assertion") != std::string::npos ||
             m.find("signature") != std::string::npos) {
    advice = fmt::format(
        "The assertion did not verify: private_key must be the key of the certificate uploaded "
        "to the connected app (\"Use digital signatures\"), and username ({}) must be an active "
        "user of the org behind login_url",
        username);
  } else {
    advice = "Check consumer_key, username, private_key and login_url";
  }
  return absl::UnauthenticatedError(fmt::format("{}. {}", s.message(), advice));
}

// ---------------------------------------------------------------- config

struct SalesforceConfig {
  std::string consumer_key;
  std::string username;
  std::string private_key;
  std::string login_url;
  std::string audience;
  std::string object;
  std::string api_version;
  int64_t bulk_threshold = kDefaultBulkThreshold;
  std::chrono::seconds bulk_job_timeout{kDefaultBulkJobTimeoutS};
  int64_t max_api_usage_percent = 100;
  bool base_url_set = false;  // base_url overrides the token reply's instance_url
  HttpSettings http;
};

absl::StatusOr<SalesforceConfig> ParseConfig(const json& settings) {
  if (!settings.is_object()) return absl::InvalidArgumentError("salesforce settings must be a map");
  SalesforceConfig cfg;
  auto text = [&](const char* name) -> std::string {
    std::string v = StringMember(settings, name);
    while (!v.empty() && std::isspace(static_cast<unsigned char>(v.back()))) v.pop_back();
    while (!v.empty() && std::isspace(static_cast<unsigned char>(v.front()))) v.erase(0, 1);
    return v;
  };
  cfg.consumer_key = text("consumer_key");
  if (cfg.consumer_key.empty()) {
    return absl::InvalidArgumentError(
        "consumer_key: required; the connected app's Consumer Key (Setup > App Manager > your app "
        "> View > Manage Consumer Details)");
  }
  cfg.username = text("username");
  if (cfg.username.empty()) {
    return absl::InvalidArgumentError(
        "username: required; the Salesforce username records are written as (the JWT's sub)");
  }
  cfg.private_key = StringMember(settings, "private_key");
  // Keys pasted into one-line variables often carry literal "\n".
  if (cfg.private_key.find('\n') == std::string::npos &&
      cfg.private_key.find("\\n") != std::string::npos) {
    std::string fixed;
    for (size_t i = 0; i < cfg.private_key.size(); ++i) {
      if (cfg.private_key[i] == '\\' && i + 1 < cfg.private_key.size() &&
          cfg.private_key[i + 1] == 'n') {
        fixed.push_back('\n');
        ++i;
      } else {
        fixed.push_back(cfg.private_key[i]);
      }
    }
    cfg.private_key = fixed;
  }
  if (cfg.private_key.empty()) {
    return absl::InvalidArgumentError(
        "private_key: required; the PEM private key of the certificate uploaded to the connected "
        "app, e.g. ${env:SALESFORCE_PRIVATE_KEY}");
  }
  cfg.login_url = text("login_url");
  if (cfg.login_url.empty()) cfg.login_url = kSalesforceDefaultLoginUrl;
  while (cfg.login_url.ends_with('/')) cfg.login_url.pop_back();
  if (!cfg.login_url.starts_with("https://") && !cfg.login_url.starts_with("http://")) {
    return absl::InvalidArgumentError(fmt::format(
        "login_url: must start with https://, got \"{}\" (https://login.salesforce.com, "
        "https://test.salesforce.com or your My Domain URL)",
        cfg.login_url));
  }
  cfg.audience = text("audience");
  if (cfg.audience.empty()) cfg.audience = cfg.login_url;
  cfg.object = text("object");
  if (!IsApiName(cfg.object)) {
    return absl::InvalidArgumentError(fmt::format(
        "object: \"{}\" is not an sObject API name; use e.g. Contact, Lead, Account or a custom "
        "object such as Subscription__c",
        cfg.object));
  }
  cfg.api_version = text("api_version");
  if (cfg.api_version.empty()) cfg.api_version = kSalesforceDefaultApiVersion;
  if (cfg.api_version.starts_with('v')) cfg.api_version.erase(0, 1);
  {
    static const std::regex kVersion("^([0-9]{2,3})\\.0$");
    std::smatch m;
    if (!std::regex_match(cfg.api_version, m, kVersion) || std::stoi(m[1].str()) < 46) {
      return absl::InvalidArgumentError(fmt::format(
          "api_version: \"{}\" is not a REST API version of 46.0 or later (upserting sObject "
          "Collections by external id needs 46.0); the default is {}",
          cfg.api_version, kSalesforceDefaultApiVersion));
    }
  }
  auto integer = [&](const char* name, int64_t min, int64_t max, int64_t& target) -> absl::Status {
    auto it = settings.find(name);
    if (it == settings.end() || it->is_null()) return absl::OkStatus();
    if (!it->is_number_integer() || it->get<int64_t>() < min || it->get<int64_t>() > max) {
      return absl::InvalidArgumentError(
          fmt::format("{}: must be a whole number from {} to {}", name, min, max));
    }
    target = it->get<int64_t>();
    return absl::OkStatus();
  };
  BACKFLOW_RETURN_IF_ERROR(integer("bulk_threshold", 0, kMaxBatchRecords, cfg.bulk_threshold));
  int64_t timeout_s = kDefaultBulkJobTimeoutS;
  BACKFLOW_RETURN_IF_ERROR(integer("bulk_job_timeout_s", 10, 86'400, timeout_s));
  cfg.bulk_job_timeout = std::chrono::seconds(timeout_s);
  BACKFLOW_RETURN_IF_ERROR(integer("max_api_usage_percent", 1, 100, cfg.max_api_usage_percent));

  json http = settings;
  auto base = settings.find("base_url");
  cfg.base_url_set =
      base != settings.end() && base->is_string() && !base->get<std::string>().empty();
  if (!cfg.base_url_set) http["base_url"] = "https://instance-url.invalid";
  BACKFLOW_ASSIGN_OR_RETURN(cfg.http, ParseHttpSettings(http));
  if (!cfg.base_url_set) cfg.http.base_url.clear();
  return cfg;
}

// ---------------------------------------------------------------- values

// A mapped value as Salesforce JSON: scalars as they are, lists of scalars
// as "a;b" (multi-select picklists). Sets `error` for JSON objects.
json FieldJson(const Value& v, const std::string& field, std::string& error) {
  json j = ValueToJson(v);
  if (j.is_object()) {
    error = fmt::format(
        "field \"{}\" is a JSON object; Salesforce fields take text, numbers, booleans and "
        "dates (map a parent's external id as Relationship.Field, e.g. Account.Ext_Acct__c)",
        field);
    return nullptr;
  }
  if (j.is_array()) {
    std::vector<std::string> parts;
    for (const json& e : j) {
      if (e.is_object() || e.is_array()) {
        error = fmt::format(
            "field \"{}\" is a list of objects; only lists of values (sent as "
            "\"a;b\" for multi-select picklists) are supported",
            field);
        return nullptr;
      }
      parts.push_back(e.is_string() ? e.get<std::string>() : e.dump());
    }
    return fmt::format("{}", fmt::join(parts, ";"));
  }
  return j;
}

// A JSON value as text (external ids, CSV cells).
std::string JsonText(const json& j) {
  if (j.is_string()) return j.get<std::string>();
  if (j.is_null()) return "";
  return j.dump();
}

// A number's text as it is compared with what a query returns.
std::string NumberKey(const std::string& text) {
  char* end = nullptr;
  double d = std::strtod(text.c_str(), &end);
  if (end == text.c_str() || *end != '\0') return text;
  return fmt::format("{:.15g}", d);
}

bool IsNumericType(const std::string& type) {
  return type == "double" || type == "int" || type == "currency" || type == "percent" ||
         type == "long";
}

// ---------------------------------------------------------------- destination

struct Describe {
  json fields_by_name = json::object();       // lower-case name -> field description
  std::map<std::string, json> relationships;  // lower-case relationship name -> field
  bool createable = true;
  bool updateable = true;
  bool deletable = true;
};

// A failed exchange: its status and whether it stops the run.
struct Failed {
  absl::Status status;
  bool stop = false;
};

class SalesforceDestination final : public Destination, public SalesforceApiUsageReporter {
 public:
  SalesforceDestination(SalesforceConfig cfg, std::unique_ptr<JwtBearerTokenSource> tokens,
                        HttpClient* http, Clock* clock)
      : cfg_(std::move(cfg)),
        tokens_(std::move(tokens)),
        http_(http),
        clock_(clock),
        user_limiter_(cfg_.http.UserLimiter(*clock)) {}

  absl::Status CheckConnection() override;
  absl::StatusOr<std::unique_ptr<ActionSession>> StartSession(
      const SessionOptions& options) override;

  std::optional<SforceApiUsage> last_api_usage() const override {
    std::lock_guard<std::mutex> lock(mu_);
    return usage_;
  }

  const SalesforceConfig& config() const { return cfg_; }
  Clock* clock() const { return clock_; }

  HttpDelivery NewDelivery() {
    VendorRules rules;
    rules.retryable = [](const HttpResponse& r) {
      return DefaultRetryableStatus(r.status) || IsConcurrentLimit(r);
    };
    return HttpDelivery(http_, clock_, {user_limiter_.get()}, cfg_.http.retry, rules,
                        tokens_.get());
  }

  // The REST API root, "{instance}/services/data/vNN.N": base_url, or the
  // instance_url of the token reply (minting a token if there is none yet).
  absl::StatusOr<std::string> ApiRoot() {
    std::string base = cfg_.http.base_url;
    if (base.empty()) {
      absl::StatusOr<std::string> token = tokens_->Token(false);
      if (!token.ok()) return Explain(token.status());
      base = StringMember(tokens_->LastTokenResponse(), "instance_url");
      while (base.ends_with('/')) base.pop_back();
      if (!base.starts_with("https://") && !base.starts_with("http://")) {
        return absl::FailedPreconditionError(fmt::format(
            "Salesforce's token reply has no usable instance_url (\"{}\"); set base_url to your "
            "org's My Domain URL (https://<domain>.my.salesforce.com)",
            base));
      }
    }
    return fmt::format("{}/services/data/v{}", base, cfg_.api_version);
  }

  HttpRequest Request(std::string method, std::string url, std::string body = "",
                      const char* content_type = "application/json") const {
    HttpRequest req;
    req.method = std::move(method);
    req.url = std::move(url);
    req.body = std::move(body);
    req.timeout = cfg_.http.timeout;
    req.headers.emplace_back("Accept", "application/json");
    req.headers.emplace_back("User-Agent", kUserAgent);
    if (!req.body.empty()) req.headers.emplace_back("Content-Type", content_type);
    return req;
  }

  absl::Status Explain(const absl::Status& s) const {
    return ExplainGrant(s, cfg_.username, cfg_.audience);
  }

  // Records the API usage a reply reports; past max_api_usage_percent this
  // destination holds like after a daily limit.
  void Observe(const DeliveryResult& d) {
    if (!d.response.ok()) return;
    std::optional<SforceApiUsage> usage = UsageOf(*d.response);
    if (!usage) return;
    std::lock_guard<std::mutex> lock(mu_);
    usage_ = usage;
    if (cfg_.max_api_usage_percent < 100 && usage->limit > 0 &&
        usage->used * 100 >= cfg_.max_api_usage_percent * usage->limit) {
      hold_ = WithRetryAfter(
          absl::ResourceExhaustedError(fmt::format(
              "Salesforce API usage is {} of {} requests in the last 24 hours, at or above "
              "max_api_usage_percent ({}%): Backflow pauses this destination to leave the rest "
              "of the org's daily allocation to other integrations. The window is rolling; the "
              "remaining records are sent by a later run",
              usage->used, usage->limit, cfg_.max_api_usage_percent)),
          kDailyHold);
      hold_until_ = clock_->Now() + kDailyHold;
    }
  }

  // Non-OK while a daily-limit hold lasts.
  absl::Status Hold() const {
    std::lock_guard<std::mutex> lock(mu_);
    if (hold_.ok() || clock_->Now() >= hold_until_) return absl::OkStatus();
    return hold_;
  }

  Failed Classify(const DeliveryResult& d, std::string_view op);

  // The object's description (cached once it succeeds).
  absl::StatusOr<std::shared_ptr<const Describe>> DescribeObject(HttpDelivery& delivery);

 private:
  void HoldFor(const absl::Status& s) {
    std::lock_guard<std::mutex> lock(mu_);
    hold_ = s;
    hold_until_ = clock_->Now() + kDailyHold;
  }

  SalesforceConfig cfg_;
  std::unique_ptr<JwtBearerTokenSource> tokens_;
  HttpClient* http_;
  Clock* clock_;
  std::unique_ptr<RateLimiter> user_limiter_;  // may be null

  mutable std::mutex mu_;
  std::optional<SforceApiUsage> usage_;
  absl::Status hold_;
  Clock::TimePoint hold_until_;
  std::shared_ptr<const Describe> describe_;
};

Failed SalesforceDestination::Classify(const DeliveryResult& d, std::string_view op) {
  if (!d.auth_error.ok()) {
    absl::Status s = Explain(d.auth_error);
    return {s, !IsRetryable(s)};
  }
  if (!d.response.ok()) {
    const absl::Status& s = d.response.status();
    std::string message = fmt::format("could not reach Salesforce to {} {}: {}", op,
                                      d.AttemptsText(), std::string(s.message()));
    return {s.code() == absl::StatusCode::kDeadlineExceeded ? absl::DeadlineExceededError(message)
                                                            : absl::UnavailableError(message),
            false};
  }
  const HttpResponse& r = *d.response;
  std::string said = ReplyText(r);
  if (r.status == 401) {
    return {absl::UnauthenticatedError(fmt::format(
                "Salesforce refused the session even after a new token was minted (HTTP 401, {}): "
                "check that user {} is active, not frozen, and has the \"API Enabled\" "
                "permission, and that the connected app's OAuth policies allow the api scope",
                said, cfg_.username)),
            true};
  }
  if (IsRequestLimit(r)) {
    std::optional<SforceApiUsage> usage = UsageOf(r);
    if (IsConcurrentLimit(r)) {
      return {WithRetryAfter(absl::ResourceExhaustedError(fmt::format(
                                 "Salesforce's concurrent long-running request limit was hit "
                                 "while trying to {} {} (HTTP 403 REQUEST_LIMIT_EXCEEDED; API "
                                 "usage {}/{}): too many requests of 20 s or more run in the org "
                                 "at once; the records are sent again later. Salesforce said: {}",
                                 op, d.AttemptsText(), usage->used, usage->limit, said)),
                             kConcurrentWait),
              false};
    }
    absl::Status s = WithRetryAfter(
        absl::ResourceExhaustedError(fmt::format(
            "Salesforce's daily API request allocation is used up (HTTP 403 "
            "REQUEST_LIMIT_EXCEEDED{}): the 24-hour window is rolling, so Backflow does not "
            "retry; this run stopped, nothing is sent for {} minutes, and the remaining records "
            "are sent by a later run. Check usage in Setup > Company Information, or buy more "
            "API calls. Salesforce said: {}",
            usage ? fmt::format(", API usage {}/{}", usage->used, usage->limit) : "",
            kDailyHold.count(), said)),
        kDailyHold);
    HoldFor(s);
    return {s, true};
  }
  if (r.status == 403) {
    return {absl::PermissionDeniedError(fmt::format(
                "Salesforce denied the request to {} (HTTP 403, {}): give user {} the "
                "\"API Enabled\" permission and Read, Create and Edit (and Delete, for deleted "
                "records) on {} and the mapped fields, through its profile or a permission set",
                op, said, cfg_.username, cfg_.object)),
            true};
  }
  if (r.status == 404) {
    return {absl::FailedPreconditionError(fmt::format(
                "Salesforce answered HTTP 404 to the request to {} ({}): check object ({}: custom "
                "objects end in __c), the mapped External ID field, api_version ({}) and "
                "base_url",
                op, said, cfg_.object, cfg_.api_version)),
            true};
  }
  if (DefaultRetryableStatus(r.status)) {
    std::string message = fmt::format("Salesforce answered HTTP {} to the request to {} {}: {}",
                                      r.status, op, d.AttemptsText(), said);
    if (r.status == 429) return {absl::ResourceExhaustedError(message), false};
    return {absl::UnavailableError(message), false};
  }
  if (IsConfigurationCode(FirstCode(r))) {
    return {absl::FailedPreconditionError(fmt::format(
                "Salesforce rejected the request to {} (HTTP {}): {}. Fix the mapping's fields or "
                "the destination's object ({}): every record would fail the same way",
                op, r.status, said, cfg_.object)),
            true};
  }
  return {absl::InvalidArgumentError(fmt::format(
              "Salesforce rejected the request to {} (HTTP {}): {}", op, r.status, said)),
          false};
}

absl::StatusOr<std::shared_ptr<const Describe>> SalesforceDestination::DescribeObject(
    HttpDelivery& delivery) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (describe_) return describe_;
  }
  BACKFLOW_ASSIGN_OR_RETURN(std::string root, ApiRoot());
  std::string url = root + "/sobjects/" + cfg_.object + "/describe";
  DeliveryResult d = delivery.Send([&] { return Request("GET", url); });
  Observe(d);
  if (!d.response.ok() || d.response->status != 200) {
    Failed f = Classify(d, fmt::format("describe {}", cfg_.object));
    if (d.response.ok() && d.response->status == 404) {
      return absl::FailedPreconditionError(fmt::format(
          "Salesforce has no object \"{}\" that user {} can see (HTTP 404 on describe): check the "
          "object's API name (Setup > Object Manager; custom objects end in __c), that the user's "
          "profile or a permission set grants Read on it, and api_version ({})",
          cfg_.object, cfg_.username, cfg_.api_version));
    }
    return f.status;
  }
  json doc = json::parse(d.response->body, nullptr, /*allow_exceptions=*/false);
  if (!doc.is_object() || !doc.contains("fields") || !doc["fields"].is_array()) {
    return absl::UnavailableError(fmt::format("Salesforce's describe of {} has no fields: {}",
                                              cfg_.object, BodySnippet(d.response->body)));
  }
  auto out = std::make_shared<Describe>();
  out->createable = doc.value("createable", true);
  out->updateable = doc.value("updateable", true);
  out->deletable = doc.value("deletable", true);
  for (const json& f : doc["fields"]) {
    std::string name = StringMember(f, "name");
    if (name.empty()) continue;
    out->fields_by_name[Lower(name)] = f;
    std::string rel = StringMember(f, "relationshipName");
    if (!rel.empty()) out->relationships[Lower(rel)] = f;
  }
  std::lock_guard<std::mutex> lock(mu_);
  describe_ = out;
  return describe_;
}

absl::Status SalesforceDestination::CheckConnection() {
  BACKFLOW_RETURN_IF_ERROR(Hold());
  absl::StatusOr<std::string> token = tokens_->Token(false);
  if (!token.ok()) return Explain(token.status());
  BACKFLOW_ASSIGN_OR_RETURN(std::string root, ApiRoot());
  HttpDelivery delivery = NewDelivery();
  std::string url = root + "/sobjects/" + cfg_.object + "/describe";
  DeliveryResult d = delivery.Send([&] { return Request("GET", url); }, /*retry=*/false);
  Observe(d);
  if (d.response.ok() && d.response->status == 200) {
    json doc = json::parse(d.response->body, nullptr, /*allow_exceptions=*/false);
    std::vector<std::string> missing;
    if (doc.is_object()) {
      if (!doc.value("createable", true)) missing.push_back("Create");
      if (!doc.value("updateable", true)) missing.push_back("Edit");
    }
    if (!missing.empty()) {
      return absl::PermissionDeniedError(fmt::format(
          "user {} may read {} but lacks {} on it: upserts need Create and Edit (and Delete for "
          "deleted records); grant them through the user's profile or a permission set",
          cfg_.username, cfg_.object, fmt::join(missing, " and ")));
    }
    return absl::OkStatus();
  }
  if (d.response.ok() && d.response->status == 404) {
    return absl::FailedPreconditionError(fmt::format(
        "Salesforce has no object \"{}\" that user {} can see (HTTP 404): check object (Setup > "
        "Object Manager shows API names; custom objects end in __c), the user's access to it, "
        "and api_version ({})",
        cfg_.object, cfg_.username, cfg_.api_version));
  }
  return Classify(d, fmt::format("describe {}", cfg_.object)).status;
}

// ---------------------------------------------------------------- session

// One record of a batch, ready to send.
struct Item {
  bool is_delete = false;
  std::string key;                 // the external id as text
  json record;                     // collections JSON (upserts)
  std::vector<std::string> cells;  // CSV cells in layout order (upserts)
  bool bulk_ok = true;             // fits Bulk API 2.0's field and record limits
  absl::Status status;             // a preparation error
};

// Outcomes of a batch's records as they are decided.
struct Ledger {
  std::vector<std::optional<absl::Status>> out;
  bool delivered = false;

  void Set(size_t i, absl::Status s) {
    if (s.ok()) delivered = true;
    out[i] = std::move(s);
  }
};

class SalesforceSession final : public ActionSession {
 public:
  SalesforceSession(SalesforceDestination* dest, SessionOptions options, size_t ext_field_index,
                    size_t ext_identity_index)
      : dest_(dest),
        options_(std::move(options)),
        ext_field_(options_.layout.fields[ext_field_index]),
        ext_field_index_(ext_field_index),
        ext_identity_index_(ext_identity_index),
        delivery_(dest->NewDelivery()),
        rng_(std::random_device{}()) {}

  absl::StatusOr<std::vector<absl::Status>> SendBatch(
      std::span<const OutgoingRecord> batch) override;
  absl::Status Finish() override { return absl::OkStatus(); }

 private:
  const SalesforceConfig& cfg() const { return dest_->config(); }
  // Checks the object and mapped fields against the object's description.
  absl::Status CheckMapping();
  Item Prepare(const OutgoingRecord& r) const;
  void Backoff(int attempt, std::chrono::milliseconds base);
  std::string RecordLabel() const { return cfg().object + " record"; }

  // Each returns non-OK to stop the run; outcomes go to `ledger`.
  absl::Status UpsertCollections(const std::vector<size_t>& items, Ledger& ledger);
  absl::StatusOr<PartOutcome> UpsertPart(const std::vector<size_t>& part);
  absl::Status UpsertBulk(const std::vector<size_t>& items, Ledger& ledger,
                          std::vector<size_t>& retry);
  absl::Status RunJob(const std::vector<size_t>& items, Ledger& ledger, std::vector<size_t>& retry);
  void AbortJob(const std::string& root, const std::string& id);
  absl::Status DeleteRecords(const std::vector<size_t>& items, Ledger& ledger);
  // Record ids per external id key (exact text, else case-insensitive).
  absl::Status LookUpIds(const std::vector<size_t>& items,
                         std::map<size_t, std::vector<std::string>>& ids, Ledger& ledger);
  absl::Status DeleteIds(const std::vector<std::string>& ids,
                         std::map<std::string, absl::Status>& outcome);

  SalesforceDestination* dest_;
  SessionOptions options_;
  std::string ext_field_;
  size_t ext_field_index_;
  size_t ext_identity_index_;  // npos when the external id is not an identity field
  HttpDelivery delivery_;
  std::mt19937_64 rng_;
  std::vector<Item> items_;  // the current batch's
  bool checked_ = false;
  bool ext_numeric_ = false;
  absl::Status stop_;
};

absl::Status SalesforceSession::CheckMapping() {
  BACKFLOW_ASSIGN_OR_RETURN(std::shared_ptr<const Describe> describe,
                            dest_->DescribeObject(delivery_));
  const std::string& object = cfg().object;
  auto ext = describe->fields_by_name.find(Lower(ext_field_));
  if (ext == describe->fields_by_name.end()) {
    return absl::FailedPreconditionError(fmt::format(
        "{} has no field \"{}\" (the field mapped from the model's primary key, which records are "
        "upserted by): check its API name in Setup > Object Manager > {} > Fields & "
        "Relationships (custom fields end in __c) and that field-level security lets user {} see "
        "it",
        object, ext_field_, object, cfg().username));
  }
  if (!ext->value("externalId", false)) {
    return absl::FailedPreconditionError(fmt::format(
        "{}.{} is not an External ID field, so records cannot be upserted by it: edit the field "
        "in Setup > Object Manager > {} > Fields & Relationships and tick \"External ID\" (and "
        "\"Unique\"), or map the model's primary key to a field that is one",
        object, ext_field_, object));
  }
  ext_numeric_ = IsNumericType(StringMember(*ext, "type"));
  std::vector<std::string> problems;
  for (const std::string& field : options_.layout.fields) {
    size_t dot = field.find('.');
    if (dot != std::string::npos) {
      std::string rel = field.substr(0, dot);
      if (!describe->relationships.count(Lower(rel))) {
        problems.push_back(fmt::format(
            "\"{}\": {} has no lookup relationship named {} (standard ones are named like the "
            "parent, e.g. Account; custom ones end in __r)",
            field, object, rel));
      }
      continue;
    }
    auto f = describe->fields_by_name.find(Lower(field));
    if (f == describe->fields_by_name.end()) {
      problems.push_back(fmt::format(
          "\"{}\": {} has no such field, or field-level security hides it from user {} (custom "
          "fields end in __c)",
          field, object, cfg().username));
    } else if (!f->value("createable", true) && !f->value("updateable", true)) {
      problems.push_back(fmt::format(
          "\"{}\" is read-only (a formula, roll-up, system field, or read-only for user {} by "
          "field-level security)",
          field, cfg().username));
    }
  }
  if (!problems.empty()) {
    return absl::FailedPreconditionError(
        fmt::format("mapping \"{}\" cannot write to {}: {}. Nothing was sent", options_.mapping,
                    object, fmt::join(problems, "; ")));
  }
  return absl::OkStatus();
}

Item SalesforceSession::Prepare(const OutgoingRecord& r) const {
  Item item;
  item.is_delete = r.is_delete();
  const std::vector<std::string>& fields = options_.layout.fields;
  auto bad = [&](std::string message) {
    item.status = absl::InvalidArgumentError(std::move(message));
    return item;
  };
  if (item.is_delete) {
    if (ext_identity_index_ == std::string::npos || ext_identity_index_ >= r.values.size()) {
      item.status = absl::FailedPreconditionError(fmt::format(
          "cannot delete this {}: a delete carries only the model's primary key, and {} is not "
          "mapped from it",
          RecordLabel(), ext_field_));
      return item;
    }
    std::string unused;
    json v = FieldJson(r.values[ext_identity_index_], ext_field_, unused);
    item.key = JsonText(v);
  } else {
    item.record = json::object();
    item.record["attributes"] = {{"type", cfg().object}};
    size_t chars = 0;
    for (size_t i = 0; i < fields.size() && i < r.values.size(); ++i) {
      std::string error;
      json v = FieldJson(r.values[i], fields[i], error);
      if (!error.empty()) return bad(error);
      size_t dot = fields[i].find('.');
      std::string cell;
      if (dot != std::string::npos) {
        // A parent lookup by external id; NULL leaves the lookup as it is.
        if (v.is_null()) {
          cell = "";
        } else {
          item.record[fields[i].substr(0, dot)][fields[i].substr(dot + 1)] = JsonText(v);
          cell = JsonText(v);
        }
      } else if (i == ext_field_index_) {
        item.key = JsonText(v);
        if (ext_numeric_ && v.is_string()) {
          char* end = nullptr;
          double d = std::strtod(item.key.c_str(), &end);
          if (end != item.key.c_str() && *end == '\0') v = d;
        }
        item.record[fields[i]] = ext_numeric_ ? v : json(item.key);
        cell = item.key;
      } else {
        item.record[fields[i]] = v;
        // Bulk CSV: an empty cell leaves the field unchanged; #N/A clears it.
        cell =
            v.is_null() || (v.is_string() && v.get<std::string>().empty()) ? "#N/A" : JsonText(v);
      }
      if (cell.size() > kMaxBulkFieldChars) item.bulk_ok = false;
      chars += cell.size();
      item.cells.push_back(std::move(cell));
    }
    if (chars > kMaxBulkRecordChars) item.bulk_ok = false;
  }
  if (item.key.empty()) {
    return bad(fmt::format(
        "the External ID field {} is empty, so Salesforce cannot tell which {} this is: make "
        "sure the model's primary key is never empty",
        ext_field_, RecordLabel()));
  }
  return item;
}

void SalesforceSession::Backoff(int attempt, std::chrono::milliseconds base) {
  const RetryPolicy& policy = cfg().http.retry;
  double ceiling = static_cast<double>(base.count()) * std::pow(2.0, std::min(attempt - 1, 30));
  ceiling = std::min(ceiling, static_cast<double>(policy.max_wait.count()));
  std::uniform_int_distribution<int64_t> dist(static_cast<int64_t>(ceiling / 2),
                                              std::max<int64_t>(0, std::llround(ceiling)));
  dest_->clock()->SleepFor(std::chrono::milliseconds(dist(rng_)));
}

absl::StatusOr<std::vector<absl::Status>> SalesforceSession::SendBatch(
    std::span<const OutgoingRecord> batch) {
  if (!stop_.ok()) return stop_;
  BACKFLOW_RETURN_IF_ERROR(dest_->Hold());
  std::vector<absl::Status> results(batch.size(), absl::OkStatus());
  if (batch.empty()) return results;
  if (!checked_) {
    absl::Status s = CheckMapping();
    if (!s.ok()) {
      if (!IsRetryable(s)) {
        stop_ = s;
        return s;
      }
      std::fill(results.begin(), results.end(), s);
      return results;
    }
    checked_ = true;
  }

  items_.clear();
  items_.reserve(batch.size());
  for (const OutgoingRecord& r : batch) items_.push_back(Prepare(r));
  // One change per external id: the last one wins.
  std::map<std::string, size_t> last_of_key;
  for (size_t i = 0; i < items_.size(); ++i) {
    if (items_[i].status.ok()) last_of_key[items_[i].key] = i;
  }
  Ledger ledger;
  ledger.out.resize(batch.size());
  std::vector<size_t> upserts, bulk, deletes;
  for (size_t i = 0; i < items_.size(); ++i) {
    if (!items_[i].status.ok()) {
      ledger.out[i] = items_[i].status;
    } else if (last_of_key[items_[i].key] == i) {
      (items_[i].is_delete ? deletes : upserts).push_back(i);
    }
  }
  size_t bulk_eligible = static_cast<size_t>(
      std::count_if(upserts.begin(), upserts.end(), [&](size_t i) { return items_[i].bulk_ok; }));
  if (cfg().bulk_threshold > 0 && bulk_eligible >= static_cast<size_t>(cfg().bulk_threshold)) {
    std::vector<size_t> rest;
    for (size_t i : upserts) (items_[i].bulk_ok ? bulk : rest).push_back(i);
    upserts = std::move(rest);
  }

  absl::Status stop;
  if (!bulk.empty()) {
    std::vector<size_t> retry;
    stop = UpsertBulk(bulk, ledger, retry);
    upserts.insert(upserts.end(), retry.begin(), retry.end());
  }
  if (stop.ok() && !upserts.empty()) stop = UpsertCollections(upserts, ledger);
  if (stop.ok() && !deletes.empty()) stop = DeleteRecords(deletes, ledger);

  if (!stop.ok()) {
    if (!IsRetryable(stop) || stop.code() == absl::StatusCode::kResourceExhausted) stop_ = stop;
    if (!ledger.delivered) return stop;
  }
  for (size_t i = 0; i < batch.size(); ++i) {
    if (ledger.out[i]) continue;
    if (items_[i].status.ok() && last_of_key[items_[i].key] != i) continue;
    ledger.out[i] = stop.ok() ? absl::InternalError("record left without an outcome") : stop;
  }
  for (size_t i = 0; i < batch.size(); ++i) {
    if (items_[i].status.ok() && last_of_key[items_[i].key] != i) {
      results[i] = *ledger.out[last_of_key[items_[i].key]];
    } else {
      results[i] = *ledger.out[i];
    }
  }
  return results;
}

// ------------------------------------------------------------ collections

absl::Status SalesforceSession::UpsertCollections(const std::vector<size_t>& items,
                                                  Ledger& ledger) {
  for (size_t begin = 0; begin < items.size(); begin += kSalesforceCollectionMax) {
    std::vector<size_t> chunk(items.begin() + static_cast<long>(begin),
                              items.begin() + static_cast<long>(std::min(
                                                  items.size(), begin + kSalesforceCollectionMax)));
    // SendBisecting works on spans of records; parts map back by offset.
    std::vector<OutgoingRecord> shadow(chunk.size());
    absl::StatusOr<std::vector<absl::Status>> sent =
        SendBisecting(shadow, [&](std::span<const OutgoingRecord> part) {
          size_t offset = static_cast<size_t>(part.data() - shadow.data());
          std::vector<size_t> indices(chunk.begin() + static_cast<long>(offset),
                                      chunk.begin() + static_cast<long>(offset + part.size()));
          return UpsertPart(indices);
        });
    if (!sent.ok()) return sent.status();
    for (size_t k = 0; k < chunk.size(); ++k) ledger.Set(chunk[k], (*sent)[k]);
    if (!stop_.ok()) return stop_;
  }
  return absl::OkStatus();
}

absl::StatusOr<PartOutcome> SalesforceSession::UpsertPart(const std::vector<size_t>& part) {
  if (!stop_.ok()) return stop_;
  BACKFLOW_ASSIGN_OR_RETURN(std::string root, dest_->ApiRoot());
  const std::string url =
      fmt::format("{}/composite/sobjects/{}/{}", root, cfg().object, ext_field_);
  const size_t n = part.size();
  std::vector<absl::Status> results(n, absl::OkStatus());
  std::vector<size_t> pending(n);
  for (size_t k = 0; k < n; ++k) pending[k] = k;
  bool accepted = false;
  const int max_rounds = cfg().http.retry.max_retries + 1;
  for (int round = 1;; ++round) {
    json records = json::array();
    for (size_t k : pending) records.push_back(items_[part[k]].record);
    std::string body = Dump({{"allOrNone", false}, {"records", std::move(records)}});
    DeliveryResult d = delivery_.Send([&] { return dest_->Request("PATCH", url, body); });
    dest_->Observe(d);
    if (!d.response.ok() || d.response->status != 200) {
      Failed f = dest_->Classify(d, fmt::format("upsert {} records", cfg().object));
      if (f.stop) {
        stop_ = f.status;
        if (!accepted) return f.status;
        for (size_t k : pending) results[k] = f.status;
        return PartOutcome::PerRecord(std::move(results));
      }
      if (f.status.code() == absl::StatusCode::kInvalidArgument && round == 1) {
        return PartOutcome::Split(absl::InvalidArgumentError(
            fmt::format("Salesforce rejected this {}: {}", RecordLabel(), ReplyText(*d.response))));
      }
      for (size_t k : pending) results[k] = f.status;
      return PartOutcome::PerRecord(std::move(results));
    }
    json reply = json::parse(d.response->body, nullptr, /*allow_exceptions=*/false);
    if (!reply.is_array() || reply.size() != pending.size()) {
      absl::Status unknown = absl::UnavailableError(fmt::format(
          "Salesforce answered the upsert of {} records with {} results, so their outcome is "
          "unknown; they are sent again: {}",
          pending.size(), reply.is_array() ? reply.size() : 0, BodySnippet(d.response->body)));
      for (size_t k : pending) results[k] = unknown;
      return PartOutcome::PerRecord(std::move(results));
    }
    std::vector<size_t> again;
    bool locked = false;
    std::string lock_text;
    for (size_t j = 0; j < pending.size(); ++j) {
      const json& res = reply[j];
      size_t k = pending[j];
      if (res.is_object() && res.value("success", false)) {
        results[k] = absl::OkStatus();
        accepted = true;
        continue;
      }
      std::vector<SfError> errors;
      if (res.is_object() && res.contains("errors") && res["errors"].is_array()) {
        for (const json& e : res["errors"]) errors.push_back(ErrorFrom(e));
      }
      bool lock = std::any_of(errors.begin(), errors.end(),
                              [](const SfError& e) { return e.code == "UNABLE_TO_LOCK_ROW"; });
      bool rolled_back = !errors.empty() && std::all_of(errors.begin(), errors.end(), [](auto& e) {
        return e.code == "ALL_OR_NONE_OPERATION_ROLLED_BACK";
      });
      if (lock || rolled_back) {
        again.push_back(k);
        if (lock) {
          locked = true;
          lock_text = ErrorsText(errors);
        }
        results[k] = absl::UnavailableError(fmt::format("Salesforce could not write this {}: {}",
                                                        RecordLabel(), ErrorsText(errors)));
        continue;
      }
      results[k] = absl::InvalidArgumentError(
          fmt::format("Salesforce rejected this {}: {}", RecordLabel(),
                      errors.empty() ? BodySnippet(Dump(res)) : ErrorsText(errors)));
    }
    if (again.empty()) break;
    if (round >= max_rounds) {
      for (size_t k : again) {
        results[k] = absl::UnavailableError(fmt::format(
            "Salesforce kept refusing this {} after {} attempts ({}): another process is "
            "updating it or its parent record (e.g. the Account of many Contacts); it is sent "
            "again by the next run",
            RecordLabel(), round, lock_text.empty() ? "rolled back" : lock_text));
      }
      break;
    }
    if (locked) Backoff(round, kLockBackoff);
    pending = std::move(again);
  }
  return PartOutcome::PerRecord(std::move(results));
}

// ------------------------------------------------------------ bulk

absl::Status SalesforceSession::UpsertBulk(const std::vector<size_t>& items, Ledger& ledger,
                                           std::vector<size_t>& retry) {
  // One job per ~100 MB of CSV.
  size_t header_bytes = 0;
  for (const std::string& f : options_.layout.fields) header_bytes += f.size() + 1;
  std::vector<size_t> job;
  size_t bytes = header_bytes;
  for (size_t i : items) {
    size_t row = 0;
    for (const std::string& c : items_[i].cells) row += c.size() + 3;
    if (!job.empty() && bytes + row > kMaxJobBytes) {
      BACKFLOW_RETURN_IF_ERROR(RunJob(job, ledger, retry));
      job.clear();
      bytes = header_bytes;
    }
    job.push_back(i);
    bytes += row;
  }
  if (!job.empty()) return RunJob(job, ledger, retry);
  return absl::OkStatus();
}

void SalesforceSession::AbortJob(const std::string& root, const std::string& id) {
  std::string url = root + "/jobs/ingest/" + id;
  std::string body = Dump({{"state", "Aborted"}});
  DeliveryResult d =
      delivery_.Send([&] { return dest_->Request("PATCH", url, body); }, /*retry=*/false);
  dest_->Observe(d);
}

absl::Status SalesforceSession::RunJob(const std::vector<size_t>& items, Ledger& ledger,
                                       std::vector<size_t>& retry) {
  auto fail_all = [&](const absl::Status& s) {
    for (size_t i : items) {
      if (!ledger.out[i]) ledger.Set(i, s);
    }
  };
  BACKFLOW_ASSIGN_OR_RETURN(std::string root, dest_->ApiRoot());
  std::string csv;
  for (size_t c = 0; c < options_.layout.fields.size(); ++c) {
    if (c > 0) csv.push_back(',');
    csv += SalesforceCsvCell(options_.layout.fields[c]);
  }
  csv.push_back('\n');
  for (size_t i : items) {
    const std::vector<std::string>& cells = items_[i].cells;
    for (size_t c = 0; c < cells.size(); ++c) {
      if (c > 0) csv.push_back(',');
      csv += SalesforceCsvCell(cells[c]);
    }
    csv.push_back('\n');
  }
  const std::string what = fmt::format("run a Bulk API 2.0 upsert job for {}", cfg().object);
  const std::string create_body = Dump({{"object", cfg().object},
                                        {"operation", "upsert"},
                                        {"externalIdFieldName", ext_field_},
                                        {"contentType", "CSV"},
                                        {"lineEnding", "LF"},
                                        {"columnDelimiter", "COMMA"}});
  std::string job_id;
  const int max_attempts = cfg().http.retry.max_retries + 1;
  for (int attempt = 1;; ++attempt) {
    // 1. Create.
    DeliveryResult d =
        delivery_.Send([&] { return dest_->Request("POST", root + "/jobs/ingest", create_body); });
    dest_->Observe(d);
    if (!d.response.ok() || d.response->status < 200 || d.response->status >= 300) {
      Failed f = dest_->Classify(d, "create a Bulk API 2.0 job");
      if (f.stop) return f.status;
      fail_all(f.status);
      return absl::OkStatus();
    }
    json job = json::parse(d.response->body, nullptr, /*allow_exceptions=*/false);
    job_id = StringMember(job, "id");
    if (job_id.empty()) {
      fail_all(absl::UnavailableError(
          fmt::format("Salesforce created a Bulk API 2.0 job without an id: {}",
                      BodySnippet(d.response->body))));
      return absl::OkStatus();
    }
    // 2. Upload, once: a failed upload aborts the job and a new one is made.
    std::string batches = root + "/jobs/ingest/" + job_id + "/batches";
    d = delivery_.Send(
        [&] {
          HttpRequest req = dest_->Request("PUT", batches, csv, "text/csv");
          req.idempotent = false;
          return req;
        },
        /*retry=*/false);
    dest_->Observe(d);
    absl::Status failure;
    bool stop = false;
    if (!d.response.ok() || d.response->status < 200 || d.response->status >= 300) {
      Failed f = dest_->Classify(d, fmt::format("upload data to Bulk API 2.0 job {}", job_id));
      failure = f.status;
      stop = f.stop;
    } else {
      // 3. Close: processing starts.
      std::string url = root + "/jobs/ingest/" + job_id;
      std::string body = Dump({{"state", "UploadComplete"}});
      d = delivery_.Send([&] { return dest_->Request("PATCH", url, body); });
      dest_->Observe(d);
      if (d.response.ok() && d.response->status >= 200 && d.response->status < 300) break;
      Failed f = dest_->Classify(d, fmt::format("close Bulk API 2.0 job {}", job_id));
      // The close may have happened although its reply was lost.
      DeliveryResult state = delivery_.Send([&] { return dest_->Request("GET", url); });
      dest_->Observe(state);
      if (state.response.ok() && state.response->status == 200) {
        json info = json::parse(state.response->body, nullptr, /*allow_exceptions=*/false);
        if (StringMember(info, "state") != "Open") break;
      }
      failure = f.status;
      stop = f.stop;
    }
    AbortJob(root, job_id);
    if (stop) return failure;
    if (!IsRetryable(failure) || attempt >= max_attempts) {
      fail_all(failure);
      return absl::OkStatus();
    }
    Backoff(attempt, cfg().http.retry.base_backoff);
  }

  // 4. Poll until the job ends.
  const std::string job_url = root + "/jobs/ingest/" + job_id;
  const Clock::TimePoint deadline = dest_->clock()->Now() + cfg().bulk_job_timeout;
  std::chrono::milliseconds interval = kFirstPoll;
  json info;
  std::string state;
  while (true) {
    DeliveryResult d = delivery_.Send([&] { return dest_->Request("GET", job_url); });
    dest_->Observe(d);
    if (!d.response.ok() || d.response->status != 200) {
      Failed f = dest_->Classify(d, fmt::format("read the state of Bulk API 2.0 job {}", job_id));
      if (f.stop) return f.status;
      fail_all(absl::UnavailableError(
          fmt::format("{}; the job's outcome is unknown and its records are sent again (upsert is "
                      "idempotent)",
                      f.status.message())));
      return absl::OkStatus();
    }
    info = json::parse(d.response->body, nullptr, /*allow_exceptions=*/false);
    state = StringMember(info, "state");
    if (state == "JobComplete" || state == "Failed" || state == "Aborted") break;
    if (dest_->clock()->Now() + interval > deadline) {
      AbortJob(root, job_id);
      fail_all(absl::UnavailableError(fmt::format(
          "Bulk API 2.0 job {} was still {} after bulk_job_timeout_s ({} s), so Backflow aborted "
          "it; its records are sent again by the next run (upsert is idempotent). Raise "
          "bulk_job_timeout_s if the org's jobs are slow",
          job_id, state.empty() ? "running" : state, cfg().bulk_job_timeout.count())));
      return absl::OkStatus();
    }
    dest_->clock()->SleepFor(interval);
    interval = std::min<std::chrono::milliseconds>(interval * 2, kMaxPoll);
  }

  // 5. Results, matched by the external id column (their order is not guaranteed).
  std::map<std::string, size_t> by_key;
  for (size_t i : items) by_key[items_[i].key] = i;
  const std::string error_message = StringMember(info, "errorMessage");
  for (const char* which : {"successfulResults", "failedResults", "unprocessedrecords"}) {
    std::string url = job_url + "/" + which + "/";
    DeliveryResult d = delivery_.Send([&] { return dest_->Request("GET", url); });
    dest_->Observe(d);
    if (!d.response.ok() || d.response->status != 200) {
      Failed f =
          dest_->Classify(d, fmt::format("read the {} of Bulk API 2.0 job {}", which, job_id));
      if (f.stop) return f.status;
      fail_all(absl::UnavailableError(fmt::format(
          "{}; the records' outcome is unknown and they are sent again (upsert is idempotent)",
          f.status.message())));
      return absl::OkStatus();
    }
    absl::StatusOr<std::vector<std::vector<std::string>>> rows =
        ParseSalesforceCsv(d.response->body);
    if (!rows.ok() || rows->empty()) {
      if (rows.ok() && d.response->body.empty()) continue;
      fail_all(absl::UnavailableError(fmt::format(
          "Salesforce's {} of Bulk API 2.0 job {} is not CSV ({}); the records are sent again",
          which, job_id, BodySnippet(d.response->body))));
      return absl::OkStatus();
    }
    const std::vector<std::string>& header = (*rows)[0];
    auto column = [&](const std::string& name) -> size_t {
      for (size_t c = 0; c < header.size(); ++c) {
        if (IEquals(header[c], name)) return c;
      }
      return std::string::npos;
    };
    size_t key_col = column(ext_field_);
    size_t error_col = column("sf__Error");
    if (key_col == std::string::npos) {
      fail_all(absl::UnavailableError(fmt::format(
          "Salesforce's {} of Bulk API 2.0 job {} has no {} column, so rows cannot be matched to "
          "records; they are sent again",
          which, job_id, ext_field_)));
      return absl::OkStatus();
    }
    for (size_t r = 1; r < rows->size(); ++r) {
      const std::vector<std::string>& row = (*rows)[r];
      if (key_col >= row.size()) continue;
      auto hit = by_key.find(row[key_col]);
      if (hit == by_key.end() || ledger.out[hit->second]) continue;
      size_t i = hit->second;
      std::string which_s = which;
      if (which_s == "successfulResults") {
        ledger.Set(i, absl::OkStatus());
      } else if (which_s == "failedResults") {
        std::string error = error_col < row.size() ? row[error_col] : "";
        // "CODE:message:fields --"
        std::string code = error.substr(0, error.find(':'));
        std::string message =
            error.find(':') == std::string::npos ? "" : error.substr(error.find(':') + 1);
        while (message.ends_with("--") || message.ends_with(':') || message.ends_with(' ')) {
          message.pop_back();
        }
        if (code == "UNABLE_TO_LOCK_ROW") {
          retry.push_back(i);
          by_key.erase(hit);
          continue;
        }
        ledger.Set(i, absl::InvalidArgumentError(fmt::format("Salesforce rejected this {}: {}: {}",
                                                             RecordLabel(), code, message)));
      } else {
        bool bad_data = error_message.find("InvalidBatch") != std::string::npos ||
                        error_message.find("ClientInputError") != std::string::npos;
        absl::Status s =
            bad_data ? absl::InvalidArgumentError(
                           fmt::format("Bulk API 2.0 job {} failed before processing this {}: {}",
                                       job_id, RecordLabel(), error_message))
                     : absl::UnavailableError(fmt::format(
                           "Bulk API 2.0 job {} ended {}{} before processing this {}; it is "
                           "sent again",
                           job_id, state, error_message.empty() ? "" : " (" + error_message + ")",
                           RecordLabel()));
        if (bad_data && !ledger.delivered) {
          // The CSV's columns are wrong for this object: a mapping problem.
          return absl::FailedPreconditionError(fmt::format(
              "Salesforce's Bulk API 2.0 refused the data for {}: {}. Fix the mapping's fields",
              cfg().object, error_message));
        }
        ledger.Set(i, s);
      }
    }
  }
  for (size_t i : items) {
    if (ledger.out[i] || std::find(retry.begin(), retry.end(), i) != retry.end()) continue;
    ledger.Set(i, absl::UnavailableError(fmt::format(
                      "Bulk API 2.0 job {} ({}{}) did not report this {}; it is sent again", job_id,
                      state, error_message.empty() ? "" : ": " + error_message, RecordLabel())));
  }
  return absl::OkStatus();
}

// ------------------------------------------------------------ deletes

absl::Status SalesforceSession::LookUpIds(const std::vector<size_t>& items,
                                          std::map<size_t, std::vector<std::string>>& ids,
                                          Ledger& ledger) {
  BACKFLOW_ASSIGN_OR_RETURN(std::string root, dest_->ApiRoot());
  const std::string head =
      fmt::format("SELECT Id, {0} FROM {1} WHERE {0} IN (", ext_field_, cfg().object);
  size_t begin = 0;
  while (begin < items.size()) {
    std::vector<size_t> chunk;
    std::string soql = head;
    for (size_t k = begin; k < items.size() && chunk.size() < kSalesforceCollectionMax; ++k) {
      const std::string& key = items_[items[k]].key;
      std::string literal = ext_numeric_ ? NumberKey(key) : SoqlQuote(key);
      if (!chunk.empty() && soql.size() + literal.size() + 2 > kMaxSoqlChars) break;
      if (!chunk.empty()) soql += ", ";
      soql += literal;
      chunk.push_back(items[k]);
    }
    soql += ")";
    begin += chunk.size();
    // Salesforce compares text case-insensitively: exact matches win.
    std::map<std::string, std::vector<std::string>> exact, folded;
    std::string url = root + "/query?q=" + PercentEncode(soql);
    absl::Status failed;
    while (!url.empty()) {
      DeliveryResult d = delivery_.Send([&] { return dest_->Request("GET", url); });
      dest_->Observe(d);
      if (!d.response.ok() || d.response->status != 200) {
        Failed f =
            dest_->Classify(d, fmt::format("look up the {} records to delete", cfg().object));
        if (f.stop) return f.status;
        failed = f.status;
        break;
      }
      json page = json::parse(d.response->body, nullptr, /*allow_exceptions=*/false);
      if (!page.is_object() || !page.contains("records") || !page["records"].is_array()) {
        failed = absl::UnavailableError(fmt::format("Salesforce's query reply has no records: {}",
                                                    BodySnippet(d.response->body)));
        break;
      }
      for (const json& rec : page["records"]) {
        std::string id = StringMember(rec, "Id");
        if (id.empty() || !rec.contains(ext_field_)) continue;
        const json& v = rec[ext_field_];
        std::string text = ext_numeric_ ? NumberKey(JsonText(v)) : JsonText(v);
        exact[text].push_back(id);
        folded[Lower(text)].push_back(id);
      }
      std::string next = StringMember(page, "nextRecordsUrl");
      if (next.empty() || page.value("done", true)) {
        url.clear();
      } else {
        // nextRecordsUrl is a path on the instance: /services/data/vNN.N/query/<locator>.
        size_t at = root.find("/services/data/");
        url = root.substr(0, at) + next;
      }
    }
    for (size_t i : chunk) {
      if (!failed.ok()) {
        ledger.Set(i, failed);
        continue;
      }
      std::string key = ext_numeric_ ? NumberKey(items_[i].key) : items_[i].key;
      auto e = exact.find(key);
      if (e != exact.end()) {
        ids[i] = e->second;
      } else if (auto f = folded.find(Lower(key)); f != folded.end()) {
        ids[i] = f->second;
      } else {
        ids[i] = {};
      }
    }
  }
  return absl::OkStatus();
}

absl::Status SalesforceSession::DeleteIds(const std::vector<std::string>& all,
                                          std::map<std::string, absl::Status>& outcome) {
  BACKFLOW_ASSIGN_OR_RETURN(std::string root, dest_->ApiRoot());
  const int max_rounds = cfg().http.retry.max_retries + 1;
  for (size_t begin = 0; begin < all.size(); begin += kSalesforceCollectionMax) {
    std::vector<std::string> pending(
        all.begin() + static_cast<long>(begin),
        all.begin() + static_cast<long>(std::min(all.size(), begin + kSalesforceCollectionMax)));
    for (int round = 1;; ++round) {
      std::string url = fmt::format("{}/composite/sobjects?ids={}&allOrNone=false", root,
                                    fmt::join(pending, ","));
      DeliveryResult d = delivery_.Send([&] { return dest_->Request("DELETE", url); });
      dest_->Observe(d);
      if (!d.response.ok() || d.response->status != 200) {
        Failed f = dest_->Classify(d, fmt::format("delete {} records", cfg().object));
        if (f.stop) return f.status;
        for (const std::string& id : pending) outcome[id] = f.status;
        break;
      }
      json reply = json::parse(d.response->body, nullptr, /*allow_exceptions=*/false);
      if (!reply.is_array() || reply.size() != pending.size()) {
        absl::Status unknown = absl::UnavailableError(fmt::format(
            "Salesforce answered the delete of {} records with {} results; they are deleted "
            "again later: {}",
            pending.size(), reply.is_array() ? reply.size() : 0, BodySnippet(d.response->body)));
        for (const std::string& id : pending) outcome[id] = unknown;
        break;
      }
      std::vector<std::string> again;
      bool locked = false;
      for (size_t j = 0; j < pending.size(); ++j) {
        const json& res = reply[j];
        if (res.is_object() && res.value("success", false)) {
          outcome[pending[j]] = absl::OkStatus();
          continue;
        }
        std::vector<SfError> errors;
        if (res.is_object() && res.contains("errors") && res["errors"].is_array()) {
          for (const json& e : res["errors"]) errors.push_back(ErrorFrom(e));
        }
        auto has = [&](const char* code) {
          return std::any_of(errors.begin(), errors.end(),
                             [&](const SfError& e) { return e.code == code; });
        };
        if (has("ENTITY_IS_DELETED")) {
          outcome[pending[j]] = absl::OkStatus();  // already in the recycle bin
        } else if (has("UNABLE_TO_LOCK_ROW") || has("ALL_OR_NONE_OPERATION_ROLLED_BACK")) {
          locked |= has("UNABLE_TO_LOCK_ROW");
          again.push_back(pending[j]);
          outcome[pending[j]] = absl::UnavailableError(fmt::format(
              "Salesforce kept refusing to delete {} record {} after {} attempts ({}); it is "
              "deleted again by the next run",
              cfg().object, pending[j], round, ErrorsText(errors)));
        } else {
          outcome[pending[j]] = absl::InvalidArgumentError(
              fmt::format("Salesforce refused to delete {} record {}: {}", cfg().object, pending[j],
                          ErrorsText(errors)));
        }
      }
      if (again.empty() || round >= max_rounds) break;
      if (locked) Backoff(round, kLockBackoff);
      pending = std::move(again);
    }
  }
  return absl::OkStatus();
}

absl::Status SalesforceSession::DeleteRecords(const std::vector<size_t>& items, Ledger& ledger) {
  std::map<size_t, std::vector<std::string>> ids;
  BACKFLOW_RETURN_IF_ERROR(LookUpIds(items, ids, ledger));
  std::vector<std::string> all;
  std::set<std::string> seen;
  for (auto& [i, list] : ids) {
    for (const std::string& id : list) {
      if (seen.insert(id).second) all.push_back(id);
    }
  }
  std::map<std::string, absl::Status> outcome;
  absl::Status stop = DeleteIds(all, outcome);
  for (auto& [i, list] : ids) {
    // OK when every record of the external id is gone (none: nothing to delete).
    std::optional<absl::Status> s = absl::OkStatus();
    for (const std::string& id : list) {
      auto it = outcome.find(id);
      if (it == outcome.end()) {
        s.reset();  // not attempted: the run stopped
        break;
      }
      if (!it->second.ok()) {
        s = it->second;
        break;
      }
    }
    if (s) ledger.Set(i, *s);
  }
  return stop;
}

absl::StatusOr<std::unique_ptr<ActionSession>> SalesforceDestination::StartSession(
    const SessionOptions& options) {
  if (options.action == nullptr || options.action->id != kActionId) {
    return absl::InvalidArgumentError(
        fmt::format("Salesforce has no action \"{}\"; use {}",
                    options.action == nullptr ? "" : options.action->id, kActionId));
  }
  const FieldLayout& layout = options.layout;
  std::string ext;
  for (const std::string& f : layout.identity) {
    if (f.find('.') == std::string::npos) {
      ext = f;
      break;
    }
  }
  if (ext.empty()) {
    return absl::FailedPreconditionError(fmt::format(
        "mapping \"{}\": Salesforce upserts and deletes {} records by an External ID field, "
        "taken from the field mapped from the model's primary key; map the primary key column to "
        "one, e.g. Warehouse_Id__c: <primary key column> (create it in Setup > Object Manager > "
        "{} > Fields & Relationships as Text, with \"External ID\" and \"Unique\" ticked)",
        options.mapping, cfg_.object, cfg_.object));
  }
  size_t field_index = static_cast<size_t>(
      std::find(layout.fields.begin(), layout.fields.end(), ext) - layout.fields.begin());
  if (field_index >= layout.fields.size()) {
    return absl::InternalError("the identity field is not among the mapped fields");
  }
  size_t identity_index = static_cast<size_t>(
      std::find(layout.identity.begin(), layout.identity.end(), ext) - layout.identity.begin());
  return std::unique_ptr<ActionSession>(
      std::make_unique<SalesforceSession>(this, options, field_index, identity_index));
}

// ---------------------------------------------------------------- definition

std::vector<std::string> ValidateFields(const json&, const std::vector<MappedField>& fields) {
  std::vector<std::string> problems;
  std::map<std::string, std::string> relationships;  // lower-case name -> first field
  for (const MappedField& f : fields) {
    size_t dot = f.field.find('.');
    std::string head = f.field.substr(0, dot);
    std::string tail = dot == std::string::npos ? "" : f.field.substr(dot + 1);
    if (!IsApiName(head) || (dot != std::string::npos && !IsApiName(tail))) {
      problems.push_back(fmt::format(
          "\"{}\" is not a Salesforce field API name (letters, digits and _, e.g. LastName or "
          "Plan__c), nor Relationship.ExternalIdField (e.g. Account.Ext_Acct__c)",
          f.field));
    } else if (dot == std::string::npos && IEquals(head, "Id")) {
      problems.push_back(
          "\"Id\": records are upserted by an External ID field, not by record Id; map the "
          "model's primary key to an External ID field such as Warehouse_Id__c");
    } else if (IEquals(head, "attributes")) {
      problems.push_back("\"attributes\" is reserved by the Salesforce API");
    } else if (dot != std::string::npos) {
      auto [it, inserted] = relationships.emplace(Lower(head), f.field);
      if (!inserted) {
        problems.push_back(fmt::format(
            "\"{}\" and \"{}\": a lookup is set by one external id field of the parent; map "
            "only one field under {}",
            it->second, f.field, head));
      }
    }
  }
  return problems;
}

constexpr char kNotes[] = R"md(## Example

```yaml
destinations:
  - name: salesforce_contacts
    type: salesforce
    settings:
      consumer_key: 3MVG9...                       # the connected app's Consumer Key
      username: integration@acme.com
      private_key: ${env:SALESFORCE_PRIVATE_KEY}   # PEM, matching the app's certificate
      object: Contact
      # login_url: https://test.salesforce.com     # sandboxes
mappings:
  - name: customers_to_salesforce
    model: customers                 # primary_key: id
    destination: salesforce_contacts
    action: upsert_record
    fields:
      Warehouse_Id__c: id            # the primary key: the External ID field
      LastName: last_name
      FirstName: first_name
      Email: lower(email)
      Plan__c: plan
      Account.Ext_Acct__c: account_id   # the lookup, by the Account's external id
```

One destination writes one object. To sync several objects (Contacts and Accounts, say), declare
one destination per object with the same credentials.

## Setup

1. Create a certificate and key: `openssl req -x509 -newkey rsa:2048 -nodes -keyout
   salesforce.key -out salesforce.crt -days 730 -subj /CN=backflow`.
2. In Setup > App Manager, create a connected app (or an External Client App) with OAuth
   enabled, "Use digital signatures" with `salesforce.crt` uploaded, and the `api` scope (plus
   `refresh_token, offline_access`, which the JWT flow requires on some orgs).
3. In the app's Manage > Edit Policies, set Permitted Users to **Admin approved users are
   pre-authorized**, then add the integration user's profile or a permission set. Without it
   every token request fails with `invalid_grant: user hasn't approved this consumer`.
4. Give the user API Enabled and Read, Create, Edit (and Delete, to delete records) on the object
   and its mapped fields.
5. Create the External ID field on the object (Text, **External ID** and **Unique** ticked),
   e.g. `Warehouse_Id__c`, and map the model's primary key to it.
6. Put the key's PEM text in `private_key` through an environment variable. `backflow
   test-connection` mints a token and describes the object; it writes nothing.

## Auth

OAuth 2.0 JWT bearer flow: Backflow signs `{"iss": consumer_key, "sub": username, "aud":
audience, "exp": now + 150 s}` with RS256 and posts it to `{login_url}/services/oauth2/token`.
The reply's `instance_url` is the API host, unless `base_url` is set (a proxy, or a test
server). Salesforce issues no refresh token and no expiry: the session is used until a request
gets `401 INVALID_SESSION_ID`, then a new one is minted once and the request repeated.

| token endpoint error | what to check |
| --- | --- |
| `invalid_grant: user hasn't approved this consumer` | the app's Permitted Users must be "Admin approved users are pre-authorized", with the user's profile or permission set added |
| `invalid_client_id: client identifier invalid` | `consumer_key` (a new app takes up to 10 minutes to work) |
| `invalid_grant: audience is invalid` | `login_url`: https://login.salesforce.com for production, https://test.salesforce.com for sandboxes; set `audience` to one of them when `login_url` is a My Domain URL |
| `invalid_grant: invalid assertion` | `private_key` must belong to the certificate uploaded to the app; `username` must be an active user of that org |
| `invalid_grant: expired authorization code` | this machine's clock |

## How records are written

The field mapped from the model's `primary_key` is the **External ID field**. Other fields are
Salesforce field API names; `Relationship.ExternalIdField` (e.g. `Account.Ext_Acct__c`) sets a
lookup by the parent's external id (a NULL leaves the lookup as it is; to clear it, map the
lookup field itself, e.g. `AccountId`, to NULL). On the first batch Backflow describes the object
once and stops the run with a clear message when the External ID field or a mapped field does
not exist, is not an External ID, or is read-only.

Values: text, numbers and booleans as they are; NULL clears the field; dates as `YYYY-MM-DD`,
timestamps as ISO-8601; a list becomes `a;b` (multi-select picklists); a JSON object fails the
record. Records of the same external id in one batch are collapsed: the last one is sent.

- **sObject Collections** (batches smaller than `bulk_threshold`): `PATCH
  /services/data/v62.0/composite/sobjects/{object}/{externalIdField}` with
  `{"allOrNone":false,"records":[{"attributes":{"type":"Contact"},...}]}`, up to 200 records per
  request; Salesforce answers one result per record, in order.
- **Bulk API 2.0** (batches of at least `bulk_threshold` upserts, default 2,000; Salesforce
  suggests Bulk above ~2,000 records): one ingest job per batch: `POST /jobs/ingest` (operation
  `upsert`, CSV, LF), `PUT /jobs/ingest/{id}/batches` with the CSV (an empty cell leaves a field
  unchanged, `#N/A` sets it to null), `PATCH {"state":"UploadComplete"}`, then `GET
  /jobs/ingest/{id}` every 1, 2, 4 … 30 s until `JobComplete`, and the `successfulResults`,
  `failedResults` and `unprocessedrecords` CSVs, matched to records by the external id column
  (their order is not guaranteed). A job that does not finish within `bulk_job_timeout_s` is
  aborted and its records sent again by the next run. Job ids are not persisted: if Backflow
  stops while a job runs, its records are sent again by the next run, which is safe because an
  upsert by external id is idempotent. Records with a value over 32,000 characters go through
  sObject Collections instead.
- **Deletes**: `GET /query?q=SELECT Id, {ext} FROM {object} WHERE {ext} IN (...)` finds the
  record ids (SOQL compares text case-insensitively; an exact match wins), then `DELETE
  /composite/sobjects?ids=...&allOrNone=false` deletes them, 200 per request. Deleted records go
  to the Recycle Bin (restorable for 15 days). A record Salesforce does not have counts as
  deleted.

## Replies

| reply | outcome |
| --- | --- |
| 200, result `success: true` / Bulk `successfulResults` row | the record is written |
| per-record `UNABLE_TO_LOCK_ROW` | retried with backoff (Bulk rows through sObject Collections) up to `max_retries` rounds, then sent again by the next run; reduce parallel writes to the same parent records |
| per-record `ALL_OR_NONE_OPERATION_ROLLED_BACK` | the record was innocent: re-sent without the failing ones |
| per-record validation errors (`REQUIRED_FIELD_MISSING`, `INVALID_EMAIL_ADDRESS`, `STRING_TOO_LONG`, `DUPLICATE_VALUE`, `DUPLICATE_EXTERNAL_ID`, `FIELD_CUSTOM_VALIDATION_EXCEPTION`, …) | the record fails with Salesforce's code, message and fields; not retried |
| 400 for the whole request (e.g. `JSON_PARSER_ERROR` for a value of the wrong type) | the request is split in halves until the record at fault is found; it fails with Salesforce's message |
| 400/404 `INVALID_FIELD`, `NOT_FOUND`, `INVALID_TYPE`, `INVALIDJOB`, Bulk `InvalidBatch` | the run stops: fix the mapping or `object` |
| 401 `INVALID_SESSION_ID` | a new token is minted once and the request repeated; a second 401 stops the run |
| 403 `REQUEST_LIMIT_EXCEEDED`, daily allocation used up (per `Sforce-Limit-Info`, or when it is absent) | **not retried**: the run stops with a rate-limit error and this destination sends nothing for 15 minutes (the 24-hour window is rolling) |
| 403 `REQUEST_LIMIT_EXCEEDED` with allocation left (concurrent long-running requests) | retried with backoff up to `max_retries` |
| other 403 | the run stops: the user lacks API Enabled or access to the object or fields |
| 5xx, 408, timeouts, connection errors | retried with exponential backoff up to `max_retries`, then the records are sent again by the next run (upserts are idempotent) |

## Limits

| limit | value | what Backflow does |
| --- | --- | --- |
| records per sObject Collections request | 200 | requests of at most 200 |
| Bulk API 2.0 upload | 150 MB (100 MB advised) | one job per 100 MB of CSV |
| Bulk field / record size | 32,000 / 400,000 characters | larger records go through sObject Collections |
| daily API requests (rolling 24 h) | 100,000 + per-licence | every reply's `Sforce-Limit-Info` is read; `max_api_usage_percent` pauses the destination before the allocation is used up |
| concurrent requests of 20 s or more | 25 (5 on Developer orgs) | one request at a time per mapping |

A batch of N upserts costs ⌈N/200⌉ requests through sObject Collections, or about 7 requests
(plus polls) as a Bulk job; deletes cost two requests per 200 records.
)md";

}  // namespace

std::optional<SforceApiUsage> ParseSforceLimitInfo(std::string_view header) {
  // "api-usage=N/M", possibly among other entries ("per-app-api-usage=...").
  size_t at = header.find("api-usage=");
  while (at != std::string_view::npos && at > 0 && header[at - 1] != ' ' && header[at - 1] != ',' &&
         header[at - 1] != ';') {
    at = header.find("api-usage=", at + 1);
  }
  if (at == std::string_view::npos) return std::nullopt;
  std::string_view rest = header.substr(at + 10);
  size_t slash = rest.find('/');
  if (slash == std::string_view::npos || slash == 0) return std::nullopt;
  size_t end = slash + 1;
  while (end < rest.size() && std::isdigit(static_cast<unsigned char>(rest[end]))) ++end;
  std::string used(rest.substr(0, slash));
  std::string limit(rest.substr(slash + 1, end - slash - 1));
  auto digits = [](const std::string& s) {
    return !s.empty() && s.size() < 16 &&
           std::all_of(s.begin(), s.end(), [](unsigned char c) { return std::isdigit(c); });
  };
  if (!digits(used) || !digits(limit)) return std::nullopt;
  return SforceApiUsage{std::stoll(used), std::stoll(limit)};
}

std::string SoqlQuote(std::string_view text) {
  std::string out = "'";
  for (char c : text) {
    switch (c) {
      case '\\':
        out += "\\\\";
        break;
      case '\'':
        out += "\\'";
        break;
      case '"':
        out += "\\\"";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        out.push_back(c);
    }
  }
  out.push_back('\'');
  return out;
}

std::string SalesforceCsvCell(std::string_view text) {
  bool quote = text.find_first_of(",\"\r\n") != std::string_view::npos ||
               (!text.empty() && (std::isspace(static_cast<unsigned char>(text.front())) ||
                                  std::isspace(static_cast<unsigned char>(text.back()))));
  if (!quote) return std::string(text);
  std::string out = "\"";
  for (char c : text) {
    if (c == '"') out.push_back('"');
    out.push_back(c);
  }
  out.push_back('"');
  return out;
}

absl::StatusOr<std::vector<std::vector<std::string>>> ParseSalesforceCsv(std::string_view text) {
  std::vector<std::vector<std::string>> rows;
  std::vector<std::string> row;
  std::string cell;
  bool in_quotes = false;
  bool row_started = false;
  for (size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    if (in_quotes) {
      if (c == '"') {
        if (i + 1 < text.size() && text[i + 1] == '"') {
          cell.push_back('"');
          ++i;
        } else {
          in_quotes = false;
        }
      } else {
        cell.push_back(c);
      }
      continue;
    }
    if (c == '"') {
      in_quotes = true;
      row_started = true;
    } else if (c == ',') {
      row.push_back(std::move(cell));
      cell.clear();
      row_started = true;
    } else if (c == '\n' || c == '\r') {
      if (c == '\r' && i + 1 < text.size() && text[i + 1] == '\n') ++i;
      row.push_back(std::move(cell));
      cell.clear();
      rows.push_back(std::move(row));
      row.clear();
      row_started = false;
    } else {
      cell.push_back(c);
      row_started = true;
    }
  }
  if (in_quotes) return absl::InvalidArgumentError("CSV ends inside a quoted cell");
  if (row_started || !cell.empty()) {
    row.push_back(std::move(cell));
    rows.push_back(std::move(row));
  }
  return rows;
}

DestinationDefinition SalesforceDestinationDefinition() {
  DestinationDefinition def;
  def.type = "salesforce";
  def.title = "Salesforce";
  def.description =
      "Upserts the records of a Salesforce object (Contact, Lead, Account, custom objects) by an "
      "External ID field through sObject Collections, or Bulk API 2.0 for large batches, and "
      "deletes the records of deleted rows; authenticates with the OAuth 2.0 JWT bearer flow.";
  def.maturity = "beta";

  SettingSpec key =
      MakeSetting("consumer_key", "Consumer key",
                  "The connected app's Consumer Key (client id), the JWT's iss: Setup > "
                  "App Manager > your app > View > Manage Consumer Details.");
  key.required = true;
  def.settings.push_back(key);
  SettingSpec user = MakeSetting("username", "Username",
                                 "The Salesforce username records are written as (the JWT's sub), "
                                 "e.g. integration@acme.com. It must be pre-authorised for the "
                                 "connected app.");
  user.required = true;
  def.settings.push_back(user);
  SettingSpec pem =
      MakeSetting("private_key", "Private key",
                  "The PEM private key (BEGIN PRIVATE KEY or BEGIN RSA PRIVATE KEY) of "
                  "the certificate uploaded to the connected app, e.g. "
                  "${env:SALESFORCE_PRIVATE_KEY}; literal \\n in a one-line value are "
                  "read as line breaks.");
  pem.required = true;
  pem.secret = true;
  def.settings.push_back(pem);
  SettingSpec object =
      MakeSetting("object", "Object",
                  "The API name of the sObject to write, e.g. Contact, Lead, Account "
                  "or Subscription__c. One destination per object.");
  object.required = true;
  def.settings.push_back(object);
  def.settings.push_back(
      MakeSetting("login_url", "Login URL",
                  "Where the JWT is exchanged for a session "
                  "({login_url}/services/oauth2/token): https://login.salesforce.com "
                  "for production and developer orgs, https://test.salesforce.com "
                  "for sandboxes, or the org's My Domain URL.",
                  SettingType::kString, kSalesforceDefaultLoginUrl));
  SettingSpec audience = MakeSetting("audience", "JWT audience",
                                     "The JWT's aud claim; defaults to login_url. Set it to "
                                     "https://login.salesforce.com (or https://test.salesforce.com "
                                     "for a sandbox) when login_url is a My Domain URL.");
  def.settings.push_back(audience);
  def.settings.push_back(MakeSetting("api_version", "API version",
                                     "The REST API version, pinned so behaviour does not change "
                                     "under you; 46.0 or later.",
                                     SettingType::kString, kSalesforceDefaultApiVersion));
  def.settings.push_back(
      MakeSetting("bulk_threshold", "Bulk API threshold",
                  "Batches with at least this many upserts go through a Bulk API "
                  "2.0 job instead of sObject Collections (200 records per "
                  "request); 0 never uses Bulk.",
                  SettingType::kInteger, kDefaultBulkThreshold));
  def.settings.push_back(MakeSetting("bulk_job_timeout_s", "Bulk job timeout (s)",
                                     "How long to wait for a Bulk API 2.0 job to finish before "
                                     "aborting it; its records are then sent again by the next "
                                     "run.",
                                     SettingType::kInteger, kDefaultBulkJobTimeoutS));
  def.settings.push_back(
      MakeSetting("max_api_usage_percent", "Max API usage (%)",
                  "Pause this destination once Sforce-Limit-Info reports the org's "
                  "daily API requests at or above this share of the allocation, "
                  "leaving the rest to other integrations; 100 uses it all.",
                  SettingType::kInteger, 100));

  HttpSettingsDefaults http;
  http.base_url = "";
  http.max_retries = 5;
  http.timeout_ms = kDefaultTimeoutMs;
  for (SettingSpec& s : HttpSettingSpecs(http)) {
    if (s.key == "base_url") {
      s.default_value = nullptr;
      s.description =
          "The API host. Unset (the default), the instance_url of the token reply is used, as "
          "Salesforce asks; set it to override instance_url, e.g. for an egress proxy or a test "
          "server.";
    }
    def.settings.push_back(std::move(s));
  }

  ActionSpec upsert;
  upsert.id = kActionId;
  upsert.title = "Upsert records";
  upsert.description =
      "Creates or updates records of the destination's object by an External ID field (the "
      "field mapped from the model's primary key), and deletes the records of deleted rows. "
      "Every other mapped field is a Salesforce field API name; Relationship.ExternalIdField "
      "(e.g. Account.Ext_Acct__c) sets a lookup by the parent's external id.";
  upsert.selections = {RecordSelection::kAdded, RecordSelection::kUpdated,
                       RecordSelection::kAddedOrUpdated, RecordSelection::kDeleted,
                       RecordSelection::kAll};
  upsert.allows_extra_fields = true;
  upsert.max_batch_records = kMaxBatchRecords;
  upsert.default_batch_records = kMaxBatchRecords;
  upsert.validate = ValidateFields;
  def.actions.push_back(upsert);

  def.notes = kNotes;
  def.create = [](const json& settings,
                  const ConnectorEnv& env) -> absl::StatusOr<std::unique_ptr<Destination>> {
    absl::StatusOr<SalesforceConfig> cfg = ParseConfig(settings);
    if (!cfg.ok()) return cfg.status();
    absl::StatusOr<HttpServices> services = HttpServicesOf("salesforce", env);
    if (!services.ok()) return services.status();
    Clock* clock = services->clock;
    JwtBearerConfig jwt;
    jwt.vendor = "Salesforce";
    jwt.token_url = cfg->login_url + kSalesforceTokenPath;
    jwt.private_key_pem = cfg->private_key;
    jwt.issuer = cfg->consumer_key;
    jwt.subject = cfg->username;
    jwt.audience = cfg->audience;
    jwt.assertion_lifetime = kAssertionLifetime;
    jwt.lifetime_without_expires_in = std::nullopt;
    jwt.timeout = cfg->http.timeout;
    absl::StatusOr<std::unique_ptr<JwtBearerTokenSource>> tokens =
        JwtBearerTokenSource::Create(std::move(jwt), services->http, clock);
    if (!tokens.ok()) {
      return absl::InvalidArgumentError(fmt::format("private_key: {}", tokens.status().message()));
    }
    return std::unique_ptr<Destination>(std::make_unique<SalesforceDestination>(
        *std::move(cfg), *std::move(tokens), services->http, clock));
  };
  return def;
}

}  // namespace backflow
