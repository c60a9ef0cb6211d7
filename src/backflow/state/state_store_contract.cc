#include "backflow/state/state_store_contract.h"

#include <atomic>
#include <set>
#include <thread>
#include <vector>

#include "backflow/state/state_store_testing.h"
#include "fmt/format.h"

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
  auto ids = QueueRuns(*store_, {Queued("a"), Queued("b")});
  ASSERT_TRUE(ids.ok()) << ids.status();
  ASSERT_EQ(ids->size(), 2u);
  auto other = QueueRuns(*store_, {Queued("c", "orders")});
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
  auto ids = QueueRuns(*store_, {Queued("a")});
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
  auto ids = QueueRuns(*store_, {Queued("a")});
  auto later = QueueRuns(*store_, {Queued("b")});
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

TEST_P(StateStoreContractTest, EnqueueUnlessActiveRefusesAMappingAlreadyQueuedOrRunning) {
  auto first = store_->EnqueueRunsUnlessActive({Queued("a"), Queued("b")});
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_EQ(first->ids.size(), 2u);
  EXPECT_FALSE(first->active);
  // "b" is queued: a request naming it queues nothing and names that run.
  auto refused = store_->EnqueueRunsUnlessActive({Queued("c"), Queued("b")});
  ASSERT_TRUE(refused.ok()) << refused.status();
  EXPECT_TRUE(refused->ids.empty());
  ASSERT_TRUE(refused->active);
  EXPECT_EQ(refused->active->id, first->ids[1]);
  EXPECT_EQ(refused->active->mapping, "b");
  EXPECT_EQ(refused->active->status, RunStatus::kQueued);
  RunFilter f;
  f.mapping = "c";
  EXPECT_TRUE(store_->ListRuns(f)->empty());
  // Running: still refused; finished: queued again.
  auto claimed = store_->ClaimRuns("w1", kT0, kLease);
  ASSERT_EQ(claimed->size(), 2u);
  auto running = store_->EnqueueRunsUnlessActive({Queued("a")});
  ASSERT_TRUE(running.ok());
  ASSERT_TRUE(running->active);
  EXPECT_EQ(running->active->status, RunStatus::kRunning);
  for (RunInfo r : *claimed) {
    r.status = RunStatus::kSucceeded;
    r.finished_at = "2026-01-01T00:01:00.000Z";
    ASSERT_TRUE(store_->UpdateRun(r).ok());
  }
  auto again = store_->EnqueueRunsUnlessActive({Queued("a"), Queued("b")});
  ASSERT_TRUE(again.ok());
  EXPECT_FALSE(again->active);
  EXPECT_EQ(again->ids.size(), 2u);
}

TEST_P(StateStoreContractTest, ConcurrentEnqueueUnlessActiveQueuesOnce) {
  // Two handles (two processes would have two): each round, both race to
  // queue the same mapping; exactly one wins, the other gets its run.
  std::unique_ptr<StateStore> other = Reopen();
  ASSERT_NE(other, nullptr);
  for (int round = 0; round < 20; ++round) {
    const std::string mapping = "m" + std::to_string(round);
    absl::StatusOr<StateStore::EnqueueOutcome> a, b;
    std::thread t([&] { a = other->EnqueueRunsUnlessActive({Queued(mapping)}); });
    b = store_->EnqueueRunsUnlessActive({Queued(mapping)});
    t.join();
    ASSERT_TRUE(a.ok()) << a.status();
    ASSERT_TRUE(b.ok()) << b.status();
    ASSERT_EQ(a->ids.size() + b->ids.size(), 1u) << "round " << round;
    const auto& winner = a->ids.empty() ? *b : *a;
    const auto& loser = a->ids.empty() ? *a : *b;
    ASSERT_TRUE(loser.active);
    EXPECT_EQ(loser.active->id, winner.ids[0]);
    RunFilter f;
    f.mapping = mapping;
    EXPECT_EQ(store_->ListRuns(f)->size(), 1u);
  }
}

TEST_P(StateStoreContractTest, ReleasedRunsGoBackToTheQueue) {
  auto ids = QueueRuns(*store_, {Queued("a")});
  ASSERT_EQ(store_->ClaimRuns("w1", kT0, kLease)->size(), 1u);
  ASSERT_TRUE(store_->ReleaseRuns("w1").ok());
  EXPECT_EQ(store_->GetRun((*ids)[0])->status, RunStatus::kQueued);
  auto again = store_->ClaimRuns("w2", kT0, kLease);
  ASSERT_EQ(again->size(), 1u);
  EXPECT_EQ((*again)[0].worker, "w2");
}

using Advance = StateStore::AdvanceOutcome::Result;

TEST_P(StateStoreContractTest, OneOfTwoHandlesWinsTheRaceForATick) {
  auto other = Reopen();
  ASSERT_NE(other, nullptr);
  const int64_t t0 = 1'800'000'000;
  // First sight of the model: both processes start counting; one state is kept.
  auto first = store_->AdvanceSchedule("customers", std::nullopt, {t0, 0, 0}, {}, {t0, 0, 0});
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(first->result, Advance::kQueued);
  EXPECT_TRUE(first->ids.empty());
  auto second =
      other->AdvanceSchedule("customers", std::nullopt, {t0 + 5, 0, 0}, {}, {t0 + 5, 0, 0});
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(second->result, Advance::kDecidedElsewhere);
  EXPECT_EQ((*store_->GetScheduleState("customers"))->last_tick, t0);

  // Both read last_tick t0 and decide the 1h tick: one queues it, with its
  // state; the other writes nothing.
  auto won = other->AdvanceSchedule("customers", t0, {t0 + 3600, 0, 2}, {Queued("a"), Queued("b")},
                                    {t0 + 3600, 3, 0});
  ASSERT_TRUE(won.ok()) << won.status();
  ASSERT_EQ(won->result, Advance::kQueued);
  EXPECT_FALSE(won->active);
  ASSERT_EQ(won->ids.size(), 2u);
  EXPECT_EQ(store_->GetRun(won->ids[1])->request_id, won->ids[0]);
  // The loser's mapping is queued by now, but the tick was decided first.
  auto lost =
      store_->AdvanceSchedule("customers", t0, {t0 + 3600, 7, 0}, {Queued("a")}, {t0 + 3600, 8, 0});
  ASSERT_TRUE(lost.ok()) << lost.status();
  EXPECT_EQ(lost->result, Advance::kDecidedElsewhere);
  EXPECT_FALSE(lost->active);
  EXPECT_TRUE(lost->ids.empty());
  EXPECT_EQ(*store_->CountRuns(RunStatus::kQueued), 2);
  auto state = store_->GetScheduleState("customers");
  ASSERT_TRUE(state.ok() && state->has_value());
  EXPECT_EQ((*state)->last_tick, t0 + 3600);
  EXPECT_EQ((*state)->skipped_ticks, 0);
  EXPECT_EQ((*state)->missed_ticks, 2);
  // A decision with no run (a skipped tick) advances the state all the same.
  auto skipped =
      store_->AdvanceSchedule("customers", t0 + 3600, {t0 + 7200, 1, 2}, {}, {t0 + 7200, 1, 2});
  ASSERT_TRUE(skipped.ok());
  EXPECT_EQ(skipped->result, Advance::kQueued);
  EXPECT_TRUE(skipped->ids.empty());

  // Handles racing from threads (as processes would): exactly one wins each tick.
  constexpr int kRacers = 4;
  std::vector<std::unique_ptr<StateStore>> handles;
  for (int i = 0; i < kRacers; ++i) {
    handles.push_back(Reopen());
    ASSERT_NE(handles.back(), nullptr);
  }
  int64_t last = t0 + 7200;
  for (int tick = 1; tick <= 5; ++tick) {
    const int64_t next = last + tick * 3600;
    std::atomic<int> ready{0};
    std::atomic<int> wins{0};
    std::vector<absl::Status> errors(kRacers);
    std::vector<std::thread> racers;
    for (int i = 0; i < kRacers; ++i) {
      racers.emplace_back([&, i] {
        ++ready;
        while (ready.load() < kRacers) std::this_thread::yield();
        const std::string mapping = fmt::format("m{}-{}", tick, i);
        auto r = handles[i]->AdvanceSchedule("customers", last, {next, 1, 2}, {Queued(mapping)},
                                             {next, 2, 1});
        if (!r.ok()) {
          errors[i] = r.status();
        } else if (r->result == Advance::kQueued) {
          ++wins;
        }
      });
    }
    for (std::thread& t : racers) t.join();
    for (const absl::Status& e : errors) EXPECT_TRUE(e.ok()) << e;
    EXPECT_EQ(wins.load(), 1) << "tick " << tick;
    last = next;
  }
  EXPECT_EQ(*store_->CountRuns(RunStatus::kQueued), 2 + 5);
  EXPECT_EQ((*store_->GetScheduleState("customers"))->last_tick, last);
}

TEST_P(StateStoreContractTest, ATickWhoseMappingHasARunQueuedOrRunningIsSkipped) {
  const int64_t t0 = 1'800'000'000;
  ASSERT_TRUE(store_->AdvanceSchedule("customers", std::nullopt, {t0, 0, 0}, {}, {t0, 0, 0}).ok());
  // "b" was queued through the API since the scheduler looked.
  auto api = store_->EnqueueRunsUnlessActive({Queued("b")});
  ASSERT_TRUE(api.ok()) << api.status();
  ASSERT_EQ(api->ids.size(), 1u);

  auto busy = store_->AdvanceSchedule("customers", t0, {t0 + 3600, 0, 2},
                                      {Queued("a"), Queued("b")}, {t0 + 3600, 3, 0});
  ASSERT_TRUE(busy.ok()) << busy.status();
  EXPECT_EQ(busy->result, Advance::kSkippedBusy);
  EXPECT_TRUE(busy->ids.empty());
  ASSERT_TRUE(busy->active);
  EXPECT_EQ(busy->active->id, api->ids[0]);
  EXPECT_EQ(busy->active->mapping, "b");
  EXPECT_EQ(busy->active->status, RunStatus::kQueued);
  // Nothing queued (not even "a", which was idle); the tick counts as skipped.
  EXPECT_EQ(*store_->CountRuns(RunStatus::kQueued), 1);
  RunFilter fa;
  fa.mapping = "a";
  EXPECT_TRUE(store_->ListRuns(fa)->empty());
  auto state = store_->GetScheduleState("customers");
  ASSERT_TRUE(state.ok() && state->has_value());
  EXPECT_EQ((*state)->last_tick, t0 + 3600);
  EXPECT_EQ((*state)->skipped_ticks, 3);
  EXPECT_EQ((*state)->missed_ticks, 0);

  // Running: skipped all the same.
  auto claimed = store_->ClaimRuns("w1", kT0, kLease);
  ASSERT_TRUE(claimed.ok());
  ASSERT_EQ(claimed->size(), 1u);
  auto running = store_->AdvanceSchedule("customers", t0 + 3600, {t0 + 7200, 3, 0}, {Queued("b")},
                                         {t0 + 7200, 4, 0});
  ASSERT_TRUE(running.ok()) << running.status();
  EXPECT_EQ(running->result, Advance::kSkippedBusy);
  ASSERT_TRUE(running->active);
  EXPECT_EQ(running->active->id, api->ids[0]);
  EXPECT_EQ(running->active->status, RunStatus::kRunning);
  EXPECT_EQ((*store_->GetScheduleState("customers"))->skipped_ticks, 4);

  // A stale decision stays the other process's, busy or not: nothing written.
  auto stale =
      store_->AdvanceSchedule("customers", t0, {t0 + 3600, 9, 9}, {Queued("b")}, {t0 + 3600, 9, 9});
  ASSERT_TRUE(stale.ok()) << stale.status();
  EXPECT_EQ(stale->result, Advance::kDecidedElsewhere);
  EXPECT_FALSE(stale->active);
  EXPECT_EQ((*store_->GetScheduleState("customers"))->last_tick, t0 + 7200);

  // Finished: the next tick queues.
  RunInfo done = (*claimed)[0];
  done.status = RunStatus::kSucceeded;
  done.finished_at = "2026-01-01T00:01:00.000Z";
  ASSERT_TRUE(store_->UpdateRun(done).ok());
  auto queued = store_->AdvanceSchedule("customers", t0 + 7200, {t0 + 10800, 4, 0},
                                        {Queued("a"), Queued("b")}, {t0 + 10800, 5, 0});
  ASSERT_TRUE(queued.ok()) << queued.status();
  EXPECT_EQ(queued->result, Advance::kQueued);
  EXPECT_FALSE(queued->active);
  EXPECT_EQ(queued->ids.size(), 2u);
  EXPECT_EQ((*store_->GetScheduleState("customers"))->skipped_ticks, 4);
  // ... and the API now finds the scheduled run.
  auto refused = store_->EnqueueRunsUnlessActive({Queued("a")});
  ASSERT_TRUE(refused.ok());
  ASSERT_TRUE(refused->active);
  EXPECT_EQ(refused->active->id, queued->ids[0]);
}

TEST_P(StateStoreContractTest, ATickRacingAnApiRequestNeverLeavesTwoActiveRuns) {
  // Two handles (two processes would have two): each round, the API queues a
  // mapping while the scheduler queues the model's tick with it. One run is
  // queued: the API's (the tick is skipped) or the tick's (the API is refused).
  std::unique_ptr<StateStore> api = Reopen();
  ASSERT_NE(api, nullptr);
  const int64_t t0 = 1'800'000'000;
  ASSERT_TRUE(store_->AdvanceSchedule("customers", std::nullopt, {t0, 0, 0}, {}, {t0, 0, 0}).ok());
  constexpr int kRounds = 300;
  int skipped = 0;
  int64_t last = t0;
  for (int round = 0; round < kRounds; ++round) {
    const std::string mapping = "m" + std::to_string(round);
    const int64_t next = last + 3600;
    absl::StatusOr<StateStore::EnqueueOutcome> enqueued;
    std::atomic<int> ready{0};
    std::thread t([&] {
      ++ready;
      while (ready.load() < 2) std::this_thread::yield();
      enqueued = api->EnqueueRunsUnlessActive({Queued(mapping)});
    });
    ++ready;
    while (ready.load() < 2) std::this_thread::yield();
    auto tick = store_->AdvanceSchedule("customers", last, {next, skipped, 0}, {Queued(mapping)},
                                        {next, skipped + 1, 0});
    t.join();
    ASSERT_TRUE(enqueued.ok()) << enqueued.status();
    ASSERT_TRUE(tick.ok()) << tick.status();
    RunFilter f;
    f.mapping = mapping;
    auto runs = store_->ListRuns(f);
    ASSERT_TRUE(runs.ok());
    ASSERT_EQ(runs->size(), 1u) << "round " << round;
    const int64_t only = (*runs)[0].id;
    if (tick->result == Advance::kQueued) {
      ASSERT_EQ(tick->ids, std::vector<int64_t>{only}) << "round " << round;
      ASSERT_TRUE(enqueued->ids.empty());
      ASSERT_TRUE(enqueued->active);
      EXPECT_EQ(enqueued->active->id, only);
    } else {
      ASSERT_EQ(tick->result, Advance::kSkippedBusy) << "round " << round;
      ASSERT_EQ(enqueued->ids, std::vector<int64_t>{only}) << "round " << round;
      ASSERT_TRUE(tick->active);
      EXPECT_EQ(tick->active->id, only);
      ++skipped;
    }
    last = next;
  }
  // Every tick advanced the state, skipped or not.
  auto state = store_->GetScheduleState("customers");
  ASSERT_TRUE(state.ok() && state->has_value());
  EXPECT_EQ((*state)->last_tick, last);
  EXPECT_EQ((*state)->skipped_ticks, skipped);
  EXPECT_EQ(*store_->CountRuns(RunStatus::kQueued), kRounds);
}

TEST_P(StateStoreContractTest, ALostRunRefusesTheOldWorkersWrites) {
  auto ids = QueueRuns(*store_, {Queued("a")});
  ASSERT_TRUE(ids.ok());
  auto mine = store_->ClaimRuns("w1", kT0, kLease);
  ASSERT_EQ(mine->size(), 1u);
  RunInfo progress = (*mine)[0];
  progress.counts.succeeded = 10;
  ASSERT_TRUE(store_->UpdateRun(progress).ok());  // still w1's
  EXPECT_EQ(store_->GetRun(progress.id)->counts.succeeded, 10);

  // w1 stops renewing; w2 takes the run over.
  auto other = Reopen();
  ASSERT_NE(other, nullptr);
  auto theirs = other->ClaimRuns("w2", kT0 + kLease + absl::Seconds(1), kLease);
  ASSERT_EQ(theirs->size(), 1u);
  RunInfo late = progress;
  late.status = RunStatus::kSucceeded;
  late.counts.succeeded = 99;
  late.finished_at = "2026-01-01T00:05:00.000Z";
  absl::Status refused = store_->UpdateRun(late);
  EXPECT_TRUE(IsRunTakenOver(refused)) << refused;
  EXPECT_EQ(refused.code(), absl::StatusCode::kAborted);
  EXPECT_NE(refused.message().find("w2"), std::string::npos) << refused;
  auto row = store_->GetRun(progress.id);
  ASSERT_TRUE(row.ok());
  EXPECT_EQ(row->status, RunStatus::kRunning);
  EXPECT_EQ(row->worker, "w2");
  EXPECT_EQ(row->counts.succeeded, 10);
  EXPECT_TRUE(row->finished_at.empty());

  // The new holder's writes go through.
  RunInfo done = (*theirs)[0];
  done.status = RunStatus::kSucceeded;
  done.counts.succeeded = 42;
  done.finished_at = "2026-01-01T00:06:00.000Z";
  ASSERT_TRUE(other->UpdateRun(done).ok());
  EXPECT_EQ(store_->GetRun(done.id)->counts.succeeded, 42);
  EXPECT_TRUE(IsRunTakenOver(store_->UpdateRun(late)));

  // Runs of `backflow sync` have no worker and are not affected.
  RunInfo cli;
  cli.mapping = "a";
  cli.model = "customers";
  cli.destination = "hook";
  cli.started_at = "2026-01-01T00:00:00.000Z";
  auto cli_id = store_->CreateRun(cli);
  ASSERT_TRUE(cli_id.ok());
  cli.id = *cli_id;
  cli.status = RunStatus::kSucceeded;
  ASSERT_TRUE(store_->UpdateRun(cli).ok());
  EXPECT_EQ(store_->GetRun(cli.id)->status, RunStatus::kSucceeded);
}

TEST_P(StateStoreContractTest, ListRunsFiltersAndPages) {
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(RecordFinishedRuns(*store_, {Queued("a")}).ok());
  ASSERT_TRUE(QueueRuns(*store_, {Queued("b", "orders")}).ok());
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
  EXPECT_EQ(store_->ListRuns(by_status)->size(), 1u);
  by_status.status = RunStatus::kSucceeded;
  EXPECT_EQ(store_->ListRuns(by_status)->size(), 5u);
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

// Drains a scanner into (key, identity) pairs, in the order it returned them.
std::vector<std::pair<std::string, std::string>> Drain(
    absl::StatusOr<std::unique_ptr<CheckpointScanner>> scanner) {
  std::vector<std::pair<std::string, std::string>> out;
  EXPECT_TRUE(scanner.ok()) << scanner.status();
  if (!scanner.ok()) return out;
  CheckpointEntry e;
  while (true) {
    auto more = (*scanner)->Next(e);
    EXPECT_TRUE(more.ok()) << more.status();
    if (!more.ok() || !*more) break;
    out.emplace_back(e.key, e.identity);
  }
  return out;
}

TEST_P(StateStoreContractTest, InFlightMarksLastUntilSettledAcrossCommitsAndReopening) {
  using Pairs = std::vector<std::pair<std::string, std::string>>;
  using Kind = CheckpointUpdate::Kind;
  ASSERT_TRUE(store_->MarkInFlight("m", {{"b", "ib"}, {"a", "ia"}, {"b", "ib2"}}).ok());
  ASSERT_TRUE(store_->MarkInFlight("other", {{"z", "iz"}}).ok());
  EXPECT_EQ(Drain(store_->ScanInFlight("m")), (Pairs{{"a", "ia"}, {"b", "ib2"}}));

  // An upsert, a remove and a settle each clear their key's mark; only the
  // upsert and the remove touch the checkpoint.
  ASSERT_TRUE(
      store_->ApplyCheckpoint("m", {{.key = "x", .fingerprint = Fingerprint128("x")}}).ok());
  ASSERT_TRUE(store_->MarkInFlight("m", {{"c", "ic"}, {"x", "ix"}, {"d", "id"}}).ok());
  ASSERT_TRUE(store_
                  ->ApplyCheckpoint("m", {{.key = "a", .fingerprint = Fingerprint128("a")},
                                          {.key = "x", .kind = Kind::kRemove},
                                          {.key = "b", .kind = Kind::kSettle}})
                  .ok());
  EXPECT_EQ(Drain(store_->ScanInFlight("m")), (Pairs{{"c", "ic"}, {"d", "id"}}));
  EXPECT_EQ(Drain(store_->ScanCheckpoint("m")), (Pairs{{"a", ""}}));

  // A run's commit keeps what is still in flight, and so does reopening.
  ASSERT_TRUE(store_->CommitCheckpoint("m").ok());
  EXPECT_EQ(Drain(store_->ScanInFlight("m")), (Pairs{{"c", "ic"}, {"d", "id"}}));
  ASSERT_TRUE(store_->ApplyCheckpoint("m", {{.key = "c", .kind = Kind::kSettle}}).ok());
  store_.reset();
  store_ = Reopen();
  ASSERT_NE(store_, nullptr);
  EXPECT_EQ(Drain(store_->ScanInFlight("m")), (Pairs{{"d", "id"}}));
  EXPECT_EQ(Drain(store_->ScanInFlight("other")), (Pairs{{"z", "iz"}}));
  EXPECT_EQ(*store_->CheckpointSize("m"), 1);

  // A reset forgets the mapping's marks and checkpoint, not another mapping's.
  ASSERT_TRUE(store_->ResetCheckpoint("m").ok());
  EXPECT_TRUE(Drain(store_->ScanInFlight("m")).empty());
  EXPECT_TRUE(Drain(store_->ScanCheckpoint("m")).empty());
  EXPECT_EQ(Drain(store_->ScanInFlight("other")), (Pairs{{"z", "iz"}}));
}

// The engine's call per batch: the outcomes of the batches that came back,
// then the marks of the next one.
TEST_P(StateStoreContractTest, ApplyAndMarkSettlesThenMarks) {
  using Pairs = std::vector<std::pair<std::string, std::string>>;
  using Kind = CheckpointUpdate::Kind;
  ASSERT_TRUE(store_->MarkInFlight("m", {{"a", "ia"}, {"b", "ib"}, {"c", "ic"}}).ok());
  ASSERT_TRUE(store_
                  ->ApplyAndMark("m",
                                 {{.key = "a", .fingerprint = Fingerprint128("a")},
                                  {.key = "b", .kind = Kind::kSettle}},
                                 {{"d", "id"}, {"e", "ie"}})
                  .ok());
  EXPECT_EQ(Drain(store_->ScanInFlight("m")), (Pairs{{"c", "ic"}, {"d", "id"}, {"e", "ie"}}));
  EXPECT_EQ(Drain(store_->ScanCheckpoint("m")), (Pairs{{"a", ""}}));
  // Either side may be empty.
  ASSERT_TRUE(store_->ApplyAndMark("m", {}, {{"f", "if"}}).ok());
  ASSERT_TRUE(store_->ApplyAndMark("m", {{.key = "c", .kind = Kind::kRemove}}, {}).ok());
  ASSERT_TRUE(store_->ApplyAndMark("m", {}, {}).ok());
  store_.reset();
  store_ = Reopen();
  ASSERT_NE(store_, nullptr);
  EXPECT_EQ(Drain(store_->ScanInFlight("m")), (Pairs{{"d", "id"}, {"e", "ie"}, {"f", "if"}}));
  EXPECT_EQ(*store_->CheckpointSize("m"), 1);
}

}  // namespace
}  // namespace backflow::testing
