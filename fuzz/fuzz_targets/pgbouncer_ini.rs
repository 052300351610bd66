//! config/pgbouncer.rs: PgBouncer ini files, read as `pgtenant import` and `load` read
//! them.
//! Properties: reading and translating never panic; every line read names its file and
//! a line number inside the text; `import`'s TOML output is valid TOML; and when the
//! translation has no errors, loading that TOML gives the same settings as loading the
//! ini itself (what `import` writes means what the ini meant).
#![no_main]
#[path = "../common/tmpfile.rs"]
mod tmpfile;

use libfuzzer_sys::fuzz_target;
use pgtenant::config::{load, pgbouncer, Overrides};

fn settings(p: &std::path::PathBuf) -> Result<String, Vec<String>> {
    match load(Some(p), &Overrides::default()) {
        Ok(mut s) => {
            s.config_file = None;
            s.notes.clear();
            Ok(format!("{s:?}"))
        }
        Err(e) => Err(e.errors),
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if !pgbouncer::is_pgbouncer_ini(text) || !tmpfile::includes_stay_here(text) {
        return;
    }
    let ini = tmpfile::write("pgbouncer.ini", text);
    let Ok(lines) = pgbouncer::read(&ini) else {
        return;
    };
    let includes = text.contains("%include");
    for l in &lines {
        assert!(l.line >= 1);
        if !includes {
            assert!(
                l.line <= text.lines().count(),
                "line {} of {}",
                l.line,
                text.lines().count()
            );
        }
        assert!(!l.key.is_empty());
    }
    let t = pgbouncer::translate(&lines);
    let out = pgbouncer::to_toml(&ini, &t);
    let parsed = out.parse::<toml::Table>();
    assert!(
        parsed.is_ok(),
        "import wrote invalid TOML: {:?}\n{out}",
        parsed.err()
    );
    if !t.errors.is_empty() {
        return;
    }
    let toml_path = tmpfile::write("imported.toml", &out);
    let from_ini = settings(&ini);
    let from_toml = settings(&toml_path);
    match (&from_ini, &from_toml) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "import changes the settings"),
        (Err(_), Err(_)) => {}
        _ => panic!("ini: {from_ini:?}\nimported: {from_toml:?}\n{out}"),
    }
});
