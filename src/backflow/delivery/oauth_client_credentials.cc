#include "backflow/delivery/oauth_client_credentials.h"

#include <algorithm>
#include <cctype>
#include <utility>

#include "backflow/common/crypto.h"
#include "backflow/common/url.h"
#include "backflow/delivery/jwt_bearer.h"
#include "fmt/format.h"

namespace backflow {

using json = nlohmann::json;

absl::StatusOr<std::unique_ptr<ClientCredentialsTokenSource>> ClientCredentialsTokenSource::Create(
    ClientCredentialsConfig config, HttpClient* http, Clock* clock) {
  if (config.token_url.empty()) {
    return absl::InvalidArgumentError("client credentials grant: token_url is required");
  }
  if (config.client_id.empty()) {
    return absl::InvalidArgumentError("client credentials grant: client_id is required");
  }
  if (config.client_secret.empty()) {
    return absl::InvalidArgumentError("client credentials grant: client_secret is required");
  }
  if (http == nullptr || clock == nullptr) {
    return absl::InvalidArgumentError("client credentials grant: needs an HTTP client and a clock");
  }
  return std::unique_ptr<ClientCredentialsTokenSource>(
      new ClientCredentialsTokenSource(std::move(config), http, clock));
}

absl::StatusOr<std::string> ClientCredentialsTokenSource::Token(bool refresh) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!refresh && !token_.empty() && (!refresh_at_ || clock_->Now() < *refresh_at_)) {
    return token_;
  }
  return MintLocked();
}

HttpRequest ClientCredentialsTokenSource::TokenRequest() const {
  HttpRequest req;
  req.method = "POST";
  req.url = config_.token_url;
  req.timeout = config_.timeout;
  req.headers.emplace_back("Content-Type", "application/x-www-form-urlencoded");
  req.headers.emplace_back("Accept", "application/json");
  std::string body = "grant_type=client_credentials";
  if (!config_.scope.empty()) body += "&scope=" + FormUrlEncode(config_.scope);
  for (const auto& [name, value] : config_.extra_params) {
    body += "&" + FormUrlEncode(name) + "=" + FormUrlEncode(value);
  }
  if (config_.client_auth == ClientAuthMethod::kBasic) {
    std::string credentials =
        config_.form_encode_basic_credentials
            ? FormUrlEncode(config_.client_id) + ":" + FormUrlEncode(config_.client_secret)
            : config_.client_id + ":" + config_.client_secret;
    req.headers.emplace_back("Authorization", "Basic " + Base64Encode(credentials));
  } else {
    body += "&client_id=" + FormUrlEncode(config_.client_id) +
            "&client_secret=" + FormUrlEncode(config_.client_secret);
  }
  req.body = std::move(body);
  return req;
}

absl::StatusOr<std::string> ClientCredentialsTokenSource::MintLocked() {
  token_.clear();
  RetryPolicy policy;
  policy.max_retries = config_.max_retries;
  policy.base_backoff = config_.base_backoff;
  policy.max_wait = config_.max_backoff;
  HttpDelivery delivery(http_, clock_, {}, policy);
  DeliveryResult d = delivery.Send([&] { return TokenRequest(); });
  const std::string& vendor = config_.vendor;
  if (!d.response.ok()) {
    const absl::Status& s = d.response.status();
    std::string message =
        fmt::format("could not reach {}'s token endpoint {} {}: {}", vendor, config_.token_url,
                    d.AttemptsText(), std::string(s.message()));
    return s.code() == absl::StatusCode::kDeadlineExceeded ? absl::DeadlineExceededError(message)
                                                           : absl::UnavailableError(message);
  }
  const HttpResponse& resp = *d.response;
  json body = json::parse(resp.body, nullptr, /*allow_exceptions=*/false);
  if (resp.status >= 200 && resp.status < 300) {
    auto tok = body.is_object() ? body.find("access_token") : body.end();
    if (!body.is_object() || tok == body.end() || !tok->is_string() ||
        tok->get_ref<const std::string&>().empty()) {
      return absl::FailedPreconditionError(fmt::format(
          "{}'s token endpoint {} answered HTTP {} without an access_token: check the token "
          "URL. It said: {}",
          vendor, config_.token_url, resp.status, BodySnippet(resp.body, 300)));
    }
    token_ = tok->get<std::string>();
    last_response_ = body;
    ++mints_;
    std::optional<std::chrono::seconds> lifetime = config_.lifetime_without_expires_in;
    auto expires = body.find("expires_in");
    if (expires != body.end() && expires->is_number_integer()) {
      lifetime = std::chrono::seconds(expires->get<int64_t>());
    } else if (expires != body.end() && expires->is_number()) {
      lifetime = std::chrono::seconds(static_cast<int64_t>(expires->get<double>()));
    } else if (expires != body.end() && expires->is_string()) {
      const std::string& text = expires->get_ref<const std::string&>();
      if (!text.empty() && text.size() < 10 &&
          std::all_of(text.begin(), text.end(), [](unsigned char c) { return std::isdigit(c); })) {
        lifetime = std::chrono::seconds(std::stoll(text));
      }
    }
    if (lifetime) {
      std::chrono::seconds margin = std::min(config_.expiry_margin, *lifetime / 2);
      refresh_at_ = clock_->Now() + *lifetime - margin;
    } else {
      refresh_at_.reset();
    }
    return token_;
  }
  std::string error;
  std::string description;
  if (body.is_object()) {
    if (auto e = body.find("error"); e != body.end() && e->is_string()) error = *e;
    if (auto e = body.find("error_description"); e != body.end() && e->is_string()) {
      description = *e;
    }
  }
  std::string said = error.empty() ? BodySnippet(resp.body, 300)
                                   : (description.empty() ? error : error + ": " + description);
  if (resp.status == 400 || resp.status == 401 || resp.status == 403) {
    std::string check;
    if (error == "invalid_client") {
      check = fmt::format("the client id \"{}\" or its secret was not accepted: check both",
                          config_.client_id);
    } else if (error == "unauthorized_client" || error == "unsupported_grant_type") {
      check = "the client may not use the client credentials grant";
    } else if (error == "invalid_scope") {
      check = fmt::format("the scope \"{}\" was refused", config_.scope);
    } else {
      check = "check the client id and secret";
    }
    std::string message = fmt::format("{} refused the client credentials grant (HTTP {}, {}): {}",
                                      vendor, resp.status, said, check);
    if (!config_.hint.empty()) message += ". " + config_.hint;
    return absl::UnauthenticatedError(message);
  }
  if (DefaultRetryableStatus(resp.status)) {
    return absl::UnavailableError(fmt::format("{}'s token endpoint {} answered HTTP {} {}: {}",
                                              vendor, config_.token_url, resp.status,
                                              d.AttemptsText(), said));
  }
  return absl::FailedPreconditionError(
      fmt::format("{}'s token endpoint {} answered HTTP {}: check the token URL. It said: {}",
                  vendor, config_.token_url, resp.status, said));
}

json ClientCredentialsTokenSource::LastTokenResponse() const {
  std::lock_guard<std::mutex> lock(mu_);
  return last_response_;
}

int64_t ClientCredentialsTokenSource::mint_count() const {
  std::lock_guard<std::mutex> lock(mu_);
  return mints_;
}

}  // namespace backflow
