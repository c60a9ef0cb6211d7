// Encoding and decoding of URL parts: percent-escapes (RFC 3986) and query
// strings or form bodies (application/x-www-form-urlencoded, where '+' is a
// space). Malformed escapes ("%4", "%zz") are kept as written when decoding.
// All functions are pure and thread-safe.
#pragma once

#include <map>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace backflow {

// RFC 3986 percent-encoding: the unreserved characters (ASCII letters, digits,
// '-', '.', '_', '~') and any byte in `also_keep` are copied as-is; every
// other byte (UTF-8 bytes of non-ASCII text one by one, '/', space) becomes
// "%XX" with uppercase hex. With the default `also_keep` the result is safe
// as one path segment, a query name or a query value.
std::string PercentEncode(std::string_view s, std::string_view also_keep = {});

// application/x-www-form-urlencoded encoding of one name or value: the same
// as PercentEncode(s) except that a space becomes '+'.
std::string FormUrlEncode(std::string_view s);

// `plus_is_space`: true for query strings and form bodies, false for paths.
std::string PercentDecode(std::string_view s, bool plus_is_space);

// "a=1&b=x+y%21" → {{"a","1"},{"b","x y!"}}, in order; empty pairs skipped;
// a name without '=' has the value "".
std::vector<std::pair<std::string, std::string>> ParseQueryPairs(std::string_view query);

// The same as a map: a repeated name keeps its last value.
std::map<std::string, std::string> ParseQuery(std::string_view query);

}  // namespace backflow
