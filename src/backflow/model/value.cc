#include "backflow/model/value.h"

#include <algorithm>
#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/escaping.h"
#include "backflow/common/json_writer.h"
#include "backflow/common/status_macros.h"
#include "fmt/format.h"

namespace backflow {

std::string_view ValueTypeName(ValueType t) {
  switch (t) {
    case ValueType::kNull:
      return "null";
    case ValueType::kBool:
      return "boolean";
    case ValueType::kInt64:
      return "integer";
    case ValueType::kDouble:
      return "number";
    case ValueType::kDecimal:
      return "decimal";
    case ValueType::kString:
      return "string";
    case ValueType::kTimestamp:
      return "timestamp";
    case ValueType::kDate:
      return "date";
    case ValueType::kJson:
      return "json";
    case ValueType::kBytes:
      return "bytes";
  }
  return "unknown";
}

absl::StatusOr<ValueType> ParseValueTypeName(std::string_view name) {
  for (int i = 0; i <= static_cast<int>(ValueType::kBytes); ++i) {
    auto t = static_cast<ValueType>(i);
    if (ValueTypeName(t) == name) return t;
  }
  return absl::InvalidArgumentError(fmt::format("unknown type \"{}\"", name));
}

Value Value::Bool(bool b) {
  Value v;
  v.type_ = ValueType::kBool;
  v.int_ = b ? 1 : 0;
  return v;
}

Value Value::Int64(int64_t i) {
  Value v;
  v.type_ = ValueType::kInt64;
  v.int_ = i;
  return v;
}

Value Value::Double(double d) {
  Value v;
  v.type_ = ValueType::kDouble;
  v.double_ = d;
  return v;
}

Value Value::Text(ValueType type, std::string text) {
  Value v;
  v.type_ = type;
  v.text_ = std::move(text);
  return v;
}

namespace {

// Value::ToString() of a value given by its parts.
std::string TextOf(ValueType type, int64_t i, double d, std::string_view text) {
  switch (type) {
    case ValueType::kNull:
      return "";
    case ValueType::kBool:
      return i ? "true" : "false";
    case ValueType::kInt64:
      return std::to_string(i);
    case ValueType::kDouble:
      return fmt::format("{}", d);
    case ValueType::kBytes:
      return absl::Base64Escape(absl::string_view(text.data(), text.size()));
    default:
      return std::string(text);
  }
}

}  // namespace

std::string Value::ToString() const { return TextOf(type_, int_, double_, text_); }

std::string ValueView::ToString() const { return TextOf(type_, int_, double_, text_); }

void Value::AppendJson(std::string& out) const {
  switch (type_) {
    case ValueType::kNull:
      out.append("null");
      return;
    case ValueType::kBool:
      out.append(int_ ? "true" : "false");
      return;
    case ValueType::kInt64:
      fmt::format_to(std::back_inserter(out), "{}", int_);
      return;
    case ValueType::kDouble: {
      JsonWriter w;
      w.Double(double_);
      out.append(w.str());
      return;
    }
    case ValueType::kDecimal:
      out.append(text_);
      return;  // exact: JSON numbers are unbounded
    case ValueType::kJson:
      out.append(text_.empty() ? "null" : text_);
      return;
    case ValueType::kBytes:
      AppendJsonString(out, absl::Base64Escape(text_));
      return;
    default:
      AppendJsonString(out, text_);
      return;
  }
}

bool operator==(const Value& a, const Value& b) {
  if (a.type_ != b.type_) return false;
  switch (a.type_) {
    case ValueType::kNull:
      return true;
    case ValueType::kBool:
    case ValueType::kInt64:
      return a.int_ == b.int_;
    case ValueType::kDouble:
      return a.double_ == b.double_;
    default:
      return a.text_ == b.text_;
  }
}

namespace {

template <typename NameOf>
std::string JsonObjectOf(size_t size, NameOf name_of, const Row& values) {
  std::string out = "{";
  for (size_t i = 0; i < size && i < values.size(); ++i) {
    if (i > 0) out.push_back(',');
    AppendJsonString(out, name_of(i));
    out.push_back(':');
    values[i].AppendJson(out);
  }
  out.push_back('}');
  return out;
}

}  // namespace

std::string JsonObject(const std::vector<std::string>& names, const Row& values) {
  return JsonObjectOf(
      names.size(), [&](size_t i) -> const std::string& { return names[i]; }, values);
}

std::string JsonObject(const Schema& schema, const Row& values) {
  return JsonObjectOf(
      schema.size(), [&](size_t i) -> const std::string& { return schema[i].name; }, values);
}

int FindColumn(const Schema& schema, std::string_view name) {
  for (size_t i = 0; i < schema.size(); ++i) {
    if (schema[i].name == name) return static_cast<int>(i);
  }
  return -1;
}

namespace {

bool GetVarint(std::string_view& in, uint64_t& v) {
  v = 0;
  for (int shift = 0; shift < 64 && !in.empty(); shift += 7) {
    auto byte = static_cast<unsigned char>(in.front());
    in.remove_prefix(1);
    v |= static_cast<uint64_t>(byte & 0x7f) << shift;
    if (!(byte & 0x80)) return true;
  }
  return false;
}

char* WriteVarint(char* p, uint64_t v) {
  while (v >= 0x80) {
    *p++ = static_cast<char>(v | 0x80);
    v >>= 7;
  }
  *p++ = static_cast<char>(v);
  return p;
}

// The most bytes one value's encoding takes besides its text.
constexpr size_t kMostValueOverhead = 11;

// Writes one value's encoding at `p` (room for kMostValueOverhead + the
// text's size); returns the end. The one definition of the value format.
char* WriteValue(char* p, ValueType type, int64_t i, double d, std::string_view text) {
  *p++ = static_cast<char>(type);
  switch (type) {
    case ValueType::kNull:
      break;
    case ValueType::kBool:
    case ValueType::kInt64:
      // Zig-zag so small negatives stay short.
      p = WriteVarint(p, (static_cast<uint64_t>(i) << 1) ^ static_cast<uint64_t>(i >> 63));
      break;
    case ValueType::kDouble:
      std::memcpy(p, &d, sizeof(d));
      p += sizeof(d);
      break;
    default:
      p = WriteVarint(p, text.size());
      std::memcpy(p, text.data(), text.size());
      p += text.size();
  }
  return p;
}

// A varint at `p` (before `end`); one-byte ones inline.
inline bool ReadVarint(const char*& p, const char* end, uint64_t& v) {
  if (p < end && !(static_cast<unsigned char>(*p) & 0x80)) {
    v = static_cast<unsigned char>(*p++);
    return true;
  }
  std::string_view rest(p, static_cast<size_t>(end - p));
  if (!GetVarint(rest, v)) return false;
  p = rest.data();
  return true;
}

// Reads the value at `p` (before `end`) into its parts and moves `p` past
// it; false when no whole value starts there. The one reader of the format
// WriteValue writes.
inline bool ReadValue(const char*& p, const char* end, ValueType& type, int64_t& i, double& d,
                      std::string_view& text) {
  if (p == end) return false;
  type = static_cast<ValueType>(*p++);
  i = 0;
  d = 0;
  text = {};
  switch (type) {
    case ValueType::kNull:
      return true;
    case ValueType::kBool:
    case ValueType::kInt64: {
      uint64_t z = 0;
      if (!ReadVarint(p, end, z)) return false;
      i = static_cast<int64_t>(z >> 1) ^ -static_cast<int64_t>(z & 1);
      if (type == ValueType::kBool) i = i != 0;
      return true;
    }
    case ValueType::kDouble:
      if (end - p < static_cast<ptrdiff_t>(sizeof(double))) return false;
      std::memcpy(&d, p, sizeof(double));
      p += sizeof(double);
      return true;
    default: {
      if (static_cast<int>(type) > static_cast<int>(ValueType::kBytes)) return false;
      uint64_t len = 0;
      if (!ReadVarint(p, end, len) || len > static_cast<uint64_t>(end - p)) return false;
      text = std::string_view(p, len);
      p += len;
      return true;
    }
  }
}

absl::Status CorruptRow() { return absl::DataLossError("corrupt spooled record"); }

}  // namespace

void EncodeRow(const Row& row, std::string& out) {
  // Sized once for the worst case, written through a pointer, trimmed after.
  size_t most = 10;
  for (const Value& v : row) most += kMostValueOverhead + v.text().size();
  const size_t start = out.size();
  out.resize(start + most);
  char* p = out.data() + start;
  p = WriteVarint(p, row.size());
  for (const Value& v : row) {
    p = WriteValue(p, v.type(), v.int_value(), v.double_value(), v.text());
  }
  out.resize(static_cast<size_t>(p - out.data()));
}

void RowEncoder::Grow(size_t bytes) {
  const size_t capacity = std::max(size_ + bytes, std::max<size_t>(2 * capacity_, 256));
  auto data = std::make_unique_for_overwrite<char[]>(capacity);
  if (size_ > 0) std::memcpy(data.get(), data_.get(), size_);
  data_ = std::move(data);
  capacity_ = capacity;
}

void RowEncoder::Begin(size_t values) {
  size_ = 0;
  End(WriteVarint(Room(10), values));
}

void RowEncoder::AppendNull() { End(WriteValue(Room(1), ValueType::kNull, 0, 0, {})); }

void RowEncoder::AppendInt(ValueType type, int64_t i) {
  End(WriteValue(Room(kMostValueOverhead), type, i, 0, {}));
}

void RowEncoder::AppendDouble(double d) {
  End(WriteValue(Room(kMostValueOverhead), ValueType::kDouble, 0, d, {}));
}

void RowEncoder::AppendText(ValueType type, std::string_view text) {
  End(WriteValue(Room(kMostValueOverhead + text.size()), type, 0, 0, text));
}

void RowEncoder::Append(const Value& v) {
  End(WriteValue(Room(kMostValueOverhead + v.text().size()), v.type(), v.int_value(),
                 v.double_value(), v.text()));
}

char* RowEncoder::StartTextInPlace(ValueType type, size_t max_size) {
  // An empty text for now: the type byte, then a length of one varint byte
  // (any length up to kMostTextInPlace takes one), patched by EndTextInPlace.
  static_assert(kMostTextInPlace < 0x80);
  return WriteValue(Room(kMostValueOverhead + max_size), type, 0, 0, std::string_view(""));
}

void RowEncoder::EndTextInPlace(char* text, const char* end) {
  WriteVarint(text - 1, static_cast<uint64_t>(end - text));
  End(end);
}

void RowEncoder::AppendEncoded(std::string_view value) {
  char* p = Room(value.size());
  std::memcpy(p, value.data(), value.size());
  End(p + value.size());
}

absl::Status DecodeRowInto(std::string_view in, Row& row) {
  const char* p = in.data();
  const char* const end = p + in.size();
  uint64_t n = 0;
  if (!ReadVarint(p, end, n) || n > in.size()) return CorruptRow();
  row.resize(n);
  for (Value& v : row) {
    ValueType type;
    int64_t i;
    double d;
    std::string_view text;
    if (!ReadValue(p, end, type, i, d, text)) return CorruptRow();
    switch (type) {
      case ValueType::kNull:
        v.SetNull();
        break;
      case ValueType::kBool:
        v.SetBool(i != 0);
        break;
      case ValueType::kInt64:
        v.SetInt64(i);
        break;
      case ValueType::kDouble:
        v.SetDouble(d);
        break;
      default:
        v.SetText(type, text);
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<Row> DecodeRow(std::string_view in) {
  Row row;
  BACKFLOW_RETURN_IF_ERROR(DecodeRowInto(in, row));
  return row;
}

absl::Status DecodeRowViews(std::string_view in, std::vector<ValueView>& views) {
  const char* p = in.data();
  const char* const end = p + in.size();
  uint64_t n = 0;
  if (!ReadVarint(p, end, n) || n > in.size()) return CorruptRow();
  views.resize(n);
  for (ValueView& v : views) {
    const char* const start = p;
    if (!ReadValue(p, end, v.type_, v.int_, v.double_, v.text_)) return CorruptRow();
    v.encoded_ = std::string_view(start, static_cast<size_t>(p - start));
  }
  return absl::OkStatus();
}

std::string CompactJson(std::string_view json) {
  std::string out;
  out.reserve(json.size());
  bool in_string = false;
  for (size_t i = 0; i < json.size(); ++i) {
    char c = json[i];
    if (in_string) {
      out.push_back(c);
      if (c == '\\' && i + 1 < json.size()) {
        out.push_back(json[++i]);
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
      out.push_back(c);
    } else if (c != ' ' && c != '\t' && c != '\n' && c != '\r') {
      out.push_back(c);
    }
  }
  return out;
}

}  // namespace backflow
