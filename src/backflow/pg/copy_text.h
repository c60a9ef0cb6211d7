// Parsing of PostgreSQL's COPY text format (`COPY ... TO STDOUT`, the
// default FORMAT text with its default delimiter, tab, and NULL string, \N).
//
// In that format each row ends with a newline and fields are separated by a
// tab; a newline, tab or backslash inside a value is always written escaped
// (\n, \t, \\), so a raw newline or tab is always a row or field boundary.
// SQL NULL is the two characters \N (a text value "\N" is written "\\N").
// Escapes decoded: \b \f \n \r \t \v, \ddd (1 to 3 octal digits), \xhh (1 or
// 2 hex digits) and backslash followed by any other character, which stands
// for that character (so \\ is a backslash). Values are bytes in the
// session's client_encoding, not validated here.
//
// libpq documents that PQgetCopyData returns exactly one row per call, and
// PostgreSQL sends one CopyData message per row; CopyTextLines does not rely
// on it and reassembles rows from arbitrary chunks (a row split over several
// chunks, several rows in one chunk), copying only when a row is split.
// Not thread-safe; pure functions are.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace backflow::pg {

// Splits a stream of COPY text chunks into rows (without their newline).
class CopyTextLines {
 public:
  // Makes `chunk` the data to read next. Call only after NextLine() returned
  // false (every complete row of the previous chunk was read; an incomplete
  // tail was copied). `chunk` must stay valid until NextLine() next returns
  // false.
  void Feed(std::string_view chunk);

  // Sets `line` to the next complete row, valid until the next call to
  // NextLine() or Feed(). Returns false when no complete row remains (an
  // incomplete tail is kept for the next chunk).
  bool NextLine(std::string_view& line);

  // True when an incomplete row is held (at the end of the data this means
  // the stream was truncated).
  bool has_partial() const { return !partial_.empty() && !partial_is_line_; }

 private:
  std::string_view chunk_;
  size_t pos_ = 0;
  std::string partial_;
  bool partial_is_line_ = false;  // partial_ was handed out as a complete line
};

// Splits `line` at its raw tabs into `fields` (cleared first; views into
// `line`). A line always has at least one field.
void SplitCopyTextFields(std::string_view line, std::vector<std::string_view>& fields);

// True when `field` is the NULL marker \N.
inline bool IsCopyTextNull(std::string_view field) { return field == "\\N"; }

// The value of a non-NULL raw `field`: `field` itself when it holds no
// backslash, otherwise its decoded bytes, written to `scratch` (reused across
// calls to avoid allocations). The result is valid while both are.
std::string_view DecodeCopyTextField(std::string_view field, std::string& scratch);

}  // namespace backflow::pg
