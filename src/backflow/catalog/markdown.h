// Markdown reference pages generated from connector definitions
// (docs/sources/*.md, docs/destinations/*.md). The committed pages are
// checked against this output by the docs_current test.
#pragma once

#include <string>

#include "backflow/catalog/definitions.h"

namespace backflow {

std::string SourceMarkdown(const SourceDefinition& def);
std::string DestinationMarkdown(const DestinationDefinition& def);

}  // namespace backflow
