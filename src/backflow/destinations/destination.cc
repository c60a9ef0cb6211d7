#include "backflow/destinations/destination.h"

#include "backflow/common/json_writer.h"

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
  const std::vector<std::string>& names = record.is_delete() ? layout.identity : layout.fields;
  std::string out = "{";
  for (size_t i = 0; i < names.size() && i < record.values.size(); ++i) {
    if (i > 0) out.push_back(',');
    AppendJsonString(out, names[i]);
    out.push_back(':');
    record.values[i].AppendJson(out);
  }
  out.push_back('}');
  return out;
}

}  // namespace backflow
