//! The documentation holds together: every file of `tests/` is named in the
//! table of `docs/testing.md`, every `docs/*.md` is linked from `README.md`,
//! and every relative link in the Markdown files points at a file that
//! exists and, when it names a heading of a Markdown file, at a heading that
//! exists (GitHub's anchors).
//!
//! Links are read the way a Markdown renderer reads them: not inside fenced
//! or indented code blocks, nor inside code spans.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Component, Path, PathBuf};

/// The repository root (this package's manifest directory).
fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `docs/*.md`, as paths relative to the root, sorted.
fn doc_pages() -> Vec<String> {
    let mut pages: Vec<String> = fs::read_dir(root().join("docs"))
        .expect("docs/")
        .map(|entry| entry.expect("docs/ entry").file_name())
        .filter_map(|name| name.to_str().map(str::to_owned))
        .filter(|name| name.ends_with(".md"))
        .map(|name| format!("docs/{name}"))
        .collect();
    pages.sort();
    pages
}

/// Every Markdown file whose links are checked, relative to the root.
fn markdown_files() -> Vec<String> {
    let mut files = vec![
        "README.md".to_owned(),
        "CHANGELOG.md".to_owned(),
        "loadgen/README.md".to_owned(),
        "fuzz/README.md".to_owned(),
    ];
    files.extend(doc_pages());
    files
}

/// The lines of `text` a renderer reads as prose or headings: fenced code
/// blocks (also indented, inside list items) and indented code blocks are
/// left out.
fn prose_lines(text: &str) -> Vec<&str> {
    let mut lines = Vec::new();
    let mut fence: Option<&str> = None;
    let mut indented_code = false;
    let mut previous_blank = true;
    for line in text.lines() {
        let trimmed = line.trim_start();
        if let Some(marker) = fence {
            if trimmed.starts_with(marker) {
                fence = None;
            }
            previous_blank = false;
            continue;
        }
        if trimmed.starts_with("```") || trimmed.starts_with("~~~") {
            fence = Some(&trimmed[..3]);
            previous_blank = false;
            continue;
        }
        let blank = trimmed.is_empty();
        // An indented code block starts after a blank line (list items
        // here indent their continuation lines by two spaces, not four).
        if line.starts_with("    ") && (previous_blank || indented_code) {
            indented_code = true;
            continue;
        }
        if !blank {
            indented_code = false;
        }
        previous_blank = blank;
        lines.push(line);
    }
    lines
}

/// `text` without its code spans (a run of N backticks up to the next run of
/// exactly N), which may cross line ends.
fn without_code_spans(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let run_at = |i: usize| chars[i..].iter().take_while(|&&c| c == '`').count();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        if chars[i] != '`' {
            out.push(chars[i]);
            i += 1;
            continue;
        }
        let n = run_at(i);
        let mut j = i + n;
        let mut close = None;
        while j < chars.len() {
            if chars[j] == '`' {
                let m = run_at(j);
                if m == n {
                    close = Some(j + m);
                    break;
                }
                j += m;
            } else {
                j += 1;
            }
        }
        match close {
            Some(end) => {
                out.push(' ');
                i = end;
            }
            None => {
                // No closing run: the backticks are literal.
                out.extend(&chars[i..i + n]);
                i += n;
            }
        }
    }
    out
}

/// The targets of the inline links and images in `text` (`[text](target)`,
/// `![alt](target)`), outside code.
fn link_targets(text: &str) -> Vec<String> {
    let prose = without_code_spans(&prose_lines(text).join("\n"));
    let mut targets = Vec::new();
    let mut rest = prose.as_str();
    while let Some(at) = rest.find("](") {
        let after = &rest[at + 2..];
        let Some(end) = after.find(')') else {
            break;
        };
        // A title after the target (`(target "title")`) is not part of it.
        let target = after[..end].split_whitespace().next().unwrap_or_default();
        targets.push(target.trim_matches(['<', '>']).to_owned());
        rest = &after[end..];
    }
    targets
}

/// GitHub's anchor for a heading: lower case, punctuation other than `-` and
/// `_` dropped (backticks too), spaces turned into `-`.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|&c| c.is_alphanumeric() || c == '-' || c == '_' || c == ' ')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The anchors of `text`'s headings; a repeated one gets `-1`, `-2`, ...
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for line in prose_lines(text) {
        let hashes = line.chars().take_while(|&c| c == '#').count();
        if hashes == 0 || hashes > 6 || !line[hashes..].starts_with(' ') {
            continue;
        }
        // A code span's text is part of the anchor; its backticks are not.
        let base = slug(line[hashes..].trim().trim_end_matches('#'));
        let mut anchor = base.clone();
        let mut n = 0;
        while seen.contains(&anchor) {
            n += 1;
            anchor = format!("{base}-{n}");
        }
        seen.insert(anchor);
    }
    seen
}

/// `path` with its `.` and `..` components resolved, without touching the
/// file system.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

fn is_external(target: &str) -> bool {
    target.contains("://") || target.starts_with("mailto:")
}

#[test]
fn every_test_file_is_in_the_testing_table() {
    let testing = read(&root().join("docs/testing.md"));
    let start = testing
        .find("## What the tests prove")
        .expect("docs/testing.md has a section \"What the tests prove\"");
    let section = &testing[start..];
    let end = section[3..].find("\n## ").map_or(section.len(), |i| i + 3);
    let rows: Vec<&str> = section[..end]
        .lines()
        .filter(|line| line.starts_with('|'))
        .collect();
    assert!(rows.len() > 2, "no table in \"What the tests prove\"");

    let mut missing = Vec::new();
    for entry in fs::read_dir(root().join("tests")).expect("tests/") {
        let path = entry.expect("tests/ entry").path();
        if path.extension().is_some_and(|e| e == "rs") {
            let name = format!("`tests/{}`", path.file_name().unwrap().to_string_lossy());
            if !rows.iter().any(|row| row.contains(&name)) {
                missing.push(name);
            }
        }
    }
    missing.sort();
    assert!(
        missing.is_empty(),
        "test files not in the table of docs/testing.md: {}",
        missing.join(", ")
    );
}

#[test]
fn every_doc_is_linked_from_the_readme() {
    let readme = read(&root().join("README.md"));
    let linked: BTreeSet<String> = link_targets(&readme)
        .into_iter()
        .map(|t| t.split('#').next().unwrap_or_default().to_owned())
        .collect();
    let pages = doc_pages();
    assert!(!pages.is_empty(), "docs/ has no Markdown page");
    let unlinked: Vec<&String> = pages.iter().filter(|p| !linked.contains(*p)).collect();
    assert!(
        unlinked.is_empty(),
        "docs not linked from README.md: {unlinked:?}"
    );
}

#[test]
fn relative_links_point_at_files_and_headings_that_exist() {
    let root = root();
    let mut broken = Vec::new();
    let mut checked = 0;
    for file in markdown_files() {
        let text = read(&root.join(&file));
        let dir = Path::new(&file).parent().unwrap_or(Path::new(""));
        for target in link_targets(&text) {
            if target.is_empty() || is_external(&target) {
                continue;
            }
            checked += 1;
            let (path, anchor) = match target.split_once('#') {
                Some((path, anchor)) => (path, Some(anchor)),
                None => (target.as_str(), None),
            };
            let linked = if path.is_empty() {
                PathBuf::from(&file)
            } else {
                normalize(&dir.join(path))
            };
            let full = root.join(&linked);
            if !full.exists() {
                broken.push(format!("{file}: {target} (no file {})", linked.display()));
                continue;
            }
            let Some(anchor) = anchor else { continue };
            if full.extension().is_some_and(|e| e == "md")
                && !anchors(&read(&full)).contains(anchor)
            {
                broken.push(format!(
                    "{file}: {target} (no heading #{anchor} in {})",
                    linked.display()
                ));
            }
        }
    }
    assert!(
        checked > 0,
        "no relative link found: the link reader is broken"
    );
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn the_link_reader_reads_links_as_github_does() {
    let text = "# A `code` heading: here\n\
                See [one](a.md#x) and `[not](b.md)`, ``a ` [no](c.md)``.\n\
                \n    [indented](d.md)\n\
                ```\n[fenced](e.md)\n```\n\
                ![img](f.svg) <https://example.com> [ext](https://example.com)\n\
                ## Again\n## Again\n";
    assert_eq!(
        link_targets(text),
        ["a.md#x", "f.svg", "https://example.com"]
    );
    let expected: BTreeSet<String> = ["a-code-heading-here", "again", "again-1"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(anchors(text), expected);
    assert_eq!(
        slug("Beyond one loadgen process: --threads, several processes, --local-addrs"),
        "beyond-one-loadgen-process---threads-several-processes---local-addrs"
    );
}
