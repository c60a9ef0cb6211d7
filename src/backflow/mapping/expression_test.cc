#include "backflow/mapping/expression.h"

#include "backflow/common/crypto.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace backflow {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

const Schema kSchema = {{"id", ValueType::kInt64},
                        {"email", ValueType::kString},
                        {"first", ValueType::kString},
                        {"last", ValueType::kString},
                        {"Email Address", ValueType::kString},
                        {"seen", ValueType::kTimestamp},
                        {"props", ValueType::kString},
                        {"phone", ValueType::kString},
                        {"select", ValueType::kString}};

Row SampleRow() {
  return {Value::Int64(7),
          Value::String("  Ada@Example.COM "),
          Value::String("Ada"),
          Value::Null(),
          Value::String("ada@x.io"),
          Value::Text(ValueType::kTimestamp, "2026-01-02T03:04:05.250Z"),
          Value::String(R"({"plan": "pro", "seats": 3})"),
          Value::String("+44 844 412 4653"),
          Value::String("chosen")};
}

// Parses, binds and evaluates `text` on SampleRow().
absl::StatusOr<Value> Eval(const std::string& text) {
  absl::StatusOr<Expression> e = Expression::Parse(text);
  if (!e.ok()) return e.status();
  std::vector<std::string> missing = e->Bind(kSchema);
  if (!missing.empty()) return absl::NotFoundError("missing " + missing.front());
  return e->Evaluate(SampleRow());
}

std::string Text(const std::string& text) {
  absl::StatusOr<Value> v = Eval(text);
  EXPECT_TRUE(v.ok()) << text << ": " << v.status();
  return v.ok() ? (v->is_null() ? "NULL" : v->ToString()) : "";
}

TEST(ExpressionTest, ColumnsAndQuotedNames) {
  absl::StatusOr<Expression> e = Expression::Parse("email");
  ASSERT_TRUE(e.ok());
  EXPECT_TRUE(e->is_column());
  EXPECT_THAT(e->columns(), ElementsAre("email"));
  EXPECT_EQ(Text("Email Address"), "ada@x.io");  // bare names may hold spaces
  EXPECT_EQ(Text("\"select\""), "chosen");
  EXPECT_EQ(Text("lower(\"Email Address\")"), "ada@x.io");
}

TEST(ExpressionTest, Literals) {
  EXPECT_EQ(Eval("'pro'")->type(), ValueType::kString);
  EXPECT_EQ(Text("'it''s'"), "it's");
  EXPECT_EQ(Eval("42")->int_value(), 42);
  EXPECT_EQ(Eval("-1.50")->text(), "-1.50");
  EXPECT_EQ(Eval("-1.50")->type(), ValueType::kDecimal);
  EXPECT_TRUE(Eval("true")->bool_value());
  EXPECT_TRUE(Eval("null")->is_null());
  absl::StatusOr<Expression> lit = Expression::Parse("'x'");
  ASSERT_TRUE(lit.ok());
  EXPECT_TRUE(lit->columns().empty());
  EXPECT_FALSE(lit->is_column());
}

TEST(ExpressionTest, TemplatesInterpolateColumnsAndSkipNulls) {
  EXPECT_EQ(Text("'{{first}} {{ last }}!'"), "Ada !");
  absl::StatusOr<Expression> e = Expression::Parse("'{{first}}-{{id}}-{{first}}'");
  ASSERT_TRUE(e.ok());
  EXPECT_THAT(e->columns(), ElementsAre("first", "id"));
  EXPECT_EQ(Text("'{{first}}-{{id}}'"), "Ada-7");
}

TEST(ExpressionTest, StringFunctions) {
  EXPECT_EQ(Text("lower(trim(email))"), "ada@example.com");
  EXPECT_EQ(Text("upper(first)"), "ADA");
  EXPECT_EQ(Text("concat(first, ' ', last, '#', id)"), "Ada #7");
  EXPECT_EQ(Text("coalesce(last, first)"), "Ada");
  EXPECT_EQ(Text("lower(last)"), "NULL");
}

TEST(ExpressionTest, Dates) {
  EXPECT_EQ(Text("iso8601(seen)"), "2026-01-02T03:04:05.250Z");
  EXPECT_EQ(Eval("epoch(seen)")->int_value(), 1767323045);
  EXPECT_EQ(Eval("epoch_ms(seen)")->int_value(), 1767323045250);
  EXPECT_EQ(Text("iso8601(1767323045)"), "2026-01-02T03:04:05Z");
  EXPECT_EQ(Text("iso8601('2026-01-02 05:04:05+02:00')"), "2026-01-02T03:04:05Z");
  EXPECT_EQ(Text("iso8601('2026-01-02')"), "2026-01-02T00:00:00Z");
  EXPECT_EQ(Text("format_date(seen, '%d/%m/%Y')"), "02/01/2026");
  absl::StatusOr<Value> bad = Eval("iso8601(first)");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad.status().message(), HasSubstr("\"Ada\""));
}

TEST(ExpressionTest, JsonParsing) {
  absl::StatusOr<Value> v = Eval("json(props)");
  ASSERT_TRUE(v.ok());
  EXPECT_EQ(v->type(), ValueType::kJson);
  EXPECT_EQ(v->text(), R"({"plan":"pro","seats":3})");
  absl::StatusOr<Value> bad = Eval("json(first)");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad.status().message(), HasSubstr("not valid JSON"));
}

TEST(ExpressionTest, PiiHashingNormalisesAndNeverHashesTwice) {
  std::string email_hash = HexEncode(Sha256("ada@example.com"));
  EXPECT_EQ(Text("hash_email(email)"), email_hash);
  EXPECT_EQ(Text("hash_email(hash_email(email))"), email_hash);
  EXPECT_EQ(Text("sha256(sha256('x'))"), HexEncode(Sha256("x")));
  EXPECT_EQ(Text("normalize_phone(phone)"), "448444124653");  // the brief's example
  EXPECT_EQ(Text("hash_phone(phone)"), HexEncode(Sha256("448444124653")));
  EXPECT_EQ(Text("normalize_phone('0044 844 412 4653')"), "448444124653");
  EXPECT_EQ(Text("hash_email('   ')"), "NULL");
}

TEST(ExpressionTest, SyntaxErrorsSayWhereAndWhat) {
  auto error = [](const std::string& text) {
    absl::StatusOr<Expression> e = Expression::Parse(text);
    EXPECT_FALSE(e.ok()) << text;
    return e.ok() ? std::string() : std::string(e.status().message());
  };
  EXPECT_THAT(error("lowr(email)"), HasSubstr("unknown function lowr()"));
  EXPECT_THAT(error("lowr(email)"), HasSubstr("lower"));
  EXPECT_THAT(error("lower(email, first)"), HasSubstr("lower() takes 1 argument, got 2"));
  EXPECT_THAT(error("concat()"), HasSubstr("at least 1"));
  EXPECT_THAT(error("'unclosed"), HasSubstr("unclosed single quote"));
  EXPECT_THAT(error("lower(email"), HasSubstr("expected ',' or ')'"));
  EXPECT_THAT(error("lower(email) x"), HasSubstr("unexpected text after the expression"));
  EXPECT_THAT(error("'{{first'"), HasSubstr("without a closing"));
}

TEST(ExpressionTest, BindReportsMissingColumns) {
  absl::StatusOr<Expression> e = Expression::Parse("concat(nope, first, '{{gone}}')");
  ASSERT_TRUE(e.ok());
  EXPECT_THAT(e->Bind(kSchema), ElementsAre("nope", "gone"));
}

TEST(ExpressionTest, CopiesEvaluateIndependently) {
  absl::StatusOr<Expression> e = Expression::Parse("upper(first)");
  ASSERT_TRUE(e.ok());
  Expression copy = *e;
  ASSERT_TRUE(copy.Bind(kSchema).empty());
  EXPECT_EQ(copy.Evaluate(SampleRow())->text(), "ADA");
}

}  // namespace
}  // namespace backflow
