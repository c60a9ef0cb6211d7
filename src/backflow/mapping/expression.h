// The mapping language: what a mapping's field value is computed from.
//
//   email                     the model column `email`. Text that is not one of
//                             the forms below is a column name as written
//                             (spaces allowed: `Email Address`).
//   "select"                  a column named exactly so (double quotes; "" escapes a quote),
//                             for names that look like a keyword, a number or a call
//   'pro'  42  -1.5  true  false  null
//                             literals ('' escapes a quote inside a string)
//   'Hi {{first_name}}!'      a template: {{column}} is replaced by the column's
//                             text (NULL renders as nothing)
//   lower(trim(email))        functions, nested; arguments are any expression
//
// Functions (lower, trim, concat, coalesce, iso8601, epoch, format_date,
// json, sha256, hash_email, ...) are declared once in expression.cc with their
// documentation; MappingLanguageMarkdown() renders docs/mapping.md from them.
//
// Errors: Parse() returns kInvalidArgument with the character position and a
// hint (unknown function, wrong argument count, unbalanced quote); Bind()
// returns the referenced columns the model lacks; Evaluate() returns
// kInvalidArgument for values a function cannot take (bad JSON, a date it
// cannot read), which fails that one record, not the run.
// An Expression is immutable after Bind() and safe to share between threads.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "backflow/model/value.h"

namespace backflow {

class Expression {
 public:
  struct Node;

  static absl::StatusOr<Expression> Parse(std::string_view text);

  Expression();
  ~Expression();
  Expression(Expression&&) noexcept;
  Expression& operator=(Expression&&) noexcept;
  Expression(const Expression&);
  Expression& operator=(const Expression&);

  // The expression's text as written.
  const std::string& text() const { return text_; }
  // The model columns it reads, each once, in order of appearance.
  const std::vector<std::string>& columns() const { return columns_; }
  // True when the expression is just a column reference.
  bool is_column() const;

  // Resolves column references against the model's schema. Returns the names
  // of referenced columns the schema lacks (empty on success).
  std::vector<std::string> Bind(const Schema& schema);

  // Requires a successful Bind().
  absl::StatusOr<Value> Evaluate(const Row& row) const;

 private:
  std::string text_;
  std::vector<std::string> columns_;
  std::unique_ptr<Node> root_;
};

// The function names the language knows, for error hints.
std::vector<std::string> ExpressionFunctionNames();

// The language reference (docs/mapping.md), generated from the function table.
std::string MappingLanguageMarkdown();

// Reads a timestamp the way iso8601() does. kInvalidArgument when unreadable.
absl::StatusOr<Value> ToTimestamp(const Value& v);

}  // namespace backflow
