//! Repository checks that run as ordinary tests, so `cargo test` enforces them.

#[cfg(test)]
mod tests {
    use std::fs;
    use std::path::{Path, PathBuf};

    fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            if name == "target" || name.to_string_lossy().starts_with('.') {
                continue;
            }
            if path.is_dir() {
                rust_files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    fn sources() -> Vec<(PathBuf, String)> {
        let root = super::super::workspace_root();
        let mut files = Vec::new();
        rust_files(&root, &mut files);
        assert!(
            files.len() > 10,
            "found only {} Rust files under {}",
            files.len(),
            root.display()
        );
        files
            .into_iter()
            .map(|p| (p.clone(), fs::read_to_string(&p).unwrap()))
            .collect()
    }

    #[test]
    fn no_stray_debugging() {
        let needle = ["dbg", "!("].concat();
        let offenders: Vec<_> = sources()
            .into_iter()
            .filter(|(_, text)| text.contains(&needle))
            .map(|(p, _)| p)
            .collect();
        assert!(offenders.is_empty(), "remove {needle}…) from {offenders:?}");
    }

    #[test]
    fn every_module_file_has_docs() {
        let undocumented: Vec<_> = sources()
            .into_iter()
            .filter(|(p, _)| p.components().any(|c| c.as_os_str() == "src"))
            .filter(|(_, text)| !text.trim_start().starts_with("//!"))
            .map(|(p, _)| p)
            .collect();
        assert!(
            undocumented.is_empty(),
            "add a //! module doc to {undocumented:?}"
        );
    }

    #[test]
    fn library_code_does_not_unwrap() {
        let needles = [[".unwrap", "()"].concat(), [".expect", "(\""].concat()];
        let offenders: Vec<_> = sources()
            .into_iter()
            .filter(|(p, _)| is_library(p))
            .filter(|(_, text)| {
                let library = text.split("#[cfg(test)]").next().unwrap_or_default();
                needles.iter().any(|n| {
                    library
                        .lines()
                        .any(|l| l.contains(n.as_str()) && !l.trim_start().starts_with("//"))
                })
            })
            .map(|(p, _)| p)
            .collect();
        assert!(
            offenders.is_empty(),
            "library code must return errors, not unwrap: {offenders:?}"
        );
    }

    /// Whether `path` is library code: a published crate's `src/`, not tests, benchmarks,
    /// examples or developer tasks.
    fn is_library(path: &std::path::Path) -> bool {
        let root = super::super::workspace_root();
        let relative = path.strip_prefix(&root).unwrap_or(path);
        let mut parts = relative
            .components()
            .map(|c| c.as_os_str().to_string_lossy());
        let top = parts.next().unwrap_or_default();
        let tooling = ["tests", "bench", "xtask", "examples"];
        !tooling.contains(&top.as_ref()) && parts.any(|p| p == "src")
    }
}
