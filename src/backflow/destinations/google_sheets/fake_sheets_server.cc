#include "backflow/destinations/google_sheets/fake_sheets_server.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <optional>
#include <string_view>
#include <tuple>
#include <utility>

#include "absl/status/statusor.h"
#include "fmt/format.h"

namespace backflow {
namespace {

using json = nlohmann::json;
using Grid = std::vector<std::vector<json>>;

std::string Dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

std::string_view StatusName(int code) {
  switch (code) {
    case 400:
      return "INVALID_ARGUMENT";
    case 401:
      return "UNAUTHENTICATED";
    case 403:
      return "PERMISSION_DENIED";
    case 404:
      return "NOT_FOUND";
    case 409:
      return "ABORTED";
    case 429:
      return "RESOURCE_EXHAUSTED";
    case 500:
      return "INTERNAL";
    case 503:
      return "UNAVAILABLE";
    case 504:
      return "DEADLINE_EXCEEDED";
    default:
      return "UNKNOWN";
  }
}

TestResponse GoogleError(int code, const std::string& message) {
  json body = {{"error", {{"code", code}, {"message", message}, {"status", StatusName(code)}}}};
  return TestResponse::Json(code, Dump(body));
}

TestResponse OAuthError(const std::string& error, const std::string& description) {
  return TestResponse::Json(400, Dump(json{{"error", error}, {"error_description", description}}));
}

std::string PercentDecode(std::string_view s, bool plus_is_space) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '+' && plus_is_space) {
      out.push_back(' ');
    } else if (s[i] == '%' && i + 2 < s.size() &&
               std::isxdigit(static_cast<unsigned char>(s[i + 1])) &&
               std::isxdigit(static_cast<unsigned char>(s[i + 2]))) {
      out.push_back(static_cast<char>(std::stoi(std::string(s.substr(i + 1, 2)), nullptr, 16)));
      i += 2;
    } else {
      out.push_back(s[i]);
    }
  }
  return out;
}

// name -> values, in order (repeated names such as ranges= are kept).
std::vector<std::pair<std::string, std::string>> ParseQuery(std::string_view q) {
  std::vector<std::pair<std::string, std::string>> out;
  while (!q.empty()) {
    size_t amp = q.find('&');
    std::string_view pair = q.substr(0, amp);
    size_t eq = pair.find('=');
    if (!pair.empty()) {
      out.emplace_back(
          PercentDecode(pair.substr(0, eq), true),
          eq == std::string_view::npos ? "" : PercentDecode(pair.substr(eq + 1), true));
    }
    if (amp == std::string_view::npos) break;
    q.remove_prefix(amp + 1);
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

std::string ColumnName(int64_t index) {
  std::string out;
  for (int64_t n = index + 1; n > 0; n = (n - 1) / 26) {
    out.insert(out.begin(), static_cast<char>('A' + (n - 1) % 26));
  }
  return out;
}

std::string SheetRef(const std::string& title) {
  bool plain = !title.empty() && std::all_of(title.begin(), title.end(), [](unsigned char c) {
    return std::isalnum(c) || c == '_';
  });
  if (plain && !std::isdigit(static_cast<unsigned char>(title[0]))) return title;
  std::string out = "'";
  for (char c : title) {
    out.push_back(c);
    if (c == '\'') out.push_back('\'');
  }
  return out + "'";
}

// A parsed A1 range: 0-based, inclusive ends; open ends run to the grid's edge.
struct A1Range {
  std::string sheet;  // empty: the first sheet
  int64_t r0 = 0;
  int64_t c0 = 0;
  std::optional<int64_t> r1;
  std::optional<int64_t> c1;
};

// One side of "A1:B2": letters and/or digits.
struct CellRef {
  std::optional<int64_t> col;
  std::optional<int64_t> row;
};

std::optional<CellRef> ParseRef(std::string_view s) {
  CellRef ref;
  size_t i = 0;
  int64_t col = 0;
  while (i < s.size() && std::isalpha(static_cast<unsigned char>(s[i]))) {
    col = col * 26 + (std::toupper(static_cast<unsigned char>(s[i])) - 'A' + 1);
    if (++i > 3) return std::nullopt;
  }
  if (i > 0) ref.col = col - 1;
  size_t digits = i;
  int64_t row = 0;
  while (i < s.size() && std::isdigit(static_cast<unsigned char>(s[i]))) {
    row = row * 10 + (s[i] - '0');
    if (i - digits > 8) return std::nullopt;
    ++i;
  }
  if (i != s.size() || (i == 0)) return std::nullopt;
  if (i > digits) {
    if (row < 1) return std::nullopt;
    ref.row = row - 1;
  }
  return ref;
}

// Parses the part after '!' (or a whole range without a sheet).
bool ParseCells(std::string_view s, A1Range& out) {
  size_t colon = s.find(':');
  std::optional<CellRef> a = ParseRef(s.substr(0, colon));
  if (!a) return false;
  if (colon == std::string_view::npos) {
    if (!a->col || !a->row) return false;  // a single cell
    out.r0 = *a->row;
    out.c0 = *a->col;
    out.r1 = out.r0;
    out.c1 = out.c0;
    return true;
  }
  std::optional<CellRef> b = ParseRef(s.substr(colon + 1));
  if (!b) return false;
  if (a->col && a->row) {  // A1:C3, A2:C (rows open), A2:5 (columns open)
    if (!b->col && !b->row) return false;
    out.r0 = *a->row;
    out.c0 = *a->col;
    if (b->row) out.r1 = *b->row;
    if (b->col) out.c1 = *b->col;
  } else if (a->col && !a->row) {  // A:C
    if (!b->col || b->row) return false;
    out.c0 = *a->col;
    out.c1 = *b->col;
  } else {  // 1:3
    if (b->col || !b->row) return false;
    out.r0 = *a->row;
    out.r1 = *b->row;
  }
  if (out.r1 && *out.r1 < out.r0) std::swap(*out.r1, out.r0);
  if (out.c1 && *out.c1 < out.c0) std::swap(*out.c1, out.c0);
  return true;
}

std::optional<A1Range> ParseA1(std::string_view text) {
  A1Range out;
  if (text.empty()) return std::nullopt;
  if (text.front() == '\'') {
    size_t i = 1;
    std::string name;
    while (true) {
      if (i >= text.size()) return std::nullopt;
      if (text[i] == '\'') {
        if (i + 1 < text.size() && text[i + 1] == '\'') {
          name.push_back('\'');
          i += 2;
          continue;
        }
        ++i;
        break;
      }
      name.push_back(text[i++]);
    }
    if (name.empty()) return std::nullopt;
    out.sheet = name;
    if (i == text.size()) return out;  // the whole sheet
    if (text[i] != '!') return std::nullopt;
    return ParseCells(text.substr(i + 1), out) ? std::optional<A1Range>(out) : std::nullopt;
  }
  size_t bang = text.find('!');
  if (bang == std::string_view::npos) {
    if (ParseCells(text, out)) return out;  // cells of the first sheet
    out.sheet = std::string(text);          // a sheet name alone
    return out;
  }
  out.sheet = std::string(text.substr(0, bang));
  if (out.sheet.empty()) return std::nullopt;
  return ParseCells(text.substr(bang + 1), out) ? std::optional<A1Range>(out) : std::nullopt;
}

std::string RenderRange(const std::string& title, int64_t r0, int64_t c0, int64_t r1, int64_t c1) {
  return fmt::format("{}!{}{}:{}{}", SheetRef(title), ColumnName(c0), r0 + 1, ColumnName(c1),
                     r1 + 1);
}

bool IsEmpty(const json& v) {
  return v.is_null() || (v.is_string() && v.get_ref<const std::string&>().empty());
}

std::string Formatted(const json& v) {
  if (v.is_boolean()) return v.get<bool>() ? "TRUE" : "FALSE";
  if (v.is_number_float()) {
    double d = v.get<double>();
    if (d == std::floor(d) && std::fabs(d) < 1e15)
      return fmt::format("{}", static_cast<int64_t>(d));
    return fmt::format("{}", d);
  }
  if (v.is_number()) return v.dump();
  if (v.is_string()) return v.get<std::string>();
  return "";
}

// An error of a request: its HTTP status and Google's message.
struct ApiError {
  int code = 400;
  std::string message;
};

}  // namespace

FakeSheetsReply FakeSheetsReply::Error(int status, std::string match) {
  FakeSheetsReply r;
  r.match = std::move(match);
  r.status = status;
  return r;
}

FakeSheetsReply FakeSheetsReply::CommitThenReset(std::string match) {
  FakeSheetsReply r;
  r.match = std::move(match);
  r.apply_first = true;
  r.reset_connection = true;
  return r;
}

FakeSheetsReply FakeSheetsReply::CommitThenDelay(std::string match,
                                                 std::chrono::milliseconds delay) {
  FakeSheetsReply r;
  r.match = std::move(match);
  r.apply_first = true;
  r.status = 200;
  r.delay = delay;
  return r;
}

// The spreadsheet operations, on a copy that replaces the original only
// when the whole request succeeded.
class SheetOps {
 public:
  using Sheet = FakeSheetsServer::Sheet;
  using Spreadsheet = FakeSheetsServer::Spreadsheet;

  SheetOps(Spreadsheet& doc, const FakeSheetsOptions& options) : doc_(doc), options_(options) {}

  std::optional<ApiError> Resolve(const std::string& text, A1Range* range, Sheet** sheet) {
    std::optional<A1Range> parsed = ParseA1(text);
    if (!parsed) return ApiError{400, fmt::format("Unable to parse range: {}", text)};
    *range = *parsed;
    *sheet = nullptr;
    for (Sheet& s : doc_.sheets) {
      if (range->sheet.empty() || s.title == range->sheet) {
        *sheet = &s;
        break;
      }
    }
    if (*sheet == nullptr) return ApiError{400, fmt::format("Unable to parse range: {}", text)};
    return std::nullopt;
  }

  static json Get(const Sheet& s, int64_t r, int64_t c) {
    if (r < static_cast<int64_t>(s.cells.size()) && c < static_cast<int64_t>(s.cells[r].size())) {
      return s.cells[r][c];
    }
    return nullptr;
  }

  static void Set(Sheet& s, int64_t r, int64_t c, json v) {
    if (IsEmpty(v)) {
      if (r < static_cast<int64_t>(s.cells.size()) && c < static_cast<int64_t>(s.cells[r].size())) {
        s.cells[r][c] = nullptr;
      }
      return;
    }
    if (static_cast<int64_t>(s.cells.size()) <= r) s.cells.resize(r + 1);
    if (static_cast<int64_t>(s.cells[r].size()) <= c) s.cells[r].resize(c + 1);
    s.cells[r][c] = std::move(v);
  }

  // A ValueRange for reading.
  json Read(const std::string& text, const std::string& major, bool unformatted,
            std::optional<ApiError>* error) {
    A1Range range;
    Sheet* s = nullptr;
    if ((*error = Resolve(text, &range, &s))) return nullptr;
    int64_t r1 = std::min(range.r1.value_or(s->rows - 1), s->rows - 1);
    int64_t c1 = std::min(range.c1.value_or(s->columns - 1), s->columns - 1);
    json out = {{"range", RenderRange(s->title, range.r0, range.c0, std::max(r1, range.r0),
                                      std::max(c1, range.c0))},
                {"majorDimension", major}};
    bool columns = major == "COLUMNS";
    int64_t outer_n = columns ? c1 - range.c0 + 1 : r1 - range.r0 + 1;
    int64_t inner_n = columns ? r1 - range.r0 + 1 : c1 - range.c0 + 1;
    json values = json::array();
    for (int64_t o = 0; o < outer_n; ++o) {
      json line = json::array();
      for (int64_t i = 0; i < inner_n; ++i) {
        int64_t r = range.r0 + (columns ? i : o);
        int64_t c = range.c0 + (columns ? o : i);
        json v = Get(*s, r, c);
        line.push_back(IsEmpty(v) ? json("") : unformatted ? v : json(Formatted(v)));
      }
      while (!line.empty() && IsEmpty(line.back())) line.erase(line.size() - 1);
      values.push_back(std::move(line));
    }
    while (!values.empty() && values.back().empty()) values.erase(values.size() - 1);
    if (!values.empty()) out["values"] = std::move(values);
    return out;
  }

  // Checks a ValueRange body's values; fills rows (ROWS-major).
  std::optional<ApiError> Rows(const json& vr, Grid* rows) {
    rows->clear();
    auto v = vr.find("values");
    if (v == vr.end() || v->is_null()) return std::nullopt;
    if (!v->is_array()) return ApiError{400, "Invalid value at 'data.values'"};
    std::string major = vr.value("majorDimension", "ROWS");
    if (major != "ROWS" && major != "COLUMNS") {
      return ApiError{400, fmt::format("Invalid value at 'data.major_dimension' ({})", major)};
    }
    for (size_t i = 0; i < v->size(); ++i) {
      const json& line = (*v)[i];
      if (!line.is_array()) {
        return ApiError{400, fmt::format("Invalid value at 'data.values[{}]'", i)};
      }
      for (size_t j = 0; j < line.size(); ++j) {
        const json& cell = line[j];
        if (cell.is_object() || cell.is_array()) {
          return ApiError{
              400, fmt::format("Invalid values[{}][{}]: {} {}", i, j,
                               cell.is_object() ? "struct_value" : "list_value", Dump(cell))};
        }
        if (cell.is_string()) {
          size_t chars = 0;
          for (unsigned char ch : cell.get_ref<const std::string&>()) chars += (ch & 0xC0) != 0x80;
          if (chars > options_.max_cell_chars) {
            return ApiError{400, fmt::format("Your input contains more than the maximum of {} "
                                             "characters in a single cell.",
                                             options_.max_cell_chars)};
          }
        }
      }
    }
    if (major == "ROWS") {
      *rows = v->get<Grid>();
    } else {
      for (size_t c = 0; c < v->size(); ++c) {
        for (size_t r = 0; r < (*v)[c].size(); ++r) {
          if (rows->size() <= r) rows->resize(r + 1);
          if ((*rows)[r].size() <= c) (*rows)[r].resize(c + 1);
          (*rows)[r][c] = (*v)[c][r];
        }
      }
    }
    return std::nullopt;
  }

  // Writes `rows` at the range's top-left corner; returns an
  // UpdateValuesResponse.
  json Write(const std::string& text, const Grid& rows, std::optional<ApiError>* error) {
    A1Range range;
    Sheet* s = nullptr;
    if ((*error = Resolve(text, &range, &s))) return nullptr;
    return WriteAt(*s, range, text, range.r0, rows, error);
  }

  json WriteAt(Sheet& s, const A1Range& range, const std::string& text, int64_t start_row,
               const Grid& rows, std::optional<ApiError>* error) {
    int64_t width = 0;
    for (const auto& line : rows)
      width = std::max<int64_t>(width, static_cast<int64_t>(line.size()));
    int64_t height = static_cast<int64_t>(rows.size());
    json resp = {{"spreadsheetId", ""}};
    if (height == 0 || width == 0) {
      resp["updatedRange"] = RenderRange(s.title, start_row, range.c0, start_row, range.c0);
      return resp;
    }
    int64_t last_row = start_row + height - 1;
    int64_t last_col = range.c0 + width - 1;
    if (range.r1 && last_row > *range.r1) {
      *error = ApiError{400, fmt::format("Requested writing within range [{}], but tried writing "
                                         "to row [{}]",
                                         text, last_row + 1)};
      return nullptr;
    }
    if (range.c1 && last_col > *range.c1) {
      *error = ApiError{400, fmt::format("Requested writing within range [{}], but tried writing "
                                         "to column [{}]",
                                         text, ColumnName(last_col))};
      return nullptr;
    }
    if (last_row >= s.rows || last_col >= s.columns) {
      *error =
          ApiError{400, fmt::format("Range ({}) exceeds grid limits. Max rows: {}, max columns: {}",
                                    RenderRange(s.title, start_row, range.c0, last_row, last_col),
                                    s.rows, s.columns)};
      return nullptr;
    }
    int64_t cells = 0;
    for (int64_t i = 0; i < height; ++i) {
      for (size_t j = 0; j < rows[i].size(); ++j) {
        if (rows[i][j].is_null()) continue;  // null leaves the cell as it is
        Set(s, start_row + i, range.c0 + static_cast<int64_t>(j), rows[i][j]);
        ++cells;
      }
    }
    resp["updatedRange"] = RenderRange(s.title, start_row, range.c0, last_row, last_col);
    resp["updatedRows"] = height;
    resp["updatedColumns"] = width;
    resp["updatedCells"] = cells;
    return resp;
  }

  json Append(const std::string& text, const Grid& rows, bool insert_rows,
              std::optional<ApiError>* error) {
    A1Range range;
    Sheet* s = nullptr;
    if ((*error = Resolve(text, &range, &s))) return nullptr;
    int64_t c1 = std::min(range.c1.value_or(s->columns - 1), s->columns - 1);
    // The table: rows from the range's first row down to the last row with a
    // value in the range's columns.
    int64_t last = -1;
    for (int64_t r = range.r0; r < static_cast<int64_t>(s->cells.size()); ++r) {
      for (int64_t c = range.c0; c <= c1; ++c) {
        if (!IsEmpty(Get(*s, r, c))) {
          last = r;
          break;
        }
      }
    }
    int64_t start = last < 0 ? range.r0 : last + 1;
    int64_t height = static_cast<int64_t>(rows.size());
    if (insert_rows) {
      if (start < static_cast<int64_t>(s->cells.size())) {
        s->cells.insert(s->cells.begin() + start, height, std::vector<json>());
      }
      s->rows += height;
    } else if (start + height > s->rows) {
      s->rows = start + height;
    }
    A1Range target = range;
    target.r1.reset();
    target.c1 = range.c1;
    json updates = WriteAt(*s, target, text, start, rows, error);
    if (*error) return nullptr;
    json resp = {
        {"tableRange",
         last < 0 ? json(nullptr) : json(RenderRange(s->title, range.r0, range.c0, last, c1))},
        {"updates", updates}};
    if (resp["tableRange"].is_null()) resp.erase("tableRange");
    return resp;
  }

  json Clear(const std::string& text, std::optional<ApiError>* error) {
    A1Range range;
    Sheet* s = nullptr;
    if ((*error = Resolve(text, &range, &s))) return nullptr;
    int64_t r1 = std::min(range.r1.value_or(s->rows - 1), s->rows - 1);
    int64_t c1 = std::min(range.c1.value_or(s->columns - 1), s->columns - 1);
    for (int64_t r = range.r0; r <= r1; ++r) {
      for (int64_t c = range.c0; c <= c1; ++c) Set(*s, r, c, nullptr);
    }
    return RenderRange(s->title, range.r0, range.c0, r1, c1);
  }

  std::optional<ApiError> Structural(size_t index, const json& request) {
    auto invalid = [&](const std::string& kind, const std::string& why) {
      return ApiError{400, fmt::format("Invalid requests[{}].{}: {}", index, kind, why)};
    };
    if (!request.is_object() || request.size() != 1) {
      return ApiError{400, fmt::format("Invalid requests[{}]: exactly one kind of request", index)};
    }
    const std::string kind = request.begin().key();
    const json& body = request.begin().value();
    auto find_sheet = [&](const json& id) -> Sheet* {
      if (!id.is_number_integer()) return nullptr;
      for (Sheet& s : doc_.sheets) {
        if (s.sheet_id == id.get<int64_t>()) return &s;
      }
      return nullptr;
    };
    if (kind == "deleteDimension") {
      const json range = body.value("range", json::object());
      Sheet* s = find_sheet(range.value("sheetId", json(0)));
      if (s == nullptr) {
        return invalid(kind,
                       fmt::format("No grid with id: {}", Dump(range.value("sheetId", json(0)))));
      }
      std::string dim = range.value("dimension", "");
      int64_t start = range.value("startIndex", int64_t{0});
      int64_t end = range.value("endIndex", int64_t{-1});
      int64_t size = dim == "ROWS" ? s->rows : s->columns;
      if (dim != "ROWS" && dim != "COLUMNS")
        return invalid(kind, "dimension must be ROWS or COLUMNS");
      if (start < 0 || end <= start || end > size) {
        return invalid(
            kind, fmt::format("Invalid dimensionRange: [{}, {}) of {} {}", start, end, size, dim));
      }
      if (start == 0 && end == size) {
        return invalid(kind, fmt::format("You can't delete all the {} on the sheet.",
                                         dim == "ROWS" ? "rows" : "columns"));
      }
      if (dim == "ROWS") {
        int64_t have = static_cast<int64_t>(s->cells.size());
        if (start < have)
          s->cells.erase(s->cells.begin() + start, s->cells.begin() + std::min(end, have));
        s->rows -= end - start;
      } else {
        for (auto& line : s->cells) {
          int64_t have = static_cast<int64_t>(line.size());
          if (start < have) line.erase(line.begin() + start, line.begin() + std::min(end, have));
        }
        s->columns -= end - start;
      }
      return std::nullopt;
    }
    if (kind == "appendDimension") {
      Sheet* s = find_sheet(body.value("sheetId", json(0)));
      if (s == nullptr) {
        return invalid(kind,
                       fmt::format("No grid with id: {}", Dump(body.value("sheetId", json(0)))));
      }
      std::string dim = body.value("dimension", "");
      int64_t length = body.value("length", int64_t{0});
      if (length < 1) return invalid(kind, "length must be positive");
      if (dim == "ROWS") {
        s->rows += length;
      } else if (dim == "COLUMNS") {
        s->columns += length;
      } else {
        return invalid(kind, "dimension must be ROWS or COLUMNS");
      }
      return std::nullopt;
    }
    return ApiError{400, fmt::format("Invalid requests[{}]: {} is not supported by the fake "
                                     "(deleteDimension, appendDimension are)",
                                     index, kind)};
  }

  std::optional<ApiError> CheckCellLimit() const {
    int64_t cells = 0;
    for (const Sheet& s : doc_.sheets) cells += s.rows * s.columns;
    if (cells > options_.max_cells) {
      return ApiError{400, fmt::format("This action would increase the number of cells in the "
                                       "workbook above the limit of {} cells.",
                                       options_.max_cells)};
    }
    return std::nullopt;
  }

 private:
  Spreadsheet& doc_;
  const FakeSheetsOptions& options_;
};

FakeSheetsServer::FakeSheetsServer(FakeSheetsOptions options)
    : options_(std::move(options)),
      server_([this](const TestRequest& req) { return Handle(req); }) {}

FakeSheetsServer::~FakeSheetsServer() { Stop(); }

absl::Status FakeSheetsServer::Start() { return server_.Start(); }

void FakeSheetsServer::Stop() { server_.Stop(); }

std::string FakeSheetsServer::BaseUrl() const {
  return fmt::format("http://127.0.0.1:{}", server_.port());
}

std::string FakeSheetsServer::TokenUrl() const { return BaseUrl() + options_.token_path; }

Clock& FakeSheetsServer::clock() const {
  return options_.clock != nullptr ? *options_.clock : SystemClock();
}

std::string FakeSheetsServer::AddServiceAccount(const std::string& client_email,
                                                const std::string& private_key_pem) {
  std::string pem = private_key_pem;
  if (pem.empty()) {
    absl::StatusOr<RsaKeyPair> pair = GenerateRsaKeyPair();
    if (!pair.ok()) return "";
    pem = pair->private_key_pem;
  }
  absl::StatusOr<std::unique_ptr<Rs256Key>> priv = Rs256Key::FromPrivateKeyPem(pem);
  if (!priv.ok()) return "";
  absl::StatusOr<std::unique_ptr<Rs256Key>> pub =
      Rs256Key::FromPublicKeyPem((*priv)->PublicKeyPem());
  if (!pub.ok()) return "";
  std::lock_guard<std::mutex> lock(mu_);
  std::string key_id = fmt::format("{:040x}", accounts_.size() + 0x5eed);
  accounts_[client_email] = Account{*std::move(pub), key_id};
  json key = {{"type", "service_account"},
              {"project_id", "backflow-test"},
              {"private_key_id", key_id},
              {"private_key", pem},
              {"client_email", client_email},
              {"client_id", "100000000000000000001"},
              {"auth_uri", "https://accounts.google.com/o/oauth2/auth"},
              {"token_uri", BaseUrl() + options_.token_path}};
  return Dump(key);
}

void FakeSheetsServer::CreateSpreadsheet(const std::string& spreadsheet_id,
                                         const std::string& first_sheet) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    spreadsheets_[spreadsheet_id] = Spreadsheet{};
  }
  AddSheet(spreadsheet_id, first_sheet);
}

void FakeSheetsServer::AddSheet(const std::string& spreadsheet_id, const std::string& title,
                                std::optional<int64_t> rows, std::optional<int64_t> columns) {
  std::lock_guard<std::mutex> lock(mu_);
  Spreadsheet& doc = spreadsheets_[spreadsheet_id];
  Sheet s;
  s.sheet_id = doc.next_sheet_id == 0 ? 0 : 1'000'000 + doc.next_sheet_id;
  ++doc.next_sheet_id;
  s.title = title;
  s.rows = rows.value_or(options_.default_rows);
  s.columns = columns.value_or(options_.default_columns);
  doc.sheets.push_back(std::move(s));
}

void FakeSheetsServer::Share(const std::string& spreadsheet_id, const std::string& client_email) {
  std::lock_guard<std::mutex> lock(mu_);
  spreadsheets_[spreadsheet_id].shared_with.insert(client_email);
}

void FakeSheetsServer::Unshare(const std::string& spreadsheet_id, const std::string& client_email) {
  std::lock_guard<std::mutex> lock(mu_);
  spreadsheets_[spreadsheet_id].shared_with.erase(client_email);
}

void FakeSheetsServer::SetValues(const std::string& spreadsheet_id, const std::string& sheet,
                                 int64_t row, int64_t column, const Grid& values) {
  std::lock_guard<std::mutex> lock(mu_);
  for (Sheet& s : spreadsheets_[spreadsheet_id].sheets) {
    if (s.title != sheet) continue;
    for (size_t i = 0; i < values.size(); ++i) {
      for (size_t j = 0; j < values[i].size(); ++j) {
        SheetOps::Set(s, row + static_cast<int64_t>(i), column + static_cast<int64_t>(j),
                      values[i][j]);
      }
    }
    s.rows = std::max<int64_t>(s.rows, row + static_cast<int64_t>(values.size()));
  }
}

void FakeSheetsServer::RevokeTokens() {
  std::lock_guard<std::mutex> lock(mu_);
  tokens_.clear();
}

void FakeSheetsServer::EnqueueReply(FakeSheetsReply reply) {
  std::lock_guard<std::mutex> lock(mu_);
  script_.push_back(std::move(reply));
}

Grid FakeSheetsServer::Values(const std::string& spreadsheet_id, const std::string& sheet) const {
  std::lock_guard<std::mutex> lock(mu_);
  Grid out;
  auto doc = spreadsheets_.find(spreadsheet_id);
  if (doc == spreadsheets_.end()) return out;
  for (const Sheet& s : doc->second.sheets) {
    if (s.title != sheet) continue;
    for (const auto& line : s.cells) {
      std::vector<json> row;
      for (const json& v : line) row.push_back(IsEmpty(v) ? json("") : v);
      while (!row.empty() && IsEmpty(row.back())) row.pop_back();
      out.push_back(std::move(row));
    }
  }
  while (!out.empty() && out.back().empty()) out.pop_back();
  return out;
}

std::pair<int64_t, int64_t> FakeSheetsServer::GridSize(const std::string& spreadsheet_id,
                                                       const std::string& sheet) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto doc = spreadsheets_.find(spreadsheet_id);
  if (doc == spreadsheets_.end()) return {0, 0};
  for (const Sheet& s : doc->second.sheets) {
    if (s.title == sheet) return {s.rows, s.columns};
  }
  return {0, 0};
}

std::vector<SheetsRequestLog> FakeSheetsServer::Requests() const {
  std::lock_guard<std::mutex> lock(mu_);
  return requests_;
}

int64_t FakeSheetsServer::CountRequests(const std::string& match, int status) const {
  std::lock_guard<std::mutex> lock(mu_);
  return std::count_if(requests_.begin(), requests_.end(), [&](const SheetsRequestLog& r) {
    return r.target.find(match) != std::string::npos && (status == 0 || r.status == status);
  });
}

int64_t FakeSheetsServer::tokens_issued() const {
  std::lock_guard<std::mutex> lock(mu_);
  return tokens_issued_;
}

void FakeSheetsServer::ClearRequests() {
  std::lock_guard<std::mutex> lock(mu_);
  requests_.clear();
}

TestResponse FakeSheetsServer::Handle(const TestRequest& req) {
  std::lock_guard<std::mutex> lock(mu_);
  SheetsRequestLog log{req.method, req.target, req.body, "", 0};
  TestResponse resp;
  std::string path = req.target.substr(0, req.target.find('?'));
  if (path == options_.token_path) {
    // Scripted failures of the token endpoint.
    auto it = std::find_if(script_.begin(), script_.end(), [&](const FakeSheetsReply& r) {
      return !r.match.empty() && req.target.find(r.match) != std::string::npos;
    });
    if (it != script_.end() && !it->apply_first) {
      FakeSheetsReply r = *it;
      script_.erase(it);
      if (r.reset_connection) {
        resp = TestResponse::Reset();
      } else {
        resp = TestResponse::Json(r.status, r.body.empty()
                                                ? Dump(json{{"error", "internal_failure"},
                                                            {"error_description", "Backend Error"}})
                                                : r.body);
      }
      resp.delay = r.delay;
    } else {
      resp = HandleToken(req);
    }
  } else {
    std::string account;
    std::optional<std::string> auth = req.Header("authorization");
    auto token =
        auth && auth->rfind("Bearer ", 0) == 0 ? tokens_.find(auth->substr(7)) : tokens_.end();
    if (token == tokens_.end() || clock().Now() >= token->second.expires) {
      resp = GoogleError(401,
                         "Request had invalid authentication credentials. Expected OAuth 2 access "
                         "token, login cookie or other valid authentication credential. See "
                         "https://developers.google.com/identity/sign-in/web/devconsole-project.");
    } else {
      account = token->second.account;
      log.account = account;
      auto it = std::find_if(script_.begin(), script_.end(), [&](const FakeSheetsReply& r) {
        return r.match != options_.token_path && req.target.find(r.match) != std::string::npos;
      });
      std::optional<FakeSheetsReply> scripted;
      if (it != script_.end()) {
        scripted = *it;
        script_.erase(it);
      }
      if (scripted && !scripted->apply_first) {
        resp =
            scripted->body.empty()
                ? GoogleError(scripted->status, fmt::format("Scripted HTTP {}", scripted->status))
                : TestResponse::Json(scripted->status, scripted->body);
        if (scripted->reset_connection) resp = TestResponse::Reset();
      } else {
        resp = HandleApi(req, account);
        if (scripted) {
          if (scripted->reset_connection) {
            resp = TestResponse::Reset();
          } else if (!(scripted->status >= 200 && scripted->status < 300 &&
                       scripted->body.empty())) {
            resp = scripted->body.empty()
                       ? GoogleError(scripted->status,
                                     fmt::format("Scripted HTTP {}", scripted->status))
                       : TestResponse::Json(scripted->status, scripted->body);
          }
        }
      }
      if (scripted) resp.delay = scripted->delay;
    }
  }
  log.status = resp.reset_connection ? 0 : resp.status;
  requests_.push_back(std::move(log));
  return resp;
}

TestResponse FakeSheetsServer::HandleToken(const TestRequest& req) {
  if (req.method != "POST") return OAuthError("invalid_request", "Method not allowed");
  std::optional<std::string> type = req.Header("content-type");
  if (!type || type->rfind("application/x-www-form-urlencoded", 0) != 0) {
    return OAuthError("invalid_request", "Bad Request");
  }
  auto form = ParseQuery(req.body);
  std::string grant = QueryValue(form, "grant_type");
  if (grant != kJwtBearerGrantType) {
    return OAuthError("unsupported_grant_type", "Invalid grant_type: " + grant);
  }
  absl::StatusOr<DecodedJwt> decoded = DecodeJwt(QueryValue(form, "assertion"));
  if (!decoded.ok()) return OAuthError("invalid_grant", "Invalid JWT: malformed");
  std::string iss = decoded->claims.value("iss", "");
  auto account = accounts_.find(iss);
  if (account == accounts_.end()) {
    return OAuthError("invalid_grant", "Invalid grant: account not found");
  }
  if (decoded->header.contains("kid") && decoded->header["kid"] != account->second.key_id) {
    return OAuthError("invalid_grant", "Invalid JWT Signature.");
  }
  if (!VerifyJwtRs256(QueryValue(form, "assertion"), *account->second.public_key).ok()) {
    return OAuthError("invalid_grant", "Invalid JWT Signature.");
  }
  const json& c = decoded->claims;
  std::string audience = options_.audience.empty() ? TokenUrl() : options_.audience;
  if (c.value("aud", "") != audience) {
    return OAuthError("invalid_grant",
                      "Invalid JWT: Failed audience check. The right audience is " + audience);
  }
  int64_t now =
      std::chrono::duration_cast<std::chrono::seconds>(clock().Now().time_since_epoch()).count();
  if (!c.contains("iat") || !c["iat"].is_number_integer() || !c.contains("exp") ||
      !c["exp"].is_number_integer() || c["exp"].get<int64_t>() <= now ||
      c["exp"].get<int64_t>() - c["iat"].get<int64_t>() > options_.max_assertion_lifetime.count() ||
      c["iat"].get<int64_t>() > now + 300) {
    return OAuthError("invalid_grant",
                      "Invalid JWT: Token must be a short-lived token (60 minutes) and in a "
                      "reasonable timeframe. Check your iat and exp values in the JWT claim.");
  }
  std::string scope = c.value("scope", "");
  bool has_scope = false;
  for (size_t pos = 0; pos <= scope.size();) {
    size_t space = scope.find(' ', pos);
    if (space == std::string::npos) space = scope.size();
    has_scope |= scope.substr(pos, space - pos) == options_.required_scope;
    pos = space + 1;
  }
  if (!has_scope) {
    return OAuthError("invalid_scope",
                      "Invalid OAuth scope or ID token audience provided: " + scope);
  }
  ++tokens_issued_;
  std::string token = fmt::format("ya29.fake-{}-{}", tokens_issued_, iss.size());
  tokens_[token] = IssuedToken{iss, clock().Now() + options_.token_lifetime};
  return TestResponse::Json(200, Dump(json{{"access_token", token},
                                           {"expires_in", options_.token_lifetime.count()},
                                           {"token_type", "Bearer"}}));
}

TestResponse FakeSheetsServer::HandleApi(const TestRequest& req, const std::string& account) {
  std::string_view target = req.target;
  size_t q = target.find('?');
  std::string_view path = target.substr(0, q);
  auto query = ParseQuery(q == std::string_view::npos ? "" : target.substr(q + 1));
  constexpr std::string_view kPrefix = "/v4/spreadsheets/";
  if (!path.starts_with(kPrefix)) return GoogleError(404, "Not Found");
  path.remove_prefix(kPrefix.size());
  size_t id_end = path.find_first_of("/:");
  std::string id = PercentDecode(path.substr(0, id_end), false);
  std::string_view rest = id_end == std::string_view::npos ? "" : path.substr(id_end);

  auto doc_it = spreadsheets_.find(id);
  if (doc_it == spreadsheets_.end()) return GoogleError(404, "Requested entity was not found.");
  if (!doc_it->second.shared_with.contains(account)) {
    return GoogleError(403, "The caller does not have permission");
  }
  const bool is_read = req.method == "GET";
  if (int64_t limit =
          is_read ? options_.read_requests_per_minute : options_.write_requests_per_minute;
      limit > 0) {
    int64_t minute =
        std::chrono::duration_cast<std::chrono::minutes>(clock().Now().time_since_epoch()).count();
    int64_t& used = quota_[{account, is_read ? "read" : "write", minute}];
    if (used >= limit) {
      const char* metric = is_read ? "Read requests" : "Write requests";
      return GoogleError(
          429, fmt::format("Quota exceeded for quota metric '{0}' and limit '{0} per minute per "
                           "user' of service 'sheets.googleapis.com' for consumer "
                           "'project_number:100000000001'.",
                           metric));
    }
    ++used;
  }
  if (options_.max_request_bytes > 0 && req.body.size() > options_.max_request_bytes) {
    return GoogleError(400, fmt::format("Request payload size exceeds the limit: {} bytes.",
                                        options_.max_request_bytes));
  }
  json body;
  if (!is_read) {
    body = req.body.empty() ? json::object() : json::parse(req.body, nullptr, false);
    if (!body.is_object()) {
      return GoogleError(400, "Invalid JSON payload received. Unexpected token.");
    }
  }

  Spreadsheet copy = doc_it->second;
  SheetOps ops(copy, options_);
  std::optional<ApiError> error;
  json reply;
  auto require_input_option = [&](const json* holder) -> bool {
    std::string option = QueryValue(query, "valueInputOption");
    if (holder != nullptr && holder->contains("valueInputOption") &&
        (*holder)["valueInputOption"].is_string()) {
      option = (*holder)["valueInputOption"];
    }
    if (option.empty()) {
      error = ApiError{400, "'valueInputOption' is required but not specified"};
      return false;
    }
    if (option != "RAW" && option != "USER_ENTERED") {
      error = ApiError{400, fmt::format("Invalid value at 'value_input_option' ({})", option)};
      return false;
    }
    return true;
  };
  const std::string major =
      QueryValue(query, "majorDimension").empty() ? "ROWS" : QueryValue(query, "majorDimension");
  const bool unformatted = QueryValue(query, "valueRenderOption") == "UNFORMATTED_VALUE";

  if (rest.empty() && req.method == "GET") {
    json sheets = json::array();
    for (size_t i = 0; i < copy.sheets.size(); ++i) {
      const Sheet& s = copy.sheets[i];
      sheets.push_back(
          {{"properties",
            {{"sheetId", s.sheet_id},
             {"title", s.title},
             {"index", i},
             {"sheetType", "GRID"},
             {"gridProperties", {{"rowCount", s.rows}, {"columnCount", s.columns}}}}}});
    }
    reply = {{"spreadsheetId", id}, {"properties", {{"title", id}}}, {"sheets", sheets}};
  } else if (rest == ":batchUpdate" && req.method == "POST") {
    const json requests = body.value("requests", json::array());
    if (!requests.is_array() || requests.empty()) {
      error = ApiError{400, "Must specify at least one request."};
    } else {
      json replies = json::array();
      for (size_t i = 0; i < requests.size() && !error; ++i) {
        error = ops.Structural(i, requests[i]);
        replies.push_back(json::object());
      }
      reply = {{"spreadsheetId", id}, {"replies", replies}};
    }
  } else if (rest == "/values:batchGet" && req.method == "GET") {
    json ranges = json::array();
    for (const auto& [k, v] : query) {
      if (k != "ranges") continue;
      ranges.push_back(ops.Read(v, major, unformatted, &error));
      if (error) break;
    }
    reply = {{"spreadsheetId", id}, {"valueRanges", ranges}};
  } else if (rest == "/values:batchUpdate" && req.method == "POST") {
    if (require_input_option(&body)) {
      const json data = body.value("data", json::array());
      json responses = json::array();
      int64_t total_cells = 0;
      int64_t total_rows = 0;
      for (size_t i = 0; i < data.size() && !error; ++i) {
        Grid rows;
        if ((error = ops.Rows(data[i], &rows))) break;
        json r = ops.Write(data[i].value("range", ""), rows, &error);
        if (error) break;
        r["spreadsheetId"] = id;
        total_cells += r.value("updatedCells", int64_t{0});
        total_rows += r.value("updatedRows", int64_t{0});
        responses.push_back(std::move(r));
      }
      reply = {{"spreadsheetId", id},
               {"totalUpdatedRows", total_rows},
               {"totalUpdatedCells", total_cells},
               {"responses", responses}};
    }
  } else if (rest == "/values:batchClear" && req.method == "POST") {
    json cleared = json::array();
    for (const json& r : body.value("ranges", json::array())) {
      cleared.push_back(ops.Clear(r.is_string() ? r.get<std::string>() : "", &error));
      if (error) break;
    }
    reply = {{"spreadsheetId", id}, {"clearedRanges", cleared}};
  } else if (rest.starts_with("/values/")) {
    std::string_view raw = rest.substr(8);
    std::string verb;
    for (const char* v : {":append", ":clear"}) {
      if (raw.ends_with(v)) {
        verb = v;
        raw.remove_suffix(verb.size());
      }
    }
    std::string range = PercentDecode(raw, false);
    if (verb.empty() && req.method == "GET") {
      reply = ops.Read(range, major, unformatted, &error);
    } else if (verb.empty() && req.method == "PUT") {
      if (require_input_option(nullptr)) {
        std::optional<A1Range> url_range = ParseA1(range);
        std::optional<A1Range> body_range =
            body.contains("range") ? ParseA1(body.value("range", "")) : url_range;
        if (!url_range || !body_range || body_range->sheet != url_range->sheet ||
            body_range->r0 != url_range->r0 || body_range->c0 != url_range->c0 ||
            body_range->r1 != url_range->r1 || body_range->c1 != url_range->c1) {
          error = ApiError{400, fmt::format("Requested entity range [{}] must match the URL "
                                            "range [{}]",
                                            body.value("range", ""), range)};
        } else {
          Grid rows;
          if (!(error = ops.Rows(body, &rows))) reply = ops.Write(range, rows, &error);
          if (!error) reply["spreadsheetId"] = id;
        }
      }
    } else if (verb == ":append" && req.method == "POST") {
      if (require_input_option(nullptr)) {
        std::string insert = QueryValue(query, "insertDataOption");
        Grid rows;
        if (!(error = ops.Rows(body, &rows))) {
          reply = ops.Append(range, rows, insert == "INSERT_ROWS", &error);
        }
        if (!error) {
          reply["spreadsheetId"] = id;
          reply["updates"]["spreadsheetId"] = id;
        }
      }
    } else if (verb == ":clear" && req.method == "POST") {
      reply = {{"spreadsheetId", id}, {"clearedRange", ops.Clear(range, &error)}};
    } else {
      return GoogleError(404, "Not Found");
    }
  } else {
    return GoogleError(404, "Not Found");
  }
  if (!error && !is_read) error = ops.CheckCellLimit();
  if (error) return GoogleError(error->code, error->message);
  if (!is_read) doc_it->second = std::move(copy);
  return TestResponse::Json(200, Dump(reply));
}

}  // namespace backflow
