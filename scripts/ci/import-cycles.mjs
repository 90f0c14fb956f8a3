#!/usr/bin/env node
/**
 * Fails when modules import each other in a circle, directly or through others.
 *
 * A circle means neither module can be understood, tested or deleted without the other; it also
 * makes ES module evaluation order depend on which one happens to be imported first. So the
 * arrows between modules must go one way.
 *
 * - TypeScript: every `ts/**\/*.ts`, resolved by the TypeScript compiler with the project's
 *   tsconfig, counting every way one file names another: `import`, `import type`, `export … from`,
 *   `import x = require()`, `import()` and `import('…').T` types (a type-only circle still ties the
 *   two files together).
 * - Rust: each crate under `crates/` and each of its roots (lib.rs, main.rs, bin/*.rs) on its own, the
 *   modules found from their `mod x;` declarations; an arrow is any `crate::…`, `super::…` or
 *   `self::…` path naming another module (in `use` or in code), or a child module named directly in
 *   the file that declares it, except a path up to the module's own ancestor (a child is part of its
 *   parent). Paths are matched in the source with comments and strings removed.
 *
 * Prints each circle as `a -> b -> a` and exits 1 if there is any; `--verbose` also lists every arrow.
 */
import { readdirSync, readFileSync, existsSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve, basename } from 'node:path';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const verbose = process.argv.includes('--verbose');

/** Strongly connected components of more than one node (Tarjan), each as a list of nodes. */
function circles(graph) {
  let index = 0;
  const idx = new Map();
  const low = new Map();
  const stack = [];
  const onStack = new Set();
  const out = [];
  // Iterative, so a long import chain cannot overflow the call stack.
  for (const start of graph.keys()) {
    if (idx.has(start)) continue;
    const work = [[start, [...(graph.get(start) ?? [])], 0]];
    idx.set(start, index);
    low.set(start, index++);
    stack.push(start);
    onStack.add(start);
    while (work.length > 0) {
      const frame = work[work.length - 1];
      const [v, next] = frame;
      if (frame[2] < next.length) {
        const w = next[frame[2]++];
        if (!idx.has(w)) {
          idx.set(w, index);
          low.set(w, index++);
          stack.push(w);
          onStack.add(w);
          work.push([w, [...(graph.get(w) ?? [])], 0]);
        } else if (onStack.has(w)) {
          low.set(v, Math.min(low.get(v), idx.get(w)));
        }
        continue;
      }
      work.pop();
      if (work.length > 0) {
        const parent = work[work.length - 1][0];
        low.set(parent, Math.min(low.get(parent), low.get(v)));
      }
      if (low.get(v) === idx.get(v)) {
        const scc = [];
        let w;
        do {
          w = stack.pop();
          onStack.delete(w);
          scc.push(w);
        } while (w !== v);
        if (scc.length > 1) out.push(scc);
      }
    }
  }
  return out;
}

/** One concrete circle through `from` inside `members` (breadth-first), to print something readable. */
function example(graph, members, from) {
  const set = new Set(members);
  const prev = new Map([[from, undefined]]);
  const queue = [from];
  for (let i = 0; i < queue.length; i++) {
    for (const w of graph.get(queue[i]) ?? []) {
      if (!set.has(w)) continue;
      if (w === from) {
        const path = [from];
        for (let p = queue[i]; p !== from; p = prev.get(p)) path.unshift(p);
        path.unshift(from);
        return path;
      }
      if (!prev.has(w)) {
        prev.set(w, queue[i]);
        queue.push(w);
      }
    }
  }
  return [...members, from];
}

function report(kind, graph) {
  if (verbose) for (const [a, bs] of graph) for (const b of bs) console.log(`${kind}: ${a} -> ${b}`);
  const found = circles(graph);
  for (const scc of found) {
    scc.sort();
    console.error(`import-cycles: ${kind}: ${example(graph, scc, scc[0]).join(' -> ')}` +
      (scc.length > 2 ? ` (circle of ${scc.length}: ${scc.join(', ')})` : ''));
  }
  return found.length;
}

// ---------------------------------------------------------------- TypeScript

function tsGraph() {
  const configPath = join(root, 'tsconfig.json');
  const config = ts.readConfigFile(configPath, ts.sys.readFile);
  if (config.error) throw new Error(ts.flattenDiagnosticMessageText(config.error.messageText, '\n'));
  const parsed = ts.parseJsonConfigFileContent(config.config, ts.sys, root);
  const files = parsed.fileNames.filter((f) => f.endsWith('.ts') && !f.endsWith('.d.ts')).map((f) => resolve(f));
  const known = new Set(files);
  const host = ts.createCompilerHost(parsed.options);
  const graph = new Map();
  for (const file of files) {
    const sf = ts.createSourceFile(file, readFileSync(file, 'utf8'), ts.ScriptTarget.Latest, true);
    const specs = [];
    const visit = (node) => {
      if ((ts.isImportDeclaration(node) || ts.isExportDeclaration(node)) && node.moduleSpecifier && ts.isStringLiteral(node.moduleSpecifier)) {
        specs.push(node.moduleSpecifier.text);
      } else if (ts.isImportEqualsDeclaration(node) && ts.isExternalModuleReference(node.moduleReference) &&
        ts.isStringLiteral(node.moduleReference.expression)) {
        specs.push(node.moduleReference.expression.text);
      } else if (ts.isCallExpression(node) && node.expression.kind === ts.SyntaxKind.ImportKeyword &&
        node.arguments[0] && ts.isStringLiteralLike(node.arguments[0])) {
        specs.push(node.arguments[0].text);
      } else if (ts.isImportTypeNode(node) && ts.isLiteralTypeNode(node.argument) && ts.isStringLiteral(node.argument.literal)) {
        specs.push(node.argument.literal.text);
      }
      ts.forEachChild(node, visit);
    };
    visit(sf);
    const from = relative(root, file);
    const to = new Set();
    for (const spec of specs) {
      const r = ts.resolveModuleName(spec, file, parsed.options, host).resolvedModule;
      if (!r) {
        if (spec.startsWith('.')) throw new Error(`${from}: cannot resolve '${spec}'`);
        continue; // a package (node:fs, yargs…): outside the graph
      }
      const target = resolve(r.resolvedFileName);
      if (known.has(target) && target !== file) to.add(relative(root, target));
    }
    graph.set(from, to);
  }
  return graph;
}

// ---------------------------------------------------------------- Rust

/** The source without comments, string and char literals (their text could look like paths). */
function stripRust(src) {
  let out = '';
  for (let i = 0; i < src.length;) {
    const c = src[i];
    const n = src[i + 1];
    if (c === '/' && n === '/') {
      while (i < src.length && src[i] !== '\n') i++;
    } else if (c === '/' && n === '*') {
      let depth = 1;
      i += 2;
      while (i < src.length && depth > 0) {
        if (src[i] === '/' && src[i + 1] === '*') (depth++, (i += 2));
        else if (src[i] === '*' && src[i + 1] === '/') (depth--, (i += 2));
        else i++;
      }
      out += ' ';
    } else if ((c === 'r' || (c === 'b' && n === 'r')) && /^b?r#*"/.test(src.slice(i, i + 40)) && !/\w/.test(src[i - 1] ?? '')) {
      const m = /^b?r(#*)"/.exec(src.slice(i));
      const close = `"${m[1]}`;
      const end = src.indexOf(close, i + m[0].length);
      i = end < 0 ? src.length : end + close.length;
      out += '""';
    } else if (c === '"') {
      i++;
      while (i < src.length && src[i] !== '"') i += src[i] === '\\' ? 2 : 1;
      i++;
      out += '""';
    } else if (c === "'" && (n === '\\' || src[i + 2] === "'")) {
      // A char literal ('x', '\n', '\u{..}'); a lifetime ('a) has no closing quote right after.
      const end = src.indexOf("'", i + 2);
      i = end < 0 ? src.length : end + 1;
      out += "' '";
    } else {
      out += c;
      i++;
    }
  }
  return out;
}

/** Rust modules of one crate root: module path ('' for the root, 'a::b') -> file and child modules. */
function rustModules(rootFile) {
  const mods = new Map();
  const walk = (file, path, isDirOwner) => {
    const text = stripRust(readFileSync(file, 'utf8'));
    const children = new Map();
    mods.set(path, { file, text, children });
    const dir = isDirOwner ? dirname(file) : join(dirname(file), basename(file, '.rs'));
    for (const m of text.matchAll(/(?:^|[;}\s])(?:pub(?:\([^)]*\))?\s+)?mod\s+([A-Za-z_]\w*)\s*;/g)) {
      const name = m[1];
      const flat = join(dir, `${name}.rs`);
      const nested = join(dir, name, 'mod.rs');
      const childFile = existsSync(flat) ? flat : existsSync(nested) ? nested : undefined;
      if (!childFile) throw new Error(`${relative(root, file)}: mod ${name}: neither ${relative(root, flat)} nor ${relative(root, nested)}`);
      const childPath = path ? `${path}::${name}` : name;
      children.set(name, childPath);
      walk(childFile, childPath, childFile === nested);
    }
  };
  walk(rootFile, '', true);
  return mods;
}

/**
 * Module paths named by one file. Inline modules (`mod tests { … }`) belong to their file; `super::`
 * inside one is counted from the inline module, so `use super::*` in tests is no arrow.
 */
function rustUses(mods, path) {
  const { text } = mods.get(path);
  const named = new Set();
  // Inline module nesting: the brace depth at which each `mod x {` opened.
  const inline = [];
  let depth = 0;
  const resolvePath = (base, segs) => {
    // Follow the file modules as far as the segments name them: the module an item lives in.
    let at = base;
    for (const s of segs) {
      const child = mods.get(at)?.children.get(s);
      if (child === undefined) break;
      at = child;
    }
    return at;
  };
  // `segs` then either an end, `*`, or a `{…}` group of further trees.
  const readTree = (i, base, segs) => {
    for (;;) {
      const m = /^\s*([A-Za-z_]\w*|\*|\{)/.exec(text.slice(i, i + 200));
      if (!m) return (named.add(resolvePath(base, segs)), i);
      if (m[1] === '{') {
        i += m[0].length;
        for (;;) {
          i = readTree(i, base, [...segs]);
          const sep = /^\s*([,}])/.exec(text.slice(i, i + 50));
          if (!sep) return i;
          i += sep[0].length;
          if (sep[1] === '}') return i;
          if (/^\s*\}/.test(text.slice(i, i + 50))) return i + /^\s*\}/.exec(text.slice(i))[0].length;
        }
      }
      i += m[0].length;
      if (m[1] === '*') return (named.add(resolvePath(base, segs)), i);
      segs.push(m[1]);
      const more = /^\s*::/.exec(text.slice(i, i + 50));
      if (!more) return (named.add(resolvePath(base, segs)), i);
      i += more[0].length;
    }
  };
  const re = /\bmod\s+[A-Za-z_]\w*\s*\{|[{}]|(?<![\w:])((?:(?:crate|self|super)\s*::\s*)+)|(?<![\w:])([A-Za-z_]\w*)\s*::/g;
  for (let m; (m = re.exec(text));) {
    const tok = m[0];
    if (tok === '{') {
      depth++;
      continue;
    }
    if (tok === '}') {
      depth--;
      if (inline.length > 0 && inline[inline.length - 1] === depth) inline.pop();
      continue;
    }
    if (tok.startsWith('mod')) {
      inline.push(depth);
      depth++;
      continue;
    }
    if (m[1] !== undefined) {
      // Where the path starts: the crate root, this module, or an ancestor. An inline module is one
      // level below its file, so its first `super` is the file itself.
      let base = path;
      let up = inline.length;
      for (const kw of m[1].split('::').map((s) => s.trim()).filter(Boolean)) {
        if (kw === 'crate') (base = ''), (up = 0);
        else if (kw === 'super') {
          if (up > 0) up--;
          else base = base.includes('::') ? base.slice(0, base.lastIndexOf('::')) : '';
        }
      }
      re.lastIndex = readTree(m.index + m[0].length, base, []);
      continue;
    }
    // A bare `child::…` in the file that declares `mod child;` (2018 paths): an arrow to it.
    const child = inline.length === 0 ? mods.get(path).children.get(m[2]) : undefined;
    if (child !== undefined) named.add(child);
  }
  named.delete(path);
  // A module naming its own ancestor (a child's `super::Loop`) is no arrow: a child module is part
  // of its parent (it sees the parent's private items by design), as when one type's impl blocks
  // are split by concern into child files. Arrows between siblings and down to children still count.
  for (const n of named) if (n === '' || path.startsWith(`${n}::`)) named.delete(n);
  return named;
}

function rustGraphs() {
  const graphs = [];
  const cratesDir = join(root, 'crates');
  for (const crate of readdirSync(cratesDir).sort()) {
    const src = join(cratesDir, crate, 'src');
    if (!existsSync(src) || !statSync(src).isDirectory()) continue;
    const roots = ['lib.rs', 'main.rs'].map((f) => join(src, f)).filter(existsSync);
    const bin = join(src, 'bin');
    if (existsSync(bin)) for (const f of readdirSync(bin).sort()) if (f.endsWith('.rs')) roots.push(join(bin, f));
    for (const rootFile of roots) {
      const mods = rustModules(rootFile);
      const name = (p) => relative(root, mods.get(p).file);
      const graph = new Map();
      for (const path of mods.keys()) graph.set(name(path), new Set([...rustUses(mods, path)].map(name)));
      graphs.push([`rust ${relative(root, rootFile)}`, graph]);
    }
  }
  return graphs;
}

let found = report('ts', tsGraph());
for (const [kind, graph] of rustGraphs()) found += report(kind, graph);
if (found > 0) {
  console.error(`import-cycles: ${found} circle(s): make the arrows go one way (move the shared part into a module of its own)`);
  process.exit(1);
}
console.error('import-cycles: no circles');
