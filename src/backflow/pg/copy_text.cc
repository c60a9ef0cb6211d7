#include "backflow/pg/copy_text.h"

#include <cstring>

namespace backflow::pg {
namespace {

bool IsOctal(char c) { return c >= '0' && c <= '7'; }

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

}  // namespace

void CopyTextLines::Feed(std::string_view chunk) {
  if (partial_is_line_) {
    partial_.clear();
    partial_is_line_ = false;
  }
  chunk_ = chunk;
  pos_ = 0;
}

bool CopyTextLines::NextLine(std::string_view& line) {
  if (partial_is_line_) {
    partial_.clear();
    partial_is_line_ = false;
  }
  if (pos_ >= chunk_.size()) return false;
  const char* start = chunk_.data() + pos_;
  size_t left = chunk_.size() - pos_;
  const void* nl = std::memchr(start, '\n', left);
  if (nl == nullptr) {
    // An incomplete row: keep it for the next chunk.
    partial_.append(start, left);
    pos_ = chunk_.size();
    return false;
  }
  size_t len = static_cast<const char*>(nl) - start;
  pos_ += len + 1;
  if (partial_.empty()) {
    line = std::string_view(start, len);
  } else {
    partial_.append(start, len);
    partial_is_line_ = true;
    line = partial_;
  }
  return true;
}

void SplitCopyTextFields(std::string_view line, std::vector<std::string_view>& fields) {
  fields.clear();
  const char* p = line.data();
  const char* end = p + line.size();
  while (true) {
    const void* tab = std::memchr(p, '\t', end - p);
    if (tab == nullptr) {
      fields.emplace_back(p, end - p);
      return;
    }
    const char* t = static_cast<const char*>(tab);
    fields.emplace_back(p, t - p);
    p = t + 1;
  }
}

std::string_view DecodeCopyTextField(std::string_view field, std::string& scratch) {
  const void* first = std::memchr(field.data(), '\\', field.size());
  if (first == nullptr) return field;
  size_t prefix = static_cast<const char*>(first) - field.data();
  scratch.assign(field.data(), prefix);
  for (size_t i = prefix; i < field.size(); ++i) {
    char c = field[i];
    if (c != '\\') {
      scratch.push_back(c);
      continue;
    }
    if (i + 1 >= field.size()) {
      // A trailing lone backslash: PostgreSQL never writes one; keep it.
      scratch.push_back('\\');
      break;
    }
    char e = field[++i];
    switch (e) {
      case 'b':
        scratch.push_back('\b');
        break;
      case 'f':
        scratch.push_back('\f');
        break;
      case 'n':
        scratch.push_back('\n');
        break;
      case 'r':
        scratch.push_back('\r');
        break;
      case 't':
        scratch.push_back('\t');
        break;
      case 'v':
        scratch.push_back('\v');
        break;
      case 'x': {
        int value = 0;
        int digits = 0;
        while (digits < 2 && i + 1 < field.size() && HexValue(field[i + 1]) >= 0) {
          value = value * 16 + HexValue(field[++i]);
          ++digits;
        }
        if (digits == 0) {
          scratch.push_back('x');  // "\x" without digits stands for "x"
        } else {
          scratch.push_back(static_cast<char>(value));
        }
        break;
      }
      default:
        if (IsOctal(e)) {
          int value = e - '0';
          for (int digits = 1; digits < 3 && i + 1 < field.size() && IsOctal(field[i + 1]);
               ++digits) {
            value = value * 8 + (field[++i] - '0');
          }
          scratch.push_back(static_cast<char>(value & 0xff));
        } else {
          scratch.push_back(e);
        }
        break;
    }
  }
  return scratch;
}

}  // namespace backflow::pg
