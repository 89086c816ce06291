//! The documentation against the repository: links resolve, anchors name a heading, file
//! paths exist, config keys exist, and the copies of shipped files are the files as they
//! are. A reader follows these; a broken one sends them nowhere, a stale copy misleads.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Top-level directories whose paths the docs name in backticks.
const REPOSITORY_DIRS: [&str; 7] = [
    "deploy/",
    "scripts/",
    "docs/",
    "tests/",
    "benches/",
    "src/",
    "examples/",
];

/// docs/soak.md reports a past run in the configuration keys of its day, so its key
/// names are history, not advice; its links and paths are still checked.
const KEYS_AS_OF_A_PAST_RUN: [&str; 1] = ["docs/soak.md"];

fn read(relative: &str) -> String {
    std::fs::read_to_string(Path::new(ROOT).join(relative))
        .unwrap_or_else(|error| panic!("{relative}: {error}"))
}

/// README.md, docs/*.md and every README.md under deploy/, as paths relative to the root.
fn documentation_files() -> Vec<String> {
    fn readmes_under(dir: &Path, found: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                readmes_under(&path, found);
            } else if path.file_name().is_some_and(|name| name == "README.md") {
                found.push(path);
            }
        }
    }
    let root = Path::new(ROOT);
    let mut found = vec![root.join("README.md")];
    for entry in std::fs::read_dir(root.join("docs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|ext| ext == "md") {
            found.push(path);
        }
    }
    readmes_under(&root.join("deploy"), &mut found);
    let mut files: Vec<String> = found
        .iter()
        .map(|path| {
            path.strip_prefix(root)
                .unwrap()
                .to_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    files.sort();
    files
}

/// The Markdown outside fenced code blocks, line by line.
fn prose(markdown: &str) -> Vec<&str> {
    let mut in_fence = false;
    let mut lines = Vec::new();
    for line in markdown.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("```") || trimmed.starts_with("~~~") {
            in_fence = !in_fence;
        } else if !in_fence {
            lines.push(line);
        }
    }
    lines
}

/// The contents of the inline code spans of one line (single backticks).
fn code_spans(line: &str) -> Vec<&str> {
    line.split('`').skip(1).step_by(2).collect()
}

/// A line with its code spans cut out, so that `[a](b)` quoted as code is no link.
fn without_code_spans(line: &str) -> String {
    line.split('`').step_by(2).collect()
}

/// Targets of inline links `[text](target)` in the prose.
fn link_targets(markdown: &str) -> Vec<String> {
    let mut targets = Vec::new();
    for line in prose(markdown) {
        let line = without_code_spans(line);
        let mut rest = line.as_str();
        while let Some(start) = rest.find("](") {
            rest = &rest[start + 2..];
            let end = rest.find(')').unwrap_or(rest.len());
            targets.push(rest[..end].to_owned());
            rest = &rest[end..];
        }
    }
    targets
}

/// GitHub's anchor for a heading: lower-case, punctuation dropped except `-` and `_`,
/// each space a `-`.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | ' '))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// Every anchor a Markdown file has: its headings' slugs, repeated ones numbered as
/// GitHub numbers them (`name`, `name-1`, …).
fn anchors(markdown: &str) -> HashSet<String> {
    let mut anchors = HashSet::new();
    for line in prose(markdown) {
        let hashes = line.chars().take_while(|&c| c == '#').count();
        if !(1..=6).contains(&hashes) || !line[hashes..].starts_with(' ') {
            continue;
        }
        let base = slug(&line[hashes..]);
        let mut anchor = base.clone();
        let mut n = 0;
        while anchors.contains(&anchor) {
            n += 1;
            anchor = format!("{base}-{n}");
        }
        anchors.insert(anchor);
    }
    anchors
}

/// Resolves `target` (relative to the directory of `from`) to a path under the root,
/// or None when it leaves the repository.
fn resolve(from: &str, target: &str) -> Option<String> {
    let mut parts: Vec<&str> = from.split('/').collect();
    parts.pop();
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            part => parts.push(part),
        }
    }
    Some(parts.join("/"))
}

fn is_external(target: &str) -> bool {
    target.starts_with("http://") || target.starts_with("https://") || target.starts_with("mailto:")
}

#[test]
fn every_relative_link_and_anchor_in_the_docs_resolves() {
    let mut broken = Vec::new();
    for file in documentation_files() {
        for target in link_targets(&read(&file)) {
            if is_external(&target) {
                continue;
            }
            let (path, anchor) = match target.split_once('#') {
                Some((path, anchor)) => (path, Some(anchor)),
                None => (target.as_str(), None),
            };
            let linked = if path.is_empty() {
                Some(file.clone())
            } else {
                resolve(&file, path)
            };
            let Some(linked) = linked.filter(|linked| Path::new(ROOT).join(linked).exists()) else {
                broken.push(format!("{file}: ({target}): no such file"));
                continue;
            };
            if let Some(anchor) = anchor {
                if !linked.ends_with(".md") {
                    broken.push(format!(
                        "{file}: ({target}): an anchor into a non-Markdown file"
                    ));
                } else if !anchors(&read(&linked)).contains(anchor) {
                    broken.push(format!(
                        "{file}: ({target}): no heading #{anchor} in {linked}"
                    ));
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

/// Paths that the test command creates (literal entries of .gitignore): named in the docs,
/// absent from a clean clone.
fn installed_paths() -> Vec<String> {
    read(".gitignore")
        .lines()
        .map(|line| line.trim().trim_matches('/').to_owned())
        .filter(|line| !line.is_empty() && !line.starts_with('#') && !line.contains('*'))
        .collect()
}

#[test]
fn every_repository_path_named_in_the_docs_exists() {
    let installed = installed_paths();
    let mut missing = Vec::new();
    for file in documentation_files() {
        let markdown = read(&file);
        for line in prose(&markdown) {
            for span in code_spans(line) {
                let looks_like_a_path = REPOSITORY_DIRS.iter().any(|dir| span.starts_with(dir))
                    && span
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '/' | '-'));
                if !looks_like_a_path {
                    continue;
                }
                let path = span.trim_end_matches('/');
                // From the root, or (in deploy/**/README.md) from the file's own directory.
                let exists = Path::new(ROOT).join(path).exists()
                    || resolve(&file, path).is_some_and(|p| Path::new(ROOT).join(p).exists());
                let is_installed = installed.iter().any(|dir| path.starts_with(dir.as_str()));
                if !exists && !is_installed {
                    missing.push(format!("{file}: `{span}`"));
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "paths that do not exist:\n{}",
        missing.join("\n")
    );
}

/// Every key path of the example config, commented-out (example) keys included, with list
/// items left out of the path: `issuers.introspection.max_in_flight`.
fn example_config_keys() -> HashSet<String> {
    struct Open {
        column: usize,
        path: String,
        commented: bool,
    }
    let mut keys = HashSet::new();
    let mut stack: Vec<Open> = Vec::new();
    for line in read("deploy/tokengate.example.yaml").lines() {
        let mut column = line.len() - line.trim_start().len();
        let mut text = line.trim_start();
        // A commented-out key counts at the column of its `#`: `  # ca_file:` is a key
        // of the section above, `    #   endpoint:` one of `    # introspection:`.
        let commented = text.starts_with("# ");
        if commented {
            let uncommented = &text[2..];
            column += uncommented.len() - uncommented.trim_start().len();
            text = uncommented.trim_start();
        }
        if let Some(item) = text.strip_prefix("- ") {
            column += 2;
            text = item.trim_start();
        }
        let Some((key, after)) = text.split_once(':') else {
            continue;
        };
        let is_key = !key.is_empty()
            && key
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            && (after.is_empty() || after.starts_with(' '));
        if !is_key {
            continue;
        }
        // A comment that reads like a key (`# example: a Keycloak realm`) may hold
        // commented keys below it, never live ones.
        while stack
            .last()
            .is_some_and(|open| open.column >= column || (open.commented && !commented))
        {
            stack.pop();
        }
        let path = match stack.last() {
            Some(open) => format!("{}.{key}", open.path),
            None => key.to_owned(),
        };
        keys.insert(path.clone());
        stack.push(Open {
            column,
            path,
            commented,
        });
    }
    keys
}

/// `issuers[0].keys.max_stale` → `issuers.keys.max_stale`.
fn without_indexes(span: &str) -> String {
    let mut path = String::new();
    let mut in_index = false;
    for c in span.chars() {
        match c {
            '[' => in_index = true,
            ']' => in_index = false,
            c if !in_index => path.push(c),
            _ => {}
        }
    }
    path
}

/// `identity.rs`, `tokengate.yaml`: a file, even when it starts like a config section.
fn names_a_file(span: &str) -> bool {
    let extensions = [
        ".rs", ".md", ".yaml", ".yml", ".toml", ".json", ".conf", ".sh", ".py",
    ];
    extensions.iter().any(|extension| span.ends_with(extension))
}

#[test]
fn every_config_key_named_in_the_docs_is_in_the_example_config() {
    let keys = example_config_keys();
    let sections: HashSet<&str> = keys
        .iter()
        .filter(|key| !key.contains('.'))
        .map(String::as_str)
        .collect();
    assert!(
        sections.contains("issuers") && keys.contains("cache.max_bytes"),
        "{keys:?}"
    );
    let mut unknown = Vec::new();
    for file in documentation_files() {
        if KEYS_AS_OF_A_PAST_RUN.contains(&file.as_str()) {
            continue;
        }
        let markdown = read(&file);
        for line in prose(&markdown) {
            for span in code_spans(line) {
                let looks_like_a_key = span.contains('.')
                    && span.chars().all(|c| {
                        c.is_ascii_lowercase()
                            || c.is_ascii_digit()
                            || matches!(c, '_' | '.' | '[' | ']')
                    });
                if !looks_like_a_key || names_a_file(span) {
                    continue;
                }
                let key = without_indexes(span);
                let section = key.split('.').next().unwrap();
                let parent = key.rsplit_once('.').map_or("", |(parent, _)| parent);
                // A key is named below a section or key the config has: `realm_access.roles`
                // names no section, `grpc.health.v1` (a gRPC service) no key `grpc.health`.
                if sections.contains(section) && keys.contains(parent) && !keys.contains(&key) {
                    unknown.push(format!("{file}: `{span}`"));
                }
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "keys that deploy/tokengate.example.yaml does not have:\n{}",
        unknown.join("\n")
    );
}

/// `file`, fenced as `language`, appears in `doc` whole.
fn assert_shows_as_it_is(doc: &str, language: &str, file: &str) {
    let shipped = read(file);
    assert!(
        read(doc).contains(&format!("```{language}\n{shipped}```")),
        "{doc}'s copy of {file} differs from the file: copy the file into it"
    );
}

#[test]
fn configuration_docs_show_the_example_config_as_it_is() {
    assert_shows_as_it_is(
        "docs/configuration.md",
        "yaml",
        "deploy/tokengate.example.yaml",
    );
}

#[test]
fn proxy_docs_show_the_nginx_snippet_as_it_is() {
    assert_shows_as_it_is("docs/proxies.md", "nginx", "deploy/nginx/tokengate.conf");
}

/// The fenced blocks of `language` in a Markdown file.
fn fenced_blocks(markdown: &str, language: &str) -> Vec<String> {
    let opening = format!("```{language}");
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        match current.as_mut() {
            None if line.trim_end() == opening => current = Some(String::new()),
            None => {}
            Some(_) if line.starts_with("```") => blocks.extend(current.take()),
            Some(block) => {
                block.push_str(line);
                block.push('\n');
            }
        }
    }
    blocks
}

/// The README's nginx excerpt is lines of the shipped snippet, in its order (`# …` marks
/// what is left out), so it cannot say something the tested file does not.
#[test]
fn readme_nginx_excerpt_is_lines_of_the_shipped_snippet_in_order() {
    let shipped = read("deploy/nginx/tokengate.conf");
    let blocks = fenced_blocks(&read("README.md"), "nginx");
    assert_eq!(blocks.len(), 1, "README.md has one nginx block");
    let mut remaining = shipped.lines();
    for line in blocks[0].lines() {
        if line.trim().is_empty() || line.trim() == "# …" {
            continue;
        }
        assert!(
            remaining.any(|shipped_line| shipped_line == line),
            "README.md's nginx line {line:?} is not in deploy/nginx/tokengate.conf (after the \
             lines before it)"
        );
    }
}

/// Top-level sections of a YAML document: each key at column 0 with the lines under it.
fn top_level_sections(yaml: &str) -> Vec<(String, String)> {
    let mut sections: Vec<(String, String)> = Vec::new();
    for line in yaml.lines() {
        let starts_section = !line.starts_with([' ', '#', '-']) && line.contains(':');
        if starts_section {
            let key = line.split(':').next().unwrap_or_default().trim().to_owned();
            sections.push((key, String::new()));
        }
        if let Some((_, text)) = sections.last_mut() {
            text.push_str(line);
            text.push('\n');
        }
    }
    sections
}

/// Every tokengate configuration shown in the docs, as `(where, complete config)`: a
/// fenced `yaml` block whose top-level keys are all tokengate's. A block that shows only
/// some sections (`identity:`, `revocation:`) is completed with the README's minimal
/// configuration's other sections, as a reader would add it to theirs.
fn documented_configs() -> Vec<(String, String)> {
    let tokengate_keys: HashSet<String> = example_config_keys()
        .into_iter()
        .filter(|key| !key.contains('.'))
        .collect();
    let minimal = fenced_blocks(&read("README.md"), "yaml")
        .into_iter()
        .next()
        .expect("README.md has a yaml block");
    let mut configs = Vec::new();
    for file in documentation_files() {
        for (index, block) in fenced_blocks(&read(&file), "yaml").into_iter().enumerate() {
            let sections = top_level_sections(&block);
            if sections.is_empty()
                || !sections
                    .iter()
                    .all(|(key, _)| tokengate_keys.contains(key.as_str()))
            {
                continue;
            }
            let mut config = block.clone();
            for (key, text) in top_level_sections(&minimal) {
                if !sections.iter().any(|(shown, _)| *shown == key) {
                    config.push_str(&text);
                }
            }
            configs.push((format!("{file}, yaml block {}", index + 1), config));
        }
    }
    configs
}

/// `config` with every secret file it names (`client_secret_file: /var/run/…`, a
/// Kubernetes Secret's mount in the docs) moved into `dir`, holding a secret of the size
/// the product requires: the docs name where a cluster mounts it, a test cannot write there.
fn with_secret_files_in(config: &str, dir: &Path) -> String {
    let mut out = String::new();
    for line in config.lines() {
        // A commented-out key (`# ca_file: …`) is no setting: left as it is.
        let secret_path = line.split_once(':').and_then(|(key, value)| {
            let key = key.trim().trim_start_matches("- ");
            let value = value.split(" #").next().unwrap_or_default().trim();
            let is_setting = !key.starts_with('#') && key.ends_with("_file");
            (is_setting && value.starts_with('/')).then_some(value)
        });
        match secret_path {
            Some(path) => {
                let file = dir.join(path.trim_start_matches('/').replace('/', "_"));
                std::fs::write(&file, "an example secret of 32 bytes...").unwrap();
                out.push_str(&line.replace(path, file.to_str().unwrap()));
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// Every configuration the docs show is one that tokengate accepts: `--check-config`, the
/// same compilation as a start or a reload, with the secret files it names provided.
#[test]
fn every_config_in_the_docs_passes_check_config() {
    let configs = documented_configs();
    assert!(
        configs.len() >= 11,
        "the docs show configs; found only {}",
        configs.len()
    );
    let dir = std::env::temp_dir().join(format!("tokengate-docs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut failures = Vec::new();
    for (index, (place, config)) in configs.iter().enumerate() {
        let path = dir.join(format!("config-{index}.yaml"));
        std::fs::write(&path, with_secret_files_in(config, &dir)).unwrap();
        let output = Command::new(env!("CARGO_BIN_EXE_tokengate"))
            .args(["--config", path.to_str().unwrap(), "--check-config"])
            .output()
            .expect("run tokengate");
        if !output.status.success() {
            failures.push(format!(
                "{place}:\n{}",
                String::from_utf8_lossy(&output.stderr)
            ));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
