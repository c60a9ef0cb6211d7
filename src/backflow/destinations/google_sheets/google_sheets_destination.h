// Google Sheets destination ("google_sheets"): keeps one sheet (tab) of a
// spreadsheet equal to a model, one row per record, through the Sheets API
// v4 (see ../shared/reference/destinations.md §7).
//
// Auth: a service account's JSON key (setting service_account_key, the key
// file's content) signs a JWT bearer grant (delivery/jwt_bearer.h) for the
// scope https://www.googleapis.com/auth/spreadsheets; the access token is
// cached until shortly before expires_in and re-minted once on a 401. The
// spreadsheet must be shared with the key's client_email as an editor.
//
// Layout: row 1 is the header, one cell per mapped field, named by the
// field's key; every other row is one record. The record's key column is
// the field mapped from the model's unique identifier (the first one when
// several are). Columns are found by header name: missing names are added
// after the last header cell, and columns the mapping does not know are
// left alone (their cells are never written).
//
// Action upsert_rows, per batch:
//   1. values:batchGet of the header row and the key column
//      (UNFORMATTED_VALUE), giving key -> rows. Re-read every batch, so rows
//      moved by hand between batches are still found.
//   2. added/updated records whose key is in the sheet: values:batchUpdate
//      of exactly those rows (RAW; every row holding the key). Idempotent.
//   3. deleted records: one spreadsheets:batchUpdate of deleteDimension
//      requests, bottom-up (rows of absent keys: nothing to do).
//   4. added/updated records whose key is not in the sheet: values:append
//      (RAW, INSERT_ROWS) after the table.
// Steps 3 and 4 are not idempotent (a repeated append duplicates rows, a
// repeated delete removes the wrong row), so they are sent once: after a
// timeout, a transport error, a 5xx (the write may have happened) or a 429,
// the batch waits (exponential backoff on the clock) and starts again at
// step 1, where an appended key is found and becomes an update, and a
// deleted key is gone. Steps 1 and 2 are retried as they are. Every write
// request is atomic, and at most kSheetsMaxRequestBytes.
//
// Replies: 429 (per-minute quota) is retried with exponential backoff on
// the clock; 5xx and transport errors are retried; after max_retries the
// records fail with kResourceExhausted / kUnavailable and are re-sent by the
// next run. 401 after one token refresh stops the run (kUnauthenticated);
// 403 stops it (kPermissionDenied: share the sheet with client_email, or
// enable the API); 404 stops it (kFailedPrecondition: spreadsheet_id), as
// does a missing sheet, the spreadsheet's cell limit or grid limits. Other
// 400s are bisected to the records Google refuses (kInvalidArgument).
// Values are checked locally first: a cell over kSheetsMaxCellChars
// characters fails its record without sending it.
//
// Sessions are used from one thread at a time. The destination's token
// source and rate limiters are shared by its sessions and are thread-safe.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

#include "backflow/catalog/definitions.h"
#include "nlohmann/json.hpp"

namespace backflow {

DestinationDefinition GoogleSheetsDestinationDefinition();

// --- Exposed for tests and for the fake server. ---

inline constexpr char kSheetsScope[] = "https://www.googleapis.com/auth/spreadsheets";
// Google's per-cell limit.
inline constexpr size_t kSheetsMaxCellChars = 50'000;
// Google recommends payloads of at most 2 MB; requests are split to stay below.
inline constexpr size_t kSheetsMaxRequestBytes = 2 * 1024 * 1024;

// "A" for 0, "Z" for 25, "AA" for 26.
std::string SheetsColumnName(int index);

// A sheet name as an A1 range prefix: always single-quoted, quotes doubled
// ("Bob's" -> "'Bob''s'").
std::string SheetsQuotedName(std::string_view sheet);

// The spreadsheet id in a spreadsheet URL
// (https://docs.google.com/spreadsheets/d/<id>/edit#gid=0), or `text`
// unchanged when it is not such a URL.
std::string SheetsSpreadsheetId(std::string_view text);

// The text a cell is matched by when looking for a record's key: strings
// as-is, integral numbers without a fraction, TRUE/FALSE, "" for empty.
std::string SheetsKeyText(const nlohmann::json& cell);

}  // namespace backflow
