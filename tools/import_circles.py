#!/usr/bin/env python3
"""Import circles between the source files of a crate.

Usage: python3 tools/import_circles.py [-v] SRC_DIR...

Builds each crate's file-level import graph from its `use crate::..`, `use super::..` and
inline `crate::a::B` / `super::B` paths (comments and `#[cfg(test)] mod tests` left out), each
path resolved to the file that defines the named item, through re-exports; prints the circles
(strongly connected components of more than one file) and exits 1 if there is any."""
import os, re, sys

def circles(root, verbose):
    files = {}
    for d, _, fs in os.walk(root):
        for f in fs:
            if f.endswith('.rs'):
                p = os.path.join(d, f)
                files[os.path.relpath(p, root)] = open(p).read()
    def modpath(rel):
        parts = rel[:-3].split('/')
        if parts[-1] in ('mod', 'lib'):
            parts = parts[:-1]
        return parts
    mod_of = {tuple(modpath(r)): r for r in files}
    defs = {}
    pat = re.compile(r'^\s*(?:pub(?:\([^)]*\))?\s+)?(?:unsafe\s+)?(?:async\s+)?(?:const\s+)?(?:struct|enum|fn|trait|type|const|static|union|macro_rules!)\s+([A-Za-z_][A-Za-z0-9_]*)', re.M)
    for r, t in files.items():
        t2 = re.sub(r'#\[cfg\(test\)\]\s*mod tests\s*\{.*', '', t, flags=re.S)
        for m in pat.finditer(t2):
            defs.setdefault(m.group(1), set()).add(r)
    def strip_tests(t):
        t = re.sub(r'#\[cfg\(test\)\]\s*mod tests\s*\{.*', '', t, flags=re.S)
        return re.sub(r'^\s*//.*$', '', t, flags=re.M)
    def expand_use(body):
        # a::{b, c::{d, e}} -> [a::b, a::c::d, a::c::e]
        body = re.sub(r'\s+', '', body)
        def ex(s):
            i = s.find('{')
            if i < 0:
                return [s]
            pre = s[:i]; depth = 0; parts = []; cur = ''
            inner = s[i+1:s.rfind('}')]
            for ch in inner:
                if ch == '{': depth += 1
                if ch == '}': depth -= 1
                if ch == ',' and depth == 0:
                    parts.append(cur); cur = ''
                else:
                    cur += ch
            if cur: parts.append(cur)
            out = []
            for p in parts:
                for e in ex(p):
                    out.append(pre + e)
            return out
        return ex(body)
    def resolve(rel, path):
        segs = [s for s in path.split('::') if s]
        here = modpath(rel)
        if not segs: return None
        if segs[0] == 'crate':
            base = []; segs = segs[1:]
        elif segs[0] == 'super':
            base = here[:]
            if rel.endswith('mod.rs') or rel.endswith('lib.rs'):
                pass
            while segs and segs[0] == 'super':
                base = base[:-1]; segs = segs[1:]
        elif segs[0] == 'self':
            base = here[:]; segs = segs[1:]
        else:
            return None
        # walk modules as far as files exist
        cur = base[:]
        i = 0
        while i < len(segs) and tuple(cur + [segs[i]]) in mod_of:
            cur.append(segs[i]); i += 1
        modfile = mod_of.get(tuple(cur))
        if i >= len(segs):
            return modfile
        name = segs[i].split(' as ')[0]
        if name in ('*', 'self'):
            return modfile
        cands = defs.get(name, set())
        prefix = '/'.join(cur)
        inside = [c for c in cands if c.startswith(prefix)]
        if len(inside) == 1: return inside[0]
        if modfile in inside: return modfile
        return modfile
    edges = {r: set() for r in files}
    for r, t in files.items():
        t = strip_tests(t)
        for m in re.finditer(r'\buse\s+([^;]+);', t):
            for p in expand_use(m.group(1)):
                p = p.split(' as ')[0]
                tgt = resolve(r, p)
                if tgt and tgt != r: edges[r].add(tgt)
        for m in re.finditer(r'(?<![A-Za-z0-9_:])((?:crate|super)(?:::[A-Za-z_][A-Za-z0-9_]*)+)', t):
            tgt = resolve(r, m.group(1))
            if tgt and tgt != r: edges[r].add(tgt)
    # parent modules that only declare children: mod.rs -> child via `pub use child::X` is an edge already
    # Tarjan
    idx = {}; low = {}; st = []; on = set(); sccs = []; c = [0]
    sys.setrecursionlimit(10000)
    def sc(v):
        idx[v] = low[v] = c[0]; c[0] += 1; st.append(v); on.add(v)
        for w in edges[v]:
            if w not in idx:
                sc(w); low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], idx[w])
        if low[v] == idx[v]:
            comp = []
            while True:
                w = st.pop(); on.discard(w); comp.append(w)
                if w == v: break
            sccs.append(comp)
    for v in files:
        if v not in idx: sc(v)
    big = [s for s in sccs if len(s) > 1]
    for s in big:
        print(len(s), sorted(s))
        if verbose:
            for a in sorted(s):
                print('  ', a, '->', sorted(x for x in edges[a] if x in s))
    print(root + ':', len(big), 'circles,', sum(len(s) for s in big), 'files in circles')
    return len(big)


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "-v"]
    found = sum(circles(a, "-v" in sys.argv) for a in args)
    sys.exit(1 if found else 0)
