#include "backflow/destinations/meta_capi/meta_capi_destination.h"

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <ctime>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <span>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "backflow/common/civil_date.h"
#include "backflow/common/clock.h"
#include "backflow/common/crypto.h"
#include "backflow/common/errors.h"
#include "backflow/common/hash.h"
#include "backflow/common/http_client.h"
#include "backflow/common/status_macros.h"
#include "backflow/delivery/http_delivery.h"
#include "backflow/delivery/http_settings.h"
#include "backflow/delivery/rate_limiter.h"
#include "backflow/destinations/destination.h"
#include "fmt/format.h"
#include "fmt/ranges.h"
#include "nlohmann/json.hpp"

namespace backflow {
namespace {

using json = nlohmann::json;

constexpr char kWhat[] = "Meta";
constexpr char kUserAgent[] = "backflow/0.1";
constexpr char kDefaultBaseUrl[] = "https://graph.facebook.com";
constexpr size_t kEventIdMax = 64;
constexpr int kDefaultBatchEvents = 200;
constexpr int64_t kDefaultTimeoutMs = 10'000;

// Meta's action_source values.
const std::vector<std::string>& ActionSources() {
  static const auto* v =
      new std::vector<std::string>{"website", "app",  "physical_store",     "system_generated",
                                   "email",   "chat", "business_messaging", "phone_call",
                                   "other"};
  return *v;
}

// user_data keys Meta requires hashed.
const std::set<std::string>& HashedKeys() {
  static const auto* s =
      new std::set<std::string>{"em", "ph", "fn", "ln", "ge", "db", "ct", "st", "zp", "country"};
  return *s;
}

// user_data keys sent as arrays (the brief's example; Meta accepts lists of
// several emails, phones and ids).
const std::set<std::string>& ArrayKeys() {
  static const auto* s = new std::set<std::string>{"em", "ph", "external_id"};
  return *s;
}

std::string Dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

std::string LowerAscii(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

std::string TrimAscii(std::string_view s) {
  const char* ws = " \t\r\n\f\v";
  size_t b = s.find_first_not_of(ws);
  if (b == std::string_view::npos) return "";
  size_t e = s.find_last_not_of(ws);
  return std::string(s.substr(b, e - b + 1));
}

// Lowercase with ASCII whitespace and punctuation removed. Other UTF-8 text
// is kept; its Latin-1 capitals (À..Þ) are lowercased too.
std::string LowerLettersAndDigits(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      if (std::isalnum(c)) out.push_back(static_cast<char>(std::tolower(c)));
      continue;
    }
    out.push_back(static_cast<char>(c));
    if (c == 0xC3 && i + 1 < s.size()) {
      unsigned char next = static_cast<unsigned char>(s[i + 1]);
      // U+00C0..U+00DE except U+00D7 (multiplication sign): +0x20 is the lowercase letter.
      if (next >= 0x80 && next <= 0x9E && next != 0x97) next += 0x20;
      out.push_back(static_cast<char>(next));
      ++i;
    }
  }
  return out;
}

std::string Sha256Hex(std::string_view s) { return HexEncode(Sha256(s)); }

const std::map<std::string, std::string>& UsStates() {
  static const auto* m = new std::map<std::string, std::string>{
      {"alabama", "al"},       {"alaska", "ak"},        {"arizona", "az"},
      {"arkansas", "ar"},      {"california", "ca"},    {"colorado", "co"},
      {"connecticut", "ct"},   {"delaware", "de"},      {"districtofcolumbia", "dc"},
      {"florida", "fl"},       {"georgia", "ga"},       {"hawaii", "hi"},
      {"idaho", "id"},         {"illinois", "il"},      {"indiana", "in"},
      {"iowa", "ia"},          {"kansas", "ks"},        {"kentucky", "ky"},
      {"louisiana", "la"},     {"maine", "me"},         {"maryland", "md"},
      {"massachusetts", "ma"}, {"michigan", "mi"},      {"minnesota", "mn"},
      {"mississippi", "ms"},   {"missouri", "mo"},      {"montana", "mt"},
      {"nebraska", "ne"},      {"nevada", "nv"},        {"newhampshire", "nh"},
      {"newjersey", "nj"},     {"newmexico", "nm"},     {"newyork", "ny"},
      {"northcarolina", "nc"}, {"northdakota", "nd"},   {"ohio", "oh"},
      {"oklahoma", "ok"},      {"oregon", "or"},        {"pennsylvania", "pa"},
      {"rhodeisland", "ri"},   {"southcarolina", "sc"}, {"southdakota", "sd"},
      {"tennessee", "tn"},     {"texas", "tx"},         {"utah", "ut"},
      {"vermont", "vt"},       {"virginia", "va"},      {"washington", "wa"},
      {"westvirginia", "wv"},  {"wisconsin", "wi"},     {"wyoming", "wy"},
      {"puertorico", "pr"}};
  return *m;
}

// Common country names and ISO-3166 alpha-3 codes -> alpha-2 (letters only,
// lowercase). Anything else must be given as an alpha-2 code.
const std::map<std::string, std::string>& CountryNames() {
  static const auto* m = new std::map<std::string, std::string>{
      {"usa", "us"},
      {"unitedstates", "us"},
      {"unitedstatesofamerica", "us"},
      {"america", "us"},
      {"unitedkingdom", "gb"},
      {"greatbritain", "gb"},
      {"england", "gb"},
      {"scotland", "gb"},
      {"wales", "gb"},
      {"northernireland", "gb"},
      {"gbr", "gb"},
      {"uk", "gb"},
      {"canada", "ca"},
      {"can", "ca"},
      {"mexico", "mx"},
      {"mex", "mx"},
      {"brazil", "br"},
      {"bra", "br"},
      {"argentina", "ar"},
      {"germany", "de"},
      {"deutschland", "de"},
      {"deu", "de"},
      {"france", "fr"},
      {"fra", "fr"},
      {"spain", "es"},
      {"esp", "es"},
      {"italy", "it"},
      {"ita", "it"},
      {"netherlands", "nl"},
      {"thenetherlands", "nl"},
      {"nld", "nl"},
      {"belgium", "be"},
      {"switzerland", "ch"},
      {"austria", "at"},
      {"ireland", "ie"},
      {"portugal", "pt"},
      {"sweden", "se"},
      {"norway", "no"},
      {"denmark", "dk"},
      {"finland", "fi"},
      {"poland", "pl"},
      {"australia", "au"},
      {"aus", "au"},
      {"newzealand", "nz"},
      {"india", "in"},
      {"ind", "in"},
      {"japan", "jp"},
      {"jpn", "jp"},
      {"china", "cn"},
      {"southkorea", "kr"},
      {"korea", "kr"},
      {"singapore", "sg"},
      {"southafrica", "za"},
      {"israel", "il"},
      {"turkey", "tr"},
      {"turkiye", "tr"},
      {"unitedarabemirates", "ae"},
      {"uae", "ae"},
  };
  return *m;
}

// A scalar JSON value as text: strings as they are, integral numbers without
// a fraction (decimals arrive as doubles), booleans as true/false.
std::optional<std::string> ScalarText(const json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_number_integer()) return v.dump();
  if (v.is_number_float()) {
    double d = v.get<double>();
    if (std::isfinite(d) && std::trunc(d) == d && std::fabs(d) < 9e15) {
      return std::to_string(static_cast<int64_t>(d));
    }
    return v.dump();
  }
  if (v.is_boolean()) return v.get<bool>() ? "true" : "false";
  return std::nullopt;
}

// --------------------------------------------------------------- Graph errors

struct GraphError {
  bool present = false;
  int64_t code = 0;
  int64_t subcode = 0;
  bool is_transient = false;
  std::string message;
  std::string type;
  std::string user_title;
  std::string user_msg;
  std::string fbtrace_id;

  // "Invalid parameter (code 100, subcode 2804003): <title>: <user msg>
  // (fbtrace_id A1b2)"; the reply body when it carried no Graph error.
  std::string Describe(const HttpResponse& r) const {
    if (!present) return fmt::format("HTTP {}: {}", r.status, BodySnippet(r.body));
    std::string out = message.empty() ? "(no message)" : message;
    out += fmt::format(" (code {}", code);
    if (subcode != 0) out += fmt::format(", subcode {}", subcode);
    out += fmt::format(", HTTP {})", r.status);
    if (!user_title.empty() || !user_msg.empty()) {
      out += ": ";
      out += user_title;
      if (!user_title.empty() && !user_msg.empty()) out += ": ";
      out += user_msg;
    }
    if (!fbtrace_id.empty()) out += fmt::format(" [fbtrace_id {}]", fbtrace_id);
    return out;
  }
};

GraphError ParseGraphError(const HttpResponse& r) {
  GraphError e;
  json body = json::parse(r.body, nullptr, /*allow_exceptions=*/false);
  if (body.is_discarded() || !body.is_object()) return e;
  auto it = body.find("error");
  if (it == body.end() || !it->is_object()) return e;
  const json& err = *it;
  e.present = true;
  auto text = [&](const char* key) {
    auto f = err.find(key);
    if (f == err.end()) return std::string();
    if (f->is_string()) return f->get<std::string>();
    return f->is_null() ? std::string() : f->dump();
  };
  auto number = [&](const char* key) -> int64_t {
    auto f = err.find(key);
    if (f == err.end()) return 0;
    if (f->is_number_integer()) return f->get<int64_t>();
    if (f->is_string()) {
      try {
        return std::stoll(f->get<std::string>());
      } catch (...) {
        return 0;
      }
    }
    return 0;
  };
  e.code = number("code");
  e.subcode = number("error_subcode");
  if (auto t = err.find("is_transient"); t != err.end() && t->is_boolean()) e.is_transient = *t;
  e.message = text("message");
  e.type = text("type");
  e.user_title = text("error_user_title");
  e.user_msg = text("error_user_msg");
  e.fbtrace_id = text("fbtrace_id");
  return e;
}

enum class ReplyKind {
  kOk,
  kUnauthenticated,  // token invalid or expired
  kPermission,       // token lacks a permission on the pixel
  kConfig,           // wrong pixel, path or version
  kRateLimited,
  kTransient,
  kRejected,  // the request (one of its events) was refused
};

bool IsRateLimitCode(int64_t code) {
  return code == 4 || code == 17 || code == 32 || code == 341 || code == 613 ||
         (code >= 80000 && code <= 80099);
}

ReplyKind Classify(const HttpResponse& r, const GraphError& e) {
  if (!e.present && r.status >= 200 && r.status < 300) return ReplyKind::kOk;
  if (e.present) {
    if (e.code == 190 || e.code == 102) return ReplyKind::kUnauthenticated;
    if (IsRateLimitCode(e.code)) return ReplyKind::kRateLimited;
    if (e.code == 3 || e.code == 10 || (e.code >= 200 && e.code <= 299)) {
      return ReplyKind::kPermission;
    }
    if (e.code == 1 || e.code == 2 || e.is_transient) return ReplyKind::kTransient;
    if (e.code == 803 || e.code == 2500 || e.code == 2635 || e.code == 12 ||
        (e.code == 100 && e.subcode == 33)) {
      return ReplyKind::kConfig;
    }
  }
  if (r.status == 401) return ReplyKind::kUnauthenticated;
  if (r.status == 403) return ReplyKind::kPermission;
  if (r.status == 429) return ReplyKind::kRateLimited;
  if (r.status >= 500 || r.status == 408 || r.status == 425) return ReplyKind::kTransient;
  if (r.status == 404) return ReplyKind::kConfig;
  if (r.status >= 400) return ReplyKind::kRejected;
  if (r.status >= 200 && r.status < 300) return ReplyKind::kRejected;  // an error inside a 2xx
  return ReplyKind::kConfig;                                           // 1xx/3xx: not the Graph API
}

// How long Meta asked us to wait: Retry-After, else the largest
// estimated_time_to_regain_access (minutes) of X-Business-Use-Case-Usage.
std::optional<std::chrono::milliseconds> RequestedWait(const HttpResponse& r,
                                                       Clock::TimePoint now) {
  if (auto ra = r.Header("retry-after")) {
    if (auto wait = ParseRetryAfter(*ra, now)) return wait;
  }
  auto usage = r.Header("x-business-use-case-usage");
  if (!usage) return std::nullopt;
  json u = json::parse(*usage, nullptr, /*allow_exceptions=*/false);
  if (u.is_discarded() || !u.is_object()) return std::nullopt;
  int64_t minutes = 0;
  for (const auto& [business, entries] : u.items()) {
    if (!entries.is_array()) continue;
    for (const json& entry : entries) {
      if (!entry.is_object()) continue;
      auto t = entry.find("estimated_time_to_regain_access");
      if (t != entry.end() && t->is_number()) {
        minutes = std::max<int64_t>(minutes, t->get<int64_t>());
      }
    }
  }
  if (minutes <= 0) return std::nullopt;
  return std::chrono::minutes(minutes);
}

// ------------------------------------------------------------------ config

struct MetaConfig {
  std::string pixel_id;
  std::string access_token;
  std::string api_version = kMetaApiVersion;
  std::string test_event_code;
  bool hash_external_id = true;
  HttpSettings http;
};

std::string StringSetting(const json& settings, const char* key) {
  auto it = settings.find(key);
  if (it == settings.end() || !it->is_string()) return "";
  return TrimAscii(it->get<std::string>());
}

absl::StatusOr<MetaConfig> ParseConfig(const json& settings) {
  if (!settings.is_object()) return absl::InvalidArgumentError("meta_capi settings must be a map");
  MetaConfig cfg;
  cfg.pixel_id = StringSetting(settings, "pixel_id");
  if (cfg.pixel_id.empty() || !std::all_of(cfg.pixel_id.begin(), cfg.pixel_id.end(),
                                           [](unsigned char c) { return std::isdigit(c); })) {
    return absl::InvalidArgumentError(
        "pixel_id: required, the pixel's (dataset's) numeric id from Events Manager > Data "
        "sources > <pixel> > Settings; quote it in YAML (pixel_id: \"1234567890\")");
  }
  cfg.access_token = StringSetting(settings, "access_token");
  if (cfg.access_token.empty()) {
    return absl::InvalidArgumentError(
        "access_token: required; a Conversions API access token (Events Manager > <pixel> > "
        "Settings > Conversions API > Generate access token)");
  }
  if (cfg.access_token.find_first_of(" \t\r\n&?#") != std::string::npos) {
    return absl::InvalidArgumentError(
        "access_token: contains whitespace or URL characters; paste only the token itself");
  }
  if (std::string v = StringSetting(settings, "api_version"); !v.empty()) cfg.api_version = v;
  {
    const std::string& v = cfg.api_version;
    size_t dot = v.find('.');
    bool ok = v.size() >= 4 && v[0] == 'v' && dot != std::string::npos && dot > 1 &&
              dot + 1 < v.size() &&
              std::all_of(v.begin() + 1, v.begin() + static_cast<std::ptrdiff_t>(dot),
                          [](unsigned char c) { return std::isdigit(c); }) &&
              std::all_of(v.begin() + static_cast<std::ptrdiff_t>(dot) + 1, v.end(),
                          [](unsigned char c) { return std::isdigit(c); });
    if (!ok) {
      return absl::InvalidArgumentError(fmt::format(
          "api_version: \"{}\" is not a Graph API version; write it like {}", v, kMetaApiVersion));
    }
  }
  cfg.test_event_code = StringSetting(settings, "test_event_code");
  if (auto it = settings.find("hash_external_id"); it != settings.end() && it->is_boolean()) {
    cfg.hash_external_id = it->get<bool>();
  }
  BACKFLOW_ASSIGN_OR_RETURN(cfg.http, ParseHttpSettings(settings));
  return cfg;
}

// ------------------------------------------------------------- destination

class MetaCapiDestination final : public Destination {
 public:
  MetaCapiDestination(MetaConfig cfg, HttpClient* http, Clock* clock)
      : cfg_(std::move(cfg)),
        http_(http),
        clock_(clock),
        user_limiter_(cfg_.http.UserLimiter(*clock)) {}

  absl::Status CheckConnection() override;
  absl::StatusOr<std::unique_ptr<ActionSession>> StartSession(
      const SessionOptions& options) override;
  int concurrency() const override { return cfg_.http.concurrency; }

  HttpDelivery NewDelivery() {
    VendorRules rules;
    const std::chrono::milliseconds max_wait = cfg_.http.retry.max_wait;
    Clock* clock = clock_;
    rules.retryable = [max_wait, clock](const HttpResponse& r) {
      ReplyKind kind = Classify(r, ParseGraphError(r));
      if (kind == ReplyKind::kTransient) return true;
      if (kind != ReplyKind::kRateLimited) return false;
      // A throttle longer than any wait we may take is not retried: the run
      // stops and resumes after it.
      std::optional<std::chrono::milliseconds> wait = RequestedWait(r, clock->Now());
      return !wait || *wait <= max_wait;
    };
    rules.requested_wait = RequestedWait;
    return HttpDelivery(http_, clock_, {user_limiter_.get()}, cfg_.http.retry, std::move(rules));
  }

  // The URL without the token (for messages) and with it (for requests).
  std::string PixelUrl() const {
    return fmt::format("{}/{}/{}", cfg_.http.base_url, cfg_.api_version, cfg_.pixel_id);
  }
  std::string EventsUrl() const { return PixelUrl() + "/events"; }

  HttpRequest BuildRequest(std::string method, std::string url, std::string body) const {
    HttpRequest req;
    req.method = std::move(method);
    url += url.find('?') == std::string::npos ? '?' : '&';
    url += "access_token=" + cfg_.access_token;
    req.url = std::move(url);
    req.body = std::move(body);
    req.timeout = cfg_.http.timeout;
    req.headers.emplace_back("User-Agent", kUserAgent);
    req.headers.emplace_back("Accept", "application/json");
    if (req.method == "POST") req.headers.emplace_back("Content-Type", "application/json");
    return req;
  }

  // The status that stops the run for a reply of this kind (OK for kinds that do not stop it).
  absl::Status StopStatus(ReplyKind kind, const HttpResponse& r, const GraphError& e,
                          std::string_view doing) const;

  // Rate-limit hold shared by the destination's sessions.
  absl::Status Hold() const {
    std::lock_guard<std::mutex> lock(mu_);
    if (hold_status_.ok() || clock_->Now() >= hold_until_) return absl::OkStatus();
    return hold_status_;
  }
  void HoldFor(const absl::Status& s, std::chrono::milliseconds wait) {
    std::lock_guard<std::mutex> lock(mu_);
    hold_status_ = s;
    hold_until_ = clock_->Now() + wait;
  }

  const MetaConfig& config() const { return cfg_; }
  Clock* clock() const { return clock_; }

 private:
  MetaConfig cfg_;
  HttpClient* http_;
  Clock* clock_;
  std::unique_ptr<RateLimiter> user_limiter_;  // may be null
  mutable std::mutex mu_;
  absl::Status hold_status_;
  Clock::TimePoint hold_until_;
};

absl::Status MetaCapiDestination::StopStatus(ReplyKind kind, const HttpResponse& r,
                                             const GraphError& e, std::string_view doing) const {
  std::string said = e.Describe(r);
  switch (kind) {
    case ReplyKind::kUnauthenticated:
      return absl::UnauthenticatedError(fmt::format(
          "Meta refused access_token while {}: it is invalid, expired or revoked. Generate a new "
          "token (Events Manager > <pixel> > Settings > Conversions API, or a system user token "
          "in Business Settings) and update access_token. Meta said: {}",
          doing, said));
    case ReplyKind::kPermission:
      return absl::PermissionDeniedError(fmt::format(
          "Meta denied access_token permission while {}: the token's user or app must have "
          "access to pixel {} (Business Settings > Data sources > Datasets > <pixel> > assign "
          "the system user) and the ads_management permission. Meta said: {}",
          doing, cfg_.pixel_id, said));
    case ReplyKind::kConfig:
      return absl::FailedPreconditionError(fmt::format(
          "Meta could not find pixel {} at {} while {}: check pixel_id (the dataset id in Events "
          "Manager), that access_token may use it, api_version ({}, a supported Graph API "
          "version) and base_url (default {}). Meta said: {}",
          cfg_.pixel_id, PixelUrl(), doing, cfg_.api_version, kDefaultBaseUrl, said));
    case ReplyKind::kRateLimited: {
      absl::Status s = absl::ResourceExhaustedError(fmt::format(
          "Meta is rate limiting this app or ad account (Graph error code {}) while {}; the "
          "remaining events are sent by a later run. Lower max_requests_per_second or "
          "concurrency if this repeats, or check other tools using the same app. Meta said: {}",
          e.code, doing, said));
      if (auto wait = RequestedWait(r, clock_->Now())) s = WithRetryAfter(s, *wait);
      return s;
    }
    default:
      return absl::OkStatus();
  }
}

absl::Status MetaCapiDestination::CheckConnection() {
  HttpDelivery delivery = NewDelivery();
  DeliveryResult d = delivery.Send(
      [&] { return BuildRequest("GET", PixelUrl() + "?fields=id,name", ""); }, /*retry=*/false);
  if (!d.response.ok()) {
    return absl::UnavailableError(fmt::format("could not reach Meta's Graph API at {}: {}",
                                              cfg_.http.base_url,
                                              std::string(d.response.status().message())));
  }
  const HttpResponse& r = *d.response;
  GraphError e = ParseGraphError(r);
  ReplyKind kind = Classify(r, e);
  if (kind == ReplyKind::kOk) {
    json body = json::parse(r.body, nullptr, /*allow_exceptions=*/false);
    if (body.is_object() && body.contains("id")) return absl::OkStatus();
    return absl::FailedPreconditionError(fmt::format(
        "{} did not answer like Meta's Graph API (HTTP {}, no pixel id in the reply): check "
        "base_url (default {}). It said: {}",
        PixelUrl(), r.status, kDefaultBaseUrl, BodySnippet(r.body)));
  }
  if (absl::Status s = StopStatus(kind, r, e, "reading the pixel"); !s.ok()) return s;
  if (kind == ReplyKind::kTransient) {
    return absl::UnavailableError(fmt::format(
        "Meta's Graph API is not accepting requests right now; try again later. Meta said: {}",
        e.Describe(r)));
  }
  return absl::FailedPreconditionError(
      fmt::format("Meta refused to read pixel {}: check pixel_id and access_token. Meta said: {}",
                  cfg_.pixel_id, e.Describe(r)));
}

// ----------------------------------------------------------------- session

struct PreparedEvent {
  std::string text;  // the serialized event, when status is OK
  absl::Status status;
};

class MetaCapiSession final : public ActionSession {
 public:
  MetaCapiSession(MetaCapiDestination* dest, SessionOptions options)
      : dest_(dest), options_(std::move(options)), delivery_(dest->NewDelivery()) {}

  absl::StatusOr<std::vector<absl::Status>> SendBatch(
      std::span<const OutgoingRecord> batch) override;
  absl::Status Finish() override { return absl::OkStatus(); }

 private:
  PreparedEvent Prepare(const OutgoingRecord& record) const;
  absl::Status BuildUserData(const json& in, json& out) const;
  absl::StatusOr<PartOutcome> SendPart(std::span<const std::string> events);

  MetaCapiDestination* dest_;
  SessionOptions options_;
  HttpDelivery delivery_;
  absl::Status stop_;
};

// Normalises and hashes one value of a hashed key. "" when nothing remains.
absl::StatusOr<std::string> HashValue(std::string_view key, const std::string& raw,
                                      std::string_view country) {
  std::string trimmed = TrimAscii(raw);
  if (IsMetaHashed(trimmed)) return LowerAscii(trimmed);
  BACKFLOW_ASSIGN_OR_RETURN(std::string normalized, MetaNormalizeUserValue(key, trimmed, country));
  if (normalized.empty()) return std::string();
  return Sha256Hex(normalized);
}

absl::Status MetaCapiSession::BuildUserData(const json& in, json& out) const {
  out = json::object();
  // The record's country, normalised, for ZIP codes.
  std::string country;
  if (auto c = in.find("country"); c != in.end()) {
    const json& first = c->is_array() && !c->empty() ? c->front() : *c;
    if (std::optional<std::string> text = ScalarText(first)) {
      std::string t = TrimAscii(*text);
      if (!IsMetaHashed(t)) {
        absl::StatusOr<std::string> n = MetaNormalizeUserValue("country", t);
        if (n.ok()) country = *n;
      }
    }
  }
  for (const auto& [key, value] : in.items()) {
    if (value.is_null()) continue;
    const bool hashed = HashedKeys().contains(key);
    const bool external = key == "external_id";
    if (!hashed && !external) {
      // Meta's "do not hash" keys (client_ip_address, client_user_agent, fbc,
      // fbp, ...) and keys added after this was written: sent as given.
      if (value.is_string() && TrimAscii(value.get<std::string>()).empty()) continue;
      out[key] = value.is_string() ? json(TrimAscii(value.get<std::string>())) : value;
      continue;
    }
    std::vector<json> items;
    if (value.is_array()) {
      items.assign(value.begin(), value.end());
    } else {
      items.push_back(value);
    }
    json values = json::array();
    std::set<std::string> seen;
    for (const json& item : items) {
      if (item.is_null()) continue;
      std::optional<std::string> text = ScalarText(item);
      if (!text) {
        return absl::InvalidArgumentError(
            fmt::format("user_data.{} must be text (or a list of texts), got {}: map a text column",
                        key, BodySnippet(Dump(item), 80)));
      }
      std::string v;
      if (hashed) {
        absl::StatusOr<std::string> h = HashValue(key, *text, country);
        if (!h.ok()) {
          return absl::InvalidArgumentError(
              fmt::format("user_data.{}: {}", key, h.status().message()));
        }
        v = *std::move(h);
      } else {
        std::string trimmed = TrimAscii(*text);
        if (IsMetaHashed(trimmed)) {
          v = LowerAscii(trimmed);
        } else if (trimmed.empty()) {
          v.clear();
        } else {
          v = dest_->config().hash_external_id ? Sha256Hex(trimmed) : trimmed;
        }
      }
      if (v.empty() || !seen.insert(v).second) continue;
      values.push_back(std::move(v));
    }
    if (values.empty()) continue;
    if (ArrayKeys().contains(key) || values.size() > 1) {
      out[key] = std::move(values);
    } else {
      out[key] = std::move(values.front());
    }
  }
  return absl::OkStatus();
}

// Drops null members (Meta rejects null parameters) from an object, recursively.
json WithoutNulls(const json& v) {
  if (!v.is_object()) return v;
  json out = json::object();
  for (const auto& [k, child] : v.items()) {
    if (child.is_null()) continue;
    out[k] = WithoutNulls(child);
  }
  return out;
}

PreparedEvent MetaCapiSession::Prepare(const OutgoingRecord& record) const {
  auto invalid = [](std::string message) {
    return PreparedEvent{.text = "", .status = absl::InvalidArgumentError(std::move(message))};
  };
  if (record.change != ChangeKind::kAdded) {
    return invalid(fmt::format(
        "send_event sends each new row once, as one conversion; an {} row would be counted "
        "again (or cannot be undone): set records: added on this mapping",
        ChangeKindName(record.change)));
  }
  json payload = RecordPayload(options_.layout, record);
  json ev = json::object();

  auto name = payload.find("event_name");
  if (name == payload.end() || !name->is_string() || TrimAscii(name->get<std::string>()).empty()) {
    return invalid(
        "event_name is empty: map it to a column holding the event's name, or to a literal such "
        "as \"'Purchase'\"");
  }
  ev["event_name"] = TrimAscii(name->get<std::string>());

  auto time = payload.find("event_time");
  std::optional<int64_t> seconds;
  if (time != payload.end()) {
    if (time->is_number_integer()) {
      seconds = time->get<int64_t>();
    } else if (time->is_number_float()) {
      seconds = static_cast<int64_t>(std::floor(time->get<double>()));
    } else if (time->is_string()) {
      if (std::optional<IsoInstant> t = ParseIsoInstant(TrimAscii(time->get<std::string>()))) {
        seconds = t->seconds;
      }
    }
  }
  if (!seconds) {
    return invalid(
        fmt::format("event_time {} is not a timestamp: map it to the column holding when the event "
                    "happened (a timestamp, or iso8601(column) for seconds since 1970)",
                    time == payload.end() ? "is missing, so it" : BodySnippet(Dump(*time), 60)));
  }
  const int64_t now = static_cast<int64_t>(std::floor(ToUnixSeconds(dest_->clock()->Now())));
  const int64_t oldest =
      now - std::chrono::duration_cast<std::chrono::seconds>(kMetaMaxEventAge).count();
  if (*seconds < oldest) {
    return invalid(fmt::format(
        "event_time {} is {:.1f} days ago; Meta refuses events older than {} days (and the whole "
        "request with them), so this event was not sent. Filter older rows out in the model's "
        "SQL (e.g. WHERE created_at > now() - interval '6 days')",
        FormatIso8601(Clock::TimePoint(std::chrono::seconds(*seconds))),
        static_cast<double>(now - *seconds) / 86400.0, kMetaMaxEventAge.count() / 24));
  }
  ev["event_time"] = *seconds;

  auto source = payload.find("action_source");
  if (source == payload.end() || !source->is_string() ||
      std::find(ActionSources().begin(), ActionSources().end(), source->get<std::string>()) ==
          ActionSources().end()) {
    return invalid(fmt::format(
        "action_source {} is not one of Meta's values ({}): map it to a literal such as "
        "\"'website'\" or \"'physical_store'\"",
        source == payload.end() ? "is missing and" : BodySnippet(Dump(*source), 60),
        fmt::format("{}", fmt::join(ActionSources(), ", "))));
  }
  const std::string action_source = source->get<std::string>();
  ev["action_source"] = action_source;

  std::string event_id;
  if (auto id = payload.find("event_id"); id != payload.end() && !id->is_null()) {
    std::optional<std::string> text = ScalarText(*id);
    if (text) event_id = TrimAscii(*text);
  }
  if (event_id.empty()) event_id = MetaEventId(record.dedup_id);
  ev["event_id"] = event_id;

  if (auto url = payload.find("event_source_url");
      url != payload.end() && url->is_string() && !TrimAscii(url->get<std::string>()).empty()) {
    ev["event_source_url"] = TrimAscii(url->get<std::string>());
  }
  if (auto opt = payload.find("opt_out"); opt != payload.end() && opt->is_boolean()) {
    ev["opt_out"] = *opt;
  }
  if (auto dpo = payload.find("data_processing_options"); dpo != payload.end() && !dpo->is_null()) {
    json list = json::array();
    if (dpo->is_array()) {
      list = *dpo;
    } else if (dpo->is_string()) {
      if (!dpo->get<std::string>().empty()) list.push_back(*dpo);
    } else {
      return invalid(
          "data_processing_options must be a list such as [\"LDU\"] or the text LDU (an empty "
          "list opts out of Limited Data Use)");
    }
    ev["data_processing_options"] = std::move(list);
  }
  for (const char* key : {"data_processing_options_country", "data_processing_options_state"}) {
    if (auto v = payload.find(key); v != payload.end() && v->is_number_integer()) ev[key] = *v;
  }

  json user_in = json::object();
  if (auto u = payload.find("user_data"); u != payload.end() && !u->is_null()) {
    if (!u->is_object()) {
      return invalid(fmt::format(
          "user_data must be an object, got {}: map user_data.<key> fields (user_data.em: "
          "email) or a JSON column holding an object",
          BodySnippet(Dump(*u), 80)));
    }
    user_in = *u;
  }
  json user_data;
  if (absl::Status s = BuildUserData(user_in, user_data); !s.ok()) {
    return invalid(std::string(s.message()));
  }
  if (user_data.empty()) {
    return invalid(
        "user_data has no customer information parameter (all mapped ones are NULL or empty), "
        "and Meta refuses such events: map at least one of user_data.em (email), user_data.ph "
        "(phone), user_data.external_id, user_data.fbp / fbc, or user_data.client_ip_address "
        "with user_data.client_user_agent, and filter out rows that have none");
  }
  if (action_source == "website") {
    std::vector<std::string> missing;
    if (!ev.contains("event_source_url")) missing.push_back("event_source_url");
    if (!user_data.contains("client_user_agent")) missing.push_back("user_data.client_user_agent");
    if (!missing.empty()) {
      return invalid(fmt::format(
          "action_source is website, and Meta requires website events to carry {}: map {} (the "
          "page URL and the browser's user agent), or use another action_source for events "
          "that did not happen on a website",
          fmt::join(missing, " and "), fmt::join(missing, " and ")));
    }
  }
  ev["user_data"] = std::move(user_data);

  for (const char* object : {"custom_data", "app_data"}) {
    auto it = payload.find(object);
    if (it == payload.end() || it->is_null()) continue;
    if (!it->is_object()) {
      return invalid(fmt::format(
          "{0} must be an object, got {1}: map {0}.<name> fields or a JSON column holding an "
          "object",
          object, BodySnippet(Dump(*it), 80)));
    }
    json cleaned = WithoutNulls(*it);
    if (!cleaned.empty()) ev[object] = std::move(cleaned);
  }
  return PreparedEvent{.text = Dump(ev), .status = absl::OkStatus()};
}

absl::StatusOr<PartOutcome> MetaCapiSession::SendPart(std::span<const std::string> events) {
  if (absl::Status held = dest_->Hold(); !held.ok()) return held;
  std::string body = R"({"data":[)";
  for (size_t i = 0; i < events.size(); ++i) {
    if (i > 0) body.push_back(',');
    body.append(events[i]);
  }
  body.push_back(']');
  const std::string& code = dest_->config().test_event_code;
  if (!code.empty()) body += R"(,"test_event_code":)" + Dump(json(code));
  body.push_back('}');

  DeliveryResult d =
      delivery_.Send([&] { return dest_->BuildRequest("POST", dest_->EventsUrl(), body); });
  if (!d.response.ok()) {
    return PartOutcome::AllRecords(events.size(), delivery_.FailureStatus(d, kWhat));
  }
  const HttpResponse& r = *d.response;
  GraphError e = ParseGraphError(r);
  ReplyKind kind = Classify(r, e);
  const std::string doing =
      fmt::format("sending {} event{}", events.size(), events.size() == 1 ? "" : "s");
  if (kind == ReplyKind::kOk) {
    json reply = json::parse(r.body, nullptr, /*allow_exceptions=*/false);
    auto received = reply.is_object() ? reply.find("events_received") : reply.end();
    if (received != reply.end() && received->is_number_integer() &&
        received->get<int64_t>() == static_cast<int64_t>(events.size())) {
      return PartOutcome::AllRecords(events.size(), absl::OkStatus());
    }
    return PartOutcome::AllRecords(
        events.size(),
        absl::UnavailableError(fmt::format(
            "Meta answered HTTP {} but acknowledged {} of the {} events sent, so it is unknown "
            "which were received; they are re-sent by the next run with the same event_id, which "
            "Meta deduplicates. Meta said: {}",
            r.status, received != reply.end() && received->is_number() ? received->dump() : "none",
            events.size(), BodySnippet(r.body))));
  }
  if (absl::Status stop = dest_->StopStatus(kind, r, e, doing); !stop.ok()) {
    if (kind == ReplyKind::kRateLimited) {
      std::optional<std::chrono::milliseconds> wait = RetryAfter(stop);
      dest_->HoldFor(stop, wait.value_or(std::chrono::milliseconds(0)));
    }
    stop_ = stop;
    return stop;
  }
  if (kind == ReplyKind::kTransient) {
    return PartOutcome::AllRecords(
        events.size(),
        absl::UnavailableError(fmt::format("Meta could not take the events {} ({}); they are "
                                           "retried by the next run. Meta said: {}",
                                           d.AttemptsText(), doing, e.Describe(r))));
  }
  // The whole request was refused for (at least) one of its events.
  return PartOutcome::Split(absl::InvalidArgumentError(fmt::format(
      "Meta rejected this event: {}. Fix the mapped values of this row (Meta checks hashed "
      "identifiers, event_time within {} days, action_source and required parameters)",
      e.Describe(r), kMetaMaxEventAge.count() / 24)));
}

absl::StatusOr<std::vector<absl::Status>> MetaCapiSession::SendBatch(
    std::span<const OutgoingRecord> batch) {
  std::vector<absl::Status> out(batch.size(), absl::OkStatus());
  if (batch.empty()) return out;
  if (!stop_.ok()) return stop_;
  if (absl::Status held = dest_->Hold(); !held.ok()) return held;

  std::vector<size_t> valid_index;
  std::vector<std::string> events;
  for (size_t i = 0; i < batch.size(); ++i) {
    PreparedEvent p = Prepare(batch[i]);
    if (!p.status.ok()) {
      out[i] = std::move(p.status);
      continue;
    }
    valid_index.push_back(i);
    events.push_back(std::move(p.text));
  }
  if (events.empty()) return out;
  std::vector<OutgoingRecord> compacted;
  std::span<const OutgoingRecord> valid = batch;
  if (valid_index.size() != batch.size()) {
    compacted.reserve(valid_index.size());
    for (size_t i : valid_index) compacted.push_back(batch[i]);
    valid = compacted;
  }

  bool delivered = false;
  for (size_t begin = 0; begin < events.size(); begin += kMetaMaxBatchEvents) {
    size_t end = std::min(events.size(), begin + static_cast<size_t>(kMetaMaxBatchEvents));
    std::span<const OutgoingRecord> records = valid.subspan(begin, end - begin);
    absl::StatusOr<std::vector<absl::Status>> results =
        SendBisecting(records, [&](std::span<const OutgoingRecord> part) {
          size_t offset = static_cast<size_t>(part.data() - valid.data());
          return SendPart(std::span<const std::string>(events).subspan(offset, part.size()));
        });
    if (!results.ok()) {
      if (!delivered) return results.status();
      for (size_t k = begin; k < events.size(); ++k) out[valid_index[k]] = results.status();
      break;
    }
    for (size_t k = 0; k < results->size(); ++k) {
      if ((*results)[k].ok()) delivered = true;
      out[valid_index[begin + k]] = std::move((*results)[k]);
    }
  }
  return out;
}

absl::StatusOr<std::unique_ptr<ActionSession>> MetaCapiDestination::StartSession(
    const SessionOptions& options) {
  if (options.action == nullptr || options.action->id != "send_event") {
    return absl::InvalidArgumentError(
        fmt::format("meta_capi has no action \"{}\" (it has send_event)",
                    options.action == nullptr ? "" : options.action->id));
  }
  return std::unique_ptr<ActionSession>(std::make_unique<MetaCapiSession>(this, options));
}

// ---------------------------------------------------------------- definition

FieldSpec Field(std::string key, std::string label, FieldType type, std::string description,
                std::string default_column = "") {
  FieldSpec f;
  f.key = std::move(key);
  f.label = std::move(label);
  f.type = type;
  f.description = std::move(description);
  f.default_column = std::move(default_column);
  return f;
}

SettingSpec Setting(std::string key, std::string label, SettingType type, std::string description) {
  SettingSpec s;
  s.key = std::move(key);
  s.label = std::move(label);
  s.type = type;
  s.description = std::move(description);
  return s;
}

constexpr char kNotes[] = R"md(## Example

```yaml
destinations:
  - name: meta
    type: meta_capi
    settings:
      pixel_id: "1234567890"
      access_token: ${env:META_CAPI_TOKEN}
      # test_event_code: TEST12345   # while checking events in Events Manager > Test events
mappings:
  - name: purchases_to_meta
    model: purchases            # one row per order, created in the last few days
    destination: meta
    action: send_event
    records: added
    fields:
      event_name: "'Purchase'"
      event_time: created_at
      action_source: "'website'"
      event_id: order_id        # the same id the browser pixel sends, for deduplication
      event_source_url: page_url
      user_data.em: email       # normalised and hashed by Backflow
      user_data.ph: phone
      user_data.client_ip_address: ip
      user_data.client_user_agent: user_agent
      user_data.fbp: fbp
      custom_data.value: amount
      custom_data.currency: currency
```

## Wire format

Each batch is one `POST <base_url>/<api_version>/<pixel_id>/events?access_token=<token>` with a
JSON body of at most 1,000 events:

```json
{"data": [
   {"event_name": "Purchase", "event_time": 1767322245, "action_source": "website",
    "event_id": "o_123", "event_source_url": "https://shop.example/checkout",
    "user_data": {"em": ["309a0a5c3e211326ae75ca18196d301a9bdbd1a882a4d2569511033da23f0abd"],
                  "ph": ["…"], "client_ip_address": "203.0.113.7",
                  "client_user_agent": "Mozilla/5.0 …", "fbp": "fb.1.1558571054389.1098115397"},
    "custom_data": {"currency": "USD", "value": 142.52}}],
 "test_event_code": "TEST12345"}
```

- `event_time` is sent as Unix seconds. Meta refuses a whole request if one of its events is
  more than 7 days old, so Backflow fails such rows itself (they are reported, not sent). Keep
  the model to recent rows, e.g. `WHERE created_at > now() - interval '6 days'`.
- `event_id` defaults to a value derived from the row (`bf-<dedup id>`), identical on every
  re-send, so Meta counts a retried event once (Meta deduplicates on `event_name` + `event_id`
  within 48 hours). To deduplicate against the browser pixel, map `event_id` to the id the pixel
  sends (usually the order id).
- Only `records: added` is supported: each new row is one conversion. Updated and deleted rows
  fail with a message saying so.
- `custom_data.*` and `app_data.*` are sent as mapped; NULL values are left out.
- `test_event_code` sends the events to Events Manager's Test events tab only: remove it once
  the events look right.

## Customer information (`user_data`)

Meta only accepts hashed contact information. Backflow normalises and hashes (SHA-256, lowercase
hex) these keys itself, whether you map raw values or `hash_email(...)` / `sha256(...)`: a value
that already is 64 hex digits is sent as it is, never hashed twice.

| key | normalisation before hashing |
| --- | --- |
| `em` | whitespace removed, lowercase |
| `ph` | digits only, a leading `00` removed (include the country code: `+44 844 412 4653` → `448444124653`) |
| `fn`, `ln`, `ct` | lowercase, no punctuation or spaces (UTF-8 letters kept) |
| `ge` | `m` or `f` (first letter); other values are left out |
| `db` | `YYYYMMDD` from a date, `YYYY-MM-DD` or `YYYYMMDD` text; anything else fails the row |
| `st` | lowercase, no punctuation or spaces; US state names become their 2-letter code |
| `zp` | lowercase, no spaces or dashes; US ZIP codes (ZIP+4, or `country` us) keep 5 digits |
| `country` | ISO 3166-1 alpha-2, lowercase; common names (`United States`, `Germany`) are converted, other values fail the row |
| `external_id` | trimmed, then hashed (Meta recommends it; set `hash_external_id: false` to send it as is) |

`em`, `ph` and `external_id` are sent as lists; a JSON column holding a list sends several
values. `client_ip_address`, `client_user_agent`, `fbc`, `fbp`, `subscription_id`,
`fb_login_id`, `lead_id`, `anon_id`, `madid`, `page_id`, `page_scoped_user_id`, `ctwa_clid`,
`ig_account_id`, `ig_sid` and any other key are sent as given, never hashed.

A row whose `user_data` ends up empty fails (Meta requires at least one customer information
parameter). Website events (`action_source: website`) also need `event_source_url` and
`user_data.client_user_agent`.

## Replies

Meta answers errors with a Graph error object
(`{"error":{"message","type","code","error_subcode","error_user_msg","fbtrace_id"}}`), which
Backflow quotes in every failure.

| reply | outcome |
| --- | --- |
| 200 with `events_received` equal to the events sent | every event of the request accepted |
| 200 with another count | the request's rows fail and are re-sent by the next run (same `event_id`) |
| 4xx for the request (e.g. code 100, invalid parameter) | Meta rejects the whole request for one bad event: it is split in halves and re-sent until the rejected rows are isolated; they fail with Meta's message |
| codes 4, 17, 32, 341, 613, 80000–80099 (rate limiting), HTTP 429 | retried with backoff (`Retry-After` or `X-Business-Use-Case-Usage` waits honoured, capped by `max_retry_wait_s`); then the run stops and the remaining rows are sent by a later run |
| codes 1, 2, `is_transient: true`, HTTP 5xx, timeouts | retried with backoff; then the request's rows fail and are re-sent by the next run |
| code 190 or 102 (token invalid or expired) | the run stops: generate a new `access_token` |
| codes 3, 10, 200–299 (permissions) | the run stops: give the token's system user access to the pixel |
| code 100 subcode 33, 803, 2500, 2635, HTTP 404 | the run stops: check `pixel_id`, `api_version` and `base_url` |

There is no separate Conversions API rate limit: requests count as Marketing API calls of the
app that issued the token. `max_requests_per_second` caps them if other tools share the app.

`backflow test-connection` reads the pixel (`GET /<api_version>/<pixel_id>?fields=id,name`) with
the token, which checks the token, the pixel id and the token's access to it without sending an
event.

The token travels as the `access_token` query parameter, as Meta documents. Backflow never prints
request URLs with their query.
)md";

}  // namespace

std::string MetaEventId(std::string_view dedup_id) {
  std::string id = "bf-";
  id.append(dedup_id);
  if (id.size() > kEventIdMax) {
    Hasher128 h;
    h.Add(dedup_id);
    id = "bf-" + h.Finish().ToHex();
  }
  return id;
}

bool IsMetaHashed(std::string_view value) {
  return value.size() == 64 && std::all_of(value.begin(), value.end(),
                                           [](unsigned char c) { return std::isxdigit(c) != 0; });
}

absl::StatusOr<std::string> MetaNormalizeUserValue(std::string_view key, std::string_view value,
                                                   std::string_view country) {
  if (key == "em") {
    std::string out;
    for (char ch : value) {
      if (!std::isspace(static_cast<unsigned char>(ch))) out.push_back(ch);
    }
    return LowerAscii(out);
  }
  if (key == "ph") {
    std::string digits;
    for (char c : value) {
      if (c >= '0' && c <= '9') digits.push_back(c);
    }
    if (digits.starts_with("00")) digits.erase(0, 2);
    return digits;
  }
  if (key == "fn" || key == "ln" || key == "ct") return LowerLettersAndDigits(value);
  if (key == "ge") {
    std::string g = LowerLettersAndDigits(value);
    if (!g.empty() && (g.front() == 'm' || g.front() == 'f')) return std::string(1, g.front());
    return std::string();
  }
  if (key == "db") {
    std::string t = TrimAscii(value);
    if (t.empty()) return std::string();
    std::string digits;
    if (t.size() >= 10 && t[4] == '-' && t[7] == '-') {
      digits = t.substr(0, 4) + t.substr(5, 2) + t.substr(8, 2);
    } else {
      digits = t;
    }
    bool ok = digits.size() == 8 && std::all_of(digits.begin(), digits.end(),
                                                [](char c) { return c >= '0' && c <= '9'; });
    if (ok) {
      int month = std::stoi(digits.substr(4, 2));
      int day = std::stoi(digits.substr(6, 2));
      ok = month >= 1 && month <= 12 && day >= 1 && day <= 31;
    }
    if (!ok) {
      return absl::InvalidArgumentError(fmt::format(
          "date of birth \"{}\" is not a date: map a date column, or text as YYYY-MM-DD or "
          "YYYYMMDD",
          BodySnippet(t, 40)));
    }
    return digits;
  }
  if (key == "st") {
    std::string s = LowerLettersAndDigits(value);
    if (auto it = UsStates().find(s); it != UsStates().end()) return it->second;
    return s;
  }
  if (key == "zp") {
    std::string t = TrimAscii(value);
    // US ZIP+4 ("94107-1234"): the first five digits.
    bool zip4 =
        t.size() == 10 && t[5] == '-' &&
        std::all_of(t.begin(), t.begin() + 5, [](char c) { return c >= '0' && c <= '9'; }) &&
        std::all_of(t.begin() + 6, t.end(), [](char c) { return c >= '0' && c <= '9'; });
    if (zip4) return t.substr(0, 5);
    std::string out;
    for (char ch : t) {
      if (ch == '-' || std::isspace(static_cast<unsigned char>(ch))) continue;
      out.push_back(static_cast<char>(std::tolower(static_cast<unsigned char>(ch))));
    }
    if (country == "us" && out.size() > 5 &&
        std::all_of(out.begin(), out.begin() + 5, [](char c) { return c >= '0' && c <= '9'; })) {
      out.resize(5);
    }
    return out;
  }
  if (key == "country") {
    std::string c;
    for (char ch : value) {
      unsigned char u = static_cast<unsigned char>(ch);
      if (std::isalpha(u)) c.push_back(static_cast<char>(std::tolower(u)));
    }
    if (c.empty()) return std::string();
    if (auto it = CountryNames().find(c); it != CountryNames().end()) return it->second;
    if (c.size() == 2) return c;
    return absl::InvalidArgumentError(fmt::format(
        "country \"{}\" is not an ISO 3166-1 alpha-2 code: map a 2-letter country code (us, gb, "
        "de)",
        BodySnippet(TrimAscii(value), 40)));
  }
  return absl::InvalidArgumentError(fmt::format("user_data.{} is not a hashed key", key));
}

DestinationDefinition MetaCapiDestinationDefinition() {
  DestinationDefinition def;
  def.type = "meta_capi";
  def.title = "Meta Conversions API";
  def.description =
      "Sends each new model row as a server event (a purchase, a lead) to a Meta pixel / dataset "
      "through the Conversions API, with customer information normalised and SHA-256 hashed and "
      "deterministic event ids so re-sends are deduplicated.";
  def.maturity = "beta";

  SettingSpec pixel = Setting(
      "pixel_id", "Pixel (dataset) ID", SettingType::kString,
      "The pixel's / dataset's numeric id (Events Manager > Data sources > <pixel> > Settings). "
      "Quote it in YAML: pixel_id: \"1234567890\".");
  pixel.required = true;
  def.settings.push_back(pixel);

  SettingSpec token = Setting(
      "access_token", "Access token", SettingType::kString,
      "A Conversions API access token for the pixel (Events Manager > <pixel> > Settings > "
      "Conversions API > Generate access token, or a system user token with ads_management and "
      "access to the pixel). Sent as the access_token query parameter.");
  token.required = true;
  token.secret = true;
  def.settings.push_back(token);

  SettingSpec version = Setting(
      "api_version", "Graph API version", SettingType::kString,
      fmt::format("The Graph API version in the URL. Each version is supported for at least two "
                  "years; change it when Meta retires {}.",
                  kMetaApiVersion));
  version.default_value = kMetaApiVersion;
  def.settings.push_back(version);

  def.settings.push_back(Setting(
      "test_event_code", "Test event code", SettingType::kString,
      "When set, events go to Events Manager's Test events tab only (the code shown there), not "
      "to reporting or optimisation. For checking a new mapping; remove it afterwards."));

  SettingSpec hash_external = Setting(
      "hash_external_id", "Hash external_id", SettingType::kBoolean,
      "Whether user_data.external_id is SHA-256 hashed before sending (Meta recommends it, and "
      "the pixel hashes the external_id it sends). Values that already are 64 hex digits are "
      "never hashed again.");
  hash_external.default_value = true;
  def.settings.push_back(hash_external);

  HttpSettingsDefaults http;
  http.base_url = kDefaultBaseUrl;
  http.timeout_ms = kDefaultTimeoutMs;
  http.concurrency = 1;
  for (SettingSpec& s : HttpSettingSpecs(http)) def.settings.push_back(std::move(s));

  ActionSpec send;
  send.id = "send_event";
  send.title = "Send conversion events";
  send.description =
      "Sends each new row of the model as one server event (event_name, event_time, "
      "action_source, user_data.*, custom_data.*) to the pixel. Rows older than 7 days are "
      "reported and not sent.";
  send.selections = {RecordSelection::kAdded};

  FieldSpec name = Field("event_name", "Event name", FieldType::kString,
                         "A standard event (Purchase, Lead, CompleteRegistration, ...) or a "
                         "custom event name; a literal such as \"'Purchase'\" when every row is "
                         "the same event.");
  name.required = true;
  send.fields.push_back(name);
  FieldSpec time = Field("event_time", "Event time", FieldType::kTimestamp,
                         "When the event happened; sent as Unix seconds. Rows more than 7 days "
                         "old fail without being sent.");
  time.required = true;
  send.fields.push_back(time);
  FieldSpec source = Field("action_source", "Action source", FieldType::kString,
                           "Where the conversion happened; usually a literal such as "
                           "\"'website'\". Website events also need event_source_url and "
                           "user_data.client_user_agent.");
  source.required = true;
  source.allowed_values = ActionSources();
  send.fields.push_back(source);
  send.fields.push_back(Field("event_id", "Event ID", FieldType::kString,
                              "Deduplication id (with event_name). Map the id the browser pixel "
                              "sends (e.g. the order id) to deduplicate against it; defaults to "
                              "an id derived from the row, identical on every re-send."));
  send.fields.push_back(Field("event_source_url", "Event source URL", FieldType::kString,
                              "The page URL where the event happened (required for website "
                              "events)."));
  send.fields.push_back(Field("opt_out", "Opt out", FieldType::kBoolean,
                              "True when the event must be used for attribution only, not for ad "
                              "delivery optimisation."));
  send.fields.push_back(Field("data_processing_options", "Data processing options", FieldType::kAny,
                              "Limited Data Use: a list such as [\"LDU\"] (json('[\"LDU\"]') or "
                              "the text 'LDU'), or an empty list."));
  send.fields.push_back(Field("data_processing_options_country", "LDU country", FieldType::kInteger,
                              "With LDU: 1 for the United States, 0 to let Meta geolocate."));
  send.fields.push_back(Field("data_processing_options_state", "LDU state", FieldType::kInteger,
                              "With LDU: 1000 for California, 0 to let Meta geolocate."));
  send.fields.push_back(Field("user_data", "Customer information", FieldType::kObject,
                              "Customer information parameters (user_data.<key>), or the whole "
                              "object from a JSON column. At least one is required per row."));
  send.fields.push_back(Field("user_data.em", "Email", FieldType::kAny,
                              "Email address (or a list); normalised and hashed.", "email"));
  send.fields.push_back(Field("user_data.ph", "Phone", FieldType::kAny,
                              "Phone number with country code (or a list); digits only, hashed.",
                              "phone"));
  send.fields.push_back(Field("user_data.fn", "First name", FieldType::kString,
                              "First name; normalised and hashed."));
  send.fields.push_back(
      Field("user_data.ln", "Last name", FieldType::kString, "Last name; normalised and hashed."));
  send.fields.push_back(Field("user_data.ge", "Gender", FieldType::kString,
                              "Gender (m or f; the first letter of the value); hashed."));
  send.fields.push_back(Field("user_data.db", "Date of birth", FieldType::kString,
                              "Date of birth (a date, YYYY-MM-DD or YYYYMMDD); hashed."));
  send.fields.push_back(Field("user_data.ct", "City", FieldType::kString,
                              "City; lowercase without spaces or punctuation, hashed."));
  send.fields.push_back(Field("user_data.st", "State", FieldType::kString,
                              "State or region (US: 2-letter code or name); hashed."));
  send.fields.push_back(Field("user_data.zp", "ZIP / postal code", FieldType::kString,
                              "ZIP or postal code; hashed (US: first 5 digits)."));
  send.fields.push_back(Field("user_data.country", "Country", FieldType::kString,
                              "ISO 3166-1 alpha-2 country code (us, gb); hashed."));
  send.fields.push_back(Field("user_data.external_id", "External ID", FieldType::kAny,
                              "Your id for the customer (or a list); hashed unless "
                              "hash_external_id is false."));
  send.fields.push_back(Field("user_data.client_ip_address", "Client IP address",
                              FieldType::kString, "The browser's IP address; never hashed."));
  send.fields.push_back(Field("user_data.client_user_agent", "Client user agent",
                              FieldType::kString,
                              "The browser's user agent (required for website events); never "
                              "hashed."));
  send.fields.push_back(Field("user_data.fbc", "Click ID (fbc)", FieldType::kString,
                              "The _fbc cookie (fb.1.<time>.<fbclid>); never hashed."));
  send.fields.push_back(Field("user_data.fbp", "Browser ID (fbp)", FieldType::kString,
                              "The _fbp cookie (fb.1.<time>.<random>); never hashed."));
  send.fields.push_back(Field("custom_data", "Custom data", FieldType::kObject,
                              "Event details (custom_data.<key>: value, currency, content_ids, "
                              "order_id, ...), or the whole object from a JSON column."));
  send.fields.push_back(Field("custom_data.value", "Value", FieldType::kNumber,
                              "The conversion's monetary value (with custom_data.currency)."));
  send.fields.push_back(Field("custom_data.currency", "Currency", FieldType::kString,
                              "ISO 4217 currency code of value (USD, EUR)."));
  send.fields.push_back(Field("app_data", "App data", FieldType::kObject,
                              "For action_source app: app_data.<key> (advertiser_tracking_enabled, "
                              "extinfo, ...)."));
  send.extra_field_parents = {"user_data", "custom_data", "app_data"};
  send.max_batch_records = kMetaMaxBatchEvents;
  send.default_batch_records = kDefaultBatchEvents;
  def.actions.push_back(send);

  def.notes = kNotes;
  def.create = HttpDestinationFactory<MetaCapiDestination>(def.type, ParseConfig);
  return def;
}

}  // namespace backflow
