#include "backflow/state/checkpoint_prefetch.h"

#include <cstring>
#include <string>
#include <string_view>
#include <utility>

#include "backflow/storage/prefetch_stream.h"

namespace backflow {
namespace {

// An entry as a stream record: key, then the fingerprint's 16 bytes (in
// memory order: the record never leaves the process) and the identity.
constexpr size_t kFingerprintBytes = sizeof(Fingerprint);

class ScannerStream : public SortedStream {
 public:
  explicit ScannerStream(std::unique_ptr<CheckpointScanner> inner) : inner_(std::move(inner)) {}
  absl::StatusOr<bool> Next(std::string_view& key, std::string_view& value) override {
    CheckpointEntryView entry;
    absl::StatusOr<bool> more = inner_->NextView(entry);
    if (!more.ok() || !*more) return more;
    key = entry.key;
    value_.resize(kFingerprintBytes);
    std::memcpy(value_.data(), &entry.fingerprint, kFingerprintBytes);
    value_.append(entry.identity);
    value = value_;
    return true;
  }

 private:
  std::unique_ptr<CheckpointScanner> inner_;
  std::string value_;
};

class StreamScanner : public CheckpointScanner {
 public:
  explicit StreamScanner(std::unique_ptr<SortedStream> stream) : stream_(std::move(stream)) {}
  absl::StatusOr<bool> Next(CheckpointEntry& entry) override {
    CheckpointEntryView view;
    absl::StatusOr<bool> more = NextView(view);
    if (!more.ok() || !*more) return more;
    entry.key.assign(view.key);
    entry.fingerprint = view.fingerprint;
    entry.identity.assign(view.identity);
    return true;
  }
  absl::StatusOr<bool> NextView(CheckpointEntryView& entry) override {
    std::string_view key, value;
    absl::StatusOr<bool> more = stream_->Next(key, value);
    if (!more.ok() || !*more) return more;
    if (value.size() < kFingerprintBytes) {  // cannot happen: ScannerStream wrote it
      return absl::InternalError("a prefetched checkpoint entry lost its fingerprint");
    }
    entry.key = key;
    std::memcpy(&entry.fingerprint, value.data(), kFingerprintBytes);
    entry.identity = value.substr(kFingerprintBytes);
    return true;
  }

 private:
  std::unique_ptr<SortedStream> stream_;
};

}  // namespace

std::unique_ptr<CheckpointScanner> PrefetchCheckpointScanner(
    std::unique_ptr<CheckpointScanner> inner) {
  if (inner->StartReadAhead()) return inner;
  return std::make_unique<StreamScanner>(
      PrefetchSortedStream(std::make_unique<ScannerStream>(std::move(inner))));
}

}  // namespace backflow
