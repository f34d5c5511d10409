#include "data/split.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "core/error.h"

namespace onestep {

std::vector<std::string_view> chunk_text(std::string_view text, size_t target) {
  target = std::max<size_t>(target, 1);
  std::vector<std::string_view> out;
  size_t pos = 0;
  while (pos < text.size()) {
    if (text.size() - pos <= target + target / 2) {  // the rest, rather than leaving a small tail
      out.push_back(text.substr(pos));
      break;
    }
    const size_t lo = pos + target, hi = std::min(text.size(), pos + 2 * target);
    std::string_view window = text.substr(0, hi);
    size_t cut = std::string_view::npos;
    size_t p = window.find("\n\n", lo);
    if (p != std::string_view::npos) {
      cut = p;
      while (cut < text.size() && text[cut] == '\n') ++cut;  // after the whole run of newlines
    } else if ((p = window.find('\n', lo)) != std::string_view::npos) {
      cut = p + 1;
    } else {
      cut = lo;
      while (cut < text.size() && (static_cast<unsigned char>(text[cut]) & 0xC0) == 0x80) ++cut;
    }
    out.push_back(text.substr(pos, cut - pos));
    pos = cut;
  }
  return out;
}

std::vector<SplitUnit> plan_split(const std::vector<std::string_view>& docs, double val_fraction) {
  if (!(val_fraction >= 0.0 && val_fraction < 1.0))
    bad_input("--val-fraction", "expected a number in [0, 1), found " + std::to_string(val_fraction));
  std::vector<SplitUnit> units;
  size_t nonempty = 0;
  for (auto d : docs) nonempty += !d.empty();
  for (size_t i = 0; i < docs.size(); ++i) {
    if (docs[i].empty()) continue;
    if (nonempty == 1) {
      size_t target = std::min<size_t>(64 * 1024, std::max<size_t>(256, docs[i].size() / 16));
      for (auto c : chunk_text(docs[i], target)) units.push_back({i, c, false, false});
    } else {
      units.push_back({i, docs[i], false, false});
    }
  }
  const size_t n = units.size();
  size_t k = 0;
  if (val_fraction > 0 && n >= 2)
    k = std::clamp<size_t>(static_cast<size_t>(std::llround(val_fraction * static_cast<double>(n))), 1, n - 1);
  for (size_t i = 0; i < n; ++i) {
    units[i].val = k > 0 && (i + 1) * k / n > i * k / n;
    units[i].eot_before = i == 0 || units[i - 1].doc != units[i].doc || units[i - 1].val != units[i].val;
  }
  return units;
}

}  // namespace onestep
