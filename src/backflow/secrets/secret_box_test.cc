#include "backflow/secrets/secret_box.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>
#include <vector>

#include "backflow/common/crypto.h"
#include "backflow/testing/scratch_dir.h"
#include "fmt/format.h"

namespace backflow {
namespace {

namespace fs = std::filesystem;

class SecretBoxTest : public ::testing::Test {
 protected:
  static SecretBox Box(char fill) { return *SecretBox::FromKey(std::string(32, fill)); }
  static std::string Slurp(const fs::path& p) {
    std::ifstream in(p);
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
  }

  testing::ScratchDir scratch_{"secret-box"};
  const fs::path dir_ = scratch_.path();
};

TEST_F(SecretBoxTest, RoundTripsAndUsesAFreshNonceEachTime) {
  SecretBox box = Box('k');
  const std::string plaintext = "xoxb-1234-very-secret-token";
  std::string a = box.Seal(plaintext);
  std::string b = box.Seal(plaintext);
  EXPECT_NE(a, b);  // random nonce
  EXPECT_EQ(a.find(plaintext), std::string::npos);
  // version + key id + nonce + tag + plaintext
  EXPECT_EQ(a.size(), 1 + 8 + 24 + 16 + plaintext.size());
  ASSERT_TRUE(box.Open(a).ok()) << box.Open(a).status();
  EXPECT_EQ(*box.Open(a), plaintext);
  EXPECT_EQ(*box.Open(b), plaintext);
  // Empty and binary values survive too.
  EXPECT_EQ(*box.Open(box.Seal("")), "");
  std::string binary("\0\xff\x01 z", 5);
  EXPECT_EQ(*box.Open(box.Seal(binary)), binary);
}

TEST_F(SecretBoxTest, WrongKeyIsAClearPermissionError) {
  std::string sealed = Box('a').Seal("hunter2-hunter2");
  absl::StatusOr<std::string> opened = Box('b').Open(sealed);
  ASSERT_FALSE(opened.ok());
  EXPECT_EQ(opened.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(opened.status().message(), kWrongSecretKeyMessage);
  EXPECT_FALSE(Box('b').SameKey(sealed));
  EXPECT_TRUE(Box('a').SameKey(sealed));
}

TEST_F(SecretBoxTest, TamperedCiphertextIsDetected) {
  SecretBox box = Box('t');
  const std::string sealed = box.Seal("a value worth protecting");
  // Flip each byte after the header in turn (nonce, tag, ciphertext): every
  // change must be caught as damage, never return altered plaintext.
  for (size_t i = 9; i < sealed.size(); ++i) {
    std::string bad = sealed;
    bad[i] = static_cast<char>(bad[i] ^ 0x01);
    absl::StatusOr<std::string> opened = box.Open(bad);
    ASSERT_FALSE(opened.ok()) << "byte " << i;
    EXPECT_EQ(opened.status().code(), absl::StatusCode::kDataLoss) << "byte " << i;
    EXPECT_NE(opened.status().message().find("damaged"), std::string::npos);
  }
  // Truncated, and a wrong version byte.
  EXPECT_EQ(box.Open(sealed.substr(0, 20)).status().code(), absl::StatusCode::kDataLoss);
  std::string wrong_version = sealed;
  wrong_version[0] = 9;
  EXPECT_EQ(box.Open(wrong_version).status().code(), absl::StatusCode::kDataLoss);
}

TEST_F(SecretBoxTest, CreatesTheKeyFileWithMode0600AndReusesIt) {
  fs::path key_file = dir_ / "sub" / "secret.key";
  absl::StatusOr<SecretBox> first = SecretBox::LoadWith(std::nullopt, key_file.string(), true);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_TRUE(first->created_key_file());
  EXPECT_EQ(first->key_origin(), key_file.string());
  struct stat st {};
  ASSERT_EQ(stat(key_file.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0600u);
  // The file holds the base64 of 32 bytes, usable as BACKFLOW_SECRET_KEY.
  std::string text = Slurp(key_file);
  absl::StatusOr<std::string> raw = Base64Decode(text.substr(0, text.find('\n')));
  ASSERT_TRUE(raw.ok());
  EXPECT_EQ(raw->size(), 32u);
  // No temporary file is left behind.
  int entries = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator(key_file.parent_path())) ++entries;
  EXPECT_EQ(entries, 1);

  // A second load reads the same key: what the first sealed, it opens.
  std::string sealed = first->Seal("same key");
  absl::StatusOr<SecretBox> second = SecretBox::LoadWith(std::nullopt, key_file.string(), true);
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_FALSE(second->created_key_file());
  EXPECT_EQ(*second->Open(sealed), "same key");
  // And so does the file's text given as BACKFLOW_SECRET_KEY.
  absl::StatusOr<SecretBox> from_env = SecretBox::LoadWith(text, "", true);
  ASSERT_TRUE(from_env.ok()) << from_env.status();
  EXPECT_EQ(from_env->key_origin(), "BACKFLOW_SECRET_KEY");
  EXPECT_EQ(*from_env->Open(sealed), "same key");
}

TEST_F(SecretBoxTest, ConcurrentFirstUsesAgreeOnOneKey) {
  fs::path key_file = dir_ / "secret.key";
  std::vector<std::optional<SecretBox>> boxes(8);
  std::vector<std::thread> threads;
  for (size_t i = 0; i < boxes.size(); ++i) {
    threads.emplace_back([&, i] {
      absl::StatusOr<SecretBox> box = SecretBox::LoadWith(std::nullopt, key_file.string(), true);
      if (box.ok()) boxes[i].emplace(*std::move(box));
    });
  }
  for (std::thread& t : threads) t.join();
  int created = 0;
  for (const auto& box : boxes) {
    ASSERT_TRUE(box.has_value());
    created += box->created_key_file();
  }
  EXPECT_EQ(created, 1);
  std::string sealed = boxes[0]->Seal("one key for all");
  for (const auto& box : boxes) EXPECT_EQ(*box->Open(sealed), "one key for all");
}

TEST_F(SecretBoxTest, RefusesAKeyFileOthersCanRead) {
  fs::path key_file = dir_ / "secret.key";
  ASSERT_TRUE(SecretBox::LoadWith(std::nullopt, key_file.string(), true).ok());
  ASSERT_EQ(chmod(key_file.c_str(), 0644), 0);
  absl::StatusOr<SecretBox> box = SecretBox::LoadWith(std::nullopt, key_file.string(), true);
  ASSERT_FALSE(box.ok());
  EXPECT_EQ(box.status().code(), absl::StatusCode::kPermissionDenied);
  std::string message(box.status().message());
  EXPECT_NE(message.find(key_file.string()), std::string::npos) << message;
  EXPECT_NE(message.find("0644"), std::string::npos) << message;
  EXPECT_NE(message.find("chmod 600 " + key_file.string()), std::string::npos) << message;
  // Group-only access is refused too; owner-only read is fine.
  ASSERT_EQ(chmod(key_file.c_str(), 0640), 0);
  EXPECT_EQ(SecretBox::LoadWith(std::nullopt, key_file.string(), true).status().code(),
            absl::StatusCode::kPermissionDenied);
  ASSERT_EQ(chmod(key_file.c_str(), 0400), 0);
  EXPECT_TRUE(SecretBox::LoadWith(std::nullopt, key_file.string(), true).ok());
}

TEST_F(SecretBoxTest, EnvironmentKeyOfTheWrongLengthIsAClearError) {
  // 16 bytes, valid base64.
  std::string short_key = Base64Encode(std::string(16, 'x'));
  absl::StatusOr<SecretBox> box = SecretBox::LoadWith(short_key, (dir_ / "k").string(), true);
  ASSERT_FALSE(box.ok());
  EXPECT_EQ(box.status().code(), absl::StatusCode::kInvalidArgument);
  std::string message(box.status().message());
  EXPECT_NE(message.find("BACKFLOW_SECRET_KEY decodes to 16 bytes"), std::string::npos) << message;
  EXPECT_NE(message.find("exactly 32 bytes"), std::string::npos) << message;
  EXPECT_EQ(message.find(short_key), std::string::npos) << "the key itself must not be echoed";
  // The env var takes precedence: no key file was created.
  EXPECT_FALSE(fs::exists(dir_ / "k"));

  absl::StatusOr<SecretBox> not_base64 =
      SecretBox::LoadWith("not*base64!", (dir_ / "k").string(), true);
  EXPECT_EQ(not_base64.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(not_base64.status().message().find("not valid base64"), std::string::npos);

  // A valid key of 32 bytes works, and equals FromKey of its bytes.
  std::string key(32, 'q');
  absl::StatusOr<SecretBox> ok = SecretBox::LoadWith(Base64Encode(key) + "\n", "", true);
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(*Box('q').Open(ok->Seal("v")), "v");
}

TEST_F(SecretBoxTest, KeyFileWithABadKeyAndAMissingFileWhenNotCreating) {
  fs::path key_file = dir_ / "secret.key";
  absl::StatusOr<SecretBox> missing = SecretBox::LoadWith(std::nullopt, key_file.string(), false);
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(missing.status().message().find("does not exist"), std::string::npos);
  EXPECT_FALSE(fs::exists(key_file));

  std::ofstream(key_file) << Base64Encode(std::string(31, 'z')) << "\n";
  ASSERT_EQ(chmod(key_file.c_str(), 0600), 0);
  absl::StatusOr<SecretBox> bad = SecretBox::LoadWith(std::nullopt, key_file.string(), true);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("decodes to 31 bytes"), std::string::npos) << bad.status();
}

TEST_F(SecretBoxTest, GeneratedKeysDiffer) {
  std::string a = SecretBox::GenerateKeyBase64(), b = SecretBox::GenerateKeyBase64();
  EXPECT_NE(a, b);
  EXPECT_EQ(Base64Decode(a)->size(), 32u);
}

}  // namespace
}  // namespace backflow
