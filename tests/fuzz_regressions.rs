//! Every input a fuzz target crashed on (`fuzz/regressions/<target>/*`), and the seed corpora
//! (`fuzz/seeds/<target>/*`), fed to the same harness functions the cargo-fuzz targets call
//! (`fuzz/src/lib.rs`, included below as a module), so a crash found once stays an ordinary
//! `cargo test` failure without a fuzzer or a nightly toolchain. See the README's "Fuzzing".

#[path = "../fuzz/src/lib.rs"]
mod harness;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, Once};

/// Panics on any thread. The fuzzer aborts on a panic anywhere, including in a task tokio
/// would otherwise catch (a connection's, the accept loop's); counting them does the same here.
static PANICS: AtomicUsize = AtomicUsize::new(0);
/// One target at a time, so that a panic is charged to the input that caused it.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The address space this test binary may use. libFuzzer stops an input at 2 GiB of memory;
/// without a limit, a bug such as reading `/dev/zero` whole (a kept regression) would take the
/// machine's memory before failing.
const ADDRESS_SPACE: u64 = 4 << 30;

fn limit_memory_and_count_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        use nix::sys::resource::{Resource, setrlimit};
        setrlimit(Resource::RLIMIT_AS, ADDRESS_SPACE, ADDRESS_SPACE).expect("RLIMIT_AS set");
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            default(info);
        }));
    });
}

/// The saved inputs of a target: regressions first, then seeds.
fn inputs(target: &str) -> Vec<PathBuf> {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut files = Vec::new();
    for dir in ["regressions", "seeds"] {
        let Ok(entries) = std::fs::read_dir(fuzz.join(dir).join(target)) else {
            continue;
        };
        let mut found: Vec<PathBuf> = entries
            .map(|e| e.expect("a directory entry").path())
            .filter(|p| p.is_file())
            .filter(|p| {
                let name = p.file_name().unwrap_or_default().to_string_lossy();
                !name.starts_with('.') && name != "README.md"
            })
            .collect();
        found.sort();
        files.extend(found);
    }
    files
}

/// Runs every saved input of `target`; fails naming each input that panicked.
fn replay(target: &str, run: fn(&[u8])) {
    limit_memory_and_count_panics();
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let files = inputs(target);
    assert!(
        !files.is_empty(),
        "no seeds nor regressions for {target} under fuzz/"
    );
    let failed: Vec<String> = files
        .iter()
        .filter(|path| {
            let data = std::fs::read(path).expect("a saved fuzz input");
            let before = PANICS.load(Ordering::SeqCst);
            let unwound = catch_unwind(AssertUnwindSafe(|| run(&data))).is_err();
            unwound || PANICS.load(Ordering::SeqCst) != before
        })
        .map(|path| path.display().to_string())
        .collect();
    assert!(failed.is_empty(), "{target} panicked on {failed:#?}");
}

#[test]
fn config_toml() {
    replay("config_toml", harness::config_toml);
}

#[test]
fn config_json() {
    replay("config_json", harness::config_json);
}

#[test]
fn api_json() {
    replay("api_json", harness::api_json);
}

#[test]
fn scenario_file() {
    replay("scenario_file", harness::scenario_file);
}

#[test]
fn http_request() {
    replay("http_request", harness::http_request);
}
