//! Every code block in README.md compiles or runs as printed. Each fenced block is checked by
//! its language, whatever it holds, so a block added later is checked too:
//! - ```c: compiled with `cc -std=c11 -Wall -Wextra -Wpedantic -Werror` against `include/` and
//!   linked with `-llameduck` (the library this test run built) when it defines `main`; a block
//!   without `main` must still compile as a translation unit;
//! - ```python: compiled by `python3` (`compile()`, the check `py_compile` makes; the quick
//!   starts are also run, by `bindings/python/tests/test_readme.py`);
//! - ```js: `node --check` (as an ES module when it has `import`/`export` lines);
//! - ```ts: TypeScript's own parser (`transpileModule`), from `bindings/node/node_modules`
//!   once `npm install` has put it there (test-all.sh does); skipped with a note before;
//! - ```sh: `bash -n`, and everything a command names must exist: the script given to `bash`,
//!   `sh`, `python3` or `node`, a relative command (`target/release/X` must be a binary of this
//!   crate), the targets of `make` (in the Makefile), the local directories given to
//!   `pip install`/`npm install`/`cargo install --path`, relative to the directory a `cd`
//!   moved to;
//! - ```yaml: parsed by PyYAML (through `python3`; skipped with a note when it lacks PyYAML,
//!   as before the venv exists: test-all.sh runs this check again with the venv's); in a pod
//!   spec, the probes must ask `/ready` (readiness) and `/live` (liveness) on the port of a
//!   `health` address the README's code sets, and `terminationGracePeriodSeconds` must cover
//!   `preStop` + `drain_delay` + `period` + `close_timeout` of the nearest Python block above it
//!   that sets `health=`;
//! - ```haproxy: `haproxy -c` (skipped with a note without haproxy), and the health check must
//!   be `GET /ready` on a `health` port, with `option redispatch` and `retries`;
//! - ```ini PATH: the file PATH of the repository, exactly (the systemd units);
//! - a plain ``` block is an output sample (`tests/demo.rs` checks the demo's).
//!
//! Any other language fails, so that nothing is left unchecked by accident. A failure names the
//! README line of the block (or of the command in it).

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// A fenced code block: the line of its opening fence (1-based), its language, the rest of
/// its info string, its text.
#[derive(Debug)]
struct Block {
    line: usize,
    lang: String,
    info: String,
    code: String,
}

/// The fenced blocks of a Markdown text (``` or ~~~ fences, indented ones too).
fn blocks(text: &str) -> Result<Vec<Block>, String> {
    let mut out = Vec::new();
    type Open<'a> = (usize, String, usize, String, String, Vec<&'a str>); // line, fence, indent, lang, info, lines
    let mut open: Option<Open> = None;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        match &mut open {
            None => {
                let fence: String = trimmed.chars().take_while(|&c| c == '`' || c == '~').collect();
                if fence.len() >= 3 && fence.chars().all(|c| c == fence.chars().next().unwrap()) {
                    let mut words = trimmed[fence.len()..].split_whitespace();
                    let lang = words.next().unwrap_or("").to_ascii_lowercase();
                    let info = words.collect::<Vec<_>>().join(" ");
                    open = Some((i + 1, fence, indent, lang, info, Vec::new()));
                }
            }
            Some((start, fence, fence_indent, lang, info, lines)) => {
                if trimmed.trim_end().starts_with(fence.as_str())
                    && trimmed.trim_end().chars().all(|c| c == fence.as_bytes()[0] as char)
                {
                    out.push(Block {
                        line: *start,
                        lang: std::mem::take(lang),
                        info: std::mem::take(info),
                        code: lines.iter().map(|l| format!("{l}\n")).collect(),
                    });
                    open = None;
                } else {
                    let strip = indent.min(*fence_indent);
                    lines.push(&line[strip..]);
                }
            }
        }
    }
    match open {
        Some((start, ..)) => Err(format!("README.md:{start}: this code block is never closed")),
        None => Ok(out),
    }
}

fn readme_blocks() -> &'static [Block] {
    static BLOCKS: OnceLock<Vec<Block>> = OnceLock::new();
    BLOCKS.get_or_init(|| {
        let text = std::fs::read_to_string(common::repo().join("README.md")).unwrap();
        blocks(&text).unwrap_or_else(|e| panic!("{e}"))
    })
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    C,
    Python,
    Js,
    Ts,
    Sh,
    Yaml,
    Haproxy,
    Ini,
    Output,
}

fn kind(lang: &str) -> Option<Kind> {
    Some(match lang {
        "c" => Kind::C,
        "python" | "py" | "python3" => Kind::Python,
        "js" | "javascript" | "mjs" | "cjs" => Kind::Js,
        "ts" | "typescript" | "mts" | "cts" => Kind::Ts,
        "sh" | "bash" | "shell" => Kind::Sh,
        "yaml" | "yml" => Kind::Yaml,
        "haproxy" => Kind::Haproxy,
        "ini" => Kind::Ini,
        "" | "text" | "txt" | "output" | "console" => Kind::Output,
        _ => return None,
    })
}

/// The README's blocks of one kind; fails when there is none (a parser that finds nothing
/// would otherwise pass every check).
fn of_kind(k: Kind) -> Vec<&'static Block> {
    let found: Vec<_> = readme_blocks().iter().filter(|b| kind(&b.lang) == Some(k)).collect();
    assert!(!found.is_empty(), "README.md has no {k:?} block: is the fence parser broken?");
    found
}

/// A scratch directory for this test process.
fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("readme-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    })
}

/// Runs a checker over blocks and fails once with every failure, each naming its README line.
fn check_all(blocks: &[&Block], check: impl Fn(&Block) -> Result<(), String>) {
    let failures: Vec<String> = blocks.iter().filter_map(|b| check(b).err()).collect();
    assert!(failures.is_empty(), "{} README block(s) fail:\n\n{}", failures.len(), failures.join("\n\n"));
}

/// Runs a command; Err with its output (under `what`) when it fails or cannot start.
fn run(mut cmd: Command, what: &str) -> Result<(), String> {
    // The command as a reader would type it; a long inline script is abbreviated.
    let shown = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy())
        .map(|a| if a.contains('\n') { "<script>".into() } else { a })
        .collect::<Vec<_>>()
        .join(" ");
    let out = cmd.output().map_err(|e| format!("{what}: cannot run {shown}: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "{what}: {shown} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

#[test]
fn every_block_has_a_language_this_test_checks() {
    let unknown: Vec<String> = readme_blocks()
        .iter()
        .filter(|b| kind(&b.lang).is_none())
        .map(|b| {
            format!(
                "README.md:{}: a ```{} block, which tests/readme.rs cannot check: give it a checked language \
                 (c, python, js, ts, sh, yaml, haproxy, ini FILE), make it a plain ``` output sample, or add a checker",
                b.line, b.lang
            )
        })
        .collect();
    assert!(unknown.is_empty(), "{}", unknown.join("\n"));
}

#[test]
fn c_blocks_compile_and_link() {
    let lib = common::lib_dir();
    check_all(&of_kind(Kind::C), |b| {
        let source = scratch().join(format!("readme-{}.c", b.line));
        std::fs::write(&source, &b.code).unwrap();
        let program = b.code.lines().any(|l| l.contains(" main(") || l.starts_with("main("));
        let mut cmd = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()));
        cmd.args(["-std=c11", "-Wall", "-Wextra", "-Wpedantic", "-Werror", "-pthread"]);
        cmd.arg("-I").arg(common::repo().join("include")).arg(&source);
        if program {
            cmd.arg("-L").arg(lib).arg("-llameduck").arg(format!("-Wl,-rpath,{}", lib.display()));
            cmd.arg("-o").arg(scratch().join(format!("readme-{}", b.line)));
        } else {
            cmd.arg("-c").arg("-o").arg(scratch().join(format!("readme-{}.o", b.line)));
        }
        let what = if program { "does not compile and link as a program" } else { "does not compile (it has no main)" };
        run(cmd, &format!("README.md:{}: the ```c block {what}", b.line))
    });
}

#[test]
fn python_blocks_compile() {
    let python = std::env::var("LAMEDUCK_PYTHON").unwrap_or_else(|_| "python3".into());
    check_all(&of_kind(Kind::Python), |b| {
        let source = scratch().join(format!("readme-{}.py", b.line));
        std::fs::write(&source, &b.code).unwrap();
        let mut cmd = Command::new(&python);
        // What py_compile does, without writing a .pyc.
        cmd.args(["-c", "import sys; compile(open(sys.argv[1]).read(), sys.argv[1], 'exec')"]).arg(&source);
        run(cmd, &format!("README.md:{}: the ```python block does not compile", b.line))
    });
}

/// True when a JavaScript or TypeScript block is an ES module.
fn is_module(code: &str) -> bool {
    code.lines().map(str::trim_start).any(|l| l.starts_with("import ") || l.starts_with("import{") || l.starts_with("export "))
}

#[test]
fn js_blocks_pass_node_check() {
    check_all(&of_kind(Kind::Js), |b| {
        let ext = if is_module(&b.code) { "mjs" } else { "cjs" };
        let source = scratch().join(format!("readme-{}.{ext}", b.line));
        std::fs::write(&source, &b.code).unwrap();
        let mut cmd = Command::new("node");
        cmd.arg("--check").arg(&source);
        run(cmd, &format!("README.md:{}: the ```js block does not parse", b.line))
    });
}

#[test]
fn ts_blocks_parse() {
    let blocks: Vec<_> = readme_blocks().iter().filter(|b| kind(&b.lang) == Some(Kind::Ts)).collect();
    if blocks.is_empty() {
        return;
    }
    let typescript = common::repo().join("bindings/node/node_modules/typescript/lib/typescript.js");
    if !typescript.exists() {
        for b in &blocks {
            eprintln!(
                "README.md:{}: ```ts block not checked: {} is missing (npm install in bindings/node)",
                b.line,
                typescript.display()
            );
        }
        return;
    }
    const PARSE: &str = "const ts = require(process.argv[1]); const fs = require('fs');
        const out = ts.transpileModule(fs.readFileSync(process.argv[2], 'utf8'),
          { fileName: process.argv[2], reportDiagnostics: true, compilerOptions: { target: ts.ScriptTarget.ES2022 } });
        const errors = out.diagnostics.map((d) => ts.flattenDiagnosticMessageText(d.messageText, '\\n'));
        if (errors.length) { console.error(errors.join('\\n')); process.exit(1) }";
    check_all(&blocks, |b| {
        let source = scratch().join(format!("readme-{}.{}", b.line, if is_module(&b.code) { "mts" } else { "cts" }));
        std::fs::write(&source, &b.code).unwrap();
        let mut cmd = Command::new("node");
        cmd.arg("-e").arg(PARSE).arg(&typescript).arg(&source);
        run(cmd, &format!("README.md:{}: the ```ts block does not parse", b.line))
    });
}

#[test]
fn sh_blocks_parse_and_name_what_exists() {
    check_all(&of_kind(Kind::Sh), |b| {
        let source = scratch().join(format!("readme-{}.sh", b.line));
        std::fs::write(&source, &b.code).unwrap();
        let mut cmd = Command::new("bash");
        cmd.arg("-n").arg(&source);
        run(cmd, &format!("README.md:{}: the ```sh block is not valid bash", b.line))?;
        let problems = sh_names(&b.code, &common::repo());
        if problems.is_empty() {
            return Ok(());
        }
        Err(problems.iter().map(|(offset, p)| format!("README.md:{}: {p}", b.line + 1 + offset)).collect::<Vec<_>>().join("\n"))
    });
}

/// One word of a shell command: its text without quotes, and whether it depends on the
/// environment (a `$` expansion, a command substitution, a glob, `~`), so it is not checked.
#[derive(Debug, Clone)]
struct Word {
    text: String,
    dynamic: bool,
}

#[derive(Debug)]
enum Token {
    Word(Word),
    /// `&&`, `||`, `;`, `|`, `&`, a newline: the end of a simple command.
    End,
    Open,
    Close,
}

/// Splits a shell script into words and command separators, with the line (0-based) each
/// token starts on. Handles quotes, backslashes, comments and `$( … )`; enough for a README.
fn tokens(script: &str) -> Vec<(usize, Token)> {
    let chars: Vec<char> = script.chars().collect();
    let mut out = Vec::new();
    let (mut i, mut line) = (0, 0);
    let mut word: Option<(usize, Word)> = None;
    fn flush(word: &mut Option<(usize, Word)>, out: &mut Vec<(usize, Token)>) {
        if let Some((l, w)) = word.take() {
            out.push((l, Token::Word(w)));
        }
    }
    fn current(word: &mut Option<(usize, Word)>, line: usize) -> &mut Word {
        &mut word.get_or_insert((line, Word { text: String::new(), dynamic: false })).1
    }
    while i < chars.len() {
        let c = chars[i];
        match c {
            '\\' if chars.get(i + 1) == Some(&'\n') => {
                i += 1;
                line += 1;
            }
            ' ' | '\t' => flush(&mut word, &mut out),
            '\n' => {
                flush(&mut word, &mut out);
                out.push((line, Token::End));
                line += 1;
            }
            '#' if word.is_none() => {
                while i + 1 < chars.len() && chars[i + 1] != '\n' {
                    i += 1;
                }
            }
            ';' | '&' | '|' => {
                flush(&mut word, &mut out);
                out.push((line, Token::End));
                if chars.get(i + 1) == Some(&c) {
                    i += 1;
                }
            }
            '(' | ')' => {
                flush(&mut word, &mut out);
                out.push((line, if c == '(' { Token::Open } else { Token::Close }));
            }
            '\'' | '"' => {
                let w = current(&mut word, line);
                i += 1;
                while i < chars.len() && chars[i] != c {
                    if c == '"' && chars[i] == '$' {
                        w.dynamic = true;
                    }
                    if c == '"' && chars[i] == '\\' && i + 1 < chars.len() {
                        i += 1;
                    }
                    if chars[i] == '\n' {
                        line += 1;
                    }
                    w.text.push(chars[i]);
                    i += 1;
                }
            }
            '$' if chars.get(i + 1) == Some(&'(') => {
                let w = current(&mut word, line);
                w.dynamic = true;
                let mut depth = 0;
                loop {
                    match chars[i] {
                        '(' => depth += 1,
                        ')' => depth -= 1,
                        '\n' => line += 1,
                        _ => {}
                    }
                    w.text.push(chars[i]);
                    if depth == 0 || i + 1 == chars.len() {
                        break;
                    }
                    i += 1;
                }
            }
            '\\' if i + 1 < chars.len() => {
                i += 1;
                current(&mut word, line).text.push(chars[i]);
            }
            _ => {
                let w = current(&mut word, line);
                if matches!(c, '$' | '*' | '?' | '[' | '`') || (c == '~' && w.text.is_empty()) {
                    w.dynamic = true;
                }
                w.text.push(c);
            }
        }
        i += 1;
    }
    flush(&mut word, &mut out);
    out
}

/// The targets the Makefile in `dir` defines.
fn make_targets(dir: &Path) -> Option<BTreeSet<String>> {
    let text = ["GNUmakefile", "makefile", "Makefile"].iter().find_map(|f| std::fs::read_to_string(dir.join(f)).ok())?;
    let mut targets = BTreeSet::new();
    for line in text.lines() {
        if line.starts_with(['\t', ' ', '#']) {
            continue;
        }
        let Some(colon) = line.find(':') else { continue };
        if line[colon + 1..].starts_with('=') || line[..colon].contains('=') {
            continue; // `X := …`, `X ?= a:b`
        }
        targets.extend(line[..colon].split_whitespace().map(str::to_string));
    }
    Some(targets)
}

/// Whether `target/<profile>/<name>` is something cargo builds for this crate.
fn cargo_product(repo: &Path, rest: &Path) -> bool {
    let name = rest.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let bin = repo.join("src/bin");
    bin.join(format!("{name}.rs")).exists()
        || bin.join(name).join("main.rs").exists()
        || (name.starts_with("liblameduck.") && repo.join("src/lib.rs").exists())
}

/// What the commands of a sh block name that does not exist: (0-based line in the block, problem).
fn sh_names(script: &str, repo: &Path) -> Vec<(usize, String)> {
    let mut problems = Vec::new();
    // The directory commands run in, relative to the repository; None once a `cd` went
    // somewhere outside it (the reader's own project, a directory made by the block).
    let mut cwd: Option<PathBuf> = Some(repo.to_path_buf());
    let mut saved = Vec::new();
    let mut command: Vec<(usize, Word)> = Vec::new();
    let mut toks = tokens(script);
    toks.push((usize::MAX, Token::End));
    for (line, token) in toks {
        if let Token::Word(w) = token {
            command.push((line, w));
            continue;
        }
        // The command before a separator or parenthesis runs where we are now.
        if let Some(&(first_line, _)) = command.first() {
            let words: Vec<Word> = command.drain(..).map(|(_, w)| w).collect();
            let shown = words.iter().map(|w| w.text.as_str()).collect::<Vec<_>>().join(" ");
            for p in check_command(&words, &mut cwd, repo) {
                problems.push((first_line, format!("`{shown}`: {p}")));
            }
        }
        match token {
            Token::Open => saved.push(cwd.clone()),
            Token::Close => cwd = saved.pop().unwrap_or_else(|| cwd.clone()),
            _ => {}
        }
    }
    problems
}

/// Checks one simple command; may move `cwd` (`cd`). Returns the problems found.
fn check_command(words: &[Word], cwd: &mut Option<PathBuf>, repo: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    // Leading assignments and wrappers that run the rest as a command.
    let mut i = 0;
    while i < words.len() {
        let t = &words[i].text;
        let assignment =
            t.split_once('=').is_some_and(|(name, _)| !name.is_empty() && name.chars().all(|c| c.is_alphanumeric() || c == '_'));
        if assignment || matches!(t.as_str(), "sudo" | "env" | "exec" | "time" | "nohup" | "command") {
            i += 1;
        } else {
            break;
        }
    }
    let Some(cmd) = words.get(i) else { return problems };
    let mut args: Vec<&Word> = words[i + 1..].iter().collect();
    if cmd.dynamic {
        return problems;
    }
    let Some(dir) = cwd.clone() else {
        return problems; // somewhere this test cannot see
    };
    let exists = |w: &Word| dir.join(&w.text).exists();
    let generated = |p: &str| p.starts_with(".venv/") || p.contains("node_modules/");
    let mut name = cmd.text.rsplit('/').next().unwrap_or("").to_string();
    if cmd.text.contains('/') && !cmd.text.starts_with('/') && !generated(&cmd.text) {
        let relative = Path::new(&cmd.text);
        let built = relative.strip_prefix("target").ok().and_then(|r| r.strip_prefix(r.iter().next()?).ok());
        match built {
            Some(rest) if !dir.join(relative).exists() && !cargo_product(repo, rest) => {
                problems.push(format!("{} is not built by this crate", cmd.text))
            }
            None if !dir.join(relative).exists() => problems.push(format!("{} does not exist", cmd.text)),
            _ => {}
        }
    }
    let interpreter = matches!(name.as_str(), "bash" | "sh" | "node") || name.starts_with("python");
    if interpreter {
        if name.starts_with("python") && args.first().is_some_and(|a| a.text == "-m") && args.len() >= 2 {
            name = args[1].text.clone(); // python -m pip …
            args.drain(..2);
        } else {
            let mut script = None;
            for a in &args {
                if matches!(a.text.as_str(), "-c" | "-m" | "-e" | "-p" | "--eval" | "--print" | "-") {
                    break; // the code is not a file
                }
                if !a.text.starts_with('-') {
                    script = Some(*a);
                    break;
                }
            }
            if let Some(s) = script {
                if !s.dynamic && !exists(s) {
                    problems.push(format!("{} does not exist", s.text));
                }
            }
            return problems;
        }
    }
    match name.as_str() {
        "cd" => {
            *cwd = match args.first() {
                Some(a) if !a.dynamic && dir.join(&a.text).is_dir() => Some(dir.join(&a.text)),
                _ => None,
            };
        }
        "make" | "gmake" => {
            let mut make_dir = dir.clone();
            let mut goals = Vec::new();
            let mut j = 0;
            while j < args.len() {
                let a = &args[j].text;
                if a == "-C" || a == "--directory" {
                    j += 1;
                    if let Some(d) = args.get(j) {
                        make_dir = make_dir.join(&d.text);
                    }
                } else if let Some(d) = a.strip_prefix("--directory=").or_else(|| a.strip_prefix("-C")) {
                    make_dir = make_dir.join(d);
                } else if a == "-f" || a == "-j" || a == "-l" || a == "-o" || a == "-W" {
                    j += 1;
                } else if !a.starts_with('-') && !a.contains('=') {
                    goals.push(args[j]);
                }
                j += 1;
            }
            match make_targets(&make_dir) {
                None => problems.push(format!("there is no Makefile in {}", make_dir.display())),
                Some(targets) => {
                    for g in goals {
                        if !g.dynamic && !targets.contains(&g.text) {
                            problems.push(format!("the Makefile has no target {:?}", g.text));
                        }
                    }
                }
            }
        }
        "pip" | "pip3" | "npm" | "pnpm" | "yarn" | "cargo" => {
            let installs = args.first().is_some_and(|a| matches!(a.text.as_str(), "install" | "i" | "add"));
            if installs {
                for a in &args[1..] {
                    let t = &a.text;
                    let local = t.starts_with("./") || t.starts_with("../");
                    // A local package directory (not a built archive: x.tgz, x.whl).
                    let directory = !t.rsplit('/').next().unwrap_or("").contains('.');
                    if local && directory && !a.dynamic && !exists(a) {
                        problems.push(format!("{t} does not exist"));
                    }
                }
                if name == "cargo" {
                    if let Some(p) = args.windows(2).find(|w| w[0].text == "--path").map(|w| w[1]) {
                        if !p.dynamic && !exists(p) {
                            problems.push(format!("{} does not exist", p.text));
                        }
                    }
                }
            }
        }
        _ => {}
    }
    problems
}

/// The ports of the `health` addresses the README's code sets, in each language's spelling:
/// `ld_options_set_health_address(o, "HOST:PORT")`, Python `health="HOST:PORT"`, Node
/// `health: 'HOST:PORT'`.
fn health_ports(blocks: &[Block]) -> BTreeSet<u16> {
    let mut ports = BTreeSet::new();
    for b in blocks {
        for (spelling, quote) in [("ld_options_set_health_address(", '"'), ("health=\"", '"'), ("health: '", '\'')] {
            for (at, _) in b.code.match_indices(spelling) {
                // The address is the next quoted text (the spelling may end with its opening quote).
                let rest = &b.code[at + spelling.len()..];
                let rest = if spelling.ends_with(quote) { rest } else { rest.split_once(quote).map_or("", |(_, a)| a) };
                let address = rest.split(quote).next().unwrap_or("");
                if let Some(port) = address.rsplit(':').next().and_then(|p| p.parse().ok()) {
                    ports.insert(port);
                }
            }
        }
    }
    ports
}

/// The number given to the keyword argument `name` in Python code (`name=1.5`), if any.
fn kwarg(code: &str, name: &str) -> Option<f64> {
    let pattern = format!("{name}=");
    let (at, _) =
        code.match_indices(&pattern).find(|(at, _)| !code[..*at].ends_with(|c: char| c.is_alphanumeric() || c == '_'))?;
    let number: String = code[at + pattern.len()..].chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
    number.parse().ok()
}

/// What a pod spec (a YAML document, flattened to `path=value` pairs) gets wrong: probes that
/// do not ask `/ready` or `/live` on a `health` port, a grace period shorter than `preStop` +
/// the budget of `server` (the Python code that sets `health=`: `drain_delay`, `period`,
/// `close_timeout`, 5 s by default).
fn pod_spec_problems(flat: &[(String, String)], ports: &BTreeSet<u16>, server: Option<&str>) -> Vec<String> {
    let mut problems = Vec::new();
    let value = |suffix: &str| flat.iter().find(|(k, _)| k.ends_with(suffix)).map(|(_, v)| v.as_str());
    for (probe, path) in [("readinessProbe", "/ready"), ("livenessProbe", "/live")] {
        for (key, got) in flat.iter().filter(|(k, _)| k.ends_with(&format!("{probe}.httpGet.path"))) {
            if got != path {
                problems.push(format!("{key} is {got}, not {path}"));
            }
            let port_key = key.replace(".path", ".port");
            let port = flat.iter().find(|(k, _)| *k == port_key).and_then(|(_, v)| v.parse::<u16>().ok());
            if !port.is_some_and(|p| ports.contains(&p)) {
                problems.push(format!("{port_key} is {port:?}, not a port of the health addresses the README sets ({ports:?})"));
            }
        }
    }
    if let Some(grace) = value(".terminationGracePeriodSeconds") {
        let pre_stop = match (value("lifecycle.preStop.exec.command.0"), value("lifecycle.preStop.exec.command.1")) {
            (Some("sleep"), Some(seconds)) => seconds.parse().unwrap_or(f64::NAN),
            _ => value("lifecycle.preStop.sleep.seconds").map_or(0.0, |s| s.parse().unwrap_or(f64::NAN)),
        };
        match server {
            None => problems.push("no Python block above sets health=: nothing to check the grace period against".into()),
            Some(code) => {
                let budget = pre_stop
                    + kwarg(code, "drain_delay").unwrap_or(0.0)
                    + kwarg(code, "period").unwrap_or(3.0)
                    + kwarg(code, "close_timeout").unwrap_or(5.0);
                if !grace.parse::<f64>().is_ok_and(|g| g >= budget) {
                    problems.push(format!(
                        "terminationGracePeriodSeconds {grace} < preStop + drain_delay + period + close_timeout = {budget}"
                    ));
                }
            }
        }
    }
    problems
}

/// Flattens every YAML document of a file to `N.path.to.key=value` lines, or exits 3 when
/// this Python has no PyYAML.
const FLATTEN_YAML: &str = "import sys
try:
    import yaml
except ImportError:
    sys.exit(3)
def walk(path, v):
    if isinstance(v, dict):
        for k, x in v.items(): walk(path + [str(k)], x)
    elif isinstance(v, list):
        for i, x in enumerate(v): walk(path + [str(i)], x)
    else:
        print('.'.join(path) + '=' + str(v))
for i, doc in enumerate(yaml.safe_load_all(open(sys.argv[1]))):
    walk([str(i)], doc)
";

#[test]
fn yaml_blocks_parse_and_pod_specs_match_the_health_options() {
    let python = std::env::var("LAMEDUCK_PYTHON").unwrap_or_else(|_| "python3".into());
    let ports = health_ports(readme_blocks());
    check_all(&of_kind(Kind::Yaml), |b| {
        let source = scratch().join(format!("readme-{}.yaml", b.line));
        std::fs::write(&source, &b.code).unwrap();
        let out =
            Command::new(&python).arg("-c").arg(FLATTEN_YAML).arg(&source).output().map_err(|e| format!("{python}: {e}"))?;
        if out.status.code() == Some(3) {
            eprintln!("README.md:{}: ```yaml block not checked: {python} has no PyYAML (the project venv has)", b.line);
            return Ok(());
        }
        if !out.status.success() {
            return Err(format!(
                "README.md:{}: the ```yaml block does not parse:\n{}",
                b.line,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let flat: Vec<(String, String)> =
            text.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let server = readme_blocks()
            .iter()
            .rev()
            .find(|p| kind(&p.lang) == Some(Kind::Python) && p.line < b.line && p.code.contains("health="))
            .map(|p| p.code.as_str());
        let problems = pod_spec_problems(&flat, &ports, server);
        if problems.is_empty() {
            return Ok(());
        }
        Err(format!("README.md:{}: the ```yaml block: {}", b.line, problems.join("; ")))
    });
}

/// What an haproxy configuration gets wrong for a lameduck server: its health check must be
/// `GET /ready` on a `health` port, and it must retry a failed connection elsewhere.
fn haproxy_problems(config: &str, ports: &BTreeSet<u16>) -> Vec<String> {
    let lines: Vec<&str> = config.lines().map(str::trim).collect();
    let mut problems = Vec::new();
    if !lines.iter().any(|l| l.starts_with("option httpchk") && l.split_whitespace().any(|w| w == "/ready")) {
        problems.push("no `option httpchk GET /ready`".to_string());
    }
    let check_ports: Vec<Option<u16>> = lines
        .iter()
        .filter(|l| l.starts_with("server ") || l.starts_with("default-server "))
        .filter_map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            words.contains(&"check").then(|| words.windows(2).find(|w| w[0] == "port").and_then(|w| w[1].parse().ok()))
        })
        .collect();
    if check_ports.is_empty() || check_ports.iter().any(|p| !p.is_some_and(|p| ports.contains(&p))) {
        problems.push(format!("health checks on ports {check_ports:?}, not the health addresses' ({ports:?})"));
    }
    for needed in ["option redispatch", "retries "] {
        if !lines.iter().any(|l| l.starts_with(needed)) {
            problems.push(format!("no `{}`", needed.trim()));
        }
    }
    problems
}

#[test]
fn haproxy_blocks_pass_haproxy_check_and_check_the_health_port() {
    let ports = health_ports(readme_blocks());
    let haproxy = ["/usr/sbin", "/sbin", "/usr/local/sbin"]
        .iter()
        .map(PathBuf::from)
        .chain(std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect::<Vec<_>>()).unwrap_or_default())
        .map(|d| d.join("haproxy"))
        .find(|p| p.exists());
    check_all(&of_kind(Kind::Haproxy), |b| {
        let problems = haproxy_problems(&b.code, &ports);
        if !problems.is_empty() {
            return Err(format!("README.md:{}: the ```haproxy block: {}", b.line, problems.join("; ")));
        }
        let Some(haproxy) = &haproxy else {
            eprintln!("README.md:{}: ```haproxy block not run through haproxy -c: haproxy is not installed", b.line);
            return Ok(());
        };
        let source = scratch().join(format!("readme-{}.cfg", b.line));
        std::fs::write(&source, &b.code).unwrap();
        let mut cmd = Command::new(haproxy);
        cmd.arg("-c").arg("-f").arg(&source);
        run(cmd, &format!("README.md:{}: the ```haproxy block is not a valid configuration", b.line))
    });
}

#[test]
fn ini_blocks_are_the_files_they_name() {
    check_all(&of_kind(Kind::Ini), |b| {
        if b.info.is_empty() {
            return Err(format!("README.md:{}: an ```ini block names the file it shows (```ini examples/x.service)", b.line));
        }
        let path = common::repo().join(&b.info);
        let file = std::fs::read_to_string(&path).map_err(|e| format!("README.md:{}: {}: {e}", b.line, b.info))?;
        if file != b.code {
            return Err(format!("README.md:{}: the ```ini block is not {} as committed", b.line, b.info));
        }
        Ok(())
    });
}

#[test]
fn the_pod_spec_and_haproxy_checkers_find_what_is_wrong() {
    let flat = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<Vec<_>>();
    let ports = BTreeSet::from([8081]);
    let server = "run(server, health=\"0.0.0.0:8081\", drain_delay=15.0, period=20.0)";
    let c = "0.spec.template.spec.containers.0";
    let good = flat(&[
        ("0.spec.template.spec.terminationGracePeriodSeconds", "42"),
        (&format!("{c}.readinessProbe.httpGet.path"), "/ready"),
        (&format!("{c}.readinessProbe.httpGet.port"), "8081"),
        (&format!("{c}.livenessProbe.httpGet.path"), "/live"),
        (&format!("{c}.livenessProbe.httpGet.port"), "8081"),
        (&format!("{c}.lifecycle.preStop.exec.command.0"), "sleep"),
        (&format!("{c}.lifecycle.preStop.exec.command.1"), "2"),
    ]);
    assert_eq!(pod_spec_problems(&good, &ports, Some(server)), Vec::<String>::new(), "2 + 15 + 20 + 5 = 42");
    let mut bad = good.clone();
    bad[0].1 = "41".into();
    bad[1].1 = "/live".into();
    bad[4].1 = "8080".into();
    let problems = pod_spec_problems(&bad, &ports, Some(server));
    assert_eq!(problems.len(), 3, "{problems:?}");
    assert!(pod_spec_problems(&good, &ports, None)[0].contains("no Python block"));
    assert_eq!(
        health_ports(&blocks("```python\nrun(health=\"0.0.0.0:8081\")\n```\n```js\n{ health: '[::1]:9000' }\n```\n").unwrap()),
        BTreeSet::from([8081, 9000])
    );
    assert_eq!(kwarg("x(drain_period=1, period=2.5)", "period"), Some(2.5));

    let config = "defaults\n  retries 3\n  option redispatch\nbackend b\n  option httpchk GET /ready\n  server a 10.0.0.1:8080 check port 8081\n";
    assert_eq!(haproxy_problems(config, &ports), Vec::<String>::new());
    let wrong = config.replace("/ready", "/health").replace("port 8081", "port 8080").replace("  retries 3\n", "");
    assert_eq!(haproxy_problems(&wrong, &ports).len(), 3, "{:?}", haproxy_problems(&wrong, &ports));
}

#[test]
fn the_fence_parser_finds_every_block() {
    let text = "intro\n```c\nint x;\n```\n\n- item\n\n  ```python\n  print(1)\n  ```\n~~~\nout\n~~~\n````sh\n```\n````\n```ini a/b.service\nK=V\n```\n";
    let found = blocks(text).unwrap();
    let summary: Vec<_> = found.iter().map(|b| (b.line, b.lang.as_str(), b.info.as_str(), b.code.as_str())).collect();
    assert_eq!(
        summary,
        [
            (2, "c", "", "int x;\n"),
            (8, "python", "", "print(1)\n"),
            (11, "", "", "out\n"),
            (14, "sh", "", "```\n"),
            (17, "ini", "a/b.service", "K=V\n")
        ]
    );
    assert!(blocks("```c\nint x;\n").unwrap_err().contains("README.md:1:"));
}

#[test]
fn the_sh_checker_reports_what_does_not_exist() {
    let repo = common::repo();
    let ok = "bash scripts/demo.sh          # a comment naming missing/thing.sh\n\
              make install PREFIX=$HOME/.local\n\
              PORT=1 bash scripts/test-all.sh && make -C . demo\n\
              pip install ./bindings/python\n\
              (cd bindings/node && npm install ./ && node test/readme_quickstart.js)\n\
              target/release/start_server --port=8080 -- ./my-server\n\
              cd /somewhere/else && bash missing.sh\n";
    assert_eq!(sh_names(ok, &repo), []);
    let bad = "bash scripts/no-such.sh\n\
               make install \\\n  no-such-target PREFIX=/x\n\
               npm install ./bindings/nodejs\n\
               target/release/no_such_bin --help\n\
               cd bindings && python3 node/test.py\n\
               VAR=1 scripts/missing.sh | cat\n";
    let problems = sh_names(bad, &repo);
    let lines: Vec<_> = problems.iter().map(|(l, p)| format!("{l}: {p}")).collect();
    assert_eq!(
        lines,
        [
            "0: `bash scripts/no-such.sh`: scripts/no-such.sh does not exist",
            "1: `make install no-such-target PREFIX=/x`: the Makefile has no target \"no-such-target\"",
            "3: `npm install ./bindings/nodejs`: ./bindings/nodejs does not exist",
            "4: `target/release/no_such_bin --help`: target/release/no_such_bin is not built by this crate",
            "5: `python3 node/test.py`: node/test.py does not exist",
            "6: `VAR=1 scripts/missing.sh`: scripts/missing.sh does not exist",
        ],
        "{problems:?}"
    );
}
