#include "backflow/destinations/file/file_destination.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "backflow/common/json_writer.h"
#include "backflow/destinations/destination.h"
#include "fmt/format.h"

namespace backflow {
namespace {

namespace fs = std::filesystem;

enum class Format { kJsonl, kCsv };

const char* Extension(Format f) { return f == Format::kCsv ? "csv" : "jsonl"; }

std::string ErrnoText(int err) { return std::strerror(err); }

absl::Status WriteAll(int fd, std::string_view data) {
  while (!data.empty()) {
    ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return absl::UnavailableError(ErrnoText(errno));
    }
    data.remove_prefix(static_cast<size_t>(n));
  }
  return absl::OkStatus();
}

absl::Status FsyncPath(const fs::path& path, int flags) {
  int fd = ::open(path.c_str(), flags | O_CLOEXEC);
  if (fd < 0)
    return absl::UnavailableError(fmt::format("open {}: {}", path.string(), ErrnoText(errno)));
  int rc = ::fsync(fd);
  int err = errno;
  ::close(fd);
  if (rc != 0) {
    return absl::UnavailableError(fmt::format("fsync {}: {}", path.string(), ErrnoText(err)));
  }
  return absl::OkStatus();
}

// Appends `field` to `out` quoted per RFC 4180 when it needs to be.
void AppendCsvField(std::string& out, std::string_view field) {
  if (field.find_first_of(",\"\r\n") == std::string_view::npos) {
    out.append(field);
    return;
  }
  out.push_back('"');
  for (char c : field) {
    if (c == '"') out.push_back('"');
    out.push_back(c);
  }
  out.push_back('"');
}

absl::Status EnsureFolder(const fs::path& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) {
    return absl::FailedPreconditionError(fmt::format(
        "cannot create folder {}: {}; check path and permissions", dir.string(), ec.message()));
  }
  if (!fs::is_directory(dir, ec)) {
    return absl::FailedPreconditionError(
        fmt::format("{} exists but is not a folder; check path", dir.string()));
  }
  return absl::OkStatus();
}

bool IsRunIdText(std::string_view s) {
  if (s.starts_with("-")) s.remove_prefix(1);
  if (s.empty()) return false;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
  }
  return true;
}

class FileSession final : public ActionSession {
 public:
  FileSession(fs::path dir, Format format, SessionOptions options)
      : dir_(std::move(dir)), format_(format), options_(std::move(options)) {
    std::string base =
        fmt::format("{}-{}.{}", options_.mapping, options_.run_id, Extension(format_));
    final_path_ = dir_ / base;
    temp_path_ = dir_ / ("." + base + ".tmp");
    columns_ = options_.layout.fields;
    for (const std::string& id : options_.layout.identity) {
      if (std::find(columns_.begin(), columns_.end(), id) == columns_.end()) columns_.push_back(id);
    }
    for (const std::string& id : options_.layout.identity) {
      identity_columns_.push_back(
          static_cast<size_t>(std::find(columns_.begin(), columns_.end(), id) - columns_.begin()));
    }
  }

  ~FileSession() override {
    if (fd_ >= 0) {
      ::close(fd_);
      ::unlink(temp_path_.c_str());
    }
  }

  absl::StatusOr<std::vector<absl::Status>> SendBatch(
      std::span<const OutgoingRecord> batch) override {
    if (broken_) {
      return absl::FailedPreconditionError(fmt::format(
          "an earlier write to {} failed; this run's file is abandoned", temp_path_.string()));
    }
    if (finished_) return absl::FailedPreconditionError("session already finished");
    if (batch.empty()) return std::vector<absl::Status>();
    std::string out;
    if (fd_ < 0) {
      fd_ = ::open(temp_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
      if (fd_ < 0) {
        return absl::UnavailableError(
            fmt::format("cannot create {}: {}", temp_path_.string(), ErrnoText(errno)));
      }
      if (format_ == Format::kCsv) AppendCsvHeader(out);
    }
    for (const OutgoingRecord& r : batch) {
      if (format_ == Format::kCsv) {
        AppendCsvRow(out, r);
      } else {
        AppendJsonLine(out, r);
      }
    }
    if (absl::Status s = WriteAll(fd_, out); !s.ok()) {
      broken_ = true;
      return absl::UnavailableError(
          fmt::format("writing {} failed: {}", temp_path_.string(), std::string(s.message())));
    }
    return std::vector<absl::Status>(batch.size(), absl::OkStatus());
  }

  absl::Status Finish() override {
    if (broken_) {
      return absl::UnavailableError(
          fmt::format("an earlier write to {} failed; no file was produced", temp_path_.string()));
    }
    if (finished_ || fd_ < 0) {
      finished_ = true;
      return absl::OkStatus();
    }
    int fd = fd_;
    fd_ = -1;
    finished_ = true;
    auto fail = [&](const std::string& what, int err) {
      ::unlink(temp_path_.c_str());
      return absl::UnavailableError(
          fmt::format("{} {}: {}", what, temp_path_.string(), ErrnoText(err)));
    };
    if (::fsync(fd) != 0) {
      int err = errno;
      ::close(fd);
      return fail("fsync", err);
    }
    if (::close(fd) != 0) return fail("close", errno);
    if (::rename(temp_path_.c_str(), final_path_.c_str()) != 0) return fail("rename", errno);
    return FsyncPath(dir_, O_RDONLY | O_DIRECTORY);
  }

 private:
  void AppendCsvHeader(std::string& out) const {
    out.append("operation,change,key");
    for (const std::string& c : columns_) {
      out.push_back(',');
      AppendCsvField(out, c);
    }
    out.append("\r\n");
  }

  void AppendCsvRow(std::string& out, const OutgoingRecord& r) const {
    out.append(r.is_delete() ? "delete" : "upsert");
    out.push_back(',');
    out.append(ChangeKindName(r.change));
    out.push_back(',');
    AppendCsvField(out, r.key);
    std::vector<std::string> cells(columns_.size());
    if (r.is_delete()) {
      for (size_t i = 0; i < identity_columns_.size() && i < r.values.size(); ++i) {
        cells[identity_columns_[i]] = r.values[i].ToString();
      }
    } else {
      for (size_t i = 0; i < options_.layout.fields.size() && i < r.values.size(); ++i) {
        cells[i] = r.values[i].ToString();
      }
    }
    for (const std::string& cell : cells) {
      out.push_back(',');
      AppendCsvField(out, cell);
    }
    out.append("\r\n");
  }

  void AppendJsonLine(std::string& out, const OutgoingRecord& r) const {
    JsonWriter w;
    w.BeginObject();
    w.Key("operation").String(r.is_delete() ? "delete" : "upsert");
    w.Key("change").String(ChangeKindName(r.change));
    w.Key("key").String(r.key);
    w.Key("id").String(r.dedup_id);
    w.Key("fields").Raw(RecordFieldsJson(options_.layout, r));
    w.EndObject();
    out.append(w.str());
    out.push_back('\n');
  }

  fs::path dir_;
  Format format_;
  SessionOptions options_;
  fs::path final_path_;
  fs::path temp_path_;
  std::vector<std::string> columns_;
  std::vector<size_t> identity_columns_;  // column index of each identity field
  int fd_ = -1;
  bool broken_ = false;
  bool finished_ = false;
};

class FileDestination final : public Destination {
 public:
  FileDestination(fs::path dir, Format format) : dir_(std::move(dir)), format_(format) {}

  absl::Status CheckConnection() override {
    if (absl::Status s = EnsureFolder(dir_); !s.ok()) return s;
    fs::path probe =
        dir_ / fmt::format(".backflow-probe-{}-{}", ::getpid(),
                           std::chrono::steady_clock::now().time_since_epoch().count());
    int fd = ::open(probe.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) {
      return absl::FailedPreconditionError(fmt::format(
          "cannot write in folder {}: {}; check its permissions", dir_.string(), ErrnoText(errno)));
    }
    absl::Status written = WriteAll(fd, "probe\n");
    ::close(fd);
    ::unlink(probe.c_str());
    if (!written.ok()) {
      return absl::FailedPreconditionError(fmt::format(
          "cannot write in folder {}: {}", dir_.string(), std::string(written.message())));
    }
    return absl::OkStatus();
  }

  absl::StatusOr<std::unique_ptr<ActionSession>> StartSession(
      const SessionOptions& options) override {
    const std::string& m = options.mapping;
    if (m.empty() || m == "." || m == ".." ||
        m.find_first_of(std::string("/\\\0", 3)) != std::string::npos) {
      return absl::InvalidArgumentError(
          fmt::format("mapping name \"{}\" cannot be used in a file name", m));
    }
    if (absl::Status s = EnsureFolder(dir_); !s.ok()) return s;
    RemoveStaleTempFiles(m);
    return std::unique_ptr<ActionSession>(std::make_unique<FileSession>(dir_, format_, options));
  }

 private:
  // Removes ".<mapping>-<run id>.<ext>.tmp" files of earlier, dead runs.
  void RemoveStaleTempFiles(const std::string& mapping) const {
    std::string prefix = "." + mapping + "-";
    std::error_code ec;
    for (const fs::directory_entry& entry : fs::directory_iterator(dir_, ec)) {
      std::string name = entry.path().filename().string();
      if (!name.starts_with(prefix)) continue;
      std::string_view rest = std::string_view(name).substr(prefix.size());
      for (const char* suffix : {".jsonl.tmp", ".csv.tmp"}) {
        if (rest.ends_with(suffix) &&
            IsRunIdText(rest.substr(0, rest.size() - std::strlen(suffix)))) {
          std::error_code ignored;
          fs::remove(entry.path(), ignored);
        }
      }
    }
  }

  fs::path dir_;
  Format format_;
};

}  // namespace

DestinationDefinition FileDestinationDefinition() {
  DestinationDefinition def;
  def.type = "file";
  def.title = "Local files";
  def.description =
      "Writes each run's records to one JSON Lines or CSV file in a local folder; the file "
      "appears only when the run completes.";
  def.maturity = "beta";

  SettingSpec path;
  path.key = "path";
  path.label = "Folder";
  path.description = "Folder receiving the files; created if missing.";
  path.required = true;
  path.is_path = true;
  def.settings.push_back(path);

  SettingSpec format;
  format.key = "format";
  format.label = "Format";
  format.description = "jsonl (one JSON object per line) or csv (RFC 4180).";
  format.type = SettingType::kEnum;
  format.default_value = "jsonl";
  format.allowed_values = {"jsonl", "csv"};
  def.settings.push_back(format);

  ActionSpec write;
  write.id = "write_records";
  write.title = "Write records";
  write.description =
      "Writes every selected record, one line each, to <path>/<mapping>-<run_id>.<format>; "
      "deletes carry only the identity fields.";
  write.selections = {RecordSelection::kAdded, RecordSelection::kUpdated,
                      RecordSelection::kAddedOrUpdated, RecordSelection::kDeleted,
                      RecordSelection::kAll};
  write.allows_extra_fields = true;
  write.default_batch_records = 1000;
  write.max_batch_records = 10000;
  write.commit_on_finish = true;
  def.actions.push_back(write);

  def.create = [](const nlohmann::json& settings,
                  const ConnectorEnv&) -> absl::StatusOr<std::unique_ptr<Destination>> {
    if (!settings.is_object()) return absl::InvalidArgumentError("file settings must be a map");
    auto path = settings.find("path");
    if (path == settings.end() || !path->is_string() || path->get<std::string>().empty()) {
      return absl::InvalidArgumentError("path: required; the folder receiving the files");
    }
    Format format = Format::kJsonl;
    if (auto f = settings.find("format"); f != settings.end() && !f->is_null()) {
      if (*f == "csv") {
        format = Format::kCsv;
      } else if (*f != "jsonl") {
        return absl::InvalidArgumentError("format: use jsonl or csv");
      }
    }
    return std::unique_ptr<Destination>(
        std::make_unique<FileDestination>(fs::path(path->get<std::string>()), format));
  };
  return def;
}

}  // namespace backflow
