//! The repository's code and docs stand alone: they cite documents of the
//! repository only, and a cited section (`docs/facts.md "Hairpin"`) exists.

use std::fs;
use std::path::{Path, PathBuf};

/// Every text file of the checkout that code or docs live in.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || name == "target" {
            continue;
        }
        if path.is_dir() {
            sources(&path, out);
        } else if [".rs", ".md", ".toml", ".sh"]
            .iter()
            .any(|ext| name.ends_with(ext))
            || path.parent().is_some_and(|p| p.ends_with("scripts"))
        {
            out.push(path);
        }
    }
}

/// `docs/<name>.md "Section"` citations in `text`, allowing a line break
/// with comment markers between the two parts.
fn citations(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("docs/") {
        rest = &rest[i + 5..];
        let Some(end) = rest.find(".md") else { break };
        let doc = &rest[..end];
        if doc.is_empty() || !doc.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            continue;
        }
        let after = rest[end + 3..].trim_start_matches([' ', '\n', '/', '!', '#']);
        if let Some(quoted) = after.strip_prefix('"') {
            if let Some(close) = quoted.find('"') {
                out.push((doc.to_owned(), quoted[..close].to_owned()));
            }
        }
    }
    out
}

fn sections(doc: &Path) -> Vec<String> {
    fs::read_to_string(doc)
        .unwrap_or_else(|e| panic!("{} is cited but unreadable: {e}", doc.display()))
        .lines()
        .filter_map(|l| l.strip_prefix("## ").or_else(|| l.strip_prefix("### ")))
        .map(str::to_owned)
        .collect()
}

#[test]
fn docs_cite_only_the_repository_and_sections_that_exist() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    sources(root, &mut files);
    assert!(
        files.iter().any(|f| f.ends_with("net/src/ruleset.rs")),
        "the walk found the sources"
    );
    // The design and facts notes the project started from live outside the
    // repository; what the code relies on was moved into docs/.
    let outside = [concat!("DESIGN", ".md"), concat!("FACTS", ".md")];
    let mut problems = Vec::new();
    let mut cited = 0;
    for f in &files {
        let Ok(text) = fs::read_to_string(f) else {
            continue;
        };
        let rel = f.strip_prefix(root).unwrap_or(f).display().to_string();
        for o in outside {
            if text.contains(o) {
                problems.push(format!("{rel} cites {o}, which is not in the repository"));
            }
        }
        for (doc, section) in citations(&text) {
            let path = root.join("docs").join(format!("{doc}.md"));
            if !path.is_file() {
                problems.push(format!("{rel} cites docs/{doc}.md, which does not exist"));
            } else if !sections(&path).iter().any(|h| {
                // A heading may explain itself after the name:
                // "Command line (the contract ...)".
                h == &section || h.starts_with(&format!("{section} ("))
            }) {
                problems.push(format!(
                    "{rel} cites docs/{doc}.md \"{section}\", which has no such section"
                ));
            } else {
                cited += 1;
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(cited >= 5, "only {cited} section citations found");
}

#[test]
fn a_citation_split_over_comment_lines_is_found() {
    let text =
        "x (docs/facts.md\n    // \"Hairpin\").\n//! see docs/architecture.md \"Command line\"";
    assert_eq!(
        citations(text),
        [
            ("facts".to_owned(), "Hairpin".to_owned()),
            ("architecture".to_owned(), "Command line".to_owned())
        ]
    );
    assert!(citations("docs/x.md without a section").is_empty());
}
