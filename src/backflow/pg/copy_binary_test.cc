#include "backflow/pg/copy_binary.h"

#include <optional>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace backflow::pg {
namespace {

using Tuple = std::vector<std::optional<std::string>>;

void PutInt16(std::string& out, int16_t v) {
  out.push_back(static_cast<char>((v >> 8) & 0xff));
  out.push_back(static_cast<char>(v & 0xff));
}

void PutInt32(std::string& out, int32_t v) {
  for (int shift = 24; shift >= 0; shift -= 8)
    out.push_back(static_cast<char>((v >> shift) & 0xff));
}

std::string Header(std::string_view extension = "", uint32_t flags = 0) {
  std::string out("PGCOPY\n\377\r\n\0", 11);
  PutInt32(out, static_cast<int32_t>(flags));
  PutInt32(out, static_cast<int32_t>(extension.size()));
  out.append(extension);
  return out;
}

std::string EncodeTuple(const Tuple& tuple) {
  std::string out;
  PutInt16(out, static_cast<int16_t>(tuple.size()));
  for (const auto& field : tuple) {
    if (!field) {
      PutInt32(out, -1);
    } else {
      PutInt32(out, static_cast<int32_t>(field->size()));
      out.append(*field);
    }
  }
  return out;
}

std::string Trailer() {
  std::string out;
  PutInt16(out, -1);
  return out;
}

std::string Stream(const std::vector<Tuple>& tuples, std::string_view extension = "") {
  std::string out = Header(extension);
  for (const Tuple& t : tuples) out += EncodeTuple(t);
  return out + Trailer();
}

// Parses `stream` fed as the given chunks; the tuples, or the first error.
absl::StatusOr<std::vector<Tuple>> Parse(int columns, const std::vector<std::string>& chunks) {
  CopyBinaryTuples parser(columns);
  std::vector<CopyBinaryField> fields;
  std::vector<Tuple> out;
  for (const std::string& chunk : chunks) {
    parser.Feed(chunk);
    while (true) {
      absl::StatusOr<bool> got = parser.Next(fields);
      if (!got.ok()) return got.status();
      if (!*got) break;
      EXPECT_EQ(fields.size(), static_cast<size_t>(columns));
      Tuple t;
      for (const CopyBinaryField& f : fields) {
        t.push_back(f.null ? std::nullopt : std::optional<std::string>(std::string(f.bytes)));
      }
      out.push_back(std::move(t));
    }
  }
  if (absl::Status end = parser.Finish(); !end.ok()) return end;
  return out;
}

std::vector<std::string> SplitAt(const std::string& s, std::vector<size_t> cuts) {
  std::vector<std::string> chunks;
  size_t start = 0;
  for (size_t cut : cuts) {
    chunks.push_back(s.substr(start, cut - start));
    start = cut;
  }
  chunks.push_back(s.substr(start));
  return chunks;
}

const std::vector<Tuple>& Sample() {
  static const auto* tuples = new std::vector<Tuple>{
      {std::string("a"), std::nullopt, std::string("")},
      {std::string("\0\377\n\t\\", 5), std::string(300, 'x'), std::nullopt},
      {std::nullopt, std::nullopt, std::nullopt},
      {std::string(""), std::string(""), std::string("")},
      {std::string("last"), std::string("\xff\xff\xff\xff"), std::string("z")},
  };
  return *tuples;
}

TEST(CopyBinaryTest, ParsesWholeStreamInOneChunk) {
  auto parsed = Parse(3, {Stream(Sample())});
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(*parsed, Sample());
}

TEST(CopyBinaryTest, ParsesOneMessagePerTupleWithTheHeaderInTheFirst) {
  // What PostgreSQL sends: header + first tuple, one tuple per message, trailer.
  std::vector<std::string> chunks = {Header() + EncodeTuple(Sample()[0])};
  for (size_t i = 1; i < Sample().size(); ++i) chunks.push_back(EncodeTuple(Sample()[i]));
  chunks.push_back(Trailer());
  auto parsed = Parse(3, chunks);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(*parsed, Sample());
}

TEST(CopyBinaryTest, ParsesAStreamFedOneByteAtATime) {
  const std::string stream = Stream(Sample(), "ext");
  std::vector<std::string> chunks;
  for (char c : stream) chunks.emplace_back(1, c);
  auto parsed = Parse(3, chunks);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(*parsed, Sample());
}

TEST(CopyBinaryTest, ParsesEverySplitIntoTwoAndRandomSplits) {
  const std::string stream = Stream(Sample(), "extension bytes");
  for (size_t cut = 0; cut <= stream.size(); ++cut) {
    auto parsed = Parse(3, SplitAt(stream, {cut}));
    ASSERT_TRUE(parsed.ok()) << "cut " << cut << ": " << parsed.status();
    EXPECT_EQ(*parsed, Sample()) << "cut " << cut;
  }
  std::mt19937 rng(42);
  for (int round = 0; round < 500; ++round) {
    std::vector<size_t> cuts;
    std::uniform_int_distribution<size_t> pos(0, stream.size());
    int n = std::uniform_int_distribution<int>(1, 12)(rng);
    for (int i = 0; i < n; ++i) cuts.push_back(pos(rng));
    std::sort(cuts.begin(), cuts.end());
    auto parsed = Parse(3, SplitAt(stream, cuts));  // empty chunks included
    ASSERT_TRUE(parsed.ok()) << "round " << round << ": " << parsed.status();
    EXPECT_EQ(*parsed, Sample()) << "round " << round;
  }
}

TEST(CopyBinaryTest, ViewsPointIntoTheChunkUnlessTheTupleIsSplit) {
  const std::string stream = Stream({{std::string("abc")}});
  CopyBinaryTuples parser(1);
  std::vector<CopyBinaryField> fields;
  parser.Feed(stream);
  ASSERT_TRUE(*parser.Next(fields));
  EXPECT_GE(fields[0].bytes.data(), stream.data());
  EXPECT_LT(fields[0].bytes.data(), stream.data() + stream.size());
  EXPECT_FALSE(*parser.Next(fields));
  EXPECT_TRUE(parser.at_trailer());
  EXPECT_TRUE(parser.Finish().ok());
}

TEST(CopyBinaryTest, EmptyResultIsHeaderAndTrailer) {
  auto parsed = Parse(2, {Stream({})});
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_TRUE(parsed->empty());
}

TEST(CopyBinaryTest, ReportsTruncationAtEveryPoint) {
  const std::string stream = Stream(Sample(), "x");
  for (size_t end = 0; end < stream.size(); ++end) {
    auto parsed = Parse(3, {stream.substr(0, end)});
    ASSERT_FALSE(parsed.ok()) << "end " << end;
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kDataLoss) << "end " << end;
  }
  // A stream cut between tuples says it had no end marker; inside one, mid-row.
  const size_t after_header = Header("x").size();
  EXPECT_NE(Parse(3, {stream.substr(0, after_header)}).status().message().find("end-of-data"),
            std::string::npos);
  EXPECT_NE(Parse(3, {stream.substr(0, after_header + 5)}).status().message().find("middle"),
            std::string::npos);
}

TEST(CopyBinaryTest, RejectsABadSignature) {
  std::string stream = Stream(Sample());
  stream[3] = 'X';
  auto parsed = Parse(3, {stream});
  ASSERT_FALSE(parsed.ok());
  EXPECT_EQ(parsed.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(parsed.status().message().find("signature"), std::string::npos);
  // Detected as soon as the first bytes differ, before the header is whole.
  CopyBinaryTuples parser(3);
  std::vector<CopyBinaryField> fields;
  parser.Feed("PGCOPZ");
  EXPECT_FALSE(parser.Next(fields).ok());
  // A text COPY stream is not a binary one.
  EXPECT_FALSE(Parse(1, {"1\tabc\n"}).ok());
}

TEST(CopyBinaryTest, RefusesOids) {
  std::string stream = Header("", 1u << 16) + EncodeTuple({std::string("a")}) + Trailer();
  auto parsed = Parse(1, {stream});
  ASSERT_FALSE(parsed.ok());
  EXPECT_NE(parsed.status().message().find("OIDs"), std::string::npos);
  // Unknown critical flag bits too; the low (non-critical) bits are ignored.
  EXPECT_FALSE(Parse(1, {Header("", 1u << 20) + Trailer()}).ok());
  EXPECT_TRUE(Parse(1, {Header("", 1u) + Trailer()}).ok());
}

TEST(CopyBinaryTest, RejectsAFieldCountMismatch) {
  std::string stream = Header() + EncodeTuple({std::string("a"), std::string("b")}) + Trailer();
  auto parsed = Parse(3, {stream});
  ASSERT_FALSE(parsed.ok());
  EXPECT_EQ(parsed.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(parsed.status().message().find("a row of 2 fields for a query of 3 columns"),
            std::string::npos)
      << parsed.status();
}

TEST(CopyBinaryTest, RejectsImpossibleLengths) {
  std::string bad = Header();
  PutInt16(bad, 1);
  PutInt32(bad, -2);
  EXPECT_EQ(Parse(1, {bad + Trailer()}).status().code(), absl::StatusCode::kDataLoss);
  std::string huge = Header();
  PutInt16(huge, 1);
  PutInt32(huge, 0x40000000);  // past PostgreSQL's 1 GB limit
  auto parsed = Parse(1, {huge});
  ASSERT_FALSE(parsed.ok());
  EXPECT_NE(parsed.status().message().find("impossible length"), std::string::npos);
  std::string negative_extension("PGCOPY\n\377\r\n\0", 11);
  PutInt32(negative_extension, 0);
  PutInt32(negative_extension, -5);
  EXPECT_FALSE(Parse(1, {negative_extension}).ok());
}

TEST(CopyBinaryTest, LengthPastTheEndIsTruncation) {
  // A field announcing more bytes than the stream holds.
  std::string stream = Header();
  PutInt16(stream, 1);
  PutInt32(stream, 10);
  stream += "abc";
  auto parsed = Parse(1, {stream});
  ASSERT_FALSE(parsed.ok());
  EXPECT_NE(parsed.status().message().find("middle of a row"), std::string::npos);
}

TEST(CopyBinaryTest, RejectsDataAfterTheTrailerAndStaysFailed) {
  CopyBinaryTuples parser(1);
  std::vector<CopyBinaryField> fields;
  std::string stream = Stream({{std::string("a")}}) + EncodeTuple({std::string("b")});
  parser.Feed(stream);
  ASSERT_TRUE(*parser.Next(fields));
  absl::StatusOr<bool> got = parser.Next(fields);
  ASSERT_FALSE(got.ok());
  EXPECT_NE(got.status().message().find("follows its end-of-data marker"), std::string::npos);
  EXPECT_FALSE(parser.Next(fields).ok());  // sticky
  EXPECT_FALSE(parser.Finish().ok());
}

}  // namespace
}  // namespace backflow::pg
