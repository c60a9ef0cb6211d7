#include "backflow/mapping/expression.h"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <ctime>
#include <functional>
#include <map>
#include <optional>
#include <utility>

#include "backflow/common/civil_date.h"
#include "backflow/common/crypto.h"
#include "backflow/common/fmt_absl.h"
#include "fmt/format.h"
#include "fmt/ranges.h"
#include "nlohmann/json.hpp"

namespace backflow {
namespace {

using Args = std::vector<Value>;
using Fn = std::function<absl::StatusOr<Value>(const Args&)>;

struct FunctionDef {
  std::string signature;
  std::string description;
  int min_args;
  int max_args;  // -1: any number
  bool null_in_null_out;
  Fn fn;
};

// ---- Timestamps ----------------------------------------------------------

// Seconds since the epoch plus microseconds.
struct Instant {
  int64_t seconds = 0;
  int64_t micros = 0;
};

std::string FormatInstant(const Instant& t) {
  std::time_t secs = static_cast<std::time_t>(t.seconds);
  std::tm tm{};
  gmtime_r(&secs, &tm);
  std::string out = fmt::format("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}", tm.tm_year + 1900,
                                tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
  if (t.micros != 0) {
    out += t.micros % 1000 == 0 ? fmt::format(".{:03}", t.micros / 1000)
                                : fmt::format(".{:06}", t.micros);
  }
  out += 'Z';
  return out;
}

absl::StatusOr<Instant> InstantOf(const Value& v) {
  auto fail = [&] {
    return absl::InvalidArgumentError(
        fmt::format("cannot read {} value \"{}\" as a timestamp (expected ISO-8601 such as "
                    "2026-01-02T03:04:05Z, YYYY-MM-DD, or seconds since 1970)",
                    ValueTypeName(v.type()), v.ToString()));
  };
  switch (v.type()) {
    case ValueType::kInt64:
      return Instant{v.int_value(), 0};
    case ValueType::kDouble:
    case ValueType::kDecimal: {
      double d = v.type() == ValueType::kDouble ? v.double_value()
                                                : std::strtod(v.text().c_str(), nullptr);
      if (!std::isfinite(d) || std::fabs(d) > 1e13) return fail();
      double whole = std::floor(d);
      return Instant{static_cast<int64_t>(whole), std::llround((d - whole) * 1e6)};
    }
    case ValueType::kTimestamp:
    case ValueType::kDate:
    case ValueType::kString: {
      std::optional<IsoInstant> t = ParseIsoInstant(v.text());
      if (!t) return fail();
      return Instant{t->seconds, t->micros};
    }
    default:
      return fail();
  }
}

// ---- Functions -----------------------------------------------------------

std::string TextOf(const Value& v) {
  return v.type() == ValueType::kJson ? v.text() : v.ToString();
}

std::string Lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

std::string Trim(std::string_view s) {
  const char* ws = " \t\r\n\f\v";
  size_t b = s.find_first_not_of(ws);
  if (b == std::string_view::npos) return "";
  size_t e = s.find_last_not_of(ws);
  return std::string(s.substr(b, e - b + 1));
}

bool IsSha256Hex(std::string_view s) {
  return s.size() == 64 && std::all_of(s.begin(), s.end(), [](char c) {
           return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
         });
}

std::string HashOnce(const std::string& s) {
  if (IsSha256Hex(s)) return s;
  return HexEncode(Sha256(s));
}

std::string NormalizeEmail(std::string_view s) { return Lower(Trim(s)); }

std::string NormalizePhone(std::string_view s) {
  std::string digits;
  for (char c : s) {
    if (c >= '0' && c <= '9') digits += c;
  }
  if (digits.starts_with("00")) digits.erase(0, 2);
  return digits;
}

Value Str(std::string s) { return Value::String(std::move(s)); }

const std::map<std::string, FunctionDef, std::less<>>& Functions() {
  static const auto* fns = new std::map<std::string, FunctionDef, std::less<>>{
      {"lower",
       {"lower(x)", "The text in lowercase.", 1, 1, true,
        [](const Args& a) -> absl::StatusOr<Value> { return Str(Lower(TextOf(a[0]))); }}},
      {"upper",
       {"upper(x)", "The text in uppercase.", 1, 1, true,
        [](const Args& a) -> absl::StatusOr<Value> {
          std::string s = TextOf(a[0]);
          std::transform(s.begin(), s.end(), s.begin(),
                         [](unsigned char c) { return static_cast<char>(std::toupper(c)); });
          return Str(std::move(s));
        }}},
      {"trim",
       {"trim(x)", "The text without leading and trailing whitespace.", 1, 1, true,
        [](const Args& a) -> absl::StatusOr<Value> { return Str(Trim(TextOf(a[0]))); }}},
      {"concat",
       {"concat(a, b, ...)", "The text of each argument joined; NULL arguments are skipped.", 1, -1,
        false,
        [](const Args& a) -> absl::StatusOr<Value> {
          std::string out;
          for (const Value& v : a) {
            if (!v.is_null()) out += TextOf(v);
          }
          return Str(std::move(out));
        }}},
      {"coalesce",
       {"coalesce(a, b, ...)", "The first argument that is not NULL.", 1, -1, false,
        [](const Args& a) -> absl::StatusOr<Value> {
          for (const Value& v : a) {
            if (!v.is_null()) return v;
          }
          return Value::Null();
        }}},
      {"iso8601",
       {"iso8601(t)",
        "A timestamp as `YYYY-MM-DDTHH:MM:SS[.fff]Z` in UTC. `t` may be a timestamp, a date, text "
        "such as `2026-01-02 03:04:05+02:00`, or seconds since 1970.",
        1, 1, true,
        [](const Args& a) -> absl::StatusOr<Value> {
          absl::StatusOr<Instant> t = InstantOf(a[0]);
          if (!t.ok()) return t.status();
          return Value::Text(ValueType::kTimestamp, FormatInstant(*t));
        }}},
      {"epoch",
       {"epoch(t)", "Seconds since 1970-01-01 UTC, as an integer.", 1, 1, true,
        [](const Args& a) -> absl::StatusOr<Value> {
          absl::StatusOr<Instant> t = InstantOf(a[0]);
          if (!t.ok()) return t.status();
          return Value::Int64(t->seconds);
        }}},
      {"epoch_ms",
       {"epoch_ms(t)", "Milliseconds since 1970-01-01 UTC, as an integer.", 1, 1, true,
        [](const Args& a) -> absl::StatusOr<Value> {
          absl::StatusOr<Instant> t = InstantOf(a[0]);
          if (!t.ok()) return t.status();
          return Value::Int64(t->seconds * 1000 + t->micros / 1000);
        }}},
      {"format_date",
       {"format_date(t, 'format')",
        "The timestamp formatted in UTC with strftime codes, e.g. `format_date(created_at, "
        "'%Y-%m-%d')`.",
        2, 2, true,
        [](const Args& a) -> absl::StatusOr<Value> {
          absl::StatusOr<Instant> t = InstantOf(a[0]);
          if (!t.ok()) return t.status();
          std::time_t secs = static_cast<std::time_t>(t->seconds);
          std::tm tm{};
          gmtime_r(&secs, &tm);
          std::string format = TextOf(a[1]);
          char buf[256];
          size_t n = format.empty() ? 0 : strftime(buf, sizeof buf, format.c_str(), &tm);
          if (n == 0) {
            return absl::InvalidArgumentError(
                fmt::format("format_date: format '{}' gives an empty or too long result", format));
          }
          return Str(std::string(buf, n));
        }}},
      {"json",
       {"json(x)",
        "Parses text as JSON, so objects and arrays are sent as JSON rather than as a string. A "
        "value that is not valid JSON fails the record.",
        1, 1, true,
        [](const Args& a) -> absl::StatusOr<Value> {
          if (a[0].type() == ValueType::kJson) return a[0];
          std::string text = TextOf(a[0]);
          nlohmann::json doc = nlohmann::json::parse(text, nullptr, false);
          if (doc.is_discarded()) {
            std::string shown = text.size() > 80 ? text.substr(0, 80) + "..." : text;
            return absl::InvalidArgumentError(fmt::format("json: \"{}\" is not valid JSON", shown));
          }
          return Value::Text(ValueType::kJson, doc.dump());
        }}},
      {"sha256",
       {"sha256(x)",
        "Lowercase hex SHA-256 of the text. A value that already is 64 lowercase hex digits is "
        "returned unchanged, so nothing is hashed twice.",
        1, 1, true,
        [](const Args& a) -> absl::StatusOr<Value> { return Str(HashOnce(TextOf(a[0]))); }}},
      {"normalize_email",
       {"normalize_email(x)", "Trimmed and lowercased.", 1, 1, true,
        [](const Args& a) -> absl::StatusOr<Value> { return Str(NormalizeEmail(TextOf(a[0]))); }}},
      {"normalize_phone",
       {"normalize_phone(x)",
        "Digits only, country code first, without `+` or a leading `00` (`+44 844 412 4653` gives "
        "`448444124653`).",
        1, 1, true,
        [](const Args& a) -> absl::StatusOr<Value> { return Str(NormalizePhone(TextOf(a[0]))); }}},
      {"hash_email",
       {"hash_email(x)",
        "`normalize_email`, then `sha256`: the matching key the conversion APIs want. Empty gives "
        "NULL.",
        1, 1, true,
        [](const Args& a) -> absl::StatusOr<Value> {
          std::string s = TextOf(a[0]);
          if (IsSha256Hex(s)) return Str(std::move(s));
          std::string n = NormalizeEmail(s);
          if (n.empty()) return Value::Null();
          return Str(HashOnce(n));
        }}},
      {"hash_phone",
       {"hash_phone(x)", "`normalize_phone`, then `sha256`. Empty gives NULL.", 1, 1, true,
        [](const Args& a) -> absl::StatusOr<Value> {
          std::string s = TextOf(a[0]);
          if (IsSha256Hex(s)) return Str(std::move(s));
          std::string n = NormalizePhone(s);
          if (n.empty()) return Value::Null();
          return Str(HashOnce(n));
        }}},
  };
  return *fns;
}

}  // namespace

// ---- Tree ------------------------------------------------------------------

struct Expression::Node {
  enum Kind { kColumn, kLiteral, kCall, kTemplate } kind = kLiteral;
  std::string name;  // column or function name
  int index = -1;    // bound column index
  Value literal;     // kLiteral; for kTemplate parts, the text between references
  const FunctionDef* fn = nullptr;
  std::vector<Node> args;  // kCall arguments; kTemplate parts (literals and columns)

  absl::StatusOr<Value> Eval(const Row& row) const {
    switch (kind) {
      case kColumn:
        return row[index];
      case kLiteral:
        return literal;
      case kTemplate: {
        std::string out;
        for (const Node& part : args) {
          const Value& v = part.kind == kColumn ? row[part.index] : part.literal;
          if (!v.is_null()) out += TextOf(v);
        }
        return Value::String(std::move(out));
      }
      case kCall: {
        Args values;
        values.reserve(args.size());
        for (const Node& a : args) {
          absl::StatusOr<Value> v = a.Eval(row);
          if (!v.ok()) return v;
          if (fn->null_in_null_out && v->is_null()) return Value::Null();
          values.push_back(*std::move(v));
        }
        absl::StatusOr<Value> out = fn->fn(values);
        if (!out.ok()) {
          std::string message(out.status().message());
          if (!message.starts_with(name + ":")) message = name + ": " + message;
          return absl::InvalidArgumentError(message);
        }
        return out;
      }
    }
    return Value::Null();
  }

  void Bind(const Schema& schema, std::vector<std::string>& missing) {
    if (kind == kColumn) {
      index = -1;
      for (size_t i = 0; i < schema.size(); ++i) {
        if (schema[i].name == name) index = static_cast<int>(i);
      }
      if (index < 0 && std::find(missing.begin(), missing.end(), name) == missing.end()) {
        missing.push_back(name);
      }
    }
    for (Node& a : args) a.Bind(schema, missing);
  }
};

namespace {

bool IsIdentStart(char c) { return std::isalpha(static_cast<unsigned char>(c)) || c == '_'; }
bool IsIdentChar(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '$';
}

class Parser {
 public:
  explicit Parser(std::string_view text) : s_(text) {}

  absl::StatusOr<Expression::Node> ParseAll() {
    absl::StatusOr<Expression::Node> node = ParseExpr();
    if (!node.ok()) return node;
    SkipSpace();
    if (pos_ != s_.size()) return Error("unexpected text after the expression");
    return node;
  }

  std::vector<std::string> columns;

 private:
  absl::Status Error(std::string_view what, std::string_view hint = "") const {
    std::string msg = fmt::format("{} at character {} of `{}`", what, pos_ + 1, s_);
    if (!hint.empty()) msg += fmt::format(" ({})", hint);
    return absl::InvalidArgumentError(msg);
  }

  void SkipSpace() {
    while (pos_ < s_.size() && std::isspace(static_cast<unsigned char>(s_[pos_]))) ++pos_;
  }

  Expression::Node Column(std::string name) {
    if (std::find(columns.begin(), columns.end(), name) == columns.end()) columns.push_back(name);
    Expression::Node n;
    n.kind = Expression::Node::kColumn;
    n.name = std::move(name);
    return n;
  }

  // A quoted run with doubled-quote escapes; pos_ is at the opening quote.
  absl::StatusOr<std::string> Quoted(char quote) {
    size_t start = pos_++;
    std::string out;
    while (pos_ < s_.size()) {
      char c = s_[pos_++];
      if (c != quote) {
        out += c;
        continue;
      }
      if (pos_ < s_.size() && s_[pos_] == quote) {
        out += quote;
        ++pos_;
        continue;
      }
      return out;
    }
    pos_ = start;
    return Error(fmt::format("unclosed {} quote", quote == '\'' ? "single" : "double"),
                 quote == '\'' ? "write '' for a quote inside a string" : "");
  }

  absl::StatusOr<Expression::Node> StringOrTemplate(std::string text) {
    if (text.find("{{") == std::string::npos) {
      Expression::Node n;
      n.literal = Value::String(std::move(text));
      return n;
    }
    Expression::Node n;
    n.kind = Expression::Node::kTemplate;
    size_t i = 0;
    while (i < text.size()) {
      size_t open = text.find("{{", i);
      if (open == std::string::npos) open = text.size();
      if (open > i) {
        Expression::Node lit;
        lit.literal = Value::String(text.substr(i, open - i));
        n.args.push_back(std::move(lit));
      }
      if (open == text.size()) break;
      size_t close = text.find("}}", open + 2);
      if (close == std::string::npos) {
        return Error("template has \"{{\" without a closing \"}}\"", "e.g. 'Hi {{first_name}}'");
      }
      std::string name = Trim(std::string_view(text).substr(open + 2, close - open - 2));
      if (name.size() >= 2 && name.front() == '"' && name.back() == '"') {
        name = name.substr(1, name.size() - 2);
      }
      if (name.empty()) return Error("template has an empty {{}}", "put a column name inside");
      n.args.push_back(Column(std::move(name)));
      i = close + 2;
    }
    return n;
  }

  absl::StatusOr<Expression::Node> ParseExpr() {
    SkipSpace();
    if (pos_ >= s_.size()) return Error("expected a column, a literal or a function call");
    char c = s_[pos_];
    if (c == '\'') {
      absl::StatusOr<std::string> text = Quoted('\'');
      if (!text.ok()) return text.status();
      return StringOrTemplate(*std::move(text));
    }
    if (c == '"') {
      absl::StatusOr<std::string> name = Quoted('"');
      if (!name.ok()) return name.status();
      if (name->empty()) return Error("empty column name \"\"");
      return Column(*std::move(name));
    }
    if (std::isdigit(static_cast<unsigned char>(c)) || c == '-' || c == '+' || c == '.') {
      size_t start = pos_;
      if (c == '-' || c == '+') ++pos_;
      bool dot = false, digits = false;
      while (pos_ < s_.size() &&
             (std::isdigit(static_cast<unsigned char>(s_[pos_])) || (s_[pos_] == '.' && !dot))) {
        dot |= s_[pos_] == '.';
        digits |= s_[pos_] != '.';
        ++pos_;
      }
      std::string_view num = s_.substr(start, pos_ - start);
      if (!digits) {
        pos_ = start;
        return Error("expected a number");
      }
      if (num.front() == '+') num.remove_prefix(1);
      Expression::Node n;
      int64_t i = 0;
      auto [ptr, ec] = std::from_chars(num.data(), num.data() + num.size(), i);
      if (!dot && ec == std::errc() && ptr == num.data() + num.size()) {
        n.literal = Value::Int64(i);
      } else {
        std::string text(num);
        if (text.starts_with('.')) text.insert(0, "0");
        if (text.starts_with("-.")) text.insert(1, "0");
        if (text.ends_with('.')) text.pop_back();
        n.literal = Value::Text(ValueType::kDecimal, text);
      }
      return n;
    }
    if (!IsIdentStart(c)) return Error(fmt::format("unexpected '{}'", c));
    size_t start = pos_;
    while (pos_ < s_.size() && IsIdentChar(s_[pos_])) ++pos_;
    std::string name(s_.substr(start, pos_ - start));
    size_t after_name = pos_;
    SkipSpace();
    if (pos_ < s_.size() && s_[pos_] == '(') return Call(std::move(name), start);
    pos_ = after_name;
    Expression::Node n;
    if (name == "true" || name == "false") {
      n.literal = Value::Bool(name == "true");
      return n;
    }
    if (name == "null") return n;
    return Column(std::move(name));
  }

  absl::StatusOr<Expression::Node> Call(std::string name, size_t name_pos) {
    auto it = Functions().find(name);
    if (it == Functions().end()) {
      pos_ = name_pos;
      std::vector<std::string> names = ExpressionFunctionNames();
      return Error(fmt::format("unknown function {}()", name),
                   fmt::format("functions: {}", fmt::join(names, ", ")));
    }
    ++pos_;  // '('
    Expression::Node n;
    n.kind = Expression::Node::kCall;
    n.name = name;
    n.fn = &it->second;
    SkipSpace();
    if (pos_ < s_.size() && s_[pos_] == ')') {
      ++pos_;
    } else {
      for (;;) {
        absl::StatusOr<Expression::Node> arg = ParseExpr();
        if (!arg.ok()) return arg;
        n.args.push_back(*std::move(arg));
        SkipSpace();
        if (pos_ < s_.size() && s_[pos_] == ',') {
          ++pos_;
          continue;
        }
        if (pos_ < s_.size() && s_[pos_] == ')') {
          ++pos_;
          break;
        }
        return Error(fmt::format("expected ',' or ')' in the arguments of {}()", name));
      }
    }
    const FunctionDef& def = it->second;
    int count = static_cast<int>(n.args.size());
    if (count < def.min_args || (def.max_args >= 0 && count > def.max_args)) {
      pos_ = name_pos;
      std::string want = def.max_args < 0 ? fmt::format("at least {}", def.min_args)
                         : def.min_args == def.max_args
                             ? fmt::format("{}", def.min_args)
                             : fmt::format("{} to {}", def.min_args, def.max_args);
      return Error(fmt::format("{}() takes {} argument{}, got {}", name, want,
                               def.max_args == 1 ? "" : "s", count));
    }
    return n;
  }

  std::string_view s_;
  size_t pos_ = 0;
};

// Text that is a column name as written: no quotes, calls, braces or
// leading digit/sign, and not a keyword.
bool IsBareColumnName(std::string_view text) {
  if (text.empty() || text != Trim(text)) return false;
  if (text == "true" || text == "false" || text == "null") return false;
  char c = text.front();
  if (std::isdigit(static_cast<unsigned char>(c)) || c == '-' || c == '+' || c == '.') {
    return false;
  }
  return text.find_first_of("'\"(),{}") == std::string_view::npos;
}

}  // namespace

Expression::Expression() = default;
Expression::~Expression() = default;
Expression::Expression(Expression&&) noexcept = default;
Expression& Expression::operator=(Expression&&) noexcept = default;
Expression::Expression(const Expression& other)
    : text_(other.text_),
      columns_(other.columns_),
      root_(other.root_ ? std::make_unique<Node>(*other.root_) : nullptr) {}
Expression& Expression::operator=(const Expression& other) {
  if (this != &other) *this = Expression(other);
  return *this;
}

absl::StatusOr<Expression> Expression::Parse(std::string_view text) {
  Expression e;
  e.text_ = std::string(text);
  if (IsBareColumnName(text)) {
    e.columns_ = {e.text_};
    e.root_ = std::make_unique<Node>();
    e.root_->kind = Node::kColumn;
    e.root_->name = e.text_;
    return e;
  }
  Parser p(text);
  absl::StatusOr<Node> root = p.ParseAll();
  if (!root.ok()) return root.status();
  e.root_ = std::make_unique<Node>(*std::move(root));
  e.columns_ = std::move(p.columns);
  return e;
}

bool Expression::is_column() const { return root_ != nullptr && root_->kind == Node::kColumn; }

std::vector<std::string> Expression::Bind(const Schema& schema) {
  std::vector<std::string> missing;
  if (root_ != nullptr) root_->Bind(schema, missing);
  return missing;
}

absl::StatusOr<Value> Expression::Evaluate(const Row& row) const {
  if (root_ == nullptr) return Value::Null();
  return root_->Eval(row);
}

std::vector<std::string> ExpressionFunctionNames() {
  std::vector<std::string> out;
  for (const auto& [name, def] : Functions()) out.push_back(name);
  return out;
}

std::string MappingLanguageMarkdown() {
  std::string out =
      R"md(<!-- Generated by `backflow catalog --docs docs` from mapping/expression.cc; do not edit. -->

# The mapping language

Each entry under a mapping's `fields:` maps a destination field to a value computed from the
model's row:

| written as | means |
| --- | --- |
| `email` | the model column `email`; text that is none of the forms below is a column name as written, spaces included (`Email Address`) |
| `"select"` | the column named exactly so (double quotes; `""` inside for a quote), for a name that looks like a keyword, number or call |
| `'pro'`, `42`, `-1.5`, `true`, `false`, `null` | literals (`''` inside single quotes for a quote) |
| `'Hi {{first_name}}!'` | a template: each `{{column}}` is replaced by the column's text (NULL gives nothing) |
| `lower(trim(email))` | functions, nested |

In YAML, quote an expression that starts with a quote or contains `: ` or `{`: write a text
literal as `plan: "'pro'"` (YAML removes one level of quotes), and a template as
`greeting: "'Hi {{first_name}}'"`.

Field keys with dots build nested objects where the action accepts them
(`traits.plan: plan` sends `{"traits": {"plan": ...}}`). After the expression, the value is
converted to the field's declared type (see each destination's fields); a value that cannot be
converted, or that a function cannot take, fails that record with a message naming the field, and
the record is retried on the next run.

A field computed only from the model's unique identifier (`user_id: "concat('u_', id)"`) is an
identity field: deletes send exactly those fields.

Check what a record would produce, without sending anything:
`backflow mapping test MAPPING --record KEY`.

## Functions

A NULL argument gives NULL, except for `concat` and `coalesce`.

| function | result |
| --- | --- |
)md";
  for (const auto& [name, def] : Functions()) {
    out += fmt::format("| `{}` | {} |\n", def.signature, def.description);
  }
  return out;
}

absl::StatusOr<Value> ToTimestamp(const Value& v) {
  absl::StatusOr<Instant> t = InstantOf(v);
  if (!t.ok()) return t.status();
  return Value::Text(ValueType::kTimestamp, FormatInstant(*t));
}

}  // namespace backflow
