use super::*;

/// One `find` question: the `noProxy` value (one comma-separated
/// string), the connection, and the entry that should match.
struct Case {
    no_proxy: &'static str,
    host: Option<&'static str>,
    ip: &'static str,
    port: u16,
    want: Option<&'static str>,
}

const fn case(
    no_proxy: &'static str,
    host: Option<&'static str>,
    ip: &'static str,
    port: u16,
    want: Option<&'static str>,
) -> Case {
    Case {
        no_proxy,
        host,
        ip,
        port,
        want,
    }
}

const EXT: &str = "203.0.113.7";

#[rustfmt::skip]
const CASES: &[Case] = &[
    // `*` alone, and among others (Go: everything; curl, Python: nothing).
    case("*", None, EXT, 22, Some("*")),
    case("*", Some("a.example"), EXT, 443, Some("*")),
    case("a.com,*", Some("x.example"), EXT, 443, Some("*")),
    case("a.com, *", None, "2001:db8::1", 443, Some("*")),
    case("x.example,*", Some("x.example"), EXT, 443, Some("*")), // in the kernel: acts first
    // A name: apex and subdomains, on label boundaries only.
    case("example.com", Some("example.com"), EXT, 443, Some("example.com")),
    case("example.com", Some("a.b.example.com"), EXT, 443, Some("example.com")),
    case("example.com", Some("notexample.com"), EXT, 443, None),
    case("example.com", Some("example.com.evil"), EXT, 443, None),
    case("example.com", Some("com"), EXT, 443, None),
    // Leading dot: subdomains only (Go); curl and Python also match the apex.
    case(".example.com", Some("a.example.com"), EXT, 443, Some(".example.com")),
    case(".example.com", Some("example.com"), EXT, 443, None),
    // `*.example.com` = `.example.com` (Go); curl and Python match nothing.
    case("*.example.com", Some("a.example.com"), EXT, 443, Some("*.example.com")),
    case("*.example.com", Some("x.a.example.com"), EXT, 443, Some("*.example.com")),
    case("*.example.com", Some("example.com"), EXT, 443, None),
    // Case and trailing dots, on either side (Go: neither; curl: both).
    case("Example.COM", Some("www.example.com"), EXT, 443, Some("Example.COM")),
    case("example.com", Some("WWW.Example.Com"), EXT, 443, Some("example.com")),
    case("example.com.", Some("example.com"), EXT, 443, Some("example.com.")),
    case("example.com", Some("example.com."), EXT, 443, Some("example.com")),
    case(".example.com.", Some("a.example.com"), EXT, 443, Some(".example.com.")),
    // AKS forms.
    case("localhost", Some("localhost"), "127.0.0.1", 8080, Some("localhost")),
    case(".svc", Some("kubernetes.default.svc"), "10.0.0.1", 443, Some(".svc")),
    case(".svc", Some("svc"), EXT, 443, None),
    case(".cluster.local", Some("kube-dns.kube-system.svc.cluster.local"), "10.0.0.10", 53, Some(".cluster.local")),
    case("kubernetes.default.svc", Some("kubernetes.default.svc"), "10.0.0.1", 443, Some("kubernetes.default.svc")),
    case("konnectivity", Some("konnectivity"), EXT, 8132, Some("konnectivity")),
    case("mcr.microsoft.com", Some("mcr.microsoft.com"), EXT, 443, Some("mcr.microsoft.com")),
    case("169.254.169.254", None, "169.254.169.254", 80, Some("169.254.169.254")),
    case("168.63.129.16", None, "168.63.129.16", 80, Some("168.63.129.16")),
    case("_srv.example", Some("_srv.example"), EXT, 443, Some("_srv.example")),
    // No hostname: only IP/CIDR (and `*`) rules can match.
    case("example.com", None, EXT, 443, None),
    case("example.com,203.0.113.0/24", None, EXT, 443, Some("203.0.113.0/24")),
    // IP/CIDR rules match the destination even when a name is known
    // (Go, curl: only for IP-literal URLs; Python: never).
    case("10.0.0.0/8", Some("example.com"), "10.1.2.3", 443, Some("10.0.0.0/8")),
    case("10.0.0.0/8", Some("example.com"), EXT, 443, None),
    case("10.0.0.0/8", None, "10.255.255.255", 1, Some("10.0.0.0/8")),
    case("10.0.0.0/8", None, "11.0.0.0", 1, None),
    case("10.1.2.3/8", None, "10.200.0.1", 1, Some("10.1.2.3/8")),
    case("0.0.0.0/0", None, EXT, 1, Some("0.0.0.0/0")),
    case("0.0.0.0/0", None, "2001:db8::1", 1, None),
    case("fd00::/8", None, "fd12::1", 443, Some("fd00::/8")),
    case("fd00::/8", None, "fe00::1", 443, None),
    case("10.1.2.3", None, "10.1.2.3", 1, Some("10.1.2.3")),
    case("10.1.2.3", None, "10.1.2.4", 1, None),
    // IPv6 literals: bare and bracketed, any spelling (curl: text only;
    // Go: bracketed only with a port; Python: bracketed only).
    case("::1", None, "::1", 80, Some("::1")),
    case("[::1]", None, "::1", 80, Some("[::1]")),
    case("0::1", None, "::1", 80, Some("0::1")),
    case("fd00::1:443", None, "fd00::1:443", 80, Some("fd00::1:443")),
    // An IP-literal hostname is matched by IP rules, never by name rules.
    // The destination IP decides, never an IP literal the client wrote;
    // the literal counts only without a destination (`explain ip:port`,
    // written "" here).
    case("10.0.0.0/8", Some("10.9.9.9"), EXT, 443, None),
    case("10.9.9.9", Some("10.9.9.9"), EXT, 443, None),
    case("[fd00::1]:443", Some("[fd00::1]"), EXT, 443, None),
    case("fd00::/8", Some("fd00::5"), EXT, 443, None),
    case("10.0.0.0/8", Some("10.9.9.9"), "", 443, Some("10.0.0.0/8")),
    case("[fd00::1]:443", Some("[fd00::1]"), "", 443, Some("[fd00::1]:443")),
    case("fd00::/8", Some("fd00::5"), "", 443, Some("fd00::/8")),
    case("example.com", Some("example.com"), "", 443, Some("example.com")),
    // IPv4-mapped destinations are IPv4, in entries too.
    case("10.0.0.0/8", None, "::ffff:10.1.2.3", 443, Some("10.0.0.0/8")),
    case("::ffff:10.1.2.3", None, "10.1.2.3", 443, Some("::ffff:10.1.2.3")),
    case("::ffff:10.0.0.0/104", None, "10.1.2.3", 443, Some("::ffff:10.0.0.0/104")),
    // Ports (Go: yes; curl: never matches; Python: only if the URL spells it).
    case("example.com:8443", Some("example.com"), EXT, 8443, Some("example.com:8443")),
    case("example.com:8443", Some("a.example.com"), EXT, 8443, Some("example.com:8443")),
    case("example.com:8443", Some("example.com"), EXT, 443, None),
    case("example.com:443", Some("example.com"), EXT, 443, Some("example.com:443")),
    case(".example.com:443", Some("a.example.com"), EXT, 443, Some(".example.com:443")),
    case(".example.com:443", Some("example.com"), EXT, 443, None),
    case(".example.com:443", Some("a.example.com"), EXT, 80, None),
    case("10.0.0.1:8080", None, "10.0.0.1", 8080, Some("10.0.0.1:8080")),
    case("10.0.0.1:8080", None, "10.0.0.1", 8081, None),
    case("[fd00::1]:443", None, "fd00::1", 443, Some("[fd00::1]:443")),
    case("[fd00::1]:443", None, "fd00::1", 80, None),
    case("example.com.:443", Some("example.com"), EXT, 443, Some("example.com.:443")),
    // Order written decides which rule is named, except that an
    // in-kernel rule covering the destination wins (the kernel acts first).
    case("a.example.com,example.com", Some("a.example.com"), EXT, 443, Some("a.example.com")),
    case("example.com,a.example.com", Some("a.example.com"), EXT, 443, Some("example.com")),
    case("example.com:8443,10.0.0.0/8", Some("example.com"), "10.0.0.1", 8443, Some("10.0.0.0/8")),
    case("10.0.0.1:8080,10.0.0.0/8", None, "10.0.0.1", 8080, Some("10.0.0.0/8")),
    case("example.com,10.0.0.0/8", Some("example.com"), EXT, 443, Some("example.com")),
    case("10.9.9.9,10.0.0.0/8", Some("10.0.0.1"), "10.9.9.9", 443, Some("10.9.9.9")),
    // Whitespace and empty items around commas.
    case(" , a.example ,, b.example , ", Some("b.example"), EXT, 443, Some("b.example")),
    // Empty list.
    case("", Some("example.com"), EXT, 443, None),
    // Degenerate hosts are no hostname.
    case("example.com", Some(""), EXT, 443, None),
    case("example.com", Some("."), EXT, 443, None),
    case("*", Some(""), EXT, 443, Some("*")),
];

#[test]
fn find_table() {
    for c in CASES {
        let np = NoProxy::parse(&[c.no_proxy]).unwrap_or_else(|e| panic!("{}: {e}", c.no_proxy));
        let ip: Option<IpAddr> = (!c.ip.is_empty()).then(|| c.ip.parse().unwrap());
        // Short lists are scanned; the index must answer the same.
        for got in [
            np.find(c.host, ip, c.port),
            np.find_by_index(c.host, ip, c.port),
        ] {
            assert_eq!(
                got.map(Rule::entry),
                c.want,
                "noProxy `{}`, host {:?}, {}:{}",
                c.no_proxy,
                c.host,
                c.ip,
                c.port
            );
        }
    }
}

/// What the kernel bypasses, user space names: a destination in a
/// kernel prefix is matched by an in-kernel rule, whatever the hostname;
/// and an in-kernel rule matching the destination is in the kernel.
#[test]
fn kernel_bypass_agrees_with_find() {
    for c in CASES.iter().filter(|c| !c.ip.is_empty()) {
        let np = NoProxy::parse(&[c.no_proxy]).unwrap();
        let ip = c.ip.parse::<IpAddr>().unwrap().to_canonical();
        let in_kernel = np.kernel_bypass().any(|net| net.contains(&ip));
        let rule = np.find(c.host, ip, c.port);
        assert_eq!(
            in_kernel,
            np.find(None, ip, 0).is_some_and(Rule::in_kernel),
            "{}: {}",
            c.no_proxy,
            c.ip
        );
        if in_kernel {
            assert!(
                rule.is_some_and(Rule::in_kernel),
                "{}: {rule:?}",
                c.no_proxy
            );
        }
    }
}

/// A small deterministic generator (xorshift64*), so that a failure
/// names a seed that reproduces it.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

/// A name from a small pool of labels, so that rules and hosts overlap.
fn random_name(rng: &mut Rng) -> String {
    let labels = ["a", "b", "Ex", "svc", "com", "local", "x-1"];
    let depth = 1 + rng.below(3);
    let mut name: Vec<&str> = (0..depth).map(|_| rng.pick(&labels)).collect();
    name.push(rng.pick(&["com", "net", "svc"]));
    name.join(".")
}

fn random_v4(rng: &mut Rng) -> String {
    format!(
        "10.{}.{}.{}",
        rng.below(3),
        rng.below(3) * 100,
        rng.below(4)
    )
}

fn random_v6(rng: &mut Rng) -> String {
    format!("fd00:{:x}::{:x}", rng.below(3), rng.below(4))
}

fn random_entry(rng: &mut Rng) -> String {
    let port = |rng: &mut Rng| [":80", ":443", ":8080"][rng.below(3)];
    match rng.below(14) {
        0 if rng.below(8) == 0 => "*".into(),
        0 | 1 => random_name(rng),
        2 => format!(".{}", random_name(rng)),
        3 => format!("*.{}", random_name(rng)),
        4 => format!("{}{}", random_name(rng), port(rng)),
        5 => format!(".{}.{}", random_name(rng), port(rng)),
        6 => format!("{}.", random_name(rng).to_uppercase()),
        7 => format!(
            "{}/{}",
            random_v4(rng),
            [0, 8, 14, 16, 23, 24, 30, 32][rng.below(8)]
        ),
        8 => random_v4(rng),
        9 => format!("{}{}", random_v4(rng), port(rng)),
        10 => format!(
            "{}/{}",
            random_v6(rng),
            [0, 16, 20, 32, 127, 128][rng.below(6)]
        ),
        11 => format!("[{}]{}", random_v6(rng), port(rng)),
        12 => format!("::ffff:{}/{}", random_v4(rng), 104 + rng.below(25)),
        _ => format!(
            "{}/{}",
            ["0.0.0.0", "255.255.255.255", "::", "ffff::"][rng.below(4)],
            rng.below(2) * 32
        ),
    }
}

/// The index answers exactly what a scan in the order written answers,
/// the same rule (not just an equal one), on random lists and queries.
#[test]
fn index_agrees_with_scan() {
    for seed in 1..=300u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let entries: Vec<String> = (0..rng.below(40)).map(|_| random_entry(&mut rng)).collect();
        let np = NoProxy::parse(&entries).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        for _ in 0..200 {
            let host = match rng.below(6) {
                0 => None,
                1 => Some(random_v4(&mut rng)),
                2 => Some(format!("[{}]", random_v6(&mut rng))),
                3 => Some(format!("{}.", random_name(&mut rng))),
                _ => Some(random_name(&mut rng)),
            };
            let ip: Option<IpAddr> = match rng.below(5) {
                0 => None,
                1 => Some(random_v6(&mut rng).parse().unwrap()),
                2 => Some(format!("::ffff:{}", random_v4(&mut rng)).parse().unwrap()),
                _ => Some(random_v4(&mut rng).parse().unwrap()),
            };
            let port = [80, 443, 8080, 22][rng.below(4)];
            let want = np.find_by_scan(host.as_deref(), ip, port);
            let same = |got: Option<&Rule>| match (got, want) {
                (Some(g), Some(w)) => std::ptr::eq(g, w),
                (None, None) => true,
                _ => false,
            };
            let got = np.find_by_index(host.as_deref(), ip, port);
            assert!(
                same(got) && same(np.find(host.as_deref(), ip, port)),
                "seed {seed}: {entries:?}, host {host:?}, {ip:?}:{port}: index {got:?}, scan {want:?}"
            );
        }
    }
}

/// Ranges at the ends of the address space and nested, repeated and
/// adjacent prefixes: the first rule in the order written wins.
#[test]
fn first_cover_ranges() {
    let np = NoProxy::parse(&[
        "10.1.0.0/16",
        "10.0.0.0/8",
        "10.1.2.0/24",
        "10.0.0.0/8",
        "11.0.0.0/8",
        "255.255.255.255",
        "::/0",
        "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
    ])
    .unwrap();
    let first = |ip: &str| {
        np.find_by_index(None, ip.parse::<IpAddr>().unwrap(), 1)
            .map(Rule::entry)
    };
    assert_eq!(first("10.1.2.3"), Some("10.1.0.0/16"));
    assert_eq!(first("10.2.0.0"), Some("10.0.0.0/8"));
    assert_eq!(first("9.255.255.255"), None);
    assert_eq!(first("11.255.255.255"), Some("11.0.0.0/8"));
    assert_eq!(first("12.0.0.0"), None);
    assert_eq!(first("255.255.255.255"), Some("255.255.255.255"));
    assert_eq!(first("255.255.255.254"), None);
    assert_eq!(first("0.0.0.0"), None);
    assert_eq!(
        first("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"),
        Some("::/0")
    );
    assert_eq!(first("::"), Some("::/0"));
    let late = NoProxy::parse(&["10.1.2.0/24", "10.0.0.0/8", "0.0.0.0/0"]).unwrap();
    let first = |ip: &str| {
        late.find_by_index(None, ip.parse::<IpAddr>().unwrap(), 1)
            .map(Rule::entry)
    };
    assert_eq!(first("10.1.2.3"), Some("10.1.2.0/24"));
    assert_eq!(first("10.1.3.3"), Some("10.0.0.0/8"));
    assert_eq!(first("10.255.255.255"), Some("10.0.0.0/8"));
    assert_eq!(first("11.0.0.0"), Some("0.0.0.0/0"));
    assert_eq!(first("255.255.255.255"), Some("0.0.0.0/0"));
    let top = NoProxy::parse(&["ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe"]).unwrap();
    let first = |ip: &str| {
        top.find_by_index(None, ip.parse::<IpAddr>().unwrap(), 1)
            .map(Rule::entry)
    };
    assert_eq!(first("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"), None);
    assert!(first("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe").is_some());
}

#[test]
fn find_without_destination_ip() {
    let np = NoProxy::parse(&["10.0.0.0/8", "example.com"]).unwrap();
    let rule = |host, ip: Option<IpAddr>| np.find(host, ip, 443).map(Rule::entry);
    assert_eq!(rule(Some("10.1.1.1"), None), Some("10.0.0.0/8"));
    assert_eq!(rule(Some("a.example.com"), None), Some("example.com"));
    assert_eq!(rule(Some("x.example"), None), None);
    assert_eq!(rule(None, None), None);
}

#[test]
fn kernel_bypass_lists_ip_entries_without_port() {
    let np = NoProxy::parse(&[
        "localhost",
        "10.0.0.0/16",
        "127.0.0.1",
        " ",
        "[::1]",
        "fd00::/8",
        "10.1.2.3/8",
        "Docker.IO",
        "10.0.0.5:8080, [fd00::5]:443",
        "::ffff:192.0.2.0/120",
    ])
    .unwrap();
    let bypass: Vec<String> = np.kernel_bypass().map(ToString::to_string).collect();
    assert_eq!(
        bypass,
        [
            "10.0.0.0/16",
            "127.0.0.1/32",
            "::1/128",
            "fd00::/8",
            "10.0.0.0/8",
            "192.0.2.0/24"
        ]
    );
    let user: Vec<&str> = np
        .rules()
        .iter()
        .filter(|r| !r.in_kernel())
        .map(Rule::entry)
        .collect();
    assert_eq!(
        user,
        ["localhost", "Docker.IO", "10.0.0.5:8080", "[fd00::5]:443"]
    );
}

#[test]
fn star_bypasses_everything_in_the_kernel() {
    let np = NoProxy::parse(&["a.example", "*"]).unwrap();
    let bypass: Vec<String> = np.kernel_bypass().map(ToString::to_string).collect();
    assert_eq!(bypass, ["0.0.0.0/0", "::/0"]);
    assert!(np.rules()[1].in_kernel());
}

#[test]
fn rules_keep_the_entry_as_written() {
    let np = NoProxy::parse(&["  Example.COM.:8443 ", "*.Svc"]).unwrap();
    let rule = &np.rules()[0];
    assert_eq!(rule.entry(), "Example.COM.:8443");
    assert_eq!(rule.to_string(), "Example.COM.:8443");
    assert!(!rule.in_kernel());
    assert_eq!(np.rules()[1].to_string(), "*.Svc");
}

#[test]
fn list_and_comma_separated_string_are_the_same() {
    let list = NoProxy::parse(&["a.example", "10.0.0.0/8", ".svc"]).unwrap();
    let csv = NoProxy::parse(&["a.example, 10.0.0.0/8,.svc,"]).unwrap();
    assert_eq!(list, csv);
    assert_eq!(NoProxy::parse::<&str>(&[]).unwrap(), NoProxy::default());
}

#[test]
fn every_aks_form_parses() {
    let aks = [
        "localhost",
        "127.0.0.1",
        "10.0.0.0/16",
        ".svc",
        ".cluster.local",
        "kubernetes.default.svc",
        "kubernetes.default",
        "169.254.169.254",
        "168.63.129.16",
        "konnectivity",
        "mcr.microsoft.com",
        "login.microsoftonline.com",
        ".azmk8s.io",
        "10.224.0.0/12",
        "fd00::/8",
        "::1",
    ];
    let np = NoProxy::parse(&aks).unwrap();
    assert_eq!(np.rules().len(), aks.len());
}

#[test]
fn refuses_what_it_does_not_understand() {
    use InvalidEntry::*;
    let long_label = format!("{}.com", "a".repeat(64));
    let long_name = format!("{}.com", vec!["a".repeat(60); 5].join("."));
    let cases: Vec<(&str, InvalidEntry)> = vec![
        (
            "10.0.0.0/33",
            PrefixLength {
                len: "33".into(),
                max: 32,
            },
        ),
        (
            "fd00::/129",
            PrefixLength {
                len: "129".into(),
                max: 128,
            },
        ),
        (
            "10.0.0.0/x",
            PrefixLength {
                len: "x".into(),
                max: 32,
            },
        ),
        (
            "10.0.0.0/+8",
            PrefixLength {
                len: "+8".into(),
                max: 32,
            },
        ),
        ("10.0.0.0/", MissingPrefixLength),
        ("10.0.0/8", CidrAddress("10.0.0".into())),
        ("fd00::g/8", CidrAddress("fd00::g".into())),
        ("10.0.0.0/8:443", CidrWithPort),
        ("fd00::/8:443", CidrWithPort),
        ("example.com/path", Slash),
        ("http://example.com", Url("example.com".into())),
        (
            "https://user:pw@example.com:8443/x",
            Url("example.com:8443".into()),
        ),
        ("*.*.com", Wildcard),
        ("foo*.com", Wildcard),
        ("*foo.com", Wildcard),
        ("a.*.com", Wildcard),
        ("**", Wildcard),
        ("*:443", StarWithPort),
        (":8080", EmptyHost),
        ("example.com:0", Port("0".into())),
        ("example.com:99999", Port("99999".into())),
        ("example.com:abc", Port("abc".into())),
        ("example.com:", Port("".into())),
        ("example.com:+80", Port("+80".into())),
        ("[::1]:0", Port("0".into())),
        ("[::1", Brackets),
        ("[example.com]", Brackets),
        ("[10.0.0.1]", Brackets),
        ("[::1]x", Brackets),
        ("fd00::g", NotIpv6("fd00::g".into())),
        ("a:b:c", NotIpv6("a:b:c".into())),
        (long_label.as_str(), LabelTooLong("a".repeat(64))),
        (long_name.as_str(), NameTooLong),
        ("a..com", EmptyLabel),
        (".", EmptyName),
        ("*.", EmptyName),
        ("..", EmptyName),
        ("a b.com", Whitespace),
        ("a\tb", Whitespace),
        ("bücher.de", NonAscii),
        ("exa$mple.com", Char('$')),
        ("example.com;", Char(';')),
        ("10.0.0", NotAnIp),
        ("1.2.3.4.5", NotAnIp),
        ("256.1.1.1", NotAnIp),
        ("010.0.0.1", NotAnIp),
        (".0.0.1", NotAnIp),
        ("123", NotAnIp),
    ];
    for (entry, want) in cases {
        let err = NoProxy::parse(&["ok.example", entry]).unwrap_err();
        // The same entry second in one comma-separated string.
        let csv = NoProxy::parse(&[format!("ok.example, {entry}")]).unwrap_err();
        assert_eq!(csv.position, 2, "{entry}");
        assert_eq!(
            err,
            NoProxyError {
                position: 2,
                entry: entry.to_owned(),
                reason: want
            },
            "{entry}"
        );
    }
}

#[test]
fn error_names_element_entry_and_reason() {
    let err =
        NoProxy::parse(&["a.example", "b.example", "c.example", " 10.0.0.0/33 "]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "entry 4 `10.0.0.0/33`: prefix length 33 is not 0..=32",
        "positions count from 1"
    );
    // Inside a comma-separated element: the item's position among all.
    let err = NoProxy::parse(&["a.example, http://b.example/ ,c"]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "entry 2 `http://b.example/`: a URL is not a NO_PROXY entry; \
         write the host alone, e.g. `b.example`"
    );
}
