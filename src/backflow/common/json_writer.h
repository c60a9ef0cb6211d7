// JsonWriter: an append-only, allocation-light JSON text builder.
//
// Used on hot paths (payload encoding, run summaries) where building a DOM
// would cost more than the data. The caller is responsible for well-formed
// nesting; commas between members and elements are inserted automatically.
// Not thread-safe.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace backflow {

// Appends `s` to `out` as a quoted JSON string, escaping control characters,
// quotes and backslashes. Bytes >= 0x80 are copied through (UTF-8 in, UTF-8 out).
void AppendJsonString(std::string& out, std::string_view s);

class JsonWriter {
 public:
  JsonWriter& BeginObject();
  JsonWriter& EndObject();
  JsonWriter& BeginArray();
  JsonWriter& EndArray();
  // Writes an object member name; the next call writes its value.
  JsonWriter& Key(std::string_view key);
  JsonWriter& String(std::string_view s);
  JsonWriter& Int(int64_t v);
  JsonWriter& Double(double v);
  JsonWriter& Bool(bool v);
  JsonWriter& Null();
  // Writes `json` verbatim as one value. Requires: `json` is valid JSON.
  JsonWriter& Raw(std::string_view json);

  const std::string& str() const { return out_; }
  std::string Release() { return std::move(out_); }
  void Clear();

 private:
  void BeforeValue();

  std::string out_;
  // One entry per open container: true once it holds an element.
  std::vector<bool> has_elements_;
  bool after_key_ = false;
};

}  // namespace backflow
