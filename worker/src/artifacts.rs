//! Files an agent wrote: fenced code blocks whose info string names a file. The output is
//! model text, so names are treated as hostile: no absolute paths, no `..`, bounded sizes.

use troupe_events::Artifact;

/// More than this and the rest of an output's blocks are ignored.
pub const MAX_ARTIFACTS: usize = 50;
/// A block larger than this is dropped, not cut: half a file would mislead.
pub const MAX_ARTIFACT_BYTES: usize = 1024 * 1024;

/// The named code blocks of `output`, in order. A block naming a file already seen replaces
/// the earlier content in place: agents revise a file by writing it again. Recognised info
/// strings: `rust src/main.rs`, `src/main.rs`, `tsx title=src/App.tsx`,
/// `python filename=app.py`, `js:src/index.js`.
pub fn extract_artifacts(output: &str) -> Vec<Artifact> {
    let mut artifacts: Vec<Artifact> = Vec::new();
    let mut lines = output
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l));
    while let Some(line) = lines.next() {
        let Some(fence) = Fence::open(line) else {
            continue;
        };
        let mut content = String::new();
        let mut closed = false;
        for line in lines.by_ref() {
            if fence.closes(line) {
                closed = true;
                break;
            }
            content.push_str(fence.unindent(line));
            content.push('\n');
        }
        // An unclosed block is cut off text (the agent stopped or failed): not a file.
        if !closed {
            break;
        }
        let Some((filename, language)) = name_from_info(fence.info) else {
            continue;
        };
        if content.len() > MAX_ARTIFACT_BYTES {
            continue;
        }
        if let Some(earlier) = artifacts.iter_mut().find(|a| a.filename == filename) {
            earlier.language = language;
            earlier.content = content;
        } else if artifacts.len() < MAX_ARTIFACTS {
            artifacts.push(Artifact {
                filename,
                language,
                content,
            });
        }
    }
    artifacts
}

/// An opening code fence, as CommonMark defines it.
struct Fence<'a> {
    ch: char,
    len: usize,
    indent: usize,
    info: &'a str,
}

impl<'a> Fence<'a> {
    fn open(line: &'a str) -> Option<Fence<'a>> {
        let indent = line.len() - line.trim_start_matches(' ').len();
        if indent > 3 {
            return None;
        }
        let rest = &line[indent..];
        let ch = rest.chars().next().filter(|c| *c == '`' || *c == '~')?;
        let len = rest.len() - rest.trim_start_matches(ch).len();
        if len < 3 {
            return None;
        }
        let info = rest[len..].trim();
        // A backtick in a backtick fence's info string makes the line inline code instead.
        if ch == '`' && info.contains('`') {
            return None;
        }
        Some(Fence {
            ch,
            len,
            indent,
            info,
        })
    }

    fn closes(&self, line: &str) -> bool {
        let trimmed = line.trim_start_matches(' ');
        if line.len() - trimmed.len() > 3 {
            return false;
        }
        let after = trimmed.trim_start_matches(self.ch);
        trimmed.len() - after.len() >= self.len && after.trim().is_empty()
    }

    /// Content lines lose as much indentation as the opening fence had.
    fn unindent<'l>(&self, line: &'l str) -> &'l str {
        let spaces = line.len() - line.trim_start_matches(' ').len();
        &line[spaces.min(self.indent)..]
    }
}

/// `(file name, language)` when the info string names a safe file.
fn name_from_info(info: &str) -> Option<(String, Option<String>)> {
    let tokens: Vec<&str> = info.split_whitespace().collect();
    let first = *tokens.first()?;
    let explicit_language =
        |token: &str| (is_language(token) && !looks_like_file(token)).then(|| token.to_string());

    let keyed = tokens.iter().find_map(|token| {
        let (key, value) = token.split_once('=')?;
        matches!(key, "title" | "filename" | "file" | "name" | "path").then_some(value)
    });
    let (name, language) = if let Some(value) = keyed {
        let language = if first.contains('=') {
            None
        } else {
            explicit_language(first)
        };
        (unquote(value)?, language)
    } else if let Some((language, path)) = first
        .split_once(':')
        .filter(|(l, p)| is_language(l) && !p.is_empty())
    {
        (path, Some(language.to_string()))
    } else if looks_like_file(first) {
        (first, None)
    } else if let Some(second) = tokens.get(1).filter(|t| looks_like_file(t)) {
        (*second, explicit_language(first))
    } else {
        return None;
    };

    let filename = safe_path(name)?;
    if !looks_like_file(&filename) {
        return None;
    }
    let language = language.or_else(|| language_of(&filename).map(str::to_string));
    Some((filename, language))
}

/// Has an extension or a directory; "3.11" and "e.g." are not file names.
fn looks_like_file(name: &str) -> bool {
    if name.is_empty() || name.chars().any(char::is_whitespace) {
        return false;
    }
    if name.contains('/') {
        return true;
    }
    match name.rsplit_once('.') {
        Some((_, ext)) => {
            !ext.is_empty()
                && ext
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                && ext.chars().any(|c| c.is_ascii_alphabetic())
        }
        None => false,
    }
}

fn is_language(token: &str) -> bool {
    !token.is_empty()
        && token.len() <= 32
        && token
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '#' | '_'))
}

fn unquote(value: &str) -> Option<&str> {
    for quote in ['"', '\''] {
        if let Some(inner) = value.strip_prefix(quote) {
            return inner.strip_suffix(quote);
        }
    }
    Some(value)
}

/// A relative path that stays below the directory it is written into, normalised
/// (`./a//b` is refused, `./a/b` becomes `a/b`). `None` for anything else.
fn safe_path(name: &str) -> Option<String> {
    if name.is_empty()
        || name.len() > 255
        || name.starts_with('/')
        || name.starts_with('~')
        || name.contains('\\')
        || name.contains(':')
        || name.chars().any(char::is_control)
    {
        return None;
    }
    let mut parts = Vec::new();
    for part in name.split('/') {
        match part {
            "." => continue,
            "" | ".." => return None,
            _ => parts.push(part),
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

fn language_of(filename: &str) -> Option<&'static str> {
    let ext = filename.rsplit_once('.')?.1.to_ascii_lowercase();
    Some(match ext.as_str() {
        "rs" => "rust",
        "ts" | "mts" | "cts" => "typescript",
        "tsx" => "tsx",
        "js" | "mjs" | "cjs" => "javascript",
        "jsx" => "jsx",
        "py" => "python",
        "go" => "go",
        "java" => "java",
        "kt" | "kts" => "kotlin",
        "rb" => "ruby",
        "php" => "php",
        "c" | "h" => "c",
        "cc" | "cpp" | "cxx" | "hpp" => "cpp",
        "cs" => "csharp",
        "swift" => "swift",
        "sh" | "bash" => "bash",
        "sql" => "sql",
        "html" | "htm" => "html",
        "css" => "css",
        "scss" => "scss",
        "json" => "json",
        "yaml" | "yml" => "yaml",
        "toml" => "toml",
        "md" => "markdown",
        "xml" => "xml",
        "vue" => "vue",
        "svelte" => "svelte",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(output: &str) -> Artifact {
        let mut artifacts = extract_artifacts(output);
        assert_eq!(artifacts.len(), 1, "{artifacts:?}");
        artifacts.remove(0)
    }

    fn names(output: &str) -> Vec<String> {
        extract_artifacts(output)
            .into_iter()
            .map(|a| a.filename)
            .collect()
    }

    fn artifact(filename: &str, language: Option<&str>, content: &str) -> Artifact {
        Artifact {
            filename: filename.into(),
            language: language.map(str::to_string),
            content: content.into(),
        }
    }

    #[test]
    fn language_then_path() {
        assert_eq!(
            one("Here:\n```rust src/main.rs\nfn main() {}\n```\nDone."),
            artifact("src/main.rs", Some("rust"), "fn main() {}\n")
        );
    }

    #[test]
    fn path_alone_infers_the_language() {
        assert_eq!(
            one("```src/main.rs\nfn main() {}\n```"),
            artifact("src/main.rs", Some("rust"), "fn main() {}\n")
        );
        assert_eq!(one("```notes/todo.unknownext\nx\n```").language, None);
    }

    #[test]
    fn title_attribute() {
        assert_eq!(
            one("```tsx title=src/App.tsx\nexport {};\n```"),
            artifact("src/App.tsx", Some("tsx"), "export {};\n")
        );
        assert_eq!(
            one("```tsx title=\"src/App.tsx\"\nx\n```").filename,
            "src/App.tsx"
        );
    }

    #[test]
    fn filename_attribute() {
        assert_eq!(
            one("```python filename=app.py\nprint(1)\n```"),
            artifact("app.py", Some("python"), "print(1)\n")
        );
        assert_eq!(
            one("```filename=app.py\nx\n```").language.as_deref(),
            Some("python")
        );
    }

    #[test]
    fn language_colon_path() {
        assert_eq!(
            one("```js:src/index.js\nconsole.log(1);\n```"),
            artifact("src/index.js", Some("js"), "console.log(1);\n")
        );
    }

    #[test]
    fn tilde_fences_and_longer_fences_holding_inner_fences() {
        assert_eq!(one("~~~ruby app.rb\nputs 1\n~~~").filename, "app.rb");
        let readme = one("````md README.md\n# Usage\n```sh\nrun\n```\n````");
        assert_eq!(readme.content, "# Usage\n```sh\nrun\n```\n");
        // A shorter fence, or one of the other character, does not close the block.
        assert_eq!(one("~~~~ a.txt\n~~~\n```\n~~~~~\n").content, "~~~\n```\n");
    }

    #[test]
    fn blocks_without_a_file_name_are_not_artifacts() {
        for info in [
            "",
            "rust",
            "rust,ignore",
            "python 3.11",
            "text e.g.",
            "mermaid graph",
            "title=Example",
        ] {
            let output = format!("```{info}\ncode\n```\n");
            assert!(extract_artifacts(&output).is_empty(), "{info:?}");
        }
    }

    #[test]
    fn an_unclosed_fence_is_not_an_artifact() {
        assert_eq!(
            names("```a.rs\nfn a() {}\n```\n```b.rs\nfn b() {"),
            vec!["a.rs"]
        );
    }

    #[test]
    fn unnamed_blocks_hide_their_inner_fences() {
        let output = "````\n```evil.rs\nx\n```\n````\n```ok.rs\ny\n```";
        assert_eq!(names(output), vec!["ok.rs"]);
    }

    #[test]
    fn hostile_paths_are_refused() {
        for name in [
            "/etc/passwd.txt",
            "../secrets.env",
            "src/../../x.rs",
            "src/..",
            "~/.ssh/config.txt",
            "C:\\Windows\\x.dll",
            "src\\main.rs",
            "https://evil.example/x.js",
            "src//main.rs",
            "src/",
        ] {
            for info in [
                format!("rust {name}"),
                format!("title={name}"),
                name.to_string(),
            ] {
                let output = format!("```{info}\nx\n```");
                assert!(extract_artifacts(&output).is_empty(), "{info:?}");
            }
        }
        assert!(extract_artifacts("```c:/x.c\nx\n```").is_empty());
    }

    #[test]
    fn dot_slash_is_normalised() {
        assert_eq!(one("```rust ./src/lib.rs\nx\n```").filename, "src/lib.rs");
    }

    #[test]
    fn at_most_fifty_artifacts() {
        let output: String = (0..60)
            .map(|i| format!("```f{i}.txt\n{i}\n```\n"))
            .collect();
        let found = names(&output);
        assert_eq!(found.len(), MAX_ARTIFACTS);
        assert_eq!(found.last().unwrap(), "f49.txt");
    }

    #[test]
    fn oversized_blocks_are_dropped() {
        let big = "a".repeat(MAX_ARTIFACT_BYTES);
        let output = format!("```big.txt\n{big}\n```\n```small.txt\nok\n```");
        assert_eq!(names(&output), vec!["small.txt"]);
        let fits = format!("```fits.txt\n{}\n```", "a".repeat(MAX_ARTIFACT_BYTES - 1));
        assert_eq!(names(&fits), vec!["fits.txt"]);
    }

    #[test]
    fn a_file_written_twice_keeps_the_last_version_in_the_first_place() {
        let output = "```a.rs\nv1\n```\n```b.rs\nb\n```\n```a.rs\nv2\n```";
        let artifacts = extract_artifacts(output);
        assert_eq!(artifacts.len(), 2);
        assert_eq!(artifacts[0], artifact("a.rs", Some("rust"), "v2\n"));
    }

    #[test]
    fn crlf_and_indented_fences() {
        assert_eq!(one("```a.py\r\nx = 1\r\n```\r\n").content, "x = 1\n");
        assert_eq!(
            one("  ```a.py\n  x = 1\n    y\n  ```").content,
            "x = 1\n  y\n"
        );
        assert!(extract_artifacts("    ```a.py\nx\n    ```").is_empty());
    }

    #[test]
    fn empty_named_blocks_are_empty_files() {
        assert_eq!(one("```pkg/__init__.py\n```").content, "");
    }
}
