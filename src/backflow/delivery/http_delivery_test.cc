#include "backflow/delivery/http_delivery.h"

#include <deque>
#include <set>
#include <string>
#include <vector>

#include "backflow/common/errors.h"
#include "gtest/gtest.h"

namespace backflow {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

// Answers from a script and records what it was sent.
class ScriptedHttp : public HttpClient {
 public:
  void Reply(int status, HttpHeaders headers = {}, std::string body = "") {
    HttpResponse r;
    r.status = status;
    r.headers = std::move(headers);
    r.body = std::move(body);
    script_.push_back(r);
  }
  void Fail(absl::Status s) { script_.push_back(s); }

  absl::StatusOr<HttpResponse> Send(const HttpRequest& request) override {
    sent.push_back(request);
    if (script_.empty()) return absl::InternalError("script exhausted");
    absl::StatusOr<HttpResponse> r = script_.front();
    script_.pop_front();
    return r;
  }

  std::vector<HttpRequest> sent;

 private:
  std::deque<absl::StatusOr<HttpResponse>> script_;
};

HttpRequest Post() {
  HttpRequest r;
  r.url = "http://127.0.0.1:1/v1/batch";
  r.body = "{}";
  return r;
}

TEST(HttpDeliveryTest, RetriesTransientFailuresThenSucceeds) {
  ScriptedHttp http;
  http.Fail(absl::UnavailableError("connection reset"));
  http.Reply(503);
  http.Reply(200, {}, "ok");
  FakeClock clock;
  RetryPolicy policy;
  policy.base_backoff = milliseconds(100);
  HttpDelivery d(&http, &clock, {}, policy);
  DeliveryResult r = d.Send(Post);
  ASSERT_TRUE(r.response.ok());
  EXPECT_EQ(r.response->status, 200);
  EXPECT_EQ(r.attempts, 3);
  EXPECT_EQ(http.sent.size(), 3u);
  // Full jitter: the two waits are at most 100 ms and 200 ms.
  EXPECT_LE(clock.total_slept(), milliseconds(300));
}

TEST(HttpDeliveryTest, HonoursRetryAfterCappedByMaxWait) {
  ScriptedHttp http;
  http.Reply(429, {{"retry-after", "7"}});
  http.Reply(429, {{"retry-after", "9999"}});
  http.Reply(200);
  FakeClock clock;
  RetryPolicy policy;
  policy.max_wait = seconds(60);
  HttpDelivery d(&http, &clock, {}, policy);
  DeliveryResult r = d.Send(Post);
  ASSERT_TRUE(r.response.ok());
  EXPECT_EQ(clock.total_slept(), seconds(7) + seconds(60));
}

TEST(HttpDeliveryTest, VendorWaitHeaderIsUsed) {
  ScriptedHttp http;
  FakeClock clock;
  auto now_s = std::chrono::duration_cast<seconds>(clock.Now().time_since_epoch()).count();
  http.Reply(429, {{"x-ratelimit-reset", std::to_string(now_s + 12)}});
  http.Reply(200);
  VendorRules rules;
  rules.requested_wait = [](const HttpResponse& r, Clock::TimePoint now) {
    return WaitUntilEpochSeconds(r.Header("x-ratelimit-reset").value_or(""), now);
  };
  HttpDelivery d(&http, &clock, {}, RetryPolicy{}, rules);
  ASSERT_TRUE(d.Send(Post).response.ok());
  EXPECT_EQ(clock.total_slept(), seconds(12));
}

TEST(HttpDeliveryTest, GivesUpAfterMaxRetriesWithRetryClass) {
  ScriptedHttp http;
  for (int i = 0; i < 3; ++i) http.Reply(429, {{"retry-after", "2"}}, "slow down");
  FakeClock clock;
  RetryPolicy policy;
  policy.max_retries = 2;
  HttpDelivery d(&http, &clock, {}, policy);
  DeliveryResult r = d.Send(Post);
  EXPECT_EQ(r.attempts, 3);
  absl::Status s = d.FailureStatus(r, "Segment");
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(RetryAfter(s), milliseconds(2000));
  EXPECT_NE(s.message().find("after 3 attempts"), std::string_view::npos) << s;
  EXPECT_NE(s.message().find("slow down"), std::string_view::npos) << s;
}

TEST(HttpDeliveryTest, NoRetryWhenAskedAndPermanentFailuresAreNotRetried) {
  ScriptedHttp http;
  http.Reply(503);
  http.Reply(400, {}, "bad field");
  FakeClock clock;
  HttpDelivery d(&http, &clock, {}, RetryPolicy{});
  DeliveryResult once = d.Send(Post, /*retry=*/false);
  EXPECT_EQ(once.attempts, 1);
  DeliveryResult bad = d.Send(Post);
  EXPECT_EQ(bad.attempts, 1);
  EXPECT_EQ(d.FailureStatus(bad, "X").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(clock.total_slept(), Clock::Duration(0));
}

TEST(HttpDeliveryTest, ClassifiesAuthAndTransportFailures) {
  ScriptedHttp http;
  http.Reply(401);
  http.Reply(403);
  http.Fail(absl::DeadlineExceededError("timed out"));
  FakeClock clock;
  HttpDelivery d(&http, &clock, {}, RetryPolicy{});
  EXPECT_EQ(d.FailureStatus(d.Send(Post), "X").code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(d.FailureStatus(d.Send(Post), "X").code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(d.FailureStatus(d.Send(Post, false), "X").code(), absl::StatusCode::kDeadlineExceeded);
}

class CountingTokens : public TokenSource {
 public:
  absl::StatusOr<std::string> Token(bool refresh) override {
    if (refresh) ++mints;
    if (fail_refresh && refresh) return absl::UnauthenticatedError("key revoked");
    return "tok" + std::to_string(mints);
  }
  int mints = 0;
  bool fail_refresh = false;
};

TEST(HttpDeliveryTest, RefreshesTokenOnceOn401) {
  ScriptedHttp http;
  http.Reply(401);
  http.Reply(200);
  FakeClock clock;
  CountingTokens tokens;
  HttpDelivery d(&http, &clock, {}, RetryPolicy{}, {}, &tokens);
  DeliveryResult r = d.Send(Post, /*retry=*/false);
  ASSERT_TRUE(r.response.ok());
  EXPECT_EQ(r.response->status, 200);
  ASSERT_EQ(http.sent.size(), 2u);
  EXPECT_EQ(http.sent[0].headers.back().second, "Bearer tok0");
  EXPECT_EQ(http.sent[1].headers.back().second, "Bearer tok1");

  // A second 401 after the refresh is final.
  http.Reply(401);
  http.Reply(401);
  DeliveryResult again = d.Send(Post);
  EXPECT_EQ(d.FailureStatus(again, "X").code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(tokens.mints, 2);
}

TEST(HttpDeliveryTest, FailedRefreshStopsWithTheTokenError) {
  ScriptedHttp http;
  http.Reply(401);
  FakeClock clock;
  CountingTokens tokens;
  tokens.fail_refresh = true;
  HttpDelivery d(&http, &clock, {}, RetryPolicy{}, {}, &tokens);
  DeliveryResult r = d.Send(Post);
  absl::Status s = d.FailureStatus(r, "X");
  EXPECT_EQ(s.code(), absl::StatusCode::kUnauthenticated);
  EXPECT_NE(s.message().find("key revoked"), std::string_view::npos);
  EXPECT_EQ(http.sent.size(), 1u);
}

TEST(HttpDeliveryTest, EveryAttemptAcquiresEveryLimiter) {
  ScriptedHttp http;
  for (int i = 0; i < 4; ++i) http.Reply(500);
  http.Reply(200);
  FakeClock clock;
  RateLimiter vendor(clock, 2, seconds(10));  // "2 per 10 seconds"
  RetryPolicy policy;
  policy.base_backoff = milliseconds(1);
  HttpDelivery d(&http, &clock, {&vendor, nullptr}, policy);
  const Clock::TimePoint start = clock.Now();
  ASSERT_TRUE(d.Send(Post).response.ok());
  // Five starts at 2 per 10 s: the fifth cannot start before start + 20 s.
  EXPECT_GE(clock.Now() - start, seconds(20));
  EXPECT_LT(clock.Now() - start, seconds(21));
  EXPECT_GT(vendor.total_wait(), seconds(19));
}

TEST(RetryAfterTest, ParsesSecondsDatesAndEpochResets) {
  FakeClock clock;
  EXPECT_EQ(ParseRetryAfter(" 5 ", clock.Now()), milliseconds(5000));
  EXPECT_EQ(ParseRetryAfter("Sun, 06 Nov 1994 08:49:37 GMT", clock.Now()), milliseconds(0));
  EXPECT_EQ(ParseRetryAfter("soon", clock.Now()), std::nullopt);
  auto now_s = std::chrono::duration_cast<seconds>(clock.Now().time_since_epoch()).count();
  EXPECT_EQ(WaitUntilEpochSeconds(std::to_string(now_s + 3), clock.Now()), milliseconds(3000));
  EXPECT_EQ(WaitUntilEpochSeconds(std::to_string(now_s - 3), clock.Now()), milliseconds(0));
  EXPECT_EQ(WaitUntilEpochSeconds("12abc", clock.Now()), std::nullopt);
}

std::vector<OutgoingRecord> Records(int n) {
  std::vector<OutgoingRecord> out(n);
  for (int i = 0; i < n; ++i) out[i].key = std::to_string(i);
  return out;
}

TEST(SendBisectingTest, IsolatesThePoisonRecords) {
  std::vector<OutgoingRecord> records = Records(8);
  const std::set<std::string> poison = {"2", "5"};
  int requests = 0;
  auto send = [&](std::span<const OutgoingRecord> part) -> absl::StatusOr<PartOutcome> {
    ++requests;
    for (const OutgoingRecord& r : part) {
      if (poison.count(r.key))
        return PartOutcome::Split(absl::InvalidArgumentError("bad " + r.key));
    }
    return PartOutcome::AllRecords(part.size(), absl::OkStatus());
  };
  absl::StatusOr<std::vector<absl::Status>> out = SendBisecting(records, send);
  ASSERT_TRUE(out.ok());
  ASSERT_EQ(out->size(), 8u);
  for (int i = 0; i < 8; ++i) {
    bool bad = poison.count(std::to_string(i)) > 0;
    EXPECT_EQ((*out)[i].ok(), !bad) << i;
    if (bad) {
      EXPECT_EQ((*out)[i].message(), "bad " + std::to_string(i));
    }
  }
  EXPECT_LE(requests, 1 + 2 + 4 + 4);
}

TEST(SendBisectingTest, StopBeforeAnythingDeliveredStopsTheRun) {
  std::vector<OutgoingRecord> records = Records(4);
  auto send = [&](std::span<const OutgoingRecord>) -> absl::StatusOr<PartOutcome> {
    return absl::UnauthenticatedError("bad key");
  };
  EXPECT_EQ(SendBisecting(records, send).status().code(), absl::StatusCode::kUnauthenticated);
}

TEST(SendBisectingTest, StopAfterPartialDeliveryBecomesPerRecord) {
  std::vector<OutgoingRecord> records = Records(4);
  int calls = 0;
  auto send = [&](std::span<const OutgoingRecord> part) -> absl::StatusOr<PartOutcome> {
    ++calls;
    if (calls == 1) return PartOutcome::Split(absl::InvalidArgumentError("too big"));
    if (calls == 2) return PartOutcome::AllRecords(part.size(), absl::OkStatus());
    return absl::UnauthenticatedError("key revoked mid-run");
  };
  absl::StatusOr<std::vector<absl::Status>> out = SendBisecting(records, send);
  ASSERT_TRUE(out.ok());
  EXPECT_TRUE((*out)[0].ok());
  EXPECT_TRUE((*out)[1].ok());
  EXPECT_EQ((*out)[2].code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ((*out)[3].code(), absl::StatusCode::kUnauthenticated);
}

TEST(SendBisectingTest, WrongResultCountIsAnInternalError) {
  std::vector<OutgoingRecord> records = Records(3);
  auto send = [&](std::span<const OutgoingRecord>) -> absl::StatusOr<PartOutcome> {
    return PartOutcome::PerRecord({absl::OkStatus()});
  };
  EXPECT_EQ(SendBisecting(records, send).status().code(), absl::StatusCode::kInternal);
}

}  // namespace
}  // namespace backflow
