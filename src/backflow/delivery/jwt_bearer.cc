#include "backflow/delivery/jwt_bearer.h"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>

#include <algorithm>
#include <cctype>
#include <utility>
#include <vector>

#include "backflow/common/crypto.h"
#include "backflow/common/url.h"
#include "fmt/format.h"

namespace backflow {

using json = nlohmann::json;

struct Rs256Key::Impl {
  EVP_PKEY* pkey = nullptr;
  ~Impl() { EVP_PKEY_free(pkey); }
};

namespace {

constexpr int kMinRsaBits = 2048;

// The most recent OpenSSL error as text, and the queue cleared.
std::string OpenSslError() {
  unsigned long code = ERR_get_error();  // NOLINT(runtime/int): OpenSSL's type
  std::string out;
  if (code != 0) {
    char buf[256];
    ERR_error_string_n(code, buf, sizeof(buf));
    out = buf;
  }
  ERR_clear_error();
  return out;
}

struct BioDeleter {
  void operator()(BIO* b) const { BIO_free(b); }
};
struct MdCtxDeleter {
  void operator()(EVP_MD_CTX* c) const { EVP_MD_CTX_free(c); }
};
using BioPtr = std::unique_ptr<BIO, BioDeleter>;
using MdCtxPtr = std::unique_ptr<EVP_MD_CTX, MdCtxDeleter>;

// A passphrase callback that refuses: an encrypted key fails instead of
// prompting on the terminal.
int NoPassphrase(char* /*buf*/, int /*size*/, int /*rwflag*/, void* /*u*/) { return -1; }

std::string NormalizedPem(std::string_view pem) {
  std::string text(pem);
  // Keys pasted into env vars often carry literal "\n" sequences instead of
  // line breaks (as in the JSON-escaped private_key of a key file).
  if (text.find('\n') == std::string::npos && text.find("\\n") != std::string::npos) {
    std::string fixed;
    for (size_t i = 0; i < text.size(); ++i) {
      if (text[i] == '\\' && i + 1 < text.size() && text[i + 1] == 'n') {
        fixed.push_back('\n');
        ++i;
      } else {
        fixed.push_back(text[i]);
      }
    }
    text = std::move(fixed);
  }
  return text;
}

absl::Status CheckRsa(EVP_PKEY* pkey) {
  if (EVP_PKEY_get_base_id(pkey) != EVP_PKEY_RSA) {
    return absl::InvalidArgumentError(
        "the key is not an RSA key: RS256 needs an RSA key (Google service-account keys and "
        "Salesforce certificates are RSA)");
  }
  int bits = EVP_PKEY_get_bits(pkey);
  if (bits < kMinRsaBits) {
    return absl::InvalidArgumentError(fmt::format(
        "the RSA key has {} bits; RS256 needs at least {} (RFC 7518): generate a new key", bits,
        kMinRsaBits));
  }
  return absl::OkStatus();
}

std::string Dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

}  // namespace

std::string Base64UrlEncode(std::string_view bytes) {
  std::string out = Base64Encode(bytes);
  while (!out.empty() && out.back() == '=') out.pop_back();
  for (char& c : out) {
    if (c == '+') c = '-';
    if (c == '/') c = '_';
  }
  return out;
}

absl::StatusOr<std::string> Base64UrlDecode(std::string_view text) {
  std::string std_text(text);
  for (char& c : std_text) {
    if (c == '+' || c == '/') return absl::InvalidArgumentError("not base64url: contains + or /");
    if (c == '-') c = '+';
    if (c == '_') c = '/';
  }
  return Base64Decode(std_text);
}

Rs256Key::~Rs256Key() { delete impl_; }

absl::StatusOr<std::unique_ptr<Rs256Key>> Rs256Key::FromPrivateKeyPem(std::string_view pem) {
  std::string text = NormalizedPem(pem);
  if (text.find("-----BEGIN") == std::string::npos) {
    return absl::InvalidArgumentError(
        "the private key is not PEM text (expected \"-----BEGIN PRIVATE KEY-----\" ...): use the "
        "private_key of the key file as-is");
  }
  if (text.find("ENCRYPTED") != std::string::npos) {
    return absl::InvalidArgumentError(
        "the private key is encrypted; export it without a passphrase (e.g. openssl pkcs8 "
        "-topk8 -nocrypt)");
  }
  BioPtr bio(BIO_new_mem_buf(text.data(), static_cast<int>(text.size())));
  if (!bio) return absl::InternalError("out of memory reading the private key");
  EVP_PKEY* pkey = PEM_read_bio_PrivateKey(bio.get(), nullptr, NoPassphrase, nullptr);
  if (pkey == nullptr) {
    return absl::InvalidArgumentError(
        fmt::format("the private key could not be read as a PEM RSA private key ({}): check "
                    "that it is complete, including the BEGIN/END lines",
                    OpenSslError()));
  }
  auto impl = std::make_unique<Impl>();
  impl->pkey = pkey;
  if (absl::Status s = CheckRsa(pkey); !s.ok()) return s;
  return std::unique_ptr<Rs256Key>(new Rs256Key(impl.release(), true));
}

absl::StatusOr<std::unique_ptr<Rs256Key>> Rs256Key::FromPublicKeyPem(std::string_view pem) {
  std::string text = NormalizedPem(pem);
  BioPtr bio(BIO_new_mem_buf(text.data(), static_cast<int>(text.size())));
  if (!bio) return absl::InternalError("out of memory reading the public key");
  EVP_PKEY* pkey = PEM_read_bio_PUBKEY(bio.get(), nullptr, NoPassphrase, nullptr);
  if (pkey == nullptr) {
    return absl::InvalidArgumentError(fmt::format(
        "the public key could not be read as PEM (\"BEGIN PUBLIC KEY\"): {}", OpenSslError()));
  }
  auto impl = std::make_unique<Impl>();
  impl->pkey = pkey;
  if (absl::Status s = CheckRsa(pkey); !s.ok()) return s;
  return std::unique_ptr<Rs256Key>(new Rs256Key(impl.release(), false));
}

absl::StatusOr<std::string> Rs256Key::Sign(std::string_view data) const {
  if (!has_private_) return absl::FailedPreconditionError("signing needs a private key");
  MdCtxPtr ctx(EVP_MD_CTX_new());
  if (!ctx) return absl::InternalError("out of memory signing");
  if (EVP_DigestSignInit(ctx.get(), nullptr, EVP_sha256(), nullptr, impl_->pkey) != 1) {
    return absl::InternalError(fmt::format("RS256 signing failed: {}", OpenSslError()));
  }
  size_t len = 0;
  const auto* in = reinterpret_cast<const unsigned char*>(data.data());
  if (EVP_DigestSign(ctx.get(), nullptr, &len, in, data.size()) != 1) {
    return absl::InternalError(fmt::format("RS256 signing failed: {}", OpenSslError()));
  }
  std::string sig(len, '\0');
  if (EVP_DigestSign(ctx.get(), reinterpret_cast<unsigned char*>(sig.data()), &len, in,
                     data.size()) != 1) {
    return absl::InternalError(fmt::format("RS256 signing failed: {}", OpenSslError()));
  }
  sig.resize(len);
  return sig;
}

bool Rs256Key::Verify(std::string_view data, std::string_view signature) const {
  MdCtxPtr ctx(EVP_MD_CTX_new());
  if (!ctx) return false;
  if (EVP_DigestVerifyInit(ctx.get(), nullptr, EVP_sha256(), nullptr, impl_->pkey) != 1) {
    OpenSslError();
    return false;
  }
  int ok = EVP_DigestVerify(ctx.get(), reinterpret_cast<const unsigned char*>(signature.data()),
                            signature.size(), reinterpret_cast<const unsigned char*>(data.data()),
                            data.size());
  if (ok != 1) OpenSslError();
  return ok == 1;
}

std::string Rs256Key::PublicKeyPem() const {
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (!bio || PEM_write_bio_PUBKEY(bio.get(), impl_->pkey) != 1) return "";
  char* data = nullptr;
  long len = BIO_get_mem_data(bio.get(), &data);  // NOLINT(runtime/int): OpenSSL's type
  return std::string(data, static_cast<size_t>(len));
}

absl::StatusOr<RsaKeyPair> GenerateRsaKeyPair(int bits) {
  EVP_PKEY* pkey = EVP_RSA_gen(static_cast<unsigned int>(bits));
  if (pkey == nullptr) {
    return absl::InternalError(fmt::format("RSA key generation failed: {}", OpenSslError()));
  }
  std::unique_ptr<EVP_PKEY, void (*)(EVP_PKEY*)> holder(pkey, EVP_PKEY_free);
  RsaKeyPair out;
  BioPtr priv(BIO_new(BIO_s_mem()));
  BioPtr pub(BIO_new(BIO_s_mem()));
  if (!priv || !pub ||
      PEM_write_bio_PKCS8PrivateKey(priv.get(), pkey, nullptr, nullptr, 0, nullptr, nullptr) != 1 ||
      PEM_write_bio_PUBKEY(pub.get(), pkey) != 1) {
    return absl::InternalError(fmt::format("writing the RSA key failed: {}", OpenSslError()));
  }
  char* data = nullptr;
  long len = BIO_get_mem_data(priv.get(), &data);  // NOLINT(runtime/int)
  out.private_key_pem.assign(data, static_cast<size_t>(len));
  len = BIO_get_mem_data(pub.get(), &data);
  out.public_key_pem.assign(data, static_cast<size_t>(len));
  return out;
}

absl::StatusOr<std::string> SignJwtRs256(const Rs256Key& key, std::string_view key_id,
                                         const json& claims) {
  if (!claims.is_object()) return absl::InvalidArgumentError("JWT claims must be a JSON object");
  json header = {{"alg", "RS256"}, {"typ", "JWT"}};
  if (!key_id.empty()) header["kid"] = std::string(key_id);
  std::string signing_input = Base64UrlEncode(Dump(header)) + "." + Base64UrlEncode(Dump(claims));
  absl::StatusOr<std::string> sig = key.Sign(signing_input);
  if (!sig.ok()) return sig.status();
  return signing_input + "." + Base64UrlEncode(*sig);
}

absl::StatusOr<DecodedJwt> DecodeJwt(std::string_view jwt) {
  size_t first = jwt.find('.');
  size_t second = first == std::string_view::npos ? first : jwt.find('.', first + 1);
  if (second == std::string_view::npos || jwt.find('.', second + 1) != std::string_view::npos) {
    return absl::InvalidArgumentError("a JWT has three dot-separated parts");
  }
  DecodedJwt out;
  const std::pair<std::string_view, json*> parts[] = {
      {jwt.substr(0, first), &out.header},
      {jwt.substr(first + 1, second - first - 1), &out.claims}};
  for (const auto& [text, target] : parts) {
    absl::StatusOr<std::string> raw = Base64UrlDecode(text);
    if (!raw.ok()) return absl::InvalidArgumentError("a JWT part is not base64url");
    *target = json::parse(*raw, nullptr, /*allow_exceptions=*/false);
    if (!target->is_object()) {
      return absl::InvalidArgumentError("a JWT header or claims part is not a JSON object");
    }
  }
  return out;
}

absl::StatusOr<DecodedJwt> VerifyJwtRs256(std::string_view jwt, const Rs256Key& key) {
  absl::StatusOr<DecodedJwt> decoded = DecodeJwt(jwt);
  if (!decoded.ok()) return decoded.status();
  auto alg = decoded->header.find("alg");
  if (alg == decoded->header.end() || *alg != "RS256") {
    return absl::UnauthenticatedError("the JWT's alg is not RS256");
  }
  size_t last = jwt.rfind('.');
  absl::StatusOr<std::string> sig = Base64UrlDecode(jwt.substr(last + 1));
  if (!sig.ok()) return absl::InvalidArgumentError("the JWT signature is not base64url");
  if (!key.Verify(jwt.substr(0, last), *sig)) {
    return absl::UnauthenticatedError("Invalid JWT Signature.");
  }
  return decoded;
}

JwtBearerTokenSource::JwtBearerTokenSource(JwtBearerConfig config, std::unique_ptr<Rs256Key> key,
                                           HttpClient* http, Clock* clock)
    : config_(std::move(config)), key_(std::move(key)), http_(http), clock_(clock) {}

absl::StatusOr<std::unique_ptr<JwtBearerTokenSource>> JwtBearerTokenSource::Create(
    JwtBearerConfig config, HttpClient* http, Clock* clock) {
  if (config.token_url.empty()) return absl::InvalidArgumentError("token_url: required");
  if (config.issuer.empty()) {
    return absl::InvalidArgumentError("the JWT issuer (iss) is required");
  }
  if (config.vendor.empty()) config.vendor = "the token endpoint";
  if (config.audience.empty()) config.audience = config.token_url;
  absl::StatusOr<std::unique_ptr<Rs256Key>> key =
      Rs256Key::FromPrivateKeyPem(config.private_key_pem);
  if (!key.ok()) return key.status();
  return std::unique_ptr<JwtBearerTokenSource>(
      new JwtBearerTokenSource(std::move(config), *std::move(key), http, clock));
}

absl::StatusOr<std::string> JwtBearerTokenSource::MintAssertion() const {
  int64_t now =
      std::chrono::duration_cast<std::chrono::seconds>(clock_->Now().time_since_epoch()).count();
  json claims = json::object();
  claims["iss"] = config_.issuer;
  if (!config_.subject.empty()) claims["sub"] = config_.subject;
  claims["aud"] = config_.audience;
  if (!config_.scope.empty()) claims["scope"] = config_.scope;
  claims["iat"] = now;
  claims["exp"] = now + config_.assertion_lifetime.count();
  return SignJwtRs256(*key_, config_.key_id, claims);
}

absl::StatusOr<std::string> JwtBearerTokenSource::Token(bool refresh) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!refresh && !token_.empty() && (!refresh_at_ || clock_->Now() < *refresh_at_)) {
    return token_;
  }
  return MintLocked();
}

absl::StatusOr<std::string> JwtBearerTokenSource::MintLocked() {
  token_.clear();
  RetryPolicy policy;
  policy.max_retries = config_.max_retries;
  policy.base_backoff = config_.base_backoff;
  policy.max_wait = config_.max_backoff;
  HttpDelivery delivery(http_, clock_, {}, policy);
  DeliveryResult d = delivery.Send([&] {
    HttpRequest req;
    req.method = "POST";
    req.url = config_.token_url;
    req.timeout = config_.timeout;
    req.headers.emplace_back("Content-Type", "application/x-www-form-urlencoded");
    req.headers.emplace_back("Accept", "application/json");
    absl::StatusOr<std::string> assertion = MintAssertion();
    // Signing with a key that parsed cannot fail short of OOM; an empty
    // assertion is then refused by the endpoint.
    req.body = fmt::format("grant_type={}&assertion={}", FormUrlEncode(kJwtBearerGrantType),
                           assertion.ok() ? FormUrlEncode(*assertion) : "");
    return req;
  });
  const std::string& vendor = config_.vendor;
  if (!d.response.ok()) {
    const absl::Status& s = d.response.status();
    std::string message =
        fmt::format("could not reach {}'s token endpoint {} {}: {}", vendor, config_.token_url,
                    d.AttemptsText(), std::string(s.message()));
    return s.code() == absl::StatusCode::kDeadlineExceeded ? absl::DeadlineExceededError(message)
                                                           : absl::UnavailableError(message);
  }
  const HttpResponse& resp = *d.response;
  json body = json::parse(resp.body, nullptr, /*allow_exceptions=*/false);
  if (resp.status >= 200 && resp.status < 300) {
    auto tok = body.is_object() ? body.find("access_token") : body.end();
    if (!body.is_object() || tok == body.end() || !tok->is_string() ||
        tok->get_ref<const std::string&>().empty()) {
      return absl::FailedPreconditionError(fmt::format(
          "{}'s token endpoint {} answered HTTP {} without an access_token: check token_url. It "
          "said: {}",
          vendor, config_.token_url, resp.status, BodySnippet(resp.body)));
    }
    token_ = tok->get<std::string>();
    last_response_ = body;
    ++mints_;
    Clock::TimePoint now = clock_->Now();
    auto expires = body.find("expires_in");
    std::optional<std::chrono::seconds> lifetime = config_.lifetime_without_expires_in;
    if (expires != body.end() && expires->is_number()) {
      lifetime = std::chrono::seconds(expires->get<int64_t>());
    } else if (expires != body.end() && expires->is_string()) {
      std::string text = expires->get<std::string>();
      if (!text.empty() &&
          std::all_of(text.begin(), text.end(), [](unsigned char c) { return std::isdigit(c); }) &&
          text.size() < 10) {
        lifetime = std::chrono::seconds(std::stoll(text));
      }
    }
    if (lifetime) {
      std::chrono::seconds margin = std::min(config_.expiry_margin, *lifetime / 2);
      refresh_at_ = now + *lifetime - margin;
    } else {
      refresh_at_.reset();
    }
    return token_;
  }
  std::string error;
  std::string description;
  if (body.is_object()) {
    if (auto e = body.find("error"); e != body.end() && e->is_string()) error = *e;
    if (auto e = body.find("error_description"); e != body.end() && e->is_string()) {
      description = *e;
    }
  }
  std::string said = error.empty() ? BodySnippet(resp.body)
                                   : (description.empty() ? error : error + ": " + description);
  if (resp.status == 400 || resp.status == 401 || resp.status == 403) {
    std::string check;
    if (error == "invalid_grant") {
      check =
          "the assertion was refused: check that the key is current (not deleted or rotated), "
          "that the issuer/subject are right, and that this machine's clock is correct";
    } else if (error == "invalid_client" || error == "unauthorized_client") {
      check = "the client is not allowed to use this grant: check the issuer (client id)";
    } else if (error == "invalid_scope") {
      check = "the requested scope was refused";
    } else {
      check = "check the credentials";
    }
    std::string message = fmt::format("{} refused the JWT bearer grant (HTTP {}, {}): {}", vendor,
                                      resp.status, said, check);
    if (!config_.hint.empty()) message += ". " + config_.hint;
    return absl::UnauthenticatedError(message);
  }
  if (DefaultRetryableStatus(resp.status)) {
    return absl::UnavailableError(fmt::format("{}'s token endpoint {} answered HTTP {} {}: {}",
                                              vendor, config_.token_url, resp.status,
                                              d.AttemptsText(), said));
  }
  return absl::FailedPreconditionError(
      fmt::format("{}'s token endpoint {} answered HTTP {}: check token_url. It said: {}", vendor,
                  config_.token_url, resp.status, said));
}

json JwtBearerTokenSource::LastTokenResponse() const {
  std::lock_guard<std::mutex> lock(mu_);
  return last_response_;
}

int64_t JwtBearerTokenSource::mint_count() const {
  std::lock_guard<std::mutex> lock(mu_);
  return mints_;
}

}  // namespace backflow
