#include "backflow/model/value.h"

#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/escaping.h"
#include "backflow/common/json_writer.h"
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

std::string Value::ToString() const {
  switch (type_) {
    case ValueType::kNull:
      return "";
    case ValueType::kBool:
      return int_ ? "true" : "false";
    case ValueType::kInt64:
      return std::to_string(int_);
    case ValueType::kDouble:
      return fmt::format("{}", double_);
    case ValueType::kBytes:
      return absl::Base64Escape(text_);
    default:
      return text_;
  }
}

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

}  // namespace

namespace {

char* WriteVarint(char* p, uint64_t v) {
  while (v >= 0x80) {
    *p++ = static_cast<char>(v | 0x80);
    v >>= 7;
  }
  *p++ = static_cast<char>(v);
  return p;
}

}  // namespace

void EncodeRow(const Row& row, std::string& out) {
  // Sized once for the worst case, written through a pointer, trimmed after.
  size_t most = 10;
  for (const Value& v : row) most += 11 + v.text().size();
  const size_t start = out.size();
  out.resize(start + most);
  char* p = out.data() + start;
  p = WriteVarint(p, row.size());
  for (const Value& v : row) {
    *p++ = static_cast<char>(v.type());
    switch (v.type()) {
      case ValueType::kNull:
        break;
      case ValueType::kBool:
      case ValueType::kInt64: {
        // Zig-zag so small negatives stay short.
        int64_t i = v.int_value();
        p = WriteVarint(p, (static_cast<uint64_t>(i) << 1) ^ static_cast<uint64_t>(i >> 63));
        break;
      }
      case ValueType::kDouble: {
        double d = v.double_value();
        std::memcpy(p, &d, sizeof(d));
        p += sizeof(d);
        break;
      }
      default:
        p = WriteVarint(p, v.text().size());
        std::memcpy(p, v.text().data(), v.text().size());
        p += v.text().size();
    }
  }
  out.resize(static_cast<size_t>(p - out.data()));
}

absl::StatusOr<Row> DecodeRow(std::string_view in) {
  auto corrupt = [] { return absl::DataLossError("corrupt spooled record"); };
  uint64_t n = 0;
  if (!GetVarint(in, n) || n > in.size()) return corrupt();
  Row row;
  row.reserve(n);
  for (uint64_t i = 0; i < n; ++i) {
    if (in.empty()) return corrupt();
    auto type = static_cast<ValueType>(in.front());
    in.remove_prefix(1);
    switch (type) {
      case ValueType::kNull:
        row.push_back(Value::Null());
        break;
      case ValueType::kBool:
      case ValueType::kInt64: {
        uint64_t z = 0;
        if (!GetVarint(in, z)) return corrupt();
        int64_t i64 = static_cast<int64_t>(z >> 1) ^ -static_cast<int64_t>(z & 1);
        row.push_back(type == ValueType::kBool ? Value::Bool(i64 != 0) : Value::Int64(i64));
        break;
      }
      case ValueType::kDouble: {
        if (in.size() < sizeof(double)) return corrupt();
        double d;
        std::memcpy(&d, in.data(), sizeof(d));
        in.remove_prefix(sizeof(d));
        row.push_back(Value::Double(d));
        break;
      }
      default: {
        if (static_cast<int>(type) > static_cast<int>(ValueType::kBytes)) return corrupt();
        uint64_t len = 0;
        if (!GetVarint(in, len) || len > in.size()) return corrupt();
        row.push_back(Value::Text(type, std::string(in.substr(0, len))));
        in.remove_prefix(len);
      }
    }
  }
  return row;
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
