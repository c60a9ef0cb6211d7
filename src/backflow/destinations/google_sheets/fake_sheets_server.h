// FakeSheetsServer: a protocol-faithful fake of Google's OAuth 2.0 token
// endpoint (JWT bearer grant) and the Sheets API v4 values API, for tests.
//
// Built on HttpTestServer. Token endpoint (POST /token, form-encoded):
//   grant_type must be urn:ietf:params:oauth:grant-type:jwt-bearer; the
//   assertion's iss must be a registered service account whose public key
//   verifies the RS256 signature (and whose key id matches "kid" when the
//   header has one); aud must equal the audience option (default: the
//   token URL); scope must include the spreadsheets scope; exp must be in
//   the future and at most max_assertion_lifetime after iat. Failures are
//   400 {"error":"invalid_grant"|"invalid_scope"|...,"error_description":...}
//   with Google's wording. Success issues an opaque access token valid for
//   token_lifetime by the fake's clock: {"access_token","expires_in",
//   "token_type":"Bearer"}.
//
// API (under /v4/spreadsheets/{id}), for each request in order:
//   1. "Authorization: Bearer <token>" must carry an issued, unexpired,
//      unrevoked token, else 401 UNAUTHENTICATED;
//   2. the next scripted reply whose `match` is in the request target, if
//      any, is used: without `apply_first` it answers instead of the
//      request (nothing applied); with it the request is applied and then
//      the scripted reply (or a reset connection) replaces the real one;
//   3. an unknown spreadsheet is 404 NOT_FOUND; a spreadsheet not shared
//      with the token's service account is 403 PERMISSION_DENIED;
//   4. per service account, reads (GET) and writes (everything else) are
//      counted per clock minute; over read/write_requests_per_minute the
//      reply is 429 RESOURCE_EXHAUSTED (no Retry-After), like Google's;
//   5. a body over max_request_bytes (when set) is 400;
//   6. the request is executed atomically against the spreadsheet: any
//      error (400 INVALID_ARGUMENT with Google's messages: unparsable A1
//      range, missing valueInputOption, values outside the range, grid
//      limits, cell character limit, workbook cell limit, invalid value
//      types, unsupported requests) leaves it unchanged.
// Supported: GET spreadsheet (metadata), GET values/{range}, GET
// values:batchGet (majorDimension ROWS|COLUMNS, valueRenderOption
// UNFORMATTED_VALUE|FORMATTED_VALUE), PUT values/{range}, POST
// values/{range}:append (insertDataOption INSERT_ROWS|OVERWRITE; the table
// ends at the last non-empty row in the range's columns), POST
// values:batchUpdate, POST values/{range}:clear, POST values:batchClear,
// POST :batchUpdate with deleteDimension and appendDimension requests.
// Written values follow RAW input: strings, numbers and booleans are
// stored; null leaves the cell as it is; "" empties it.
//
// Thread-safety: every public method is thread-safe. Start() returns
// kUnavailable if the port cannot be bound; Stop() (also run by the
// destructor) joins the server threads.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "backflow/common/clock.h"
#include "backflow/delivery/jwt_bearer.h"
#include "backflow/testing/http_test_server.h"
#include "nlohmann/json.hpp"

namespace backflow {

struct FakeSheetsOptions {
  // The fake's time for token and assertion expiry and quota minutes; null:
  // the system clock. Must outlive the server.
  Clock* clock = nullptr;
  std::string token_path = "/token";
  // The aud the assertion must carry; empty: the token URL.
  std::string audience;
  std::string required_scope = "https://www.googleapis.com/auth/spreadsheets";
  std::chrono::seconds token_lifetime{3599};
  std::chrono::seconds max_assertion_lifetime{3600};
  // Google's documented limits (the cell count is unverified).
  int64_t max_cells = 10'000'000;
  size_t max_cell_chars = 50'000;
  // 0: no limit (Google only recommends 2 MB).
  size_t max_request_bytes = 0;
  // Per user (service account) per minute; 0: unlimited.
  int64_t read_requests_per_minute = 60;
  int64_t write_requests_per_minute = 60;
  // The grid of a new sheet.
  int64_t default_rows = 1000;
  int64_t default_columns = 26;
};

// One scripted reply.
struct FakeSheetsReply {
  // Applies to the next request whose target contains this ("" = any API
  // request; "/token" for the token endpoint).
  std::string match;
  int status = 503;
  std::string body;  // empty: a Google error envelope for `status`
  std::chrono::milliseconds delay{0};
  bool reset_connection = false;
  // Execute the request first, then answer with this reply (a write that
  // happened although the client saw a failure).
  bool apply_first = false;

  static FakeSheetsReply Error(int status, std::string match = "");
  // Applies the request, then drops the connection.
  static FakeSheetsReply CommitThenReset(std::string match);
  // Applies the request, then waits `delay` before answering 200.
  static FakeSheetsReply CommitThenDelay(std::string match, std::chrono::milliseconds delay);
};

struct SheetsRequestLog {
  std::string method;
  std::string target;  // as sent (percent-encoded)
  std::string body;
  std::string account;  // the authenticated service account, if any
  int status = 0;       // 0 for a reset connection
};

class FakeSheetsServer {
 public:
  explicit FakeSheetsServer(FakeSheetsOptions options = {});
  ~FakeSheetsServer();
  FakeSheetsServer(const FakeSheetsServer&) = delete;
  FakeSheetsServer& operator=(const FakeSheetsServer&) = delete;

  absl::Status Start();
  void Stop();
  // "http://127.0.0.1:<port>": the base_url to configure.
  std::string BaseUrl() const;
  // BaseUrl() + token_path: the token_url to configure.
  std::string TokenUrl() const;

  // --- Setup ---------------------------------------------------------------
  // Registers a service account; returns its JSON key file content (with a
  // freshly generated private key unless `private_key_pem` is given, whose
  // public half is then registered).
  std::string AddServiceAccount(const std::string& client_email,
                                const std::string& private_key_pem = "");
  void CreateSpreadsheet(const std::string& spreadsheet_id,
                         const std::string& first_sheet = "Sheet1");
  void AddSheet(const std::string& spreadsheet_id, const std::string& title,
                std::optional<int64_t> rows = std::nullopt,
                std::optional<int64_t> columns = std::nullopt);
  void Share(const std::string& spreadsheet_id, const std::string& client_email);
  void Unshare(const std::string& spreadsheet_id, const std::string& client_email);
  // Writes rows of values (RAW semantics) at a 0-based cell, growing the grid.
  void SetValues(const std::string& spreadsheet_id, const std::string& sheet, int64_t row,
                 int64_t column, const std::vector<std::vector<nlohmann::json>>& values);
  // Invalidates every issued access token (as if they expired early).
  void RevokeTokens();

  // --- Scripting -----------------------------------------------------------
  void EnqueueReply(FakeSheetsReply reply);

  // --- Inspection ----------------------------------------------------------
  // The sheet's values: trailing empty cells and rows left out; empty cells
  // inside as "".
  std::vector<std::vector<nlohmann::json>> Values(const std::string& spreadsheet_id,
                                                  const std::string& sheet) const;
  // Grid size (rows, columns).
  std::pair<int64_t, int64_t> GridSize(const std::string& spreadsheet_id,
                                       const std::string& sheet) const;
  std::vector<SheetsRequestLog> Requests() const;
  // Requests whose target contains `match` and that were answered `status`
  // (0: any status).
  int64_t CountRequests(const std::string& match, int status = 0) const;
  int64_t tokens_issued() const;
  void ClearRequests();

 private:
  struct Sheet {
    int64_t sheet_id = 0;
    std::string title;
    int64_t rows = 0;
    int64_t columns = 0;
    std::vector<std::vector<nlohmann::json>> cells;  // ragged; missing = empty
  };
  struct Spreadsheet {
    std::vector<Sheet> sheets;
    std::set<std::string> shared_with;
    int64_t next_sheet_id = 0;
  };
  struct Account {
    std::unique_ptr<Rs256Key> public_key;
    std::string key_id;
  };
  struct IssuedToken {
    std::string account;
    Clock::TimePoint expires;
  };
  friend class SheetOps;

  TestResponse Handle(const TestRequest& req);
  TestResponse HandleToken(const TestRequest& req);
  TestResponse HandleApi(const TestRequest& req, const std::string& account);
  Clock& clock() const;

  FakeSheetsOptions options_;
  HttpTestServer server_;

  mutable std::mutex mu_;
  std::map<std::string, Account> accounts_;
  std::map<std::string, Spreadsheet> spreadsheets_;
  std::map<std::string, IssuedToken> tokens_;
  std::deque<FakeSheetsReply> script_;
  // (account, "read"/"write", minute) -> requests.
  std::map<std::tuple<std::string, std::string, int64_t>, int64_t> quota_;
  std::vector<SheetsRequestLog> requests_;
  int64_t tokens_issued_ = 0;
};

}  // namespace backflow
