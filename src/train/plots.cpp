#include "train/plots.h"

#include <sys/wait.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>

#include "core/error.h"

namespace onestep {

namespace {

namespace fs = std::filesystem;

struct Row {
  double step = 0;
  std::optional<double> train_loss, val_loss, lr, tok_per_s;
  std::vector<std::optional<double>> idle;
};

std::optional<double> number_field(const nlohmann::json& obj, const char* key, const std::string& where) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return std::nullopt;  // absent, or NaN/Inf written as null
  if (!it->is_number()) bad_input(where, std::string(key) + ": expected a number, got " + it->dump());
  return it->get<double>();
}

// bad_input("PATH", "line N: ...") on a malformed line; blank lines are skipped.
std::vector<Row> read_metrics(const std::string& path) {
  std::ifstream in(path);
  if (!in) bad_input(path, "cannot open");
  std::vector<Row> rows;
  std::string line;
  for (size_t lineno = 1; std::getline(in, line); ++lineno) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = path + ": line " + std::to_string(lineno);
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception&) {
      bad_input(where, "not valid JSON");
    }
    if (!j.is_object()) bad_input(where, "expected a JSON object");
    Row r;
    auto step = number_field(j, "step", where);
    if (!step) bad_input(where, "step: missing");
    r.step = *step;
    r.train_loss = number_field(j, "train_loss", where);
    r.val_loss = number_field(j, "val_loss", where);
    r.lr = number_field(j, "lr", where);
    r.tok_per_s = number_field(j, "tok_per_s", where);
    if (auto it = j.find("stage_idle_frac"); it != j.end() && !it->is_null()) {
      if (!it->is_array()) bad_input(where, "stage_idle_frac: expected an array of numbers");
      for (const auto& v : *it) {
        if (v.is_null()) r.idle.emplace_back();
        else if (v.is_number()) r.idle.emplace_back(v.get<double>());
        else bad_input(where, "stage_idle_frac: expected an array of numbers");
      }
    }
    rows.push_back(std::move(r));
  }
  if (in.bad()) bad_input(path, "read error");
  return rows;
}

std::string num(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.10g", v);
  return buf;
}

std::string shell_quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

// A gnuplot single-quoted string: '' stands for '. Newlines would end the command, so they become spaces.
std::string gp_quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) {
    if (c == '\'') q += "''";
    else if (c == '\n' || c == '\r') q += ' ';
    else q += c;
  }
  return q + "'";
}

void write_text(const fs::path& p, const std::string& text) {
  std::ofstream out(p, std::ios::trunc);
  out << text;
  out.close();
  if (!out) bad_input(p.string(), "cannot write");
}

// Common preamble: pngcairo when this gnuplot has it, png otherwise; noenhanced so '_' in names stays '_'.
std::string preamble(const std::string& png, const std::string& title, const std::string& xlabel,
                     const std::string& ylabel) {
  std::ostringstream s;
  s << "# Redraw with: cd to this folder, then gnuplot <this file>\n"
    << "if (strstrt(GPVAL_TERMINALS, ' pngcairo ') > 0) {\n"
    << "  set terminal pngcairo noenhanced size 960,600\n"
    << "} else {\n"
    << "  set terminal png noenhanced size 960,600\n"
    << "}\n"
    << "set output " << gp_quote(png) << "\n"
    << "set datafile missing '?'\n"
    << "set title " << gp_quote(title) << "\n"
    << "set xlabel " << gp_quote(xlabel) << "\n"
    << "set ylabel " << gp_quote(ylabel) << "\n"
    << "set grid\n"
    << "set key top right\n";
  return s.str();
}

bool have_gnuplot() { return std::system("command -v gnuplot >/dev/null 2>&1") == 0; }

// Runs `gnuplot NAME.gp` in dir; bad_input with gnuplot's first message line when it fails.
void run_gnuplot(const fs::path& dir, const std::string& name) {
  const std::string log = name + ".log";
  const std::string cmd = "cd " + shell_quote(dir.string()) + " && gnuplot " + shell_quote(name + ".gp") +
                          " </dev/null >" + shell_quote(log) + " 2>&1";
  const int rc = std::system(cmd.c_str());
  const fs::path png = dir / (name + ".png");
  std::error_code ec;
  const bool ok = rc != -1 && WIFEXITED(rc) && WEXITSTATUS(rc) == 0 && fs::exists(png, ec) &&
                  fs::file_size(png, ec) > 0;
  if (!ok) {
    std::string first;
    std::ifstream in(dir / log);
    for (std::string l; std::getline(in, l);) {
      if (l.find_first_not_of(" \t^") != std::string::npos) first = l;  // the message is the last line
    }
    bad_input((dir / (name + ".gp")).string(),
              "gnuplot failed" + (first.empty() ? std::string() : ": " + first) + " (see " + (dir / log).string() +
                  ")");
  }
  fs::remove(dir / log, ec);
}

void warn(const std::string& msg) {
  std::string m = msg;
  std::replace(m.begin(), m.end(), '\n', ' ');
  std::cerr << "warning: plots: " << m << "\n";
}

// A block of x y pairs for a gnuplot data file; returns whether it had any point.
bool append_block(std::ostringstream& dat, const std::string& comment, const std::vector<Row>& rows,
                  std::optional<double> Row::*field) {
  std::ostringstream b;
  size_t n = 0;
  for (const auto& r : rows) {
    if (r.*field) {
      b << num(r.step) << " " << num(*(r.*field)) << "\n";
      ++n;
    }
  }
  if (n == 0) return false;
  dat << "# " << comment << "\n" << b.str() << "\n\n";
  return true;
}

void loss_plot(const fs::path& dir, const std::vector<Row>& rows, const std::string& title) {
  std::ostringstream dat, gp;
  int index = 0;
  std::vector<std::string> plots;
  if (append_block(dat, "step train_loss", rows, &Row::train_loss))
    plots.push_back("'loss.dat' index " + std::to_string(index++) + " using 1:2 with lines lw 1.5 lc 1 title 'train'");
  if (append_block(dat, "step val_loss", rows, &Row::val_loss))
    plots.push_back("'loss.dat' index " + std::to_string(index++) +
                    " using 1:2 with linespoints pt 7 ps 1 lw 2 lc 2 title 'val'");
  if (plots.empty()) bad_input((dir.parent_path() / "metrics.jsonl").string(), "no train_loss or val_loss values");
  gp << preamble("loss.png", title, "step", "loss (nats/token)") << "plot ";
  for (size_t i = 0; i < plots.size(); ++i) gp << (i ? ", \\\n     " : "") << plots[i];
  gp << "\n";
  write_text(dir / "loss.dat", dat.str());
  write_text(dir / "loss.gp", gp.str());
  run_gnuplot(dir, "loss");
}

void lr_plot(const fs::path& dir, const std::vector<Row>& rows, const std::string& title) {
  std::ostringstream dat, gp;
  if (!append_block(dat, "step lr", rows, &Row::lr)) return;
  gp << preamble("lr.png", title, "step", "learning rate") << "set format y '%g'\n"
     << "plot 'lr.dat' index 0 using 1:2 with lines lw 2 lc 1 title 'lr'\n";
  write_text(dir / "lr.dat", dat.str());
  write_text(dir / "lr.gp", gp.str());
  run_gnuplot(dir, "lr");
}

void throughput_plot(const fs::path& dir, const std::vector<Row>& rows, const std::string& title) {
  size_t stages = 0, points = 0;
  for (const auto& r : rows) {
    stages = std::max(stages, r.idle.size());
    if (r.tok_per_s) ++points;
  }
  if (points == 0 && stages == 0) return;
  std::ostringstream dat, gp;
  dat << "# step tok_per_s";
  for (size_t s = 0; s < stages; ++s) dat << " idle_" << s;
  dat << "\n";
  for (const auto& r : rows) {
    if (!r.tok_per_s && r.idle.empty()) continue;
    dat << num(r.step) << " " << (r.tok_per_s ? num(*r.tok_per_s) : "?");
    for (size_t s = 0; s < stages; ++s)
      dat << " " << (s < r.idle.size() && r.idle[s] ? num(*r.idle[s]) : "?");
    dat << "\n";
  }
  gp << preamble("throughput.png", title, "step", "tokens / s") << "set yrange [0:*]\nset key below\n";
  std::vector<std::string> plots;
  if (points) plots.push_back("'throughput.dat' using 1:2 with lines lw 2 lc 1 title 'tokens/s'");
  if (stages) {
    gp << "set y2label 'stage idle fraction'\nset y2range [0:1]\nset y2tics\nset ytics nomirror\n";
    for (size_t s = 0; s < stages; ++s)
      plots.push_back("'throughput.dat' using 1:" + std::to_string(3 + s) + " axes x1y2 with lines dt 2 lw 2 lc " +
                      std::to_string(2 + s) + " title 'stage " + std::to_string(s) + " idle'");
  }
  gp << "plot ";
  for (size_t i = 0; i < plots.size(); ++i) gp << (i ? ", \\\n     " : "") << plots[i];
  gp << "\n";
  write_text(dir / "throughput.dat", dat.str());
  write_text(dir / "throughput.gp", gp.str());
  run_gnuplot(dir, "throughput");
}

}  // namespace

bool write_plots(const std::string& run_dir) {
  try {
    const fs::path run(run_dir);
    std::vector<Row> rows = read_metrics((run / "metrics.jsonl").string());
    if (!have_gnuplot()) {
      warn("gnuplot is not installed (apt-get install gnuplot-nox); no plots written for " + run_dir);
      return false;
    }
    const fs::path dir = run / "plots";
    fs::create_directories(dir);
    std::string name = fs::absolute(run).lexically_normal().filename().string();
    if (name.empty()) name = fs::absolute(run).lexically_normal().parent_path().filename().string();
    loss_plot(dir, rows, name + ": loss");
    lr_plot(dir, rows, name + ": learning rate");
    throughput_plot(dir, rows, name + ": throughput");
    return true;
  } catch (const std::exception& e) {
    warn(e.what());
    return false;
  }
}

bool plot_loss_comparison(const std::vector<std::string>& run_dirs, const std::vector<std::string>& labels,
                          const std::string& out_png, const std::string& title) {
  try {
    if (run_dirs.size() != labels.size() || run_dirs.empty())
      bad_input(out_png, std::to_string(run_dirs.size()) + " runs but " + std::to_string(labels.size()) +
                             " labels; expected one label per run, at least one run");
    std::ostringstream dat;
    std::vector<std::string> plots;
    const fs::path png = fs::path(out_png);
    fs::path dir = png.parent_path();
    if (dir.empty()) dir = ".";
    const std::string stem = png.stem().string();
    if (png.extension() != ".png" || stem.empty()) bad_input(out_png, "expected a .png file name");
    const std::string dat_name = stem + ".dat";
    int index = 0;
    for (size_t i = 0; i < run_dirs.size(); ++i) {
      std::vector<Row> rows = read_metrics((fs::path(run_dirs[i]) / "metrics.jsonl").string());
      const std::string color = " lc " + std::to_string(i + 1);
      if (append_block(dat, labels[i] + " train_loss (" + run_dirs[i] + ")", rows, &Row::train_loss))
        plots.push_back(gp_quote(dat_name) + " index " + std::to_string(index++) + " using 1:2 with lines lw 1" +
                        color + " title " + gp_quote(labels[i] + " train"));
      if (append_block(dat, labels[i] + " val_loss (" + run_dirs[i] + ")", rows, &Row::val_loss))
        plots.push_back(gp_quote(dat_name) + " index " + std::to_string(index++) +
                        " using 1:2 with linespoints pt 7 ps 1 lw 2" + color + " title " +
                        gp_quote(labels[i] + " val"));
    }
    if (plots.empty()) bad_input(out_png, "none of the runs has train_loss or val_loss values");
    if (!have_gnuplot()) {
      warn("gnuplot is not installed (apt-get install gnuplot-nox); " + out_png + " not written");
      return false;
    }
    fs::create_directories(dir);
    std::ostringstream gp;
    gp << preamble(png.filename().string(), title, "step", "loss (nats/token)") << "plot ";
    for (size_t i = 0; i < plots.size(); ++i) gp << (i ? ", \\\n     " : "") << plots[i];
    gp << "\n";
    write_text(dir / dat_name, dat.str());
    write_text(dir / (stem + ".gp"), gp.str());
    run_gnuplot(dir, stem);
    return true;
  } catch (const std::exception& e) {
    warn(e.what());
    return false;
  }
}

}  // namespace onestep
