// Status propagation helpers used at every fallible boundary.
//
// BACKFLOW_RETURN_IF_ERROR(expr): evaluates an absl::Status expression and
// returns it from the enclosing function if it is not OK.
// BACKFLOW_ASSIGN_OR_RETURN(lhs, expr): evaluates an absl::StatusOr<T>
// expression; on error returns its status, otherwise move-assigns the value to
// `lhs` (which may be a declaration such as `auto x`).
#pragma once

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "backflow/common/fmt_absl.h"

#define BACKFLOW_STATUS_CONCAT_INNER_(a, b) a##b
#define BACKFLOW_STATUS_CONCAT_(a, b) BACKFLOW_STATUS_CONCAT_INNER_(a, b)

#define BACKFLOW_RETURN_IF_ERROR(expr)                   \
  do {                                                   \
    ::absl::Status backflow_status_ = (expr);            \
    if (!backflow_status_.ok()) return backflow_status_; \
  } while (0)

#define BACKFLOW_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                                    \
  if (!tmp.ok()) return std::move(tmp).status();        \
  lhs = std::move(tmp).value()

#define BACKFLOW_ASSIGN_OR_RETURN(lhs, expr) \
  BACKFLOW_ASSIGN_OR_RETURN_IMPL_(BACKFLOW_STATUS_CONCAT_(backflow_statusor_, __LINE__), lhs, expr)
