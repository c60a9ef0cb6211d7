#include "backflow/sources/source.h"

#include "absl/strings/ascii.h"
#include "backflow/common/status_macros.h"
#include "fmt/format.h"

namespace backflow {

absl::StatusOr<bool> RowReader::NextEncoded(std::string_view& row) {
  BACKFLOW_ASSIGN_OR_RETURN(bool more, Next(decoded_));
  if (!more) return false;
  encoded_.clear();
  EncodeRow(decoded_, encoded_);
  row = encoded_;
  return true;
}

absl::StatusOr<std::unique_ptr<RowReader>> Source::Query(std::string_view sql,
                                                         const QueryOptions& /*options*/) {
  return Query(sql);
}

absl::Status QueryCancelledError(std::string_view what) {
  return absl::CancelledError(fmt::format(
      "the run was cancelled while {} was running; the warehouse was asked to cancel it", what));
}

std::string TrimModelSql(std::string_view sql) {
  std::string body(sql);
  absl::StripAsciiWhitespace(&body);
  while (!body.empty() && body.back() == ';') {
    body.pop_back();
    absl::StripTrailingAsciiWhitespace(&body);
  }
  return body;
}

std::string LimitQuery(std::string_view sql, int limit) {
  // The newline ends any trailing "--" comment in the model's SQL.
  return fmt::format("SELECT * FROM (\n{}\n) AS backflow_limited LIMIT {}", TrimModelSql(sql),
                     limit);
}

}  // namespace backflow
