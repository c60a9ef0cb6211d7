// Binary and text COPY give the same values (and so the same fingerprints)
// for every type the binary decoder supports, against the real server; and the
// source reads models in either format with the same behaviour.
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "backflow/mapping/mapper.h"
#include "backflow/pg/decode_binary.h"
#include "backflow/pg/testing/test_server.h"
#include "backflow/pg/types.h"
#include "backflow/sources/postgres/postgres_internal.h"
#include "backflow/sources/postgres/postgres_source.h"
#include "fmt/format.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace backflow {
namespace {

using ::testing::HasSubstr;

std::string Show(const Value& v) {
  if (v.type() == ValueType::kDouble) {
    return fmt::format("double:{} ({:#x})", v.double_value(),
                       std::bit_cast<uint64_t>(v.double_value()));
  }
  return fmt::format("{}:{:?}", ValueTypeName(v.type()), v.ToString());
}

std::string Encoded(const Row& row) {
  std::string out;
  EncodeRow(row, out);
  return out;
}

class CopyFormatTest : public pg::testing::PostgresTest {
 protected:
  // A reader of `sql` on the source's own COPY path in `format`.
  absl::StatusOr<std::unique_ptr<RowReader>> StartReader(const std::string& sql,
                                                         PostgresCopyFormat format,
                                                         Schema* schema = nullptr) {
    auto conn =
        pg::Connection::Open(postgres_internal::ConnectOptionsFor(server().url, server().password));
    if (!conn.ok()) return conn.status();
    auto described = postgres_internal::Describe(**conn, sql);
    if (!described.ok()) return described.status();
    if (schema != nullptr) *schema = described->schema;
    return postgres_internal::StartCopy(std::move(*conn), sql, *described, format);
  }

  // Every row of `sql` read through that path.
  absl::StatusOr<std::vector<Row>> ReadCopy(const std::string& sql, PostgresCopyFormat format,
                                            Schema* schema = nullptr) {
    auto reader = StartReader(sql, format, schema);
    if (!reader.ok()) return reader.status();
    std::vector<Row> rows;
    Row row;
    while (true) {
      absl::StatusOr<bool> more = (*reader)->Next(row);
      if (!more.ok()) return more.status();
      if (!*more) break;
      rows.push_back(row);
    }
    return rows;
  }

  // The same through the reader's NextEncoded(): each row's bytes.
  absl::StatusOr<std::vector<std::string>> ReadCopyEncoded(const std::string& sql,
                                                           PostgresCopyFormat format) {
    auto reader = StartReader(sql, format);
    if (!reader.ok()) return reader.status();
    std::vector<std::string> rows;
    std::string_view row;
    while (true) {
      absl::StatusOr<bool> more = (*reader)->NextEncoded(row);
      if (!more.ok()) return more.status();
      if (!*more) break;
      rows.emplace_back(row);
    }
    return rows;
  }

  // Creates a table of `type` values: the edge `values` (SQL expressions) in
  // order, then `random` (an SQL expression, may use g) for g in 1..count.
  std::string MakeTable(const std::string& type, const std::vector<std::string>& values,
                        const std::string& random, int count) {
    std::string table = pg::testing::UniqueName("copyfmt");
    ExecOrFail(fmt::format("CREATE TABLE {} (id serial PRIMARY KEY, v {})", table, type));
    for (const std::string& value : values) {
      ExecOrFail(fmt::format("INSERT INTO {} (v) VALUES (({})::{})", table, value, type));
    }
    // setseed and the INSERT in one statement: the same values every run.
    ExecOrFail(fmt::format(
        "WITH s AS (SELECT setseed(0.25)) INSERT INTO {0} (v) SELECT ({1})::{2} FROM s, "
        "generate_series(1, {3}) g",
        table, random, type, count));
    return table;
  }

  // Reads `table` with text and binary COPY and expects identical rows: same
  // Value (doubles bit for bit), same EncodeRow bytes, same payload
  // fingerprint as the engine computes it (Mapper::PayloadFingerprint); and
  // the binary reader's NextEncoded() writes those same bytes.
  void ExpectSameInBothFormats(const std::string& table, size_t expected_rows) {
    const std::string sql = fmt::format("SELECT id, v FROM {} ORDER BY id", table);
    Schema schema;
    auto text = ReadCopy(sql, PostgresCopyFormat::kText, &schema);
    ASSERT_TRUE(text.ok()) << text.status();
    auto binary = ReadCopy(sql, PostgresCopyFormat::kBinary);
    ASSERT_TRUE(binary.ok()) << binary.status();
    auto binary_encoded = ReadCopyEncoded(sql, PostgresCopyFormat::kBinary);
    ASSERT_TRUE(binary_encoded.ok()) << binary_encoded.status();
    ASSERT_EQ(text->size(), expected_rows);
    ASSERT_EQ(binary->size(), text->size());
    ASSERT_EQ(binary_encoded->size(), text->size());

    ActionSpec action;
    action.allows_extra_fields = true;
    auto mapper =
        Mapper::Create("m", "model", {{"id", "id"}, {"value", "v"}}, action, schema, "id");
    ASSERT_TRUE(mapper.ok()) << mapper.status();
    Row text_payload;
    Row binary_payload;
    int mismatches = 0;
    for (size_t i = 0; i < text->size() && mismatches < 10; ++i) {
      const Row& t = (*text)[i];
      const Row& b = (*binary)[i];
      ASSERT_EQ(t.size(), 2u);
      ASSERT_EQ(b.size(), 2u);
      ASSERT_TRUE(mapper->Map(t, text_payload).ok());
      ASSERT_TRUE(mapper->Map(b, binary_payload).ok());
      if (Encoded(t) != Encoded(b) || Encoded(t) != (*binary_encoded)[i] ||
          mapper->PayloadFingerprint(text_payload) != mapper->PayloadFingerprint(binary_payload)) {
        ++mismatches;
        ADD_FAILURE() << table << " id " << t[0].ToString() << ": text " << Show(t[1]) << " binary "
                      << Show(b[1]);
      }
    }
  }

  void CheckType(const std::string& type, const std::vector<std::string>& values,
                 const std::string& random, int count = 3000) {
    SCOPED_TRACE(type);
    std::vector<std::string> with_null = values;
    with_null.push_back("NULL");
    std::string table = MakeTable(type, with_null, random, count);
    ExpectSameInBothFormats(table, with_null.size() + count);
  }
};

TEST_F(CopyFormatTest, Bool) { CheckType("boolean", {"true", "false"}, "random() < 0.5"); }

TEST_F(CopyFormatTest, Integers) {
  CheckType("int2", {"0", "1", "-1", "-32768", "32767"}, "floor(random() * 65536) - 32768");
  CheckType("int4", {"0", "-1", "-2147483648", "2147483647"},
            "floor(random() * 4294967296) - 2147483648");
  CheckType("int8", {"0", "-1", "-9223372036854775808", "9223372036854775807", "4294967296"},
            "floor((random() - 0.5) * 1.8e19)");
}

TEST_F(CopyFormatTest, Float8) {
  CheckType("float8",
            {"0", "'-0'", "0.1", "-0.1", "1e308", "-1e308", "1.7976931348623157e308",
             "2.2250738585072014e-308", "5e-324", "-5e-324", "4.9406564584124654e-324", "'NaN'",
             "'Infinity'", "'-Infinity'", "1.0/3", "123456789012345678", "0.30000000000000004"},
            "(random() - 0.5) * power(10::float8, floor(random() * 600) - 300)");
  CheckType("float8", {}, "random()");
}

TEST_F(CopyFormatTest, Float4) {
  CheckType("float4",
            {"0", "'-0'", "0.1", "-0.1", "3.4e38", "-3.4e38", "3.4028235e38", "1.17549435e-38",
             "'1e-45'", "'1.4e-45'", "'-1e-45'", "'NaN'", "'Infinity'", "'-Infinity'", "1.0/3",
             "16777217", "0.3", "1e10", "123456.789"},
            "((random() - 0.5) * power(10::float8, floor(random() * 70) - 35))");
  CheckType("float4", {}, "random()");
  // Large integers and halves: many floats whose shortest form would be an
  // interval bound, which PostgreSQL never prints.
  CheckType("float4", {"46597128", "60932512", "-3102960100"}, "floor(random() * 2e9) - 1e9");
  CheckType("float4", {}, "(floor(random() * 2e7) + 0.5) * power(2::float8, floor(random() * 40))");
}

TEST_F(CopyFormatTest, Numeric) {
  CheckType("numeric",
            {"0",
             "0.0000",
             "-0.5",
             "0.5",
             "1e-20",
             "'1e-20'",
             "1.10",
             "1.100000",
             "100",
             "10000",
             "10000.0001",
             "99999999",
             "-0.0001",
             "0.00010",
             "1e100",
             "-1e100",
             "123456789012345678901234567890.123456789012345678901234567890",
             "'1e-130'::numeric",
             "2::numeric ^ 200",
             "(2::numeric ^ 200) / 3",
             "'NaN'",
             "'Infinity'",
             "'-Infinity'",
             "-0.0",
             "0.000000001",
             "9999.9999",
             "-10000"},
            "round(((random() - 0.5) * power(10::float8, floor(random() * 40) - 15))::numeric, "
            "floor(random() * 25)::int)");
  CheckType("numeric(12,2)", {"0", "-0.5", "1234567890.12", "0.1"}, "(random() - 0.5) * 1e10");
  CheckType("numeric", {},
            "(random() * 1e18)::numeric * (random() * 1e18)::numeric / "
            "(1 + floor(random() * 1000))::numeric");
}

TEST_F(CopyFormatTest, Dates) {
  CheckType("date",
            {"'2000-01-01'", "'1999-12-31'", "'1970-01-01'", "'2000-02-29'", "'1900-02-28'",
             "'0001-01-01'", "'0001-12-31 BC'", "'0044-03-15 BC'", "'4714-11-24 BC'",
             "'9999-12-31'", "'10000-01-01'", "'5874897-12-31'", "'infinity'", "'-infinity'"},
            "date '2000-01-01' + (floor(random() * 6000000) - 2400000)::int");
}

TEST_F(CopyFormatTest, Timestamps) {
  const std::vector<std::string> edges = {"'2024-01-02 03:04:05'",
                                          "'2024-01-02 03:04:05.5'",
                                          "'2024-01-02 03:04:05.123456'",
                                          "'2024-01-02 03:04:05.000001'",
                                          "'2024-01-02 03:04:05.100000'",
                                          "'1999-12-31 23:59:59.999999'",
                                          "'2000-01-01 00:00:00'",
                                          "'1970-01-01 00:00:00'",
                                          "'1969-12-31 23:59:59.5'",
                                          "'1900-01-01 00:00:00.1'",
                                          "'0001-01-01 00:00:00'",
                                          "'0001-12-31 23:59:59.999999 BC'",
                                          "'0044-03-15 12:00:00 BC'",
                                          "'4713-01-01 00:00:00 BC'",
                                          "'9999-12-31 23:59:59.999999'",
                                          "'10000-01-01 00:00:00'",
                                          "'294276-12-31 23:59:59.999999'",
                                          "'infinity'",
                                          "'-infinity'"};
  const std::string random =
      "{} '2000-01-01' + floor(random() * 5e17 - 2e17) * interval '1 microsecond'";
  CheckType("timestamp", edges, fmt::format(fmt::runtime(random), "timestamp"));
  CheckType("timestamptz", edges, fmt::format(fmt::runtime(random), "timestamptz"));
  CheckType("timestamptz", {},
            "timestamptz '2024-01-01 00:00:00+00' + random() * interval '1000 days'");
  CheckType("timestamp(3)", {"'2024-01-02 03:04:05.1239'"},
            "timestamp '2024-01-01' + random() * interval '1000 days'");
}

TEST_F(CopyFormatTest, Json) {
  const std::vector<std::string> edges = {
      R"('{"a": 1,  "b" : [1, 2, {"c": "x y"}]}')",
      R"('  { }  ')",
      R"('[]')",
      R"('null')",
      R"('1.50')",
      R"('"é unicode 日本 \u00e9 \t tab"')",
      R"('{"k": "line\nbreak", "q": "quote \" and \\ backslash"}')",
      R"('{"dup": 1, "dup": 2}')",
      R"('[1e400, -0, 0.10]')"};
  const std::string random =
      R"(('{ "k" : "' || md5(g::text) || '", "n": ' || random() || ', "a": [ ' || g ||
          ', "é' || g || '\t", null ] }'))";
  CheckType("json", edges, random);
  CheckType("jsonb", edges, random);
}

TEST_F(CopyFormatTest, TextTypes) {
  const std::vector<std::string> edges = {"''",
                                          "'plain'",
                                          R"(E'tab\there\nnewline\\backslash\r')",
                                          "'\\N'",
                                          "'héllo 日本 🙂'",
                                          R"(E'\x01\x7f')",
                                          "'  padded  '"};
  CheckType("text", edges,
            "md5(random()::text) || E'\\t' || repeat(chr(1 + floor(random() * 55000)::int), "
            "floor(random() * 5)::int) || E'\\\\' || E'\\n'");
  CheckType("varchar(20)", edges, "left(md5(random()::text), floor(random() * 20)::int)");
  CheckType("char(8)", {"''", "'ab'", "'héllo'", "'12345678'"},
            "left(md5(random()::text), floor(random() * 8)::int)");
  CheckType("name", {"''", "'a name'", "'héllo'"}, "md5(random()::text)");
}

TEST_F(CopyFormatTest, UuidAndBytea) {
  CheckType("uuid",
            {"'00000000-0000-0000-0000-000000000000'", "'FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF'",
             "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'"},
            "md5(random()::text)::uuid");
  CheckType("bytea", {R"('\x')", R"('\x00')", R"('\x00ff5c0a0900')", "'abc'"},
            "decode(md5(random()::text) || '00' || md5(g::text), 'hex')");
}

TEST_F(CopyFormatTest, DomainsOverSupportedTypesAreReadInBinary) {
  const std::string domain = pg::testing::UniqueName("copyfmt_dom");
  ExecOrFail(fmt::format("CREATE DOMAIN {} AS numeric(10,3) CHECK (VALUE > -1000)", domain));
  CheckType(domain, {"0", "1.5", "-999.999"}, "random() * 1000");
}

TEST_F(CopyFormatTest, BinaryRejectsAColumnWithoutADecoderNamingIt) {
  auto read = ReadCopy("SELECT 1 AS a, ARRAY[1, 2] AS arr", PostgresCopyFormat::kBinary);
  ASSERT_FALSE(read.ok());
  EXPECT_EQ(read.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(read.status().message(), HasSubstr("\"arr\""));
  EXPECT_THAT(read.status().message(), HasSubstr("integer[]"));
  EXPECT_THAT(read.status().message(), HasSubstr("copy_format: auto"));
}

// The source end to end, per copy_format.
class CopyFormatSourceTest : public CopyFormatTest,
                             public ::testing::WithParamInterface<PostgresCopyFormat> {
 protected:
  std::unique_ptr<Source> MakeSource(PostgresCopyFormat format, int parallel = 1,
                                     const std::string& app = "") const {
    PostgresSourceOptions options;
    options.copy_format = format;
    options.parallel_connections = parallel;
    std::string url = app.empty() ? server().url : server().UrlWith("application_name=" + app);
    return NewPostgresSource(url, server().password, std::move(options));
  }

  // Every row, encoded (EncodeRow), sorted: parallel reads have no order.
  // Read twice, through Next() and through NextEncoded(), which must agree.
  std::vector<std::string> ReadEncoded(Source& source, const std::string& sql,
                                       const std::string& key) {
    std::vector<std::string> rows, direct;
    for (bool encoded : {false, true}) {
      auto reader = key.empty() ? source.Query(sql) : source.Query(sql, QueryOptions{key});
      EXPECT_TRUE(reader.ok()) << reader.status();
      if (!reader.ok()) return rows;
      Row row;
      std::string_view bytes;
      while (true) {
        absl::StatusOr<bool> more = encoded ? (*reader)->NextEncoded(bytes) : (*reader)->Next(row);
        EXPECT_TRUE(more.ok()) << more.status();
        if (!more.ok() || !*more) break;
        if (encoded) {
          direct.emplace_back(bytes);
        } else {
          rows.push_back(Encoded(row));
        }
      }
    }
    std::sort(rows.begin(), rows.end());
    std::sort(direct.begin(), direct.end());
    EXPECT_TRUE(rows == direct) << "NextEncoded() and Next() read different rows";
    return rows;
  }

  std::string MakeMixedTable() {
    std::string table = pg::testing::UniqueName("copyfmt_src");
    ExecOrFail(fmt::format(R"sql(
      CREATE TABLE {0} AS
      SELECT g::int8 AS id, md5(g::text) AS name, 'user' || g || '@example.com' AS email,
             (g % 100)::int4 AS age, timestamptz '2024-01-01' + g * interval '1.5 seconds' AS ts,
             g % 3 = 0 AS active, (g * 1.25)::numeric(12,2) AS balance,
             CASE WHEN g % 7 = 0 THEN NULL ELSE g * 0.1 END::float8 AS score,
             jsonb_build_object('g', g, 's', 'x y') AS doc
      FROM generate_series(1, 20000) g)sql",
                           table));
    return table;
  }
};

std::string FormatName(const ::testing::TestParamInfo<PostgresCopyFormat>& info) {
  switch (info.param) {
    case PostgresCopyFormat::kAuto:
      return "Auto";
    case PostgresCopyFormat::kText:
      return "Text";
    case PostgresCopyFormat::kBinary:
      return "Binary";
  }
  return "Unknown";
}

INSTANTIATE_TEST_SUITE_P(EveryFormat, CopyFormatSourceTest,
                         ::testing::Values(PostgresCopyFormat::kAuto, PostgresCopyFormat::kText,
                                           PostgresCopyFormat::kBinary),
                         FormatName);

TEST_P(CopyFormatSourceTest, SameRowsAsTextOverOneAndTwoConnections) {
  const std::string table = MakeMixedTable();
  const std::string sql = fmt::format("SELECT * FROM {}", table);
  auto text = MakeSource(PostgresCopyFormat::kText);
  const std::vector<std::string> want = ReadEncoded(*text, sql, "");
  ASSERT_EQ(want.size(), 20000u);
  auto one = MakeSource(GetParam());
  EXPECT_EQ(ReadEncoded(*one, sql, ""), want);      // Query(sql)
  EXPECT_EQ(ReadEncoded(*one, sql, "id"), want);    // read-ahead
  EXPECT_EQ(ReadEncoded(*one, sql, "name"), want);  // read-ahead (not split)
  auto two = MakeSource(GetParam(), 2);
  EXPECT_EQ(ReadEncoded(*two, sql, "id"), want);    // integer ranges
  EXPECT_EQ(ReadEncoded(*two, sql, "name"), want);  // text hash
}

TEST_P(CopyFormatSourceTest, ColumnsWithoutABinaryDecoderAreReadInText) {
  const std::string sql =
      "SELECT g AS id, ARRAY[g, g + 1] AS arr, make_interval(hours => g) AS iv, "
      "time '12:00' + g * interval '1 minute' AS t, g * 0.5 AS half "
      "FROM generate_series(1, 500) g";
  auto source = MakeSource(GetParam());
  auto reader = source->Query(sql);
  if (GetParam() == PostgresCopyFormat::kBinary) {
    ASSERT_FALSE(reader.ok());
    EXPECT_EQ(reader.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(reader.status().message(), HasSubstr("\"arr\""));
    return;
  }
  ASSERT_TRUE(reader.ok()) << reader.status();
  Row row;
  ASSERT_TRUE(*(*reader)->Next(row));
  EXPECT_EQ(row[0], Value::Int64(1));
  EXPECT_EQ(row[1], Value::String("{1,2}"));
  EXPECT_EQ(row[2], Value::String("PT1H"));
  EXPECT_EQ(row[3], Value::String("12:01:00"));
  EXPECT_EQ(row[4], Value::Text(ValueType::kDecimal, "0.5"));
  auto text = MakeSource(PostgresCopyFormat::kText);
  EXPECT_EQ(ReadEncoded(*source, sql, ""), ReadEncoded(*text, sql, ""));
  auto two = MakeSource(GetParam(), 2);
  EXPECT_EQ(ReadEncoded(*two, sql, "id"), ReadEncoded(*text, sql, ""));
}

TEST_P(CopyFormatSourceTest, ErrorAfterRowsIsAnErrorNotACleanEnd) {
  for (int parallel : {1, 2}) {
    SCOPED_TRACE(parallel);
    auto reader = MakeSource(GetParam(), parallel)
                      ->Query("SELECT g, 1 / (g - 5000) AS q FROM generate_series(1, 10000) g",
                              QueryOptions{"g"});
    ASSERT_TRUE(reader.ok()) << reader.status();
    Row row;
    int rows = 0;
    absl::StatusOr<bool> more;
    while ((more = (*reader)->Next(row)).ok() && *more) ++rows;
    EXPECT_LT(rows, 10000);
    ASSERT_FALSE(more.ok());
    EXPECT_EQ(more.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(more.status().message(), HasSubstr("division by zero"));
    EXPECT_FALSE((*reader)->Next(row).ok());  // sticky

    // The same through NextEncoded().
    reader = MakeSource(GetParam(), parallel)
                 ->Query("SELECT g, 1 / (g - 5000) AS q FROM generate_series(1, 10000) g",
                         QueryOptions{"g"});
    ASSERT_TRUE(reader.ok()) << reader.status();
    std::string_view bytes;
    rows = 0;
    while ((more = (*reader)->NextEncoded(bytes)).ok() && *more) ++rows;
    EXPECT_LT(rows, 10000);
    ASSERT_FALSE(more.ok());
    EXPECT_THAT(more.status().message(), HasSubstr("division by zero"));
    EXPECT_FALSE((*reader)->NextEncoded(bytes).ok());
  }
}

TEST_P(CopyFormatSourceTest, AbandoningAReaderMidStreamCancelsTheQuery) {
  const std::string app = pg::testing::UniqueName("copyfmt_drop");
  auto reader = MakeSource(GetParam(), 1, app)
                    ->Query("SELECT g, md5(g::text) FROM generate_series(1, 10000000) g");
  ASSERT_TRUE(reader.ok()) << reader.status();
  Row row;
  for (int i = 0; i < 100; ++i) ASSERT_TRUE(*(*reader)->Next(row));
  EXPECT_EQ(row[0], Value::Int64(100));
  reader->reset();  // cancels; must not hang
  EXPECT_EQ(Backends(app), 0) << "the abandoned query's backend is still there";
}

TEST(CopyFormatDefinitionTest, CopyFormatIsAutoTextOrBinaryDefaultingToAuto) {
  SourceDefinition def = PostgresSourceDefinition();
  const SettingSpec* format = FindSetting(def.settings, "copy_format");
  ASSERT_NE(format, nullptr);
  EXPECT_EQ(format->type, SettingType::kEnum);
  EXPECT_EQ(format->default_value, "auto");
  EXPECT_EQ(format->allowed_values, (std::vector<std::string>{"auto", "text", "binary"}));
  const nlohmann::json url = "postgresql://x@127.0.0.1/db";
  for (const char* value : {"auto", "text", "binary"}) {
    nlohmann::json settings = {{"url", url}, {"copy_format", value}};
    EXPECT_TRUE(CheckSettings(def.settings, settings).empty()) << value;
    EXPECT_TRUE(def.create(settings, ConnectorEnv{}).ok()) << value;
  }
  nlohmann::json csv = {{"url", url}, {"copy_format", "csv"}};
  EXPECT_EQ(CheckSettings(def.settings, csv).size(), 1u);
  EXPECT_FALSE(def.create(csv, ConnectorEnv{}).ok());
}

// DecodeBinary's own checks, without a server.
TEST(DecodeBinaryTest, RejectsMalformedValues) {
  EXPECT_EQ(pg::DecodeBinary(pg::kInt4Oid, "abc").status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(pg::DecodeBinary(pg::kInt8Oid, "1234").status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(pg::DecodeBinary(pg::kUuidOid, "short").status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(pg::DecodeBinary(pg::kJsonbOid, std::string("\x02{}", 3)).status().code(),
            absl::StatusCode::kDataLoss);
  // numeric: 1 digit announced, none sent; a digit above 9999; a bad sign.
  EXPECT_FALSE(pg::DecodeBinary(pg::kNumericOid, std::string("\0\1\0\0\0\0\0\0", 8)).ok());
  EXPECT_FALSE(pg::DecodeBinary(pg::kNumericOid, std::string("\0\1\0\0\0\0\0\0\x27\x10", 10)).ok());
  EXPECT_FALSE(pg::DecodeBinary(pg::kNumericOid, std::string("\0\0\0\0\x12\x34\0\0", 8)).ok());
  EXPECT_EQ(pg::DecodeBinary(1007, "x").status().code(), absl::StatusCode::kInternal);
  EXPECT_FALSE(pg::HasBinaryDecoder(1007));
  EXPECT_TRUE(pg::HasBinaryDecoder(pg::kTimestamptzOid));
}

TEST(DecodeBinaryTest, DecodesHandBuiltValues) {
  // numeric 1.10: ndigits 2, weight 0, sign +, dscale 2, digits 1, 1000.
  auto num = pg::DecodeBinary(pg::kNumericOid, std::string("\0\2\0\0\0\0\0\2\0\1\x03\xe8", 12));
  ASSERT_TRUE(num.ok()) << num.status();
  EXPECT_EQ(*num, Value::Text(ValueType::kDecimal, "1.10"));
  // numeric -0.00012 (weight -1, digit 1 then 2000, dscale 5).
  auto small =
      pg::DecodeBinary(pg::kNumericOid, std::string("\0\2\xff\xff\x40\0\0\5\0\1\x07\xd0", 12));
  ASSERT_TRUE(small.ok()) << small.status();
  EXPECT_EQ(*small, Value::Text(ValueType::kDecimal, "-0.00012"));
  // timestamptz 0 = 2000-01-01 00:00:00 UTC; date -1 = 1999-12-31.
  EXPECT_EQ(*pg::DecodeBinary(pg::kTimestamptzOid, std::string(8, '\0')),
            Value::Text(ValueType::kTimestamp, "2000-01-01T00:00:00Z"));
  EXPECT_EQ(*pg::DecodeBinary(pg::kDateOid, "\xff\xff\xff\xff"),
            Value::Text(ValueType::kDate, "1999-12-31"));
  // float4 0.1 (0x3dcccccd) is the double 0.1, as its text "0.1" parses.
  EXPECT_EQ(*pg::DecodeBinary(pg::kFloat4Oid, "\x3d\xcc\xcc\xcd"), Value::Double(0.1));
}

// AppendBinaryEncoded writes what encoding DecodeBinary's value writes, and
// refuses what DecodeBinary refuses.
TEST(DecodeBinaryTest, AppendingEncodedGivesTheDecodedValuesEncoding) {
  const std::vector<std::pair<Oid, std::string>> cells = {
      {pg::kBoolOid, std::string("\0", 1)},
      {pg::kBoolOid, std::string("\1", 1)},
      {pg::kInt2Oid, "\xff\xfe"},
      {pg::kInt4Oid, std::string("\x80\0\0\0", 4)},
      {pg::kInt4Oid, std::string("\0\0\0\x07", 4)},
      {pg::kInt8Oid, std::string("\0\0\0\0\0\0\0\x2a", 8)},
      {pg::kInt8Oid, "\xff\xff\xff\xff\xff\xff\xff\xff"},
      {pg::kTextOid, "a text longer than any small-string buffer"},
      {pg::kVarcharOid, ""},
      {pg::kBpcharOid, "ab  "},
      {pg::kNameOid, "pg_class"},
      {pg::kByteaOid, std::string("\0\1\2", 3)},
      {pg::kNumericOid, std::string("\0\2\0\0\0\0\0\2\0\1\x03\xe8", 12)},
      {pg::kTimestamptzOid, std::string(8, '\0')},
      {pg::kTimestampOid, std::string("\0\0\0\0\0\0\x30\x39", 8)},    // 12345 us
      {pg::kTimestamptzOid, "\xff\xff\xff\xff\xff\xff\xff\xff"},      // -1 us
      {pg::kTimestampOid, std::string("\x80\0\0\0\0\0\0\0", 8)},      // -infinity
      {pg::kTimestamptzOid, "\x7f\xff\xff\xff\xff\xff\xff\xff"},      // infinity
      {pg::kTimestamptzOid, std::string("\xff\x1f\0\0\0\0\0\0", 8)},  // a year BC
      {pg::kDateOid, "\xff\xff\xff\xff"},
      {pg::kFloat8Oid, std::string("\x3f\xf0\0\0\0\0\0\0", 8)},
      {pg::kFloat4Oid, "\x3d\xcc\xcc\xcd"},
      {pg::kUuidOid, std::string(16, '\x11')},
      {pg::kJsonbOid, "\x01{\"a\": 1}"},
  };
  Value scratch = Value::String(std::string(100, 'x'));
  for (const auto& [oid, bytes] : cells) {
    absl::StatusOr<Value> expected = pg::DecodeBinary(oid, bytes);
    ASSERT_TRUE(expected.ok()) << oid << ": " << expected.status();
    std::string want;
    EncodeRow({Value::Int64(1), *expected}, want);
    RowEncoder got;
    got.Begin(2);
    got.AppendInt(ValueType::kInt64, 1);
    ASSERT_TRUE(pg::AppendBinaryEncoded(oid, bytes, scratch, got).ok()) << oid;
    EXPECT_EQ(got.row(), want) << "oid " << oid;
  }
  RowEncoder out;
  for (Oid oid : {pg::kBoolOid, pg::kInt2Oid, pg::kInt4Oid, pg::kInt8Oid, pg::kNumericOid}) {
    absl::Status status = pg::AppendBinaryEncoded(oid, "abc", scratch, out);
    EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss) << oid;
    EXPECT_EQ(status, pg::DecodeBinary(oid, "abc").status()) << oid;
  }
}

// Decoding into a Value that held anything gives what DecodeBinary gives
// (the source refills one Row this way, row after row).
TEST(DecodeBinaryTest, DecodingIntoAUsedValueGivesTheSameValue) {
  const std::vector<std::pair<Oid, std::string>> cells = {
      {pg::kNumericOid, std::string("\0\2\0\0\0\0\0\2\0\1\x03\xe8", 12)},
      {pg::kNumericOid, std::string("\0\0\0\0\xc0\0\0\0", 8)},  // NaN: a string
      {pg::kTimestamptzOid, std::string(8, '\0')},
      {pg::kTimestampOid, std::string("\x80\0\0\0\0\0\0\0", 8)},  // -infinity
      {pg::kDateOid, "\xff\xff\xff\xff"},
      {pg::kDateOid, std::string("\x7f\xff\xff\xff", 4)},  // infinity
      {pg::kTextOid, "a text longer than any small-string buffer"},
      {pg::kTextOid, ""},
      {pg::kInt8Oid, std::string("\0\0\0\0\0\0\0\x2a", 8)},
      {pg::kBoolOid, std::string("\1", 1)},
      {pg::kFloat8Oid, std::string("\x3f\xf0\0\0\0\0\0\0", 8)},
      {pg::kJsonbOid, "\x01{\"a\": 1}"},
      {pg::kByteaOid, std::string("\0\1\2", 3)},
  };
  const std::vector<Value> before = {Value(), Value::String(std::string(100, 'x')),
                                     Value::Int64(-5), Value::Double(2.5),
                                     Value::Text(ValueType::kDecimal, "123.456")};
  for (const auto& [oid, bytes] : cells) {
    absl::StatusOr<Value> expected = pg::DecodeBinary(oid, bytes);
    ASSERT_TRUE(expected.ok()) << oid << ": " << expected.status();
    for (const Value& held : before) {
      Value value = held;
      ASSERT_TRUE(pg::DecodeBinaryInto(oid, bytes, value).ok());
      EXPECT_EQ(value, *expected) << "oid " << oid << " into " << held.ToString();
      EXPECT_EQ(value.type(), expected->type());
      std::string a, b;
      EncodeRow({value}, a);
      EncodeRow({*expected}, b);
      EXPECT_EQ(a, b) << "oid " << oid;
    }
  }
}

}  // namespace
}  // namespace backflow
