#include "backflow/pg/copy_binary.h"

#include <algorithm>
#include <cstring>

#include "backflow/pg/connection.h"
#include "fmt/format.h"

namespace backflow::pg {
namespace {

constexpr char kSignature[] = "PGCOPY\n\377\r\n";  // plus its terminating NUL: 11 bytes
constexpr size_t kSignatureSize = 11;
constexpr size_t kHeaderFixedSize = kSignatureSize + 4 + 4;
// PostgreSQL's largest field (MaxAllocSize, 1 GB - 1).
constexpr int32_t kMaxFieldSize = 0x3fffffff;

int16_t ReadInt16(const char* p) { return static_cast<int16_t>(FromBinaryInt(p, 2)); }
int32_t ReadInt32(const char* p) { return static_cast<int32_t>(FromBinaryInt(p, 4)); }

}  // namespace

void CopyBinaryTuples::Feed(std::string_view chunk) {
  if (partial_handed_out_) {
    partial_.clear();
    partial_handed_out_ = false;
  }
  chunk_ = chunk;
  pos_ = 0;
}

absl::Status CopyBinaryTuples::Corrupt(std::string what) {
  error_ = absl::DataLossError(
      fmt::format("the binary COPY stream from PostgreSQL is corrupt: {}", what));
  return error_;
}

absl::StatusOr<CopyBinaryTuples::Scan> CopyBinaryTuples::ScanHeader(std::string_view data) const {
  const size_t signature = std::min(data.size(), kSignatureSize);
  if (std::memcmp(data.data(), kSignature, signature) != 0) {
    return absl::DataLossError("it does not start with the signature PGCOPY\\n\\377\\r\\n\\0");
  }
  if (data.size() < kHeaderFixedSize) return Scan{false, kHeaderFixedSize};
  const uint32_t flags = static_cast<uint32_t>(ReadInt32(data.data() + kSignatureSize));
  if ((flags & (1u << 16)) != 0) {
    return absl::DataLossError("its header says OIDs are included, which this reader refuses");
  }
  if ((flags & 0xffff0000u) != 0) {
    return absl::DataLossError(
        fmt::format("its header sets critical flags this reader does not know ({:#x})", flags));
  }
  const int32_t extension = ReadInt32(data.data() + kSignatureSize + 4);
  if (extension < 0) {
    return absl::DataLossError(
        fmt::format("its header extension has a negative length ({})", extension));
  }
  const size_t size = kHeaderFixedSize + static_cast<size_t>(extension);
  return Scan{data.size() >= size, size};
}

absl::StatusOr<CopyBinaryTuples::Scan> CopyBinaryTuples::ScanTuple(
    std::string_view data, std::vector<CopyBinaryField>* fields) {
  if (data.size() < 2) return Scan{false, 2};
  const int16_t count = ReadInt16(data.data());
  if (count == -1) return Scan{true, 2, true};
  if (count != columns_) {
    return absl::DataLossError(
        fmt::format("a row of {} fields for a query of {} columns", count, columns_));
  }
  fields->resize(columns_);
  size_t pos = 2;
  for (int i = 0; i < columns_; ++i) {
    if (data.size() < pos + 4) return Scan{false, pos + 4};
    const int32_t length = ReadInt32(data.data() + pos);
    pos += 4;
    CopyBinaryField& field = (*fields)[i];
    if (length == -1) {
      field.null = true;
      field.bytes = {};
      continue;
    }
    if (length < 0 || length > kMaxFieldSize) {
      return absl::DataLossError(
          fmt::format("field {} of a row has an impossible length ({})", i + 1, length));
    }
    if (data.size() < pos + static_cast<size_t>(length)) return Scan{false, pos + length};
    field.null = false;
    field.bytes = data.substr(pos, length);
    pos += length;
  }
  return Scan{true, pos};
}

absl::StatusOr<CopyBinaryTuples::Scan> CopyBinaryTuples::ScanUnit(
    std::string_view data, std::vector<CopyBinaryField>* fields) {
  return header_ ? ScanTuple(data, fields) : ScanHeader(data);
}

absl::StatusOr<bool> CopyBinaryTuples::Next(std::vector<CopyBinaryField>& fields) {
  if (!error_.ok()) return error_;
  if (partial_handed_out_) {
    partial_.clear();
    partial_handed_out_ = false;
  }
  while (true) {
    if (trailer_) {
      if (pos_ < chunk_.size()) return Corrupt("data follows its end-of-data marker");
      return false;
    }
    const bool was_header = header_;
    Scan scan;
    bool from_partial = !partial_.empty();
    if (from_partial) {
      // Complete the split unit from the chunk, taking only what it needs.
      while (true) {
        absl::StatusOr<Scan> s = ScanUnit(partial_, &fields);
        if (!s.ok()) return Corrupt(std::string(s.status().message()));
        if (s->complete) {
          scan = *s;
          break;
        }
        const size_t available = chunk_.size() - pos_;
        if (available == 0) return false;
        const size_t take = std::min(s->size - partial_.size(), available);
        partial_.append(chunk_.data() + pos_, take);
        pos_ += take;
      }
    } else {
      std::string_view rest = chunk_.substr(pos_);
      if (rest.empty()) return false;
      absl::StatusOr<Scan> s = ScanUnit(rest, &fields);
      if (!s.ok()) return Corrupt(std::string(s.status().message()));
      if (!s->complete) {
        // An incomplete unit: keep it for the next chunk.
        partial_.assign(rest.data(), rest.size());
        pos_ = chunk_.size();
        return false;
      }
      scan = *s;
      pos_ += scan.size;
    }
    if (!was_header) {
      header_ = true;
      partial_.clear();
      continue;
    }
    if (scan.trailer) {
      trailer_ = true;
      partial_.clear();
      continue;
    }
    if (from_partial) partial_handed_out_ = true;
    return true;
  }
}

absl::Status CopyBinaryTuples::Finish() const {
  if (!error_.ok()) return error_;
  if (!partial_.empty() && !partial_handed_out_) {
    return absl::DataLossError("ended in the middle of a row");
  }
  if (!trailer_) return absl::DataLossError("ended without its end-of-data marker");
  return absl::OkStatus();
}

}  // namespace backflow::pg
