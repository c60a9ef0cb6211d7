#include "backflow/sources/parallel_reader.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace backflow {
namespace {

using ::testing::HasSubstr;

// What a test observes of one fake part, shared with the reader's thread.
struct PartState {
  std::mutex mu;
  std::condition_variable cv;
  bool cancelled = false;  // guarded by mu
  std::atomic<bool> destroyed{false};
  std::atomic<int64_t> produced{0};

  void Cancel() {
    std::lock_guard lock(mu);
    cancelled = true;
    cv.notify_all();
  }
};

struct FakeSpec {
  int64_t first = 0;  // the first row's value; then consecutive
  int64_t rows = 0;   // -1: endless
  // After `rows` rows: the clean end when ok, otherwise this error.
  absl::Status end = absl::OkStatus();
  // After `rows` rows, block until cancelled (then return kCancelled), like
  // a server that stalls. Takes precedence over `end`.
  bool stall_at_end = false;
  std::string padding;  // appended to every row as a second column
};

class FakeReader : public RowReader {
 public:
  FakeReader(FakeSpec spec, std::shared_ptr<PartState> state)
      : spec_(std::move(spec)), state_(std::move(state)) {}
  ~FakeReader() override { state_->destroyed = true; }

  const Schema& schema() const override { return schema_; }

  absl::StatusOr<bool> Next(Row& row) override {
    {
      std::unique_lock lock(state_->mu);
      if (state_->cancelled) return absl::CancelledError("cancelled");
      if (spec_.rows >= 0 && next_ >= spec_.rows) {
        if (spec_.stall_at_end) {
          state_->cv.wait(lock, [&] { return state_->cancelled; });
          return absl::CancelledError("cancelled while stalled");
        }
        if (!spec_.end.ok()) return spec_.end;
        return false;
      }
    }
    row.resize(2);
    row[0] = Value::Int64(spec_.first + next_++);
    row[1] = Value::String(spec_.padding);
    ++state_->produced;
    return true;
  }

 private:
  FakeSpec spec_;
  std::shared_ptr<PartState> state_;
  Schema schema_{{"id", ValueType::kInt64, "bigint"}, {"pad", ValueType::kString, "text"}};
  int64_t next_ = 0;
};

Schema TestSchema() {
  return {{"id", ValueType::kInt64, "bigint"}, {"pad", ValueType::kString, "text"}};
}

struct Parts {
  std::vector<std::shared_ptr<PartState>> states;
  std::vector<ParallelReaderPart> parts;

  void Add(FakeSpec spec) {
    auto state = std::make_shared<PartState>();
    states.push_back(state);
    parts.push_back(ParallelReaderPart{std::make_unique<FakeReader>(std::move(spec), state),
                                       [state] { state->Cancel(); }});
  }
  int64_t Produced() const {
    int64_t n = 0;
    for (const auto& s : states) n += s->produced;
    return n;
  }
};

TEST(ParallelRowReaderTest, ReturnsEveryRowOfEveryPartThenACleanEnd) {
  Parts p;
  p.Add({.first = 0, .rows = 10000});
  p.Add({.first = 10000, .rows = 0});  // an empty part
  p.Add({.first = 10000, .rows = 1});
  p.Add({.first = 10001, .rows = 25999});
  auto reader = NewParallelRowReader(TestSchema(), std::move(p.parts), {.batch_rows = 100});
  ASSERT_EQ(reader->schema().size(), 2u);
  EXPECT_EQ(reader->schema()[0].name, "id");
  std::vector<int64_t> ids;
  Row row;
  while (true) {
    absl::StatusOr<bool> more = reader->Next(row);
    ASSERT_TRUE(more.ok()) << more.status();
    if (!*more) break;
    ASSERT_EQ(row.size(), 2u);
    ids.push_back(row[0].int_value());
  }
  std::sort(ids.begin(), ids.end());
  ASSERT_EQ(ids.size(), 36000u);
  for (size_t i = 0; i < ids.size(); ++i) ASSERT_EQ(ids[i], static_cast<int64_t>(i));
  // The end is stable, and every part was closed.
  absl::StatusOr<bool> again = reader->Next(row);
  ASSERT_TRUE(again.ok());
  EXPECT_FALSE(*again);
  for (const auto& s : p.states) EXPECT_TRUE(s->destroyed);
}

TEST(ParallelRowReaderTest, NextEncodedGivesEachRowInEncodeRowsForm) {
  Parts p;
  p.Add({.first = 0, .rows = 3000, .padding = "a"});
  p.Add({.first = 3000, .rows = 3000, .padding = std::string(200, 'b')});
  auto reader = NewParallelRowReader(TestSchema(), std::move(p.parts), {.batch_rows = 100});
  std::vector<int64_t> ids;
  std::string_view encoded;
  while (true) {
    absl::StatusOr<bool> more = reader->NextEncoded(encoded);
    ASSERT_TRUE(more.ok()) << more.status();
    if (!*more) break;
    absl::StatusOr<Row> row = DecodeRow(encoded);
    ASSERT_TRUE(row.ok()) << row.status();
    ASSERT_EQ(row->size(), 2u);
    const int64_t id = (*row)[0].int_value();
    std::string expected;
    EncodeRow({Value::Int64(id), Value::String(id < 3000 ? "a" : std::string(200, 'b'))}, expected);
    ASSERT_EQ(encoded, expected) << id;
    ids.push_back(id);
  }
  std::sort(ids.begin(), ids.end());
  ASSERT_EQ(ids.size(), 6000u);
  for (size_t i = 0; i < ids.size(); ++i) ASSERT_EQ(ids[i], static_cast<int64_t>(i));
}

TEST(ParallelRowReaderTest, RowsAheadOfTheConsumerStayBounded) {
  constexpr size_t kBatch = 16;
  constexpr size_t kQueue = 4;
  constexpr int kParts = 3;
  Parts p;
  for (int i = 0; i < kParts; ++i) p.Add({.first = i * 1'000'000, .rows = 200'000});
  auto reader = NewParallelRowReader(TestSchema(), std::move(p.parts),
                                     {.batch_rows = kBatch, .queue_batches = kQueue});
  // Rows exist only in queued batches, one batch being filled per part and
  // the consumer's batch.
  const int64_t bound = static_cast<int64_t>((kQueue + kParts + 1) * kBatch);
  int64_t consumed = 0;
  int64_t max_ahead = 0;
  Row row;
  while (true) {
    absl::StatusOr<bool> more = reader->Next(row);
    ASSERT_TRUE(more.ok()) << more.status();
    if (!*more) break;
    ++consumed;
    max_ahead = std::max(max_ahead, p.Produced() - consumed);
    ASSERT_LE(p.Produced() - consumed, bound) << "after " << consumed << " rows";
  }
  EXPECT_EQ(consumed, 600'000);
  // The producers did run ahead (the bound was exercised, not trivially met).
  EXPECT_GT(max_ahead, static_cast<int64_t>(kBatch));
}

TEST(ParallelRowReaderTest, ByteLimitClosesBatchesOfLargeRows) {
  constexpr size_t kQueue = 2;
  Parts p;
  const std::string pad(64 * 1024, 'x');
  p.Add({.first = 0, .rows = 2000, .padding = pad});
  p.Add({.first = 2000, .rows = 2000, .padding = pad});
  // 1024 rows per batch would hold 64 MiB per batch; 256 KiB holds ~4 rows.
  auto reader = NewParallelRowReader(TestSchema(), std::move(p.parts),
                                     {.batch_bytes = 256 * 1024, .queue_batches = kQueue});
  const int64_t rows_per_batch = 256 / 64 + 1;
  const int64_t bound = (kQueue + 2 + 1) * rows_per_batch;
  int64_t consumed = 0;
  Row row;
  while (true) {
    absl::StatusOr<bool> more = reader->Next(row);
    ASSERT_TRUE(more.ok()) << more.status();
    if (!*more) break;
    ++consumed;
    ASSERT_EQ(row[1].text().size(), pad.size());
    ASSERT_LE(p.Produced() - consumed, bound) << "after " << consumed << " rows";
  }
  EXPECT_EQ(consumed, 4000);
}

TEST(ParallelRowReaderTest, AnErrorOfOnePartIsAnErrorNeverACleanEnd) {
  Parts p;
  p.Add({.first = 0, .rows = -1});  // endless: must be cancelled
  p.Add({.first = 1'000'000'000,
         .rows = 500,
         .end = absl::UnavailableError("part 2 lost its connection")});
  p.Add({.first = 2'000'000'000, .rows = 10});  // ends cleanly
  auto reader = NewParallelRowReader(TestSchema(), std::move(p.parts), {.batch_rows = 8});
  Row row;
  absl::StatusOr<bool> more;
  int64_t rows = 0;
  while ((more = reader->Next(row)).ok() && *more) ++rows;
  ASSERT_FALSE(more.ok()) << "clean end after " << rows << " rows";
  EXPECT_EQ(more.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(more.status().message(), HasSubstr("part 2 lost its connection"));
  // Sticky, and the endless part was stopped and closed.
  absl::StatusOr<bool> again = reader->Next(row);
  ASSERT_FALSE(again.ok());
  EXPECT_EQ(again.status(), more.status());
  EXPECT_TRUE(p.states[0]->destroyed);
  EXPECT_TRUE(p.states[1]->destroyed);
}

TEST(ParallelRowReaderTest, AnErrorAfterTheOtherPartsEndedIsStillAnError) {
  Parts p;
  p.Add({.first = 0, .rows = 5000});
  p.Add({.first = 5000, .rows = 5000, .end = absl::InvalidArgumentError("division by zero")});
  auto reader = NewParallelRowReader(TestSchema(), std::move(p.parts), {.batch_rows = 64});
  Row row;
  absl::StatusOr<bool> more;
  int64_t rows = 0;
  while ((more = reader->Next(row)).ok() && *more) ++rows;
  ASSERT_FALSE(more.ok()) << "clean end after " << rows << " rows";
  EXPECT_EQ(more.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_LT(rows, 10000);
}

TEST(ParallelRowReaderTest, DestroyingEarlyCancelsStalledAndRunningParts) {
  Parts p;
  p.Add({.first = 0, .rows = 3, .stall_at_end = true});  // blocked inside Next()
  p.Add({.first = 100, .rows = -1});                     // blocked on the full queue
  p.Add({.first = 200, .rows = 0, .stall_at_end = true});
  auto reader =
      NewParallelRowReader(TestSchema(), std::move(p.parts), {.batch_rows = 1, .queue_batches = 2});
  Row row;
  absl::StatusOr<bool> more = reader->Next(row);
  ASSERT_TRUE(more.ok() && *more) << more.status();
  reader.reset();  // must return: every part is cancelled and joined
  for (const auto& s : p.states) {
    EXPECT_TRUE(s->destroyed);
    std::lock_guard lock(s->mu);
    EXPECT_TRUE(s->cancelled);
  }
}

TEST(ParallelRowReaderTest, DestroyingBeforeReadingIsFine) {
  Parts p;
  p.Add({.first = 0, .rows = -1});
  p.Add({.first = 0, .rows = 0, .stall_at_end = true});
  auto reader = NewParallelRowReader(TestSchema(), std::move(p.parts));
  reader.reset();
  for (const auto& s : p.states) EXPECT_TRUE(s->destroyed);
}

}  // namespace
}  // namespace backflow
