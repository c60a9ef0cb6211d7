// Local file destination ("file"): writes each run's records to one JSONL or
// CSV file in a folder, for audits, hand-offs and tests of the engine.
//
// One file per run that sends at least one record:
// <path>/<mapping>-<run_id>.<jsonl|csv>. During the run records go to a
// hidden temporary file in the same folder (".<mapping>-<run_id>.<ext>.tmp");
// Finish() fsyncs it, renames it into place and fsyncs the folder, so a run
// that dies never leaves a visible partial file (the action is
// commit_on_finish). StartSession removes temporary files left behind by dead
// runs of the same mapping; a session destroyed without Finish() removes its
// own.
//
// JSONL line: {"operation":"upsert"|"delete","change":"added"|"updated"|
// "deleted","key":"<key>","id":"<dedup id>","fields":{...}}.
// CSV (RFC 4180, CRLF line ends): header operation,change,key,<field keys in
// layout order>; deletes fill only the identity columns.
//
// Errors: kFailedPrecondition when the folder cannot be created or written
// (CheckConnection, StartSession), kInvalidArgument for a mapping name that
// is not a plain file-name part, kUnavailable for I/O failures while writing
// (the batch is then not delivered). Sessions are used from one thread at a
// time.
#pragma once

#include "backflow/catalog/definitions.h"

namespace backflow {

DestinationDefinition FileDestinationDefinition();

}  // namespace backflow
