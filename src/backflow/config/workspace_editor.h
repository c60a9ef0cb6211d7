// Programmatic changes to the workspace YAML file (the REST API's create,
// update and delete of sources, models, destinations and mappings), and the
// workspace "as the service sees it" for `backflow export`.
//
// The file stays the one configuration, written by people: a change touches
// only the text of the entry it changes. Appending writes the new entry after
// the section's last one (in the style of that entry: block or one-line flow);
// removing deletes the entry's lines (and the comment lines directly above
// it, at its indentation); replacing goes key by key: unchanged keys keep
// their text, removed ones lose their lines, new ones come after the last,
// and a changed key is written again, except that a changed block mapping
// (`fields:`, `settings:`) is itself edited member by member. So comments,
// blank lines, key order, quoting and layout of everything the change does
// not touch are kept byte for byte; what is lost is a comment on a line that
// is written again (e.g. `sql: ... # note` when the SQL changes, or inside a
// changed list or flow-style `{ ... }` value), and a flow-style entry
// (`- { name: ... }`) that changes is written again whole, on one line.
//
// Every edit is checked: the new text is parsed again and must hold exactly
// the intended document. When a layout the targeted edit does not handle
// breaks that check (a flow-style section, an unusual indentation, ...), the
// whole document is written again from its data instead (Edit::layout_kept is
// false): the content is then right but the file's comments are lost.
//
// Nothing here validates a workspace: callers run LoadWorkspaceFromString()
// on Edit::text, as `backflow validate` would on the file.
//
// A WorkspaceDocument is immutable after Parse() and safe to share.
#pragma once

#include <yaml-cpp/yaml.h>

#include <optional>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "backflow/catalog/registry.h"
#include "backflow/config/workspace.h"
#include "nlohmann/json.hpp"

namespace backflow {

using OrderedJson = nlohmann::ordered_json;

// The named entries of a workspace file the editor changes.
enum class EntryKind { kSource, kModel, kDestination, kMapping };
// "sources", "models", "destinations", "mappings".
std::string_view SectionKey(EntryKind kind);
// "source", ...
std::string_view EntryNoun(EntryKind kind);
std::optional<EntryKind> EntryKindFromSection(std::string_view section);

class WorkspaceDocument {
 public:
  // kInvalidArgument, with the parser's line and column, when `text` is not
  // YAML or its top level is not a mapping. An empty text is an empty workspace.
  static absl::StatusOr<WorkspaceDocument> Parse(std::string text);

  const std::string& text() const { return text_; }
  // The whole document as JSON, scalars typed the way the loader reads them:
  // unquoted true/false are booleans, unquoted whole numbers integers, other
  // unquoted numbers doubles, null/~/nothing null; quoted and block scalars
  // and everything else are strings.
  const OrderedJson& json() const { return json_; }

  // The section's entries as written; an empty array when the section is
  // missing, empty or not a list.
  OrderedJson Entries(EntryKind kind) const;
  // The index of the entry named `name` in its section.
  std::optional<size_t> Find(EntryKind kind, const std::string& name) const;

  struct Edit {
    std::string text;         // the new file content
    bool layout_kept = true;  // false: the whole file was written again (comments lost)
  };
  // Adds `entry` (a JSON object) at the end of its section, creating the
  // section when the file has none.
  absl::StatusOr<Edit> Append(EntryKind kind, const OrderedJson& entry) const;
  // Replaces entry `index` by `entry`; keys whose values are unchanged keep their text.
  absl::StatusOr<Edit> Replace(EntryKind kind, size_t index, const OrderedJson& entry) const;
  absl::StatusOr<Edit> Remove(EntryKind kind, size_t index) const;

 private:
  WorkspaceDocument() = default;

  // The document the edit must produce, and the targeted text for it (nullopt
  // when the layout is not one the targeted edit handles).
  absl::StatusOr<Edit> Finish(const std::optional<std::string>& targeted,
                              const OrderedJson& expected) const;
  std::optional<std::string> TargetedAppend(EntryKind kind, const OrderedJson& entry) const;
  std::optional<std::string> TargetedReplace(EntryKind kind, size_t index,
                                             const OrderedJson& entry) const;
  std::optional<std::string> TargetedRemove(EntryKind kind, size_t index) const;
  std::optional<std::string> RewriteSection(EntryKind kind, const OrderedJson& entries) const;

  std::string text_;
  YAML::Node root_;
  OrderedJson json_;
};

// RFC 7396 JSON merge patch: members of `patch` replace those of `target`,
// null members remove them, objects are merged recursively. `target`'s key
// order is kept; new keys come last.
OrderedJson MergePatch(OrderedJson target, const OrderedJson& patch);

// `value` as block-style YAML, the way the editor writes entries (strings
// quoted when they would otherwise read as another type, multi-line strings
// as literal blocks), with a blank line before each top-level list or mapping.
std::string EmitYaml(const OrderedJson& value);

// Whether `value` is exactly one ${secret:NAME} or ${env:NAME} reference.
bool IsPureSecretReference(std::string_view value);

// The workspace as the service sees it, for `backflow export` and
// GET /api/v1/workspace: the document as written, ${secret:...} and
// ${env:...} references kept as written; a value written in clear where a
// secret belongs (settings the catalog marks secret, alert credentials, a
// state URL's password) replaced by "••••••". With `loaded` (the document's
// successful load), the defaults the loader fills in are written out too:
// connector settings with a default, a mapping's `records` and `enabled`, a
// model's `schedule: manual`.
OrderedJson ExportDocument(const WorkspaceDocument& document, const Workspace* loaded,
                           const Registry& registry);

// The whole file, or kNotFound / kUnavailable with the reason.
absl::StatusOr<std::string> ReadTextFile(const std::string& path);
// Replaces `path` (following a symbolic link to its target) by `text`
// atomically: a temporary file in the same folder, written, fsynced, given the
// old file's permissions, renamed over it, and the folder fsynced. Readers
// see the old or the new content, never a mix. kUnavailable with the reason
// on failure (the old file is then untouched).
absl::Status WriteFileAtomically(const std::string& path, std::string_view text);

}  // namespace backflow
