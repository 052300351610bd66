//! config/load.rs: the TOML configuration (read from a file, as `load` does; a text that
//! is a PgBouncer ini goes through `config::pgbouncer`, see the `pgbouncer_ini` target).
//! Properties: loading never panics, gives the same result twice, and every error names
//! its key (`key: message`), as the loader promises.
#![no_main]
#[path = "../common/tmpfile.rs"]
mod tmpfile;

use libfuzzer_sys::fuzz_target;
use pgtenant::config::{load, Overrides};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if !tmpfile::includes_stay_here(text) {
        return;
    }
    let path = tmpfile::write("pgtenant.toml", text);
    let once = |p| match load(Some(p), &Overrides::default()) {
        Ok(s) => Ok(format!("{s:?}")),
        Err(e) => Err(e.errors),
    };
    let r = once(&path);
    assert_eq!(once(&path), r, "load is not deterministic");
    if let Err(errors) = r {
        assert!(!errors.is_empty(), "an error without a message");
        for e in &errors {
            // TOML allows an empty key (`'' = 1`): then the prefix is empty too.
            let (_key, msg) = e
                .split_once(": ")
                .unwrap_or_else(|| panic!("error names no key: {e:?}"));
            assert!(!msg.is_empty(), "an error without a message: {e:?}");
        }
    }
});
