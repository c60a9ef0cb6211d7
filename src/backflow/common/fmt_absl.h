// Lets fmt format absl::string_view (e.g. absl::Status::message()): Debian's
// Abseil is built with its own string_view type rather than std::string_view.
#pragma once

#include "absl/strings/string_view.h"
#include "fmt/format.h"

#if !defined(ABSL_USES_STD_STRING_VIEW)
template <>
struct fmt::formatter<absl::string_view> : fmt::formatter<fmt::string_view> {
  template <typename FormatContext>
  auto format(absl::string_view s, FormatContext& ctx) const {
    return fmt::formatter<fmt::string_view>::format(fmt::string_view(s.data(), s.size()), ctx);
  }
};
#endif
