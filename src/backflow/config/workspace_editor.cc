#include "backflow/config/workspace_editor.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>
#include <utility>
#include <vector>

#include "fmt/format.h"

namespace backflow {
namespace {

namespace fs = std::filesystem;

constexpr const char* kMask = "••••••";
// Top-level keys in the order a new section is placed among the existing ones.
constexpr const char* kSectionOrder[] = {"version", "state",        "secret_key_file", "sources",
                                         "models",  "destinations", "mappings",        "alerts"};

// ------------------------------------------------------------ YAML -> JSON

OrderedJson ToJson(const YAML::Node& node) {
  static const std::regex kInt("^-?[0-9]+$");
  static const std::regex kFloat(
      "^[-+]?(([0-9]+\\.[0-9]*|\\.[0-9]+)([eE][-+]?[0-9]+)?|[0-9]+[eE][-+]?[0-9]+)$");
  switch (node.Type()) {
    case YAML::NodeType::Scalar: {
      const std::string& s = node.Scalar();
      if (node.Tag() != "?") return s;  // quoted, block or explicitly tagged: text
      if (s == "true") return true;
      if (s == "false") return false;
      try {
        if (std::regex_match(s, kInt)) return std::stoll(s);
        if (std::regex_match(s, kFloat)) return std::stod(s);
      } catch (const std::exception&) {
        // Out of range: kept as text.
      }
      return s;
    }
    case YAML::NodeType::Sequence: {
      OrderedJson out = OrderedJson::array();
      for (const YAML::Node& item : node) out.push_back(ToJson(item));
      return out;
    }
    case YAML::NodeType::Map: {
      OrderedJson out = OrderedJson::object();
      for (auto it = node.begin(); it != node.end(); ++it) {
        out[it->first.Scalar()] = ToJson(it->second);
      }
      return out;
    }
    default:
      return nullptr;
  }
}

// The same document: the top level in any order (a new section may be placed
// among the others), everything below in order (a mapping's fields are sent
// in file order).
bool SameDocument(const OrderedJson& a, const OrderedJson& b) {
  if (!a.is_object() || !b.is_object() || a.size() != b.size()) return a == b;
  for (auto it = a.begin(); it != a.end(); ++it) {
    auto other = b.find(it.key());
    if (other == b.end() || !(*other == it.value())) return false;
  }
  return true;
}

// ------------------------------------------------------------ JSON -> YAML

bool IsSpecialWord(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  for (const char* w : {"true", "false", "yes", "no", "on", "off", "y", "n", "null", "~"}) {
    if (s == w) return true;
  }
  return false;
}

// Whether `s` can be written unquoted and read back as the same string.
bool PlainOk(const std::string& s, bool flow) {
  if (s.empty() || s.front() == ' ' || s.back() == ' ') return false;
  for (unsigned char c : s) {
    if (c < 0x20 || c == 0x7f) return false;
  }
  if (std::string_view("-?:,[]{}#&*!|>'\"%@`").find(s.front()) != std::string_view::npos) {
    return false;
  }
  if (s.find(": ") != std::string::npos || s.find(" #") != std::string::npos || s.back() == ':') {
    return false;
  }
  if (flow && s.find_first_of(",[]{}") != std::string::npos) return false;
  if (IsSpecialWord(s)) return false;
  // Anything a YAML 1.1 or 1.2 reader could take for a number: integers
  // (also 0x/0o/0b, with '_'), floats, 1.1 sexagesimals like 09:00, .inf, .nan.
  static const std::regex kNumeric(
      "^[-+]?[0-9][0-9_]*$"
      "|^[-+]?0[xob][0-9a-fA-F_]+$"
      "|^[-+]?([0-9][0-9_]*)?\\.[0-9_]*([eE][-+]?[0-9]+)?$"
      "|^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$"
      "|^[-+]?[0-9][0-9_]*(:[0-9_]+)+(\\.[0-9_]*)?$"
      "|^[-+]?\\.(inf|Inf|INF|nan|NaN|NAN)$");
  return !std::regex_match(s, kNumeric);
}

std::string Quoted(const std::string& s) {
  // A JSON string is a valid YAML double-quoted scalar.
  return nlohmann::json(s).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

std::string Key(const std::string& k, bool flow) { return PlainOk(k, flow) ? k : Quoted(k); }

std::string Scalar(const OrderedJson& v, bool flow) {
  if (v.is_null()) return "null";
  if (v.is_boolean()) return v.get<bool>() ? "true" : "false";
  if (v.is_number()) return v.dump();
  if (v.is_string()) {
    const std::string& s = v.get_ref<const std::string&>();
    return PlainOk(s, flow) ? s : Quoted(s);
  }
  if (v.is_object()) return "{}";
  return "[]";
}

std::string Spaces(size_t n) { return std::string(n, ' '); }

// Multi-line text that reads back the same as a literal block (`|`).
bool LiteralOk(const std::string& s) {
  if (s.find('\n') == std::string::npos) return false;
  if (s.front() == ' ' || s.front() == '\t' || s.front() == '\n') return false;
  for (unsigned char c : s) {
    if ((c < 0x20 && c != '\n' && c != '\t') || c == 0x7f) return false;
  }
  std::string body = s.substr(0, s.find_last_not_of('\n') + 1);
  std::istringstream in(body);
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty() && (line.back() == ' ' || line.back() == '\t')) return false;
  }
  return true;
}

void EmitLiteral(const std::string& s, size_t indent, std::string& out) {
  size_t last = s.find_last_not_of('\n');
  size_t trailing = s.size() - last - 1;
  out += trailing == 0 ? " |-\n" : trailing == 1 ? " |\n" : " |+\n";
  std::string body = s.substr(0, last + 1);
  size_t pos = 0;
  while (pos <= body.size()) {
    size_t nl = body.find('\n', pos);
    if (nl == std::string::npos) nl = body.size();
    std::string line = body.substr(pos, nl - pos);
    out += line.empty() ? "\n" : Spaces(indent) + line + "\n";
    pos = nl + 1;
  }
  for (size_t i = 1; i < trailing; ++i) out += "\n";
}

void EmitFlow(const OrderedJson& v, std::string& out) {
  if (v.is_object() && !v.empty()) {
    out += "{ ";
    bool first = true;
    for (auto it = v.begin(); it != v.end(); ++it) {
      if (!first) out += ", ";
      first = false;
      out += Key(it.key(), true) + ": ";
      EmitFlow(it.value(), out);
    }
    out += " }";
  } else if (v.is_array() && !v.empty()) {
    out += "[";
    for (size_t i = 0; i < v.size(); ++i) {
      if (i > 0) out += ", ";
      EmitFlow(v[i], out);
    }
    out += "]";
  } else {
    out += Scalar(v, true);
  }
}

void EmitMap(const OrderedJson& m, size_t indent, std::string& out);
void EmitSeq(const OrderedJson& a, size_t indent, std::string& out);

// What follows "key:" (or "-") written at column `indent`, with its line break.
void EmitValue(const OrderedJson& v, size_t indent, std::string& out) {
  if (v.is_object() && !v.empty()) {
    out += "\n";
    EmitMap(v, indent + 2, out);
  } else if (v.is_array() && !v.empty()) {
    out += "\n";
    EmitSeq(v, indent + 2, out);
  } else if (v.is_string() && LiteralOk(v.get_ref<const std::string&>())) {
    EmitLiteral(v.get_ref<const std::string&>(), indent + 2, out);
  } else {
    out += " " + Scalar(v, false) + "\n";
  }
}

void EmitMap(const OrderedJson& m, size_t indent, std::string& out) {
  for (auto it = m.begin(); it != m.end(); ++it) {
    out += Spaces(indent) + Key(it.key(), false) + ":";
    EmitValue(it.value(), indent, out);
  }
}

// One sequence item, "- ..." at column `dash`.
std::string BlockItem(const OrderedJson& item, size_t dash) {
  std::string inner;
  if (item.is_object() && !item.empty()) {
    EmitMap(item, dash + 2, inner);
  } else if (item.is_array() && !item.empty()) {
    EmitSeq(item, dash + 2, inner);
  } else {
    std::string out = Spaces(dash) + "-";
    EmitValue(item, dash, out);
    return out;
  }
  return Spaces(dash) + "- " + inner.substr(dash + 2);
}

std::string FlowItem(const OrderedJson& item, size_t dash) {
  std::string out = Spaces(dash) + "- ";
  EmitFlow(item, out);
  return out + "\n";
}

void EmitSeq(const OrderedJson& a, size_t indent, std::string& out) {
  for (const OrderedJson& item : a) out += BlockItem(item, indent);
}

// "key: value\n" for a key at column `col`; the first line carries no indentation.
std::string KeyBlock(const std::string& key, const OrderedJson& value, size_t col, bool flow) {
  std::string out = Key(key, false) + ":";
  if (flow && (value.is_object() || value.is_array()) && !value.empty()) {
    out += " ";
    EmitFlow(value, out);
    return out + "\n";
  }
  EmitValue(value, col, out);
  return out;
}

// ------------------------------------------------------------ text positions

size_t LineStart(const std::string& t, size_t pos) {
  if (pos == 0) return 0;
  size_t nl = t.rfind('\n', pos - 1);
  return nl == std::string::npos ? 0 : nl + 1;
}

size_t NextLine(const std::string& t, size_t pos) {
  size_t nl = t.find('\n', pos);
  return nl == std::string::npos ? t.size() : nl + 1;
}

size_t IndentAt(const std::string& t, size_t line) {
  size_t i = line;
  while (i < t.size() && t[i] == ' ') ++i;
  return i - line;
}

bool IsBlankLine(const std::string& t, size_t line) {
  for (size_t i = line; i < t.size() && t[i] != '\n'; ++i) {
    if (t[i] != ' ' && t[i] != '\t' && t[i] != '\r') return false;
  }
  return true;
}

bool IsCommentLine(const std::string& t, size_t line) {
  size_t i = line + IndentAt(t, line);
  return i < t.size() && t[i] == '#';
}

bool IsDashLine(const std::string& t, size_t line) {
  size_t i = line + IndentAt(t, line);
  return i < t.size() && t[i] == '-' &&
         (i + 1 == t.size() || t[i + 1] == ' ' || t[i + 1] == '\n' || t[i + 1] == '\r');
}

// The end of the block that starts on the line before `from` at column
// `col`: the start of the first non-blank line at column `col` or less (or
// `limit`), not counting the blank lines before it. With `key`, the block is
// a mapping key's, whose list items may sit at the key's own column.
size_t BlockEnd(const std::string& t, size_t from, size_t col, size_t limit, bool key = false) {
  size_t end = from;
  size_t pos = from;
  while (pos < limit) {
    if (IsBlankLine(t, pos)) {
      pos = NextLine(t, pos);
      continue;
    }
    size_t indent = IndentAt(t, pos);
    if (indent < col || (indent == col && !(key && IsDashLine(t, pos)))) break;
    pos = NextLine(t, pos);
    end = pos;
  }
  return std::min(end, limit);
}

struct TextEdit {
  size_t begin;
  size_t end;
  std::string replacement;
};

// Applies non-overlapping edits; nullopt if they overlap. Text inserted at
// the same place lands in the order the edits were listed.
std::optional<std::string> ApplyEdits(std::string text, std::vector<TextEdit> edits) {
  std::reverse(edits.begin(), edits.end());
  std::stable_sort(edits.begin(), edits.end(),
                   [](const TextEdit& a, const TextEdit& b) { return a.begin > b.begin; });
  size_t limit = text.size();
  for (TextEdit& e : edits) {
    if (e.end > limit || e.begin > e.end) return std::nullopt;
    // Text inserted at the very end of a file that lacks a final line break.
    if (e.begin == text.size() && !text.empty() && text.back() != '\n') {
      e.replacement.insert(0, "\n");
    }
    text.replace(e.begin, e.end - e.begin, e.replacement);
    limit = e.begin;
  }
  return text;
}

// Where one block-sequence item sits in the text.
struct ItemSpan {
  size_t dash;   // the '-'
  size_t col;    // the dash's column
  size_t start;  // start of the dash's line
  size_t end;    // after its last line
};

std::optional<ItemSpan> LocateItem(const std::string& t, const YAML::Node& item) {
  if (item.Mark().pos < 0) return std::nullopt;
  size_t p = static_cast<size_t>(item.Mark().pos);
  if (p > t.size()) return std::nullopt;
  while (p > 0 && (t[p - 1] == ' ' || t[p - 1] == '\n' || t[p - 1] == '\r')) --p;
  if (p == 0 || t[p - 1] != '-') return std::nullopt;
  ItemSpan span;
  span.dash = p - 1;
  span.start = LineStart(t, span.dash);
  span.col = span.dash - span.start;
  if (IndentAt(t, span.start) != span.col) return std::nullopt;  // the dash opens its line
  span.end = BlockEnd(t, NextLine(t, span.dash), span.col, t.size());
  return span;
}

// The edits that turn the block mapping `map`, whose text ends at `end`, into
// `entry` key by key: unchanged keys keep their text, removed ones lose their
// lines, changed ones are written again (block mappings member by member, so
// comments on their other members stay), new ones are added after the last.
// False when the layout is not one this handles; the caller then writes the
// mapping whole.
bool EditBlockMap(const std::string& t, const YAML::Node& map, const OrderedJson& entry, size_t end,
                  std::vector<TextEdit>& edits) {
  if (!map.IsMap() || map.Style() == YAML::EmitterStyle::Flow || map.size() == 0 ||
      !entry.is_object() || entry.empty()) {
    return false;
  }
  struct KeySpan {
    std::string key;
    YAML::Node value;
    size_t pos;
    size_t end;
  };
  std::vector<KeySpan> keys;
  size_t col = 0;
  for (auto it = map.begin(); it != map.end(); ++it) {
    if (it->first.Mark().pos < 0) return false;
    size_t pos = static_cast<size_t>(it->first.Mark().pos);
    size_t key_col = pos - LineStart(t, pos);
    if (keys.empty()) {
      col = key_col;
    } else if (key_col != col || pos < keys.back().pos) {
      return false;
    }
    keys.push_back({it->first.Scalar(), it->second, pos, 0});
  }
  for (KeySpan& k : keys) k.end = BlockEnd(t, NextLine(t, k.pos), col, end, /*key=*/true);
  for (size_t i = 0; i + 1 < keys.size(); ++i) {
    if (keys[i].end > keys[i + 1].pos) return false;
  }
  auto existed = [&](const std::string& key) {
    return std::any_of(keys.begin(), keys.end(), [&](const KeySpan& k) { return k.key == key; });
  };
  // The kept keys in their old order, then the new ones.
  std::vector<std::string> old_order;
  for (const KeySpan& k : keys) {
    if (entry.contains(k.key)) old_order.push_back(k.key);
  }
  size_t at = 0;
  for (auto it = entry.begin(); it != entry.end(); ++it) {
    if (existed(it.key())) {
      if (at >= old_order.size() || old_order[at] != it.key()) return false;
      ++at;
    } else if (at < old_order.size()) {
      return false;
    }
  }
  // The first key shares its line with a list item's dash: it cannot go alone.
  const size_t first_line = LineStart(t, keys.front().pos);
  if (IndentAt(t, first_line) != keys.front().pos - first_line &&
      !entry.contains(keys.front().key)) {
    return false;
  }

  std::vector<TextEdit> mine;
  for (const KeySpan& k : keys) {
    auto it = entry.find(k.key);
    if (it == entry.end()) {
      mine.push_back({LineStart(t, k.pos), k.end, ""});
    } else if (!(*it == ToJson(k.value))) {
      if (EditBlockMap(t, k.value, *it, k.end, mine)) continue;
      bool flow =
          (k.value.IsMap() || k.value.IsSequence()) && k.value.Style() == YAML::EmitterStyle::Flow;
      mine.push_back({k.pos, k.end, KeyBlock(k.key, *it, col, flow)});
    }
  }
  std::string added;
  for (auto it = entry.begin(); it != entry.end(); ++it) {
    if (!existed(it.key())) added += Spaces(col) + KeyBlock(it.key(), it.value(), col, false);
  }
  if (!added.empty()) mine.push_back({end, end, added});
  edits.insert(edits.end(), mine.begin(), mine.end());
  return true;
}

bool IsBlockList(const YAML::Node& node) {
  return node.IsSequence() && node.size() > 0 && node.Style() != YAML::EmitterStyle::Flow;
}

absl::Status Unavailable(const std::string& what, const std::string& path) {
  return absl::UnavailableError(fmt::format("{} {}: {}", what, path, std::strerror(errno)));
}

}  // namespace

// ------------------------------------------------------------ kinds

std::string_view SectionKey(EntryKind kind) {
  switch (kind) {
    case EntryKind::kSource:
      return "sources";
    case EntryKind::kModel:
      return "models";
    case EntryKind::kDestination:
      return "destinations";
    case EntryKind::kMapping:
      return "mappings";
  }
  return "";
}

std::string_view EntryNoun(EntryKind kind) {
  std::string_view s = SectionKey(kind);
  return s.substr(0, s.size() - 1);
}

std::optional<EntryKind> EntryKindFromSection(std::string_view section) {
  for (EntryKind k :
       {EntryKind::kSource, EntryKind::kModel, EntryKind::kDestination, EntryKind::kMapping}) {
    if (SectionKey(k) == section) return k;
  }
  return std::nullopt;
}

// ------------------------------------------------------------ document

absl::StatusOr<WorkspaceDocument> WorkspaceDocument::Parse(std::string text) {
  WorkspaceDocument doc;
  doc.text_ = std::move(text);
  try {
    doc.root_ = YAML::Load(doc.text_);
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(fmt::format("invalid YAML at line {}, column {}: {}",
                                                  e.mark.line + 1, e.mark.column + 1, e.msg));
  }
  if (!doc.root_.IsDefined() || doc.root_.IsNull()) {
    doc.json_ = OrderedJson::object();
    return doc;
  }
  if (!doc.root_.IsMap()) {
    return absl::InvalidArgumentError(
        "the workspace file must be a mapping with sources, models, destinations and mappings");
  }
  doc.json_ = ToJson(doc.root_);
  return doc;
}

OrderedJson WorkspaceDocument::Entries(EntryKind kind) const {
  auto it = json_.find(std::string(SectionKey(kind)));
  if (it == json_.end() || !it->is_array()) return OrderedJson::array();
  return *it;
}

std::optional<size_t> WorkspaceDocument::Find(EntryKind kind, const std::string& name) const {
  OrderedJson entries = Entries(kind);
  for (size_t i = 0; i < entries.size(); ++i) {
    const OrderedJson& e = entries[i];
    if (e.is_object() && e.contains("name") && e["name"].is_string() && e["name"] == name) {
      return i;
    }
  }
  return std::nullopt;
}

absl::StatusOr<WorkspaceDocument::Edit> WorkspaceDocument::Finish(
    const std::optional<std::string>& targeted, const OrderedJson& expected) const {
  if (targeted) {
    absl::StatusOr<WorkspaceDocument> reread = Parse(*targeted);
    if (reread.ok() && SameDocument(reread->json_, expected)) return Edit{*targeted, true};
  }
  // The whole document from its data: right, but without the comments.
  std::string full = EmitYaml(expected);
  absl::StatusOr<WorkspaceDocument> reread = Parse(full);
  if (reread.ok() && SameDocument(reread->json_, expected)) return Edit{full, false};
  return absl::InternalError(
      "the change could not be written as YAML that reads back the same; the file was not "
      "changed");
}

std::optional<std::string> WorkspaceDocument::RewriteSection(EntryKind kind,
                                                             const OrderedJson& entries) const {
  const std::string key(SectionKey(kind));
  std::string block = key + ":";
  if (entries.empty()) {
    block += " []\n";
  } else {
    block += "\n";
    for (const OrderedJson& e : entries) block += BlockItem(e, 2);
  }
  const std::string& t = text_;
  if (root_.IsMap()) {
    if (root_.Style() == YAML::EmitterStyle::Flow) return std::nullopt;
    for (auto it = root_.begin(); it != root_.end(); ++it) {
      if (it->first.Scalar() != key) continue;
      size_t pos = static_cast<size_t>(std::max(0, it->first.Mark().pos));
      if (LineStart(t, pos) != pos) return std::nullopt;
      // The section: its key line and what follows indented, or list items at column 0.
      size_t end = NextLine(t, pos);
      size_t scan = end;
      while (scan < t.size()) {
        if (IsBlankLine(t, scan)) {
          scan = NextLine(t, scan);
          continue;
        }
        if (IndentAt(t, scan) == 0 && !IsDashLine(t, scan)) break;
        scan = NextLine(t, scan);
        end = scan;
      }
      return ApplyEdits(t, {{pos, end, block}});
    }
  }
  // No such section: before the first section that comes after it, else at the end.
  auto rank = [](const std::string& k) {
    for (size_t i = 0; i < std::size(kSectionOrder); ++i) {
      if (k == kSectionOrder[i]) return static_cast<int>(i);
    }
    return -1;
  };
  const int mine = rank(key);
  if (root_.IsMap()) {
    if (root_.Style() == YAML::EmitterStyle::Flow) return std::nullopt;
    for (auto it = root_.begin(); it != root_.end(); ++it) {
      if (rank(it->first.Scalar()) <= mine) continue;
      size_t pos = static_cast<size_t>(std::max(0, it->first.Mark().pos));
      if (LineStart(t, pos) != pos) return std::nullopt;
      // Comment lines right above the next section belong to it.
      while (pos > 0) {
        size_t prev = LineStart(t, pos - 1);
        if (!IsCommentLine(t, prev) || IndentAt(t, prev) != 0) break;
        pos = prev;
      }
      return ApplyEdits(t, {{pos, pos, block + "\n"}});
    }
  }
  std::string tail;
  if (!t.empty()) {
    if (t.back() != '\n') tail += "\n";
    if (!IsBlankLine(t, LineStart(t, t.size() - (t.back() == '\n' ? 1 : 0)))) tail += "\n";
  }
  return t + tail + block;
}

std::optional<std::string> WorkspaceDocument::TargetedAppend(EntryKind kind,
                                                             const OrderedJson& entry) const {
  const std::string key(SectionKey(kind));
  YAML::Node list = root_.IsMap() ? root_[key] : YAML::Node();
  if (!list.IsDefined() || !IsBlockList(list)) {
    OrderedJson entries = Entries(kind);
    entries.push_back(entry);
    return RewriteSection(kind, entries);
  }
  YAML::Node last = list[list.size() - 1];
  std::optional<ItemSpan> span = LocateItem(text_, last);
  if (!span) return std::nullopt;
  std::string item = last.IsMap() && last.Style() == YAML::EmitterStyle::Flow
                         ? FlowItem(entry, span->col)
                         : BlockItem(entry, span->col);
  return ApplyEdits(text_, {{span->end, span->end, item}});
}

std::optional<std::string> WorkspaceDocument::TargetedRemove(EntryKind kind, size_t index) const {
  YAML::Node list = root_.IsMap() ? root_[std::string(SectionKey(kind))] : YAML::Node();
  if (!list.IsDefined() || !IsBlockList(list) || index >= list.size()) return std::nullopt;
  // The last entry: the section stays, as an empty list.
  if (list.size() == 1) return RewriteSection(kind, OrderedJson::array());
  std::optional<ItemSpan> span = LocateItem(text_, list[index]);
  if (!span) return std::nullopt;
  // The comment lines right above the item, at its indentation, describe it.
  size_t start = span->start;
  while (start > 0) {
    size_t prev = LineStart(text_, start - 1);
    if (!IsCommentLine(text_, prev) || IndentAt(text_, prev) != span->col) break;
    start = prev;
  }
  return ApplyEdits(text_, {{start, span->end, ""}});
}

std::optional<std::string> WorkspaceDocument::TargetedReplace(EntryKind kind, size_t index,
                                                              const OrderedJson& entry) const {
  YAML::Node list = root_.IsMap() ? root_[std::string(SectionKey(kind))] : YAML::Node();
  if (!list.IsDefined() || !IsBlockList(list) || index >= list.size()) return std::nullopt;
  YAML::Node item = list[index];
  std::optional<ItemSpan> span = LocateItem(text_, item);
  if (!span) return std::nullopt;
  std::vector<TextEdit> edits;
  if (EditBlockMap(text_, item, entry, span->end, edits)) return ApplyEdits(text_, edits);
  // A one-line entry, or a layout the key-by-key edit does not handle: the entry, whole.
  bool flow = item.IsMap() && item.Style() == YAML::EmitterStyle::Flow;
  return ApplyEdits(text_, {{span->start, span->end,
                             flow ? FlowItem(entry, span->col) : BlockItem(entry, span->col)}});
}

absl::StatusOr<WorkspaceDocument::Edit> WorkspaceDocument::Append(EntryKind kind,
                                                                  const OrderedJson& entry) const {
  if (!entry.is_object()) return absl::InvalidArgumentError("an entry must be a JSON object");
  OrderedJson expected = json_;
  OrderedJson& list = expected[std::string(SectionKey(kind))];
  if (!list.is_array()) list = OrderedJson::array();
  list.push_back(entry);
  return Finish(TargetedAppend(kind, entry), expected);
}

absl::StatusOr<WorkspaceDocument::Edit> WorkspaceDocument::Replace(EntryKind kind, size_t index,
                                                                   const OrderedJson& entry) const {
  if (!entry.is_object()) return absl::InvalidArgumentError("an entry must be a JSON object");
  OrderedJson expected = json_;
  OrderedJson& list = expected[std::string(SectionKey(kind))];
  if (!list.is_array() || index >= list.size()) {
    return absl::NotFoundError(fmt::format("no {} number {}", EntryNoun(kind), index));
  }
  list[index] = entry;
  return Finish(TargetedReplace(kind, index, entry), expected);
}

absl::StatusOr<WorkspaceDocument::Edit> WorkspaceDocument::Remove(EntryKind kind,
                                                                  size_t index) const {
  OrderedJson expected = json_;
  OrderedJson& list = expected[std::string(SectionKey(kind))];
  if (!list.is_array() || index >= list.size()) {
    return absl::NotFoundError(fmt::format("no {} number {}", EntryNoun(kind), index));
  }
  list.erase(list.begin() + static_cast<std::ptrdiff_t>(index));
  return Finish(TargetedRemove(kind, index), expected);
}

// ------------------------------------------------------------ helpers

OrderedJson MergePatch(OrderedJson target, const OrderedJson& patch) {
  if (!patch.is_object()) return patch;
  if (!target.is_object()) target = OrderedJson::object();
  for (auto it = patch.begin(); it != patch.end(); ++it) {
    if (it.value().is_null()) {
      target.erase(it.key());
    } else if (target.contains(it.key())) {
      target[it.key()] = MergePatch(target[it.key()], it.value());
    } else {
      target[it.key()] = MergePatch(OrderedJson(), it.value());
    }
  }
  return target;
}

std::string EmitYaml(const OrderedJson& value) {
  std::string out;
  if (value.is_object() && !value.empty()) {
    // A blank line before each section (a top-level list or mapping).
    for (auto it = value.begin(); it != value.end(); ++it) {
      const OrderedJson& v = it.value();
      if (it != value.begin() && (v.is_object() || v.is_array()) && !v.empty()) out += "\n";
      out += Key(it.key(), false) + ":";
      EmitValue(v, 0, out);
    }
  } else if (value.is_array() && !value.empty()) {
    EmitSeq(value, 0, out);
  } else {
    out = Scalar(value, false) + "\n";
  }
  return out;
}

bool IsPureSecretReference(std::string_view value) {
  static const std::regex kReference("^\\$\\{(secret|env):[A-Za-z_][A-Za-z0-9_]*\\}$");
  return std::regex_match(std::string(value), kReference);
}

OrderedJson ExportDocument(const WorkspaceDocument& document, const Workspace* loaded,
                           const Registry& registry) {
  OrderedJson doc = document.json();
  auto mask = [](OrderedJson& v) {
    if (v.is_null()) return;
    if (v.is_string() && IsPureSecretReference(v.get_ref<const std::string&>())) return;
    v = kMask;
  };
  auto settings = [&](OrderedJson& where, const std::vector<SettingSpec>& specs) {
    for (const SettingSpec& spec : specs) {
      if (spec.secret && where.contains(spec.key)) mask(where[spec.key]);
    }
    if (loaded == nullptr) return;
    for (const SettingSpec& spec : specs) {
      if (!spec.default_value.is_null() && !where.contains(spec.key)) {
        where[spec.key] = OrderedJson::parse(spec.default_value.dump());
      }
    }
  };
  auto type_of = [](const OrderedJson& e) {
    return e.contains("type") && e["type"].is_string() ? e["type"].get<std::string>() : "";
  };
  if (auto it = doc.find("state"); it != doc.end() && it->is_string()) {
    *it = MaskUrlPassword(it->get<std::string>());
  }
  if (auto it = doc.find("sources"); it != doc.end() && it->is_array()) {
    for (OrderedJson& e : *it) {
      if (!e.is_object()) continue;
      if (const SourceDefinition* def = registry.FindSource(type_of(e))) settings(e, def->settings);
    }
  }
  if (auto it = doc.find("destinations"); it != doc.end() && it->is_array()) {
    for (OrderedJson& e : *it) {
      if (!e.is_object()) continue;
      const DestinationDefinition* def = registry.FindDestination(type_of(e));
      if (def == nullptr) continue;
      OrderedJson s = e.contains("settings") && e["settings"].is_object() ? e["settings"]
                                                                          : OrderedJson::object();
      settings(s, def->settings);
      if (!s.empty() || e.contains("settings")) e["settings"] = s;
    }
  }
  if (loaded != nullptr) {
    if (auto it = doc.find("models"); it != doc.end() && it->is_array()) {
      for (OrderedJson& e : *it) {
        if (e.is_object() && !e.contains("schedule")) e["schedule"] = "manual";
      }
    }
    if (auto it = doc.find("mappings"); it != doc.end() && it->is_array()) {
      for (OrderedJson& e : *it) {
        if (!e.is_object() || !e.contains("name") || !e["name"].is_string()) continue;
        const MappingConfig* m = loaded->FindMapping(e["name"].get<std::string>());
        if (m == nullptr) continue;
        if (!e.contains("records")) e["records"] = std::string(RecordSelectionName(m->records));
        if (!e.contains("enabled")) e["enabled"] = m->enabled;
      }
    }
  }
  if (auto it = doc.find("alerts"); it != doc.end() && it->is_array()) {
    for (OrderedJson& e : *it) {
      if (!e.is_object()) continue;
      if (e.contains("webhook") && e["webhook"].is_object()) {
        OrderedJson& w = e["webhook"];
        if (w.contains("headers") && w["headers"].is_object()) {
          for (auto h = w["headers"].begin(); h != w["headers"].end(); ++h) mask(h.value());
        }
      }
      if (e.contains("slack") && e["slack"].is_object() && e["slack"].contains("webhook_url")) {
        mask(e["slack"]["webhook_url"]);
      }
      if (e.contains("email") && e["email"].is_object()) {
        OrderedJson& m = e["email"];
        if (m.contains("password")) mask(m["password"]);
        if (m.contains("smtp_url") && m["smtp_url"].is_string()) {
          m["smtp_url"] = MaskUrlPassword(m["smtp_url"].get<std::string>());
        }
      }
    }
  }
  return doc;
}

absl::StatusOr<std::string> ReadTextFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    if (errno == ENOENT) {
      return absl::NotFoundError(fmt::format("the workspace file {} does not exist", path));
    }
    return Unavailable("cannot read", path);
  }
  std::stringstream s;
  s << in.rdbuf();
  if (in.bad()) return Unavailable("cannot read", path);
  return s.str();
}

absl::Status WriteFileAtomically(const std::string& path, std::string_view text) {
  std::error_code ec;
  fs::path target = path;
  if (fs::is_symlink(target, ec)) {
    target = fs::canonical(target, ec);
    if (ec) {
      return absl::UnavailableError(
          fmt::format("cannot follow the link {}: {}", path, ec.message()));
    }
  }
  fs::path dir = target.parent_path();
  if (dir.empty()) dir = ".";
  std::string temp = (dir / ("." + target.filename().string() + ".tmp-XXXXXX")).string();
  int fd = mkstemp(temp.data());
  if (fd < 0) return Unavailable("cannot create a temporary file in", dir.string());
  auto fail = [&](const std::string& what) {
    absl::Status s = Unavailable(what, temp);
    if (fd >= 0) close(fd);
    unlink(temp.c_str());
    return s;
  };
  mode_t mode = 0644;
  struct stat st {};
  if (stat(target.c_str(), &st) == 0) mode = st.st_mode & 07777;
  size_t done = 0;
  while (done < text.size()) {
    ssize_t n = write(fd, text.data() + done, text.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return fail("cannot write");
    }
    done += static_cast<size_t>(n);
  }
  if (fchmod(fd, mode) != 0) return fail("cannot set the permissions of");
  if (fsync(fd) != 0) return fail("cannot flush");
  int closed = close(fd);
  fd = -1;
  if (closed != 0) return fail("cannot close");
  if (rename(temp.c_str(), target.c_str()) != 0) {
    return fail(fmt::format("cannot replace {} by", target.string()));
  }
  int dfd = open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (dfd >= 0) {
    fsync(dfd);
    close(dfd);
  }
  return absl::OkStatus();
}

}  // namespace backflow
