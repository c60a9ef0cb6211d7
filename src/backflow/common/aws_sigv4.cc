#include "backflow/common/aws_sigv4.h"

#include <algorithm>
#include <cctype>
#include <ctime>
#include <map>
#include <utility>

#include "backflow/common/crypto.h"
#include "backflow/common/url.h"
#include "fmt/format.h"

namespace backflow {
namespace {

constexpr char kAlgorithm[] = "AWS4-HMAC-SHA256";

std::string Lower(std::string_view s) {
  std::string out(s);
  std::transform(out.begin(), out.end(), out.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return out;
}

// Trims and collapses runs of spaces and tabs into one space.
std::string CanonicalHeaderValue(std::string_view v) {
  std::string out;
  bool space = false;
  for (char c : v) {
    if (c == ' ' || c == '\t') {
      space = !out.empty();
      continue;
    }
    if (space) out.push_back(' ');
    space = false;
    out.push_back(c);
  }
  return out;
}

std::string_view Trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

}  // namespace

std::string AwsAmzDate(Clock::TimePoint t) {
  std::time_t secs = static_cast<std::time_t>(
      std::chrono::duration_cast<std::chrono::seconds>(t.time_since_epoch()).count());
  std::tm tm{};
  gmtime_r(&secs, &tm);
  return fmt::format("{:04}{:02}{:02}T{:02}{:02}{:02}Z", tm.tm_year + 1900, tm.tm_mon + 1,
                     tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
}

std::string SigV4SigningKey(std::string_view secret_access_key, std::string_view date,
                            std::string_view region, std::string_view service) {
  std::string key = HmacSha256("AWS4" + std::string(secret_access_key), date);
  key = HmacSha256(key, region);
  key = HmacSha256(key, service);
  return HmacSha256(key, "aws4_request");
}

std::string SigV4CanonicalQuery(std::string_view query) {
  std::vector<std::pair<std::string, std::string>> pairs;
  for (auto& [name, value] : ParseQueryPairs(query)) {
    pairs.emplace_back(PercentEncode(name), PercentEncode(value));
  }
  std::sort(pairs.begin(), pairs.end());
  std::string out;
  for (const auto& [name, value] : pairs) {
    if (!out.empty()) out.push_back('&');
    out += name + "=" + value;
  }
  return out;
}

SigV4Signature ComputeSigV4(const SigV4Request& request, const AwsCredentials& credentials,
                            std::string_view region, std::string_view service,
                            std::string_view amz_date) {
  std::map<std::string, std::string> headers;  // sorted by lowercase name
  for (const auto& [name, value] : request.headers) {
    std::string key = Lower(name);
    std::string v = CanonicalHeaderValue(value);
    auto [it, inserted] = headers.emplace(key, v);
    if (!inserted) it->second += "," + v;
  }
  SigV4Signature out;
  std::string canonical_headers;
  for (const auto& [name, value] : headers) {
    canonical_headers += name + ":" + value + "\n";
    if (!out.signed_headers.empty()) out.signed_headers.push_back(';');
    out.signed_headers += name;
  }
  out.canonical_request =
      fmt::format("{}\n{}\n{}\n{}\n{}\n{}", request.method,
                  request.path.empty() ? "/" : request.path, SigV4CanonicalQuery(request.query),
                  canonical_headers, out.signed_headers, HexEncode(Sha256(request.payload)));
  std::string date(amz_date.substr(0, 8));
  std::string scope = fmt::format("{}/{}/{}/aws4_request", date, region, service);
  out.string_to_sign = fmt::format("{}\n{}\n{}\n{}", kAlgorithm, amz_date, scope,
                                   HexEncode(Sha256(out.canonical_request)));
  out.signature = HexEncode(HmacSha256(
      SigV4SigningKey(credentials.secret_access_key, date, region, service), out.string_to_sign));
  out.authorization =
      fmt::format("{} Credential={}/{}, SignedHeaders={}, Signature={}", kAlgorithm,
                  credentials.access_key_id, scope, out.signed_headers, out.signature);
  return out;
}

absl::Status SignAwsRequest(HttpRequest& request, const AwsCredentials& credentials,
                            std::string_view region, std::string_view service,
                            Clock::TimePoint now) {
  std::string_view url = request.url;
  size_t scheme = url.find("://");
  std::string_view lower_scheme = scheme == std::string_view::npos ? "" : url.substr(0, scheme);
  if (Lower(lower_scheme) != "http" && Lower(lower_scheme) != "https") {
    return absl::InvalidArgumentError("an AWS endpoint must be an http(s):// URL");
  }
  std::string_view rest = url.substr(scheme + 3);
  size_t path_start = rest.find_first_of("/?#");
  std::string_view host = rest.substr(0, path_start);
  if (size_t at = host.rfind('@'); at != std::string_view::npos) host.remove_prefix(at + 1);
  if (host.empty()) return absl::InvalidArgumentError("an AWS endpoint URL must name a host");
  std::string_view target = path_start == std::string_view::npos ? "" : rest.substr(path_start);
  if (size_t hash = target.find('#'); hash != std::string_view::npos)
    target = target.substr(0, hash);
  std::string_view path = target;
  std::string_view query;
  if (size_t q = target.find('?'); q != std::string_view::npos) {
    path = target.substr(0, q);
    query = target.substr(q + 1);
  }

  std::string amz_date = AwsAmzDate(now);
  // Signed afresh on every attempt: drop what an earlier signing added.
  std::erase_if(request.headers, [](const auto& h) {
    std::string name = Lower(h.first);
    return name == "authorization" || name == "x-amz-date" || name == "x-amz-security-token";
  });
  request.headers.emplace_back("X-Amz-Date", amz_date);
  if (!credentials.session_token.empty()) {
    request.headers.emplace_back("X-Amz-Security-Token", credentials.session_token);
  }
  SigV4Request sig;
  sig.method = request.method;
  sig.path = std::string(path);
  sig.query = std::string(query);
  sig.payload = request.body;
  bool has_host = false;
  for (const auto& h : request.headers) has_host = has_host || Lower(h.first) == "host";
  if (!has_host) sig.headers.emplace_back("host", Lower(host));
  for (const auto& h : request.headers) sig.headers.push_back(h);
  SigV4Signature signature = ComputeSigV4(sig, credentials, region, service, amz_date);
  request.headers.emplace_back("Authorization", signature.authorization);
  return absl::OkStatus();
}

absl::StatusOr<SigV4Authorization> ParseSigV4Authorization(std::string_view header) {
  header = Trim(header);
  std::string_view prefix = kAlgorithm;
  if (!header.starts_with(prefix) || header.size() == prefix.size() ||
      header[prefix.size()] != ' ') {
    return absl::InvalidArgumentError("Authorization header does not start with AWS4-HMAC-SHA256");
  }
  header.remove_prefix(prefix.size());
  std::map<std::string, std::string> parts;
  while (!header.empty()) {
    size_t comma = header.find(',');
    std::string_view part = Trim(header.substr(0, comma));
    header = comma == std::string_view::npos ? "" : header.substr(comma + 1);
    size_t eq = part.find('=');
    if (eq == std::string_view::npos) {
      return absl::InvalidArgumentError(
          fmt::format("Authorization header component without '=': {}", part.substr(0, 40)));
    }
    parts[std::string(part.substr(0, eq))] = std::string(part.substr(eq + 1));
  }
  for (const char* key : {"Credential", "SignedHeaders", "Signature"}) {
    if (!parts.contains(key)) {
      return absl::InvalidArgumentError(fmt::format("Authorization header is missing {}", key));
    }
  }
  SigV4Authorization out;
  std::vector<std::string> scope;
  std::string_view credential = parts["Credential"];
  while (true) {
    size_t slash = credential.find('/');
    scope.emplace_back(credential.substr(0, slash));
    if (slash == std::string_view::npos) break;
    credential.remove_prefix(slash + 1);
  }
  if (scope.size() != 5 || scope[4] != "aws4_request" || scope[1].size() != 8) {
    return absl::InvalidArgumentError(
        "Credential must be <access key id>/<YYYYMMDD>/<region>/<service>/aws4_request");
  }
  out.access_key_id = scope[0];
  out.date = scope[1];
  out.region = scope[2];
  out.service = scope[3];
  std::string_view signed_headers = parts["SignedHeaders"];
  while (!signed_headers.empty()) {
    size_t semi = signed_headers.find(';');
    out.signed_headers.emplace_back(signed_headers.substr(0, semi));
    if (semi == std::string_view::npos) break;
    signed_headers.remove_prefix(semi + 1);
  }
  out.signature = parts["Signature"];
  return out;
}

}  // namespace backflow
