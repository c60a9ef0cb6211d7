#include "backflow/destinations/braze/braze_destination.h"

#include <algorithm>
#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "backflow/common/clock.h"
#include "backflow/common/fmt_absl.h"
#include "backflow/common/http_client.h"
#include "backflow/delivery/http_delivery.h"
#include "backflow/delivery/http_settings.h"
#include "backflow/delivery/rate_limiter.h"
#include "backflow/destinations/destination.h"
#include "fmt/format.h"
#include "nlohmann/json.hpp"

namespace backflow {
namespace {

using json = nlohmann::json;

constexpr char kWhat[] = "Braze";
constexpr char kUserAgent[] = "backflow/0.1";
constexpr char kTrackPath[] = "/users/track";
constexpr char kDeletePath[] = "/users/delete";
constexpr char kTrackPermission[] = "users.track";
constexpr char kDeletePermission[] = "users.delete";
constexpr char kTrackAttributes[] = "track_attributes";
constexpr char kTrackEvent[] = "track_event";
constexpr int kMaxTrackObjects = 75;
constexpr size_t kMaxDeleteIds = 50;
constexpr std::chrono::seconds kTrackWindow{3};
constexpr std::chrono::seconds kDeleteWindow{60};
// Wait used when X-RateLimit-Reset is already past (clock skew): never retry
// a 429 immediately.
constexpr std::chrono::milliseconds kMinRateLimitWait{1000};

struct BrazeConfig {
  HttpSettings http;
  std::string api_key;
  bool update_existing_only = false;
  int max_objects_per_request = kMaxTrackObjects;
  int64_t track_requests_per_3s = 3000;
  int64_t delete_requests_per_minute = 20000;
};

absl::StatusOr<BrazeConfig> ParseConfig(const json& settings) {
  if (!settings.is_object()) return absl::InvalidArgumentError("braze settings must be a map");
  BrazeConfig cfg;
  auto key = settings.find("api_key");
  if (key == settings.end() || !key->is_string() || key->get<std::string>().empty()) {
    return absl::InvalidArgumentError(
        "api_key: required; a Braze REST API key with the users.track permission (and "
        "users.delete to delete users)");
  }
  cfg.api_key = key->get<std::string>();
  if (cfg.api_key.find_first_of("\r\n") != std::string::npos) {
    return absl::InvalidArgumentError("api_key: must not contain line breaks");
  }
  if (auto it = settings.find("update_existing_only"); it != settings.end() && !it->is_null()) {
    if (!it->is_boolean()) return absl::InvalidArgumentError("update_existing_only: true or false");
    cfg.update_existing_only = it->get<bool>();
  }
  auto integer = [&](const char* name, int64_t def, int64_t min,
                     int64_t max) -> absl::StatusOr<int64_t> {
    auto it = settings.find(name);
    if (it == settings.end() || it->is_null()) return def;
    if (!it->is_number_integer() || it->get<int64_t>() < min || it->get<int64_t>() > max) {
      return absl::InvalidArgumentError(
          fmt::format("{}: must be a whole number from {} to {}", name, min, max));
    }
    return it->get<int64_t>();
  };
  absl::StatusOr<int64_t> objects =
      integer("max_objects_per_request", kMaxTrackObjects, 1, kMaxTrackObjects);
  if (!objects.ok()) return objects.status();
  cfg.max_objects_per_request = static_cast<int>(*objects);
  absl::StatusOr<int64_t> track = integer("track_requests_per_3s", 3000, 1, 1'000'000);
  if (!track.ok()) return track.status();
  cfg.track_requests_per_3s = *track;
  absl::StatusOr<int64_t> del = integer("delete_requests_per_minute", 20000, 1, 1'000'000);
  if (!del.ok()) return del.status();
  cfg.delete_requests_per_minute = *del;
  absl::StatusOr<HttpSettings> http = ParseHttpSettings(settings);
  if (!http.ok()) return http.status();
  cfg.http = *std::move(http);
  return cfg;
}

// How long a Braze reply asks us to wait: until X-RateLimit-Reset (UTC epoch
// seconds) for 429, else X-RateLimit-Retry-After / Retry-After seconds.
std::optional<std::chrono::milliseconds> BrazeRequestedWait(const HttpResponse& r,
                                                            Clock::TimePoint now) {
  if (r.status == 429) {
    if (auto reset = r.Header("x-ratelimit-reset")) {
      if (auto wait = WaitUntilEpochSeconds(*reset, now)) {
        return wait->count() > 0 ? *wait : kMinRateLimitWait;
      }
    }
    if (auto after = r.Header("x-ratelimit-retry-after")) {
      if (auto wait = ParseRetryAfter(*after, now)) return wait;
    }
  }
  if (auto after = r.Header("retry-after")) return ParseRetryAfter(*after, now);
  return std::nullopt;
}

// Braze's own words from an error reply: "message" plus any "errors".
std::string BrazeSaid(std::string_view body) {
  json doc = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (!doc.is_object() || !doc.contains("message")) return BodySnippet(body);
  const json& message = doc["message"];
  std::string out = message.is_string() ? message.get<std::string>() : message.dump();
  if (auto errors = doc.find("errors"); errors != doc.end() && !errors->empty()) {
    out += " " + errors->dump();
  }
  return BodySnippet(out);
}

bool NonEmptyString(const json& v) { return v.is_string() && !v.get<std::string>().empty(); }

// Whether an ISO-8601 date-time names its zone ("Z", "+02:00").
bool HasZone(const std::string& t) {
  size_t time_part = t.find('T');
  if (time_part == std::string::npos) return false;
  return t.find_first_of("Zz+-", time_part) != std::string::npos;
}

// Drops nulls inside a nested custom attribute (Braze drops every nested
// attribute update of a request when one holds a null). Returns whether
// anything is left.
bool PruneNulls(json& value) {
  if (!value.is_object()) return true;
  for (auto it = value.begin(); it != value.end();) {
    if (it->is_null() || !PruneNulls(*it)) {
      it = value.erase(it);
    } else {
      ++it;
    }
  }
  return !value.empty();
}

// Removes null or empty identifiers and keeps exactly one of external_id,
// braze_id and user_alias (in that priority); email and phone stay as they
// are (attributes that also identify when nothing else does).
absl::Status NormaliseIdentity(json& object) {
  for (const char* key : {"external_id", "braze_id"}) {
    auto it = object.find(key);
    if (it == object.end()) continue;
    if (it->is_number()) *it = it->dump();
    if (!NonEmptyString(*it)) object.erase(key);
  }
  if (auto it = object.find("user_alias"); it != object.end()) {
    if (it->is_null()) {
      object.erase("user_alias");
    } else if (!it->is_object()) {
      return absl::InvalidArgumentError(
          "user_alias must be an object with alias_name and alias_label");
    } else {
      json name = it->value("alias_name", json());
      json label = it->value("alias_label", json());
      if (name.is_null() && label.is_null()) {
        object.erase("user_alias");
      } else if (!NonEmptyString(name) || !NonEmptyString(label)) {
        return absl::InvalidArgumentError(fmt::format(
            "user_alias needs both alias_name and alias_label as text; got alias_name {} and "
            "alias_label {}",
            name.dump(), label.dump()));
      }
    }
  }
  if (object.contains("external_id")) {
    object.erase("braze_id");
    object.erase("user_alias");
  } else if (object.contains("braze_id")) {
    object.erase("user_alias");
  } else if (!object.contains("user_alias") && !NonEmptyString(object.value("email", json())) &&
             !NonEmptyString(object.value("phone", json()))) {
    return absl::InvalidArgumentError(
        "no user identifier: external_id, braze_id, user_alias, email and phone are all empty "
        "or unmapped, and Braze needs one of them to find the user");
  }
  return absl::OkStatus();
}

class BrazeDestination final : public Destination {
 public:
  BrazeDestination(BrazeConfig cfg, HttpClient* http, Clock* clock)
      : cfg_(std::move(cfg)),
        http_(http),
        clock_(clock),
        track_limiter_(*clock, cfg_.track_requests_per_3s, kTrackWindow),
        delete_limiter_(*clock, cfg_.delete_requests_per_minute, kDeleteWindow),
        user_limiter_(cfg_.http.UserLimiter(*clock)) {}

  absl::Status CheckConnection() override;
  absl::StatusOr<std::unique_ptr<ActionSession>> StartSession(
      const SessionOptions& options) override;

  // A sender for one endpoint (its vendor limiter plus the user's cap).
  HttpDelivery NewDelivery(bool track) {
    VendorRules rules;
    rules.requested_wait = BrazeRequestedWait;
    return HttpDelivery(http_, clock_,
                        {track ? &track_limiter_ : &delete_limiter_, user_limiter_.get()},
                        cfg_.http.retry, rules);
  }

  HttpRequest Request(std::string_view path, const std::string& body) const {
    HttpRequest req;
    req.method = "POST";
    req.url = cfg_.http.base_url + std::string(path);
    req.body = body;
    req.timeout = cfg_.http.timeout;
    req.headers = {{"Authorization", "Bearer " + cfg_.api_key},
                   {"Content-Type", "application/json"},
                   {"User-Agent", kUserAgent}};
    return req;
  }

  // The run-stopping status for 401, 403, 404 and 3xx replies, else OK.
  absl::Status ConfigurationError(const HttpResponse& resp, std::string_view path,
                                  std::string_view permission) const;

  const BrazeConfig& cfg() const { return cfg_; }
  Clock* clock() const { return clock_; }

 private:
  BrazeConfig cfg_;
  HttpClient* http_;
  Clock* clock_;
  RateLimiter track_limiter_;
  RateLimiter delete_limiter_;
  std::unique_ptr<RateLimiter> user_limiter_;  // null without max_requests_per_second
};

absl::Status BrazeDestination::ConfigurationError(const HttpResponse& resp, std::string_view path,
                                                  std::string_view permission) const {
  const int status = resp.status;
  if (status == 401) {
    return absl::UnauthenticatedError(fmt::format(
        "Braze refused the REST API key (HTTP 401) at {}: check api_key. It must be a REST API "
        "key (Braze dashboard: Settings > APIs and Identifiers) of a workspace on this instance; "
        "keys do not work across instances. Braze said: {}",
        cfg_.http.base_url, BrazeSaid(resp.body)));
  }
  if (status == 403) {
    return absl::PermissionDeniedError(fmt::format(
        "Braze denied {} (HTTP 403): the REST API key lacks the {} permission, or the account's "
        "plan does not include this endpoint. Give the key {} (or create a key that has it) "
        "under Settings > APIs and Identifiers. Braze said: {}",
        path, permission, permission, BrazeSaid(resp.body)));
  }
  if (status == 404) {
    return absl::FailedPreconditionError(fmt::format(
        "Braze answered HTTP 404 for {}{}: check that base_url is your instance's REST endpoint "
        "(such as https://rest.iad-01.braze.com, not the dashboard address) and that api_key "
        "exists (Braze answers 404 for an unknown REST API key). Braze said: {}",
        cfg_.http.base_url, path, BrazeSaid(resp.body)));
  }
  if (status >= 300 && status < 400) {
    return absl::FailedPreconditionError(fmt::format(
        "Braze answered HTTP {} for {}{} redirecting to {}; redirects are not followed, so set "
        "base_url to the REST endpoint itself",
        status, cfg_.http.base_url, path, resp.Header("location").value_or("(no Location)")));
  }
  return absl::OkStatus();
}

absl::Status BrazeDestination::CheckConnection() {
  // An empty attributes array is the cheapest authenticated call that writes
  // nothing: Braze checks the key, then rejects the body with 400 "Valid data
  // must be provided...". Reaching that 400 proves the key and instance.
  HttpDelivery delivery = NewDelivery(/*track=*/true);
  const std::string body = R"({"attributes":[]})";
  DeliveryResult d = delivery.Send([&] { return Request(kTrackPath, body); }, /*retry=*/false);
  if (!d.response.ok()) {
    return absl::UnavailableError(fmt::format(
        "could not reach Braze at {}: {}; check base_url (your instance's REST endpoint, such as "
        "https://rest.iad-01.braze.com) and the network path to it",
        cfg_.http.base_url, d.response.status().message()));
  }
  const HttpResponse& resp = *d.response;
  if ((resp.status >= 200 && resp.status < 300) || resp.status == 400) return absl::OkStatus();
  if (absl::Status s = ConfigurationError(resp, kTrackPath, kTrackPermission); !s.ok()) return s;
  if (resp.status == 429) {
    return absl::UnavailableError(fmt::format(
        "Braze at {} is rate limiting this workspace right now (HTTP 429), so the key could not "
        "be checked; try again after the X-RateLimit-Reset time. Braze said: {}",
        cfg_.http.base_url, BrazeSaid(resp.body)));
  }
  if (resp.status >= 500) {
    return absl::UnavailableError(fmt::format("Braze at {} is not available (HTTP {}): {}",
                                              cfg_.http.base_url, resp.status,
                                              BrazeSaid(resp.body)));
  }
  return absl::FailedPreconditionError(
      fmt::format("Braze at {} answered the connection check with HTTP {}: {}", cfg_.http.base_url,
                  resp.status, BrazeSaid(resp.body)));
}

class BrazeSession final : public ActionSession {
 public:
  BrazeSession(BrazeDestination* dest, SessionOptions options, bool events)
      : dest_(dest),
        options_(std::move(options)),
        events_(events),
        track_delivery_(dest->NewDelivery(/*track=*/true)),
        delete_delivery_(dest->NewDelivery(/*track=*/false)) {
    // Deletes use the first identifier the model's primary key is mapped to.
    const std::pair<const char*, const char*> kinds[] = {{"external_id", "external_ids"},
                                                         {"braze_id", "braze_ids"},
                                                         {"email", "email_addresses"},
                                                         {"phone", "phone_numbers"}};
    for (const auto& [field, key] : kinds) {
      const auto& identity = options_.layout.identity;
      auto it = std::find(identity.begin(), identity.end(), field);
      if (it != identity.end()) {
        delete_field_ = field;
        delete_key_ = key;
        delete_pos_ = static_cast<size_t>(it - identity.begin());
        break;
      }
    }
  }

  absl::StatusOr<std::vector<absl::Status>> SendBatch(
      std::span<const OutgoingRecord> batch) override;
  absl::Status Finish() override { return absl::OkStatus(); }

 private:
  const char* array() const { return events_ ? "events" : "attributes"; }
  absl::StatusOr<json> BuildObject(const OutgoingRecord& r, const std::string& now) const;
  absl::StatusOr<json> DeleteId(const OutgoingRecord& r) const;
  // Maps a final reply (or transport error) for a part of `n` records.
  absl::StatusOr<PartOutcome> Outcome(
      const DeliveryResult& d, HttpDelivery& delivery, size_t n, std::string_view path,
      std::string_view permission,
      const std::function<std::vector<absl::Status>(const HttpResponse&)>& accepted) const;
  std::vector<absl::Status> TrackResults(const HttpResponse& resp, size_t n) const;

  BrazeDestination* dest_;
  SessionOptions options_;
  bool events_;
  HttpDelivery track_delivery_;
  HttpDelivery delete_delivery_;
  std::string delete_field_;  // empty: deletes impossible with this mapping
  std::string delete_key_;
  size_t delete_pos_ = 0;
};

absl::StatusOr<json> BrazeSession::BuildObject(const OutgoingRecord& r,
                                               const std::string& now) const {
  json object = RecordPayload(options_.layout, r);
  if (absl::Status s = NormaliseIdentity(object); !s.ok()) return s;
  if (events_) {
    if (!NonEmptyString(object.value("name", json()))) {
      return absl::InvalidArgumentError("the event name is empty; Braze requires one");
    }
    auto time = object.find("time");
    if (time == object.end() || time->is_null()) {
      object["time"] = now;
    } else if (time->is_string() && !HasZone(time->get<std::string>())) {
      *time = time->get<std::string>() + "Z";  // zone-less warehouse timestamps are UTC
    }
    if (auto props = object.find("properties"); props != object.end()) {
      if (props->is_null()) {
        object.erase("properties");
      } else if (!props->is_object()) {
        return absl::InvalidArgumentError(
            fmt::format("properties must be a JSON object, got {}", BodySnippet(props->dump())));
      }
    }
  }
  if (!events_) {
    // A nested attribute left empty by pruning is removed as a whole.
    for (auto& [key, value] : object.items()) {
      if (key != "user_alias" && value.is_object() && !PruneNulls(value)) value = nullptr;
    }
  }
  object["_update_existing_only"] = dest_->cfg().update_existing_only;
  return object;
}

absl::StatusOr<json> BrazeSession::DeleteId(const OutgoingRecord& r) const {
  if (delete_pos_ >= r.values.size() || r.values[delete_pos_].is_null()) {
    return absl::InvalidArgumentError(
        fmt::format("cannot delete the Braze user: its {} is null", delete_field_));
  }
  const Value& v = r.values[delete_pos_];
  std::string id = v.type() == ValueType::kString ? v.text() : v.ToString();
  if (id.empty()) {
    return absl::InvalidArgumentError(
        fmt::format("cannot delete the Braze user: its {} is empty", delete_field_));
  }
  return json(std::move(id));
}

std::vector<absl::Status> BrazeSession::TrackResults(const HttpResponse& resp, size_t n) const {
  std::vector<absl::Status> results(n, absl::OkStatus());
  json doc = json::parse(resp.body, nullptr, /*allow_exceptions=*/false);
  if (!doc.is_object()) return results;
  auto errors = doc.find("errors");
  if (errors == doc.end() || !errors->is_array()) return results;
  for (const json& e : *errors) {
    // Errors name the array and the position within it; the other arrays
    // were not sent, and unlocated errors cannot be tied to a record.
    if (!e.is_object() || e.value("input_array", json()) != array()) continue;
    json index = e.value("index", json());
    if (!index.is_number_integer() || index.get<int64_t>() < 0 ||
        index.get<int64_t>() >= static_cast<int64_t>(n)) {
      continue;
    }
    json type = e.value("type", json("rejected"));
    results[index.get<size_t>()] = absl::InvalidArgumentError(
        fmt::format("Braze rejected this {} (HTTP {}): {}", events_ ? "event" : "user's attributes",
                    resp.status, type.is_string() ? type.get<std::string>() : type.dump()));
  }
  return results;
}

absl::StatusOr<PartOutcome> BrazeSession::Outcome(
    const DeliveryResult& d, HttpDelivery& delivery, size_t n, std::string_view path,
    std::string_view permission,
    const std::function<std::vector<absl::Status>(const HttpResponse&)>& accepted) const {
  if (!d.response.ok()) return PartOutcome::AllRecords(n, delivery.FailureStatus(d, kWhat));
  const HttpResponse& resp = *d.response;
  if (resp.status >= 200 && resp.status < 300) return PartOutcome::PerRecord(accepted(resp));
  if (absl::Status s = dest_->ConfigurationError(resp, path, permission); !s.ok()) return s;
  if (resp.status == 400 || resp.status == 413) {
    return PartOutcome::Split(
        absl::InvalidArgumentError(fmt::format("Braze rejected the request for {} (HTTP {}): {}",
                                               path, resp.status, BrazeSaid(resp.body))));
  }
  absl::Status failure = delivery.FailureStatus(d, kWhat);
  if (failure.code() == absl::StatusCode::kInvalidArgument) {
    failure =
        absl::InvalidArgumentError(fmt::format("Braze rejected the request for {} (HTTP {}): {}",
                                               path, resp.status, BrazeSaid(resp.body)));
  }
  return PartOutcome::AllRecords(n, failure);
}

absl::StatusOr<std::vector<absl::Status>> BrazeSession::SendBatch(
    std::span<const OutgoingRecord> batch) {
  if (batch.empty()) return std::vector<absl::Status>();
  if (events_) {
    for (const OutgoingRecord& r : batch) {
      if (r.change != ChangeKind::kAdded) {
        return absl::FailedPreconditionError(fmt::format(
            "mapping \"{}\": track_event sends only added records (each new row is one event), "
            "but got {} records; set records: added on the mapping",
            options_.mapping, ChangeKindName(r.change)));
      }
    }
  }
  std::vector<absl::Status> results(batch.size(), absl::OkStatus());
  std::vector<OutgoingRecord> upserts, deletes;
  std::vector<json> objects, ids;
  std::vector<size_t> upsert_origin, delete_origin;
  const std::string now = FormatIso8601(dest_->clock()->Now());
  for (size_t i = 0; i < batch.size(); ++i) {
    const OutgoingRecord& r = batch[i];
    if (r.is_delete()) {
      if (delete_key_.empty()) {
        return absl::FailedPreconditionError(fmt::format(
            "mapping \"{}\" sends deleted records, but deleting a Braze user needs the model's "
            "primary key mapped to external_id (or braze_id, email or phone); map it, or set "
            "records: added_or_updated",
            options_.mapping));
      }
      absl::StatusOr<json> id = DeleteId(r);
      if (!id.ok()) {
        results[i] = id.status();
        continue;
      }
      deletes.push_back(r);
      ids.push_back(*std::move(id));
      delete_origin.push_back(i);
    } else {
      absl::StatusOr<json> object = BuildObject(r, now);
      if (!object.ok()) {
        results[i] = object.status();
        continue;
      }
      upserts.push_back(r);
      objects.push_back(*std::move(object));
      upsert_origin.push_back(i);
    }
  }

  PartSender send_track = [&](std::span<const OutgoingRecord> part) -> absl::StatusOr<PartOutcome> {
    const size_t offset = static_cast<size_t>(part.data() - upserts.data());
    json list = json::array();
    for (size_t k = 0; k < part.size(); ++k) list.push_back(objects[offset + k]);
    const std::string body = json{{array(), std::move(list)}}.dump();
    DeliveryResult d = track_delivery_.Send([&] { return dest_->Request(kTrackPath, body); });
    return Outcome(d, track_delivery_, part.size(), kTrackPath, kTrackPermission,
                   [&](const HttpResponse& resp) { return TrackResults(resp, part.size()); });
  };
  PartSender send_delete =
      [&](std::span<const OutgoingRecord> part) -> absl::StatusOr<PartOutcome> {
    const size_t offset = static_cast<size_t>(part.data() - deletes.data());
    json list = json::array();
    for (size_t k = 0; k < part.size(); ++k) list.push_back(ids[offset + k]);
    const std::string body = json{{delete_key_, std::move(list)}}.dump();
    DeliveryResult d = delete_delivery_.Send([&] { return dest_->Request(kDeletePath, body); });
    return Outcome(d, delete_delivery_, part.size(), kDeletePath, kDeletePermission,
                   [&](const HttpResponse&) {
                     return std::vector<absl::Status>(part.size(), absl::OkStatus());
                   });
  };

  // Requests of at most `chunk` records each; a run-stopping status ends
  // sending. It is returned as-is while nothing was accepted, else carried
  // by every record not yet sent.
  bool delivered = false;
  absl::Status stopped;
  auto deliver = [&](const std::vector<OutgoingRecord>& records, const std::vector<size_t>& origin,
                     size_t chunk, const PartSender& send) {
    for (size_t start = 0; start < records.size(); start += chunk) {
      const size_t n = std::min(chunk, records.size() - start);
      if (!stopped.ok()) {
        for (size_t k = start; k < start + n; ++k) results[origin[k]] = stopped;
        continue;
      }
      absl::StatusOr<std::vector<absl::Status>> part =
          SendBisecting(std::span<const OutgoingRecord>(records.data() + start, n), send);
      if (!part.ok()) {
        stopped = part.status();
        for (size_t k = start; k < start + n; ++k) results[origin[k]] = stopped;
        continue;
      }
      for (size_t k = 0; k < n; ++k) {
        results[origin[start + k]] = (*part)[k];
        delivered |= (*part)[k].ok();
      }
    }
  };
  deliver(upserts, upsert_origin, static_cast<size_t>(dest_->cfg().max_objects_per_request),
          send_track);
  deliver(deletes, delete_origin, kMaxDeleteIds, send_delete);
  if (!stopped.ok() && !delivered) return stopped;
  return results;
}

absl::StatusOr<std::unique_ptr<ActionSession>> BrazeDestination::StartSession(
    const SessionOptions& options) {
  if (options.action == nullptr ||
      (options.action->id != kTrackAttributes && options.action->id != kTrackEvent)) {
    return absl::InvalidArgumentError(
        fmt::format("braze has no action \"{}\"; use track_attributes or track_event",
                    options.action == nullptr ? std::string() : options.action->id));
  }
  bool events = options.action->id == kTrackEvent;
  return std::unique_ptr<ActionSession>(std::make_unique<BrazeSession>(this, options, events));
}

// --- Definition --------------------------------------------------------------

FieldSpec Field(std::string key, std::string label, FieldType type, std::string description,
                std::string default_column = "", std::vector<std::string> allowed = {}) {
  FieldSpec f;
  f.key = std::move(key);
  f.label = std::move(label);
  f.type = type;
  f.description = std::move(description);
  f.default_column = std::move(default_column);
  f.allowed_values = std::move(allowed);
  return f;
}

std::vector<FieldSpec> IdentifierFields(bool events) {
  return {
      Field("external_id", "External ID", FieldType::kString,
            events ? "The External ID of the user the event belongs to (the ID your apps pass to "
                     "changeUser). The preferred identifier."
                   : "The user's External ID (the ID your apps pass to changeUser). The "
                     "preferred identifier: map it from the model's primary key so deleted rows "
                     "delete the user."),
      Field("braze_id", "Braze ID", FieldType::kString,
            "Braze's own user ID; identifies the user when external_id is unmapped or null."),
      Field("user_alias.alias_name", "Alias name", FieldType::kString,
            "With user_alias.alias_label, a user alias; identifies the user when external_id and "
            "braze_id are unmapped or null."),
      Field("user_alias.alias_label", "Alias label", FieldType::kString,
            "The label of the user alias (see user_alias.alias_name)."),
  };
}

// Mapping checks shared by both actions: some identifier must be mapped.
std::vector<std::string> CheckIdentifiers(const std::vector<MappedField>& fields) {
  bool name = false, label = false, other = false;
  for (const MappedField& f : fields) {
    name |= f.field == "user_alias.alias_name";
    label |= f.field == "user_alias.alias_label";
    other |= f.field == "external_id" || f.field == "braze_id" || f.field == "email" ||
             f.field == "phone";
  }
  std::vector<std::string> problems;
  if (name != label) {
    problems.push_back("map user_alias.alias_name and user_alias.alias_label together");
  }
  if (!other && !(name && label)) {
    problems.push_back(
        "map a user identifier: external_id (recommended), braze_id, user_alias.alias_name with "
        "user_alias.alias_label, email or phone");
  }
  return problems;
}

ActionSpec TrackAttributesAction() {
  ActionSpec a;
  a.id = kTrackAttributes;
  a.title = "Track user attributes";
  a.description =
      "Creates or updates Braze user profiles from added and updated records (one attributes "
      "object per record on POST /users/track), and deletes the users of deleted records (POST "
      "/users/delete, permanent). Any field that is not declared below is sent as a custom "
      "attribute under its own name.";
  a.selections = {RecordSelection::kAdded, RecordSelection::kUpdated,
                  RecordSelection::kAddedOrUpdated, RecordSelection::kDeleted,
                  RecordSelection::kAll};
  a.fields = IdentifierFields(/*events=*/false);
  const std::vector<std::string> subscribe = {"opted_in", "subscribed", "unsubscribed"};
  for (FieldSpec f : {
           Field("email", "Email", FieldType::kString,
                 "Email address. Also identifies the user when no other identifier is set.",
                 "email"),
           Field("phone", "Phone", FieldType::kString,
                 "Phone number (E.164 recommended). Also identifies the user when no other "
                 "identifier, nor email, is set.",
                 "phone"),
           Field("first_name", "First name", FieldType::kString, "First name.", "first_name"),
           Field("last_name", "Last name", FieldType::kString, "Last name.", "last_name"),
           Field("gender", "Gender", FieldType::kString,
                 "M (male), F (female), O (other), N (not applicable) or P (prefer not to say).",
                 "", {"M", "F", "O", "N", "P"}),
           Field("dob", "Date of birth", FieldType::kDate, "Date of birth (sent as YYYY-MM-DD)."),
           Field("country", "Country", FieldType::kString, "ISO-3166-1 alpha-2 country code."),
           Field("home_city", "Home city", FieldType::kString, "Home city."),
           Field("language", "Language", FieldType::kString, "ISO-639-1 language code."),
           Field("time_zone", "Time zone", FieldType::kString,
                 "IANA time zone name, such as America/New_York."),
           Field("email_subscribe", "Email subscription", FieldType::kString,
                 "Global email subscription state.", "", subscribe),
           Field("push_subscribe", "Push subscription", FieldType::kString,
                 "Global push subscription state.", "", subscribe),
       }) {
    a.fields.push_back(std::move(f));
  }
  a.allows_extra_fields = true;
  a.max_batch_records = kMaxTrackObjects;
  a.default_batch_records = kMaxTrackObjects;
  a.validate = [](const json&, const std::vector<MappedField>& fields) {
    std::vector<std::string> problems = CheckIdentifiers(fields);
    for (const MappedField& f : fields) {
      if (f.field.starts_with("_")) {
        problems.push_back(fmt::format(
            "field \"{}\": keys starting with \"_\" steer the Braze API (use the destination "
            "setting update_existing_only for _update_existing_only); rename the attribute",
            f.field));
      }
      if (f.field == "user_alias" || f.field.starts_with("user_alias.")) {
        if (f.field != "user_alias.alias_name" && f.field != "user_alias.alias_label") {
          problems.push_back(fmt::format(
              "field \"{}\": map user_alias.alias_name and user_alias.alias_label instead",
              f.field));
        }
      }
    }
    return problems;
  };
  return a;
}

ActionSpec TrackEventAction() {
  ActionSpec a;
  a.id = kTrackEvent;
  a.title = "Track custom event";
  a.description =
      "Sends one Braze custom event per added record (POST /users/track, events array), such as "
      "one \"Order Completed\" per new row of an orders model. Braze does not deduplicate "
      "events, so only added records can be sent.";
  a.selections = {RecordSelection::kAdded};
  a.fields = IdentifierFields(/*events=*/true);
  FieldSpec name = Field("name", "Event name", FieldType::kString,
                         "The custom event's name; map a column or a text literal such as "
                         "'Order Completed'.");
  name.required = true;
  for (FieldSpec f : {
           Field("email", "Email", FieldType::kString,
                 "Identifies the user by email address when no other identifier is set."),
           Field("phone", "Phone", FieldType::kString,
                 "Identifies the user by phone number when no other identifier, nor email, is "
                 "set."),
           name,
           Field("time", "Time", FieldType::kTimestamp,
                 "When the event happened (ISO-8601; timestamps without a zone are sent as "
                 "UTC). Unmapped or null: when the record is sent."),
           Field("properties", "Properties", FieldType::kObject,
                 "Event properties as one JSON object; or map single properties as "
                 "properties.<name>."),
       }) {
    a.fields.push_back(std::move(f));
  }
  a.extra_field_parents = {"properties"};
  a.max_batch_records = kMaxTrackObjects;
  a.default_batch_records = kMaxTrackObjects;
  a.validate = [](const json&, const std::vector<MappedField>& fields) {
    return CheckIdentifiers(fields);
  };
  return a;
}

constexpr char kNotes[] = R"md(## Wire format

Every request is a `POST` to the instance's REST endpoint (`base_url`) with
`Authorization: Bearer <api_key>` and `Content-Type: application/json`.

`track_attributes`, added and updated records (`POST /users/track`, one object per record):

```json
{"attributes": [
  {"external_id": "u_42", "email": "ada@example.com", "first_name": "Ada",
   "plan": "pro", "address": {"city": "London"}, "_update_existing_only": false}]}
```

`track_attributes`, deleted records (`POST /users/delete`, at most 50 ids per request):

```json
{"external_ids": ["u_7", "u_9"]}
```

`track_event`, added records:

```json
{"events": [
  {"external_id": "u_42", "name": "Order Completed", "time": "2026-01-02T03:04:05Z",
   "properties": {"order_id": "o_9", "total": 14.99}, "_update_existing_only": false}]}
```

- **Identifiers.** Each object carries one identifier: `external_id`, else `braze_id`, else
  `user_alias` (`alias_name` + `alias_label`), else `email`, else `phone`. Null identifiers are
  left out; a record with none fails on its own (not sent). When several are set the first one
  identifies the user and the other two of external_id / braze_id / user_alias are not sent;
  `email` and `phone` are always sent as attributes.
- **Custom attributes.** Braze's attributes object is flat: custom attributes sit beside the
  standard ones. So `track_attributes` accepts any field name: `plan: plan_column` sends
  `"plan": …`, and a dotted name (`address.city: city`) sends a nested custom attribute
  (`"address": {"city": …}`), which replaces the whole nested object. A misspelled standard
  attribute (`frist_name`) becomes a custom attribute, so check names against the table above.
- **Nulls** remove the attribute from the profile (Braze's rule), so a column that becomes NULL
  clears the attribute.
- `_update_existing_only` is the `update_existing_only` setting on every object. With `false`
  (default) Braze creates missing profiles, including alias-only and email-only ones.
- **Deletes** use the identifier the model's `primary_key` is mapped to (`external_id`, else
  `braze_id`, `email` or `phone`). Deleting a Braze user is permanent and also removes data your
  apps recorded; use `records: added_or_updated` to never delete, and keep `max_deletes` on the
  mapping.
- **Events** are not deduplicated by Braze: a request that timed out after Braze queued it is
  sent again, and the event is counted twice. Attribute updates are idempotent.
- Braze bills data points per attribute change and event; Backflow only sends rows whose mapped
  values changed since the last run.
- The connection check (`backflow test-connection`) sends `{"attributes":[]}`: Braze checks the
  key and answers 400 "Valid data must be provided…", and nothing is written. It does not check
  the `users.delete` permission.

## Replies

| reply | outcome |
| --- | --- |
| 201 `{"message":"success"}`, 202 `{"message":"queued"}` | every object accepted |
| 201 with `"errors":[{"type":"…","input_array":"attributes","index":3}]` | the object at that position of the array fails with Braze's reason (the record is retried next run); the others are accepted |
| 400, 413 (whole request rejected, e.g. "Max Input Length Exceeded") | the request is split in halves and re-sent until the rejected record is isolated; it fails with Braze's message |
| 429 | waits until `X-RateLimit-Reset` (epoch seconds), then retries, up to `max_retries` |
| 5xx, 408, timeout, connection error | retried with exponential backoff and jitter, up to `max_retries`; then the records fail and are retried next run |
| 401 | the run stops: check `api_key` and that it belongs to this instance |
| 403 | the run stops: the key needs the `users.track` (or, for deletes, `users.delete`) permission |
| 404, 3xx | the run stops: check `base_url` (and `api_key`: Braze answers 404 for unknown keys) |
| other 4xx | the request's records fail with Braze's message |

## Limits

- At most `max_objects_per_request` (75) objects per `/users/track` request. Each action sends a
  single array, so the "75 per array" and "75 objects in total" readings of Braze's limit agree.
  Workspaces on "Monthly Active Users CY 24-25" contracts get 50: set
  `max_objects_per_request: 50`. A request over the workspace's cap is answered 400 and split.
- `/users/track`: `track_requests_per_3s` (3,000 requests per 3 seconds by default);
  `/users/delete`: `delete_requests_per_minute` (20,000 per minute, shared with
  `/users/alias/new`, `/users/identify`, `/users/merge` and `/users/alias/update`). Backflow
  keeps below both for all mappings of the destination together; `max_requests_per_second`
  caps further. The current limits of a workspace are in the dashboard under Settings > APIs
  and Identifiers > API Usage Dashboard.
)md";

}  // namespace

DestinationDefinition BrazeDestinationDefinition() {
  DestinationDefinition def;
  def.type = "braze";
  def.title = "Braze";
  def.description =
      "Keeps Braze user profiles in step with a model (standard and custom attributes, deletes) "
      "and sends custom events, through the REST API's /users/track and /users/delete.";
  def.maturity = "beta";

  SettingSpec key;
  key.key = "api_key";
  key.label = "REST API key";
  key.description =
      "A Braze REST API key (dashboard: Settings > APIs and Identifiers) with the users.track "
      "permission, plus users.delete when a mapping sends deleted records. Sent as "
      "\"Authorization: Bearer <key>\".";
  key.required = true;
  key.secret = true;
  def.settings.push_back(key);

  HttpSettingsDefaults http_defaults;
  std::vector<SettingSpec> http = HttpSettingSpecs(http_defaults);
  for (SettingSpec& s : http) {
    if (s.key != "base_url") continue;
    s.required = true;
    s.default_value = nullptr;
    s.description =
        "Your Braze instance's REST endpoint (required; it is not discovered): "
        "https://rest.iad-01.braze.com for US-01, https://rest.iad-0N.braze.com for the other "
        "US-0N instances, https://rest.fra-01.braze.eu for EU-01; the other instances (US-10, "
        "EU-02, AU, ID, JP, KR) are listed in Braze's API overview, matched to the dashboard "
        "address you log in to. A key only works on its own instance. Also for an egress proxy "
        "or a test server.";
    def.settings.push_back(s);
  }

  SettingSpec existing;
  existing.key = "update_existing_only";
  existing.label = "Update existing users only";
  existing.description =
      "Sends \"_update_existing_only\": true so Braze only updates profiles that already exist "
      "and silently drops objects for unknown users. Default false: Braze creates missing "
      "profiles (including alias-only and email-only ones).";
  existing.type = SettingType::kBoolean;
  existing.default_value = false;
  def.settings.push_back(existing);

  SettingSpec objects;
  objects.key = "max_objects_per_request";
  objects.label = "Objects per request";
  objects.description =
      "Most attribute or event objects per /users/track request, 1 to 75 (Braze's documented "
      "limit). Set 50 for \"Monthly Active Users CY 24-25\" contracts, or what your contract "
      "states; larger batches are split into several requests.";
  objects.type = SettingType::kInteger;
  objects.default_value = kMaxTrackObjects;
  def.settings.push_back(objects);

  SettingSpec track_rate;
  track_rate.key = "track_requests_per_3s";
  track_rate.label = "/users/track requests per 3 s";
  track_rate.description =
      "The workspace's /users/track rate limit, in requests per 3 seconds (Braze's default is "
      "3,000; the dashboard's API Usage Dashboard shows yours). Backflow never sends faster; "
      "lower it when other tools use the same workspace.";
  track_rate.type = SettingType::kInteger;
  track_rate.default_value = 3000;
  def.settings.push_back(track_rate);

  SettingSpec delete_rate;
  delete_rate.key = "delete_requests_per_minute";
  delete_rate.label = "/users/delete requests per minute";
  delete_rate.description =
      "The workspace's /users/delete rate limit, in requests per minute (Braze's default is "
      "20,000, shared with /users/alias/new, /users/identify, /users/merge and "
      "/users/alias/update).";
  delete_rate.type = SettingType::kInteger;
  delete_rate.default_value = 20000;
  def.settings.push_back(delete_rate);

  for (SettingSpec& s : http) {
    if (s.key != "base_url") def.settings.push_back(std::move(s));
  }

  def.actions.push_back(TrackAttributesAction());
  def.actions.push_back(TrackEventAction());
  def.notes = kNotes;

  def.create = HttpDestinationFactory<BrazeDestination>(def.type, ParseConfig);
  return def;
}

}  // namespace backflow
