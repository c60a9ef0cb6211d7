#include "backflow/common/metrics.h"

#include <cmath>

#include "fmt/format.h"

namespace backflow {
namespace {

std::string EscapeLabel(const std::string& v) {
  std::string out;
  for (char c : v) {
    if (c == '\\' || c == '"') {
      out.push_back('\\');
      out.push_back(c);
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out.push_back(c);
    }
  }
  return out;
}

std::string Number(double v) {
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  if (v == std::floor(v) && std::fabs(v) < 1e15) return fmt::format("{}", static_cast<int64_t>(v));
  return fmt::format("{}", v);
}

std::string LabelText(const std::vector<std::string>& names, const std::vector<std::string>& values,
                      const std::string& extra = "") {
  std::string out;
  for (size_t i = 0; i < names.size() && i < values.size(); ++i) {
    if (!out.empty()) out += ",";
    out += fmt::format("{}=\"{}\"", names[i], EscapeLabel(values[i]));
  }
  if (!extra.empty()) {
    if (!out.empty()) out += ",";
    out += extra;
  }
  return out.empty() ? "" : "{" + out + "}";
}

}  // namespace

void Metrics::Declare(const std::string& name, Type type, const std::string& help,
                      std::vector<std::string> label_names, std::vector<double> buckets) {
  std::lock_guard<std::mutex> lock(mu_);
  if (families_.count(name)) return;
  order_.push_back(name);
  families_[name] = Family{type, help, std::move(label_names), std::move(buckets), {}};
}

void Metrics::Add(const std::string& name, const std::vector<std::string>& labels, double delta) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = families_.find(name);
  if (it == families_.end() || it->second.type == Type::kHistogram) return;
  it->second.series[labels].value += delta;
}

void Metrics::Set(const std::string& name, const std::vector<std::string>& labels, double value) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = families_.find(name);
  if (it == families_.end() || it->second.type == Type::kHistogram) return;
  it->second.series[labels].value = value;
}

void Metrics::Observe(const std::string& name, const std::vector<std::string>& labels,
                      double value) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = families_.find(name);
  if (it == families_.end() || it->second.type != Type::kHistogram) return;
  Family& f = it->second;
  Series& s = f.series[labels];
  s.counts.resize(f.buckets.size());
  for (size_t i = 0; i < f.buckets.size(); ++i) {
    if (value <= f.buckets[i]) {
      ++s.counts[i];
      break;
    }
  }
  s.sum += value;
  ++s.count;
}

void Metrics::AddCollector(std::function<void(Metrics&)> collector) {
  std::lock_guard<std::mutex> lock(mu_);
  collectors_.push_back(std::move(collector));
}

std::string Metrics::Render() const {
  std::vector<std::function<void(Metrics&)>> collectors;
  {
    std::lock_guard<std::mutex> lock(mu_);
    collectors = collectors_;
  }
  for (const auto& c : collectors) c(const_cast<Metrics&>(*this));
  std::lock_guard<std::mutex> lock(mu_);
  std::string out;
  for (const std::string& name : order_) {
    const Family& f = families_.at(name);
    const char* type = f.type == Type::kCounter ? "counter"
                       : f.type == Type::kGauge ? "gauge"
                                                : "histogram";
    out += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name, f.help, name, type);
    for (const auto& [labels, s] : f.series) {
      if (f.type != Type::kHistogram) {
        out += fmt::format("{}{} {}\n", name, LabelText(f.label_names, labels), Number(s.value));
        continue;
      }
      uint64_t cumulative = 0;
      for (size_t i = 0; i < f.buckets.size(); ++i) {
        cumulative += i < s.counts.size() ? s.counts[i] : 0;
        out += fmt::format(
            "{}_bucket{} {}\n", name,
            LabelText(f.label_names, labels, fmt::format("le=\"{}\"", Number(f.buckets[i]))),
            cumulative);
      }
      out += fmt::format("{}_bucket{} {}\n", name, LabelText(f.label_names, labels, "le=\"+Inf\""),
                         s.count);
      out += fmt::format("{}_sum{} {}\n", name, LabelText(f.label_names, labels), Number(s.sum));
      out += fmt::format("{}_count{} {}\n", name, LabelText(f.label_names, labels), s.count);
    }
  }
  return out;
}

}  // namespace backflow
