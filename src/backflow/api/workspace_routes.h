// The REST API's configuration routes under /api/v1: create (POST), update
// (PATCH, a JSON merge patch, RFC 7396) and delete sources, models,
// destinations and mappings; enable and disable a mapping; the workspace as
// a whole (GET /workspace); and secrets (PUT, GET, DELETE /secrets).
//
// One source of truth: the workspace YAML file stays the configuration. A
// change is applied to the file's text (config/workspace_editor.h: only the
// changed entry's lines are rewritten, comments elsewhere are kept), checked
// by the same loader `backflow validate` runs (422 with every diagnostic
// when the result is invalid: the same messages, the same field paths such
// as "mappings[2].fields.email"), written atomically, and the service
// reloads it at once (ApiOptions::reload) so the next request sees it.
//
// A change's reply says in X-Backflow-File-Layout whether the file's layout
// and comments were kept ("kept") or the file had to be written again from
// its data ("rewritten", for layouts the editor does not handle).
//
// Every answer about the file carries its ETag (a hash of its bytes), also on
// the GET routes of the four kinds, which this decorates; every change needs
// If-Match with it: 428 without, 412 when the file changed meanwhile, so two
// editors never silently overwrite each other. Deleting an object another
// one uses (a source a model reads, a model or destination a mapping uses, a
// mapping an alert names) is a 409 naming the users.
//
// Secrets are sealed in the state store (secrets/secret_store.h); their
// values are never returned, only their MaskSecret() form. A setting the
// catalog marks secret accepts only a ${secret:NAME} or ${env:NAME}
// reference through the API (422 otherwise, with a hint to PUT the secret
// first), so the file never holds a secret value the API wrote.
//
// Thread-safety: handlers run on several threads at once; changes to the
// file are serialized within the process (another program editing the file
// at the same moment is caught by the ETag only if it wrote first).
#pragma once

#include "backflow/api/api_service.h"
#include "backflow/api/router.h"

namespace backflow::api {

// Adds the routes to `router` and decorates its GET /api/v1/{kind} and
// GET /api/v1/{kind}/{name} routes (declared before) with the ETag header.
// The handlers keep a copy of `options` and a pointer to `router`, which
// owns them.
void AddWorkspaceRoutes(Router& router, const ApiOptions& options);

// The ETag of a workspace file with these bytes: a quoted SHA-256 prefix.
std::string WorkspaceEtag(std::string_view text);

}  // namespace backflow::api
