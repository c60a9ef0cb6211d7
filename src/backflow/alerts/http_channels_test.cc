// The webhook and Slack alert channels against loopback fakes, through the
// real libcurl HttpClient.
#include "backflow/alerts/http_channels.h"

#include <gtest/gtest.h>

#include <deque>
#include <mutex>

#include "backflow/alerts/alert_manager.h"
#include "backflow/alerts/testing/fake_slack_webhook.h"
#include "backflow/common/errors.h"
#include "backflow/testing/http_test_server.h"
#include "fmt/format.h"
#include "nlohmann/json.hpp"

namespace backflow {
namespace {

using std::chrono::seconds;

AlertMessage FailureMessage() {
  AlertMessage m;
  m.id = "oncall:crm:failure:42";
  m.alert = "oncall";
  m.kind = AlertKind::kFailure;
  m.incident = AlertKind::kFailure;
  m.run.id = 42;
  m.run.mapping = "crm";
  m.run.model = "customers";
  m.run.destination = "hub";
  m.run.trigger = "schedule";
  m.run.status = RunStatus::kFailed;
  m.run.started_at = "2026-03-01T09:00:00.000Z";
  m.run.finished_at = "2026-03-01T09:00:05.500Z";
  m.run.duration_s = 5.5;
  m.run.error = "HubSpot answered 401 <Unauthorized> & gave up";
  m.run.counts.extracted = 120;
  m.run.counts.added = 3;
  m.run.counts.updated = 7;
  m.run.counts.deleted = 1;
  m.run.counts.unchanged = 109;
  m.run.counts.skipped = 0;
  m.run.counts.succeeded = 8;
  m.run.counts.failed = 2;
  m.run.counts.rejected = 1;
  m.failed_share_percent = FailedRecordShare(m.run.counts);
  m.threshold_percent = 10;
  m.incident_started_at = m.run.started_at;
  m.incident_first_run_id = 42;
  m.failing_runs = 1;
  DescribeAlert(m);
  return m;
}

// A loopback webhook receiver answering from a script (200 when empty).
class Receiver {
 public:
  Receiver()
      : server_([this](const TestRequest& r) {
          std::lock_guard<std::mutex> lock(mu_);
          requests_.push_back(r);
          if (script_.empty()) return TestResponse::Json(200, "{}");
          TestResponse reply = script_.front();
          script_.pop_front();
          return reply;
        }) {}
  absl::Status Start() { return server_.Start(); }
  std::string Url(std::string_view path) const { return server_.Url(path); }
  void Reply(int status, std::string body, TestHeaders headers = {}) {
    TestResponse r;
    r.status = status;
    r.body = std::move(body);
    r.headers = std::move(headers);
    std::lock_guard<std::mutex> lock(mu_);
    script_.push_back(r);
  }
  std::vector<TestRequest> Requests() {
    std::lock_guard<std::mutex> lock(mu_);
    return requests_;
  }

 private:
  std::mutex mu_;
  std::vector<TestRequest> requests_;
  std::deque<TestResponse> script_;
  HttpTestServer server_;
};

class HttpChannelsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(receiver_.Start().ok());
    ASSERT_TRUE(slack_.Start().ok());
  }
  std::unique_ptr<HttpClient> http_ = NewCurlHttpClient();
  FakeClock clock_;
  Receiver receiver_;
  FakeSlackWebhook slack_;
};

TEST_F(HttpChannelsTest, WebhookPostsEveryFieldOfTheAlert) {
  AlertConfig::Webhook config;
  config.url = receiver_.Url("/hooks/backflow?token=planted-query-secret");
  config.headers = {{"Authorization", "Bearer planted-header-secret"}, {"X-Team", "data"}};
  WebhookAlertChannel channel(config, *http_, clock_, {});
  AlertMessage m = FailureMessage();
  ASSERT_TRUE(channel.Send(m).ok());

  std::vector<TestRequest> requests = receiver_.Requests();
  ASSERT_EQ(requests.size(), 1u);
  const TestRequest& r = requests[0];
  EXPECT_EQ(r.method, "POST");
  EXPECT_EQ(r.target, "/hooks/backflow?token=planted-query-secret");
  EXPECT_EQ(r.Header("content-type"), "application/json");
  EXPECT_EQ(r.Header("idempotency-key"), "oncall:crm:failure:42");
  EXPECT_EQ(r.Header("authorization"), "Bearer planted-header-secret");
  EXPECT_EQ(r.Header("x-team"), "data");
  EXPECT_EQ(r.Header("user-agent"), "backflow-alerts");

  nlohmann::json body = nlohmann::json::parse(r.body);
  EXPECT_EQ(body["id"], "oncall:crm:failure:42");
  EXPECT_EQ(body["alert"], "oncall");
  EXPECT_EQ(body["kind"], "failure");
  EXPECT_EQ(body["incident"], "failure");
  EXPECT_EQ(body["mapping"], "crm");
  EXPECT_EQ(body["model"], "customers");
  EXPECT_EQ(body["destination"], "hub");
  EXPECT_EQ(body["run_id"], 42);
  EXPECT_EQ(body["status"], "failed");
  EXPECT_EQ(body["trigger"], "schedule");
  EXPECT_EQ(body["started_at"], "2026-03-01T09:00:00.000Z");
  EXPECT_EQ(body["finished_at"], "2026-03-01T09:00:05.500Z");
  EXPECT_DOUBLE_EQ(body["duration_s"].get<double>(), 5.5);
  EXPECT_EQ(body["error"], "HubSpot answered 401 <Unauthorized> & gave up");
  EXPECT_EQ(body["counts"], nlohmann::json({{"extracted", 120},
                                            {"added", 3},
                                            {"updated", 7},
                                            {"deleted", 1},
                                            {"unchanged", 109},
                                            {"skipped", 0},
                                            {"succeeded", 8},
                                            {"failed", 2},
                                            {"rejected", 1}}));
  EXPECT_NEAR(body["failed_share_percent"].get<double>(), 27.27, 0.01);
  EXPECT_DOUBLE_EQ(body["threshold_percent"].get<double>(), 10);
  EXPECT_EQ(body["incident_started_at"], "2026-03-01T09:00:00.000Z");
  EXPECT_EQ(body["incident_first_run_id"], 42);
  EXPECT_EQ(body["failing_runs"], 1);
  EXPECT_EQ(body["subject"], "[Backflow] crm failed (run 42)");
  EXPECT_EQ(body["summary"],
            "Mapping crm (customers -> hub) failed in run 42: HubSpot answered 401 "
            "<Unauthorized> & gave up");
  EXPECT_EQ(body.size(), 22u) << body.dump();
}

TEST_F(HttpChannelsTest, WebhookNullErrorWhenTheRunHasNone) {
  AlertConfig::Webhook config;
  config.url = receiver_.Url("/h");
  WebhookAlertChannel channel(config, *http_, clock_, {});
  AlertMessage m = FailureMessage();
  m.run.error.clear();
  ASSERT_TRUE(channel.Send(m).ok());
  EXPECT_TRUE(nlohmann::json::parse(receiver_.Requests()[0].body)["error"].is_null());
}

TEST_F(HttpChannelsTest, WebhookRepliesMapToRetryClassesWithoutLeakingTheUrl) {
  AlertConfig::Webhook config;
  config.url = receiver_.Url("/hooks/planted-path-secret?token=planted-query-secret");
  WebhookAlertChannel channel(config, *http_, clock_, {});
  struct Case {
    int status;
    absl::StatusCode code;
  };
  for (Case c :
       {Case{500, absl::StatusCode::kUnavailable}, Case{503, absl::StatusCode::kUnavailable},
        Case{401, absl::StatusCode::kUnauthenticated},
        Case{403, absl::StatusCode::kPermissionDenied},
        Case{404, absl::StatusCode::kFailedPrecondition},
        Case{422, absl::StatusCode::kInvalidArgument}}) {
    receiver_.Reply(c.status, "{\"error\":\"nope\"}");
    absl::Status s = channel.Send(FailureMessage());
    EXPECT_EQ(s.code(), c.code) << c.status << ": " << s;
    EXPECT_NE(s.message().find(fmt::format("answered {}: {{\"error\":\"nope\"}}", c.status)),
              std::string::npos)
        << s;
    EXPECT_NE(s.message().find("alert webhook " + receiver_.Url("/") + "… answered"),
              std::string::npos)
        << s;
    EXPECT_EQ(s.message().find("planted"), std::string::npos) << s;
  }
  receiver_.Reply(429, "slow down", {{"Retry-After", "12"}});
  absl::Status s = channel.Send(FailureMessage());
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(RetryAfter(s), std::chrono::milliseconds(12'000));
}

TEST_F(HttpChannelsTest, WebhookTransportErrorKeepsItsClassAndHidesThePath) {
  // A port nothing listens on (the receiver's own port + a closed server).
  HttpTestServer closed([](const TestRequest&) { return TestResponse::Json(200, "{}"); });
  ASSERT_TRUE(closed.Start().ok());
  std::string url = closed.Url("/planted-path-secret");
  closed.Stop();
  AlertConfig::Webhook config;
  config.url = url;
  WebhookAlertChannel channel(config, *http_, clock_, {});
  absl::Status s = channel.Send(FailureMessage());
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
  EXPECT_NE(s.message().find("alert webhook http://127.0.0.1:"), std::string::npos) << s;
  EXPECT_NE(s.message().find("could not be reached"), std::string::npos) << s;
  EXPECT_EQ(s.message().find("planted"), std::string::npos) << s;
}

TEST_F(HttpChannelsTest, SlackMessageIsValidBlockKit) {
  AlertConfig::Slack config;
  config.webhook_url = slack_.WebhookUrl();
  SlackAlertChannel channel(config, *http_, clock_, {});
  AlertMessage m = FailureMessage();
  absl::Status s = channel.Send(m);
  ASSERT_TRUE(s.ok()) << s;
  std::vector<SlackWebhookRequest> requests = slack_.Requests();
  ASSERT_EQ(requests.size(), 1u);
  EXPECT_EQ(requests[0].reply_status, 200);
  EXPECT_EQ(requests[0].reply_body, "ok");
  EXPECT_EQ(requests[0].method, "POST");
  ASSERT_EQ(slack_.PostedMessages().size(), 1u);
  const nlohmann::json p = slack_.PostedMessages()[0];

  EXPECT_EQ(p["text"],
            "[Backflow] crm failed (run 42): Mapping crm (customers -&gt; hub) failed in run 42: "
            "HubSpot answered 401 &lt;Unauthorized&gt; &amp; gave up");
  ASSERT_EQ(p["blocks"].size(), 4u);
  const nlohmann::json& header = p["blocks"][0];
  EXPECT_EQ(header["type"], "header");
  EXPECT_EQ(header["text"]["type"], "plain_text");
  EXPECT_EQ(header["text"]["text"], ":rotating_light: crm failed (run 42)");
  const nlohmann::json& summary = p["blocks"][1];
  EXPECT_EQ(summary["type"], "section");
  EXPECT_EQ(summary["text"]["type"], "mrkdwn");
  EXPECT_EQ(summary["text"]["text"],
            "Mapping crm (customers -&gt; hub) failed in run 42: HubSpot answered 401 "
            "&lt;Unauthorized&gt; &amp; gave up");
  const nlohmann::json& fields = p["blocks"][2]["fields"];
  ASSERT_EQ(fields.size(), 6u);
  EXPECT_EQ(fields[0]["text"], "*Mapping*\ncrm");
  EXPECT_EQ(fields[1]["text"], "*Model*\ncustomers");
  EXPECT_EQ(fields[2]["text"], "*Destination*\nhub");
  EXPECT_EQ(fields[3]["text"], "*Run*\n42 (failed)");
  EXPECT_EQ(fields[4]["text"], "*Records*\n8 succeeded, 2 failed, 1 rejected");
  EXPECT_EQ(fields[5]["text"], "*Error*\nHubSpot answered 401 &lt;Unauthorized&gt; &amp; gave up");
  const nlohmann::json& context = p["blocks"][3];
  EXPECT_EQ(context["type"], "context");
  EXPECT_EQ(context["elements"][0]["text"],
            "Backflow alert oncall · failure · run started 2026-03-01T09:00:00.000Z, finished "
            "2026-03-01T09:00:05.500Z");
}

TEST_F(HttpChannelsTest, SlackLimitsAreRespectedForHugeErrors) {
  AlertConfig::Slack config;
  config.webhook_url = slack_.WebhookUrl();
  SlackAlertChannel channel(config, *http_, clock_, {});
  AlertMessage m = FailureMessage();
  m.run.mapping = std::string(200, 'm');
  m.run.error = std::string(5000, 'e') + "é";
  DescribeAlert(m);
  absl::Status s = channel.Send(m);
  ASSERT_TRUE(s.ok()) << s << " " << slack_.Requests().back().reply_body;
  const nlohmann::json p = slack_.PostedMessages().at(0);
  std::string header = p["blocks"][0]["text"]["text"];
  EXPECT_EQ(header.substr(header.size() - 3), "…");
}

TEST_F(HttpChannelsTest, SlackErrorTextSurfacesInTheStatus) {
  AlertConfig::Slack config;
  config.webhook_url = slack_.WebhookUrl();
  SlackAlertChannel channel(config, *http_, clock_, {});
  struct Case {
    int status;
    std::string body;
    absl::StatusCode code;
  };
  for (const Case& c : {Case{400, "invalid_payload", absl::StatusCode::kInvalidArgument},
                        Case{400, "no_text", absl::StatusCode::kInvalidArgument},
                        Case{403, "invalid_token", absl::StatusCode::kPermissionDenied},
                        Case{403, "action_prohibited", absl::StatusCode::kPermissionDenied},
                        Case{404, "channel_not_found", absl::StatusCode::kFailedPrecondition},
                        Case{410, "channel_is_archived", absl::StatusCode::kFailedPrecondition},
                        Case{500, "rollup_error", absl::StatusCode::kUnavailable}}) {
    slack_.EnqueueReply(c.status, c.body);
    absl::Status s = channel.Send(FailureMessage());
    EXPECT_EQ(s.code(), c.code) << c.body << ": " << s;
    EXPECT_NE(s.message().find(fmt::format("answered {} \"{}\"", c.status, c.body)),
              std::string::npos)
        << s;
    EXPECT_EQ(s.message().find("fakeToken123"), std::string::npos) << s;
  }
}

TEST_F(HttpChannelsTest, SlackUnknownWebhookIsNoServiceAndTheTokenStaysSecret) {
  AlertConfig::Slack config;
  config.webhook_url = slack_.Url("/services/T0FAKE/B0FAKE/plantedWrongToken");
  SlackAlertChannel channel(config, *http_, clock_, {});
  absl::Status s = channel.Send(FailureMessage());
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_NE(s.message().find("answered 404 \"no_service\""), std::string::npos) << s;
  EXPECT_NE(s.message().find("update slack.webhook_url"), std::string::npos) << s;
  EXPECT_EQ(s.message().find("plantedWrongToken"), std::string::npos) << s;
  EXPECT_EQ(s.message().find("/services/"), std::string::npos) << s;
}

TEST_F(HttpChannelsTest, SlackRateLimitHonoursRetryAfterOnTheClock) {
  AlertConfig alert;
  alert.name = "chat";
  alert.channel = AlertConfig::Channel::kSlack;
  alert.slack.webhook_url = slack_.WebhookUrl();
  auto store = OpenSqliteStateStore(":memory:");
  ASSERT_TRUE(store.ok()) << store.status();
  std::vector<std::unique_ptr<AlertChannel>> channels;
  channels.push_back(
      std::make_unique<SlackAlertChannel>(alert.slack, *http_, clock_, AlertChannelOptions{}));
  auto manager =
      AlertManager::CreateWithChannels({alert}, std::move(channels), **store, clock_, {});
  ASSERT_TRUE(manager.ok()) << manager.status();

  slack_.EnqueueReply(429, "rate_limited", "7");
  RunInfo run = FailureMessage().run;
  AlertReport report = (*manager)->OnRunFinished(run);
  ASSERT_EQ(report.events.size(), 1u);
  EXPECT_TRUE(report.ok()) << report.events[0].status;
  EXPECT_EQ(report.events[0].attempts, 2);
  EXPECT_EQ(clock_.total_slept(), std::chrono::duration_cast<Clock::Duration>(seconds(7)));
  std::vector<SlackWebhookRequest> requests = slack_.Requests();
  ASSERT_EQ(requests.size(), 2u);
  EXPECT_EQ(requests[0].reply_status, 429);
  EXPECT_EQ(requests[1].reply_status, 200);
  EXPECT_EQ(slack_.PostedMessages().size(), 1u);
}

TEST(FakeSlackWebhookTest, ValidatesPayloadsLikeSlack) {
  using nlohmann::json;
  EXPECT_EQ(FakeSlackWebhook::Validate(json::array()), "invalid_payload");
  EXPECT_EQ(FakeSlackWebhook::Validate(json::object()), "no_text");
  EXPECT_EQ(FakeSlackWebhook::Validate({{"text", ""}}), "no_text");
  EXPECT_EQ(FakeSlackWebhook::Validate({{"text", 5}}), "invalid_payload");
  EXPECT_EQ(FakeSlackWebhook::Validate({{"text", "hi"}}), "");
  auto header = [](std::string text) {
    return json{{"type", "header"}, {"text", {{"type", "plain_text"}, {"text", text}}}};
  };
  EXPECT_EQ(FakeSlackWebhook::Validate({{"text", "t"}, {"blocks", {header("ok")}}}), "");
  EXPECT_EQ(
      FakeSlackWebhook::Validate({{"text", "t"}, {"blocks", {header(std::string(151, 'x'))}}}),
      "invalid_blocks");
  json mrkdwn_header = header("x");
  mrkdwn_header["text"]["type"] = "mrkdwn";
  EXPECT_EQ(FakeSlackWebhook::Validate({{"text", "t"}, {"blocks", {mrkdwn_header}}}),
            "invalid_blocks");
  json fields = json::array();
  for (int i = 0; i < 11; ++i) fields.push_back({{"type", "mrkdwn"}, {"text", "f"}});
  EXPECT_EQ(FakeSlackWebhook::Validate(
                {{"text", "t"}, {"blocks", {{{"type", "section"}, {"fields", fields}}}}}),
            "invalid_blocks");
  EXPECT_EQ(FakeSlackWebhook::Validate({{"text", "t"}, {"blocks", {{{"type", "carousel"}}}}}),
            "invalid_blocks");
  EXPECT_EQ(FakeSlackWebhook::Validate({{"blocks", {header("only blocks")}}}), "");
}

TEST_F(HttpChannelsTest, FakeSlackRefusesWrongContentType) {
  HttpRequest r;
  r.url = slack_.WebhookUrl();
  r.headers = {{"Content-Type", "text/plain"}};
  r.body = "{\"text\":\"hi\"}";
  auto reply = http_->Send(r);
  ASSERT_TRUE(reply.ok());
  EXPECT_EQ(reply->status, 400);
  EXPECT_EQ(reply->body, "invalid_payload");
}

}  // namespace
}  // namespace backflow
