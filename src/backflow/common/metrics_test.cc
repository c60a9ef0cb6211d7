#include "backflow/common/metrics.h"

#include <gtest/gtest.h>

namespace backflow {
namespace {

TEST(MetricsTest, RendersCountersGaugesAndCumulativeHistograms) {
  Metrics m;
  m.Declare("backflow_runs_total", Metrics::Type::kCounter, "Runs finished, by status.",
            {"status"});
  m.Declare("backflow_queue_depth", Metrics::Type::kGauge, "Queued runs.", {});
  m.Declare("backflow_run_duration_seconds", Metrics::Type::kHistogram, "Run duration.",
            {"mapping"}, {1, 10});
  m.Add("backflow_runs_total", {"succeeded"});
  m.Add("backflow_runs_total", {"succeeded"});
  m.Add("backflow_runs_total", {"fail\"ed"});
  m.Set("backflow_queue_depth", {}, 3);
  m.Observe("backflow_run_duration_seconds", {"m"}, 0.5);
  m.Observe("backflow_run_duration_seconds", {"m"}, 5);
  m.Observe("backflow_run_duration_seconds", {"m"}, 50);
  m.Add("undeclared", {"x"});  // ignored
  EXPECT_EQ(m.Render(),
            "# HELP backflow_runs_total Runs finished, by status.\n"
            "# TYPE backflow_runs_total counter\n"
            "backflow_runs_total{status=\"fail\\\"ed\"} 1\n"
            "backflow_runs_total{status=\"succeeded\"} 2\n"
            "# HELP backflow_queue_depth Queued runs.\n"
            "# TYPE backflow_queue_depth gauge\n"
            "backflow_queue_depth 3\n"
            "# HELP backflow_run_duration_seconds Run duration.\n"
            "# TYPE backflow_run_duration_seconds histogram\n"
            "backflow_run_duration_seconds_bucket{mapping=\"m\",le=\"1\"} 1\n"
            "backflow_run_duration_seconds_bucket{mapping=\"m\",le=\"10\"} 2\n"
            "backflow_run_duration_seconds_bucket{mapping=\"m\",le=\"+Inf\"} 3\n"
            "backflow_run_duration_seconds_sum{mapping=\"m\"} 55.5\n"
            "backflow_run_duration_seconds_count{mapping=\"m\"} 3\n");
}

TEST(MetricsTest, CollectorsRefreshValuesAtEachRender) {
  Metrics m;
  m.Declare("backflow_wait_seconds_total", Metrics::Type::kCounter, "Waited.", {});
  double total = 1.5;
  m.AddCollector([&](Metrics& self) { self.Set("backflow_wait_seconds_total", {}, total); });
  EXPECT_NE(m.Render().find("backflow_wait_seconds_total 1.5\n"), std::string::npos);
  total = 4;
  EXPECT_NE(m.Render().find("backflow_wait_seconds_total 4\n"), std::string::npos);
}

}  // namespace
}  // namespace backflow
