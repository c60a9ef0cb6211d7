// Value, Column, Schema and Row: the typed data that flows from a Source
// through mapping to a Destination.
//
// A Value is a tagged scalar. Exact types (decimals, timestamps, dates, JSON)
// keep their canonical text so no precision is lost between warehouse and
// destination: a DECIMAL(38,9) stays a digit string, a timestamp is ISO-8601
// in UTC ("2024-05-01T12:00:00Z"), JSON is compact JSON text.
#pragma once

#include <cstdint>
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

// Compact binary encoding of a row of values, used to spool records to disk.
void EncodeRow(const Row& row, std::string& out);
absl::StatusOr<Row> DecodeRow(std::string_view data);

}  // namespace backflow
