#include "backflow/destinations/destination.h"

#include <cstdlib>

#include "backflow/common/clock.h"
#include "backflow/common/crypto.h"
#include "fmt/format.h"

namespace backflow {

std::string_view ChangeKindName(ChangeKind k) {
  switch (k) {
    case ChangeKind::kAdded:
      return "added";
    case ChangeKind::kUpdated:
      return "updated";
    case ChangeKind::kDeleted:
      return "deleted";
  }
  return "added";
}

std::string RecordFieldsJson(const FieldLayout& layout, const OutgoingRecord& record) {
  return JsonObject(record.is_delete() ? layout.identity : layout.fields, record.values);
}

nlohmann::json ValueToJson(const Value& v) {
  switch (v.type()) {
    case ValueType::kNull:
      return nullptr;
    case ValueType::kBool:
      return v.bool_value();
    case ValueType::kInt64:
      return v.int_value();
    case ValueType::kDouble:
      return v.double_value();
    case ValueType::kDecimal: {
      const std::string& t = v.text();
      if (t.find('.') == std::string::npos && t.size() <= 18)
        return std::strtoll(t.c_str(), nullptr, 10);
      double d = std::strtod(t.c_str(), nullptr);
      // Keep the exact digits when a double would change them.
      nlohmann::json as_number = d;
      std::string back = as_number.dump();
      std::string trimmed = t;
      if (trimmed.find('.') != std::string::npos) {
        while (trimmed.ends_with('0')) trimmed.pop_back();
        if (trimmed.ends_with('.')) trimmed.pop_back();
      }
      if (back == trimmed || back == trimmed + ".0") return as_number;
      return t;
    }
    case ValueType::kJson: {
      nlohmann::json parsed = nlohmann::json::parse(v.text(), nullptr, /*allow_exceptions=*/false);
      if (parsed.is_discarded()) return v.text();
      return parsed;
    }
    case ValueType::kBytes:
      return Base64Encode(v.text());
    case ValueType::kString:
    case ValueType::kTimestamp:
    case ValueType::kDate:
      return v.text();
  }
  return nullptr;
}

nlohmann::json RecordPayload(const FieldLayout& layout, const OutgoingRecord& record) {
  const std::vector<std::string>& names = record.is_delete() ? layout.identity : layout.fields;
  nlohmann::json out = nlohmann::json::object();
  for (size_t i = 0; i < names.size() && i < record.values.size(); ++i) {
    nlohmann::json* node = &out;
    std::string_view path = names[i];
    for (size_t dot = path.find('.'); dot != std::string_view::npos; dot = path.find('.')) {
      nlohmann::json& child = (*node)[std::string(path.substr(0, dot))];
      if (!child.is_object()) child = nlohmann::json::object();
      node = &child;
      path.remove_prefix(dot + 1);
    }
    (*node)[std::string(path)] = ValueToJson(record.values[i]);
  }
  return out;
}

absl::StatusOr<HttpServices> HttpServicesOf(std::string_view type, const ConnectorEnv& env) {
  if (env.http == nullptr) {
    return absl::InternalError(
        fmt::format("{} destination needs an HTTP client (ConnectorEnv.http)", type));
  }
  return HttpServices{env.http, env.clock != nullptr ? env.clock : &SystemClock()};
}

}  // namespace backflow
