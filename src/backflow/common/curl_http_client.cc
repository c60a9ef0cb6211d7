// libcurl implementation of HttpClient (see http_client.h for the contract).
//
// Thread-safe: each Send() borrows an easy handle from the client's pool (a
// new one when all are busy) and returns it afterwards; a handle is reset
// between requests so that its connection cache survives (keep-alive). No redirects are followed,
// TLS peers and host names are verified, HTTP/2 is used when the server offers it over TLS, and
// "Expect: 100-continue" is never sent.
//
// Note: like every libcurl user, this client inherits libcurl's one silent
// re-send when a *reused* keep-alive connection turns out to be dead before
// any reply byte arrives (the server closed it while idle). A receiver can
// therefore, rarely, see the same request twice; connectors send stable
// idempotency keys for exactly this reason, and requests marked
// non-idempotent get a fresh connection so this cannot happen to them.
#include <curl/curl.h>

#include <algorithm>
#include <cctype>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "backflow/common/http_client.h"
#include "fmt/format.h"

namespace backflow {

std::optional<std::string> HttpResponse::Header(std::string_view name) const {
  for (const auto& [key, value] : headers) {
    if (key.size() != name.size()) continue;
    bool same = true;
    for (size_t i = 0; i < key.size() && same; ++i) {
      same = std::tolower(static_cast<unsigned char>(key[i])) ==
             std::tolower(static_cast<unsigned char>(name[i]));
    }
    if (same) return value;
  }
  return std::nullopt;
}

namespace {

// curl_global_init is not thread-safe on older libcurl; run it exactly once.
void EnsureCurlGlobalInit() {
  static const CURLcode kInit = curl_global_init(CURL_GLOBAL_DEFAULT);
  (void)kInit;
}

std::string Trim(std::string_view s) {
  size_t b = 0;
  size_t e = s.size();
  while (b < e && (s[b] == ' ' || s[b] == '\t' || s[b] == '\r' || s[b] == '\n')) ++b;
  while (e > b && (s[e - 1] == ' ' || s[e - 1] == '\t' || s[e - 1] == '\r' || s[e - 1] == '\n')) {
    --e;
  }
  return std::string(s.substr(b, e - b));
}

// The URL without its query string or fragment, which may carry secrets.
std::string RedactedUrl(const std::string& url) {
  size_t cut = url.find_first_of("?#");
  return cut == std::string::npos ? url : url.substr(0, cut) + "?...";
}

struct Exchange {
  HttpResponse response;
};

size_t OnBody(char* data, size_t size, size_t nmemb, void* user) {
  auto* ex = static_cast<Exchange*>(user);
  ex->response.body.append(data, size * nmemb);
  return size * nmemb;
}

size_t OnHeader(char* data, size_t size, size_t nmemb, void* user) {
  auto* ex = static_cast<Exchange*>(user);
  std::string_view line(data, size * nmemb);
  if (line.starts_with("HTTP/")) {
    // A new response begins (e.g. after an interim 1xx): drop earlier headers.
    ex->response.headers.clear();
    return size * nmemb;
  }
  size_t colon = line.find(':');
  if (colon == std::string_view::npos) return size * nmemb;  // blank line or junk
  std::string name = Trim(line.substr(0, colon));
  std::transform(name.begin(), name.end(), name.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  ex->response.headers.emplace_back(std::move(name), Trim(line.substr(colon + 1)));
  return size * nmemb;
}

struct SlistDeleter {
  void operator()(curl_slist* list) const { curl_slist_free_all(list); }
};

class CurlHttpClient final : public HttpClient {
 public:
  CurlHttpClient() { EnsureCurlGlobalInit(); }
  ~CurlHttpClient() override {
    for (CURL* h : idle_) curl_easy_cleanup(h);
  }
  CurlHttpClient(const CurlHttpClient&) = delete;
  CurlHttpClient& operator=(const CurlHttpClient&) = delete;

  absl::StatusOr<HttpResponse> Send(const HttpRequest& request) override {
    CURL* h = Borrow();
    if (h == nullptr) return absl::InternalError("curl_easy_init failed");
    absl::StatusOr<HttpResponse> out = Perform(h, request);
    Return(h);
    return out;
  }

 private:
  CURL* Borrow() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!idle_.empty()) {
        CURL* h = idle_.back();
        idle_.pop_back();
        return h;
      }
    }
    return curl_easy_init();
  }

  void Return(CURL* h) {
    std::lock_guard<std::mutex> lock(mu_);
    idle_.push_back(h);
  }

  static absl::StatusOr<HttpResponse> Perform(CURL* h, const HttpRequest& request) {
    curl_easy_reset(h);  // keeps live connections, DNS and TLS session caches

    char error_buffer[CURL_ERROR_SIZE] = {0};
    Exchange ex;
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, error_buffer);
    curl_easy_setopt(h, CURLOPT_URL, request.url.c_str());
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(h, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(h, CURLOPT_SSL_VERIFYHOST, 2L);
    curl_easy_setopt(h, CURLOPT_HTTP_VERSION, static_cast<long>(CURL_HTTP_VERSION_2TLS));
    curl_easy_setopt(h, CURLOPT_TCP_KEEPALIVE, 1L);
    // A reused connection may be re-sent on transparently: not for these.
    if (!request.idempotent) curl_easy_setopt(h, CURLOPT_FRESH_CONNECT, 1L);
    curl_easy_setopt(h, CURLOPT_ACCEPT_ENCODING, "");  // any encoding curl can decode
    long timeout_ms = std::max<long>(1, static_cast<long>(request.timeout.count()));
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, timeout_ms);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, std::min<long>(timeout_ms, 30'000L));
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, &OnBody);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &ex);
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, &OnHeader);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, &ex);

    const std::string& method = request.method;
    if (method == "GET") {
      curl_easy_setopt(h, CURLOPT_HTTPGET, 1L);
    } else if (method == "HEAD") {
      curl_easy_setopt(h, CURLOPT_NOBODY, 1L);
    } else {
      // POSTFIELDS sends the body with a Content-Length (never chunked).
      curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE,
                       static_cast<curl_off_t>(request.body.size()));
      curl_easy_setopt(h, CURLOPT_POSTFIELDS, request.body.data());
      if (method != "POST") curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method.c_str());
    }

    curl_slist* raw_list = nullptr;
    for (const auto& [name, value] : request.headers) {
      std::string line = value.empty() ? name + ";" : name + ": " + value;
      raw_list = curl_slist_append(raw_list, line.c_str());
    }
    raw_list = curl_slist_append(raw_list, "Expect:");
    std::unique_ptr<curl_slist, SlistDeleter> header_list(raw_list);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, header_list.get());

    CURLcode rc = curl_easy_perform(h);
    // The handle keeps pointers to the request; drop them before returning.
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, nullptr);
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, nullptr);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, nullptr);
    if (rc != CURLE_OK) {
      std::string detail = error_buffer[0] != '\0' ? error_buffer : curl_easy_strerror(rc);
      std::string message =
          fmt::format("{} {} failed: {}", method, RedactedUrl(request.url), detail);
      if (rc == CURLE_OPERATION_TIMEDOUT) {
        return absl::DeadlineExceededError(
            fmt::format("{} (timeout {} ms)", message, request.timeout.count()));
      }
      return absl::UnavailableError(message);
    }
    long status = 0;
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
    ex.response.status = static_cast<int>(status);
    return std::move(ex.response);
  }

  std::mutex mu_;
  std::vector<CURL*> idle_;  // handles not in use, each with its own live connections
};

}  // namespace

std::unique_ptr<HttpClient> NewCurlHttpClient() { return std::make_unique<CurlHttpClient>(); }

}  // namespace backflow
