//! Any text as a `services.toml`: the real parser and validator
//! (`kilnd::config::parse_with`, which `kilnd --config` runs with the real
//! image check) either accepts it, with unique names and no two services
//! on overlapping addresses, or says why with a line inside the text;
//! never a panic. An accepted file then goes through the host check.
//! Images are "valid" when named `good.kiln` (the image validator has its
//! own target, image_parse).
#![no_main]

use kilnd::capacity::{check, Host};
use kilnd::config::{overlaps, parse_with};
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fn image(path: &Path) -> Result<(), String> {
    match path.file_name().and_then(|n| n.to_str()) {
        Some("good.kiln") => Ok(()),
        _ => Err("no such file (build it with `kiln build`)".into()),
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let lines = text.bytes().filter(|&b| b == b'\n').count() + 1;
    match parse_with(text, Path::new("services.toml"), Path::new("/kiln-fuzz"), &image) {
        Ok(cfg) => {
            for (i, a) in cfg.services.iter().enumerate() {
                assert!((1..=lines).contains(&a.lines.listen));
                assert!((1..=lines).contains(&a.lines.name));
                for b in &cfg.services[i + 1..] {
                    assert_ne!(a.name, b.name);
                    assert!(!overlaps(a.listen, b.listen));
                }
            }
            let host = Host {
                descriptors: 20_000,
                tasks: 32_768,
                memory: 24 << 30,
            };
            if let Err(e) = check(&cfg, &host) {
                assert!(e.line.is_none_or(|l| (1..=lines).contains(&l)), "{e}");
            }
        }
        Err(e) => {
            if let Some(l) = e.line {
                assert!((1..=lines).contains(&l), "line {l} of {lines}: {e}");
            }
        }
    }
});
