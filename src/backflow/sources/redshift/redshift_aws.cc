#include "backflow/sources/redshift/redshift_aws.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <utility>

#include "backflow/common/civil_date.h"
#include "backflow/common/fmt_absl.h"
#include "backflow/common/status_macros.h"
#include "backflow/common/url.h"
#include "fmt/format.h"

namespace backflow {
namespace {

using json = nlohmann::json;

constexpr std::chrono::seconds kRefreshMargin{60};

bool IsOneOf(std::string_view code, std::initializer_list<std::string_view> codes) {
  return std::find(codes.begin(), codes.end(), code) != codes.end();
}

bool IsThrottling(const AwsErrorReply& e) {
  return e.status == 429 ||
         IsOneOf(e.code, {"Throttling", "ThrottlingException", "TooManyRequestsException",
                          "RequestLimitExceeded", "RequestThrottled", "RequestThrottledException",
                          "SlowDown"});
}

bool IsActiveLimit(const AwsErrorReply& e) {
  return IsOneOf(e.code, {"ActiveStatementsExceededException", "ActiveSessionsExceededException"});
}

bool IsServerError(const AwsErrorReply& e) {
  return e.status >= 500 ||
         IsOneOf(e.code, {"InternalServerException", "InternalFailure", "ServiceUnavailable",
                          "InternalError", "ServiceUnavailableException"});
}

}  // namespace

std::vector<SettingSpec> AwsCredentialSettingSpecs(std::string_view purpose) {
  std::vector<SettingSpec> specs;
  SettingSpec key;
  key.key = "access_key_id";
  key.label = "AWS access key ID";
  key.description = fmt::format(
      "Access key ID of the IAM user or role {} (AKIA... for a user, ASIA... for temporary "
      "credentials), e.g. ${{env:AWS_ACCESS_KEY_ID}}.",
      purpose);
  specs.push_back(key);
  SettingSpec secret;
  secret.key = "secret_access_key";
  secret.label = "AWS secret access key";
  secret.description =
      "The secret of that access key, e.g. ${env:AWS_SECRET_ACCESS_KEY}. Used only to sign "
      "requests (SigV4); never sent.";
  secret.secret = true;
  specs.push_back(secret);
  SettingSpec token;
  token.key = "session_token";
  token.label = "AWS session token";
  token.description =
      "For temporary credentials (an assumed role, SSO): the session token, e.g. "
      "${env:AWS_SESSION_TOKEN}. Runs fail with an actionable error once it expires.";
  token.secret = true;
  specs.push_back(token);
  SettingSpec region;
  region.key = "region";
  region.label = "AWS region";
  region.description = "The AWS region of the cluster or workgroup, e.g. us-east-1.";
  specs.push_back(region);
  return specs;
}

absl::Status CheckAwsRegion(const std::string& region) {
  bool ok =
      !region.empty() && region.size() <= 32 &&
      std::all_of(region.begin(), region.end(),
                  [](unsigned char c) { return std::islower(c) || std::isdigit(c) || c == '-'; }) &&
      region.find('-') != std::string::npos;
  if (!ok) {
    return absl::InvalidArgumentError(
        "region: required; the AWS region of the cluster or workgroup, e.g. us-east-1");
  }
  return absl::OkStatus();
}

absl::StatusOr<AwsCredentials> ParseAwsCredentialSettings(const json& settings) {
  auto text = [&](const char* key) -> std::string {
    auto it = settings.find(key);
    return it != settings.end() && it->is_string() ? it->get<std::string>() : "";
  };
  AwsCredentials c;
  c.access_key_id = text("access_key_id");
  c.secret_access_key = text("secret_access_key");
  c.session_token = text("session_token");
  if (c.access_key_id.empty()) {
    return absl::InvalidArgumentError(
        "access_key_id: required; the access key of the IAM identity, e.g. "
        "${env:AWS_ACCESS_KEY_ID}");
  }
  if (c.secret_access_key.empty()) {
    return absl::InvalidArgumentError(
        "secret_access_key: required with access_key_id, e.g. ${env:AWS_SECRET_ACCESS_KEY}");
  }
  return c;
}

std::string RegionFromRedshiftHost(std::string_view host) {
  std::vector<std::string_view> labels;
  while (true) {
    size_t dot = host.find('.');
    labels.push_back(host.substr(0, dot));
    if (dot == std::string_view::npos) break;
    host.remove_prefix(dot + 1);
  }
  for (size_t i = 1; i + 2 < labels.size(); ++i) {
    if ((labels[i] == "redshift" || labels[i] == "redshift-serverless") &&
        labels[i + 1] == "amazonaws") {
      std::string region(labels[i - 1]);
      if (CheckAwsRegion(region).ok()) return region;
    }
  }
  return "";
}

std::string AwsErrorReply::Said() const {
  if (code.empty() && message.empty()) return "(no error details)";
  if (code.empty()) return message;
  if (message.empty()) return code;
  return code + ": " + message;
}

std::optional<std::string> XmlElementText(std::string_view xml, std::string_view tag) {
  std::string open = "<" + std::string(tag) + ">";
  std::string close = "</" + std::string(tag) + ">";
  size_t start = xml.find(open);
  if (start == std::string_view::npos) return std::nullopt;
  start += open.size();
  size_t end = xml.find(close, start);
  if (end == std::string_view::npos) return std::nullopt;
  std::string_view raw = xml.substr(start, end - start);
  std::string out;
  for (size_t i = 0; i < raw.size(); ++i) {
    if (raw[i] == '&') {
      static const std::pair<std::string_view, char> kEntities[] = {
          {"&amp;", '&'}, {"&lt;", '<'}, {"&gt;", '>'}, {"&quot;", '"'}, {"&apos;", '\''}};
      bool matched = false;
      for (const auto& [entity, c] : kEntities) {
        if (raw.substr(i, entity.size()) == entity) {
          out.push_back(c);
          i += entity.size() - 1;
          matched = true;
          break;
        }
      }
      if (matched) continue;
    }
    out.push_back(raw[i]);
  }
  return out;
}

AwsErrorReply ParseAwsError(const HttpResponse& response) {
  AwsErrorReply e;
  e.status = response.status;
  json body = json::parse(response.body, nullptr, /*allow_exceptions=*/false);
  auto strip = [](std::string code) {
    if (size_t hash = code.rfind('#'); hash != std::string::npos) code = code.substr(hash + 1);
    if (size_t colon = code.find(':'); colon != std::string::npos) code = code.substr(0, colon);
    return code;
  };
  if (body.is_object()) {
    if (auto it = body.find("__type"); it != body.end() && it->is_string()) {
      e.code = strip(it->get<std::string>());
    }
    for (const char* key : {"message", "Message"}) {
      if (auto it = body.find(key); it != body.end() && it->is_string()) {
        e.message = it->get<std::string>();
        break;
      }
    }
  } else if (response.body.find("<Error") != std::string::npos ||
             response.body.find("<ErrorResponse") != std::string::npos) {
    e.code = XmlElementText(response.body, "Code").value_or("");
    e.message = XmlElementText(response.body, "Message").value_or("");
  }
  if (e.code.empty()) {
    if (auto h = response.Header("x-amzn-errortype")) e.code = strip(*h);
  }
  if (e.code.empty() && e.message.empty() && !response.body.empty()) {
    e.message = BodySnippet(response.body, 300);
  }
  return e;
}

bool AwsRetryableReply(const HttpResponse& response) {
  if (response.status >= 200 && response.status < 300) return false;
  AwsErrorReply e = ParseAwsError(response);
  return IsThrottling(e) || IsActiveLimit(e) || IsServerError(e);
}

absl::Status AwsFailure(const DeliveryResult& d, std::string_view endpoint, std::string_view what,
                        std::string_view action, std::string_view not_found) {
  if (!d.auth_error.ok()) return d.auth_error;
  if (!d.response.ok()) {
    const absl::Status& s = d.response.status();
    std::string message = fmt::format(
        "could not reach AWS at {} to {} {}: {}. Check the region (and aws_endpoint/base_url if "
        "set) and the network",
        endpoint, what, d.AttemptsText(), s.message());
    return s.code() == absl::StatusCode::kDeadlineExceeded ? absl::DeadlineExceededError(message)
                                                           : absl::UnavailableError(message);
  }
  AwsErrorReply e = ParseAwsError(*d.response);
  std::string said = e.Said();
  std::string attempts = d.attempts > 1 ? ", " + d.AttemptsText() : "";
  if (IsThrottling(e)) {
    return absl::ResourceExhaustedError(fmt::format(
        "AWS throttled the request to {} (HTTP {}{}); the run is retried later. AWS said: {}", what,
        e.status, attempts, said));
  }
  if (IsActiveLimit(e)) {
    return absl::ResourceExhaustedError(fmt::format(
        "Redshift has too many active statements or sessions to {} (HTTP {}{}); the run is "
        "retried later. AWS said: {}",
        what, e.status, attempts, said));
  }
  if (IsServerError(e)) {
    return absl::UnavailableError(fmt::format(
        "AWS failed to {} (HTTP {}{}): a transient server error; the run is retried later. AWS "
        "said: {}",
        what, e.status, attempts, said));
  }
  if (IsOneOf(e.code,
              {"InvalidClientTokenId", "UnrecognizedClientException", "SignatureDoesNotMatch",
               "InvalidSignatureException", "IncompleteSignature", "IncompleteSignatureException",
               "MissingAuthenticationToken", "AuthFailure"})) {
    return absl::UnauthenticatedError(fmt::format(
        "AWS refused the credentials while trying to {} ({}): check access_key_id and "
        "secret_access_key (they must be a pair of the same, active access key; a key from "
        "temporary credentials also needs session_token). AWS said: {}",
        what, e.code, said));
  }
  if (IsOneOf(e.code, {"ExpiredToken", "ExpiredTokenException", "RequestExpired"})) {
    return absl::UnauthenticatedError(fmt::format(
        "AWS refused expired credentials while trying to {} ({}): the session_token (and its "
        "access key) expired; refresh the temporary credentials, or use a long-lived access key. "
        "AWS said: {}",
        what, e.code, said));
  }
  if (IsOneOf(e.code, {"AccessDenied", "AccessDeniedException", "AccessDeniedFault",
                       "UnauthorizedOperation"}) ||
      e.status == 403) {
    return absl::PermissionDeniedError(fmt::format(
        "AWS denied access while trying to {} (HTTP {}, {}): allow {} to the IAM identity of "
        "access_key_id on the cluster or workgroup (and its dbuser/dbname resources). AWS "
        "said: {}",
        what, e.status, e.code.empty() ? "no code" : e.code, action, said));
  }
  if (!not_found.empty() &&
      (e.status == 404 ||
       IsOneOf(e.code, {"ClusterNotFound", "ClusterNotFoundFault", "ResourceNotFoundException"}))) {
    return absl::FailedPreconditionError(fmt::format("{}. AWS said: {}", not_found, said));
  }
  if (e.code == "QueryTimeoutException") {
    return absl::DeadlineExceededError(
        fmt::format("Redshift timed out while trying to {}. AWS said: {}", what, said));
  }
  if (e.code == "ValidationException") {
    return absl::InvalidArgumentError(fmt::format(
        "AWS rejected the request to {} (HTTP {}). AWS said: {}", what, e.status, said));
  }
  return absl::FailedPreconditionError(fmt::format(
      "AWS rejected the request to {} (HTTP {}): check the source's settings. AWS said: {}", what,
      e.status, said));
}

std::string AwsEndpoint(std::string_view service, std::string_view region,
                        std::string_view override_endpoint) {
  if (!override_endpoint.empty()) {
    std::string out(override_endpoint);
    while (!out.empty() && out.back() == '/') out.pop_back();
    return out;
  }
  return fmt::format("https://{}.{}.amazonaws.com", service, region);
}

std::optional<Clock::TimePoint> ParseAwsTimestamp(std::string_view s) {
  if (s.size() < 20 || s[4] != '-' || s[7] != '-' || (s[10] != 'T' && s[10] != ' ') ||
      s[13] != ':' || s[16] != ':') {
    return std::nullopt;
  }
  auto y = FixedDigits(s, 0, 4), mo = FixedDigits(s, 5, 2), d = FixedDigits(s, 8, 2),
       h = FixedDigits(s, 11, 2), mi = FixedDigits(s, 14, 2), se = FixedDigits(s, 17, 2);
  if (!y || !mo || !d || !h || !mi || !se || *mo < 1 || *mo > 12 || *d < 1 || *d > 31) {
    return std::nullopt;
  }
  size_t i = 19;
  int64_t nanos = 0;
  if (i < s.size() && s[i] == '.') {
    ++i;
    int64_t scale = 100'000'000;
    while (i < s.size() && std::isdigit(static_cast<unsigned char>(s[i]))) {
      nanos += (s[i] - '0') * scale;
      scale /= 10;
      ++i;
    }
  }
  if (s.substr(i) != "Z" && s.substr(i) != "+00:00") return std::nullopt;
  int64_t secs = DaysFromCivil(*y, *mo, *d) * 86400 + *h * 3600 + *mi * 60 + *se;
  return Clock::TimePoint(std::chrono::duration_cast<Clock::Duration>(
      std::chrono::seconds(secs) + std::chrono::nanoseconds(nanos)));
}

RedshiftIamCredentials::RedshiftIamCredentials(RedshiftIamConfig config, HttpClient* http,
                                               Clock* clock)
    : config_(std::move(config)), http_(http), clock_(clock) {}

absl::StatusOr<RedshiftDbCredentials> RedshiftIamCredentials::Get() {
  std::lock_guard<std::mutex> lock(mu_);
  if (cached_ && clock_->Now() + kRefreshMargin < cached_->expiration) return *cached_;
  BACKFLOW_ASSIGN_OR_RETURN(RedshiftDbCredentials fresh, Fetch());
  cached_ = fresh;
  return fresh;
}

absl::StatusOr<RedshiftDbCredentials> RedshiftIamCredentials::Refresh() {
  std::lock_guard<std::mutex> lock(mu_);
  cached_.reset();
  BACKFLOW_ASSIGN_OR_RETURN(RedshiftDbCredentials fresh, Fetch());
  cached_ = fresh;
  return fresh;
}

absl::StatusOr<RedshiftDbCredentials> RedshiftIamCredentials::Fetch() {
  const bool serverless = !config_.workgroup_name.empty();
  const std::string service = serverless ? "redshift-serverless" : "redshift";
  const std::string endpoint = AwsEndpoint(service, config_.region, config_.aws_endpoint);
  HttpRequest base;
  base.method = "POST";
  base.url = endpoint + "/";
  base.timeout = config_.timeout;
  std::string what;
  std::string action;
  std::string not_found;
  if (serverless) {
    json body = {{"workgroupName", config_.workgroup_name},
                 {"durationSeconds", config_.duration_s}};
    if (!config_.db_name.empty()) body["dbName"] = config_.db_name;
    base.body = body.dump();
    base.headers = {{"Content-Type", "application/x-amz-json-1.1"},
                    {"X-Amz-Target", "RedshiftServerless.GetCredentials"}};
    what = fmt::format("get a temporary database password for workgroup \"{}\"",
                       config_.workgroup_name);
    action = "redshift-serverless:GetCredentials";
    not_found = fmt::format(
        "Redshift Serverless has no workgroup \"{}\" in region {}: check workgroup_name and region",
        config_.workgroup_name, config_.region);
  } else {
    base.body = fmt::format(
        "Action=GetClusterCredentials&Version={}&ClusterIdentifier={}&DbUser={}"
        "&DurationSeconds={}",
        kRedshiftApiVersion, PercentEncode(config_.cluster_identifier),
        PercentEncode(config_.db_user), config_.duration_s);
    if (!config_.db_name.empty()) base.body += "&DbName=" + PercentEncode(config_.db_name);
    if (config_.auto_create) base.body += "&AutoCreate=true";
    base.headers = {{"Content-Type", "application/x-www-form-urlencoded; charset=utf-8"}};
    what = fmt::format("get a temporary password for database user \"{}\" on cluster \"{}\"",
                       config_.db_user, config_.cluster_identifier);
    action = "redshift:GetClusterCredentials";
    not_found = fmt::format(
        "Redshift has no cluster \"{}\" in region {}: check cluster_identifier (the cluster's "
        "name, e.g. examplecluster) and region",
        config_.cluster_identifier, config_.region);
  }
  VendorRules rules;
  rules.retryable = AwsRetryableReply;
  HttpDelivery delivery(http_, clock_, {}, config_.retry, std::move(rules));
  absl::Status sign_error;
  DeliveryResult d = delivery.Send([&] {
    HttpRequest req = base;
    absl::Status s =
        SignAwsRequest(req, config_.credentials, config_.region, service, clock_->Now());
    if (!s.ok()) sign_error = s;
    return req;
  });
  if (!sign_error.ok()) {
    return absl::InvalidArgumentError(
        fmt::format("aws_endpoint: {} ({})", sign_error.message(), endpoint));
  }
  if (!d.auth_error.ok() || !d.response.ok() || d.response->status < 200 ||
      d.response->status >= 300) {
    return AwsFailure(d, endpoint, what, action, not_found);
  }
  const std::string& body = d.response->body;
  RedshiftDbCredentials out;
  std::optional<Clock::TimePoint> expiration;
  if (serverless) {
    json reply = json::parse(body, nullptr, /*allow_exceptions=*/false);
    if (reply.is_object()) {
      if (reply.contains("dbUser") && reply["dbUser"].is_string()) out.user = reply["dbUser"];
      if (reply.contains("dbPassword") && reply["dbPassword"].is_string()) {
        out.password = reply["dbPassword"];
      }
      if (reply.contains("expiration")) {
        const json& e = reply["expiration"];
        if (e.is_number()) {
          expiration = Clock::TimePoint(std::chrono::duration_cast<Clock::Duration>(
              std::chrono::duration<double>(e.get<double>())));
        } else if (e.is_string()) {
          expiration = ParseAwsTimestamp(e.get<std::string>());
        }
      }
    }
  } else {
    out.user = XmlElementText(body, "DbUser").value_or("");
    out.password = XmlElementText(body, "DbPassword").value_or("");
    if (auto e = XmlElementText(body, "Expiration")) expiration = ParseAwsTimestamp(*e);
  }
  if (out.user.empty() || out.password.empty()) {
    return absl::UnavailableError(fmt::format(
        "AWS answered HTTP {} to the request to {} without a database user and password; the "
        "run is retried later",
        d.response->status, what));
  }
  out.expiration = expiration.value_or(clock_->Now() + std::chrono::seconds(config_.duration_s));
  return out;
}

}  // namespace backflow
