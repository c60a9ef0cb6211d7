// Mapper: turns a model row into an action payload for one mapping.
//
// Built once per run against the model's result schema, it resolves every
// mapped column (a missing one is a run-level error, raised before anything
// is sent), coerces values to the action's declared field types and computes
// the payload fingerprint the change detection compares. Immutable after
// Create(); safe to share between threads.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "backflow/catalog/definitions.h"
#include "backflow/common/hash.h"
#include "backflow/destinations/destination.h"
#include "backflow/mapping/expression.h"
#include "backflow/model/value.h"

namespace backflow {

class Mapper {
 public:
  // Each field's value is an Expression (mapping/expression.h), usually just
  // a column. kFailedPrecondition when a referenced column is not in
  // `schema`, naming the column, the model and the columns it does return.
  static absl::StatusOr<Mapper> Create(const std::string& mapping_name,
                                       const std::string& model_name,
                                       const std::vector<MappedField>& fields,
                                       const ActionSpec& action, const Schema& schema,
                                       const std::string& primary_key);

  const FieldLayout& layout() const { return layout_; }

  // Fills `payload` (FieldLayout::fields order). kInvalidArgument, naming the
  // field, when a required field is null or a value cannot be coerced to the
  // field's declared type.
  absl::Status Map(const Row& row, Row& payload) const;

  // The identity values (FieldLayout::identity order) of a mapped payload.
  Row Identity(const Row& payload) const;

  // Fingerprint of a mapped payload: changes exactly when what would be sent
  // changes (field keys included).
  Fingerprint PayloadFingerprint(const Row& payload) const;

  // PayloadFingerprint(Map(row)) without mapping, when the payload of `row`
  // is `row` itself: the mapping sends every column of the model, in the
  // model's order, and each value already has its field's type (and is not a
  // NULL for a required field, and is one of the field's allowed values).
  // `encoded_row` is EncodeRow(row). nullopt otherwise: then Map() and
  // PayloadFingerprint() (which also say why a row does not map).
  std::optional<Fingerprint> FingerprintOfRowAsPayload(const Row& row,
                                                       std::string_view encoded_row) const;
  // The same from the views of `encoded_row`'s values (DecodeRowViews).
  std::optional<Fingerprint> FingerprintOfRowAsPayload(const std::vector<ValueView>& row,
                                                       std::string_view encoded_row) const;

  // Deterministic dedup id for a record change.
  std::string DedupId(std::string_view key, std::string_view change,
                      const Fingerprint& fingerprint) const;

 private:
  template <class V>
  std::optional<Fingerprint> FingerprintOfValuesAsPayload(const std::vector<V>& row,
                                                          std::string_view encoded_row) const;
  std::string mapping_;
  FieldLayout layout_;
  std::vector<int> columns_;             // schema index per plain-column field, else -1
  std::vector<Expression> expressions_;  // per field; evaluated when columns_[i] < 0
  std::vector<const FieldSpec*> specs_;  // declared spec per field, or null
  std::vector<int> identity_;            // payload index per identity field
  bool payload_is_row_ = false;          // columns_ is 0, 1, ... schema.size() - 1
  // The fingerprint hash state after the field names (shared by copies).
  std::shared_ptr<const Hasher128> field_names_hash_;
};

// Coerces `v` to a destination field type. kInvalidArgument when impossible.
absl::StatusOr<Value> CoerceValue(const Value& v, FieldType type);

}  // namespace backflow
