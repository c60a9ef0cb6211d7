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
// The same with stdout and stderr written to files.
pid_t StartCli(const std::string& cwd, const std::vector<std::string>& args,
               const std::string& out_path, const std::string& err_path);

// Kills (SIGKILL) and reaps a child started with StartCli() if it is still
// running when the guard goes out of scope, so that a failed assertion never
// leaves a `backflow` process behind. A child the test reaped is left alone.
class ChildGuard {
 public:
  explicit ChildGuard(pid_t pid) : pid_(pid) {}
  ~ChildGuard();
  ChildGuard(const ChildGuard&) = delete;
  ChildGuard& operator=(const ChildGuard&) = delete;

 private:
  pid_t pid_;
};

}  // namespace backflow::e2e
