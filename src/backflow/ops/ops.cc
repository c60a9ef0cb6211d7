#include "backflow/ops/ops.h"

#include <chrono>

#include "backflow/common/fmt_absl.h"
#include "backflow/destinations/destination.h"
#include "backflow/mapping/mapper.h"
#include "backflow/sources/source.h"
#include "fmt/format.h"

namespace backflow::ops {
namespace {

absl::Status Redacted(const Workspace& ws, const absl::Status& status) {
  if (status.ok()) return status;
  return absl::Status(status.code(), ws.RedactSecrets(std::string(status.message())));
}

template <typename T>
std::string UnknownMessage(const std::string& kind, const std::string& name,
                           const std::vector<T>& items) {
  std::vector<std::string> names;
  for (const T& item : items) names.push_back(item.name);
  std::string suggestion = ClosestMatch(name, names);
  return fmt::format("no {} named \"{}\"{}", kind, name,
                     suggestion.empty() ? "" : fmt::format(" (did you mean \"{}\"?)", suggestion));
}

}  // namespace

absl::StatusOr<ConnectionCheck> CheckConnection(const Workspace& ws, const Registry& registry,
                                                ConnectorEnv env, const std::string& name) {
  ConnectionCheck out;
  out.name = name;
  auto start = std::chrono::steady_clock::now();
  if (const SourceConfig* s = ws.FindSource(name)) {
    out.kind = "source";
    out.type = s->type;
    auto source = registry.FindSource(s->type)->create(s->settings, env);
    out.status = source.ok() ? (*source)->CheckConnection() : source.status();
  } else if (const DestinationConfig* d = ws.FindDestination(name)) {
    out.kind = "destination";
    out.type = d->type;
    auto dest = registry.FindDestination(d->type)->create(d->settings, env);
    out.status = dest.ok() ? (*dest)->CheckConnection() : dest.status();
  } else {
    std::vector<std::string> names;
    for (const auto& s : ws.sources) names.push_back(s.name);
    for (const auto& d : ws.destinations) names.push_back(d.name);
    std::string suggestion = ClosestMatch(name, names);
    return absl::NotFoundError(
        fmt::format("no source or destination named \"{}\"{}", name,
                    suggestion.empty() ? "" : fmt::format(" (did you mean \"{}\"?)", suggestion)));
  }
  out.duration_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  out.status = Redacted(ws, out.status);
  return out;
}

absl::StatusOr<PreviewResult> Preview(const Workspace& ws, const Registry& registry,
                                      ConnectorEnv env, const std::string& source_name,
                                      const std::string& sql, const std::string& primary_key,
                                      int limit) {
  const SourceConfig* sc = ws.FindSource(source_name);
  if (sc == nullptr) return absl::NotFoundError(UnknownMessage("source", source_name, ws.sources));
  PreviewResult out;
  auto source = registry.FindSource(sc->type)->create(sc->settings, env);
  absl::StatusOr<std::unique_ptr<RowReader>> reader =
      source.ok() ? (*source)->Query(LimitQuery(sql, limit)) : source.status();
  out.status = reader.status();
  if (reader.ok()) {
    Row row;
    while (static_cast<int>(out.rows.size()) < limit) {
      auto more = (*reader)->Next(row);
      if (!more.ok()) {
        out.status = more.status();
        break;
      }
      if (!*more) break;
      out.rows.push_back(row);
    }
    out.schema = (*reader)->schema();
    out.has_key = FindColumn(out.schema, primary_key) >= 0;
  }
  out.status = Redacted(ws, out.status);
  return out;
}

absl::StatusOr<MappingTestResult> TestMapping(const Workspace& ws, const Registry& registry,
                                              ConnectorEnv env, const std::string& mapping_name,
                                              const std::optional<std::string>& record_key) {
  const MappingConfig* mapping = ws.FindMapping(mapping_name);
  if (mapping == nullptr) {
    return absl::NotFoundError(UnknownMessage("mapping", mapping_name, ws.mappings));
  }
  const ModelConfig* model = ws.FindModel(mapping->model);
  const SourceConfig* sc = ws.FindSource(model->source);
  const DestinationConfig* dc = ws.FindDestination(mapping->destination);
  const ActionSpec* action = registry.FindDestination(dc->type)->FindAction(mapping->action);
  MappingTestResult out;
  auto source = registry.FindSource(sc->type)->create(sc->settings, env);
  // Without a key, the first row. With one, the model's rows are scanned for
  // the key on the client (the key compared as text, like the engine does);
  // a second match means the key is duplicated.
  std::string sql = record_key ? model->sql : LimitQuery(model->sql, 1);
  absl::StatusOr<std::unique_ptr<RowReader>> reader =
      source.ok() ? (*source)->Query(sql) : source.status();
  Row row, next;
  absl::Status status = reader.status();
  bool found = false, duplicated = false;
  if (reader.ok()) {
    const int key_index = FindColumn((*reader)->schema(), model->primary_key);
    if (record_key && key_index < 0) {
      status = absl::FailedPreconditionError(fmt::format(
          "its SQL returns no column named {} (the model's primary_key)", model->primary_key));
    }
    while (status.ok()) {
      absl::StatusOr<bool> more = (*reader)->Next(found ? next : row);
      status = more.status();
      if (!more.ok() || !*more) break;
      if (!record_key) {
        found = true;
        break;
      }
      const Row& current = found ? next : row;
      if (current[key_index].is_null() || current[key_index].ToString() != *record_key) continue;
      if (found) {
        duplicated = true;
        break;
      }
      found = true;
    }
  }
  status = Redacted(ws, status);
  if (!status.ok()) {
    out.status =
        absl::Status(status.code(), fmt::format("model \"{}\" on source \"{}\": {}", model->name,
                                                model->source, status.message()));
    return out;
  }
  if (!found) {
    out.status =
        absl::NotFoundError(record_key ? fmt::format("model \"{}\" has no row with {} = {}",
                                                     model->name, model->primary_key, *record_key)
                                       : fmt::format("model \"{}\" returns no rows", model->name));
    return out;
  }
  const Schema& schema = (*reader)->schema();
  auto mapper = Mapper::Create(mapping->name, model->name, mapping->fields, *action, schema,
                               model->primary_key);
  if (!mapper.ok()) {
    out.status = mapper.status();
    return out;
  }
  out.key = row[FindColumn(schema, model->primary_key)].ToString();
  Row payload;
  absl::Status mapped = mapper->Map(row, payload);
  if (duplicated) {
    mapped = absl::InvalidArgumentError(
        fmt::format("duplicate unique identifier: several rows have {} = {}; none of them is sent",
                    model->primary_key, out.key));
  }
  out.row_json = JsonObject(schema, row);
  OutgoingRecord record;
  record.key = out.key;
  record.values = payload;
  out.mapped = Redacted(ws, mapped);
  out.payload_json =
      out.mapped.ok() ? ws.RedactSecrets(RecordFieldsJson(mapper->layout(), record)) : "null";
  return out;
}

}  // namespace backflow::ops
