#include "backflow/mapping/mapper.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <memory>

#include "backflow/common/fmt_absl.h"
#include "fmt/format.h"
#include "fmt/ranges.h"

namespace backflow {

absl::StatusOr<Mapper> Mapper::Create(const std::string& mapping_name,
                                      const std::string& model_name,
                                      const std::vector<MappedField>& fields,
                                      const ActionSpec& action, const Schema& schema,
                                      const std::string& primary_key) {
  Mapper m;
  m.mapping_ = mapping_name;
  std::vector<std::string> missing;
  for (const MappedField& f : fields) {
    absl::StatusOr<Expression> expr = Expression::Parse(f.value);
    if (!expr.ok()) {
      return absl::FailedPreconditionError(fmt::format(
          "mapping \"{}\": field \"{}\": {}", mapping_name, f.field, expr.status().message()));
    }
    std::vector<std::string> absent = expr->Bind(schema);
    if (!absent.empty()) {
      for (std::string& c : absent) {
        if (std::find(missing.begin(), missing.end(), c) == missing.end()) {
          missing.push_back(std::move(c));
        }
      }
      continue;
    }
    m.layout_.fields.push_back(f.field);
    m.columns_.push_back(expr->is_column() ? FindColumn(schema, expr->columns().front()) : -1);
    m.specs_.push_back(action.FindField(f.field));
    // A field computed from the unique identifier alone identifies the record.
    if (expr->columns().size() == 1 && expr->columns().front() == primary_key) {
      m.layout_.identity.push_back(f.field);
      m.identity_.push_back(static_cast<int>(m.columns_.size()) - 1);
    }
    m.expressions_.push_back(*std::move(expr));
  }
  // Declared fields left unmapped take their default column when the model has it.
  for (const FieldSpec& spec : action.fields) {
    if (spec.default_column.empty()) continue;
    bool mapped = false;
    for (const MappedField& f : fields) mapped |= f.field == spec.key;
    if (mapped) continue;
    int index = FindColumn(schema, spec.default_column);
    if (index < 0) {
      if (spec.required) missing.push_back(spec.default_column);
      continue;
    }
    m.layout_.fields.push_back(spec.key);
    m.columns_.push_back(index);
    m.specs_.push_back(&spec);
    m.expressions_.emplace_back();  // unused: a plain column
    if (spec.default_column == primary_key) {
      m.layout_.identity.push_back(spec.key);
      m.identity_.push_back(static_cast<int>(m.columns_.size()) - 1);
    }
  }
  if (!missing.empty()) {
    std::vector<std::string> names;
    for (const Column& c : schema) names.push_back(c.name);
    return absl::FailedPreconditionError(fmt::format(
        "mapping \"{}\" maps column{} {} that model \"{}\" no longer returns (its SQL returns: "
        "{}); nothing was sent. Fix the model's SQL or the mapping's fields (a text literal is "
        "written in single quotes, inside double quotes in YAML: plan: \"'pro'\").",
        mapping_name, missing.size() > 1 ? "s" : "", fmt::join(missing, ", "), model_name,
        fmt::join(names, ", ")));
  }
  auto names = std::make_shared<Hasher128>();
  for (const std::string& f : m.layout_.fields) names->Add(f);
  m.field_names_hash_ = std::move(names);
  m.payload_is_row_ = m.columns_.size() == schema.size();
  for (size_t i = 0; i < m.columns_.size() && m.payload_is_row_; ++i) {
    m.payload_is_row_ = m.columns_[i] == static_cast<int>(i);
  }
  return m;
}

namespace {

// False when the field lists its allowed values and the (string) value is
// not one of them.
template <class V>  // Value or ValueView
bool IsAllowedValue(const FieldSpec& spec, const V& v) {
  return spec.allowed_values.empty() || v.type() != ValueType::kString ||
         std::find(spec.allowed_values.begin(), spec.allowed_values.end(), v.text()) !=
             spec.allowed_values.end();
}

// True when CoerceValue(v, type) would return `v` unchanged.
template <class V>  // Value or ValueView
bool AlreadyOfType(const V& v, FieldType type) {
  switch (type) {
    case FieldType::kAny:
    case FieldType::kObject:
      return true;
    case FieldType::kString:
      return v.type() == ValueType::kString;
    case FieldType::kInteger:
      return v.type() == ValueType::kInt64;
    case FieldType::kNumber:
      return v.type() == ValueType::kInt64 || v.type() == ValueType::kDouble ||
             v.type() == ValueType::kDecimal;
    case FieldType::kBoolean:
      return v.type() == ValueType::kBool;
    case FieldType::kTimestamp:
      return v.type() == ValueType::kTimestamp;
    case FieldType::kDate:
      return v.type() == ValueType::kDate;
  }
  return false;
}

}  // namespace

absl::Status Mapper::Map(const Row& row, Row& payload) const {
  payload.resize(columns_.size());
  Value computed;
  for (size_t i = 0; i < columns_.size(); ++i) {
    if (columns_[i] < 0) {
      absl::StatusOr<Value> v = expressions_[i].Evaluate(row);
      if (!v.ok()) {
        return absl::InvalidArgumentError(fmt::format("field \"{}\" = {}: {}", layout_.fields[i],
                                                      expressions_[i].text(),
                                                      v.status().message()));
      }
      computed = *std::move(v);
    }
    const Value& v = columns_[i] < 0 ? computed : row[columns_[i]];
    const FieldSpec* spec = specs_[i];
    if (spec == nullptr) {
      payload[i] = v;
      continue;
    }
    if (v.is_null()) {
      if (spec->required) {
        return absl::InvalidArgumentError(
            fmt::format("required field \"{}\" is null", layout_.fields[i]));
      }
      payload[i] = v;
      continue;
    }
    if (AlreadyOfType(v, spec->type)) {
      payload[i] = v;  // copy-assignment reuses the payload's buffers from the last row
    } else {
      auto coerced = CoerceValue(v, spec->type);
      if (!coerced.ok()) {
        return absl::InvalidArgumentError(
            fmt::format("field \"{}\": {}", layout_.fields[i], coerced.status().message()));
      }
      payload[i] = *std::move(coerced);
    }
    const Value& out = payload[i];
    if (!IsAllowedValue(*spec, out)) {
      return absl::InvalidArgumentError(fmt::format("field \"{}\": \"{}\" is not one of {}",
                                                    layout_.fields[i], out.text(),
                                                    fmt::join(spec->allowed_values, ", ")));
    }
  }
  return absl::OkStatus();
}

template <class V>
std::optional<Fingerprint> Mapper::FingerprintOfValuesAsPayload(
    const std::vector<V>& row, std::string_view encoded_row) const {
  if (!payload_is_row_ || row.size() != columns_.size()) return std::nullopt;
  // Map() would copy each value unchanged: no field needs a coercion, none
  // refuses its value.
  for (size_t i = 0; i < row.size(); ++i) {
    const FieldSpec* spec = specs_[i];
    if (spec == nullptr) continue;
    const V& v = row[i];
    if (v.is_null()) {
      if (spec->required) return std::nullopt;
      continue;
    }
    if (!AlreadyOfType(v, spec->type) || !IsAllowedValue(*spec, v)) return std::nullopt;
  }
  return field_names_hash_->FinishWith(encoded_row);
}

std::optional<Fingerprint> Mapper::FingerprintOfRowAsPayload(const Row& row,
                                                             std::string_view encoded_row) const {
  return FingerprintOfValuesAsPayload(row, encoded_row);
}

std::optional<Fingerprint> Mapper::FingerprintOfRowAsPayload(const std::vector<ValueView>& row,
                                                             std::string_view encoded_row) const {
  return FingerprintOfValuesAsPayload(row, encoded_row);
}

Row Mapper::Identity(const Row& payload) const {
  Row out;
  out.reserve(identity_.size());
  for (int i : identity_) out.push_back(payload[i]);
  return out;
}

Fingerprint Mapper::PayloadFingerprint(const Row& payload) const {
  // The same value as hashing the field names then the encoded payload, one
  // piece each (what checkpoints hold), without re-hashing the names.
  thread_local std::string encoded;
  encoded.clear();
  EncodeRow(payload, encoded);
  return field_names_hash_->FinishWith(encoded);
}

std::string Mapper::DedupId(std::string_view key, std::string_view change,
                            const Fingerprint& fingerprint) const {
  Hasher128 h;
  h.Add(mapping_).Add(key).Add(change).Add(fingerprint.ToHex());
  return h.Finish().ToHex();
}

absl::StatusOr<Value> CoerceValue(const Value& v, FieldType type) {
  auto fail = [&](std::string_view want) {
    return absl::InvalidArgumentError(fmt::format("cannot convert {} value \"{}\" to {}",
                                                  ValueTypeName(v.type()), v.ToString(), want));
  };
  switch (type) {
    case FieldType::kAny:
    case FieldType::kObject:
      return v;
    case FieldType::kString:
      if (v.type() == ValueType::kString) return v;
      return Value::String(v.type() == ValueType::kJson ? v.text() : v.ToString());
    case FieldType::kInteger: {
      if (v.type() == ValueType::kInt64) return v;
      if (v.type() == ValueType::kBool) return Value::Int64(v.bool_value());
      if (v.type() == ValueType::kDouble) {
        double d = v.double_value();
        if (std::isfinite(d) && std::trunc(d) == d && std::fabs(d) < 9.2e18) {
          return Value::Int64(static_cast<int64_t>(d));
        }
        return fail("an integer");
      }
      const std::string& t = v.text();
      std::string_view digits = t;
      if (v.type() == ValueType::kDecimal) digits = digits.substr(0, digits.find('.'));
      if (v.type() == ValueType::kDecimal && digits.size() != t.size() &&
          t.find_first_not_of('0', digits.size() + 1) != std::string::npos) {
        return fail("an integer");
      }
      int64_t out = 0;
      auto [ptr, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), out);
      if (ec != std::errc() || ptr != digits.data() + digits.size() || digits.empty()) {
        return fail("an integer");
      }
      return Value::Int64(out);
    }
    case FieldType::kNumber: {
      if (v.type() == ValueType::kInt64 || v.type() == ValueType::kDouble ||
          v.type() == ValueType::kDecimal) {
        return v;
      }
      if (v.type() == ValueType::kString) {
        double d = 0;
        const std::string& t = v.text();
        auto [ptr, ec] = std::from_chars(t.data(), t.data() + t.size(), d);
        if (ec == std::errc() && ptr == t.data() + t.size() && !t.empty()) {
          return Value::Text(ValueType::kDecimal, t);
        }
      }
      return fail("a number");
    }
    case FieldType::kBoolean: {
      if (v.type() == ValueType::kBool) return v;
      if (v.type() == ValueType::kInt64 && (v.int_value() == 0 || v.int_value() == 1)) {
        return Value::Bool(v.int_value() == 1);
      }
      if (v.type() == ValueType::kString) {
        if (v.text() == "true" || v.text() == "t" || v.text() == "1") return Value::Bool(true);
        if (v.text() == "false" || v.text() == "f" || v.text() == "0") return Value::Bool(false);
      }
      return fail("a boolean");
    }
    case FieldType::kTimestamp:
      if (v.type() == ValueType::kTimestamp) return v;
      if (v.type() == ValueType::kDate || v.type() == ValueType::kString) {
        absl::StatusOr<Value> t = ToTimestamp(v);
        if (t.ok()) return t;
      }
      return absl::InvalidArgumentError(fmt::format(
          "cannot convert {} value \"{}\" to a timestamp (ISO-8601 expected; for seconds since "
          "1970 map iso8601(column))",
          ValueTypeName(v.type()), v.ToString()));
    case FieldType::kDate:
      if (v.type() == ValueType::kDate) return v;
      if (v.type() == ValueType::kTimestamp || v.type() == ValueType::kString) {
        if (v.text().size() >= 10) return Value::Text(ValueType::kDate, v.text().substr(0, 10));
      }
      return fail("a date");
  }
  return v;
}

}  // namespace backflow
