#include "backflow/destinations/hubspot/hubspot_destination.h"

#include <algorithm>
#include <cctype>
#include <chrono>
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
#include "backflow/common/clock.h"
#include "backflow/common/errors.h"
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

constexpr char kUserAgent[] = "backflow/0.1";
constexpr char kDefaultBaseUrl[] = "https://api.hubapi.com";
constexpr int kMaxInputs = 100;
constexpr int64_t kDefaultRequestsPer10s = 100;
constexpr std::chrono::seconds kVendorWindow{10};
constexpr std::chrono::seconds kLockedWait{2};
constexpr std::chrono::seconds kSecondlyWait{1};
// After a DAILY 429 nothing is sent for this long (each probe costs a
// request HubSpot counts against the error budget).
constexpr std::chrono::minutes kDailyHold{15};
constexpr char kRecordIdProperty[] = "hs_object_id";
constexpr char kPropertiesPrefix[] = "properties.";

std::string Lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

// ---------------------------------------------------------------- replies

enum class Policy { kNone, kTenSecondly, kSecondly, kDaily };

json ParseBody(const std::string& body) {
  json doc = json::parse(body, nullptr, /*allow_exceptions=*/false);
  return doc.is_discarded() ? json() : doc;
}

std::string StringMember(const json& doc, const char* key) {
  if (!doc.is_object()) return "";
  auto it = doc.find(key);
  return it != doc.end() && it->is_string() ? it->get<std::string>() : "";
}

// Which limit a 429 names: policyName, or the message text HubSpot's own
// SDK recognises.
Policy RateLimitPolicy(const HttpResponse& r) {
  if (r.status != 429) return Policy::kNone;
  json doc = ParseBody(r.body);
  std::string policy = StringMember(doc, "policyName");
  std::string message = Lower(StringMember(doc, "message"));
  if (policy == "DAILY" || message.find("daily limit") != std::string::npos) return Policy::kDaily;
  if (policy == "SECONDLY" || message.find("your secondly limit") != std::string::npos) {
    return Policy::kSecondly;
  }
  if (policy == "TEN_SECONDLY_ROLLING" || message.find("ten_secondly") != std::string::npos) {
    return Policy::kTenSecondly;
  }
  return Policy::kNone;
}

bool RetryableReply(const HttpResponse& r) {
  if (r.status == 429) return RateLimitPolicy(r) != Policy::kDaily;
  return r.status == 408 || r.status == 423 || r.status == 425 || r.status == 477 ||
         r.status >= 500;
}

std::optional<std::chrono::milliseconds> RequestedWait(const HttpResponse& r,
                                                       Clock::TimePoint now) {
  if (auto ra = r.Header("retry-after")) {
    if (auto wait = ParseRetryAfter(*ra, now)) return wait;
  }
  if (r.status == 423) return kLockedWait;
  if (r.status != 429) return std::nullopt;
  switch (RateLimitPolicy(r)) {
    case Policy::kTenSecondly: {
      if (auto interval = r.Header("x-hubspot-ratelimit-interval-milliseconds")) {
        try {
          int64_t ms = std::stoll(*interval);
          if (ms > 0 && ms <= 60'000) return std::chrono::milliseconds(ms);
        } catch (...) {
        }
      }
      return kVendorWindow;
    }
    case Policy::kSecondly:
      return kSecondlyWait;
    default:
      return std::nullopt;
  }
}

// HubSpot's explanation of an error object: its message plus the details
// of errors[] ("email: Email address x is invalid (INVALID_EMAIL)").
std::string ErrorText(const json& err) {
  std::string message = StringMember(err, "message");
  std::vector<std::string> details;
  if (err.is_object() && err.contains("errors") && err["errors"].is_array()) {
    for (const json& e : err["errors"]) {
      std::string text = StringMember(e, "message");
      std::string in = StringMember(e, "in");
      std::string code = StringMember(e, "code");
      if (text.empty() && code.empty()) continue;
      std::string d = in.empty() ? text : in + ": " + text;
      if (!code.empty()) d += " (" + code + ")";
      details.push_back(d);
    }
  }
  if (!details.empty()) {
    // The top-level message often restates the details as JSON: prefer them.
    std::string head = message.substr(0, message.find(": ["));
    message = (head.empty() ? "" : head + ": ") + fmt::format("{}", fmt::join(details, "; "));
  }
  std::string category = StringMember(err, "category");
  if (!category.empty()) message = category + ": " + message;
  return BodySnippet(message);
}

// What HubSpot said in a whole-request error body (or the raw body).
std::string ReplyText(const HttpResponse& r) {
  json doc = ParseBody(r.body);
  if (doc.is_object() && doc.contains("message")) return ErrorText(doc);
  return r.body.empty() ? "(empty body)" : BodySnippet(r.body);
}

// Scopes a 403 names: context.missingScopes or errors[].context.required*Scopes.
std::vector<std::string> MissingScopes(const HttpResponse& r) {
  std::set<std::string> out;
  json doc = ParseBody(r.body);
  auto collect = [&](const json& ctx) {
    if (!ctx.is_object()) return;
    for (const char* key : {"missingScopes", "requiredGranularScopes", "requiredScopes"}) {
      auto it = ctx.find(key);
      if (it == ctx.end() || !it->is_array()) continue;
      for (const json& s : *it) {
        if (s.is_string()) out.insert(s.get<std::string>());
      }
    }
  };
  if (!doc.is_object()) return {};
  if (doc.contains("context")) collect(doc["context"]);
  if (doc.contains("errors") && doc["errors"].is_array()) {
    for (const json& e : doc["errors"]) {
      if (e.is_object() && e.contains("context")) collect(e["context"]);
    }
  }
  return {out.begin(), out.end()};
}

absl::Status UnauthenticatedStatus(const HttpResponse& r) {
  return absl::UnauthenticatedError(fmt::format(
      "HubSpot refused the access token (HTTP 401): it is wrong, expired, or was revoked or "
      "rotated. Copy the private app's current access token (HubSpot: Settings > Integrations > "
      "Private Apps > Auth) into the destination's access_token. HubSpot said: {}",
      ReplyText(r)));
}

absl::Status PermissionStatus(const HttpResponse& r, std::string_view doing) {
  std::vector<std::string> scopes = MissingScopes(r);
  std::string need =
      scopes.empty()
          ? "the scopes this action needs (crm.objects.<type>.read and .write)"
          : fmt::format("the scope{} {}", scopes.size() > 1 ? "s" : "", fmt::join(scopes, ", "));
  return absl::PermissionDeniedError(fmt::format(
      "HubSpot denied {} (HTTP 403): the private app lacks {}. Add it to the app (HubSpot: "
      "Settings > Integrations > Private Apps > Scopes); the token stays the same. HubSpot said: "
      "{}",
      doing, need, ReplyText(r)));
}

absl::Status DailyLimitStatus(const HttpResponse& r) {
  return absl::ResourceExhaustedError(fmt::format(
      "HubSpot's daily API limit for this account is used up (HTTP 429, policyName DAILY); it "
      "resets at midnight in the HubSpot account's time zone. Backflow does not retry it: this "
      "run stopped and the remaining records are sent by a run after the reset. The limit is "
      "shared by every private app in the account; lower their usage or buy the API limit "
      "increase. HubSpot said: {}",
      ReplyText(r)));
}

// The status of a record named in a batch reply's errors[].
absl::Status RecordErrorStatus(const json& err, std::string_view label) {
  std::string category = StringMember(err, "category");
  std::string text = fmt::format("HubSpot rejected this {} record: {}", label, ErrorText(err));
  static const std::set<std::string> kTransient = {"RATE_LIMITS", "LOCKED", "INTERNAL_ERROR",
                                                   "SERVICE_UNAVAILABLE", "TIMEOUT"};
  if (kTransient.count(category)) return absl::UnavailableError(text);
  return absl::InvalidArgumentError(text);
}

// ---------------------------------------------------------------- config

struct HubSpotConfig {
  std::string token;
  HttpSettings http;
  int64_t requests_per_10s = kDefaultRequestsPer10s;
};

absl::StatusOr<HubSpotConfig> ParseConfig(const json& settings) {
  HubSpotConfig cfg;
  if (!settings.is_object()) return absl::InvalidArgumentError("hubspot settings must be a map");
  std::string token = StringMember(settings, "access_token");
  while (!token.empty() && std::isspace(static_cast<unsigned char>(token.back()))) {
    token.pop_back();
  }
  if (token.empty()) {
    return absl::InvalidArgumentError(
        "access_token: required; a HubSpot private app access token (pat-...)");
  }
  if (token.find_first_of(" \r\n") != std::string::npos) {
    return absl::InvalidArgumentError(
        "access_token: contains whitespace; paste only the token itself, without \"Bearer\"");
  }
  cfg.token = token;
  BACKFLOW_ASSIGN_OR_RETURN(cfg.http, ParseHttpSettings(settings));
  auto it = settings.find("requests_per_10_seconds");
  if (it != settings.end() && !it->is_null()) {
    if (!it->is_number_integer() || it->get<int64_t>() < 1) {
      return absl::InvalidArgumentError("requests_per_10_seconds: must be an integer >= 1");
    }
    cfg.requests_per_10s = it->get<int64_t>();
  }
  return cfg;
}

// ---------------------------------------------------------------- actions

struct ActionInfo {
  std::string object_type;          // empty: per record (upsert_object)
  std::string default_id_property;  // used when the identifier is not mapped
  std::string label;                // "contact"
};

ActionInfo InfoFor(std::string_view action) {
  if (action == "upsert_contact") return {"contacts", "email", "contact"};
  if (action == "upsert_company") return {"companies", "", "company"};
  if (action == "upsert_deal") return {"deals", "", "deal"};
  return {"", "", "custom object"};
}

// The property name of a "properties.<name>" field key, or "" when the key
// is not a direct property.
std::string PropertyName(std::string_view key) {
  if (!key.starts_with(kPropertiesPrefix)) return "";
  std::string_view name = key.substr(sizeof(kPropertiesPrefix) - 1);
  if (name.empty() || name.find('.') != std::string_view::npos) return "";
  return std::string(name);
}

// A JSON id or property value as HubSpot text.
std::string JsonText(const json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_null()) return "";
  return v.dump();
}

// ---------------------------------------------------------------- destination

class HubSpotDestination final : public Destination {
 public:
  HubSpotDestination(HubSpotConfig cfg, HttpClient* http, Clock* clock)
      : cfg_(std::move(cfg)),
        http_(http),
        clock_(clock),
        vendor_limiter_(*clock, cfg_.requests_per_10s, kVendorWindow),
        user_limiter_(cfg_.http.UserLimiter(*clock)) {}

  absl::Status CheckConnection() override;
  absl::StatusOr<std::unique_ptr<ActionSession>> StartSession(
      const SessionOptions& options) override;

  HttpDelivery NewDelivery() {
    VendorRules rules;
    rules.retryable = RetryableReply;
    rules.requested_wait = RequestedWait;
    return HttpDelivery(http_, clock_, {&vendor_limiter_, user_limiter_.get()}, cfg_.http.retry,
                        rules);
  }

  HttpRequest Request(std::string method, const std::string& path, std::string body) const {
    HttpRequest req;
    req.method = std::move(method);
    req.url = cfg_.http.base_url + kHubSpotObjectsPath + path;
    req.body = std::move(body);
    req.timeout = cfg_.http.timeout;
    req.headers.emplace_back("Authorization", "Bearer " + cfg_.token);
    req.headers.emplace_back("User-Agent", kUserAgent);
    req.headers.emplace_back("Accept", "application/json");
    if (req.method == "POST") req.headers.emplace_back("Content-Type", "application/json");
    return req;
  }

  // Non-OK while a DAILY 429 holds this destination.
  absl::Status DailyHold() const {
    std::lock_guard<std::mutex> lock(mu_);
    if (daily_status_.ok() || clock_->Now() >= daily_until_) return absl::OkStatus();
    return daily_status_;
  }
  const std::string& base_url() const { return cfg_.http.base_url; }

  void HoldForDailyLimit(const absl::Status& s) {
    std::lock_guard<std::mutex> lock(mu_);
    daily_status_ = s;
    daily_until_ = clock_->Now() + kDailyHold;
  }

 private:
  HubSpotConfig cfg_;
  HttpClient* http_;
  Clock* clock_;
  RateLimiter vendor_limiter_;                 // shared by every session of this destination
  std::unique_ptr<RateLimiter> user_limiter_;  // may be null
  mutable std::mutex mu_;
  absl::Status daily_status_;
  Clock::TimePoint daily_until_;
};

absl::Status HubSpotDestination::CheckConnection() {
  if (absl::Status s = DailyHold(); !s.ok()) return s;
  HttpDelivery delivery = NewDelivery();
  DeliveryResult d =
      delivery.Send([&] { return Request("GET", "/contacts?limit=1", ""); }, /*retry=*/false);
  if (!d.response.ok()) return delivery.FailureStatus(d, "HubSpot");
  const HttpResponse& r = *d.response;
  if (r.status >= 200 && r.status < 300) return absl::OkStatus();
  if (r.status == 401) return UnauthenticatedStatus(r);
  if (r.status == 403) {
    return PermissionStatus(r, "the connection check, which reads one contact");
  }
  if (r.status == 429 && RateLimitPolicy(r) == Policy::kDaily) return DailyLimitStatus(r);
  if (RetryableReply(r)) {
    return absl::UnavailableError(fmt::format(
        "HubSpot is not accepting requests right now (HTTP {}); try again later. HubSpot said: {}",
        r.status, ReplyText(r)));
  }
  if (r.status == 404) {
    return absl::FailedPreconditionError(
        fmt::format("HubSpot's contacts API was not found at {}{} (HTTP 404): check base_url "
                    "(default {})",
                    cfg_.http.base_url, kHubSpotObjectsPath, kDefaultBaseUrl));
  }
  return absl::FailedPreconditionError(
      fmt::format("HubSpot rejected the connection check (HTTP {}): {}", r.status, ReplyText(r)));
}

// ---------------------------------------------------------------- session

// One record ready to send.
struct Prepared {
  bool is_delete = false;
  std::string object_type;
  std::string id;   // the idProperty value, or the record id
  std::string key;  // `id` normalised for matching replies
  json properties;  // upserts only
  std::string trace;
};

// What one request did for the records it carried.
struct StepOutcome {
  bool split = false;
  absl::Status whole;
  std::vector<absl::Status> results;  // per carried record unless split
};

class HubSpotSession final : public ActionSession {
 public:
  HubSpotSession(HubSpotDestination* dest, SessionOptions options, ActionInfo info,
                 std::string id_property, int identity_index)
      : dest_(dest),
        options_(std::move(options)),
        info_(std::move(info)),
        id_property_(std::move(id_property)),
        by_record_id_(id_property_ == kRecordIdProperty),
        identity_index_(identity_index),
        delivery_(dest->NewDelivery()) {}

  absl::StatusOr<std::vector<absl::Status>> SendBatch(
      std::span<const OutgoingRecord> batch) override;
  absl::Status Finish() override { return absl::OkStatus(); }

 private:
  std::string Key(std::string_view id) const {
    return id_property_ == "email" ? Lower(std::string(id)) : std::string(id);
  }
  absl::Status Prepare(const OutgoingRecord& r, Prepared& p) const;
  absl::StatusOr<PartOutcome> SendPart(const std::string& type,
                                       std::span<const Prepared* const> part);
  absl::StatusOr<StepOutcome> Upsert(const std::string& type,
                                     const std::vector<const Prepared*>& records);
  absl::StatusOr<StepOutcome> Delete(const std::string& type,
                                     const std::vector<const Prepared*>& records);
  // Sends one POST and classifies a failed reply: non-OK for stop-the-run
  // errors, a StepOutcome for everything else; `reply` is set on 2xx.
  absl::StatusOr<StepOutcome> Post(const std::string& path, const std::string& body, size_t n,
                                   std::optional<HttpResponse>& reply);
  std::vector<absl::Status> MatchReply(const HttpResponse& r,
                                       const std::vector<const Prepared*>& records) const;

  HubSpotDestination* dest_;
  SessionOptions options_;
  ActionInfo info_;
  std::string id_property_;
  bool by_record_id_;
  int identity_index_;  // in FieldLayout::identity, -1 when deletes cannot be identified
  HttpDelivery delivery_;
  absl::Status stop_;  // set once HubSpot refused the credentials: nothing more is sent
};

absl::Status HubSpotSession::Prepare(const OutgoingRecord& r, Prepared& p) const {
  p.is_delete = r.is_delete();
  p.object_type = info_.object_type;
  p.trace = r.dedup_id;
  if (r.is_delete()) {
    if (info_.object_type.empty()) {
      return absl::FailedPreconditionError(
          "upsert_object cannot archive deleted records: a delete carries only the record's "
          "identifier, not its object type. Set `records: added_or_updated` on this mapping, or "
          "archive the records in HubSpot");
    }
    if (identity_index_ < 0 || identity_index_ >= static_cast<int>(r.values.size())) {
      return absl::FailedPreconditionError(fmt::format(
          "cannot archive this {}: the mapping does not map the model's unique identifier to "
          "properties.{}, so a delete does not say which HubSpot record to archive. Map the "
          "model's primary key column to a unique HubSpot property (e.g. properties.email)",
          info_.label, id_property_));
    }
    p.id = JsonText(ValueToJson(r.values[identity_index_]));
  } else {
    json payload = RecordPayload(options_.layout, r);
    if (info_.object_type.empty()) {
      std::string type = payload.contains("object_type") ? JsonText(payload["object_type"]) : "";
      if (type.empty() || type.find_first_of("/?#% ") != std::string::npos) {
        return absl::InvalidArgumentError(fmt::format(
            "object_type \"{}\" is not a HubSpot object type: map it to a custom object's name "
            "(p_<name>) or id (2-<digits>), or a standard type such as tickets",
            type));
      }
      p.object_type = type;
    }
    json props = payload.contains("properties") ? payload["properties"] : json::object();
    if (!props.is_object()) {
      return absl::InvalidArgumentError(
          "properties must be an object of HubSpot property names to values");
    }
    p.properties = json::object();
    for (auto& [name, value] : props.items()) {
      if (value.is_object()) {
        return absl::InvalidArgumentError(fmt::format(
            "properties.{} is a JSON object; HubSpot properties take text, numbers, booleans or "
            "dates (HubSpot property names contain no dots)",
            name));
      }
      if (value.is_array()) {
        // Multiple-checkbox properties take "a;b;c".
        std::vector<std::string> parts;
        for (const json& v : value) {
          if (v.is_object() || v.is_array()) {
            return absl::InvalidArgumentError(fmt::format(
                "properties.{} is a list of objects; only lists of values (sent as \"a;b\") "
                "are supported",
                name));
          }
          parts.push_back(JsonText(v));
        }
        p.properties[name] = fmt::format("{}", fmt::join(parts, ";"));
      } else if (value.is_null()) {
        p.properties[name] = "";  // HubSpot clears a property set to ""
      } else {
        p.properties[name] = value;
      }
    }
    auto id = p.properties.find(id_property_);
    p.id = id == p.properties.end() ? "" : JsonText(*id);
    if (by_record_id_) p.properties.erase(kRecordIdProperty);  // read-only: the id goes in "id"
  }
  if (p.id.empty()) {
    return absl::InvalidArgumentError(
        fmt::format("the {}'s {} is empty; HubSpot {} records by it", info_.label,
                    by_record_id_ ? "record id (hs_object_id)" : "unique property " + id_property_,
                    p.is_delete ? "archives" : "upserts"));
  }
  if (by_record_id_ &&
      !std::all_of(p.id.begin(), p.id.end(), [](unsigned char c) { return std::isdigit(c); })) {
    return absl::InvalidArgumentError(
        fmt::format("hs_object_id \"{}\" is not a HubSpot record id (digits only)", p.id));
  }
  p.key = Key(p.id);
  return absl::OkStatus();
}

absl::StatusOr<std::vector<absl::Status>> HubSpotSession::SendBatch(
    std::span<const OutgoingRecord> batch) {
  std::vector<absl::Status> results(batch.size(), absl::OkStatus());
  if (batch.empty()) return results;
  if (!stop_.ok()) return stop_;
  if (absl::Status s = dest_->DailyHold(); !s.ok()) return s;

  std::vector<Prepared> prepared(batch.size());
  std::vector<bool> pending(batch.size(), false);
  // object type -> upserted keys, to skip deletes of ids another record upserts.
  std::map<std::string, std::set<std::string>> upserted;
  for (size_t i = 0; i < batch.size(); ++i) {
    results[i] = Prepare(batch[i], prepared[i]);
    pending[i] = results[i].ok();
    if (pending[i] && !prepared[i].is_delete) {
      upserted[prepared[i].object_type].insert(prepared[i].key);
    }
  }
  // Groups by object type, in order of first appearance.
  std::vector<std::string> types;
  std::map<std::string, std::vector<size_t>> groups;
  for (size_t i = 0; i < batch.size(); ++i) {
    if (!pending[i]) continue;
    const Prepared& p = prepared[i];
    if (p.is_delete && upserted[p.object_type].count(p.key)) continue;  // acknowledged
    if (!groups.count(p.object_type)) types.push_back(p.object_type);
    groups[p.object_type].push_back(i);
  }

  bool delivered = false;
  absl::Status stopped;
  for (const std::string& type : types) {
    const std::vector<size_t>& idx = groups[type];
    if (!stopped.ok()) {
      for (size_t i : idx) results[i] = stopped;
      continue;
    }
    // SendBisecting splits spans of records; the parallel vector maps a
    // part back to its prepared records by offset.
    std::vector<OutgoingRecord> records;
    std::vector<const Prepared*> preps;
    for (size_t i : idx) {
      records.push_back(batch[i]);
      preps.push_back(&prepared[i]);
    }
    absl::StatusOr<std::vector<absl::Status>> sent =
        SendBisecting(records, [&](std::span<const OutgoingRecord> part) {
          size_t offset = static_cast<size_t>(part.data() - records.data());
          return SendPart(type,
                          std::span<const Prepared* const>(preps).subspan(offset, part.size()));
        });
    if (!sent.ok()) {
      if (!delivered) return sent.status();
      stopped = sent.status();
      for (size_t i : idx) results[i] = stopped;
      continue;
    }
    for (size_t k = 0; k < idx.size(); ++k) {
      results[idx[k]] = (*sent)[k];
      delivered |= (*sent)[k].ok();
    }
  }
  return results;
}

absl::StatusOr<PartOutcome> HubSpotSession::SendPart(const std::string& type,
                                                     std::span<const Prepared* const> part) {
  if (!stop_.ok()) return stop_;
  if (absl::Status s = dest_->DailyHold(); !s.ok()) return s;
  std::vector<absl::Status> out(part.size(), absl::OkStatus());
  std::vector<bool> decided(part.size(), false);
  bool accepted = false;
  auto stop_here = [&](const absl::Status& s) -> absl::StatusOr<PartOutcome> {
    if (!accepted) return s;
    // Some records of this part went through: they keep their outcome.
    for (size_t i = 0; i < out.size(); ++i) {
      if (!decided[i]) out[i] = s;
    }
    return PartOutcome::PerRecord(std::move(out));
  };

  // Upserts, in rounds without repeated ids (HubSpot rejects duplicates in
  // one request); later rounds carry the later records, so the last write wins.
  std::vector<std::vector<size_t>> rounds;
  std::vector<std::set<std::string>> round_keys;
  std::vector<size_t> deletes;
  for (size_t i = 0; i < part.size(); ++i) {
    if (part[i]->is_delete) {
      deletes.push_back(i);
      continue;
    }
    size_t r = 0;
    while (r < rounds.size() && round_keys[r].count(part[i]->key)) ++r;
    if (r == rounds.size()) {
      rounds.emplace_back();
      round_keys.emplace_back();
    }
    rounds[r].push_back(i);
    round_keys[r].insert(part[i]->key);
  }
  std::vector<std::vector<size_t>> steps = rounds;
  if (!deletes.empty()) steps.push_back(deletes);
  for (size_t s = 0; s < steps.size(); ++s) {
    std::vector<const Prepared*> records;
    for (size_t i : steps[s]) records.push_back(part[i]);
    bool is_delete = !deletes.empty() && s + 1 == steps.size();
    absl::StatusOr<StepOutcome> step = is_delete ? Delete(type, records) : Upsert(type, records);
    if (!step.ok()) return stop_here(step.status());
    if (step->split) return PartOutcome::Split(step->whole);
    for (size_t k = 0; k < steps[s].size(); ++k) {
      out[steps[s][k]] = step->results[k];
      decided[steps[s][k]] = true;
      accepted |= step->results[k].ok();
    }
  }
  return PartOutcome::PerRecord(std::move(out));
}

absl::StatusOr<StepOutcome> HubSpotSession::Post(const std::string& path, const std::string& body,
                                                 size_t n, std::optional<HttpResponse>& reply) {
  DeliveryResult d = delivery_.Send([&] { return dest_->Request("POST", path, body); });
  StepOutcome o;
  auto all = [&](const absl::Status& s) {
    o.results.assign(n, s);
    return o;
  };
  if (!d.response.ok()) return all(delivery_.FailureStatus(d, "HubSpot"));
  const HttpResponse& r = *d.response;
  if (r.status >= 200 && r.status < 300) {
    reply = r;
    return o;
  }
  if (r.status == 401) {
    stop_ = UnauthenticatedStatus(r);
    return stop_;
  }
  if (r.status == 403) {
    stop_ = PermissionStatus(r, fmt::format("writing {} records", info_.label));
    return stop_;
  }
  if (r.status == 429 && RateLimitPolicy(r) == Policy::kDaily) {
    absl::Status s = DailyLimitStatus(r);
    dest_->HoldForDailyLimit(s);
    return s;
  }
  if (RetryableReply(r)) return all(delivery_.FailureStatus(d, "HubSpot"));
  std::string said = ReplyText(r);
  if (r.status == 404 || said.find("Unable to infer object type") != std::string::npos) {
    if (info_.object_type.empty()) {
      return all(absl::InvalidArgumentError(fmt::format(
          "HubSpot has no object type \"{}\" (HTTP {}): check the object_type mapped for this "
          "record (a custom object's p_<name> or 2-<id>). HubSpot said: {}",
          path.substr(1, path.find('/', 1) - 1), r.status, said)));
    }
    stop_ = absl::FailedPreconditionError(fmt::format(
        "HubSpot answered HTTP {} for POST {}{}{}: check base_url (default {}). HubSpot said: {}",
        r.status, dest_->base_url(), kHubSpotObjectsPath, path, kDefaultBaseUrl, said));
    return stop_;
  }
  absl::Status bad = absl::InvalidArgumentError(
      fmt::format("HubSpot rejected this {} record (HTTP {}): {}", info_.label, r.status, said));
  if (r.status == 400 || r.status == 409 || r.status == 413 || r.status == 414 || r.status == 422) {
    o.split = true;
    o.whole = bad;
    return o;
  }
  return all(bad);
}

std::vector<absl::Status> HubSpotSession::MatchReply(
    const HttpResponse& r, const std::vector<const Prepared*>& records) const {
  const size_t n = records.size();
  std::map<std::string, size_t> by_key, by_trace;
  for (size_t i = 0; i < n; ++i) {
    by_key[records[i]->key] = i;
    if (!records[i]->trace.empty()) by_trace[records[i]->trace] = i;
  }
  std::vector<std::optional<absl::Status>> failed(n);
  std::vector<bool> confirmed(n, false);
  std::vector<std::string> unattributed;
  json doc = ParseBody(r.body);
  auto strings = [](const json& v) {
    std::vector<std::string> out;
    if (v.is_string()) out.push_back(v.get<std::string>());
    if (v.is_array()) {
      for (const json& e : v) {
        if (e.is_string()) out.push_back(e.get<std::string>());
      }
    }
    return out;
  };
  if (doc.is_object() && doc.contains("errors") && doc["errors"].is_array()) {
    for (const json& err : doc["errors"]) {
      std::set<size_t> hits;
      if (err.is_object()) {
        const json ctx = err.value("context", json::object());
        if (ctx.is_object()) {
          for (const std::string& id : strings(ctx.value("ids", json()))) {
            if (auto it = by_key.find(Key(id)); it != by_key.end()) hits.insert(it->second);
          }
          for (const std::string& t : strings(ctx.value("objectWriteTraceId", json()))) {
            if (auto it = by_trace.find(t); it != by_trace.end()) hits.insert(it->second);
          }
        }
        if (auto it = by_trace.find(StringMember(err, "objectWriteTraceId"));
            it != by_trace.end()) {
          hits.insert(it->second);
        }
        if (auto it = by_key.find(Key(StringMember(err, "id"))); it != by_key.end()) {
          hits.insert(it->second);
        }
      }
      if (hits.empty()) {
        unattributed.push_back(ErrorText(err));
        continue;
      }
      for (size_t i : hits) failed[i] = RecordErrorStatus(err, info_.label);
    }
  }
  if (doc.is_object() && doc.contains("results") && doc["results"].is_array()) {
    for (const json& res : doc["results"]) {
      if (!res.is_object()) continue;
      std::optional<size_t> hit;
      if (auto it = by_trace.find(StringMember(res, "objectWriteTraceId")); it != by_trace.end()) {
        hit = it->second;
      } else if (by_record_id_) {
        if (auto it2 = by_key.find(StringMember(res, "id")); it2 != by_key.end()) hit = it2->second;
      } else if (res.contains("properties") && res["properties"].is_object() &&
                 res["properties"].contains(id_property_)) {
        if (auto it2 = by_key.find(Key(JsonText(res["properties"][id_property_])));
            it2 != by_key.end()) {
          hit = it2->second;
        }
      }
      if (hit) confirmed[*hit] = true;
    }
  }
  std::vector<absl::Status> out(n, absl::OkStatus());
  for (size_t i = 0; i < n; ++i) {
    if (failed[i]) {
      out[i] = *failed[i];
    } else if (!confirmed[i] && !unattributed.empty()) {
      out[i] = absl::UnavailableError(fmt::format(
          "HubSpot answered HTTP {} with errors it did not tie to a record ({}); this {} was not "
          "among the results, so its outcome is unknown and it is sent again",
          r.status, BodySnippet(fmt::format("{}", fmt::join(unattributed, "; "))), info_.label));
    }
  }
  return out;
}

absl::StatusOr<StepOutcome> HubSpotSession::Upsert(const std::string& type,
                                                   const std::vector<const Prepared*>& records) {
  json inputs = json::array();
  for (const Prepared* p : records) {
    json in = {{"id", p->id}, {"properties", p->properties}};
    if (!by_record_id_) in["idProperty"] = id_property_;
    if (!p->trace.empty()) in["objectWriteTraceId"] = p->trace;
    inputs.push_back(std::move(in));
  }
  std::string body = json{{"inputs", std::move(inputs)}}.dump();
  std::optional<HttpResponse> reply;
  std::string path = "/" + type + (by_record_id_ ? "/batch/update" : "/batch/upsert");
  BACKFLOW_ASSIGN_OR_RETURN(StepOutcome o, Post(path, body, records.size(), reply));
  if (reply) o.results = MatchReply(*reply, records);
  return o;
}

absl::StatusOr<StepOutcome> HubSpotSession::Delete(const std::string& type,
                                                   const std::vector<const Prepared*>& records) {
  const size_t n = records.size();
  // key -> HubSpot record id, for the records HubSpot has.
  std::map<std::string, std::string> record_ids;
  std::vector<std::optional<absl::Status>> outcome(n);
  if (by_record_id_) {
    for (const Prepared* p : records) record_ids[p->key] = p->id;
  } else {
    json inputs = json::array();
    std::set<std::string> asked;
    for (const Prepared* p : records) {
      if (asked.insert(p->key).second) inputs.push_back({{"id", p->id}});
    }
    std::string body = json{{"idProperty", id_property_},
                            {"properties", {id_property_}},
                            {"inputs", std::move(inputs)}}
                           .dump();
    std::optional<HttpResponse> reply;
    BACKFLOW_ASSIGN_OR_RETURN(StepOutcome o,
                              Post("/" + type + "/batch/read?archived=false", body, n, reply));
    if (!reply) return o;
    json doc = ParseBody(reply->body);
    std::set<std::string> not_found;
    std::map<std::string, absl::Status> read_errors;
    std::vector<std::string> unattributed;
    if (doc.is_object() && doc.contains("errors") && doc["errors"].is_array()) {
      for (const json& err : doc["errors"]) {
        std::vector<std::string> ids;
        if (err.is_object() && err.contains("context") && err["context"].is_object()) {
          const json& ctx = err["context"];
          if (ctx.contains("ids") && ctx["ids"].is_array()) {
            for (const json& id : ctx["ids"]) {
              if (id.is_string()) ids.push_back(Key(id.get<std::string>()));
            }
          }
        }
        if (ids.empty()) {
          unattributed.push_back(ErrorText(err));
          continue;
        }
        bool missing = StringMember(err, "category") == "OBJECT_NOT_FOUND";
        for (const std::string& k : ids) {
          if (missing) {
            not_found.insert(k);
          } else {
            read_errors[k] = RecordErrorStatus(err, info_.label);
          }
        }
      }
    }
    if (doc.is_object() && doc.contains("results") && doc["results"].is_array()) {
      for (const json& res : doc["results"]) {
        if (!res.is_object() || !res.contains("properties") || !res["properties"].is_object()) {
          continue;
        }
        const json& props = res["properties"];
        std::string id = StringMember(res, "id");
        if (props.contains(id_property_) && !id.empty()) {
          record_ids[Key(JsonText(props[id_property_]))] = id;
        }
      }
    }
    for (size_t i = 0; i < n; ++i) {
      const std::string& k = records[i]->key;
      if (record_ids.count(k)) continue;
      if (auto e = read_errors.find(k); e != read_errors.end()) {
        outcome[i] = e->second;
      } else if (not_found.count(k)) {
        outcome[i] = absl::OkStatus();  // HubSpot does not have it: nothing to archive
      } else {
        outcome[i] = absl::UnavailableError(fmt::format(
            "HubSpot's batch/read reply did not mention this {} ({}), so it was not archived; "
            "it is tried again{}",
            info_.label, records[i]->id,
            unattributed.empty() ? ""
                                 : ". HubSpot said: " + BodySnippet(fmt::format(
                                                            "{}", fmt::join(unattributed, "; ")))));
      }
    }
  }

  json inputs = json::array();
  std::set<std::string> sent;
  for (size_t i = 0; i < n; ++i) {
    if (outcome[i]) continue;
    const std::string& rid = record_ids[records[i]->key];
    if (sent.insert(rid).second) inputs.push_back({{"id", rid}});
  }
  StepOutcome out;
  if (!inputs.empty()) {
    std::string body = json{{"inputs", std::move(inputs)}}.dump();
    std::optional<HttpResponse> reply;
    BACKFLOW_ASSIGN_OR_RETURN(StepOutcome o, Post("/" + type + "/batch/archive", body, n, reply));
    if (!reply) {
      if (o.split) return o;
      // Keep the read's definite outcomes; the archive's failure applies to the rest.
      for (size_t i = 0; i < n; ++i) {
        if (!outcome[i]) outcome[i] = o.results[i];
      }
    }
  }
  for (size_t i = 0; i < n; ++i) out.results.push_back(outcome[i] ? *outcome[i] : absl::OkStatus());
  return out;
}

absl::StatusOr<std::unique_ptr<ActionSession>> HubSpotDestination::StartSession(
    const SessionOptions& options) {
  if (options.action == nullptr) {
    return absl::InvalidArgumentError("hubspot session needs an action");
  }
  ActionInfo info = InfoFor(options.action->id);
  const FieldLayout& layout = options.layout;
  std::string id_property;
  int identity_index = -1;
  for (size_t i = 0; i < layout.identity.size(); ++i) {
    std::string name = PropertyName(layout.identity[i]);
    if (!name.empty()) {
      id_property = name;
      identity_index = static_cast<int>(i);
      break;
    }
  }
  if (id_property.empty() && !info.default_id_property.empty() &&
      std::find(layout.fields.begin(), layout.fields.end(),
                kPropertiesPrefix + info.default_id_property) != layout.fields.end()) {
    id_property = info.default_id_property;
  }
  if (id_property.empty()) {
    return absl::FailedPreconditionError(fmt::format(
        "mapping \"{}\": HubSpot upserts and archives {} records by a unique property "
        "(idProperty), taken from the field mapped from the model's primary key; map that column "
        "to a property with unique values, e.g. properties.{}: <primary key column>{}",
        options.mapping, info.label,
        info.default_id_property.empty() ? "warehouse_id" : info.default_id_property,
        info.default_id_property.empty()
            ? " (create it in HubSpot with \"unique values\" on), or to properties.hs_object_id "
              "when the model holds HubSpot record ids"
            : ""));
  }
  return std::unique_ptr<ActionSession>(std::make_unique<HubSpotSession>(
      this, options, std::move(info), std::move(id_property), identity_index));
}

// ---------------------------------------------------------------- definition

FieldSpec Property(std::string name, std::string label, std::string description,
                   FieldType type = FieldType::kString) {
  FieldSpec f;
  f.key = kPropertiesPrefix + name;
  f.label = std::move(label);
  f.description = std::move(description);
  f.type = type;
  return f;
}

FieldSpec PropertiesObject(std::string_view what) {
  FieldSpec f;
  f.key = "properties";
  f.label = "Properties";
  f.type = FieldType::kObject;
  f.description = fmt::format(
      "Any {} property by its internal name: map `properties.<name>: <column>` (e.g. "
      "`properties.plan_tier: plan`), or the whole object from a JSON column. Values are text, "
      "numbers, booleans or dates; NULL clears the property; a list is sent as \"a;b\" "
      "(multiple checkboxes).",
      what);
  return f;
}

std::vector<std::string> ValidateFields(const json&, const std::vector<MappedField>& fields) {
  std::vector<std::string> problems;
  for (const MappedField& f : fields) {
    if (f.field.starts_with(kPropertiesPrefix) && PropertyName(f.field).empty()) {
      problems.push_back(fmt::format(
          "\"{}\": HubSpot property names contain no dots; map properties.<name> (the property's "
          "internal name)",
          f.field));
    }
  }
  return problems;
}

ActionSpec BaseAction(std::string id, std::string title, std::string description) {
  ActionSpec a;
  a.id = std::move(id);
  a.title = std::move(title);
  a.description = std::move(description);
  a.selections = {RecordSelection::kAdded, RecordSelection::kUpdated,
                  RecordSelection::kAddedOrUpdated, RecordSelection::kDeleted,
                  RecordSelection::kAll};
  a.extra_field_parents = {"properties"};
  a.max_batch_records = kMaxInputs;
  a.default_batch_records = kMaxInputs;
  a.validate = ValidateFields;
  return a;
}

constexpr char kIdentifierHelp[] =
    " The property mapped from the model's primary key is the idProperty records are upserted "
    "and archived by: it must have unique values in HubSpot.";

}  // namespace

DestinationDefinition HubSpotDestinationDefinition() {
  DestinationDefinition def;
  def.type = "hubspot";
  def.title = "HubSpot";
  def.description =
      "Upserts contacts, companies, deals and custom objects into HubSpot CRM by a unique "
      "property (batch upsert, 100 per request), archives deleted records, and keeps within "
      "HubSpot's per-10-second and daily API limits.";
  def.maturity = "beta";

  SettingSpec token;
  token.key = "access_token";
  token.label = "Access token";
  token.description =
      "A HubSpot private app (or service key) access token, `pat-...`, sent as a Bearer token. "
      "The app needs the crm.objects.<type>.read and .write scopes of the objects you sync "
      "(custom objects: crm.objects.custom.*; the connection check reads one contact).";
  token.required = true;
  token.secret = true;
  def.settings.push_back(token);

  SettingSpec rate;
  rate.key = "requests_per_10_seconds";
  rate.label = "HubSpot requests per 10 s";
  rate.description =
      "HubSpot's burst limit for this account, shared by every private app in it: 100 per 10 s "
      "on Free/Starter, 190 on Professional/Enterprise, 250 with the API limit increase. Backflow "
      "never starts more requests in any 10 s window, retries included.";
  rate.type = SettingType::kInteger;
  rate.default_value = kDefaultRequestsPer10s;
  def.settings.push_back(rate);

  HttpSettingsDefaults http;
  http.base_url = kDefaultBaseUrl;
  http.base_url_help = "HubSpot has one global API host.";
  for (SettingSpec& s : HttpSettingSpecs(http)) def.settings.push_back(std::move(s));

  ActionSpec contact = BaseAction(
      "upsert_contact", "Upsert contacts",
      std::string("Creates or updates HubSpot contacts by email (or another unique property), "
                  "and archives the contacts of deleted records.") +
          kIdentifierHelp);
  // Not marked as the identifier: the idProperty is whichever unique property
  // the primary key is mapped to (email by default), so email stays optional.
  contact.fields.push_back(Property("email", "Email",
                                    "The contact's email: HubSpot's unique contact property, and "
                                    "the idProperty unless the primary key is mapped to another "
                                    "unique property."));
  contact.fields.push_back(Property("firstname", "First name", "The contact's first name."));
  contact.fields.push_back(Property("lastname", "Last name", "The contact's last name."));
  contact.fields.push_back(Property("phone", "Phone", "The contact's phone number."));
  contact.fields.push_back(Property("company", "Company name", "The contact's company name."));
  contact.fields.push_back(
      Property("lifecyclestage", "Lifecycle stage",
               "Internal value of a lifecycle stage, e.g. lead, customer (accounts may define "
               "their own)."));
  contact.fields.push_back(PropertiesObject("contact"));
  def.actions.push_back(contact);

  ActionSpec company =
      BaseAction("upsert_company", "Upsert companies",
                 std::string("Creates or updates HubSpot companies by a unique property, and "
                             "archives the companies of deleted records.") +
                     kIdentifierHelp +
                     " Companies have no unique property by default (domain is not unique): "
                     "create one, e.g. warehouse_id, or map the record id to "
                     "properties.hs_object_id.");
  company.fields.push_back(Property("name", "Name", "The company's name."));
  company.fields.push_back(Property("domain", "Domain", "The company's website domain."));
  company.fields.push_back(Property("industry", "Industry", "Internal value of an industry."));
  company.fields.push_back(PropertiesObject("company"));
  def.actions.push_back(company);

  ActionSpec deal =
      BaseAction("upsert_deal", "Upsert deals",
                 std::string("Creates or updates HubSpot deals by a unique property, and archives "
                             "the deals of deleted records.") +
                     kIdentifierHelp);
  deal.fields.push_back(Property("dealname", "Deal name", "The deal's name."));
  deal.fields.push_back(Property("amount", "Amount", "The deal's amount.", FieldType::kNumber));
  deal.fields.push_back(Property("pipeline", "Pipeline", "Internal id of the deal's pipeline."));
  deal.fields.push_back(
      Property("dealstage", "Deal stage", "Internal id of a stage of the deal's pipeline."));
  deal.fields.push_back(Property("closedate", "Close date", "When the deal closed or will close.",
                                 FieldType::kTimestamp));
  deal.fields.push_back(PropertiesObject("deal"));
  def.actions.push_back(deal);

  ActionSpec object = BaseAction(
      "upsert_object", "Upsert custom objects",
      std::string("Creates or updates records of a custom object (or any other object type, "
                  "e.g. tickets) by a unique property. Deleted records cannot be archived: a "
                  "delete does not carry the object type, so use records: added_or_updated.") +
          " The property mapped from the model's primary key is the idProperty records are "
          "upserted by: it must have unique values in HubSpot.");
  object.selections = {RecordSelection::kAdded, RecordSelection::kUpdated,
                       RecordSelection::kAddedOrUpdated};
  FieldSpec type;
  type.key = "object_type";
  type.label = "Object type";
  type.description =
      "The object type of each record: a custom object's fully qualified name (p_<name>) or "
      "objectTypeId (2-<digits>), or a standard type such as tickets. Usually a text literal, "
      "`object_type: \"'p_pets'\"`; a column works too. Each batch sends one request per "
      "object type.";
  type.type = FieldType::kString;
  type.required = true;
  object.fields.push_back(type);
  object.fields.push_back(PropertiesObject("object"));
  def.actions.push_back(object);

  def.notes = R"md(## Identifying records

HubSpot upserts by **`idProperty`**, a property with unique values. Backflow uses the property
mapped from the model's primary key (`primary_key`):

```yaml
models:
  - { name: customers, source: warehouse, primary_key: email,
      sql: "SELECT email, first_name, last_name, plan FROM customers" }
mappings:
  - name: customers_to_hubspot
    model: customers
    destination: hubspot
    action: upsert_contact
    fields:
      properties.email: email          # the primary key: idProperty = email
      properties.firstname: first_name
      properties.lastname: last_name
      properties.plan_tier: plan       # any property by internal name
```

- Contacts default to `email`. Companies, deals and custom objects need a property created in
  HubSpot with *unique values* (up to 10 per object), e.g. `properties.warehouse_id: id`.
- Mapping the primary key to `properties.hs_object_id` (HubSpot's record id) updates existing
  records with `batch/update` instead: records HubSpot does not have fail as not found.
- If the primary key is not mapped, `upsert_contact` still upserts by `properties.email`, but
  deleted records cannot be archived (they fail with a configuration error).

## Wire format

Batches of up to 100 records, pinned to the `v3` object API:

```
POST /crm/v3/objects/contacts/batch/upsert      Authorization: Bearer pat-…
{"inputs":[{"idProperty":"email","id":"ann@x.com","objectWriteTraceId":"<record id>",
            "properties":{"email":"ann@x.com","firstname":"Ann"}}]}
```

- NULL is sent as `""`, which clears the property in HubSpot; lists are sent as `"a;b"`
  (multiple checkboxes); timestamps as ISO-8601; a JSON object value fails the record.
- Records with the same id in one batch go in successive requests (HubSpot rejects duplicate ids
  in one request); the last one wins.
- Deletes: `POST …/batch/read` with the `idProperty` finds the HubSpot record ids, then
  `POST …/batch/archive` archives them (HubSpot keeps archived records restorable for 90 days).
  Records HubSpot does not have count as deleted. A delete of an id that another record in the
  same batch upserts is acknowledged without archiving.
- `upsert_object` sends each record to `/crm/v3/objects/<object_type>/batch/upsert`, one request
  per object type in a batch.
- The connection check (`backflow test-connection`) is `GET /crm/v3/objects/contacts?limit=1`.

## Replies

| reply | outcome |
| --- | --- |
| 200 | every record accepted |
| 207 Multi-Status | records named in `errors[].context.ids` (or by `objectWriteTraceId`) fail with HubSpot's message; results are matched by id, never by position |
| 400, 409, 413, 414, 422 for the whole batch | the batch is split in halves and re-sent to isolate the bad record, which fails with HubSpot's message |
| 429 `TEN_SECONDLY_ROLLING` / `SECONDLY` | waits for the window (10 s / 1 s, or `Retry-After`) and retries |
| 429 `DAILY` | **not retried**: the run stops with a rate-limit error; the limit resets at midnight in the HubSpot account's time zone, and this destination sends nothing for 15 minutes |
| 5xx, 408, 423 (waits ≥ 2 s), 477, 524, timeouts | retried with exponential backoff and jitter (`Retry-After` honoured) up to `max_retries`; then the batch's records fail and are retried by the next run |
| 401 | the run stops: the token is wrong, expired or revoked |
| 403 | the run stops: the private app lacks a scope (named when HubSpot lists it) |
| 400 `Unable to infer object type` (`upsert_object`) | the records fail: check `object_type` |

## Limits

Every request, retries included, waits for `requests_per_10_seconds` (shared by all mappings of
the destination) and `max_requests_per_second`. HubSpot's daily allowance (250k–1M requests per
account, shared by all its private apps) is not tracked; each batch of 100 costs one request
(two more for deletes).
)md";

  def.create = HttpDestinationFactory<HubSpotDestination>(def.type, ParseConfig);
  return def;
}

}  // namespace backflow
