use super::*;
use kiln_abi::{device, Manifest, ManifestDevice, DEVICE_NAME_LEN};

/// A directory holding a valid one-network-device image `net.kiln`, a
/// no-device image `bare.kiln` and a garbage file `junk.kiln`.
fn fixture() -> PathBuf {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "kilnd-config-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let mut m = Manifest::new();
    let mut name = [0u8; DEVICE_NAME_LEN];
    name[..4].copy_from_slice(b"net0");
    m.devices[0] = ManifestDevice {
        kind: device::NET,
        _reserved: 0,
        name,
    };
    m.device_count = 1;
    std::fs::write(dir.join("net.kiln"), kiln_image::synthetic::minimal(&m)).unwrap();
    std::fs::write(
        dir.join("bare.kiln"),
        kiln_image::synthetic::minimal(&Manifest::new()),
    )
    .unwrap();
    std::fs::write(dir.join("junk.kiln"), b"not an elf").unwrap();
    dir
}

fn check(text: &str) -> Result<Config, ConfigError> {
    let dir = fixture();
    parse(text, Path::new("services.toml"), &dir)
}

fn error(text: &str) -> (Option<usize>, String) {
    let e = check(text).expect_err("config should be rejected");
    (e.line, e.reason)
}

const FULL: &str = r#"
[[service]]
name = "http-hello"
image = "net.kiln"
listen = "127.0.0.1:8080"
guest_port = 80
tender = "spt"
memory = "32M"
idle_timeout = "30s"
max_instances = 4
warm = false
env = { GREETING = "hi" }
args = []
"#;

#[test]
fn the_issue_example_parses() {
    let c = check(FULL).unwrap();
    assert_eq!(c.services.len(), 1);
    let s = &c.services[0];
    assert_eq!(s.name, "http-hello");
    assert!(s.image.is_absolute() || s.image.starts_with(std::env::temp_dir()));
    assert!(s.image.ends_with("net.kiln"));
    assert_eq!(s.listen, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(s.lines.listen, 5);
    assert_eq!(s.guest_port, 80);
    assert_eq!(s.tender, Tender::Spt);
    assert_eq!(s.memory, 32 << 20);
    assert_eq!(s.idle_timeout, Duration::from_secs(30));
    assert_eq!(s.max_instances, 4);
    assert!(!s.warm);
    assert_eq!(s.env.get("GREETING").map(String::as_str), Some("hi"));
    assert!(s.args.is_empty());
}

#[test]
fn defaults() {
    let c = check(
        "[[service]]\nname = \"a\"\nimage = \"net.kiln\"\nlisten = \"127.0.0.1:0\"\nguest_port = 8080\n",
    )
    .unwrap();
    let s = &c.services[0];
    assert_eq!(s.tender, Tender::Auto);
    assert_eq!(s.memory, 32 << 20);
    assert_eq!(s.idle_timeout, Duration::from_secs(30));
    assert_eq!(s.max_instances, 1);
    assert_eq!(s.concurrency, 16);
    assert_eq!(s.cpu_limit, None);
    assert_eq!(s.ready_timeout, Duration::from_secs(10));
    assert_eq!(s.max_connections, None);
    assert_eq!(s.max_starting, MAX_STARTING_DEFAULT);
    assert_eq!(s.first_byte_timeout, FIRST_BYTE_TIMEOUT_DEFAULT);
    assert_eq!(c.daemon.max_connections, None);
    assert_eq!(c.daemon.max_instances, None);
    assert_eq!(c.daemon.max_starting, DAEMON_MAX_STARTING_DEFAULT);
}

#[test]
fn capacity_keys_and_the_daemon_table() {
    let text = format!(
        "[daemon]\nmax_connections = 500\nmax_instances = 40\nmax_starting = 8\n{}",
        FULL.replace(
            "args = []",
            "args = []\nmax_connections = 20\nmax_starting = 2\nfirst_byte_timeout = \"0\""
        )
    );
    let c = check(&text).unwrap();
    assert_eq!(c.daemon.max_connections, Some(500));
    assert_eq!(c.daemon.max_connections_line, 2);
    assert_eq!(c.daemon.max_instances, Some(40));
    assert_eq!(c.daemon.max_starting, 8);
    let s = &c.services[0];
    assert_eq!(s.max_connections, Some(20));
    assert_eq!(s.lines.max_connections, 18);
    assert_eq!(s.lines.max_instances, 14);
    assert_eq!(s.max_starting, 2);
    assert_eq!(s.first_byte_timeout, Duration::ZERO);

    let (line, reason) = error("[daemon]\nmax_starting = 0\n");
    assert_eq!(line, Some(2), "{reason}");
    assert!(reason.contains("[daemon]: max_starting"), "{reason}");
    let (line, reason) = error("[daemon]\nmax_stating = 1\n");
    assert_eq!(line, Some(2), "{reason}");
    let (line, reason) = error(&FULL.replace("args = []", "max_connections = -1"));
    assert_eq!(line, Some(13), "{reason}");
    assert!(reason.contains("max_connections"), "{reason}");
}

#[test]
fn wildcard_addresses_overlap_what_they_cover() {
    let a = |s: &str| s.parse::<SocketAddr>().unwrap();
    assert!(overlaps(a("0.0.0.0:80"), a("127.0.0.1:80")));
    assert!(overlaps(a("127.0.0.1:80"), a("0.0.0.0:80")));
    assert!(overlaps(a("[::]:80"), a("127.0.0.1:80")));
    assert!(overlaps(a("10.0.0.1:80"), a("[::]:80")));
    assert!(overlaps(a("[::]:80"), a("[::1]:80")));
    assert!(overlaps(a("0.0.0.0:80"), a("[::]:80")));
    assert!(!overlaps(a("0.0.0.0:80"), a("[::1]:80")));
    assert!(!overlaps(a("127.0.0.1:80"), a("[::1]:80")));
    assert!(!overlaps(a("127.0.0.1:80"), a("127.0.0.2:80")));
    assert!(!overlaps(a("0.0.0.0:80"), a("0.0.0.0:81")));
    assert!(!overlaps(a("0.0.0.0:0"), a("127.0.0.1:0")));

    let second = |listen: &str| {
        format!(
            "{FULL}{}",
            FULL.replace("http-hello", "other")
                .replace("127.0.0.1:8080", listen)
        )
    };
    let (line, reason) = error(&second("0.0.0.0:8080"));
    assert_eq!(line, Some(18), "{reason}");
    assert!(
        reason.contains("0.0.0.0:8080 overlaps 127.0.0.1:8080"),
        "{reason}"
    );
    let (line, reason) = error(&second("[::]:8080"));
    assert_eq!(line, Some(18), "{reason}");
    assert!(check(&second("[::1]:8080")).is_ok());
    assert!(check(&second("0.0.0.0:8081")).is_ok());
}

#[test]
fn empty_file_has_no_services() {
    assert!(check("").unwrap().services.is_empty());
}

#[test]
fn malformed_toml_names_the_line() {
    let (line, reason) = error("[[service]]\nname = \"a\"\nimage = \n");
    assert_eq!(line, Some(3), "{reason}");
}

#[test]
fn unknown_key_names_line_and_key() {
    let text = FULL.replace("warm = false", "wram = false");
    let (line, reason) = error(&text);
    assert_eq!(line, Some(11), "{reason}");
    assert!(reason.contains("wram"), "{reason}");
}

#[test]
fn missing_image_names_line_and_path() {
    let text = FULL.replace("net.kiln", "nope.kiln");
    let (line, reason) = error(&text);
    assert_eq!(line, Some(4));
    assert!(
        reason.contains("nope.kiln") && reason.contains("no such file"),
        "{reason}"
    );
}

#[test]
fn invalid_image_is_rejected() {
    let (line, reason) = error(&FULL.replace("net.kiln", "junk.kiln"));
    assert_eq!(line, Some(4));
    assert!(reason.contains("junk.kiln"), "{reason}");
    let (line, reason) = error(&FULL.replace("net.kiln", "bare.kiln"));
    assert_eq!(line, Some(4));
    assert!(reason.contains("no network device"), "{reason}");
}

#[test]
fn bad_values_name_their_line() {
    let cases: &[(&str, &str, usize, &str)] = &[
        ("\"127.0.0.1:8080\"", "\"localhost\"", 5, "not an address"),
        ("guest_port = 80", "guest_port = 70000", 6, "guest_port"),
        ("guest_port = 80", "guest_port = 0", 6, "guest_port"),
        ("\"spt\"", "\"qemu\"", 7, "qemu"),
        ("\"32M\"", "\"lots\"", 8, "not a size"),
        ("\"32M\"", "\"4G\"", 8, "between"),
        ("\"30s\"", "\"30 parsecs\"", 9, "not a duration"),
        (
            "max_instances = 4",
            "max_instances = 0",
            10,
            "max_instances",
        ),
        ("warm = false", "warm = \"yes\"", 11, ""),
        ("name = \"http-hello\"", "name = \"Http Hello\"", 3, "name"),
    ];
    for (from, to, want, needle) in cases {
        let text = FULL.replace(from, to);
        let (line, reason) = error(&text);
        assert_eq!(line, Some(*want), "{to}: {reason}");
        assert!(reason.contains(needle), "{to}: {reason}");
    }
}

#[test]
fn duplicate_names_and_addresses() {
    let twice = format!("{FULL}{FULL}");
    let (line, reason) = error(&twice);
    assert_eq!(line, Some(16));
    assert!(reason.contains("twice"), "{reason}");
    let other = format!("{FULL}{}", FULL.replace("http-hello", "other"));
    let (line, reason) = error(&other);
    assert_eq!(line, Some(18));
    assert!(reason.contains("already used"), "{reason}");
}

#[test]
fn relative_image_paths_follow_the_config_file() {
    let dir = fixture();
    let path = dir.join("services.toml");
    std::fs::write(&path, FULL).unwrap();
    let c = load(&path).unwrap();
    assert_eq!(
        c.services[0].image,
        dir.canonicalize().unwrap().join("net.kiln")
    );
    let e = load(&dir.join("missing.toml")).unwrap_err();
    assert!(e.to_string().contains("cannot read"), "{e}");
}

#[test]
fn same_as_ignores_position_only() {
    let dir = fixture();
    let at = |t: &str| {
        parse(t, Path::new("s.toml"), &dir)
            .unwrap()
            .services
            .remove(0)
    };
    let a = at(FULL);
    let b = at(&format!("\n\n{FULL}"));
    assert_ne!(a.lines.listen, b.lines.listen);
    assert!(a.same_as(&b));
    let c = at(&FULL.replace("32M", "64M"));
    assert!(!a.same_as(&c));
}

#[test]
fn durations() {
    assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
    assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
    assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
    assert!(parse_duration("s").is_err());
    assert!(parse_duration("10").is_err());
    assert!(parse_duration("99999999999999999h").is_err());
}
