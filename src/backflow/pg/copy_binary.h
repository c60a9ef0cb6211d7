// Parsing of PostgreSQL's binary COPY format (`COPY ... TO STDOUT (FORMAT
// binary)`).
//
// The stream is a header (the 11-byte signature "PGCOPY\n\377\r\n\0", an
// int32 flags field whose bit 16 says OIDs are included, an int32 length
// of a header extension area and that many bytes), then tuples, then a
// trailer. A tuple is an int16 field count followed, per field, by an int32
// length (-1 for NULL) and that many bytes (the type's binary send format);
// the trailer is the int16 -1. Integers are in network byte order.
//
// libpq documents that PQgetCopyData returns one CopyData message per call,
// and PostgreSQL sends one tuple per message, but the header arrives with the
// first tuple and the trailer on its own. CopyBinaryTuples does not rely on
// any alignment: it reassembles the header and tuples from arbitrary chunks,
// copying only a tuple (or header) that is split between chunks.
//
// Errors are kDataLoss with what was wrong: a bad signature, OIDs in the
// stream, a tuple whose field count is not the query's, a negative length
// other than -1, a field larger than PostgreSQL's 1 GB limit, data after the
// trailer, and (from Finish()) a stream that ended before its trailer.
// Errors are sticky. Not thread-safe.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace backflow::pg {

// One field of a tuple: NULL, or a view of its bytes.
struct CopyBinaryField {
  bool null = true;
  std::string_view bytes;
};

class CopyBinaryTuples {
 public:
  // Tuples must have `columns` fields.
  explicit CopyBinaryTuples(int columns) : columns_(columns) {}

  // Makes `chunk` the data to read next. Call only after Next() returned
  // false (every complete tuple of the previous chunk was read; an incomplete
  // tail was copied). `chunk` must stay valid until Next() next returns false.
  void Feed(std::string_view chunk);

  // Sets `fields` (resized to the column count; views valid until the next
  // call to Next() or Feed()) to the next complete tuple and returns true.
  // Returns false when no complete tuple remains in the data fed so far (an
  // incomplete tail is kept for the next chunk) or the trailer was read.
  absl::StatusOr<bool> Next(std::vector<CopyBinaryField>& fields);

  // The data ended: OK only when the trailer was read and nothing followed.
  absl::Status Finish() const;

  // True once the trailer was read.
  bool at_trailer() const { return trailer_; }

 private:
  // Outcome of examining the bytes of one unit (header or tuple).
  struct Scan {
    bool complete = false;
    size_t size = 0;       // complete: the unit's size; else the least size it needs
    bool trailer = false;  // the unit is the trailer
  };
  absl::StatusOr<Scan> ScanHeader(std::string_view data) const;
  absl::StatusOr<Scan> ScanTuple(std::string_view data, std::vector<CopyBinaryField>* fields);
  absl::StatusOr<Scan> ScanUnit(std::string_view data, std::vector<CopyBinaryField>* fields);
  absl::Status Corrupt(std::string what);

  const int columns_;
  std::string_view chunk_;
  size_t pos_ = 0;
  std::string partial_;              // the start of a unit split between chunks
  bool partial_handed_out_ = false;  // partial_ holds a complete unit already returned
  bool header_ = false;              // the header was read
  bool trailer_ = false;             // the trailer was read
  absl::Status error_;
};

}  // namespace backflow::pg
