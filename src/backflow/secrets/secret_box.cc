#include "backflow/secrets/secret_box.h"

#include <fcntl.h>
#include <sodium.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>

#include "absl/status/status.h"
#include "backflow/common/crypto.h"
#include "fmt/format.h"

namespace backflow {
namespace {

namespace fs = std::filesystem;

constexpr unsigned char kVersion = 1;
constexpr size_t kKeyIdBytes = 8;
constexpr size_t kHeaderBytes = 1 + kKeyIdBytes + crypto_secretbox_NONCEBYTES;
constexpr char kKeyIdContext[] = "backflow secret key id v1";
constexpr const char* kGenerateHint = "generate one with `head -c 32 /dev/urandom | base64`";

void InitSodium() {
  // Thread-safe and idempotent; fails only when no randomness source exists.
  if (sodium_init() < 0) std::abort();
}

std::string Trim(std::string s) {
  const char* ws = " \t\r\n";
  size_t begin = s.find_first_not_of(ws);
  if (begin == std::string::npos) return "";
  return s.substr(begin, s.find_last_not_of(ws) - begin + 1);
}

// Decodes key text (base64 of 32 bytes); `origin` names it in errors.
absl::StatusOr<std::string> DecodeKey(const std::string& text, const std::string& origin,
                                      const std::string& fix) {
  absl::StatusOr<std::string> key = Base64Decode(Trim(text));
  if (!key.ok()) {
    return absl::InvalidArgumentError(
        fmt::format("{} is not valid base64; it must be the base64 of {} random bytes ({}){}",
                    origin, SecretBox::kKeyBytes, kGenerateHint, fix));
  }
  if (key->size() != SecretBox::kKeyBytes) {
    size_t size = key->size();
    sodium_memzero(key->data(), key->size());
    return absl::InvalidArgumentError(
        fmt::format("{} decodes to {} bytes; it must be the base64 of exactly {} bytes ({}){}",
                    origin, size, SecretBox::kKeyBytes, kGenerateHint, fix));
  }
  return key;
}

absl::Status ErrnoError(const std::string& what, const std::string& path) {
  int err = errno;
  std::string message =
      fmt::format("cannot {} the secret key file {}: {}", what, path, std::strerror(err));
  if (err == EACCES || err == EPERM) {
    return absl::PermissionDeniedError(message + "; check the file's owner and permissions");
  }
  return absl::FailedPreconditionError(message);
}

// Reads an existing key file after checking its type and permissions.
absl::StatusOr<std::string> ReadKeyFile(const std::string& path) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoError("open", path);
  struct stat st {};
  if (fstat(fd, &st) != 0) {
    absl::Status s = ErrnoError("inspect", path);
    close(fd);
    return s;
  }
  if (!S_ISREG(st.st_mode)) {
    close(fd);
    return absl::FailedPreconditionError(
        fmt::format("the secret key file {} is not a regular file", path));
  }
  if ((st.st_mode & 077) != 0) {
    close(fd);
    return absl::PermissionDeniedError(fmt::format(
        "the secret key file {} can be accessed by group or others (mode {:04o}); restrict it "
        "with `chmod 600 {}` (it must be readable by the owner only)",
        path, st.st_mode & 07777, path));
  }
  std::string text;
  char buffer[256];
  while (true) {
    ssize_t n = read(fd, buffer, sizeof(buffer));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      absl::Status s = ErrnoError("read", path);
      close(fd);
      sodium_memzero(buffer, sizeof(buffer));
      return s;
    }
    if (n == 0) break;
    text.append(buffer, n);
    if (text.size() > 4096) break;  // far more than a key; reported as a bad key below
  }
  sodium_memzero(buffer, sizeof(buffer));
  close(fd);
  return text;
}

// Writes a new key file atomically: a private temporary file linked into
// place, so a concurrent process either wins (and its key is used) or sees
// the complete file. Returns false (and no error) when the file appeared
// meanwhile.
absl::StatusOr<bool> CreateKeyFile(const std::string& path, const std::string& text) {
  std::error_code ec;
  fs::path parent = fs::path(path).parent_path();
  if (!parent.empty()) fs::create_directories(parent, ec);
  if (ec) {
    return absl::FailedPreconditionError(fmt::format(
        "cannot create the folder {} for the secret key file: {}", parent.string(), ec.message()));
  }
  std::string tmp = fmt::format("{}.tmp-{}-{}", path, getpid(), randombytes_random());
  int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) return ErrnoError("create", tmp);
  absl::Status status;
  if (fchmod(fd, 0600) != 0) status = ErrnoError("set the mode of", tmp);
  size_t written = 0;
  while (status.ok() && written < text.size()) {
    ssize_t n = write(fd, text.data() + written, text.size() - written);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      status = ErrnoError("write", tmp);
      break;
    }
    written += n;
  }
  if (status.ok() && fsync(fd) != 0) status = ErrnoError("sync", tmp);
  close(fd);
  bool created = false;
  if (status.ok()) {
    if (link(tmp.c_str(), path.c_str()) == 0) {
      created = true;
    } else if (errno != EEXIST) {
      status = ErrnoError("create", path);
    }
  }
  unlink(tmp.c_str());
  if (!status.ok()) return status;
  if (created && !parent.empty()) {
    int dir = open(parent.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dir >= 0) {
      (void)fsync(dir);
      close(dir);
    }
  }
  return created;
}

}  // namespace

SecretBox::~SecretBox() {
  sodium_memzero(key_.data(), key_.size());
  sodium_memzero(key_id_.data(), key_id_.size());
}

absl::StatusOr<SecretBox> SecretBox::FromKey(std::string_view key) {
  InitSodium();
  if (key.size() != kKeyBytes) {
    return absl::InvalidArgumentError(
        fmt::format("a secret key must be {} bytes, not {}", kKeyBytes, key.size()));
  }
  SecretBox box;
  std::memcpy(box.key_.data(), key.data(), kKeyBytes);
  unsigned char id[crypto_generichash_BYTES_MIN];
  crypto_generichash(id, sizeof(id), reinterpret_cast<const unsigned char*>(kKeyIdContext),
                     sizeof(kKeyIdContext) - 1, box.key_.data(), box.key_.size());
  std::memcpy(box.key_id_.data(), id, kKeyIdBytes);
  return box;
}

std::string SecretBox::GenerateKeyBase64() {
  InitSodium();
  std::string key(kKeyBytes, '\0');
  randombytes_buf(key.data(), key.size());
  std::string text = Base64Encode(key);
  sodium_memzero(key.data(), key.size());
  return text;
}

absl::StatusOr<SecretBox> SecretBox::Load(const std::string& key_file, bool create_if_missing) {
  const char* env = std::getenv(kKeyEnvVar);
  return LoadWith(env != nullptr ? std::optional<std::string>(env) : std::nullopt, key_file,
                  create_if_missing);
}

absl::StatusOr<SecretBox> SecretBox::LoadWith(const std::optional<std::string>& env_value,
                                              const std::string& key_file, bool create_if_missing) {
  InitSodium();
  if (env_value && !Trim(*env_value).empty()) {
    absl::StatusOr<std::string> key = DecodeKey(*env_value, kKeyEnvVar, "");
    if (!key.ok()) return key.status();
    absl::StatusOr<SecretBox> box = FromKey(*key);
    sodium_memzero(key->data(), key->size());
    if (box.ok()) box->origin_ = kKeyEnvVar;
    return box;
  }
  if (key_file.empty()) {
    return absl::FailedPreconditionError(
        fmt::format("no secret key: set {} or secret_key_file: in the workspace", kKeyEnvVar));
  }
  bool created = false;
  std::error_code ec;
  if (!fs::exists(key_file, ec)) {
    if (!create_if_missing) {
      return absl::FailedPreconditionError(fmt::format(
          "the secret key file {} does not exist and {} is not set; the secrets were written "
          "with a key that is not here: restore the key file, or set {} to the original key",
          key_file, kKeyEnvVar, kKeyEnvVar));
    }
    std::string text = GenerateKeyBase64() + "\n";
    absl::StatusOr<bool> made = CreateKeyFile(key_file, text);
    sodium_memzero(text.data(), text.size());
    if (!made.ok()) return made.status();
    created = *made;
  }
  absl::StatusOr<std::string> text = ReadKeyFile(key_file);
  if (!text.ok()) return text.status();
  absl::StatusOr<std::string> key =
      DecodeKey(*text, fmt::format("the secret key file {}", key_file),
                "; restore the original file, or move it aside to start with a new key (the "
                "secrets written with the old key can then no longer be read)");
  sodium_memzero(text->data(), text->size());
  if (!key.ok()) return key.status();
  absl::StatusOr<SecretBox> box = FromKey(*key);
  sodium_memzero(key->data(), key->size());
  if (box.ok()) {
    box->origin_ = key_file;
    box->created_ = created;
  }
  return box;
}

std::string SecretBox::Seal(std::string_view plaintext) const {
  std::string out(kHeaderBytes + crypto_secretbox_MACBYTES + plaintext.size(), '\0');
  auto* bytes = reinterpret_cast<unsigned char*>(out.data());
  bytes[0] = kVersion;
  std::memcpy(bytes + 1, key_id_.data(), kKeyIdBytes);
  unsigned char* nonce = bytes + 1 + kKeyIdBytes;
  randombytes_buf(nonce, crypto_secretbox_NONCEBYTES);
  crypto_secretbox_easy(bytes + kHeaderBytes,
                        reinterpret_cast<const unsigned char*>(plaintext.data()), plaintext.size(),
                        nonce, key_.data());
  return out;
}

bool SecretBox::SameKey(std::string_view sealed) const {
  return sealed.size() >= kHeaderBytes && static_cast<unsigned char>(sealed[0]) == kVersion &&
         sodium_memcmp(sealed.data() + 1, key_id_.data(), kKeyIdBytes) == 0;
}

absl::StatusOr<std::string> SecretBox::Open(std::string_view sealed) const {
  if (sealed.size() < kHeaderBytes + crypto_secretbox_MACBYTES ||
      static_cast<unsigned char>(sealed[0]) != kVersion) {
    return absl::DataLossError(
        "the stored secret is damaged (it is not a value Backflow sealed); set it again");
  }
  if (!SameKey(sealed)) return absl::PermissionDeniedError(kWrongSecretKeyMessage);
  const auto* bytes = reinterpret_cast<const unsigned char*>(sealed.data());
  std::string plaintext(sealed.size() - kHeaderBytes - crypto_secretbox_MACBYTES, '\0');
  if (crypto_secretbox_open_easy(reinterpret_cast<unsigned char*>(plaintext.data()),
                                 bytes + kHeaderBytes, sealed.size() - kHeaderBytes,
                                 bytes + 1 + kKeyIdBytes, key_.data()) != 0) {
    return absl::DataLossError(
        "the stored secret is damaged (its authentication tag does not match: the value was "
        "altered or corrupted); set it again");
  }
  return plaintext;
}

}  // namespace backflow
