// Value, Column, Schema and Row: the typed data that flows from a Source
// through mapping to a Destination.
//
// A Value is a tagged scalar. Exact types (decimals, timestamps, dates, JSON)
// keep their canonical text so no precision is lost between warehouse and
// destination: a DECIMAL(38,9) stays a digit string, a timestamp is ISO-8601
// in UTC ("2024-05-01T12:00:00Z"), JSON is compact JSON text.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace backflow {

enum class ValueType : uint8_t {
  kNull = 0,
  kBool = 1,
  kInt64 = 2,
  kDouble = 3,
  kDecimal = 4,  // text: optional '-', digits, optional '.' digits
  kString = 5,
  kTimestamp = 6,  // text: ISO-8601, UTC with 'Z' when the source had a zone
  kDate = 7,       // text: YYYY-MM-DD
  kJson = 8,       // text: compact JSON
  kBytes = 9,      // raw bytes; base64 when rendered as JSON
};

std::string_view ValueTypeName(ValueType t);
absl::StatusOr<ValueType> ParseValueTypeName(std::string_view name);

class Value {
 public:
  Value() = default;
  static Value Null() { return Value(); }
  static Value Bool(bool b);
  static Value Int64(int64_t i);
  static Value Double(double d);
  // For kDecimal, kString, kTimestamp, kDate, kJson, kBytes.
  static Value Text(ValueType type, std::string text);
  static Value String(std::string s) { return Text(ValueType::kString, std::move(s)); }

  // In-place setters for hot loops that refill the same Row: the same value
  // as the factories above, reusing this value's text buffer.
  void SetNull() { Set(ValueType::kNull, 0, 0); }
  void SetBool(bool b) { Set(ValueType::kBool, b ? 1 : 0, 0); }
  void SetInt64(int64_t i) { Set(ValueType::kInt64, i, 0); }
  void SetDouble(double d) { Set(ValueType::kDouble, 0, d); }
  void SetText(ValueType type, std::string_view text) {
    Set(type, 0, 0);
    text_.assign(text);
  }
  // Makes this an empty text value of `type` and returns its text to write.
  std::string& MutableText(ValueType type) {
    Set(type, 0, 0);
    return text_;
  }

  ValueType type() const { return type_; }
  bool is_null() const { return type_ == ValueType::kNull; }
  bool bool_value() const { return int_ != 0; }
  int64_t int_value() const { return int_; }
  double double_value() const { return double_; }
  const std::string& text() const { return text_; }

  // A human-readable rendering (tables, record keys): NULL renders as "".
  std::string ToString() const;
  // Appends this value as a JSON value.
  void AppendJson(std::string& out) const;

  friend bool operator==(const Value& a, const Value& b);

 private:
  void Set(ValueType type, int64_t i, double d) {
    type_ = type;
    int_ = i;
    double_ = d;
    text_.clear();
  }

  ValueType type_ = ValueType::kNull;
  int64_t int_ = 0;
  double double_ = 0;
  std::string text_;
};

struct Column {
  std::string name;
  ValueType type = ValueType::kString;
  // The type as the warehouse names it ("numeric(12,2)", "TEXT"): for display.
  std::string source_type;
};

using Schema = std::vector<Column>;
using Row = std::vector<Value>;

// JSON text without the whitespace outside strings (strings and numbers
// untouched): the canonical text of kJson values, whatever the warehouse sent.
std::string CompactJson(std::string_view json);

// {"name": value, ...} from parallel lists of names and values.
std::string JsonObject(const std::vector<std::string>& names, const Row& values);
std::string JsonObject(const Schema& schema, const Row& values);

// Index of `name` in `schema`, or -1.
int FindColumn(const Schema& schema, std::string_view name);

// Compact binary encoding of a row of values, used to spool records to disk
// and to hand rows from a source to the engine: a varint count, then per
// value its type byte and its payload (zig-zag varint for kBool and kInt64,
// 8 bytes for kDouble, varint length and bytes for the text types).
void EncodeRow(const Row& row, std::string& out);
absl::StatusOr<Row> DecodeRow(std::string_view data);
// DecodeRow into `row`, reusing its values' text buffers.
absl::Status DecodeRowInto(std::string_view data, Row& row);

// Writes rows in EncodeRow()'s form value by value, into a buffer of its
// own that grows as needed (never zero-filled) and is reused row after row.
class RowEncoder {
 public:
  // Starts a row of `values` values, dropping the previous one; exactly that
  // many appends follow.
  void Begin(size_t values);
  void AppendNull();
  void AppendInt(ValueType type, int64_t i);  // kBool or kInt64
  void AppendDouble(double d);
  void AppendText(ValueType type, std::string_view text);
  void Append(const Value& v);
  // A value's whole encoding, as ValueView::encoded() gives it.
  void AppendEncoded(std::string_view value);
  // AppendText() of a text written in place: `write(char* p)` writes at most
  // `max_size` bytes at `p` and returns the end of what it wrote.
  template <typename Write>
  void AppendTextInPlace(ValueType type, size_t max_size, Write&& write) {
    if (max_size > kMostTextInPlace) {
      std::string text(max_size, '\0');
      text.resize(static_cast<size_t>(write(text.data()) - text.data()));
      AppendText(type, text);
      return;
    }
    char* const text = StartTextInPlace(type, max_size);
    EndTextInPlace(text, write(text));
  }
  // The row so far; valid until the next call of another method.
  std::string_view row() const { return std::string_view(data_.get(), size_); }

 private:
  // The write position, with at least `bytes` free after it.
  char* Room(size_t bytes) {
    if (capacity_ - size_ < bytes) Grow(bytes);
    return data_.get() + size_;
  }
  void Grow(size_t bytes);
  void End(const char* p) { size_ = static_cast<size_t>(p - data_.get()); }

  // The longest text written in place; longer ones go through a copy.
  static constexpr size_t kMostTextInPlace = 127;
  // Writes a text value of `type` whose text, at most `max_size` bytes (at
  // most kMostTextInPlace), is written at the returned position; the value
  // is complete once EndTextInPlace(that position, the text's end) is called.
  char* StartTextInPlace(ValueType type, size_t max_size);
  void EndTextInPlace(char* text, const char* end);

  std::unique_ptr<char[]> data_;
  size_t size_ = 0;
  size_t capacity_ = 0;
};

// One value of an encoded row, read in place: what Value holds, its text
// viewing the encoded bytes. Same accessors as Value.
class ValueView {
 public:
  ValueType type() const { return type_; }
  bool is_null() const { return type_ == ValueType::kNull; }
  bool bool_value() const { return int_ != 0; }
  int64_t int_value() const { return int_; }
  double double_value() const { return double_; }
  std::string_view text() const { return text_; }
  // The value's whole encoding (type byte included).
  std::string_view encoded() const { return encoded_; }
  // Value::ToString() of the same value.
  std::string ToString() const;

 private:
  friend absl::Status DecodeRowViews(std::string_view data, std::vector<ValueView>& views);
  ValueType type_ = ValueType::kNull;
  int64_t int_ = 0;
  double double_ = 0;
  std::string_view text_;
  std::string_view encoded_;
};

// Views of the values of an encoded row (valid while `data` is); no
// allocation once `views` has grown to the row's width.
absl::Status DecodeRowViews(std::string_view data, std::vector<ValueView>& views);

}  // namespace backflow
