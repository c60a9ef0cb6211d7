// Terminal rendering helpers for the CLI: aligned tables, thousands
// separators, durations. Pure functions; no I/O.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace backflow::cli {

// "1,234,567"
std::string Thousands(int64_t n);
// "850ms", "12.3s", "4m05s", "1h02m"
std::string Duration(double seconds);
// Left-aligned columns separated by two spaces; cells longer than
// `max_width` are cut with "…". The first `header_rows` rows are the header,
// underlined.
std::string Table(const std::vector<std::vector<std::string>>& rows, size_t max_width = 40,
                  size_t header_rows = 1);

}  // namespace backflow::cli
