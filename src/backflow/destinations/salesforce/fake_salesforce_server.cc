#include "backflow/destinations/salesforce/fake_salesforce_server.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <utility>

#include "absl/status/statusor.h"
#include "backflow/common/fmt_absl.h"
#include "fmt/format.h"
#include "fmt/ranges.h"

namespace backflow {
namespace {

using json = nlohmann::json;

constexpr char kTokenPath[] = "/services/oauth2/token";
constexpr char kDataPrefix[] = "/services/data/v";

std::string Lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

bool IEquals(const std::string& a, const std::string& b) { return Lower(a) == Lower(b); }

std::string Dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

std::string PercentDecode(std::string_view s, bool plus_is_space) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '+' && plus_is_space) {
      out.push_back(' ');
    } else if (s[i] == '%' && i + 2 < s.size() && HexValue(s[i + 1]) >= 0 &&
               HexValue(s[i + 2]) >= 0) {
      out.push_back(static_cast<char>(HexValue(s[i + 1]) * 16 + HexValue(s[i + 2])));
      i += 2;
    } else {
      out.push_back(s[i]);
    }
  }
  return out;
}

std::vector<std::pair<std::string, std::string>> ParseQuery(std::string_view q) {
  std::vector<std::pair<std::string, std::string>> out;
  size_t pos = 0;
  while (pos < q.size()) {
    size_t amp = q.find('&', pos);
    if (amp == std::string_view::npos) amp = q.size();
    std::string_view pair = q.substr(pos, amp - pos);
    size_t eq = pair.find('=');
    out.emplace_back(PercentDecode(pair.substr(0, eq), true),
                     eq == std::string_view::npos ? "" : PercentDecode(pair.substr(eq + 1), true));
    pos = amp + 1;
  }
  return out;
}

std::string QueryValue(const std::vector<std::pair<std::string, std::string>>& q,
                       const std::string& name) {
  for (const auto& [k, v] : q) {
    if (k == name) return v;
  }
  return "";
}

std::string ErrorBody(const std::string& code, const std::string& message,
                      const std::vector<std::string>& fields = {}) {
  json e = {{"message", message}, {"errorCode", code}};
  if (!fields.empty()) e["fields"] = fields;
  return Dump(json::array({e}));
}

TestResponse OAuthError(const std::string& error, const std::string& description,
                        int status = 400) {
  return TestResponse::Json(status,
                            Dump(json{{"error", error}, {"error_description", description}}));
}

bool LooksLikeEmail(const std::string& v) {
  size_t at = v.find('@');
  if (at == std::string::npos || at == 0 || v.find('@', at + 1) != std::string::npos) return false;
  std::string domain = v.substr(at + 1);
  if (domain.empty() || domain.front() == '.' || domain.back() == '.') return false;
  if (domain.find('.') == std::string::npos) return false;
  return v.find_first_of(" \t\r\n,;<>") == std::string::npos;
}

bool Digits(std::string_view s, size_t from, size_t n) {
  if (from + n > s.size()) return false;
  for (size_t i = from; i < from + n; ++i) {
    if (!std::isdigit(static_cast<unsigned char>(s[i]))) return false;
  }
  return true;
}

bool IsDate(std::string_view s) {
  return s.size() == 10 && Digits(s, 0, 4) && s[4] == '-' && Digits(s, 5, 2) && s[7] == '-' &&
         Digits(s, 8, 2);
}

bool IsDateTime(std::string_view s) {
  if (s.size() < 19 || !IsDate(s.substr(0, 10)) || (s[10] != 'T' && s[10] != ' ')) return false;
  if (!Digits(s, 11, 2) || s[13] != ':' || !Digits(s, 14, 2) || s[16] != ':' || !Digits(s, 17, 2)) {
    return false;
  }
  std::string_view rest = s.substr(19);
  if (!rest.empty() && rest.front() == '.') {
    size_t n = 1;
    while (n < rest.size() && std::isdigit(static_cast<unsigned char>(rest[n]))) ++n;
    if (n == 1) return false;
    rest.remove_prefix(n);
  }
  if (rest.empty() || rest == "Z") return true;
  if (rest.front() != '+' && rest.front() != '-') return false;
  rest.remove_prefix(1);
  return (rest.size() == 5 && Digits(rest, 0, 2) && rest[2] == ':' && Digits(rest, 3, 2)) ||
         (rest.size() == 4 && Digits(rest, 0, 4));
}

std::optional<double> ParseNumber(const std::string& s) {
  if (s.empty()) return std::nullopt;
  char* end = nullptr;
  double d = std::strtod(s.c_str(), &end);
  if (end != s.c_str() + s.size() || !std::isfinite(d)) return std::nullopt;
  return d;
}

std::string_view TypeName(SfFieldType t) {
  switch (t) {
    case SfFieldType::kString:
      return "string";
    case SfFieldType::kEmail:
      return "email";
    case SfFieldType::kDouble:
      return "double";
    case SfFieldType::kBoolean:
      return "boolean";
    case SfFieldType::kDate:
      return "date";
    case SfFieldType::kDateTime:
      return "datetime";
    case SfFieldType::kReference:
      return "reference";
  }
  return "string";
}

bool IsText(SfFieldType t) {
  return t == SfFieldType::kString || t == SfFieldType::kEmail || t == SfFieldType::kReference;
}

// The text an external id value is matched by (case-insensitive).
std::string MatchText(const json& v) {
  if (v.is_string()) return Lower(v.get<std::string>());
  if (v.is_number_float()) {
    double d = v.get<double>();
    if (d == std::floor(d) && std::fabs(d) < 1e15)
      return fmt::format("{}", static_cast<int64_t>(d));
    return v.dump();
  }
  if (v.is_null()) return "";
  return Lower(v.dump());
}

std::string CellText(const json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_null()) return "";
  return MatchText(v);
}

// Converts a JSON value for a field (collections). nullopt with `error` set
// when Salesforce's JSON parser would refuse it (a whole-request 400).
std::optional<json> FromJson(const SfFieldDef& def, const json& v, std::string& error) {
  if (v.is_null()) return json(nullptr);
  auto refuse = [&](const char* as) -> std::optional<json> {
    std::string token = v.is_string()    ? "VALUE_STRING"
                        : v.is_object()  ? "START_OBJECT"
                        : v.is_array()   ? "START_ARRAY"
                        : v.is_boolean() ? "VALUE_TRUE"
                                         : "VALUE_NUMBER";
    error = fmt::format(
        "Cannot deserialize instance of {} from {} value {} or request may be missing a required "
        "field",
        as, token, v.is_string() ? v.get<std::string>() : Dump(v));
    return std::nullopt;
  };
  switch (def.type) {
    case SfFieldType::kString:
    case SfFieldType::kEmail:
    case SfFieldType::kReference:
      if (v.is_string()) return v;
      if (v.is_number() || v.is_boolean()) return json(CellText(v));
      return refuse("string");
    case SfFieldType::kDouble:
      if (v.is_number()) return json(v.get<double>());
      if (v.is_string()) {
        if (auto d = ParseNumber(v.get<std::string>())) return json(*d);
      }
      return refuse("double");
    case SfFieldType::kBoolean:
      if (v.is_boolean()) return v;
      if (v.is_string() && (v == "true" || v == "false")) return json(v == "true");
      return refuse("boolean");
    case SfFieldType::kDate:
      if (v.is_string() && IsDate(v.get<std::string>())) return v;
      return refuse("date");
    case SfFieldType::kDateTime:
      if (v.is_string() && (IsDateTime(v.get<std::string>()) || IsDate(v.get<std::string>()))) {
        return v;
      }
      return refuse("datetime");
  }
  return refuse("string");
}

// Converts a CSV cell (neither empty nor #N/A) for a field (Bulk).
std::optional<json> FromCell(const SfFieldDef& def, const std::string& field,
                             const std::string& cell, std::string& error) {
  switch (def.type) {
    case SfFieldType::kString:
    case SfFieldType::kEmail:
    case SfFieldType::kReference:
      return json(cell);
    case SfFieldType::kDouble:
      if (auto d = ParseNumber(cell)) return json(*d);
      break;
    case SfFieldType::kBoolean: {
      std::string l = Lower(cell);
      if (l == "true" || l == "1") return json(true);
      if (l == "false" || l == "0") return json(false);
      break;
    }
    case SfFieldType::kDate:
      if (IsDate(cell)) return json(cell);
      break;
    case SfFieldType::kDateTime:
      if (IsDateTime(cell) || IsDate(cell)) return json(cell);
      break;
  }
  error = fmt::format("{}: value not of required type: {}", field, cell);
  return std::nullopt;
}

// RFC 4180 CSV. `line_ending` "LF" refuses a bare CR outside quotes.
struct CsvCell {
  std::string text;
  bool quoted = false;
};

absl::StatusOr<std::vector<std::vector<CsvCell>>> ParseCsv(std::string_view text, bool lf_only) {
  std::vector<std::vector<CsvCell>> rows;
  std::vector<CsvCell> row;
  CsvCell cell;
  bool in_quotes = false;
  bool any = false;
  size_t i = 0;
  auto end_row = [&] {
    row.push_back(std::move(cell));
    cell = CsvCell();
    rows.push_back(std::move(row));
    row.clear();
    any = false;
  };
  while (i < text.size()) {
    char c = text[i];
    if (in_quotes) {
      if (c == '"') {
        if (i + 1 < text.size() && text[i + 1] == '"') {
          cell.text.push_back('"');
          i += 2;
          continue;
        }
        in_quotes = false;
        ++i;
        continue;
      }
      cell.text.push_back(c);
      ++i;
      continue;
    }
    if (c == '"' && cell.text.empty() && !cell.quoted) {
      in_quotes = true;
      cell.quoted = true;
      any = true;
      ++i;
      continue;
    }
    if (c == ',') {
      row.push_back(std::move(cell));
      cell = CsvCell();
      any = true;
      ++i;
      continue;
    }
    if (c == '\r') {
      if (lf_only) {
        return absl::InvalidArgumentError(
            "ClientInputError : LineEnding is invalid on user data. Current LineEnding setting is "
            "LF");
      }
      if (i + 1 < text.size() && text[i + 1] == '\n') ++i;
      end_row();
      ++i;
      continue;
    }
    if (c == '\n') {
      end_row();
      ++i;
      continue;
    }
    cell.text.push_back(c);
    any = true;
    ++i;
  }
  if (in_quotes) return absl::InvalidArgumentError("ClientInputError : unterminated quote");
  if (any || !cell.text.empty()) end_row();
  return rows;
}

std::string CsvQuote(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"') out.push_back('"');
    out.push_back(c);
  }
  out.push_back('"');
  return out;
}

std::string CsvLine(const std::vector<std::string>& cells) {
  std::string out;
  for (size_t i = 0; i < cells.size(); ++i) {
    if (i > 0) out.push_back(',');
    out += CsvQuote(cells[i]);
  }
  out.push_back('\n');
  return out;
}

// A small SOQL subset: SELECT a, b FROM obj [WHERE f IN (v, ...) | WHERE f = v].
struct SoqlLiteral {
  std::string text;
  bool quoted = false;
};
struct Soql {
  std::vector<std::string> select;
  std::string from;
  std::string where_field;
  std::vector<SoqlLiteral> values;
  bool has_where = false;
};

absl::StatusOr<Soql> ParseSoql(const std::string& q) {
  std::vector<SoqlLiteral> tokens;
  size_t i = 0;
  while (i < q.size()) {
    char c = q[i];
    if (std::isspace(static_cast<unsigned char>(c))) {
      ++i;
    } else if (c == '\'') {
      SoqlLiteral lit;
      lit.quoted = true;
      ++i;
      bool closed = false;
      while (i < q.size()) {
        if (q[i] == '\\' && i + 1 < q.size()) {
          char e = q[i + 1];
          lit.text.push_back(e == 'n' ? '\n' : e == 't' ? '\t' : e == 'r' ? '\r' : e);
          i += 2;
        } else if (q[i] == '\'') {
          closed = true;
          ++i;
          break;
        } else {
          lit.text.push_back(q[i++]);
        }
      }
      if (!closed) return absl::InvalidArgumentError("unterminated string literal");
      tokens.push_back(std::move(lit));
    } else if (c == ',' || c == '(' || c == ')' || c == '=') {
      tokens.push_back({std::string(1, c), false});
      ++i;
    } else {
      size_t start = i;
      while (i < q.size() && !std::isspace(static_cast<unsigned char>(q[i])) && q[i] != ',' &&
             q[i] != '(' && q[i] != ')' && q[i] != '=' && q[i] != '\'') {
        ++i;
      }
      tokens.push_back({q.substr(start, i - start), false});
    }
  }
  Soql out;
  size_t t = 0;
  auto word = [&](const char* w) {
    return t < tokens.size() && !tokens[t].quoted && IEquals(tokens[t].text, w);
  };
  auto sym = [&](const char* s) {
    return t < tokens.size() && !tokens[t].quoted && tokens[t].text == s;
  };
  if (!word("SELECT")) return absl::InvalidArgumentError("expecting SELECT");
  ++t;
  while (true) {
    if (t >= tokens.size() || tokens[t].quoted) return absl::InvalidArgumentError("bad field");
    out.select.push_back(tokens[t++].text);
    if (sym(",")) {
      ++t;
      continue;
    }
    break;
  }
  if (!word("FROM")) return absl::InvalidArgumentError("expecting FROM");
  ++t;
  if (t >= tokens.size() || tokens[t].quoted) return absl::InvalidArgumentError("bad object");
  out.from = tokens[t++].text;
  if (t == tokens.size()) return out;
  if (!word("WHERE")) return absl::InvalidArgumentError("unexpected token");
  ++t;
  out.has_where = true;
  if (t >= tokens.size() || tokens[t].quoted) return absl::InvalidArgumentError("bad filter");
  out.where_field = tokens[t++].text;
  if (sym("=")) {
    ++t;
    if (t >= tokens.size()) return absl::InvalidArgumentError("missing value");
    out.values.push_back(tokens[t++]);
  } else if (word("IN")) {
    ++t;
    if (!sym("(")) return absl::InvalidArgumentError("expecting (");
    ++t;
    while (true) {
      if (t >= tokens.size() ||
          (!tokens[t].quoted && (tokens[t].text == ")" || tokens[t].text == ","))) {
        return absl::InvalidArgumentError("missing value");
      }
      out.values.push_back(tokens[t++]);
      if (sym(",")) {
        ++t;
        continue;
      }
      break;
    }
    if (!sym(")")) return absl::InvalidArgumentError("expecting )");
    ++t;
  } else {
    return absl::InvalidArgumentError("unsupported operator");
  }
  if (t != tokens.size()) return absl::InvalidArgumentError("unexpected token");
  return out;
}

// The log kind of an API request, from its method and decoded path.
std::string KindOf(const std::string& method, const std::string& path) {
  std::vector<std::string> parts;
  for (size_t pos = 1; pos <= path.size();) {
    size_t next = path.find('/', pos);
    if (next == std::string::npos) next = path.size();
    if (next > pos) parts.push_back(path.substr(pos, next - pos));
    pos = next + 1;
  }
  // services / data / vNN.N / ...
  if (parts.size() < 4 || parts[0] != "services" || parts[1] != "data") return "other";
  std::vector<std::string> p(parts.begin() + 3, parts.end());
  if (p.size() == 3 && p[0] == "sobjects" && p[2] == "describe") return "describe";
  if (p.size() == 1 && p[0] == "limits") return "limits";
  if (p.size() == 4 && p[0] == "composite" && p[1] == "sobjects") return "upsert";
  if (p.size() == 2 && p[0] == "composite" && p[1] == "sobjects") return "delete";
  if (!p.empty() && p[0] == "query") return "query";
  if (p.size() >= 2 && p[0] == "jobs" && p[1] == "ingest") {
    if (p.size() == 2) return "job_create";
    if (p.size() == 3) return method == "PATCH" ? "job_state" : "job_get";
    if (p.size() == 4 && p[3] == "batches") return "job_upload";
    if (p.size() == 4) return "job_results";
  }
  return "other";
}

bool ValidIdShape(const std::string& id) {
  if (id.size() != 15 && id.size() != 18) return false;
  return std::all_of(id.begin(), id.end(), [](unsigned char c) { return std::isalnum(c); });
}

json ResultJson(const std::string& id, bool success, bool created,
                const std::vector<json>& errors) {
  json r = {
      {"id", id.empty() ? json(nullptr) : json(id)}, {"success", success}, {"errors", errors}};
  if (success) r["created"] = created;
  return r;
}

}  // namespace

std::map<std::string, SfObjectDef> DefaultSalesforceObjects() {
  std::map<std::string, SfObjectDef> out;
  SfObjectDef contact;
  contact.key_prefix = "003";
  contact.fields["LastName"] = {.type = SfFieldType::kString, .required = true, .length = 80};
  contact.fields["FirstName"] = {.type = SfFieldType::kString, .length = 40};
  contact.fields["Email"] = {.type = SfFieldType::kEmail, .length = 80};
  contact.fields["Phone"] = {.type = SfFieldType::kString, .length = 40};
  contact.fields["Title"] = {.type = SfFieldType::kString, .length = 128};
  contact.fields["Plan__c"] = {.type = SfFieldType::kString, .length = 40};
  contact.fields["Seats__c"] = {.type = SfFieldType::kDouble};
  contact.fields["Active__c"] = {.type = SfFieldType::kBoolean};
  contact.fields["Birthdate"] = {.type = SfFieldType::kDate};
  contact.fields["Last_Seen__c"] = {.type = SfFieldType::kDateTime};
  contact.fields["Warehouse_Id__c"] = {
      .type = SfFieldType::kString, .external_id = true, .unique = true, .length = 80};
  contact.fields["AccountId"] = {.type = SfFieldType::kReference,
                                 .length = 18,
                                 .reference_to = "Account",
                                 .relationship_name = "Account"};
  contact.fields["Score__c"] = {.type = SfFieldType::kDouble, .updateable = false};
  out["Contact"] = contact;

  SfObjectDef account;
  account.key_prefix = "001";
  account.fields["Name"] = {.type = SfFieldType::kString, .required = true, .length = 255};
  account.fields["Ext_Acct__c"] = {
      .type = SfFieldType::kString, .external_id = true, .unique = true, .length = 80};
  account.fields["Industry"] = {.type = SfFieldType::kString, .length = 40};
  out["Account"] = account;
  return out;
}

FakeSalesforceReply FakeSalesforceReply::Error(int status, std::string error_code,
                                               std::string message, std::string match) {
  FakeSalesforceReply r;
  r.match = std::move(match);
  r.status = status;
  r.body = ErrorBody(error_code, message);
  return r;
}

FakeSalesforceReply FakeSalesforceReply::ConcurrentLimit(std::string match) {
  return Error(403, "REQUEST_LIMIT_EXCEEDED",
               "ConcurrentRequests (Concurrent API Requests) Limit exceeded.", std::move(match));
}

FakeSalesforceServer::FakeSalesforceServer(FakeSalesforceOptions options)
    : options_(std::move(options)),
      server_([this](const TestRequest& r) { return Handle(r); }),
      rng_(options_.seed),
      api_limit_(options_.daily_api_limit) {}

FakeSalesforceServer::~FakeSalesforceServer() { Stop(); }

absl::Status FakeSalesforceServer::Start() { return server_.Start(); }
void FakeSalesforceServer::Stop() { server_.Stop(); }

std::string FakeSalesforceServer::BaseUrl() const {
  std::string url = server_.Url("/");
  url.pop_back();
  return url;
}

Clock& FakeSalesforceServer::clock() const {
  return options_.clock != nullptr ? *options_.clock : SystemClock();
}

std::string FakeSalesforceServer::AddConnectedApp(const std::string& consumer_key,
                                                  const std::string& public_key_pem) {
  std::string private_pem;
  std::string public_pem = public_key_pem;
  if (public_pem.empty()) {
    absl::StatusOr<RsaKeyPair> pair = GenerateRsaKeyPair();
    if (!pair.ok()) return "";
    private_pem = pair->private_key_pem;
    public_pem = pair->public_key_pem;
  }
  absl::StatusOr<std::unique_ptr<Rs256Key>> key = Rs256Key::FromPublicKeyPem(public_pem);
  if (!key.ok()) return "";
  std::lock_guard<std::mutex> lock(mu_);
  apps_[consumer_key].public_key = *std::move(key);
  return private_pem;
}

void FakeSalesforceServer::AddUser(const std::string& username, bool pre_authorized) {
  std::lock_guard<std::mutex> lock(mu_);
  users_[username] = pre_authorized;
}

void FakeSalesforceServer::SetPreAuthorized(const std::string& username, bool pre_authorized) {
  AddUser(username, pre_authorized);
}

void FakeSalesforceServer::DefineObject(const std::string& name, SfObjectDef def) {
  std::lock_guard<std::mutex> lock(mu_);
  options_.objects[name] = std::move(def);
}

std::string FakeSalesforceServer::NewId(const std::string& object) {
  const SfObjectDef* def = FindObject(object);
  std::string prefix = def != nullptr && def->key_prefix.size() == 3 ? def->key_prefix : "a00";
  return fmt::format("{}{:012d}AAA", prefix, next_id_++);
}

std::string FakeSalesforceServer::Seed(const std::string& object,
                                       const std::map<std::string, json>& fields) {
  std::lock_guard<std::mutex> lock(mu_);
  std::string canonical = object;
  FindObject(object, &canonical);
  Record r;
  r.id = NewId(canonical);
  for (const auto& [k, v] : fields) {
    if (!v.is_null()) r.fields[k] = v;
  }
  std::string id = r.id;
  records_[canonical][id] = std::move(r);
  return id;
}

void FakeSalesforceServer::LockRecord(const std::string& object, const std::string& external_id,
                                      int times) {
  std::lock_guard<std::mutex> lock(mu_);
  std::string canonical = object;
  FindObject(object, &canonical);
  locks_[{canonical, Lower(external_id)}] = times;
}

void FakeSalesforceServer::ExpireSessions() {
  std::lock_guard<std::mutex> lock(mu_);
  sessions_.clear();
}

void FakeSalesforceServer::SetApiUsage(int64_t used, int64_t limit) {
  std::lock_guard<std::mutex> lock(mu_);
  api_used_ = used;
  api_limit_ = limit;
}

void FakeSalesforceServer::SetInstanceUrl(const std::string& url) {
  std::lock_guard<std::mutex> lock(mu_);
  options_.instance_url = url;
}

void FakeSalesforceServer::Enqueue(FakeSalesforceReply reply) {
  std::lock_guard<std::mutex> lock(mu_);
  script_.push_back(std::move(reply));
}

void FakeSalesforceServer::EnqueueN(int count, const FakeSalesforceReply& reply) {
  for (int i = 0; i < count; ++i) Enqueue(reply);
}

std::vector<FakeSalesforceRecord> FakeSalesforceServer::Records(const std::string& object) const {
  std::lock_guard<std::mutex> lock(mu_);
  std::string canonical = object;
  FindObject(object, &canonical);
  std::vector<FakeSalesforceRecord> out;
  auto it = records_.find(canonical);
  if (it == records_.end()) return out;
  for (const auto& [id, r] : it->second) out.push_back({r.id, r.fields});
  return out;
}

std::vector<FakeSalesforceRecord> FakeSalesforceServer::Find(const std::string& object,
                                                             const std::string& field,
                                                             const json& value) const {
  std::vector<FakeSalesforceRecord> out;
  for (FakeSalesforceRecord& r : Records(object)) {
    auto f = r.fields.find(field);
    if (f != r.fields.end() && f->second == value) out.push_back(std::move(r));
  }
  return out;
}

size_t FakeSalesforceServer::recycle_bin_size() const {
  std::lock_guard<std::mutex> lock(mu_);
  size_t n = 0;
  for (const auto& [object, records] : recycle_bin_) n += records.size();
  return n;
}

std::vector<FakeSalesforceRequest> FakeSalesforceServer::Requests() const {
  std::lock_guard<std::mutex> lock(mu_);
  return requests_;
}

int64_t FakeSalesforceServer::CountRequests(const std::string& kind, int status) const {
  std::lock_guard<std::mutex> lock(mu_);
  return std::count_if(requests_.begin(), requests_.end(), [&](const FakeSalesforceRequest& r) {
    return r.kind == kind && (status == 0 || r.status == status);
  });
}

int64_t FakeSalesforceServer::request_count() const {
  std::lock_guard<std::mutex> lock(mu_);
  return std::count_if(requests_.begin(), requests_.end(),
                       [](const FakeSalesforceRequest& r) { return r.kind != "token"; });
}

std::vector<FakeSalesforceJob> FakeSalesforceServer::Jobs() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<FakeSalesforceJob> out;
  for (const auto& [id, job] : jobs_) out.push_back(job.info);
  return out;
}

int64_t FakeSalesforceServer::sessions_issued() const {
  std::lock_guard<std::mutex> lock(mu_);
  return sessions_issued_;
}

int64_t FakeSalesforceServer::api_usage() const {
  std::lock_guard<std::mutex> lock(mu_);
  return api_used_;
}

void FakeSalesforceServer::ClearRequests() {
  std::lock_guard<std::mutex> lock(mu_);
  requests_.clear();
}

const SfObjectDef* FakeSalesforceServer::FindObject(const std::string& name,
                                                    std::string* canonical) const {
  for (const auto& [n, def] : options_.objects) {
    if (IEquals(n, name)) {
      if (canonical != nullptr) *canonical = n;
      return &def;
    }
  }
  return nullptr;
}

const SfFieldDef* FakeSalesforceServer::FindField(const SfObjectDef& def, const std::string& name,
                                                  std::string* canonical) {
  for (const auto& [n, f] : def.fields) {
    if (IEquals(n, name)) {
      if (canonical != nullptr) *canonical = n;
      return &f;
    }
  }
  return nullptr;
}

// ------------------------------------------------------------------ dispatch

TestResponse FakeSalesforceServer::Handle(const TestRequest& req) {
  std::lock_guard<std::mutex> lock(mu_);
  FakeSalesforceRequest log;
  log.method = req.method;
  log.target = req.target;
  log.body = req.body.size() > 200'000 ? req.body.substr(0, 200'000) : req.body;
  log.host = req.Header("host").value_or("");
  log.authorization = req.Header("authorization").value_or("");
  size_t q = req.target.find('?');
  std::string path = PercentDecode(req.target.substr(0, q), false);
  std::string query = q == std::string::npos ? "" : req.target.substr(q + 1);

  auto take_script = [&](bool token) -> std::optional<FakeSalesforceReply> {
    auto it = std::find_if(script_.begin(), script_.end(), [&](const FakeSalesforceReply& r) {
      bool for_token = r.match.find(kTokenPath) != std::string::npos;
      if (for_token != token) return false;
      return r.match.empty() || req.target.find(r.match) != std::string::npos;
    });
    if (it == script_.end()) return std::nullopt;
    FakeSalesforceReply r = *it;
    script_.erase(it);
    return r;
  };
  auto scripted_response = [&](const FakeSalesforceReply& r) {
    if (r.reset_connection) return TestResponse::Reset();
    TestResponse resp = TestResponse::Json(
        r.status, r.body.empty() ? ErrorBody(r.status >= 500 ? "SERVER_UNAVAILABLE" : "UNKNOWN",
                                             fmt::format("Scripted HTTP {}", r.status))
                                 : r.body);
    for (const auto& h : r.headers) resp.headers.push_back(h);
    return resp;
  };

  TestResponse resp;
  if (path == kTokenPath) {
    log.kind = "token";
    if (auto s = take_script(true)) {
      resp = scripted_response(*s);
      resp.delay = s->delay;
    } else {
      resp = HandleToken(req);
    }
    log.status = resp.reset_connection ? 0 : resp.status;
    requests_.push_back(std::move(log));
    return resp;
  }

  log.kind = KindOf(req.method, path);
  if (req.target.size() > options_.max_url_length) {
    resp.status = 414;
    resp.headers.emplace_back("Content-Type", "text/html");
    resp.body = "<html><body>414 Request-URI Too Large</body></html>";
    log.status = 414;
    requests_.push_back(std::move(log));
    return resp;
  }
  std::optional<std::string> auth = req.Header("authorization");
  auto session =
      auth && auth->rfind("Bearer ", 0) == 0 ? sessions_.find(auth->substr(7)) : sessions_.end();
  if (session == sessions_.end() || clock().Now() >= session->second.expires) {
    resp = TestResponse::Json(401, ErrorBody("INVALID_SESSION_ID", "Session expired or invalid"));
  } else {
    std::optional<FakeSalesforceReply> scripted = take_script(false);
    bool limited = false;
    if (api_used_ >= api_limit_) {
      limited = true;
    } else {
      ++api_used_;
    }
    if (scripted && !scripted->apply_first) {
      resp = scripted_response(*scripted);
    } else if (limited) {
      resp = TestResponse::Json(
          403, ErrorBody("REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded."));
    } else {
      Reply r = HandleApi(req.method, path, query, req, log);
      resp.status = r.status;
      resp.body = std::move(r.body);
      if (!resp.body.empty()) resp.headers.emplace_back("Content-Type", r.content_type);
      if (scripted) {
        TestResponse s = scripted_response(*scripted);
        if (!(scripted->status >= 200 && scripted->status < 300 && scripted->body.empty())) {
          resp = s;
        }
      }
    }
    if (scripted) resp.delay = scripted->delay;
    bool has_limit_header = std::any_of(resp.headers.begin(), resp.headers.end(), [](auto& h) {
      return Lower(h.first) == "sforce-limit-info";
    });
    if (!has_limit_header && !resp.reset_connection) {
      resp.headers.emplace_back("Sforce-Limit-Info",
                                fmt::format("api-usage={}/{}", api_used_, api_limit_));
    }
  }
  log.status = resp.reset_connection ? 0 : resp.status;
  requests_.push_back(std::move(log));
  return resp;
}

TestResponse FakeSalesforceServer::HandleToken(const TestRequest& req) {
  if (req.method != "POST") return OAuthError("invalid_request", "must use HTTP POST", 405);
  std::optional<std::string> type = req.Header("content-type");
  if (!type || type->rfind("application/x-www-form-urlencoded", 0) != 0) {
    return OAuthError("invalid_request", "invalid content type");
  }
  auto form = ParseQuery(req.body);
  std::string grant = QueryValue(form, "grant_type");
  if (grant != kJwtBearerGrantType) {
    return OAuthError("unsupported_grant_type", "grant type not supported");
  }
  std::string assertion = QueryValue(form, "assertion");
  absl::StatusOr<DecodedJwt> decoded = DecodeJwt(assertion);
  if (!decoded.ok()) return OAuthError("invalid_grant", "invalid assertion");
  const json& c = decoded->claims;
  std::string iss = c.value("iss", "");
  auto app = apps_.find(iss);
  if (app == apps_.end()) return OAuthError("invalid_client_id", "client identifier invalid");
  if (!VerifyJwtRs256(assertion, *app->second.public_key).ok()) {
    return OAuthError("invalid_grant", "invalid assertion");
  }
  std::string audience = options_.audience.empty() ? BaseUrl() : options_.audience;
  if (c.value("aud", "") != audience) return OAuthError("invalid_grant", "audience is invalid");
  int64_t now =
      std::chrono::duration_cast<std::chrono::seconds>(clock().Now().time_since_epoch()).count();
  if (!c.contains("exp") || !c["exp"].is_number_integer() || c["exp"].get<int64_t>() <= now ||
      c["exp"].get<int64_t>() > now + options_.max_assertion_lifetime.count() + 5) {
    return OAuthError("invalid_grant", "expired authorization code");
  }
  std::string sub = c.value("sub", "");
  auto user = users_.find(sub);
  if (user == users_.end()) return OAuthError("invalid_grant", "invalid assertion");
  if (!user->second) return OAuthError("invalid_grant", "user hasn't approved this consumer");
  ++sessions_issued_;
  std::string token = fmt::format("00DFAKE000000001!AR.fake-session-{}", sessions_issued_);
  sessions_[token] = Session{sub, clock().Now() + options_.session_timeout};
  std::string instance = options_.instance_url.empty() ? BaseUrl() : options_.instance_url;
  int64_t ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(clock().Now().time_since_epoch())
          .count();
  return TestResponse::Json(
      200, Dump(json{{"access_token", token},
                     {"scope", "api"},
                     {"instance_url", instance},
                     {"id", audience + "/id/00DFAKE000000001AAA/005FAKE000000001AAA"},
                     {"token_type", "Bearer"},
                     {"issued_at", std::to_string(ms)}}));
}

FakeSalesforceServer::Reply FakeSalesforceServer::HandleApi(const std::string& method,
                                                            const std::string& path,
                                                            const std::string& query,
                                                            const TestRequest& req,
                                                            FakeSalesforceRequest& log) {
  auto error = [](int status, const std::string& code, const std::string& message) {
    return Reply{status, ErrorBody(code, message)};
  };
  const Reply not_found = error(404, "NOT_FOUND", "The requested resource does not exist");
  if (!path.starts_with(kDataPrefix)) return not_found;
  std::string rest = path.substr(sizeof(kDataPrefix) - 1);
  size_t slash = rest.find('/');
  std::string version_text = rest.substr(0, slash);
  int version = 0;
  {
    size_t dot = version_text.find('.');
    if (dot == std::string::npos || dot == 0 || version_text.substr(dot) != ".0" ||
        !std::all_of(version_text.begin(), version_text.begin() + static_cast<long>(dot),
                     [](unsigned char c) { return std::isdigit(c); })) {
      return not_found;
    }
    version = std::stoi(version_text.substr(0, dot));
  }
  if (version < options_.min_api_version) return not_found;
  rest = slash == std::string::npos ? "" : rest.substr(slash);
  while (rest.size() > 1 && rest.back() == '/') rest.pop_back();
  std::vector<std::string> parts;
  for (size_t pos = 1; pos <= rest.size();) {
    size_t next = rest.find('/', pos);
    if (next == std::string::npos) next = rest.size();
    parts.push_back(rest.substr(pos, next - pos));
    pos = next + 1;
  }
  auto allow = [&](const char* m) { return method == m; };
  const Reply bad_method =
      error(405, "METHOD_NOT_ALLOWED", fmt::format("HTTP Method '{}' not allowed.", method));

  if (parts.size() == 3 && parts[0] == "sobjects" && parts[2] == "describe") {
    log.kind = "describe";
    return allow("GET") ? Describe(parts[1]) : bad_method;
  }
  if (parts.size() == 1 && parts[0] == "limits") {
    log.kind = "limits";
    return allow("GET") ? Limits() : bad_method;
  }
  if (parts.size() == 4 && parts[0] == "composite" && parts[1] == "sobjects") {
    log.kind = "upsert";
    if (!allow("PATCH")) return bad_method;
    if (version < options_.min_upsert_api_version) return not_found;
    return Upsert(parts[2], parts[3], req.body, log);
  }
  if (parts.size() == 2 && parts[0] == "composite" && parts[1] == "sobjects") {
    if (allow("DELETE")) {
      log.kind = "delete";
      return Delete(query, log);
    }
    return bad_method;
  }
  if (parts.size() == 1 && parts[0] == "query") {
    log.kind = "query";
    if (!allow("GET")) return bad_method;
    return Query(QueryValue(ParseQuery(query), "q"));
  }
  if (parts.size() == 2 && parts[0] == "query") {
    log.kind = "query";
    if (!allow("GET")) return bad_method;
    return QueryMore(parts[1]);
  }
  if (parts.size() >= 2 && parts[0] == "jobs" && parts[1] == "ingest") {
    if (parts.size() == 2) {
      log.kind = "job_create";
      return allow("POST") ? CreateJob(req.body) : bad_method;
    }
    const std::string& id = parts[2];
    if (parts.size() == 3) {
      if (allow("PATCH")) {
        log.kind = "job_state";
        return ChangeJobState(id, req.body);
      }
      log.kind = "job_get";
      return allow("GET") ? GetJob(id) : bad_method;
    }
    if (parts.size() == 4 && parts[3] == "batches") {
      log.kind = "job_upload";
      return allow("PUT") ? UploadJob(id, req) : bad_method;
    }
    if (parts.size() == 4 && (parts[3] == "successfulResults" || parts[3] == "failedResults" ||
                              parts[3] == "unprocessedrecords")) {
      log.kind = "job_results";
      return allow("GET") ? JobResults(id, parts[3]) : bad_method;
    }
  }
  return not_found;
}

FakeSalesforceServer::Reply FakeSalesforceServer::Describe(const std::string& object) {
  std::string name;
  const SfObjectDef* def = FindObject(object, &name);
  if (def == nullptr) {
    return Reply{404, ErrorBody("NOT_FOUND", "The requested resource does not exist")};
  }
  json fields = json::array();
  fields.push_back({{"name", "Id"},
                    {"type", "id"},
                    {"externalId", false},
                    {"idLookup", true},
                    {"unique", false},
                    {"nillable", false},
                    {"createable", false},
                    {"updateable", false},
                    {"length", 18},
                    {"referenceTo", json::array()},
                    {"relationshipName", nullptr}});
  for (const auto& [n, f] : def->fields) {
    fields.push_back(
        {{"name", n},
         {"type", TypeName(f.type)},
         {"externalId", f.external_id},
         {"idLookup", f.external_id || f.type == SfFieldType::kEmail},
         {"unique", f.unique},
         {"nillable", !f.required},
         {"createable", f.updateable},
         {"updateable", f.updateable},
         {"length", IsText(f.type) ? f.length : 0},
         {"referenceTo", f.reference_to.empty() ? json::array() : json::array({f.reference_to})},
         {"relationshipName",
          f.relationship_name.empty() ? json(nullptr) : json(f.relationship_name)}});
  }
  return Reply{200, Dump(json{{"name", name},
                              {"label", name},
                              {"keyPrefix", def->key_prefix},
                              {"createable", true},
                              {"updateable", true},
                              {"deletable", true},
                              {"fields", fields}})};
}

FakeSalesforceServer::Reply FakeSalesforceServer::Limits() {
  return Reply{
      200,
      Dump(json{{"DailyApiRequests", {{"Max", api_limit_}, {"Remaining", api_limit_ - api_used_}}},
                {"DailyBulkApiBatches", {{"Max", 15000}, {"Remaining", 15000}}},
                {"DailyBulkV2QueryJobs", {{"Max", 10000}, {"Remaining", 10000}}}})};
}

// ------------------------------------------------------------------ records

std::vector<std::string> FakeSalesforceServer::MatchExternalId(const std::string& object,
                                                               const std::string& field,
                                                               const json& value) const {
  std::vector<std::string> out;
  auto it = records_.find(object);
  if (it == records_.end()) return out;
  std::string want = MatchText(value);
  for (const auto& [id, r] : it->second) {
    auto f = r.fields.find(field);
    if (f != r.fields.end() && MatchText(f->second) == want) out.push_back(id);
  }
  return out;
}

bool FakeSalesforceServer::TakeLockByValue(const std::string& object, const std::string& value) {
  auto it = locks_.find({object, Lower(value)});
  if (it == locks_.end() || it->second <= 0) return false;
  --it->second;
  return true;
}

bool FakeSalesforceServer::TakeLock(const std::string& object, const Record& record) {
  const SfObjectDef* def = FindObject(object);
  if (def == nullptr) return false;
  for (const auto& [n, f] : def->fields) {
    if (!f.external_id) continue;
    auto v = record.fields.find(n);
    if (v != record.fields.end() && TakeLockByValue(object, CellText(v->second))) return true;
  }
  return false;
}

FakeSalesforceServer::ItemResult FakeSalesforceServer::ApplyUpsert(const std::string& object,
                                                                   const std::string& ext_field,
                                                                   const json& ext_value,
                                                                   const std::vector<Write>& writes,
                                                                   bool dry) {
  ItemResult result;
  const SfObjectDef& def = *FindObject(object);
  if (ext_value.is_null() || CellText(ext_value).empty()) {
    result.errors.push_back({"MISSING_ARGUMENT", ext_field + " not specified", {ext_field}});
    return result;
  }
  std::vector<std::string> matches = MatchExternalId(object, ext_field, ext_value);
  if (matches.size() > 1) {
    result.errors.push_back(
        {"DUPLICATE_EXTERNAL_ID",
         fmt::format("{}: more than one record found for external id field: [{}]", ext_field,
                     fmt::join(matches, ", ")),
         {ext_field}});
    return result;
  }
  if (TakeLockByValue(object, CellText(ext_value))) {
    result.errors.push_back(
        {"UNABLE_TO_LOCK_ROW", "unable to obtain exclusive access to this record", {}});
    return result;
  }
  Record* target = matches.empty() ? nullptr : &records_[object][matches.front()];
  std::map<std::string, json> values;
  for (const Write& w : writes) {
    const SfFieldDef& f = def.fields.at(w.field);
    if (!f.updateable) {
      result.errors.push_back(
          {"INVALID_FIELD_FOR_INSERT_UPDATE",
           fmt::format("Unable to create/update fields: {}. Please check the security settings of "
                       "this field and verify that it is read/write for your profile or "
                       "permission set.",
                       w.field),
           {w.field}});
      continue;
    }
    if (w.is_relationship) {
      if (w.value.is_null()) continue;
      std::vector<std::string> parents = MatchExternalId(f.reference_to, w.parent_field, w.value);
      if (parents.empty()) {
        result.errors.push_back(
            {"INVALID_FIELD",
             fmt::format("Foreign key external ID: {} not found for field {} in entity {}",
                         CellText(w.value), w.parent_field, f.reference_to),
             {}});
      } else if (parents.size() > 1) {
        result.errors.push_back(
            {"DUPLICATE_EXTERNAL_ID",
             fmt::format("Foreign key external ID: {} matched more than one record for field {} "
                         "in entity {}",
                         CellText(w.value), w.parent_field, f.reference_to),
             {}});
      } else {
        values[w.field] = parents.front();
      }
      continue;
    }
    if (!w.value.is_null() && IsText(f.type)) {
      const std::string& s = w.value.get_ref<const std::string&>();
      size_t chars = 0;
      for (unsigned char ch : s) chars += (ch & 0xC0) != 0x80;
      if (static_cast<int>(chars) > f.length) {
        result.errors.push_back({"STRING_TOO_LONG",
                                 fmt::format("{}: data value too large: {} (max length={})",
                                             w.field, s.substr(0, 40), f.length),
                                 {w.field}});
        continue;
      }
      if (f.type == SfFieldType::kEmail && !LooksLikeEmail(s)) {
        result.errors.push_back({"INVALID_EMAIL_ADDRESS",
                                 fmt::format("{}: invalid email address: {}", w.field, s),
                                 {w.field}});
        continue;
      }
    }
    values[w.field] = w.value;
  }
  // Required fields: must be set on create and never cleared.
  std::vector<std::string> missing;
  for (const auto& [n, f] : def.fields) {
    if (!f.required) continue;
    auto v = values.find(n);
    bool set_now = v != values.end() && !v->second.is_null() &&
                   !(v->second.is_string() && v->second.get<std::string>().empty());
    bool cleared = v != values.end() && !set_now;
    bool had = target != nullptr && target->fields.count(n);
    if (cleared || (!set_now && !had)) missing.push_back(n);
  }
  if (!missing.empty()) {
    result.errors.push_back(
        {"REQUIRED_FIELD_MISSING",
         fmt::format("Required fields are missing: [{}]", fmt::join(missing, ", ")), missing});
  }
  if (!result.errors.empty()) return result;
  if (dry) {
    result.created = target == nullptr;
    return result;
  }
  if (target == nullptr) {
    Record r;
    r.id = NewId(object);
    r.fields[ext_field] = ext_value;
    result.id = r.id;
    result.created = true;
    records_[object][r.id] = std::move(r);
    target = &records_[object][result.id];
  } else {
    result.id = target->id;
  }
  target->fields[ext_field] = ext_value;
  for (auto& [n, v] : values) {
    if (v.is_null() || (v.is_string() && v.get<std::string>().empty())) {
      target->fields.erase(n);
    } else {
      target->fields[n] = v;
    }
  }
  return result;
}

FakeSalesforceServer::Reply FakeSalesforceServer::Upsert(const std::string& object_in,
                                                         const std::string& ext_in,
                                                         const std::string& body,
                                                         FakeSalesforceRequest& log) {
  std::string object;
  const SfObjectDef* def = FindObject(object_in, &object);
  if (def == nullptr) {
    return Reply{404, ErrorBody("NOT_FOUND", "The requested resource does not exist")};
  }
  std::string ext_field;
  const SfFieldDef* ext = FindField(*def, ext_in, &ext_field);
  if (ext == nullptr || !ext->external_id) {
    return Reply{404, ErrorBody("NOT_FOUND",
                                "Provided external ID field does not exist or is not accessible: " +
                                    ext_in)};
  }
  json doc = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (!doc.is_object() || !doc.contains("records") || !doc["records"].is_array()) {
    return Reply{400, ErrorBody("JSON_PARSER_ERROR",
                                "The request body must be an object with a records array")};
  }
  const json& records = doc["records"];
  log.records = static_cast<int>(records.size());
  if (static_cast<int>(records.size()) > options_.max_collection_records) {
    return Reply{400, ErrorBody("EXCEEDED_ID_LIMIT",
                                fmt::format("Record limit reached. Cannot submit more than {} "
                                            "records into this call",
                                            options_.max_collection_records))};
  }
  bool all_or_none = doc.value("allOrNone", false);
  // Resolve every record first: any structural problem fails the request.
  std::vector<std::vector<Write>> writes(records.size());
  std::vector<json> ext_values(records.size());
  for (size_t i = 0; i < records.size(); ++i) {
    const json& rec = records[i];
    if (!rec.is_object()) {
      return Reply{400, ErrorBody("JSON_PARSER_ERROR", "Each record must be a JSON object")};
    }
    auto attrs = rec.find("attributes");
    if (attrs == rec.end() || !attrs->is_object() || !attrs->contains("type") ||
        !(*attrs)["type"].is_string()) {
      return Reply{400, ErrorBody("INVALID_FIELD",
                                  "When upserting by external ID, each record must specify its "
                                  "sObject type in attributes.type")};
    }
    if (!IEquals((*attrs)["type"].get<std::string>(), object)) {
      return Reply{400, ErrorBody("INVALID_TYPE",
                                  "Upsert by external ID only supports one sObject type per "
                                  "request: " +
                                      (*attrs)["type"].get<std::string>())};
    }
    ext_values[i] = nullptr;
    for (auto& [key, value] : rec.items()) {
      if (key == "attributes") continue;
      if (value.is_object()) {
        // A parent lookup by the parent's external id.
        const SfFieldDef* ref = nullptr;
        std::string ref_name;
        for (const auto& [n, f] : def->fields) {
          if (f.type == SfFieldType::kReference && IEquals(f.relationship_name, key)) {
            ref = &f;
            ref_name = n;
          }
        }
        if (ref == nullptr) {
          return Reply{400, ErrorBody("INVALID_FIELD",
                                      fmt::format("No such column '{}' on sobject of type {}", key,
                                                  object))};
        }
        const SfObjectDef* parent = FindObject(ref->reference_to);
        std::string parent_field;
        const SfFieldDef* pf = nullptr;
        size_t members = 0;
        for (auto& [pk, pv] : value.items()) {
          if (pk == "attributes") continue;
          ++members;
          if (parent != nullptr) pf = FindField(*parent, pk, &parent_field);
          if (pf == nullptr || !pf->external_id || pv.is_object() || pv.is_array()) {
            return Reply{400, ErrorBody("INVALID_FIELD",
                                        fmt::format("Field {} is not an External ID field of {}: "
                                                    "relationship {} must name one",
                                                    pk, ref->reference_to, key))};
          }
          writes[i].push_back({ref_name, pv, true, parent_field});
        }
        if (members != 1) {
          return Reply{400, ErrorBody("INVALID_FIELD",
                                      fmt::format("Relationship {} must name exactly one external "
                                                  "id field",
                                                  key))};
        }
        continue;
      }
      std::string canonical;
      const SfFieldDef* f = FindField(*def, key, &canonical);
      if (f == nullptr) {
        return Reply{
            400, ErrorBody("INVALID_FIELD",
                           fmt::format("No such column '{}' on sobject of type {}", key, object))};
      }
      std::string parse_error;
      std::optional<json> converted = FromJson(*f, value, parse_error);
      if (!converted) return Reply{400, ErrorBody("JSON_PARSER_ERROR", parse_error)};
      if (canonical == ext_field) {
        ext_values[i] = *converted;
      } else {
        writes[i].push_back({canonical, *converted, false, ""});
      }
    }
  }
  // The same external id twice in one request fails every occurrence.
  std::map<std::string, int> counts;
  for (const json& v : ext_values) {
    if (!v.is_null()) ++counts[MatchText(v)];
  }
  std::vector<ItemResult> results(records.size());
  for (size_t i = 0; i < records.size(); ++i) {
    if (!ext_values[i].is_null() && counts[MatchText(ext_values[i])] > 1) {
      results[i].errors.push_back({"DUPLICATE_EXTERNAL_ID",
                                   "Duplicate external id specified: " + CellText(ext_values[i]),
                                   {ext_field}});
    }
  }
  if (all_or_none) {
    bool any_failed = false;
    for (size_t i = 0; i < records.size(); ++i) {
      if (results[i].errors.empty()) {
        results[i] = ApplyUpsert(object, ext_field, ext_values[i], writes[i], /*dry=*/true);
      }
      any_failed |= !results[i].errors.empty();
    }
    if (any_failed) {
      json out = json::array();
      for (const ItemResult& r : results) {
        std::vector<json> errors;
        if (r.errors.empty()) {
          errors.push_back({{"statusCode", "ALL_OR_NONE_OPERATION_ROLLED_BACK"},
                            {"message",
                             "Record rolled back because not all records were valid and the "
                             "request was using AllOrNone header"},
                            {"fields", json::array()}});
        }
        for (const ItemError& e : r.errors) {
          errors.push_back({{"statusCode", e.code}, {"message", e.message}, {"fields", e.fields}});
        }
        out.push_back(ResultJson("", false, false, errors));
      }
      return Reply{200, Dump(out)};
    }
    for (ItemResult& r : results) r = ItemResult();
  }
  json out = json::array();
  for (size_t i = 0; i < records.size(); ++i) {
    if (results[i].errors.empty()) {
      results[i] = ApplyUpsert(object, ext_field, ext_values[i], writes[i], /*dry=*/false);
    }
    std::vector<json> errors;
    for (const ItemError& e : results[i].errors) {
      errors.push_back({{"statusCode", e.code}, {"message", e.message}, {"fields", e.fields}});
    }
    out.push_back(ResultJson(results[i].id, results[i].errors.empty(), results[i].created, errors));
  }
  return Reply{200, Dump(out)};
}

FakeSalesforceServer::Reply FakeSalesforceServer::Delete(const std::string& query,
                                                         FakeSalesforceRequest& log) {
  auto params = ParseQuery(query);
  std::string ids_text = QueryValue(params, "ids");
  bool all_or_none = QueryValue(params, "allOrNone") == "true";
  std::vector<std::string> ids;
  for (size_t pos = 0; pos <= ids_text.size() && !ids_text.empty();) {
    size_t comma = ids_text.find(',', pos);
    if (comma == std::string::npos) comma = ids_text.size();
    ids.push_back(ids_text.substr(pos, comma - pos));
    pos = comma + 1;
  }
  log.records = static_cast<int>(ids.size());
  if (ids.empty()) {
    return Reply{400, ErrorBody("MISSING_ARGUMENT", "ids parameter is required")};
  }
  if (static_cast<int>(ids.size()) > options_.max_collection_records) {
    return Reply{400, ErrorBody("EXCEEDED_ID_LIMIT",
                                fmt::format("Record limit reached. Cannot submit more than {} "
                                            "records into this call",
                                            options_.max_collection_records))};
  }
  auto locate = [&](const std::string& id, std::map<std::string, Record>** bucket,
                    bool* in_bin) -> bool {
    for (auto& [object, recs] : records_) {
      if (recs.count(id)) {
        *bucket = &recs;
        *in_bin = false;
        return true;
      }
    }
    for (auto& [object, recs] : recycle_bin_) {
      if (recs.count(id)) {
        *in_bin = true;
        return true;
      }
    }
    return false;
  };
  std::vector<ItemError> errors(ids.size());
  std::vector<bool> ok(ids.size(), false);
  for (size_t i = 0; i < ids.size(); ++i) {
    std::map<std::string, Record>* bucket = nullptr;
    bool in_bin = false;
    if (!ValidIdShape(ids[i])) {
      errors[i] = {"MALFORMED_ID", "malformed id " + ids[i], {}};
    } else if (!locate(ids[i], &bucket, &in_bin)) {
      errors[i] = {"INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id", {}};
    } else if (in_bin) {
      errors[i] = {"ENTITY_IS_DELETED", "entity is deleted", {}};
    } else {
      std::string object;
      for (auto& [o, recs] : records_) {
        if (&recs == bucket) object = o;
      }
      if (TakeLock(object, bucket->at(ids[i]))) {
        errors[i] = {"UNABLE_TO_LOCK_ROW", "unable to obtain exclusive access to this record", {}};
      } else {
        ok[i] = true;
      }
    }
  }
  bool any_failed = std::find(ok.begin(), ok.end(), false) != ok.end();
  json out = json::array();
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ok[i] && all_or_none && any_failed) {
      out.push_back(ResultJson(ids[i], false, false,
                               {{{"statusCode", "ALL_OR_NONE_OPERATION_ROLLED_BACK"},
                                 {"message",
                                  "Record rolled back because not all records were valid and "
                                  "the request was using AllOrNone header"},
                                 {"fields", json::array()}}}));
      continue;
    }
    if (ok[i]) {
      for (auto& [object, recs] : records_) {
        auto it = recs.find(ids[i]);
        if (it == recs.end()) continue;
        recycle_bin_[object][ids[i]] = std::move(it->second);
        recs.erase(it);
        break;
      }
      out.push_back(ResultJson(ids[i], true, false, {}));
    } else {
      out.push_back(ResultJson(ids[i].empty() ? "" : ids[i], false, false,
                               {{{"statusCode", errors[i].code},
                                 {"message", errors[i].message},
                                 {"fields", errors[i].fields}}}));
    }
  }
  return Reply{200, Dump(out)};
}

FakeSalesforceServer::Reply FakeSalesforceServer::Query(const std::string& soql) {
  absl::StatusOr<Soql> parsed = ParseSoql(soql);
  if (!parsed.ok()) {
    return Reply{400, ErrorBody("MALFORMED_QUERY", fmt::format("{}: {}", soql.substr(0, 80),
                                                               parsed.status().message()))};
  }
  std::string object;
  const SfObjectDef* def = FindObject(parsed->from, &object);
  if (def == nullptr) {
    return Reply{400, ErrorBody("INVALID_TYPE",
                                fmt::format("sObject type '{}' is not supported.", parsed->from))};
  }
  auto resolve = [&](const std::string& name, std::string& canonical,
                     const SfFieldDef*& f) -> bool {
    if (IEquals(name, "Id")) {
      canonical = "Id";
      f = nullptr;
      return true;
    }
    f = FindField(*def, name, &canonical);
    return f != nullptr;
  };
  std::vector<std::string> select;
  for (const std::string& s : parsed->select) {
    std::string canonical;
    const SfFieldDef* f = nullptr;
    if (!resolve(s, canonical, f)) {
      return Reply{400, ErrorBody("INVALID_FIELD",
                                  fmt::format("No such column '{}' on entity '{}'. If you are "
                                              "attempting to use a custom field, be sure to "
                                              "append the '__c' after the custom field name.",
                                              s, object))};
    }
    select.push_back(canonical);
  }
  std::string where;
  const SfFieldDef* wf = nullptr;
  if (parsed->has_where) {
    if (!resolve(parsed->where_field, where, wf)) {
      return Reply{400,
                   ErrorBody("INVALID_FIELD", fmt::format("No such column '{}' on entity '{}'.",
                                                          parsed->where_field, object))};
    }
    bool numeric = wf != nullptr && wf->type == SfFieldType::kDouble;
    for (const SoqlLiteral& lit : parsed->values) {
      if (numeric && lit.quoted) {
        return Reply{400, ErrorBody("INVALID_QUERY_FILTER_OPERATOR",
                                    fmt::format("value of filter criterion for field '{}' must be "
                                                "of type double and should not be enclosed in "
                                                "quotes",
                                                where))};
      }
      if (!numeric && !lit.quoted) {
        return Reply{400, ErrorBody("INVALID_QUERY_FILTER_OPERATOR",
                                    fmt::format("value of filter criterion for field '{}' must be "
                                                "of type string and should be enclosed in quotes",
                                                where))};
      }
      if (numeric && !ParseNumber(lit.text)) {
        return Reply{400, ErrorBody("MALFORMED_QUERY", "unexpected token: " + lit.text)};
      }
    }
  }
  std::vector<json> rows;
  for (const auto& [id, r] : records_[object]) {
    if (parsed->has_where) {
      json v;
      if (where == "Id") {
        v = id;
      } else if (auto it = r.fields.find(where); it != r.fields.end()) {
        v = it->second;
      }
      bool hit = false;
      for (const SoqlLiteral& lit : parsed->values) {
        if (v.is_null()) continue;
        if (wf != nullptr && wf->type == SfFieldType::kDouble) {
          hit |= v.is_number() && v.get<double>() == *ParseNumber(lit.text);
        } else {
          hit |= Lower(CellText(v)) == Lower(lit.text);
        }
      }
      if (!hit) continue;
    }
    json row = {{"attributes",
                 {{"type", object},
                  {"url", fmt::format("/services/data/v62.0/sobjects/{}/{}", object, id)}}}};
    for (const std::string& s : select) {
      if (s == "Id") {
        row["Id"] = id;
      } else {
        auto it = r.fields.find(s);
        row[s] = it == r.fields.end() ? json(nullptr) : it->second;
      }
    }
    rows.push_back(std::move(row));
  }
  size_t page = static_cast<size_t>(std::max(1, options_.query_page_size));
  json out = {{"totalSize", rows.size()}, {"done", rows.size() <= page}};
  json first = json::array();
  for (size_t i = 0; i < rows.size() && i < page; ++i) first.push_back(rows[i]);
  out["records"] = first;
  if (rows.size() > page) {
    std::string locator = fmt::format("01gFAKE{:08d}-{}", next_locator_++, page);
    query_pages_[locator] = std::vector<json>(rows.begin() + static_cast<long>(page), rows.end());
    out["nextRecordsUrl"] = "/services/data/v62.0/query/" + locator;
  }
  return Reply{200, Dump(out)};
}

FakeSalesforceServer::Reply FakeSalesforceServer::QueryMore(const std::string& locator) {
  auto it = query_pages_.find(locator);
  if (it == query_pages_.end()) {
    return Reply{400, ErrorBody("INVALID_QUERY_LOCATOR", "invalid query locator")};
  }
  std::vector<json> rest = std::move(it->second);
  query_pages_.erase(it);
  size_t page = static_cast<size_t>(std::max(1, options_.query_page_size));
  json out = {{"totalSize", rest.size()}, {"done", rest.size() <= page}};
  json records = json::array();
  for (size_t i = 0; i < rest.size() && i < page; ++i) records.push_back(rest[i]);
  out["records"] = records;
  if (rest.size() > page) {
    std::string next = fmt::format("01gFAKE{:08d}-{}", next_locator_++, page);
    query_pages_[next] = std::vector<json>(rest.begin() + static_cast<long>(page), rest.end());
    out["nextRecordsUrl"] = "/services/data/v62.0/query/" + next;
  }
  return Reply{200, Dump(out)};
}

// ------------------------------------------------------------------ bulk

FakeSalesforceServer::Reply FakeSalesforceServer::JobInfo(const Job& job) const {
  const FakeSalesforceJob& j = job.info;
  json out = {{"id", j.id},
              {"operation", j.operation},
              {"object", j.object},
              {"createdById", "005FAKE000000001AAA"},
              {"state", j.state},
              {"concurrencyMode", "Parallel"},
              {"contentType", "CSV"},
              {"apiVersion", 62.0},
              {"jobType", "V2Ingest"},
              {"lineEnding", job.line_ending},
              {"columnDelimiter", "COMMA"},
              {"contentUrl", fmt::format("services/data/v62.0/jobs/ingest/{}/batches", j.id)},
              {"numberRecordsProcessed", j.processed},
              {"numberRecordsFailed", j.failed},
              {"retries", 0},
              {"totalProcessingTime", 0}};
  if (!j.external_id_field.empty()) out["externalIdFieldName"] = j.external_id_field;
  if (!j.error_message.empty()) out["errorMessage"] = j.error_message;
  return Reply{200, Dump(out)};
}

FakeSalesforceServer::Reply FakeSalesforceServer::CreateJob(const std::string& body) {
  json doc = json::parse(body, nullptr, /*allow_exceptions=*/false);
  auto invalid = [](const std::string& message) {
    return Reply{400, ErrorBody("INVALIDJOB", "InvalidJob : " + message)};
  };
  if (!doc.is_object()) return invalid("the request body must be a JSON object");
  std::string object_in = doc.value("object", "");
  std::string object;
  const SfObjectDef* def = FindObject(object_in, &object);
  if (def == nullptr) return invalid("Unable to find object: " + object_in);
  std::string operation = doc.value("operation", "");
  if (operation != "upsert" && operation != "delete" && operation != "hardDelete" &&
      operation != "insert" && operation != "update") {
    return invalid("Invalid operation: " + operation);
  }
  if (operation != "upsert" && operation != "delete") {
    return invalid("this fake supports the upsert and delete operations only");
  }
  std::string ext_field;
  if (operation == "upsert") {
    std::string ext_in = doc.value("externalIdFieldName", "");
    const SfFieldDef* f = FindField(*def, ext_in, &ext_field);
    if (f == nullptr || !f->external_id) {
      return invalid(fmt::format(
          "Field name provided, {} does not match an External ID, Salesforce Id, or indexed "
          "field for {}",
          ext_in, object));
    }
  }
  if (doc.value("contentType", "CSV") != "CSV") return invalid("contentType must be CSV");
  std::string line_ending = doc.value("lineEnding", "LF");
  if (line_ending != "LF" && line_ending != "CRLF") return invalid("invalid lineEnding");
  if (doc.value("columnDelimiter", "COMMA") != "COMMA") {
    return invalid("this fake supports columnDelimiter COMMA only");
  }
  Job job;
  job.info.id = fmt::format("750FAKE{:08d}AAA", next_id_++);
  job.info.object = object;
  job.info.operation = operation;
  job.info.external_id_field = ext_field;
  job.info.state = "Open";
  job.line_ending = line_ending;
  std::string id = job.info.id;
  jobs_[id] = std::move(job);
  return JobInfo(jobs_[id]);
}

FakeSalesforceServer::Reply FakeSalesforceServer::UploadJob(const std::string& id,
                                                            const TestRequest& req) {
  auto it = jobs_.find(id);
  if (it == jobs_.end()) {
    return Reply{404, ErrorBody("NOT_FOUND", "The requested resource does not exist")};
  }
  Job& job = it->second;
  std::optional<std::string> type = req.Header("content-type");
  if (!type || type->rfind("text/csv", 0) != 0) {
    return Reply{400, ErrorBody("INVALIDJOB", "InvalidJob : Content-Type must be text/csv")};
  }
  if (job.info.state != "Open" || job.info.uploads > 0) {
    return Reply{409, ErrorBody("INVALIDJOBSTATE",
                                "Data can only be uploaded once, to a job in the Open state")};
  }
  if (req.body.size() > options_.max_upload_bytes) {
    return Reply{413, ErrorBody("REQUEST_TOO_LARGE", fmt::format("Upload exceeds the {} byte limit",
                                                                 options_.max_upload_bytes))};
  }
  job.csv = req.body;
  ++job.info.uploads;
  return Reply{201, ""};
}

FakeSalesforceServer::Reply FakeSalesforceServer::ChangeJobState(const std::string& id,
                                                                 const std::string& body) {
  auto it = jobs_.find(id);
  if (it == jobs_.end()) {
    return Reply{404, ErrorBody("NOT_FOUND", "The requested resource does not exist")};
  }
  Job& job = it->second;
  json doc = json::parse(body, nullptr, /*allow_exceptions=*/false);
  std::string state = doc.is_object() ? doc.value("state", "") : "";
  const std::string& now = job.info.state;
  if (state == "UploadComplete") {
    if (now != "Open") {
      return Reply{409, ErrorBody("INVALIDJOBSTATE", "Job is not in the Open state: " + now)};
    }
    if (job.info.uploads == 0) {
      job.info.state = "Failed";
      job.info.error_message = "InvalidBatch : No data was uploaded to the job";
    } else {
      job.info.state = "UploadComplete";
    }
    return JobInfo(job);
  }
  if (state == "Aborted") {
    if (now != "Open" && now != "UploadComplete" && now != "InProgress") {
      return Reply{409, ErrorBody("INVALIDJOBSTATE", "Job is already in a final state: " + now)};
    }
    job.info.state = "Aborted";
    if (job.successful.empty() && job.failed.empty()) {
      absl::StatusOr<std::vector<std::vector<CsvCell>>> rows =
          ParseCsv(job.csv, job.line_ending == "LF");
      if (rows.ok()) {
        for (size_t i = 1; i < rows->size(); ++i) {
          std::vector<std::string> cells;
          for (CsvCell& c : (*rows)[i]) cells.push_back(c.text);
          job.unprocessed.push_back(std::move(cells));
        }
        if (!rows->empty()) {
          for (CsvCell& c : (*rows)[0]) job.header.push_back(c.text);
        }
      }
    }
    return JobInfo(job);
  }
  return Reply{400, ErrorBody("INVALIDJOBSTATE", "Invalid state: " + state)};
}

void FakeSalesforceServer::ProcessJob(Job& job) {
  const std::string& object = job.info.object;
  const SfObjectDef& def = *FindObject(object);
  absl::StatusOr<std::vector<std::vector<CsvCell>>> parsed =
      ParseCsv(job.csv, job.line_ending == "LF");
  auto fail_all = [&](const std::string& message) {
    job.info.state = "Failed";
    job.info.error_message = message;
    if (parsed.ok()) {
      for (size_t i = 1; i < parsed->size(); ++i) {
        std::vector<std::string> cells;
        for (CsvCell& c : (*parsed)[i]) cells.push_back(c.text);
        job.unprocessed.push_back(std::move(cells));
      }
    }
  };
  if (!parsed.ok()) {
    job.info.state = "Failed";
    job.info.error_message = std::string(parsed.status().message());
    return;
  }
  if (parsed->empty()) {
    fail_all("InvalidBatch : The CSV has no header row");
    return;
  }
  for (CsvCell& c : (*parsed)[0]) job.header.push_back(c.text);
  // Columns: a field, "Relationship.ParentExternalId", or Id (delete).
  struct Column {
    std::string field;  // canonical
    const SfFieldDef* def = nullptr;
    bool relationship = false;
    std::string parent_field;
    bool is_ext = false;
    bool is_id = false;
  };
  std::vector<Column> columns;
  for (const std::string& h : job.header) {
    Column col;
    size_t dot = h.find('.');
    if (IEquals(h, "Id")) {
      col.is_id = true;
    } else if (dot != std::string::npos) {
      std::string rel = h.substr(0, dot);
      std::string pfield = h.substr(dot + 1);
      for (const auto& [n, f] : def.fields) {
        if (f.type == SfFieldType::kReference && IEquals(f.relationship_name, rel)) {
          col.field = n;
          col.def = &f;
        }
      }
      const SfObjectDef* parent = col.def ? FindObject(col.def->reference_to) : nullptr;
      const SfFieldDef* pf = parent ? FindField(*parent, pfield, &col.parent_field) : nullptr;
      if (pf == nullptr || !pf->external_id) {
        fail_all("InvalidBatch : Field name not found : " + h);
        return;
      }
      col.relationship = true;
    } else {
      col.def = FindField(def, h, &col.field);
      if (col.def == nullptr) {
        fail_all("InvalidBatch : Field name not found : " + h);
        return;
      }
      col.is_ext = col.field == job.info.external_id_field;
    }
    columns.push_back(std::move(col));
  }
  bool upsert = job.info.operation == "upsert";
  if (upsert &&
      std::none_of(columns.begin(), columns.end(), [](const Column& c) { return c.is_ext; })) {
    fail_all("InvalidBatch : The external ID field " + job.info.external_id_field +
             " is missing from the CSV header");
    return;
  }
  if (!upsert &&
      std::none_of(columns.begin(), columns.end(), [](const Column& c) { return c.is_id; })) {
    fail_all("InvalidBatch : Delete requires an Id column");
    return;
  }
  std::map<std::string, int> counts;
  if (upsert) {
    for (size_t r = 1; r < parsed->size(); ++r) {
      for (size_t c = 0; c < columns.size() && c < (*parsed)[r].size(); ++c) {
        if (columns[c].is_ext) ++counts[Lower((*parsed)[r][c].text)];
      }
    }
  }
  for (size_t r = 1; r < parsed->size(); ++r) {
    const std::vector<CsvCell>& row = (*parsed)[r];
    std::vector<std::string> cells;
    for (const CsvCell& c : row) cells.push_back(c.text);
    while (cells.size() < columns.size()) cells.push_back("");
    ++job.info.processed;
    auto fail_row = [&](const std::string& code, const std::string& message) {
      std::vector<std::string> out = {"", fmt::format("{}:{}:--", code, message)};
      out.insert(out.end(), cells.begin(), cells.end());
      job.failed.push_back(std::move(out));
      ++job.info.failed;
    };
    if (!upsert) {
      std::string id;
      for (size_t c = 0; c < columns.size(); ++c) {
        if (columns[c].is_id) id = cells[c];
      }
      bool found = false;
      for (auto& [o, recs] : records_) {
        auto it = recs.find(id);
        if (it == recs.end()) continue;
        found = true;
        if (TakeLock(o, it->second)) {
          fail_row("UNABLE_TO_LOCK_ROW", "unable to obtain exclusive access to this record");
        } else {
          recycle_bin_[o][id] = std::move(it->second);
          recs.erase(it);
          std::vector<std::string> out = {id, "false"};
          out.insert(out.end(), cells.begin(), cells.end());
          job.successful.push_back(std::move(out));
        }
        break;
      }
      if (!found) fail_row("ENTITY_IS_DELETED", "entity is deleted");
      continue;
    }
    json ext_value;
    std::vector<Write> writes;
    std::string conversion_error;
    for (size_t c = 0; c < columns.size(); ++c) {
      const Column& col = columns[c];
      const std::string& cell = cells[c];
      if (col.is_id || cell.empty()) continue;
      bool is_null = cell == "#N/A";
      json value = nullptr;
      if (!is_null) {
        if (col.relationship) {
          value = cell;
        } else {
          std::string err;
          std::optional<json> v = FromCell(*col.def, col.field, cell, err);
          if (!v) {
            conversion_error = err;
            break;
          }
          value = *v;
        }
      }
      if (col.is_ext) {
        ext_value = value;
      } else {
        writes.push_back({col.field, value, col.relationship, col.parent_field});
      }
    }
    if (!conversion_error.empty()) {
      fail_row("INVALID_TYPE_ON_FIELD_IN_RECORD", conversion_error);
      continue;
    }
    if (!ext_value.is_null() && counts[Lower(CellText(ext_value))] > 1) {
      fail_row("DUPLICATE_EXTERNAL_ID", "Duplicate external id specified: " + CellText(ext_value));
      continue;
    }
    ItemResult result =
        ApplyUpsert(object, job.info.external_id_field, ext_value, writes, /*dry=*/false);
    if (!result.errors.empty()) {
      const ItemError& e = result.errors.front();
      fail_row(e.code, e.message);
      continue;
    }
    std::vector<std::string> out = {result.id, result.created ? "true" : "false"};
    out.insert(out.end(), cells.begin(), cells.end());
    job.successful.push_back(std::move(out));
  }
  job.info.state = "JobComplete";
}

FakeSalesforceServer::Reply FakeSalesforceServer::GetJob(const std::string& id) {
  auto it = jobs_.find(id);
  if (it == jobs_.end()) {
    return Reply{404, ErrorBody("NOT_FOUND", "The requested resource does not exist")};
  }
  Job& job = it->second;
  if (job.info.state == "UploadComplete" || job.info.state == "InProgress") {
    ++job.info.polls;
    if (job.info.polls > options_.bulk_polls_in_progress) {
      ProcessJob(job);
    } else {
      job.info.state = "InProgress";
    }
  }
  return JobInfo(job);
}

FakeSalesforceServer::Reply FakeSalesforceServer::JobResults(const std::string& id,
                                                             const std::string& which) {
  auto it = jobs_.find(id);
  if (it == jobs_.end()) {
    return Reply{404, ErrorBody("NOT_FOUND", "The requested resource does not exist")};
  }
  Job& job = it->second;
  const std::string& state = job.info.state;
  if (state != "JobComplete" && state != "Failed" && state != "Aborted") {
    return Reply{409, ErrorBody("INVALIDJOBSTATE",
                                "Results are available once the job is complete: " + state)};
  }
  std::vector<std::string> header;
  const std::vector<std::vector<std::string>>* rows = nullptr;
  if (which == "successfulResults") {
    header = {"sf__Id", "sf__Created"};
    rows = &job.successful;
  } else if (which == "failedResults") {
    header = {"sf__Id", "sf__Error"};
    rows = &job.failed;
  } else {
    rows = &job.unprocessed;
  }
  header.insert(header.end(), job.header.begin(), job.header.end());
  std::vector<std::vector<std::string>> shuffled = *rows;
  if (options_.shuffle_bulk_results) std::shuffle(shuffled.begin(), shuffled.end(), rng_);
  std::string out = CsvLine(header);
  for (const auto& r : shuffled) out += CsvLine(r);
  return Reply{200, out, "text/csv"};
}

}  // namespace backflow
