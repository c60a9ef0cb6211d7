#include "backflow/engine/change_writer.h"

#include <string>
#include <vector>

#include "backflow/engine/spool.h"
#include "backflow/engine/warehouse_mode.h"
#include "backflow/testing/scratch_dir.h"
#include "gtest/gtest.h"

namespace backflow {
namespace {

constexpr ChangeWriter::RowPayload kMapped = ChangeWriter::RowPayload::kMapped;
constexpr ChangeWriter::RowPayload kAsIs = ChangeWriter::RowPayload::kAsIs;

class ChangeWriterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto spool = Spool::Create(scratch_.string());
    ASSERT_TRUE(spool.ok()) << spool.status();
    spool_ = *std::move(spool);
    ActionSpec action;
    action.allows_extra_fields = true;
    Schema schema = {{"id", ValueType::kInt64, ""}, {"email", ValueType::kString, ""}};
    // The payload puts email first: what the writer writes is the mapped row.
    auto mapper = Mapper::Create("m", "c", {{"mail", "email"}, {"id", "id"}}, action, schema, "id");
    ASSERT_TRUE(mapper.ok()) << mapper.status();
    mapper_ = std::make_unique<Mapper>(*std::move(mapper));
    for (int i = 0; i < kRows; ++i) {
      std::string encoded;
      EncodeRow({Value::Int64(i), Value::String("user" + std::to_string(i) + "@x.io")}, encoded);
      auto ref = spool_->AppendRow(encoded);
      ASSERT_TRUE(ref.ok());
      refs_.push_back(*ref);
    }
    ASSERT_TRUE(spool_->FinishLoad().ok());
  }

  struct Change {
    std::string key;
    int change;
    std::string payload;
    bool operator==(const Change&) const = default;
  };
  std::vector<Change> ReadChanges() {
    EXPECT_TRUE(spool_->FinishChanges().ok());
    std::vector<Change> out;
    auto reader = spool_->ScanChanges(0);
    EXPECT_TRUE(reader.ok()) << reader.status();
    if (!reader.ok()) return out;
    std::string_view key, payload;
    int change = 0;
    Fingerprint fp;
    while (true) {
      auto more = reader->Next(key, change, fp, payload);
      EXPECT_TRUE(more.ok()) << more.status();
      if (!more.ok() || !*more) break;
      EXPECT_EQ(fp.high, static_cast<uint64_t>(out.size()));
      out.push_back({std::string(key), change, std::string(payload)});
    }
    return out;
  }

  static constexpr int kRows = 2000;
  testing::ScratchDir scratch_{"change-writer"};
  std::unique_ptr<Spool> spool_;
  std::unique_ptr<Mapper> mapper_;
  std::vector<RowRef> refs_;
};

TEST_F(ChangeWriterTest, WritesMappedRowsAndEncodedChangesInPushOrder) {
  std::vector<Change> expected;
  {
    ChangeWriter writer(*spool_, 0, *mapper_);
    for (int i = 0; i < kRows; ++i) {
      const std::string key = std::to_string(i);
      const Fingerprint fp{static_cast<uint64_t>(i), 7};
      std::string payload;
      if (i % 3 == 0) {  // a delete: its identity, encoded by the caller
        EncodeRow({Value::Int64(i)}, payload);
        ASSERT_TRUE(writer.PushEncoded(2, key, fp, payload).ok());
      } else {
        const bool hashed = i % 3 == 2;  // warehouse mode: the row hash follows
        ASSERT_TRUE(writer.PushRow(i % 2, key, fp, refs_[i], kMapped, hashed, "h" + key).ok());
        EncodeRow({Value::String("user" + key + "@x.io"), Value::Int64(i)}, payload);
        if (hashed) AppendRowHash(payload, "h" + key);
      }
      expected.push_back({key, i % 3 == 0 ? 2 : i % 2, payload});
    }
    ASSERT_TRUE(writer.Finish().ok());
  }
  EXPECT_EQ(ReadChanges(), expected);
}

TEST_F(ChangeWriterTest, ARowThatIsItsOwnPayloadIsWrittenAsRead) {
  std::vector<Change> expected;
  {
    ChangeWriter writer(*spool_, 0, *mapper_);
    // Every third row in order, then the first ones again (read at random):
    // the bytes of the row log, unmapped, the row hash after them if any.
    std::vector<int> order;
    for (int i = 0; i < kRows; i += 3) order.push_back(i);
    for (int i : {5, 1, 1999, 4}) order.push_back(i);
    for (size_t n = 0; n < order.size(); ++n) {
      const int i = order[n];
      const std::string key = std::to_string(i);
      const bool hashed = n % 2 == 1;
      ASSERT_TRUE(
          writer.PushRow(1, key, {static_cast<uint64_t>(n), 0}, refs_[i], kAsIs, hashed, "h" + key)
              .ok());
      std::string payload;
      EncodeRow({Value::Int64(i), Value::String("user" + key + "@x.io")}, payload);
      if (hashed) AppendRowHash(payload, "h" + key);
      expected.push_back({key, 1, payload});
    }
    ASSERT_TRUE(writer.Finish().ok());
  }
  EXPECT_EQ(ReadChanges(), expected);
}

TEST_F(ChangeWriterTest, TheFirstErrorStopsTheWritingAndIsReturned) {
  ChangeWriter writer(*spool_, 0, *mapper_);
  absl::Status pushed;
  ASSERT_TRUE(writer.PushRow(0, "0", {}, refs_[0], kMapped, false, "").ok());
  ASSERT_TRUE(writer.PushRow(0, "bad", {}, RowRef{uint64_t{1} << 40, 10}, kMapped, false, "").ok());
  // Pushing on: sooner or later Push() itself reports the error.
  for (int i = 0; i < 100 * kRows && pushed.ok(); ++i) {
    pushed = writer.PushRow(0, std::to_string(i), {}, refs_[i % kRows], kMapped, false, "");
  }
  EXPECT_EQ(pushed.code(), absl::StatusCode::kDataLoss) << pushed;
  absl::Status finished = writer.Finish();
  EXPECT_EQ(finished.code(), absl::StatusCode::kDataLoss) << finished;
  EXPECT_NE(std::string(finished.message()).find("past the row log"), std::string::npos);
}

TEST_F(ChangeWriterTest, DestroyedWithoutFinishStopsAndLeavesAPrefixOfWhatWasPushed) {
  {
    ChangeWriter writer(*spool_, 0, *mapper_);
    for (int i = 0; i < kRows; ++i) {
      ASSERT_TRUE(writer
                      .PushRow(1, std::to_string(i), {static_cast<uint64_t>(i), 0}, refs_[i],
                               kMapped, false, "")
                      .ok());
    }
  }  // queued batches are dropped, the thread stops
  const std::vector<Change> written = ReadChanges();  // checks they are in push order
  EXPECT_LE(written.size(), static_cast<size_t>(kRows));
  for (size_t i = 0; i < written.size(); ++i) EXPECT_EQ(written[i].key, std::to_string(i));
}

}  // namespace
}  // namespace backflow
