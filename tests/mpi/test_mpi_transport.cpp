// The MPI transport under mpirun (2 or 3 ranks), or with the argument `staged` the staged transport (the NCCL
// transport's protocol: MPI headers, payloads on a data plane matched in order) over its host data plane. Every
// test runs on every rank, in the same order, and ends on a barrier; a rank's failures are printed with its rank,
// and all ranks exit with the worst result.
#include <gtest/gtest.h>
#include <mpi.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/error.h"
#include "mpi/mpi_transport.h"
#include "mpi/staged_transport.h"

namespace onestep::pipeline {
namespace {

Transport* g_t = nullptr;

int rank() { return g_t->stage(); }
int size() { return g_t->stages(); }
int next() { return (rank() + 1) % size(); }
int prev() { return (rank() + size() - 1) % size(); }

struct BarrierAtEnd {
  ~BarrierAtEnd() { MPI_Barrier(MPI_COMM_WORLD); }
};

// Deterministic payload of message k from stage `from`.
std::vector<float> payload(int from, int k, int64_t n) {
  std::vector<float> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[i] = static_cast<float>(from * 1000 + k) + static_cast<float>(i % 997) * 0.25f;
  return v;
}

TEST(MpiTransport, RanksAreStages) {
  BarrierAtEnd b;
  EXPECT_TRUE(launched_by_mpirun());
  EXPECT_EQ(g_t->stages(), mpi_world_size());
  EXPECT_EQ(g_t->stage(), mpi_rank());
  EXPECT_GE(g_t->stages(), 2);
}

TEST(MpiTransport, ManyTagsSentBeforeReceivedAndReceivedOutOfOrder) {
  BarrierAtEnd b;
  const int kMsgs = 24;
  auto len = [](int k) { return static_cast<int64_t>(k * 37 + 1); };
  // Everything is sent before anyone receives: sends must not block.
  for (int k = 0; k < kMsgs; ++k) {
    const auto v = payload(rank(), k, len(k));
    g_t->send(next(), message_tag(k % 2 ? MsgKind::activation : MsgKind::gradient, 100 + k, k % 5), v.data(), len(k));
  }
  // Received in reverse order of sending.
  for (int k = kMsgs - 1; k >= 0; --k) {
    std::vector<float> got(static_cast<size_t>(len(k)), -1.0f);
    g_t->recv(prev(), message_tag(k % 2 ? MsgKind::activation : MsgKind::gradient, 100 + k, k % 5), got.data(), len(k));
    ASSERT_EQ(got, payload(prev(), k, len(k))) << "message " << k;
  }
}

TEST(MpiTransport, EqualTagsArriveInOrder) {
  BarrierAtEnd b;
  const uint32_t tag = message_tag(MsgKind::tied_grad, 7, 3);
  for (int k = 0; k < 10; ++k) {
    const auto v = payload(rank(), k, 64);
    g_t->send(next(), tag, v.data(), 64);
  }
  for (int k = 0; k < 10; ++k) {
    std::vector<float> got(64);
    g_t->recv(prev(), tag, got.data(), 64);
    ASSERT_EQ(got, payload(prev(), k, 64)) << "message " << k;
  }
}

TEST(MpiTransport, PingPong) {
  BarrierAtEnd b;
  if (rank() > 1) return;
  const int other = 1 - rank();
  std::vector<float> x(1000);
  for (int round = 0; round < 50; ++round) {
    const uint32_t tag = message_tag(MsgKind::activation, round, 0);
    if (rank() == 0) {
      for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(round + i);
      g_t->send(other, tag, x.data(), 1000);
      g_t->recv(other, tag, x.data(), 1000);
      ASSERT_EQ(x[999], static_cast<float>(round + 999) * 2.0f);
    } else {
      g_t->recv(other, tag, x.data(), 1000);
      for (float& f : x) f *= 2.0f;
      g_t->send(other, tag, x.data(), 1000);
    }
  }
}

TEST(MpiTransport, LargeMessagesBothWaysAtOnce) {
  BarrierAtEnd b;
  const int64_t n = 2 * 1024 * 1024;  // 8 MB of floats: rendezvous protocol, not eager
  for (int k = 0; k < 3; ++k) {
    const auto v = payload(rank(), k, n);
    g_t->send(next(), message_tag(MsgKind::weights, 1, k), v.data(), n);
    if (size() > 2) g_t->send(prev(), message_tag(MsgKind::weights, 2, k), v.data(), n);
  }
  std::vector<float> got(n);
  for (int k = 2; k >= 0; --k) {
    std::fill(got.begin(), got.end(), 0.0f);
    g_t->recv(prev(), message_tag(MsgKind::weights, 1, k), got.data(), n);
    ASSERT_EQ(got, payload(prev(), k, n)) << "message " << k;
    if (size() > 2) {
      g_t->recv(next(), message_tag(MsgKind::weights, 2, k), got.data(), n);
      ASSERT_EQ(got, payload(next(), k, n)) << "message " << k << " from next";
    }
  }
}

TEST(MpiTransport, EmptyMessage) {
  BarrierAtEnd b;
  g_t->send(next(), 5, nullptr, 0);
  float dummy = 0;
  g_t->recv(prev(), 5, &dummy, 0);
}

TEST(MpiTransport, WrongLengthIsAnInternalErrorAndIsConsumed) {
  BarrierAtEnd b;
  const uint32_t tag = message_tag(MsgKind::activation, 9, 9);
  const auto five = payload(rank(), 1, 5);
  const auto four = payload(rank(), 2, 4);
  g_t->send(next(), tag, five.data(), 5);
  g_t->send(next(), tag, four.data(), 4);
  std::vector<float> got(4);
  try {
    g_t->recv(prev(), tag, got.data(), 4);
    ADD_FAILURE() << "no error for a message of 5 floats received as 4";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ExitCode::internal);
    EXPECT_NE(std::string(e.what()).find("has 5 floats, expected 4"), std::string::npos) << e.what();
  }
  g_t->recv(prev(), tag, got.data(), 4);  // the next message is intact
  EXPECT_EQ(got, payload(prev(), 2, 4));
}

TEST(MpiTransport, BadArgumentsAreInternalErrors) {
  BarrierAtEnd b;
  float x = 0;
  EXPECT_THROW(g_t->send(size(), 1, &x, 1), Error);
  EXPECT_THROW(g_t->send(-1, 1, &x, 1), Error);
  EXPECT_THROW(g_t->recv(next(), 0x80000000u, &x, 1), Error);
  EXPECT_THROW(g_t->send(next(), 1, &x, -1), Error);
}

TEST(MpiTransport, SumOfDisjointEntriesIsExactOnAllRanks) {
  BarrierAtEnd b;
  const int64_t n = 100003;
  auto local = [&](int r, int which) {
    std::vector<double> v(n, 0.0);
    for (int64_t i = r; i < n; i += size()) v[i] = (r + 1) * 1.1 + i * 1e-7 + which * 3.3;
    return v;
  };
  // Three sums in flight at once, waited for in reverse order.
  std::vector<std::unique_ptr<PendingSum>> pending;
  for (int which = 0; which < 3; ++which) pending.push_back(g_t->start_sum(40 + which, local(rank(), which)));
  for (int which = 2; which >= 0; --which) {
    const std::vector<double> got = pending[which]->wait();
    ASSERT_EQ(static_cast<int64_t>(got.size()), n);
    std::vector<std::vector<double>> parts;  // every rank's input (computed by the same code)
    for (int r = 0; r < size(); ++r) parts.push_back(local(r, which));
    for (int64_t i = 0; i < n; ++i) {
      const double want = parts[i % size()][i];
      ASSERT_NE(want, 0.0);
      ASSERT_EQ(got[i], want) << "entry " << i << " of sum " << which;
    }
  }
  EXPECT_THROW(pending[0]->wait(), Error);  // waited twice
}

TEST(MpiTransport, SumOverlapsWithMessages) {
  BarrierAtEnd b;
  std::vector<double> mine(size(), 0.0);
  mine[rank()] = rank() + 0.5;
  auto sum = g_t->start_sum(77, mine);
  const auto v = payload(rank(), 0, 1000);
  g_t->send(next(), 77, v.data(), 1000);
  std::vector<float> got(1000);
  g_t->recv(prev(), 77, got.data(), 1000);
  EXPECT_EQ(got, payload(prev(), 0, 1000));
  const auto total = sum->wait();
  for (int r = 0; r < size(); ++r) EXPECT_EQ(total[r], r + 0.5);
}

TEST(MpiTransport, MissingMessageTimesOut) {
  BarrierAtEnd b;
  std::optional<std::string> old;
  if (const char* v = std::getenv("ONESTEP_PEER_TIMEOUT_S")) old = v;
  setenv("ONESTEP_PEER_TIMEOUT_S", "2", 1);
  if (rank() == 0) {
    float x = 0;
    const auto t0 = std::chrono::steady_clock::now();
    try {
      g_t->recv(1, message_tag(MsgKind::gradient, 12345, 1), &x, 1);  // rank 1 never sends it
      ADD_FAILURE() << "no timeout";
    } catch (const Error& e) {
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      EXPECT_EQ(e.code(), ExitCode::internal);
      EXPECT_NE(std::string(e.what()).find("stage 0: no message from stage 1 (tag "), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("within 2 s; the peer died or hung"), std::string::npos) << e.what();
      EXPECT_GE(s, 1.9);
      EXPECT_LE(s, 4.0);
    }
  }
  if (old)
    setenv("ONESTEP_PEER_TIMEOUT_S", old->c_str(), 1);
  else
    unsetenv("ONESTEP_PEER_TIMEOUT_S");
}

// Prints only failures, prefixed with the rank (ranks other than 0 use this instead of the default printer).
class RankFailurePrinter : public ::testing::EmptyTestEventListener {
 public:
  explicit RankFailurePrinter(int rank) : rank_(rank) {}
  void OnTestPartResult(const ::testing::TestPartResult& r) override {
    if (r.failed())
      std::fprintf(stderr, "[rank %d] %s:%d: Failure\n%s\n", rank_, r.file_name() ? r.file_name() : "?",
                   r.line_number(), r.summary());
  }

 private:
  int rank_;
};

}  // namespace
}  // namespace onestep::pipeline

int main(int argc, char** argv) {
  using namespace onestep::pipeline;
  ::testing::InitGoogleTest(&argc, argv);
  const bool staged = argc > 1 && std::string(argv[1]) == "staged";
  // Either initialises MPI; it is finalised at exit when the status is 0.
  auto transport = staged ? make_staged_transport(make_mpi_data_plane()) : make_mpi_transport();
  g_t = transport.get();
  if (transport->stage() != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new RankFailurePrinter(transport->stage()));
  }
  int rc = RUN_ALL_TESTS();
  int worst = 0;
  MPI_Allreduce(&rc, &worst, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  transport.reset();
  return worst;  // non-zero: no MPI_Finalize, mpirun reports the failure
}
