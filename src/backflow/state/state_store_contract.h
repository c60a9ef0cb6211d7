// Contract tests every StateStore implementation must pass: the run queue
// (leases, take-over, cancellation), API tokens, secrets and alert state.
// An implementation's test file instantiates them with a factory that opens
// a fresh, empty store (see sqlite_state_store_test.cc).
#pragma once

#include <gtest/gtest.h>

#include <functional>
#include <memory>
#include <string>

#include "backflow/state/state_store.h"

namespace backflow::testing {

struct StateStoreFactory {
  std::string name;
  // Opens a new empty store; a second call with the same `test` opens
  // another handle on the same store (another process would).
  std::function<absl::StatusOr<std::unique_ptr<StateStore>>(const std::string& test, bool reopen)>
      open;
};

class StateStoreContractTest : public ::testing::TestWithParam<StateStoreFactory> {
 protected:
  void SetUp() override;
  std::unique_ptr<StateStore> Reopen();
  RunInfo Queued(const std::string& mapping, const std::string& model = "customers");

  std::string test_name_;
  std::unique_ptr<StateStore> store_;
};

}  // namespace backflow::testing
