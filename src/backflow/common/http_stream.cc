// libcurl implementation of HttpStreamClient (see http_stream.h).
//
// Each stream owns an easy handle driven through its own multi handle, so the
// caller's Read() pumps the transfer on the caller's thread: curl_multi_perform
// runs the protocol, the write callback appends to `pending_` and pauses the
// transfer (CURL_WRITEFUNC_PAUSE) once `pending_` holds max_buffered_bytes;
// Read() hands `pending_` over and resumes the transfer. No wall-clock limit
// applies to the whole transfer (a large result may take hours); the idle
// timeout is measured only while Read() waits, and TCP keepalive probes a
// silent peer.
#include "backflow/common/http_stream.h"

#include <curl/curl.h>

#include <algorithm>
#include <cctype>
#include <functional>
#include <memory>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "fmt/format.h"

namespace backflow {
namespace {

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

std::string LowerAscii(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

// The URL without its query string or fragment, which may carry secrets.
std::string RedactedUrl(const std::string& url) {
  size_t cut = url.find_first_of("?#");
  return cut == std::string::npos ? url : url.substr(0, cut) + "?...";
}

// Appends "name: value" from a header line to `out`; other lines are ignored.
void AddHeaderLine(std::string_view line, HttpHeaders& out) {
  size_t colon = line.find(':');
  if (colon == std::string_view::npos) return;
  out.emplace_back(LowerAscii(Trim(line.substr(0, colon))), Trim(line.substr(colon + 1)));
}

class CurlResponseStream final : public HttpResponseStream {
 public:
  CurlResponseStream(const HttpRequest& request, const HttpStreamOptions& options)
      : request_(request), options_(options) {}

  ~CurlResponseStream() override {
    if (multi_ != nullptr && easy_ != nullptr) curl_multi_remove_handle(multi_, easy_);
    if (easy_ != nullptr) curl_easy_cleanup(easy_);
    if (multi_ != nullptr) curl_multi_cleanup(multi_);
    if (header_list_ != nullptr) curl_slist_free_all(header_list_);
  }

  CurlResponseStream(const CurlResponseStream&) = delete;
  CurlResponseStream& operator=(const CurlResponseStream&) = delete;

  // Starts the transfer and waits for the response headers.
  absl::Status Start() {
    easy_ = curl_easy_init();
    multi_ = curl_multi_init();
    if (easy_ == nullptr || multi_ == nullptr) return absl::InternalError("curl init failed");
    CURL* h = easy_;
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, error_buffer_);
    curl_easy_setopt(h, CURLOPT_URL, request_.url.c_str());
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(h, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(h, CURLOPT_SSL_VERIFYHOST, 2L);
    curl_easy_setopt(h, CURLOPT_HTTP_VERSION, static_cast<long>(CURL_HTTP_VERSION_2TLS));
    curl_easy_setopt(h, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(h, CURLOPT_TCP_KEEPIDLE, 30L);
    curl_easy_setopt(h, CURLOPT_TCP_KEEPINTVL, 15L);
    curl_easy_setopt(h, CURLOPT_ACCEPT_ENCODING, "");  // any encoding curl can decode
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS,
                     std::max<long>(1, static_cast<long>(options_.connect_timeout.count())));
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, &OnBody);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, this);
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, &OnHeader);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, this);
    const std::string& method = request_.method;
    if (method == "GET") {
      curl_easy_setopt(h, CURLOPT_HTTPGET, 1L);
    } else if (method == "HEAD") {
      curl_easy_setopt(h, CURLOPT_NOBODY, 1L);
    } else {
      curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE,
                       static_cast<curl_off_t>(request_.body.size()));
      curl_easy_setopt(h, CURLOPT_POSTFIELDS, request_.body.data());
      if (method != "POST") curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method.c_str());
    }
    for (const auto& [name, value] : request_.headers) {
      std::string line = value.empty() ? name + ";" : name + ": " + value;
      header_list_ = curl_slist_append(header_list_, line.c_str());
    }
    header_list_ = curl_slist_append(header_list_, "Expect:");
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, header_list_);
    if (curl_multi_add_handle(multi_, h) != CURLM_OK) {
      return absl::InternalError("curl_multi_add_handle failed");
    }

    absl::Status s = Pump([this] { return headers_done_; }, "the response headers");
    if (!s.ok()) return s;
    if (!headers_done_ && result_ != CURLE_OK) return TransferError();
    long status = 0;  // NOLINT(runtime/int): libcurl's type
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
    status_ = static_cast<int>(status);
    if (status_ == 0) return TransferError();
    return absl::OkStatus();
  }

  int status() const override { return status_; }
  const HttpHeaders& headers() const override { return headers_; }
  const HttpHeaders& trailers() const override { return trailers_; }
  size_t peak_buffered_bytes() const override { return peak_; }

  absl::StatusOr<bool> Read(std::string& piece) override {
    if (!error_.ok()) return error_;
    while (true) {
      if (!pending_.empty()) {
        piece.swap(pending_);
        pending_.clear();
        Resume();  // may deliver held-back bytes into pending_ right away
        return true;
      }
      if (done_) {
        if (result_ != CURLE_OK) {
          error_ = TransferError();
          return error_;
        }
        return false;
      }
      if (paused_) {
        Resume();
        continue;
      }
      absl::Status s = Pump([this] { return !pending_.empty(); }, "more of the response body");
      if (!s.ok()) {
        error_ = s;
        return error_;
      }
    }
  }

 private:
  static size_t OnBody(char* data, size_t size, size_t nmemb, void* user) {
    auto* self = static_cast<CurlResponseStream*>(user);
    const size_t len = size * nmemb;
    if (self->pending_.size() >= self->options_.max_buffered_bytes) {
      self->paused_ = true;
      return CURL_WRITEFUNC_PAUSE;  // libcurl keeps these bytes and re-delivers them
    }
    self->pending_.append(data, len);
    self->peak_ = std::max(self->peak_, self->pending_.size());
    return len;
  }

  static size_t OnHeader(char* data, size_t size, size_t nmemb, void* user) {
    auto* self = static_cast<CurlResponseStream*>(user);
    const size_t len = size * nmemb;
    std::string_view line(data, len);
    if (self->headers_done_) {  // trailers of a chunked body
      AddHeaderLine(line, self->trailers_);
      return len;
    }
    if (line.starts_with("HTTP/")) {
      // A new response begins (e.g. after an interim 1xx): drop earlier headers.
      self->headers_.clear();
      self->line_status_ = 0;
      size_t sp = line.find(' ');
      if (sp != std::string_view::npos) {
        std::string code(line.substr(sp + 1, 3));
        self->line_status_ = std::atoi(code.c_str());
      }
      return len;
    }
    if (Trim(line).empty()) {
      if (self->line_status_ >= 200) self->headers_done_ = true;
      return len;
    }
    AddHeaderLine(line, self->headers_);
    return len;
  }

  void Resume() {
    if (!paused_) return;
    paused_ = false;
    curl_easy_pause(easy_, CURLPAUSE_CONT);
  }

  // Runs the transfer until `ready()` holds or it ended; kDeadlineExceeded
  // when nothing made `ready()` true within the idle timeout.
  absl::Status Pump(const std::function<bool()>& ready, std::string_view waiting_for) {
    const auto deadline = std::chrono::steady_clock::now() + options_.idle_timeout;
    while (true) {
      int running = 0;
      CURLMcode mc = curl_multi_perform(multi_, &running);
      if (mc != CURLM_OK) {
        return absl::InternalError(
            fmt::format("curl_multi_perform failed: {}", curl_multi_strerror(mc)));
      }
      int left = 0;
      while (CURLMsg* msg = curl_multi_info_read(multi_, &left)) {
        if (msg->msg == CURLMSG_DONE && msg->easy_handle == easy_) {
          done_ = true;
          result_ = msg->data.result;
        }
      }
      if (ready() || done_) return absl::OkStatus();
      const auto now = std::chrono::steady_clock::now();
      if (now >= deadline) {
        return absl::DeadlineExceededError(
            fmt::format("{} {}: no data for {} ms while waiting for {}", request_.method,
                        RedactedUrl(request_.url), options_.idle_timeout.count(), waiting_for));
      }
      const auto remaining =
          std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now).count();
      curl_multi_poll(multi_, nullptr, 0, static_cast<int>(std::clamp<int64_t>(remaining, 1, 1000)),
                      nullptr);
    }
  }

  absl::Status TransferError() const {
    std::string detail = error_buffer_[0] != '\0' ? error_buffer_ : curl_easy_strerror(result_);
    std::string message =
        fmt::format("{} {} failed: {}", request_.method, RedactedUrl(request_.url), detail);
    if (result_ == CURLE_OPERATION_TIMEDOUT) return absl::DeadlineExceededError(message);
    return absl::UnavailableError(message);
  }

  const HttpRequest request_;  // the transfer points into its url and body
  const HttpStreamOptions options_;
  CURL* easy_ = nullptr;
  CURLM* multi_ = nullptr;
  curl_slist* header_list_ = nullptr;
  char error_buffer_[CURL_ERROR_SIZE] = {0};
  int status_ = 0;
  int line_status_ = 0;  // status of the response whose headers are arriving
  HttpHeaders headers_;
  HttpHeaders trailers_;
  bool headers_done_ = false;
  bool paused_ = false;
  bool done_ = false;
  CURLcode result_ = CURLE_OK;
  std::string pending_;
  size_t peak_ = 0;
  absl::Status error_;
};

class CurlHttpStreamClient final : public HttpStreamClient {
 public:
  CurlHttpStreamClient() { EnsureCurlGlobalInit(); }

  absl::StatusOr<std::unique_ptr<HttpResponseStream>> Open(
      const HttpRequest& request, const HttpStreamOptions& options) override {
    auto stream = std::make_unique<CurlResponseStream>(request, options);
    absl::Status s = stream->Start();
    if (!s.ok()) return s;
    return std::unique_ptr<HttpResponseStream>(std::move(stream));
  }
};

}  // namespace

std::optional<std::string> HttpResponseStream::Header(std::string_view name) const {
  const std::string wanted = LowerAscii(std::string(name));
  for (const auto& [key, value] : headers()) {
    if (key == wanted) return value;
  }
  return std::nullopt;
}

std::unique_ptr<HttpStreamClient> NewCurlHttpStreamClient() {
  return std::make_unique<CurlHttpStreamClient>();
}

}  // namespace backflow
