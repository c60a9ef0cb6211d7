#include "backflow/sources/source.h"

#include "absl/strings/ascii.h"
#include "fmt/format.h"

namespace backflow {

std::string LimitQuery(std::string_view sql, int limit) {
  std::string body(sql);
  absl::StripAsciiWhitespace(&body);
  while (!body.empty() && body.back() == ';') {
    body.pop_back();
    absl::StripTrailingAsciiWhitespace(&body);
  }
  // The newline ends any trailing "--" comment in the model's SQL.
  return fmt::format("SELECT * FROM (\n{}\n) AS backflow_limited LIMIT {}", body, limit);
}

}  // namespace backflow
