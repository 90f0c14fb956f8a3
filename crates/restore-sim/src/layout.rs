//! The layout JSON (schema in LAYOUT.md): what to restore, and what each lazy byte must read afterwards.
//! Every error names the file and the JSON path of the bad value, so a broken layout is fixable by hand.
use serde_json::Value;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

use crate::PAGE;

#[derive(Clone, Debug)]
pub struct Vma {
  pub start: u64,
  pub end: u64,
  pub prot: i32,
  pub lazy: bool,
}

#[derive(Clone, Debug)]
pub struct Eager {
  pub start: u64,
  pub end: u64,
  pub file: PathBuf,
  pub offset: u64,
}

#[derive(Clone, Debug)]
pub enum ExpectKind {
  File { file: PathBuf, offset: u64 },
  Pattern { xor: u64 },
  Zero,
}

#[derive(Clone, Debug)]
pub struct Expect {
  pub start: u64,
  pub end: u64,
  pub kind: ExpectKind,
}

#[derive(Clone, Debug)]
pub struct Proc {
  pub pid: i32,
  pub ppid: i32,
  pub zombie: bool,
  pub vmas: Vec<Vma>,
  pub eager: Vec<Eager>,
  pub expect: Vec<Expect>,
}

#[derive(Clone, Debug)]
pub struct Layout {
  pub work_dir: PathBuf,
  pub processes: Vec<Proc>,
}

impl Layout {
  pub fn index_of(&self, pid: i32) -> Option<usize> {
    self.processes.iter().position(|p| p.pid == pid)
  }
}

/// Reads and validates a layout file.
pub fn load(path: &Path) -> Result<Layout, String> {
  let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read layout {}: {e}", path.display()))?;
  let v: Value = serde_json::from_str(&text)
    .map_err(|e| format!("layout {}: invalid JSON at line {} column {}: {e}", path.display(), e.line(), e.column()))?;
  parse(&v).map_err(|e| format!("layout {}: {e}", path.display()))
}

/// Parses an already-decoded layout value; errors carry the JSON path (`processes[0].vmas[1].start`).
pub fn parse(v: &Value) -> Result<Layout, String> {
  let work_dir = PathBuf::from(str_at(v, "workDir", "")?);
  if !work_dir.is_absolute() {
    return Err(format!("workDir must be an absolute path, got {:?}", work_dir));
  }
  let procs = arr_at(v, "processes", "")?;
  if procs.is_empty() {
    return Err("processes is empty: nothing to restore".into());
  }
  let mut processes = Vec::new();
  for (i, p) in procs.iter().enumerate() {
    processes.push(parse_proc(p, &format!("processes[{i}]"))?);
  }
  let pids: HashSet<i32> = processes.iter().map(|p| p.pid).collect();
  if pids.len() != processes.len() {
    return Err("processes: duplicate pid".into());
  }
  for (i, p) in processes.iter().enumerate() {
    if p.ppid != 0 && !pids.contains(&p.ppid) {
      return Err(format!("processes[{i}].ppid {} is not a pid of this layout", p.ppid));
    }
    if p.ppid != 0 && processes.iter().any(|q| q.pid == p.ppid && q.zombie) {
      return Err(format!("processes[{i}].ppid {} is a zombie: zombies have no children", p.ppid));
    }
  }
  // A cycle in ppid links would make the tree unforkable: every process must reach a root.
  for (i, p) in processes.iter().enumerate() {
    let mut cur = p.ppid;
    let mut steps = 0;
    while cur != 0 {
      steps += 1;
      if steps > processes.len() {
        return Err(format!("processes[{i}]: ppid chain has a cycle"));
      }
      cur = processes.iter().find(|q| q.pid == cur).map(|q| q.ppid).unwrap_or(0);
    }
  }
  Ok(Layout { work_dir, processes })
}

fn parse_proc(p: &Value, at: &str) -> Result<Proc, String> {
  let pid = int_at(p, "pid", at)?;
  if pid <= 0 || pid > i32::MAX as i64 {
    return Err(format!("{at}.pid must be a positive int32, got {pid}"));
  }
  let ppid = int_at(p, "ppid", at)?;
  if ppid < 0 || ppid > i32::MAX as i64 {
    return Err(format!("{at}.ppid must be 0 or a pid, got {ppid}"));
  }
  let zombie = match p.get("zombie") {
    None | Some(Value::Null) => false,
    Some(Value::Bool(b)) => *b,
    Some(_) => return Err(format!("{at}.zombie must be a boolean")),
  };
  let mut vmas = Vec::new();
  for (i, v) in opt_arr(p, "vmas", at)?.iter().enumerate() {
    let w = format!("{at}.vmas[{i}]");
    let (start, end) = range_at(v, &w)?;
    let prot = int_at(v, "prot", &w)?;
    if !(0..=7).contains(&prot) {
      return Err(format!("{w}.prot must be a PROT_* mask 0..7, got {prot}"));
    }
    let lazy = v.get("lazy").and_then(Value::as_bool).ok_or_else(|| format!("{w}.lazy must be a boolean"))?;
    vmas.push(Vma { start, end, prot: prot as i32, lazy });
  }
  vmas.sort_by_key(|v| v.start);
  for w in vmas.windows(2) {
    if w[0].end > w[1].start {
      return Err(format!("{at}.vmas: {:#x}-{:#x} overlaps {:#x}-{:#x}", w[0].start, w[0].end, w[1].start, w[1].end));
    }
  }
  let mut eager = Vec::new();
  for (i, e) in opt_arr(p, "eager", at)?.iter().enumerate() {
    let w = format!("{at}.eager[{i}]");
    let (start, end) = range_at(e, &w)?;
    if !vmas.iter().any(|v| v.start <= start && end <= v.end) {
      return Err(format!("{w}: {start:#x}-{end:#x} is not inside one VMA"));
    }
    let file = abs_path(e, &w)?;
    let offset = uint_at(e, "offset", &w)?;
    eager.push(Eager { start, end, file, offset });
  }
  let mut expect = Vec::new();
  for (i, e) in opt_arr(p, "expect", at)?.iter().enumerate() {
    let w = format!("{at}.expect[{i}]");
    let (start, end) = range_at(e, &w)?;
    let kind = match str_at(e, "kind", &w)?.as_str() {
      "file" => ExpectKind::File { file: abs_path(e, &w)?, offset: uint_at(e, "offset", &w)? },
      "pattern" => ExpectKind::Pattern {
        xor: match e.get("xor") {
          None => 0,
          Some(x) => hex_value(x, &format!("{w}.xor"))?,
        },
      },
      "zero" => ExpectKind::Zero,
      k => return Err(format!("{w}.kind must be \"file\", \"pattern\" or \"zero\", got {k:?}")),
    };
    expect.push(Expect { start, end, kind });
  }
  expect.sort_by_key(|e| e.start);
  for w in expect.windows(2) {
    if w[0].end > w[1].start {
      return Err(format!("{at}.expect: {:#x}-{:#x} overlaps {:#x}-{:#x}", w[0].start, w[0].end, w[1].start, w[1].end));
    }
  }
  Ok(Proc { pid: pid as i32, ppid: ppid as i32, zombie, vmas, eager, expect })
}

fn str_at(v: &Value, key: &str, at: &str) -> Result<String, String> {
  v.get(key).and_then(Value::as_str).map(str::to_owned).ok_or_else(|| format!("{} must be a string", join(at, key)))
}

fn arr_at<'a>(v: &'a Value, key: &str, at: &str) -> Result<&'a Vec<Value>, String> {
  v.get(key).and_then(Value::as_array).ok_or_else(|| format!("{} must be an array", join(at, key)))
}

fn opt_arr(v: &Value, key: &str, at: &str) -> Result<Vec<Value>, String> {
  match v.get(key) {
    None | Some(Value::Null) => Ok(Vec::new()),
    Some(Value::Array(a)) => Ok(a.clone()),
    Some(_) => Err(format!("{} must be an array", join(at, key))),
  }
}

fn int_at(v: &Value, key: &str, at: &str) -> Result<i64, String> {
  v.get(key).and_then(Value::as_i64).ok_or_else(|| format!("{} must be an integer", join(at, key)))
}

/// Offsets may be plain numbers (they stay below 2^53 in practice) or hex strings like addresses.
fn uint_at(v: &Value, key: &str, at: &str) -> Result<u64, String> {
  match v.get(key) {
    Some(Value::Number(n)) => n.as_u64().ok_or_else(|| format!("{} must be a non-negative integer", join(at, key))),
    Some(x @ Value::String(_)) => hex_value(x, &join(at, key)),
    _ => Err(format!("{} must be a non-negative integer", join(at, key))),
  }
}

fn abs_path(v: &Value, at: &str) -> Result<PathBuf, String> {
  let p = PathBuf::from(str_at(v, "file", at)?);
  if !p.is_absolute() {
    return Err(format!("{at}.file must be an absolute path, got {:?}", p));
  }
  Ok(p)
}

fn hex_value(v: &Value, at: &str) -> Result<u64, String> {
  let s = v.as_str().ok_or_else(|| format!("{at} must be a hex string like \"0x200000000\""))?;
  let digits = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X"));
  digits
    .and_then(|d| u64::from_str_radix(d, 16).ok())
    .ok_or_else(|| format!("{at} must be a hex string like \"0x200000000\", got {s:?}"))
}

fn range_at(v: &Value, at: &str) -> Result<(u64, u64), String> {
  let start = hex_value(v.get("start").unwrap_or(&Value::Null), &format!("{at}.start"))?;
  let end = hex_value(v.get("end").unwrap_or(&Value::Null), &format!("{at}.end"))?;
  if start % PAGE != 0 || end % PAGE != 0 {
    return Err(format!("{at}: {start:#x}-{end:#x} is not page aligned"));
  }
  if start >= end {
    return Err(format!("{at}: start {start:#x} is not below end {end:#x}"));
  }
  Ok((start, end))
}

fn join(at: &str, key: &str) -> String {
  if at.is_empty() {
    key.to_string()
  } else {
    format!("{at}.{key}")
  }
}

#[cfg(test)]
mod tests {
  use super::parse;
  use serde_json::json;

  #[test]
  fn errors_name_the_json_path() {
    let bad = json!({ "workDir": "/x", "processes": [ { "pid": 5, "ppid": 0,
            "vmas": [ { "start": "0x1000", "end": "0x3000", "prot": 3, "lazy": true } ],
            "expect": [ { "start": "0x1000", "end": "0x2000", "kind": "blue" } ] } ] });
    let e = parse(&bad).unwrap_err();
    assert!(e.contains("processes[0].expect[0].kind"), "{e}");
    let bad = json!({ "workDir": "/x", "processes": [ { "pid": 5, "ppid": 9 } ] });
    assert!(parse(&bad).unwrap_err().contains("processes[0].ppid 9"));
    let bad = json!({ "workDir": "/x", "processes": [ { "pid": 5, "ppid": 0, "vmas": [ { "start": 4096, "end": "0x2000", "prot": 3, "lazy": true } ] } ] });
    assert!(parse(&bad).unwrap_err().contains("processes[0].vmas[0].start must be a hex string"));
  }

  #[test]
  fn a_valid_tree_parses() {
    let ok =
      json!({ "workDir": "/x", "processes": [ { "pid": 5, "ppid": 0 }, { "pid": 6, "ppid": 5, "zombie": true } ] });
    let l = parse(&ok).unwrap();
    assert_eq!(l.processes.len(), 2);
    assert!(l.processes[1].zombie);
  }
}
