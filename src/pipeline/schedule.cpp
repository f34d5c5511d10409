// Schedule generators, the version rules, and the text/CSV forms. The validator is schedule_validate.cpp.
#include "pipeline/schedule.h"

#include <algorithm>
#include <map>
#include <sstream>
#include <utility>

#include "core/error.h"

namespace onestep::pipeline {

namespace {

constexpr const char* kOpNames[] = {"forward", "backward", "send_act", "recv_act", "send_grad", "recv_grad", "step"};

bool is_compute(Op op) { return op == Op::forward || op == Op::backward; }

void check_known(const std::string& name) {
  const auto& names = schedule_names();
  if (std::find(names.begin(), names.end(), name) == names.end())
    bad_input("schedule", "unknown schedule '" + name + "' (expected gpipe, 1f1b, 2bw, pipedream or sync_start)");
}

// Appends the actions of one stage. Knows the comm pattern; the caller decides the order of micro-batches.
struct Emitter {
  const std::string& name;
  int s, p, m;
  int64_t K;
  int lookahead;
  std::vector<Action>& out;

  void forward(int64_t g, int i) {
    const int64_t v = version_for(name, g, s, p, K);
    if (s > 0) out.push_back({Op::recv_act, g, i, -1, s - 1});
    out.push_back({Op::forward, g, i, v, -1});
    if (s < p - 1) out.push_back({Op::send_act, g, i, -1, s + 1});
  }
  void backward(int64_t g, int i) {
    const int64_t v = version_for(name, g, s, p, K);
    if (s < p - 1) out.push_back({Op::recv_grad, g, i, -1, s + 1});
    out.push_back({Op::backward, g, i, v, -1});
    if (s > 0) out.push_back({Op::send_grad, g, i, -1, s - 1});
  }
  void step(int64_t g) { out.push_back({Op::step, g, -1, g + 1, -1}); }

  // 1F1B over the micro-batches of batches [g0, g1) taken as one stream: min(p-1-s+L, N) warm-up forwards
  // (L = lookahead: 0 on the last stage and in pipedream, and never beyond m forwards, because in a stream the
  // next batch's first forward needs the step that this batch's last backward completes), steady
  // forward/backward pairs, cool-down backwards; step g right after the backward of its last micro-batch.
  // With g1 = g0 + 1 this is one flushed 1F1B batch.
  void stream_1f1b(int64_t g0, int64_t g1) {
    const int64_t N = (g1 - g0) * m;
    const int64_t textbook = p - 1 - s;
    const int64_t ahead = (s < p - 1 && name != "pipedream") ? std::clamp<int64_t>(m - textbook, 0, lookahead) : 0;
    const int64_t w = std::min<int64_t>(textbook + ahead, N);
    auto fwd = [&](int64_t k) { forward(g0 + k / m, static_cast<int>(k % m)); };
    auto bwd = [&](int64_t k) {
      const int64_t g = g0 + k / m;
      const int i = static_cast<int>(k % m);
      backward(g, i);
      if (i == m - 1) step(g);
    };
    for (int64_t k = 0; k < w; ++k) fwd(k);
    for (int64_t j = 0; j < N - w; ++j) {
      fwd(w + j);
      bwd(j);
    }
    for (int64_t j = N - w; j < N; ++j) bwd(j);
  }
  void gpipe_batch(int64_t g) {
    for (int i = 0; i < m; ++i) forward(g, i);
    for (int i = 0; i < m; ++i) backward(g, i);
    step(g);
  }
};

}  // namespace

const char* op_name(Op op) { return kOpNames[static_cast<int>(op)]; }

Op op_from_name(const std::string& name) {
  for (int i = 0; i < 7; ++i)
    if (name == kOpNames[i]) return static_cast<Op>(i);
  bad_input("schedule csv", "unknown op '" + name +
                                "' (expected forward, backward, send_act, recv_act, send_grad, recv_grad or step)");
}

const std::vector<std::string>& schedule_names() {
  static const std::vector<std::string> names = {"gpipe", "1f1b", "2bw", "pipedream", "sync_start"};
  return names;
}

int64_t version_for(const std::string& schedule, int64_t g, int stage, int stages, int64_t sync_start_steps) {
  check_known(schedule);
  if (stages < 1 || stage < 0 || stage >= stages || g < 0)
    bad_input("schedule " + schedule, "version_for: need stages >= 1, 0 <= stage < stages, batch >= 0 (got stage " +
                                          std::to_string(stage) + " of " + std::to_string(stages) + ", batch " +
                                          std::to_string(g) + ")");
  if (schedule == "gpipe" || schedule == "1f1b") return g;
  if (schedule == "2bw") return std::max<int64_t>(g - 1, 0);
  if (schedule == "pipedream") return std::max<int64_t>(g - (stages - 1 - stage), 0);
  return g < sync_start_steps ? g : std::max<int64_t>(g - 1, 0);  // sync_start
}

int max_versions_alive(const std::string& schedule, int stages) {
  check_known(schedule);
  if (schedule == "gpipe" || schedule == "1f1b") return 1;
  if (schedule == "pipedream") return std::max(stages, 1);
  return 2;
}

Schedule make_schedule(const std::string& name, int stages, int micro_batches, int64_t batches,
                       int64_t sync_start_steps, int lookahead) {
  check_known(name);
  const std::string where = "schedule " + name;
  if (stages < 1) bad_input(where, "stages (p) must be >= 1 (got " + std::to_string(stages) + ")");
  if (micro_batches < 1)
    bad_input(where, "micro_batches (m) must be >= 1 (got " + std::to_string(micro_batches) + ")");
  if (batches < 1) bad_input(where, "batches must be >= 1 (got " + std::to_string(batches) + ")");
  if (sync_start_steps < 0)
    bad_input(where, "sync_start_steps (K) must be >= 0 (got " + std::to_string(sync_start_steps) + ")");
  if (lookahead < 0) bad_input(where, "lookahead must be >= 0 (got " + std::to_string(lookahead) + ")");
  if (name != "sync_start" && sync_start_steps != 0)
    bad_input(where, "sync_start_steps (K) applies only to sync_start (got " + std::to_string(sync_start_steps) + ")");
  const bool streams = name == "2bw" || (name == "sync_start" && batches > sync_start_steps);
  if (streams && micro_batches < stages)
    bad_input(where, name + " needs micro_batches (m) >= stages (p) (got m " + std::to_string(micro_batches) +
                         ", p " + std::to_string(stages) + ")");

  Schedule sch{name, stages, micro_batches, batches, sync_start_steps, lookahead, {}};
  sch.programs.resize(stages);
  for (int s = 0; s < stages; ++s) {
    Emitter e{name, s, stages, micro_batches, sync_start_steps, lookahead, sch.programs[s]};
    if (name == "gpipe") {
      for (int64_t g = 0; g < batches; ++g) e.gpipe_batch(g);
    } else if (name == "1f1b") {
      for (int64_t g = 0; g < batches; ++g) e.stream_1f1b(g, g + 1);
    } else if (name == "2bw" || name == "pipedream") {
      e.stream_1f1b(0, batches);
    } else {  // sync_start
      const int64_t K = std::min(sync_start_steps, batches);
      for (int64_t g = 0; g < K; ++g) e.stream_1f1b(g, g + 1);
      if (K < batches) e.stream_1f1b(K, batches);
    }
  }
  return sch;
}

std::vector<int> versions_alive(const std::vector<Action>& program) {
  std::map<int64_t, int64_t> uses;  // version -> forwards/backwards still to come that read it
  for (const Action& a : program)
    if (is_compute(a.op)) ++uses[a.version];
  int64_t newest = 0;
  std::vector<int> out(program.size() + 1);
  for (size_t i = 0;; ++i) {
    int alive = 1;  // the newest
    for (const auto& [v, n] : uses) {
      if (v > newest) break;
      if (v != newest) ++alive;
    }
    out[i] = alive;
    if (i == program.size()) break;
    const Action& a = program[i];
    if (is_compute(a.op)) {
      auto it = uses.find(a.version);
      if (--it->second == 0) uses.erase(it);
    } else if (a.op == Op::step) {
      newest = std::max(newest, a.batch + 1);
    }
  }
  return out;
}

std::vector<int> peak_versions_alive(const Schedule& s) {
  std::vector<int> peak;
  for (const auto& prog : s.programs) {
    auto alive = versions_alive(prog);
    peak.push_back(*std::max_element(alive.begin(), alive.end()));
  }
  return peak;
}

std::vector<int> peak_activations(const Schedule& s) {
  std::vector<int> peak;
  for (const auto& prog : s.programs) {
    int live = 0, best = 0;
    for (const Action& a : prog) {
      if (a.op == Op::forward) best = std::max(best, ++live);
      if (a.op == Op::backward) --live;
    }
    peak.push_back(best);
  }
  return peak;
}

std::string action_token(const Action& a) {
  std::ostringstream o;
  const char* tag[] = {"F", "B", "sendA", "recvA", "sendG", "recvG", "step"};
  o << tag[static_cast<int>(a.op)] << a.batch;
  if (a.op == Op::step) {
    o << "->v" << a.version;
    return o.str();
  }
  o << '.' << a.micro;
  if (a.op == Op::forward || a.op == Op::backward) o << "@v" << a.version;
  else if (a.op == Op::send_act || a.op == Op::send_grad) o << "->s" << a.peer;
  else o << "<-s" << a.peer;
  return o.str();
}

std::string to_text(const Schedule& s) {
  std::ostringstream o;
  o << "schedule " << s.name << ": stages=" << s.stages << " micro_batches=" << s.micro_batches
    << " batches=" << s.batches << " sync_start_steps=" << s.sync_start_steps << " lookahead=" << s.lookahead
    << "\n";
  for (size_t st = 0; st < s.programs.size(); ++st) {
    o << "stage " << st << ":";
    for (const Action& a : s.programs[st]) o << ' ' << action_token(a);
    o << "\n";
  }
  return o.str();
}

std::string to_csv(const Schedule& s) {
  std::ostringstream o;
  o << "# onestep pipeline schedule v1\n"
    << "# name=" << s.name << ",stages=" << s.stages << ",micro_batches=" << s.micro_batches
    << ",batches=" << s.batches << ",sync_start_steps=" << s.sync_start_steps << ",lookahead=" << s.lookahead
    << "\n"
    << "stage,index,op,batch,micro,version,peer\n";
  for (size_t st = 0; st < s.programs.size(); ++st)
    for (size_t i = 0; i < s.programs[st].size(); ++i) {
      const Action& a = s.programs[st][i];
      o << st << ',' << i << ',' << op_name(a.op) << ',' << a.batch << ',' << a.micro << ',' << a.version << ','
        << a.peer << '\n';
    }
  return o.str();
}

namespace {

std::vector<std::string> split(const std::string& line, char sep) {
  std::vector<std::string> out;
  std::string cur;
  for (char c : line) {
    if (c == sep) {
      out.push_back(cur);
      cur.clear();
    } else if (c != '\r') {
      cur += c;
    }
  }
  out.push_back(cur);
  return out;
}

int64_t parse_int(const std::string& text, int line, const std::string& field) {
  size_t used = 0;
  int64_t v = 0;
  try {
    v = std::stoll(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (text.empty() || used != text.size())
    bad_input("schedule csv", "line " + std::to_string(line) + ": " + field + " '" + text + "' is not an integer");
  return v;
}

}  // namespace

Schedule from_csv(const std::string& csv) {
  std::istringstream in(csv);
  std::string line;
  int ln = 0;
  auto fail = [&](const std::string& what) { bad_input("schedule csv", "line " + std::to_string(ln) + ": " + what); };
  auto next = [&]() -> bool {
    while (std::getline(in, line)) {
      ++ln;
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (!line.empty()) return true;
    }
    return false;
  };
  if (!next() || line != "# onestep pipeline schedule v1") {
    ln = std::max(ln, 1);
    fail("expected '# onestep pipeline schedule v1'");
  }
  if (!next() || line.rfind("# ", 0) != 0) fail("expected '# name=...,stages=...,micro_batches=...,batches=...'");
  Schedule s;
  bool have[5] = {false, false, false, false, false};
  for (const std::string& kv : split(line.substr(2), ',')) {
    const size_t eq = kv.find('=');
    if (eq == std::string::npos) fail("metadata entry '" + kv + "' is not key=value");
    const std::string key = kv.substr(0, eq), val = kv.substr(eq + 1);
    if (key == "name") s.name = val, have[0] = true;
    else if (key == "stages") s.stages = static_cast<int>(parse_int(val, ln, key)), have[1] = true;
    else if (key == "micro_batches") s.micro_batches = static_cast<int>(parse_int(val, ln, key)), have[2] = true;
    else if (key == "batches") s.batches = parse_int(val, ln, key), have[3] = true;
    else if (key == "sync_start_steps") s.sync_start_steps = parse_int(val, ln, key), have[4] = true;
    else if (key == "lookahead") {  // optional (files written before it existed): 0
      s.lookahead = static_cast<int>(parse_int(val, ln, key));
      if (s.lookahead < 0) fail("lookahead must be >= 0 (got " + val + ")");
    }
    else fail("unknown metadata key '" + key + "'");
  }
  const char* keys[] = {"name", "stages", "micro_batches", "batches", "sync_start_steps"};
  for (int k = 0; k < 5; ++k)
    if (!have[k]) fail(std::string("metadata lacks ") + keys[k]);
  if (s.stages < 1 || s.stages > (1 << 20)) fail("stages must be in 1..1048576");
  s.programs.resize(s.stages);
  if (!next() || line != "stage,index,op,batch,micro,version,peer")
    fail("expected the header 'stage,index,op,batch,micro,version,peer'");
  while (next()) {
    const auto f = split(line, ',');
    if (f.size() != 7) fail("expected 7 fields, got " + std::to_string(f.size()));
    const int64_t st = parse_int(f[0], ln, "stage");
    if (st < 0 || st >= s.stages) fail("stage " + f[0] + " is out of range 0.." + std::to_string(s.stages - 1));
    auto& prog = s.programs[st];
    if (parse_int(f[1], ln, "index") != static_cast<int64_t>(prog.size()))
      fail("index " + f[1] + " of stage " + f[0] + " should be " + std::to_string(prog.size()) +
           " (rows in program order)");
    Op op = Op::forward;
    try {
      op = op_from_name(f[2]);
    } catch (const Error&) {
      fail("unknown op '" + f[2] + "'");
    }
    prog.push_back({op, parse_int(f[3], ln, "batch"), static_cast<int>(parse_int(f[4], ln, "micro")),
                    parse_int(f[5], ln, "version"), static_cast<int>(parse_int(f[6], ln, "peer"))});
  }
  return s;
}

}  // namespace onestep::pipeline
