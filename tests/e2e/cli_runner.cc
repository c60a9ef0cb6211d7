#include "cli_runner.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "fmt/format.h"

namespace backflow::e2e {
namespace {

// `in` empty: stdin is inherited.
pid_t Spawn(const std::string& cwd, const std::vector<std::string>& args, const std::string& out,
            const std::string& err, const std::string& in = "") {
  pid_t pid = fork();
  if (pid != 0) return pid;
  // Lets a debugger that is not its parent read its stacks if it hangs
  // (Yama's ptrace_scope 1); harmless where Yama is off.
  prctl(PR_SET_PTRACER, PR_SET_PTRACER_ANY, 0, 0, 0);
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

// How long RunCli waits for its child: $BACKFLOW_E2E_CLI_TIMEOUT_S, default
// 120 s (well under ctest's 300 s per test binary).
std::chrono::seconds CliTimeout() {
  const char* s = std::getenv("BACKFLOW_E2E_CLI_TIMEOUT_S");
  int v = s != nullptr ? std::atoi(s) : 0;
  return std::chrono::seconds(v > 0 ? v : 120);
}

// Every thread's stack of the running process `pid`: gdb's backtraces when
// gdb is installed, else each thread's name, state and kernel wait channel.
std::string ThreadStacks(pid_t pid) {
  std::string path = fmt::format("/tmp/backflow-e2e-stacks-{}.txt", getpid());
  pid_t gdb = fork();
  if (gdb == 0) {
    int o = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    dup2(o, STDOUT_FILENO);
    dup2(o, STDERR_FILENO);
    std::string p = std::to_string(pid);
    execlp("gdb", "gdb", "-nx", "-batch", "-p", p.c_str(), "-ex", "thread apply all bt",
           static_cast<char*>(nullptr));
    _exit(127);
  }
  int status = 0;
  for (int i = 0; i < 600 && waitpid(gdb, &status, WNOHANG) == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  if (waitpid(gdb, &status, WNOHANG) == 0) {  // gdb itself hung: give up on it
    kill(gdb, SIGKILL);
    waitpid(gdb, &status, 0);
  }
  std::string stacks = Slurp(path);
  unlink(path.c_str());
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0 && stacks.find("Thread") != std::string::npos) {
    return stacks;
  }
  std::string threads =
      fmt::format("(no gdb backtrace: {})\n", stacks.empty() ? "gdb not run" : stacks);
  std::error_code ec;
  for (const auto& task :
       std::filesystem::directory_iterator(fmt::format("/proc/{}/task", pid), ec)) {
    std::string dir = task.path().string();
    std::string comm = Slurp(dir + "/comm"), wchan = Slurp(dir + "/wchan"),
                stat = Slurp(dir + "/stat");
    if (!comm.empty() && comm.back() == '\n') comm.pop_back();
    size_t paren = stat.rfind(')');
    char state = paren != std::string::npos && paren + 2 < stat.size() ? stat[paren + 2] : '?';
    threads +=
        fmt::format("thread {} \"{}\": state {}, waiting in {}\n", task.path().filename().string(),
                    comm, state, wchan.empty() || wchan == "0" ? "(running)" : wchan);
  }
  return threads;
}

CliResult Run(const std::string& cwd, const std::vector<std::string>& args, const std::string& in) {
  std::string out = cwd + "/.cli.out", err = cwd + "/.cli.err";
  pid_t pid = Spawn(cwd, args, out, err, in);
  const auto timeout = CliTimeout();
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  int status = 0;
  std::string hung;
  // Polled rather than a blocking wait, so that a hung child is diagnosed
  // and killed instead of costing the whole test binary's ctest timeout.
  for (auto pause = std::chrono::milliseconds(1); waitpid(pid, &status, WNOHANG) == 0;
       pause = std::min(pause * 2, std::chrono::milliseconds(50))) {
    if (std::chrono::steady_clock::now() >= deadline) {
      std::string command = "backflow";
      for (const std::string& a : args) command += " " + a;
      hung = fmt::format(
          "\n[e2e] `{}` (pid {}) still running after {} s: killed; its threads were:\n{}", command,
          pid, timeout.count(), ThreadStacks(pid));
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      break;
    }
    std::this_thread::sleep_for(pause);
  }
  CliResult r;
  r.exit_code = hung.empty() && WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  r.out = Slurp(out);
  r.err = Slurp(err) + hung;
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
