// SQL identifier quoting shared by the warehouse dialects.
#pragma once

#include <string>
#include <string_view>

namespace backflow {

// How a quote character inside an identifier is written.
enum class QuoteEscape {
  kDoubled,    // written twice: standard SQL, PostgreSQL, Snowflake, Redshift
  kBackslash,  // the quote and backslashes escaped with a backslash: BigQuery, ClickHouse
};

// `name` between `quote` characters, escaped so that any name round-trips.
inline std::string QuoteSqlIdentifier(std::string_view name, char quote = '"',
                                      QuoteEscape escape = QuoteEscape::kDoubled) {
  std::string out(1, quote);
  for (char c : name) {
    if (c == quote) {
      out.push_back(escape == QuoteEscape::kDoubled ? quote : '\\');
    } else if (escape == QuoteEscape::kBackslash && c == '\\') {
      out.push_back('\\');
    }
    out.push_back(c);
  }
  out.push_back(quote);
  return out;
}

}  // namespace backflow
