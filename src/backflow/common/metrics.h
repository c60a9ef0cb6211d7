// Metrics: counters, gauges and histograms with labels, rendered in the
// Prometheus text exposition format (version 0.0.4) for `GET /metrics`.
//
// A metric family is declared once (name, help, type, label names, and for
// histograms the bucket bounds) and then updated by label values. Thread-safe:
// every method may be called from any thread; updates take one mutex for a
// few hundred nanoseconds, which is nothing next to the work they count.
#pragma once

#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace backflow {

class Metrics {
 public:
  enum class Type { kCounter, kGauge, kHistogram };

  // Declares a family; declaring the same name again is a no-op.
  void Declare(const std::string& name, Type type, const std::string& help,
               std::vector<std::string> label_names, std::vector<double> buckets = {});

  // `labels`: one value per declared label name, in order. Unknown families
  // are ignored (a metric must never break the service).
  void Add(const std::string& name, const std::vector<std::string>& labels, double delta = 1);
  void Set(const std::string& name, const std::vector<std::string>& labels, double value);
  void Observe(const std::string& name, const std::vector<std::string>& labels, double value);

  // Called at the start of every Render(), outside the lock, to refresh
  // values that are read rather than counted (e.g. totals kept elsewhere).
  void AddCollector(std::function<void(Metrics&)> collector);

  // The exposition text, families in declaration order, series by labels.
  std::string Render() const;

 private:
  struct Series {
    double value = 0;              // counter / gauge
    std::vector<uint64_t> counts;  // histogram: per bucket (not cumulative)
    double sum = 0;
    uint64_t count = 0;
  };
  struct Family {
    Type type;
    std::string help;
    std::vector<std::string> label_names;
    std::vector<double> buckets;
    std::map<std::vector<std::string>, Series> series;
  };

  std::vector<std::function<void(Metrics&)>> collectors_;  // set up before use
  mutable std::mutex mu_;
  std::vector<std::string> order_;
  std::map<std::string, Family> families_;
};

}  // namespace backflow
