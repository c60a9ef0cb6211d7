// Decoding of URL parts: percent-escapes (RFC 3986) and query strings or
// form bodies (application/x-www-form-urlencoded, where '+' is a space).
// Malformed escapes ("%4", "%zz") are kept as written.
#pragma once

#include <map>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace backflow {

// `plus_is_space`: true for query strings and form bodies, false for paths.
std::string PercentDecode(std::string_view s, bool plus_is_space);

// "a=1&b=x+y%21" → {{"a","1"},{"b","x y!"}}, in order; empty pairs skipped;
// a name without '=' has the value "".
std::vector<std::pair<std::string, std::string>> ParseQueryPairs(std::string_view query);

// The same as a map: a repeated name keeps its last value.
std::map<std::string, std::string> ParseQuery(std::string_view query);

}  // namespace backflow
