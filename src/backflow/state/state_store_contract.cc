#include "backflow/state/state_store_contract.h"

#include <set>

namespace backflow::testing {

void StateStoreContractTest::SetUp() {
  test_name_ = ::testing::UnitTest::GetInstance()->current_test_info()->name();
  for (char& c : test_name_) {
    if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
  }
  auto store = GetParam().open(test_name_, false);
  ASSERT_TRUE(store.ok()) << store.status();
  store_ = std::move(*store);
}

std::unique_ptr<StateStore> StateStoreContractTest::Reopen() {
  auto store = GetParam().open(test_name_, true);
  EXPECT_TRUE(store.ok()) << store.status();
  return store.ok() ? std::move(*store) : nullptr;
}

RunInfo StateStoreContractTest::Queued(const std::string& mapping, const std::string& model) {
  RunInfo r;
  r.mapping = mapping;
  r.model = model;
  r.destination = "hook";
  r.trigger = "api";
  r.requested_at = "2026-01-01T00:00:00.000Z";
  return r;
}

namespace {

const absl::Time kT0 = absl::FromUnixSeconds(1'800'000'000);
const absl::Duration kLease = absl::Seconds(30);

TEST_P(StateStoreContractTest, QueuedRunsShareARequestAndAreClaimedTogether) {
  auto ids = store_->EnqueueRuns({Queued("a"), Queued("b")});
  ASSERT_TRUE(ids.ok()) << ids.status();
  ASSERT_EQ(ids->size(), 2u);
  auto other = store_->EnqueueRuns({Queued("c", "orders")});
  ASSERT_TRUE(other.ok());
  EXPECT_EQ(*store_->CountRuns(RunStatus::kQueued), 3);

  auto first = store_->GetRun((*ids)[0]);
  ASSERT_TRUE(first.ok());
  EXPECT_EQ(first->status, RunStatus::kQueued);
  EXPECT_EQ(first->request_id, (*ids)[0]);
  EXPECT_EQ(store_->GetRun((*ids)[1])->request_id, (*ids)[0]);
  EXPECT_EQ(first->requested_at, "2026-01-01T00:00:00.000Z");

  auto claimed = store_->ClaimRuns("w1", kT0, kLease);
  ASSERT_TRUE(claimed.ok()) << claimed.status();
  ASSERT_EQ(claimed->size(), 2u);
  EXPECT_EQ((*claimed)[0].id, (*ids)[0]);
  EXPECT_EQ((*claimed)[1].mapping, "b");
  EXPECT_EQ((*claimed)[0].status, RunStatus::kRunning);
  EXPECT_EQ((*claimed)[0].worker, "w1");
  EXPECT_FALSE((*claimed)[0].started_at.empty());

  auto next = store_->ClaimRuns("w2", kT0, kLease);
  ASSERT_TRUE(next.ok());
  ASSERT_EQ(next->size(), 1u);
  EXPECT_EQ((*next)[0].mapping, "c");
  EXPECT_TRUE(store_->ClaimRuns("w3", kT0, kLease)->empty());
  EXPECT_EQ(*store_->CountRuns(RunStatus::kRunning), 3);
}

TEST_P(StateStoreContractTest, AnExpiredLeaseIsTakenOverAndTheOldWorkerLearnsItLostIt) {
  auto ids = store_->EnqueueRuns({Queued("a")});
  ASSERT_TRUE(ids.ok());
  ASSERT_EQ(store_->ClaimRuns("w1", kT0, kLease)->size(), 1u);
  // Renewed in time: nobody else can take it.
  auto renewed = store_->RenewLeases("w1", *ids, kT0 + absl::Seconds(20), kLease);
  ASSERT_TRUE(renewed.ok());
  EXPECT_TRUE(renewed->lost.empty());
  EXPECT_TRUE(store_->ClaimRuns("w2", kT0 + absl::Seconds(45), kLease)->empty());
  // w1 goes silent; after its lease ends, w2 takes the run over.
  auto other = Reopen();
  ASSERT_NE(other, nullptr);
  auto taken = other->ClaimRuns("w2", kT0 + absl::Seconds(51), kLease);
  ASSERT_TRUE(taken.ok());
  ASSERT_EQ(taken->size(), 1u);
  EXPECT_EQ((*taken)[0].id, (*ids)[0]);
  EXPECT_EQ((*taken)[0].worker, "w2");
  auto late = store_->RenewLeases("w1", *ids, kT0 + absl::Seconds(52), kLease);
  ASSERT_TRUE(late.ok());
  EXPECT_EQ(late->lost, *ids);
}

TEST_P(StateStoreContractTest, CancellingQueuedRunningAndFinishedRuns) {
  auto ids = store_->EnqueueRuns({Queued("a")});
  auto later = store_->EnqueueRuns({Queued("b")});
  ASSERT_TRUE(ids.ok() && later.ok());
  // Queued: cancelled at once and never claimed.
  auto cancelled = store_->CancelRun((*later)[0], kT0);
  ASSERT_TRUE(cancelled.ok()) << cancelled.status();
  EXPECT_EQ(cancelled->status, RunStatus::kCancelled);
  EXPECT_FALSE(cancelled->finished_at.empty());
  auto claimed = store_->ClaimRuns("w1", kT0, kLease);
  ASSERT_EQ(claimed->size(), 1u);
  EXPECT_TRUE(store_->ClaimRuns("w1", kT0, kLease)->empty());
  // Running: flagged for its worker.
  auto flagged = store_->CancelRun((*ids)[0], kT0);
  ASSERT_TRUE(flagged.ok());
  EXPECT_EQ(flagged->status, RunStatus::kRunning);
  EXPECT_TRUE(flagged->cancel_requested);
  auto renewal = store_->RenewLeases("w1", *ids, kT0 + absl::Seconds(1), kLease);
  ASSERT_TRUE(renewal.ok());
  EXPECT_EQ(renewal->cancel_requested, *ids);
  // Finished: refused.
  RunInfo done = (*claimed)[0];
  done.status = RunStatus::kCancelled;
  done.finished_at = "2026-01-01T00:01:00.000Z";
  ASSERT_TRUE(store_->UpdateRun(done).ok());
  EXPECT_EQ(store_->CancelRun(done.id, kT0).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(store_->CancelRun(999999, kT0).status().code(), absl::StatusCode::kNotFound);
}

TEST_P(StateStoreContractTest, ReleasedRunsGoBackToTheQueue) {
  auto ids = store_->EnqueueRuns({Queued("a")});
  ASSERT_EQ(store_->ClaimRuns("w1", kT0, kLease)->size(), 1u);
  ASSERT_TRUE(store_->ReleaseRuns("w1").ok());
  EXPECT_EQ(store_->GetRun((*ids)[0])->status, RunStatus::kQueued);
  auto again = store_->ClaimRuns("w2", kT0, kLease);
  ASSERT_EQ(again->size(), 1u);
  EXPECT_EQ((*again)[0].worker, "w2");
}

TEST_P(StateStoreContractTest, ListRunsFiltersAndPages) {
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(store_->EnqueueRuns({Queued("a")}).ok());
  ASSERT_TRUE(store_->EnqueueRuns({Queued("b", "orders")}).ok());
  RunFilter f;
  f.mapping = "a";
  f.limit = 2;
  auto page1 = store_->ListRuns(f);
  ASSERT_TRUE(page1.ok());
  ASSERT_EQ(page1->size(), 2u);
  EXPECT_GT((*page1)[0].id, (*page1)[1].id);
  f.before_id = page1->back().id;
  f.limit = 10;
  auto page2 = store_->ListRuns(f);
  ASSERT_EQ(page2->size(), 3u);
  EXPECT_LT((*page2)[0].id, page1->back().id);
  RunFilter by_model;
  by_model.model = "orders";
  EXPECT_EQ(store_->ListRuns(by_model)->size(), 1u);
  RunFilter by_status;
  by_status.status = RunStatus::kRunning;
  EXPECT_TRUE(store_->ListRuns(by_status)->empty());
  by_status.status = RunStatus::kQueued;
  EXPECT_EQ(store_->ListRuns(by_status)->size(), 6u);
}

TEST_P(StateStoreContractTest, ApiTokensAreFoundByHashAndRevoked) {
  ApiToken t{"ci", std::string(64, 'a'), true, "2026-01-01T00:00:00.000Z", ""};
  ASSERT_TRUE(store_->CreateApiToken(t).ok());
  EXPECT_EQ(store_->CreateApiToken(t).code(), absl::StatusCode::kAlreadyExists);
  auto found = store_->UseApiToken(t.token_hash, kT0);
  ASSERT_TRUE(found.ok());
  ASSERT_TRUE(found->has_value());
  EXPECT_EQ((*found)->name, "ci");
  EXPECT_TRUE((*found)->read_only);
  EXPECT_FALSE((*store_->ListApiTokens())[0].last_used_at.empty());
  EXPECT_FALSE(store_->UseApiToken(std::string(64, 'b'), kT0)->has_value());
  ASSERT_TRUE(store_->RevokeApiToken("ci").ok());
  EXPECT_FALSE(store_->UseApiToken(t.token_hash, kT0)->has_value());
  EXPECT_EQ(store_->RevokeApiToken("ci").code(), absl::StatusCode::kNotFound);
}

TEST_P(StateStoreContractTest, SecretsAndAlertStateRoundTrip) {
  std::string blob("\0\1\2secret-bytes", 15);
  ASSERT_TRUE(store_->PutSecret("hubspot_token", blob, kT0).ok());
  ASSERT_TRUE(store_->PutSecret("hubspot_token", blob + "2", kT0).ok());
  EXPECT_EQ(**store_->GetSecret("hubspot_token"), blob + "2");
  EXPECT_FALSE(store_->GetSecret("nope")->has_value());
  ASSERT_EQ(store_->ListSecrets()->size(), 1u);
  ASSERT_TRUE(store_->DeleteSecret("hubspot_token").ok());
  EXPECT_EQ(store_->DeleteSecret("hubspot_token").code(), absl::StatusCode::kNotFound);

  EXPECT_FALSE(store_->GetAlertState("mapping:a")->has_value());
  ASSERT_TRUE(store_->SetAlertState("mapping:a", "{\"open\":true}").ok());
  ASSERT_TRUE(store_->SetAlertState("mapping:a", "{\"open\":false}").ok());
  EXPECT_EQ(**store_->GetAlertState("mapping:a"), "{\"open\":false}");
}

}  // namespace
}  // namespace backflow::testing
