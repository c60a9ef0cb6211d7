#include "backflow/destinations/destination.h"

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

}  // namespace backflow
