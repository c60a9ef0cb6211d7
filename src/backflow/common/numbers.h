// Exact parsing of decimal integers in text from warehouses and APIs.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

namespace backflow {

// The whole of `s` as a base-10 int64 (an optional leading '-'; no spaces,
// no '+', no overflow); nullopt otherwise.
std::optional<int64_t> ParseInt64(std::string_view s);

}  // namespace backflow
