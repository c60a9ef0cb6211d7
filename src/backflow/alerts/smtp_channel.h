// The email alert channel: one RFC 5322 message per alert, sent over SMTP
// with libcurl (easy interface; one connection per Send()).
//
// The message carries Date (from the injected clock), From, To, Subject
// (RFC 2047 encoded when not ASCII), Message-ID, MIME-Version: 1.0,
// Content-Type: text/plain; charset=utf-8 and a Content-Transfer-Encoding of
// 7bit or 8bit, plus X-Backflow-Alert / -Kind / -Run-Id for mail filters. The
// body is the alert's summary and a table of the run's details, lines ending
// in CRLF and at most 998 bytes. libcurl dot-stuffs it on the wire.
//
// smtp:// with starttls (the default) requires STARTTLS before AUTH and
// MAIL (CURLOPT_USE_SSL = CURLUSESSL_ALL): a server that does not offer it is
// an error, never a silent fall back to clear text. smtps:// is TLS from the
// first byte. TLS peers are verified. With a username, libcurl logs in with
// the strongest mechanism the server advertises that it supports (PLAIN,
// LOGIN, CRAM-MD5, ...).
//
// Every recipient must be accepted: a refused RCPT fails the send, and the
// status quotes the command and the server's reply ("RCPT TO:<a@b.io>: 550
// 5.1.1 ..."). SMTP 4xx replies are transient (kUnavailable); 530/535 a
// refused login (kUnauthenticated); other 5xx kFailedPrecondition. The
// password and the AUTH exchange never appear in messages.
// Not thread-safe (AlertManager calls one at a time).
#pragma once

#include <memory>
#include <string>

#include "backflow/alerts/alert.h"

namespace backflow {

absl::StatusOr<std::unique_ptr<AlertChannel>> NewEmailAlertChannel(const AlertConfig::Email& config,
                                                                   Clock& clock,
                                                                   AlertChannelOptions options);

// The message NewEmailAlertChannel's channel uploads for `message`, with
// `message_id` ("<...@...>") as Message-ID.
std::string BuildAlertEmail(const AlertConfig::Email& config, const AlertMessage& message,
                            Clock::TimePoint now, const std::string& message_id);

// "Tue, 14 Nov 2023 22:13:20 +0000" (RFC 5322 date-time, UTC).
std::string Rfc5322Date(Clock::TimePoint t);

}  // namespace backflow
