#include "backflow/cli/output.h"

#include <cmath>

#include "fmt/format.h"

namespace backflow::cli {
namespace {

// Display width of UTF-8 text: counts code points, not bytes.
size_t Width(const std::string& s) {
  size_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

std::string Cut(const std::string& s, size_t max_width) {
  if (Width(s) <= max_width) return s;
  std::string out;
  size_t n = 0;
  for (size_t i = 0; i < s.size(); ++i) {
    auto c = static_cast<unsigned char>(s[i]);
    if ((c & 0xC0) != 0x80 && ++n > max_width - 1) break;
    out.push_back(s[i]);
  }
  return out + "…";
}

}  // namespace

std::string Thousands(int64_t n) {
  std::string digits = std::to_string(n < 0 ? -n : n);
  std::string out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out.push_back(',');
    out.push_back(digits[i]);
  }
  return n < 0 ? "-" + out : out;
}

std::string Duration(double seconds) {
  if (seconds < 1) return fmt::format("{}ms", static_cast<int>(std::lround(seconds * 1000)));
  if (seconds < 60) return fmt::format("{:.1f}s", seconds);
  auto total = static_cast<int64_t>(seconds);
  if (total < 3600) return fmt::format("{}m{:02}s", total / 60, total % 60);
  return fmt::format("{}h{:02}m", total / 3600, (total % 3600) / 60);
}

std::string Table(const std::vector<std::vector<std::string>>& rows, size_t max_width,
                  size_t header_rows) {
  std::vector<size_t> widths;
  std::vector<std::vector<std::string>> cells;
  for (const auto& row : rows) {
    std::vector<std::string> cut;
    for (size_t i = 0; i < row.size(); ++i) {
      std::string cell = row[i];
      for (char& c : cell) {
        if (c == '\n' || c == '\r' || c == '\t') c = ' ';
      }
      cut.push_back(Cut(cell, max_width));
      if (widths.size() <= i) widths.push_back(0);
      widths[i] = std::max(widths[i], Width(cut.back()));
    }
    cells.push_back(std::move(cut));
  }
  std::string out;
  for (size_t r = 0; r < cells.size(); ++r) {
    std::string line;
    for (size_t i = 0; i < cells[r].size(); ++i) {
      line += cells[r][i];
      if (i + 1 < cells[r].size()) line += std::string(widths[i] - Width(cells[r][i]) + 2, ' ');
    }
    out += line + "\n";
    if (r + 1 == header_rows) {
      std::string rule;
      for (size_t i = 0; i < widths.size(); ++i) {
        rule += std::string(widths[i], '-') + (i + 1 < widths.size() ? "  " : "");
      }
      out += rule + "\n";
    }
  }
  return out;
}

}  // namespace backflow::cli
