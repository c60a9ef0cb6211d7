// Google service-account keys: the JSON key file a user downloads
// (IAM & Admin > Service accounts > Keys > Add key > JSON), read once for
// every Google connector (BigQuery, Google Sheets). The key signs the OAuth
// 2.0 JWT bearer grant (jwt_bearer.h).
#pragma once

#include <string>

#include "absl/status/statusor.h"

namespace backflow {

struct GoogleServiceAccountKey {
  std::string client_email;
  std::string private_key;  // PEM
  std::string private_key_id;
  std::string project_id;
};

// Parses the key file's text. kInvalidArgument, prefixed by the setting name
// "service_account_key", for text that is not JSON (e.g. a path), a key of
// another type, or one without client_email / private_key. Never quotes the key.
absl::StatusOr<GoogleServiceAccountKey> ParseGoogleServiceAccountKey(const std::string& text);

}  // namespace backflow
