#include "backflow/pg/copy_text.h"

#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace backflow::pg {
namespace {

std::string Decode(std::string_view field) {
  std::string scratch;
  return std::string(DecodeCopyTextField(field, scratch));
}

TEST(CopyTextTest, DecodesEveryEscape) {
  EXPECT_EQ(Decode("plain"), "plain");
  EXPECT_EQ(Decode(""), "");
  EXPECT_EQ(Decode(R"(a\\b)"), "a\\b");
  EXPECT_EQ(Decode(R"(\t\n\r\b\f\v)"), "\t\n\r\b\f\v");
  EXPECT_EQ(Decode(R"(\\N)"), "\\N");  // the text "\N", not NULL
  EXPECT_EQ(Decode(R"(\101\0\7x)"), std::string("A\0\ax", 4));
  EXPECT_EQ(Decode(R"(\1011)"), "A1");  // at most three octal digits
  EXPECT_EQ(Decode(R"(\377)"), "\xff");
  EXPECT_EQ(Decode(R"(\x41\x4a\xfF\x7g)"), "AJ\xff\x07g");
  EXPECT_EQ(Decode(R"(\x414)"), "A4");  // at most two hex digits
  EXPECT_EQ(Decode(R"(\xg)"), "xg");    // no digits: the letter itself
  EXPECT_EQ(Decode(R"(\q\.)"), "q.");   // any other character stands for itself
  EXPECT_EQ(Decode(R"(\x00ff)"), std::string("\0ff", 3));
  EXPECT_EQ(Decode(R"(\\x00ff)"), "\\x00ff");  // bytea hex output, escaped
  EXPECT_EQ(Decode("end\\"), "end\\");
  EXPECT_EQ(Decode(R"(héllo\tw)"), "héllo\tw");
}

TEST(CopyTextTest, ReusesScratchAndReturnsTheFieldWhenNothingIsEscaped) {
  std::string scratch;
  std::string_view field = "no escapes";
  EXPECT_EQ(DecodeCopyTextField(field, scratch).data(), field.data());
  EXPECT_EQ(DecodeCopyTextField(R"(a\tb)", scratch), "a\tb");
  EXPECT_EQ(DecodeCopyTextField(R"(c\nd)", scratch), "c\nd");
}

TEST(CopyTextTest, NullMarker) {
  EXPECT_TRUE(IsCopyTextNull("\\N"));
  EXPECT_FALSE(IsCopyTextNull("\\\\N"));
  EXPECT_FALSE(IsCopyTextNull("N"));
  EXPECT_FALSE(IsCopyTextNull(""));
}

TEST(CopyTextTest, SplitsFieldsAtRawTabs) {
  std::vector<std::string_view> fields;
  SplitCopyTextFields("a\tb\\tc\t\t\\N", fields);
  ASSERT_EQ(fields.size(), 4u);
  EXPECT_EQ(fields[0], "a");
  EXPECT_EQ(fields[1], "b\\tc");
  EXPECT_EQ(fields[2], "");
  EXPECT_EQ(fields[3], "\\N");
  SplitCopyTextFields("", fields);
  ASSERT_EQ(fields.size(), 1u);
  EXPECT_EQ(fields[0], "");
  SplitCopyTextFields("x\t", fields);
  ASSERT_EQ(fields.size(), 2u);
  EXPECT_EQ(fields[1], "");
}

std::vector<std::string> ReadLines(const std::vector<std::string>& chunks, bool* partial) {
  CopyTextLines lines;
  std::vector<std::string> out;
  std::string_view line;
  for (const std::string& chunk : chunks) {
    lines.Feed(chunk);
    while (lines.NextLine(line)) out.emplace_back(line);
  }
  *partial = lines.has_partial();
  return out;
}

TEST(CopyTextTest, OneRowPerChunk) {
  bool partial = true;
  EXPECT_EQ(ReadLines({"1\ta\n", "2\tb\n", "\n"}, &partial),
            (std::vector<std::string>{"1\ta", "2\tb", ""}));
  EXPECT_FALSE(partial);
}

TEST(CopyTextTest, RowsSplitAcrossChunksAndSeveralRowsPerChunk) {
  bool partial = true;
  EXPECT_EQ(ReadLines({"1\ta", "bc\n2\t", "", "x\n3\ty\n4", "\n"}, &partial),
            (std::vector<std::string>{"1\tabc", "2\tx", "3\ty", "4"}));
  EXPECT_FALSE(partial);
  EXPECT_EQ(ReadLines({"1\n2"}, &partial), (std::vector<std::string>{"1"}));
  EXPECT_TRUE(partial);
}

TEST(CopyTextTest, AnyChunkingGivesTheSameRows) {
  std::string stream;
  std::vector<std::string> expected;
  for (int i = 0; i < 200; ++i) {
    std::string row = std::to_string(i) + "\t" + std::string(i % 17, 'x') + "\\n\t\\N";
    expected.push_back(row);
    stream += row + "\n";
  }
  std::mt19937 rng(42);
  for (int round = 0; round < 50; ++round) {
    std::vector<std::string> chunks;
    size_t pos = 0;
    while (pos < stream.size()) {
      size_t n = std::uniform_int_distribution<size_t>(0, 40)(rng);
      chunks.push_back(stream.substr(pos, n));
      pos += n;
    }
    bool partial = true;
    ASSERT_EQ(ReadLines(chunks, &partial), expected) << "round " << round;
    EXPECT_FALSE(partial);
  }
}

}  // namespace
}  // namespace backflow::pg
