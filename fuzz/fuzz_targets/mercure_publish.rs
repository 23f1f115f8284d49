//! `mercure_publish`: see `check_mercure_publish` in fuzz/checks/mercure.rs for the input layout and
//! what is checked. `cargo test --test fuzz_corpus` replays the corpus through
//! the same check on stable.
#![no_main]

#[allow(dead_code)]
#[path = "../checks/mod.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::mercure::check_mercure_publish(data));
