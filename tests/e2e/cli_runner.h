// Runs the real `backflow` binary (path from $BACKFLOW_BINARY) as a child
// process for end-to-end tests: synchronously with captured output, or in the
// background so a test can kill it mid-run.
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

namespace backflow::e2e {

struct CliResult {
  int exit_code = -1;  // -1 when killed by a signal
  std::string out;
  std::string err;
  // The last non-empty line of stdout (the --json summary).
  std::string LastLine() const;
};

std::string BackflowBinary();

// Runs `backflow args...` in `cwd` and waits for it.
CliResult RunCli(const std::string& cwd, const std::vector<std::string>& args);
// The same with `input` as its standard input.
CliResult RunCli(const std::string& cwd, const std::vector<std::string>& args,
                 const std::string& input);

// Starts `backflow args...` in `cwd` with output discarded; returns its pid.
pid_t StartCli(const std::string& cwd, const std::vector<std::string>& args);
// The same with stdout and stderr written to the files `out` and `err`.
pid_t StartCli(const std::string& cwd, const std::vector<std::string>& args, const std::string& out,
               const std::string& err);

}  // namespace backflow::e2e
