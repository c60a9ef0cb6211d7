#include "backflow/secrets/secret_store.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iterator>

#include "backflow/testing/scratch_dir.h"
#include "fmt/format.h"

namespace backflow {
namespace {

namespace fs = std::filesystem;

constexpr char kPlanted[] = "pk_live_PLANTED-secret-value-8f3a9c";

class SecretStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto state = OpenSqliteStateStore((dir_ / "state.db").string());
    ASSERT_TRUE(state.ok()) << state.status();
    state_ = *std::move(state);
  }
  void TearDown() override { state_.reset(); }

  SecretBox box_ = *SecretBox::FromKey(std::string(32, 'K'));
  FakeClock clock_;
  testing::ScratchDir scratch_{"secret-store"};
  const fs::path dir_ = scratch_.path();
  std::unique_ptr<StateStore> state_;
};

TEST_F(SecretStoreTest, ValidatesNames) {
  SecretStore store(*state_, &box_, clock_);
  for (const std::string& good : std::vector<std::string>{"HUBSPOT_TOKEN", "_x", "a1", "Z"}) {
    EXPECT_TRUE(ValidateSecretName(good).ok()) << good;
  }
  for (const std::string& bad : std::vector<std::string>{
           "", "1ABC", "has-dash", "has space", "dot.name", "ünïcode", std::string(129, 'a')}) {
    absl::Status s = store.Set(bad, "value");
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_NE(s.message().find("letters, digits and '_'"), std::string::npos) << s;
    EXPECT_EQ(store.Get(bad).status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_EQ(store.Delete(bad).code(), absl::StatusCode::kInvalidArgument) << bad;
  }
  EXPECT_TRUE(store.List()->empty());
}

TEST_F(SecretStoreTest, StoresOnlyCiphertext) {
  SecretStore store(*state_, &box_, clock_);
  ASSERT_TRUE(store.Set("STRIPE_KEY", kPlanted).ok());
  // What the state store holds is sealed: no trace of the plaintext.
  absl::StatusOr<std::optional<std::string>> raw = state_->GetSecret("STRIPE_KEY");
  ASSERT_TRUE(raw.ok() && raw->has_value());
  EXPECT_EQ((*raw)->find(kPlanted), std::string::npos);
  EXPECT_EQ((*raw)->find("PLANTED"), std::string::npos);
  EXPECT_EQ(*box_.Open(**raw), kPlanted);
  EXPECT_EQ(*store.Get("STRIPE_KEY"), kPlanted);
  // Nor does the database file, journal included.
  state_.reset();
  for (const auto& e : fs::recursive_directory_iterator(dir_)) {
    if (!e.is_regular_file()) continue;
    std::ifstream in(e.path(), std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    EXPECT_EQ(bytes.find("PLANTED"), std::string::npos) << e.path();
  }
}

TEST_F(SecretStoreTest, SetReplacesListDeletes) {
  SecretStore store(*state_, &box_, clock_);
  ASSERT_TRUE(store.Set("B_TOKEN", "first-value").ok());
  clock_.Advance(std::chrono::seconds(90));
  ASSERT_TRUE(store.Set("A_TOKEN", "another").ok());
  ASSERT_TRUE(store.Set("B_TOKEN", "second-value").ok());
  EXPECT_EQ(*store.Get("B_TOKEN"), "second-value");
  absl::StatusOr<std::vector<SecretInfo>> list = store.List();
  ASSERT_TRUE(list.ok());
  ASSERT_EQ(list->size(), 2u);
  EXPECT_EQ((*list)[0].name, "A_TOKEN");
  EXPECT_EQ((*list)[1].name, "B_TOKEN");
  // FakeClock starts at 1'700'000'000 (2023-11-14T22:13:20Z); +90 s.
  EXPECT_EQ((*list)[1].updated_at.substr(0, 19), "2023-11-14T22:14:50");

  ASSERT_TRUE(store.Delete("A_TOKEN").ok());
  absl::Status again = store.Delete("A_TOKEN");
  EXPECT_EQ(again.code(), absl::StatusCode::kNotFound);
  EXPECT_NE(again.message().find("backflow secret list"), std::string::npos);
  absl::StatusOr<std::string> gone = store.Get("A_TOKEN");
  EXPECT_EQ(gone.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(gone.status().message().find("backflow secret set A_TOKEN"), std::string::npos);
}

TEST_F(SecretStoreTest, RejectsEmptyAndOversizedValues) {
  SecretStore store(*state_, &box_, clock_);
  EXPECT_EQ(store.Set("X", "").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store.Set("X", std::string(SecretStore::kMaxValueBytes + 1, 'v')).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(store.Set("X", std::string(SecretStore::kMaxValueBytes, 'v')).ok());
}

TEST_F(SecretStoreTest, WrongKeyOnReadAndOnWrite) {
  ASSERT_TRUE(SecretStore(*state_, &box_, clock_).Set("TOKEN", kPlanted).ok());
  SecretBox other = *SecretBox::FromKey(std::string(32, 'O'));
  SecretStore wrong(*state_, &other, clock_);
  absl::StatusOr<std::string> read = wrong.Get("TOKEN");
  ASSERT_FALSE(read.ok());
  EXPECT_EQ(read.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_NE(read.status().message().find(kWrongSecretKeyMessage), std::string::npos);
  EXPECT_EQ(read.status().message().find(kPlanted), std::string::npos);
  // Adding a second secret under another key is refused...
  absl::Status write = wrong.Set("OTHER", "value-two");
  EXPECT_EQ(write.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_NE(write.message().find(kWrongSecretKeyMessage), std::string::npos);
  EXPECT_FALSE(state_->GetSecret("OTHER")->has_value());
  // ...but replacing the only secret is how a lost key is recovered from.
  EXPECT_TRUE(wrong.Set("TOKEN", "new-value").ok());
  EXPECT_EQ(*wrong.Get("TOKEN"), "new-value");
}

TEST_F(SecretStoreTest, DamagedValueIsDataLoss) {
  SecretStore store(*state_, &box_, clock_);
  ASSERT_TRUE(store.Set("TOKEN", kPlanted).ok());
  std::string sealed = **state_->GetSecret("TOKEN");
  sealed.back() = static_cast<char>(sealed.back() ^ 0x40);
  ASSERT_TRUE(state_->PutSecret("TOKEN", sealed, absl::Now()).ok());
  absl::StatusOr<std::string> read = store.Get("TOKEN");
  EXPECT_EQ(read.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(read.status().message().find("backflow secret set TOKEN"), std::string::npos)
      << read.status();
}

TEST_F(SecretStoreTest, ListAndDeleteNeedNoKey) {
  ASSERT_TRUE(SecretStore(*state_, &box_, clock_).Set("TOKEN", kPlanted).ok());
  SecretStore keyless(*state_, nullptr, clock_);
  EXPECT_EQ(keyless.List()->size(), 1u);
  EXPECT_EQ(keyless.Get("TOKEN").status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(keyless.Set("TOKEN", "x").code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(keyless.Delete("TOKEN").ok());
}

TEST(MaskSecretTest, ShowsTheLastFourOfLongValuesOnly) {
  EXPECT_EQ(MaskSecret(""), "••••");
  EXPECT_EQ(MaskSecret("short"), "••••");
  EXPECT_EQ(MaskSecret("elevenchars"), "••••");  // 11 characters
  EXPECT_EQ(MaskSecret("twelve-chars"), "••••hars");
  EXPECT_EQ(MaskSecret(kPlanted), "••••3a9c");
  // Characters, not bytes: 11 two-byte characters are still too short, and
  // the last 4 of 12 are whole characters.
  EXPECT_EQ(MaskSecret("ééééééééééé"), "••••");
  EXPECT_EQ(MaskSecret("abcdefghéèêë"), "••••éèêë");
}

}  // namespace
}  // namespace backflow
