#include "cli_runner.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <sstream>

namespace backflow::e2e {
namespace {

// `in` empty: stdin is inherited.
pid_t Spawn(const std::string& cwd, const std::vector<std::string>& args, const std::string& out,
            const std::string& err, const std::string& in = "") {
  pid_t pid = fork();
  if (pid != 0) return pid;
  if (chdir(cwd.c_str()) != 0) _exit(127);
  if (!in.empty()) {
    int i = open(in.c_str(), O_RDONLY);
    if (i < 0) _exit(127);
    dup2(i, STDIN_FILENO);
  }
  int o = open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  int e = open(err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  dup2(o, STDOUT_FILENO);
  dup2(e, STDERR_FILENO);
  std::vector<char*> argv;
  std::string binary = BackflowBinary();
  argv.push_back(binary.data());
  std::vector<std::string> copy = args;
  for (std::string& a : copy) argv.push_back(a.data());
  argv.push_back(nullptr);
  execv(binary.c_str(), argv.data());
  _exit(127);
}

std::string Slurp(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

}  // namespace

std::string CliResult::LastLine() const {
  std::string s = out;
  while (!s.empty() && s.back() == '\n') s.pop_back();
  size_t nl = s.rfind('\n');
  return nl == std::string::npos ? s : s.substr(nl + 1);
}

std::string BackflowBinary() {
  const char* b = std::getenv("BACKFLOW_BINARY");
  return b != nullptr ? b : "backflow";
}

namespace {

CliResult Run(const std::string& cwd, const std::vector<std::string>& args, const std::string& in) {
  std::string out = cwd + "/.cli.out", err = cwd + "/.cli.err";
  pid_t pid = Spawn(cwd, args, out, err, in);
  int status = 0;
  waitpid(pid, &status, 0);
  CliResult r;
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  r.out = Slurp(out);
  r.err = Slurp(err);
  return r;
}

}  // namespace

CliResult RunCli(const std::string& cwd, const std::vector<std::string>& args) {
  return Run(cwd, args, "");
}

CliResult RunCli(const std::string& cwd, const std::vector<std::string>& args,
                 const std::string& input) {
  std::string in = cwd + "/.cli.in";
  std::ofstream(in, std::ios::binary | std::ios::trunc) << input;
  CliResult r = Run(cwd, args, in);
  unlink(in.c_str());
  return r;
}

pid_t StartCli(const std::string& cwd, const std::vector<std::string>& args) {
  return Spawn(cwd, args, "/dev/null", "/dev/null");
}

pid_t StartCli(const std::string& cwd, const std::vector<std::string>& args,
               const std::string& out_path, const std::string& err_path) {
  return Spawn(cwd, args, out_path, err_path);
}

ChildGuard::~ChildGuard() {
  // waitpid answers 0 only for a child of ours still running (-1 once reaped).
  if (pid_ > 0 && waitpid(pid_, nullptr, WNOHANG) == 0) {
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
  }
}

}  // namespace backflow::e2e
