//! A private directory for targets that must hand pgtenant a file (the configuration
//! loaders read paths, and resolve relative paths against the file's directory).
#![allow(dead_code)]
use std::path::PathBuf;

pub fn dir() -> &'static PathBuf {
    static D: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    D.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("pgtenant-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    })
}

pub fn write(name: &str, text: &str) -> PathBuf {
    let p = dir().join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// `%include` lines that leave the private directory (or name a device that never ends,
/// like /dev/zero) test the operating system, not pgtenant.
pub fn includes_stay_here(text: &str) -> bool {
    text.lines()
        .all(|l| match l.trim().strip_prefix("%include") {
            Some(name) => {
                let n = name.trim();
                !n.contains('/') && !n.starts_with('.')
            }
            None => true,
        })
}
