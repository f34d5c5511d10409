// `onestep train` with pipeline.schedule != none: one thread per stage (in-process transport; on CUDA the stages
// are spread over the process's GPUs), or one MPI rank per stage (the mpi transport on CPUs, the nccl transport
// with one GPU per rank; each process runs its own stage and rank 0 writes the shared files), each stage running
// its action list through a StageRunner. The run is cut into segments at evaluation and checkpoint steps:
// each segment is a fresh stream of the schedule (warm-up, steady state, cool-down) over its batches, with
// every forward/backward's weight version given by the schedule's rule on the absolute batch index, so
// cutting changes the timing but never the arithmetic.
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <optional>
#include <cstdio>
#include <exception>
#include <thread>

#include "core/env.h"
#include "core/error.h"
#include "core/threads.h"
#include "core/timer.h"
#include "pipeline/schedule.h"
#include "pipeline/transport.h"
#include "train/checkpoint.h"
#include "train/partition.h"
#include "train/stage_runner.h"
#include "train/trainer_internal.h"
#ifdef ONESTEP_HAVE_MPI
#include "mpi/mpi_transport.h"
#include "mpi/staged_transport.h"
#endif
#ifdef ONESTEP_HAVE_NCCL
#include "nccl/nccl_transport.h"
#endif

namespace onestep {

using pipeline::Action;
using pipeline::Op;

namespace {

// The schedule of batches [first, end) as a fresh stream, with absolute batch indices and versions.
pipeline::Schedule segment_schedule(const RunConfig& c, int64_t first, int64_t end) {
  const std::string& name = c.pipeline.schedule;
  const int p = c.pipeline.stages;
  const int64_t K = c.pipeline.sync_start_steps;
  const int64_t local_k = name == "sync_start" ? std::max<int64_t>(0, K - first) : 0;
  pipeline::Schedule s = pipeline::make_schedule(name, p, c.train.micro_batches, end - first, local_k, c.pipeline.lookahead);
  for (int st = 0; st < p; ++st)
    for (Action& a : s.programs[st]) {
      a.batch += first;
      if (a.op == Op::forward || a.op == Op::backward) a.version = pipeline::version_for(name, a.batch, st, p, K);
      if (a.op == Op::step) a.version = a.batch + 1;
    }
  return s;
}

// Copies each stage's parameters into a whole-model buffer by name (for evaluation and sampling).
void gather_whole(const std::vector<std::unique_ptr<StageState>>& states, const Stage& whole, Buffer<float>& out) {
  out.zeros(static_cast<size_t>(whole.params().total()));
  for (const auto& s : states)
    if (s)
      for (const auto& p : s->stage.params().all())
        s->backend.copy(out.data() + whole.params().at(p.name).offset, s->weights.data() + p.offset, p.numel);
}

// The real run's timeline as Chrome trace events (one track per stage), viewable in Perfetto. Under MPI every
// rank's actions reach rank 0 through two all-stage sums (the counts and clock origins, then the events, each
// rank filling its own slice); steady_clock is the machine's monotonic clock, so the ranks' times line up
// after shifting them to the earliest origin. Returns on ranks other than 0 after contributing.
void write_trace(const std::string& path, const std::vector<std::unique_ptr<StageRunner>>& runners,
                 pipeline::Transport* mpi) {
  const int p = static_cast<int>(runners.size());
  constexpr int kFields = 7;  // op, batch, micro, version, peer, start, end (seconds on the runner's clock)
  std::vector<double> head(2 * p, 0.0), flat;
  for (int s = 0; s < p; ++s)
    if (runners[s]) head[s] = static_cast<double>(runners[s]->executed().size()), head[p + s] = runners[s]->origin_s();
  std::vector<int64_t> offset(p + 1, 0);
  if (mpi) head = mpi->start_sum(pipeline::message_tag(pipeline::MsgKind::weights, 0, 5), head)->wait();
  for (int s = 0; s < p; ++s) offset[s + 1] = offset[s] + static_cast<int64_t>(head[s]) * kFields;
  flat.assign(static_cast<size_t>(offset[p]), 0.0);
  for (int s = 0; s < p; ++s) {
    if (!runners[s]) continue;
    double* out = flat.data() + offset[s];
    for (const ExecutedAction& e : runners[s]->executed()) {
      const Action& a = e.action;
      *out++ = static_cast<double>(a.op), *out++ = static_cast<double>(a.batch), *out++ = a.micro;
      *out++ = static_cast<double>(a.version), *out++ = a.peer, *out++ = e.start_s, *out++ = e.end_s;
    }
  }
  if (mpi) {
    flat = mpi->start_sum(pipeline::message_tag(pipeline::MsgKind::weights, 0, 6), flat)->wait();
    if (mpi->stage() != 0) return;
  }
  const double origin = *std::min_element(head.begin() + p, head.end());
  nlohmann::json events = nlohmann::json::array();
  for (int s = 0; s < p; ++s) {
    events.push_back({{"name", "thread_name"}, {"ph", "M"}, {"pid", 0}, {"tid", s}, {"args", {{"name", "stage " + std::to_string(s)}}}});
    const double shift = head[p + s] - origin;
    for (int64_t i = offset[s]; i < offset[s + 1]; i += kFields) {
      const double* f = flat.data() + i;
      const Action a{static_cast<pipeline::Op>(static_cast<int>(f[0])), static_cast<int64_t>(f[1]), static_cast<int>(f[2]),
                     static_cast<int64_t>(f[3]), static_cast<int>(f[4])};
      events.push_back({{"name", pipeline::action_token(a)}, {"cat", pipeline::op_name(a.op)}, {"ph", "X"}, {"pid", 0},
                        {"tid", s}, {"ts", (f[5] + shift) * 1e6}, {"dur", (f[6] - f[5]) * 1e6},
                        {"args", {{"batch", a.batch}, {"micro", a.micro}, {"version", a.version}}}});
    }
  }
  std::ofstream(path) << nlohmann::json{{"traceEvents", events}, {"displayTimeUnit", "ms"}}.dump() << "\n";
}

// What the partition balances. Measured costs are timed with one stage's thread count; under MPI every rank
// must cut the model in the same place, so rank 0's timings are shared (a sum to which the others add zeros).
ModelCosts pipeline_costs(const RunConfig& c, int rank, pipeline::Transport* mpi_transport, int threads_per_stage) {
  if (c.pipeline.balance != "measured") return parameter_costs(c.model);
  ModelCosts costs = parameter_costs(c.model);  // ranks other than 0 need only its length: 0's values arrive below
  if (rank == 0) {
    const int before = num_threads();
    set_num_threads(threads_per_stage);
    costs = measured_costs(c.model, c.train.micro_batch_size);
    set_num_threads(before);
  }
  if (mpi_transport) {
    if (rank != 0) std::fill(costs.pieces.begin(), costs.pieces.end(), 0.0);
    const uint32_t tag = pipeline::message_tag(pipeline::MsgKind::weights, 0, 2);
    costs.pieces = mpi_transport->start_sum(tag, costs.pieces)->wait();
  }
  return costs;
}

}  // namespace

// The mpi and nccl transports run one process per stage, started by mpirun.
bool rank_per_stage(const RunConfig& c) { return c.pipeline.transport != "inproc"; }

int pipeline_rank(const RunConfig& c) {
  if (!rank_per_stage(c)) return 0;
#ifdef ONESTEP_HAVE_MPI
  const int world = pipeline::mpi_world_size();
  if (world != c.pipeline.stages)
    bad_input(c.source, "pipeline.stages: " + std::to_string(c.pipeline.stages) + " stages, but mpirun started " +
                            std::to_string(world) + " ranks; expected mpirun -np " + std::to_string(c.pipeline.stages));
  if (c.pipeline.transport == "nccl") {  // each rank takes the GPU of its place on its machine
    const pipeline::HostSlot slot = pipeline::host_slot();
    const int gpus = device_memory::gpu_count();
    if (gpus < slot.local_ranks)
      bad_input(c.source, "pipeline.transport: 'nccl' needs a GPU per stage, but " + std::to_string(slot.local_ranks) +
                              " ranks run on " + slot.host + ", which has " + std::to_string(gpus) +
                              " visible GPU(s) (fewer stages, more machines, or check CUDA_VISIBLE_DEVICES)");
    device_memory::use_gpu(slot.local_rank);
  }
  return pipeline::mpi_rank();
#else
  bad_input(c.source, "pipeline.transport: '" + c.pipeline.transport + "', but this onestep was built without MPI "
                      "(install libopenmpi-dev and rebuild)");
#endif
}

void run_pipeline(const RunConfig& c, RunIO& io) {
  const int p = c.pipeline.stages;
  const bool multiprocess = rank_per_stage(c);  // one stage per process (mpi or nccl transport)
  const int rank = pipeline_rank(c);
  const Device device = parse_device(c.train.device);
  const Backend& backend = backend_for(device);
  // The GPU of each stage: under nccl the one pipeline_rank chose; in-process, consecutive stages share the
  // visible GPUs evenly (one GPU: all stages on it). Each thread that allocates or computes for stage s selects
  // its GPU first (a new thread starts on GPU 0).
  std::vector<int> gpu_of(p, 0);
  if (device == Device::cuda) {
    const int gpus = multiprocess ? 0 : std::min(p, device_memory::gpu_count());
    for (int s = 0; s < p; ++s) gpu_of[s] = multiprocess ? device_memory::current_gpu() : s * gpus / p;
    if (gpus > 1) device_memory::connect_gpus(gpus);  // messages and the gather copy GPU to GPU directly
  }
  auto use_gpu_of = [&](int s) {
    if (device == Device::cuda) device_memory::use_gpu(gpu_of[s]);
  };
  std::vector<std::unique_ptr<pipeline::Transport>> transports(p);
  if (c.pipeline.transport == "nccl") {
#ifdef ONESTEP_HAVE_NCCL
    transports[rank] = pipeline::make_nccl_transport();
#endif
  } else if (multiprocess) {
#ifdef ONESTEP_HAVE_MPI
    // ONESTEP_MPI_PAYLOADS=staged: the payloads go through the nccl transport's protocol (MPI headers, payloads
    // matched in order per direction) on a host data plane, so that the CPU tests exercise that protocol.
    transports[rank] = env_is("ONESTEP_MPI_PAYLOADS", "staged")
                           ? pipeline::make_staged_transport(pipeline::make_mpi_data_plane())
                           : pipeline::make_mpi_transport();
#endif
  } else {
    transports = pipeline::make_inproc_transports(p, device);
  }
  const int threads_per_stage =
      multiprocess ? std::max(1, c.train.threads)
                   : std::max(1, (c.train.threads > 0 ? c.train.threads : num_threads()) / p);
  const ModelCosts costs = pipeline_costs(c, rank, multiprocess ? transports[rank].get() : nullptr, threads_per_stage);
  const std::vector<StageSpec> specs = partition_model(c.model, p, costs);
  // Versions below the newest each stage reads: 1 under 2BW's rule, p-1-s for PipeDream's stage s.
  auto lag_of = [&](int s) -> int {
    if (c.pipeline.schedule == "pipedream") return p - 1 - s;
    return c.pipeline.schedule == "2bw" || c.pipeline.schedule == "sync_start" ? 1 : 0;
  };
  // The stages this process runs: all of them in-process, its own one under MPI.
  std::vector<int> local;
  for (int s = 0; s < p; ++s)
    if (!multiprocess || s == rank) local.push_back(s);
  std::vector<std::unique_ptr<StageState>> states(p);
  std::vector<StageState*> raw;
  for (int s : local) {
    use_gpu_of(s);
    states[s] = std::make_unique<StageState>(c.model, specs[s], c.optim, lag_of(s), c.delay.correction == "ef", device);
    raw.push_back(states[s].get());
  }
  int64_t start = 0;
  if (!io.resume_from.empty()) {
    start = load_checkpoint(io.resume_from, raw);
  } else {
    for (int s : local) {
      use_gpu_of(s);
      states[s]->init_weights(static_cast<uint64_t>(c.train.seed));  // older versions = W(0)
    }
  }
  io.open_metrics(start);
  if (io.writer) {
    const std::string& tr = c.pipeline.transport;
    const char* how = tr == "nccl"  ? "NCCL (one rank per GPU)"
                      : tr == "mpi" ? "MPI (one rank per stage)"
                                    : "in-process (one thread per stage)";
    std::string gpus;  // in-process on CUDA: which GPU each stage runs on
    for (int s = 0; device == Device::cuda && !multiprocess && s < p; ++s)
      gpus += (s ? "," : " (GPUs ") + std::to_string(gpu_of[s]) + (s == p - 1 ? ")" : "");
    std::printf("pipeline: %s, %d stages, %d micro-batches per step, %s transport%s\n%s", c.pipeline.schedule.c_str(),
                p, c.train.micro_batches, how, gpus.c_str(), describe_partition(c.model, specs, costs).c_str());
  }

  // The runners own the version history: the older versions move there (and back for checkpoints).
  std::vector<std::unique_ptr<StageRunner>> runners(p);
  for (int s : local) {
    use_gpu_of(s);
    runners[s] = std::make_unique<StageRunner>(*states[s], *transports[s], c, io.train_data, start,
                                               std::move(states[s]->older));
    states[s]->older.clear();
  }
  use_gpu_of(local.front());  // this thread's work from here on: the whole-model copy and the evaluations
  const Stage whole(c.model, whole_model(c.model));
  Buffer<float> whole_w(device);
  // Whole-model weights on the writer (rank 0 receives the other ranks' parameters under MPI).
  auto gather = [&](int64_t step) {
    if (!multiprocess) return gather_whole(states, whole, whole_w);
    const uint32_t tag = pipeline::message_tag(pipeline::MsgKind::weights, step, 1);
    if (rank != 0) return transports[rank]->send(0, tag, states[rank]->weights.data(), static_cast<int64_t>(states[rank]->weights.size()));
    gather_whole(states, whole, whole_w);  // rank 0's own stage; the others arrive below
    for (int s = 1; s < p; ++s) {
      const Stage remote(c.model, specs[s]);
      Buffer<float> w(device);  // messages of the nccl transport live on the GPU
      w.zeros(static_cast<size_t>(remote.params().total()));
      transports[0]->recv(s, tag, w.data(), static_cast<int64_t>(w.size()));
      for (const auto& prm : remote.params().all())
        backend.copy(whole_w.data() + whole.params().at(prm.name).offset, w.data() + prm.offset, prm.numel);
    }
  };
  // Every rank passes here together: an all-stage sum used as a barrier.
  auto barrier = [&](int64_t step, int micro) {
    if (multiprocess) transports[rank]->start_sum(pipeline::message_tag(pipeline::MsgKind::weights, step, micro), {0.0})->wait();
  };
  if (start == 0) {
    gather(0);
    if (io.writer) io.initial_eval(whole, whole_w.data(), backend);
  }

  // A step's metrics line: the trainer's fields, then per stage its idle share of the step, the staleness of the
  // weights its gradient was computed on, and its memory.
  auto step_metrics = [&](const StepRecord& r, double step_s) {
    nlohmann::json line = io.step_line(r.batch + 1, r.loss, r.grad_norm,
                                       c.optim.lr * lr_scale_at(r.batch, c.train.steps, c.optim.warmup_frac, c.optim.min_lr_frac),
                                       step_s);
    std::vector<double> idle, stale, act_mib, w_mib;
    for (int s = 0; s < p; ++s) {
      idle.push_back(std::max(0.0, 1.0 - r.busy_s[s] / step_s));
      stale.push_back(static_cast<double>(r.batch - pipeline::version_for(c.pipeline.schedule, r.batch, s, p, c.pipeline.sync_start_steps)));
      act_mib.push_back(r.activation_bytes[s] / 1048576.0), w_mib.push_back(r.weight_bytes[s] / 1048576.0);
    }
    line["stage_idle_frac"] = idle;
    line["staleness"] = stale;
    line["stage_activation_mib"] = act_mib;
    line["stage_weight_mib"] = w_mib;
    return line;
  };
  int64_t first = start;
  while (first < c.train.steps) {
    int64_t end = first + 1;
    while (end < c.train.steps && !io.eval_due(end) && !io.ckpt_due(end)) ++end;
    const pipeline::Schedule sched = segment_schedule(c, first, end);
    // Metrics lines go out as the lead stage completes each step (live progress). A step is timed from the lead's
    // previous post to this one (the segment's first from its start: it includes the pipeline's fill); under MPI
    // the writer's lead is stage 0, whose posts pace the pipeline. The line of a step that ends in an evaluation
    // waits until the stages have stopped.
    std::optional<nlohmann::json> eval_line;
    const int lead = local.front();
    double last_post_s = runners[lead]->elapsed_s();
    runners[lead]->set_step_listener([&](const StepRecord& r) {
      const double step_s = std::max(r.posted_s - last_post_s, 1e-9);
      last_post_s = r.posted_s;
      nlohmann::json line = step_metrics(r, step_s);
      if (r.batch + 1 == end && io.eval_due(end)) eval_line = std::move(line);
      else if (io.writer) io.metrics->write(line);
    });
    std::vector<std::exception_ptr> errors(p);
    std::vector<std::thread> threads;
    for (int s : local)
      threads.emplace_back([&, s] {
        try {
          set_num_threads(threads_per_stage);
          use_gpu_of(s);
          runners[s]->run(sched.programs[s], sched.name);
        } catch (...) {
          errors[s] = std::current_exception();
        }
      });
    for (auto& t : threads) t.join();
    runners[lead]->set_step_listener(nullptr);
    for (auto& e : errors)
      if (e) std::rethrow_exception(e);
    if (eval_line) {
      gather(end);
      if (io.writer) {
        (*eval_line)["val_loss"] = io.evaluate(whole, whole_w.data(), end, backend);
        io.metrics->write(*eval_line);
      }
    }
    if (io.ckpt_due(end)) {
      for (int s : local) states[s]->older = runners[s]->older_versions(lag_of(s));
      if (!multiprocess) {
        save_checkpoint(io.options.out_dir, end, c, raw, c.train.keep_ckpts);
      } else {
        const std::string tmp = checkpoint_tmp_dir(io.options.out_dir, end);
        if (io.writer) std::filesystem::remove_all(tmp), std::filesystem::create_directories(tmp);
        barrier(end, 2);
        write_checkpoint_part(tmp, ".stage" + std::to_string(rank), raw);
        barrier(end, 3);
        if (io.writer)
          finish_checkpoint(io.options.out_dir, end, c, raw.front()->optimizer->steps_taken(),
                            raw.front()->has_prev_update, p, c.train.keep_ckpts);
        barrier(end, 4);
      }
      for (int s : local) states[s]->older.clear();
    }
    first = end;
    if (end == io.options.stop_after_step) break;
  }
  if (c.pipeline.trace) write_trace(io.options.out_dir + "/trace.json", runners, multiprocess ? transports[rank].get() : nullptr);
}

}  // namespace onestep
