//! Unit tests of policy loading and its coherence checks.

use super::*;
use crate::capability::keys::public_key_text;
use ed25519_dalek::SigningKey;

pub(crate) fn issuer_key() -> SigningKey {
    SigningKey::from_bytes(&[1; 32])
}

/// The SPEC's example policy, with an inline issuer key and a few builtins.
pub(crate) fn sample_text() -> String {
    format!(
        r#"version = 1
name = "hello-world"
agent = "hello-bot"

[issuers]
keys = ["{key}"]
max_ttl = "1h"

[sandbox]
profile = "minimal"
read_only = ["/usr/share"]
read_write = ["out"]
[sandbox.limits]
memory = "2GiB"
pids = 256
wall = "30m"

[revocation]
list = "revoked.txt"

[[action]]
name = "hello-world.say_hello"
run = ["/bin/echo", "Hello, {{name}}!"]
params = {{ name = "^[A-Za-z ]{{1,32}}$" }}

[[action]]
name = "aws.ec2.terminate_instances"
run = ["aws", "ec2", "terminate-instances", "--instance-ids", "{{id}}"]
params = {{ id = "^i-[0-9a-f]{{8,17}}$" }}

[[action]]
name = "fs.read"
builtin = "fs.read"
root = "data"

[[action]]
name = "fs.write"
builtin = "fs.write"
root = "data"
params = {{ path = "[a-z]+\\.txt" }}

[[rule]]
effect = "deny"
actions = ["aws.ec2.terminate_*"]
reason = "destructive cloud actions are never brokered"

[[rule]]
effect = "allow"
agents = ["hello-bot"]
actions = ["hello-world.*", "fs.*", "aws.*"]

[[rule]]
id = "no-secrets"
effect = "deny"
actions = ["fs.read"]
args = {{ path = "secret.*" }}
reason = "secrets stay home"
"#,
        key = public_key_text(&issuer_key().verifying_key())
    )
}

pub(crate) fn sample() -> Policy {
    Policy::parse(&sample_text(), Path::new("/etc/zt/hello.toml")).expect("sample policy parses")
}

fn err(text: &str) -> PolicyError {
    Policy::parse(text, Path::new("p.toml")).expect_err("policy must be refused")
}

const HEAD: &str = "version = 1\nname = \"p\"\n";

#[test]
fn sample_parses_with_defaults_and_resolved_paths() {
    let p = sample();
    assert_eq!(p.name, "hello-world");
    assert_eq!(p.agent.as_deref(), Some("hello-bot"));
    assert_eq!(p.max_ttl, 3600);
    assert_eq!(p.issuers.len(), 1);
    assert_eq!(
        p.issuers[0].kid,
        crate::capability::key_id(&issuer_key().verifying_key())
    );
    assert_eq!(p.dir, PathBuf::from("/etc/zt"));
    assert_eq!(p.sandbox.read_write, vec![PathBuf::from("/etc/zt/out")]);
    assert_eq!(p.sandbox.require, DEFAULT_REQUIRE.to_vec());
    assert_eq!(p.sandbox.limits.memory, Some(2 << 30));
    assert_eq!(p.sandbox.limits.wall, Some(1800));
    assert_eq!(p.revocation, Some(PathBuf::from("/etc/zt/revoked.txt")));
    assert!(p.audit.fsync);
    assert_eq!(p.mediator, MediatorSettings::default());
    assert_eq!(p.sha256, sha256_hex(sample_text().as_bytes()));
    let say = p.action("hello-world.say_hello").expect("action");
    assert_eq!(say.required, vec!["name".to_string()]);
    assert!(p.action("hello-world.say_hellox").is_none());
    let read = p.action("fs.read").expect("fs.read");
    assert_eq!(
        read.kind,
        ActionKind::Builtin(Builtin::FsRead {
            root: "/etc/zt/data".into(),
            max_bytes: DEFAULT_FS_MAX_BYTES
        })
    );
    assert!(read.params["path"].is_match("any/thing\n"));
    assert_eq!(p.rules[0].id, "rule[0]");
    assert_eq!(p.rules[2].id, "no-secrets");
    assert!(p.summary().starts_with("policy `hello-world`"));
}

#[test]
fn default_policy_matches_its_text() {
    let d = Policy::builtin_default(Path::new("/w"));
    let parsed = Policy::parse(DEFAULT_POLICY_TEXT, Path::new("/w/default.toml")).expect("parses");
    assert_eq!(d.name, parsed.name);
    assert_eq!(d.sha256, parsed.sha256);
    assert_eq!(d.sandbox, parsed.sandbox);
    assert_eq!(d.mediator, parsed.mediator);
    assert_eq!(d.audit, parsed.audit);
    assert!(d.actions.is_empty() && d.rules.is_empty() && d.issuers.is_empty());
    assert_eq!(d.dir, PathBuf::from("/w"));
    assert!(d.source.is_none());
}

#[test]
fn unknown_keys_name_line_and_key() {
    let e = err(&format!(
        "{HEAD}[sandbox]\nprofile = \"minimal\"\nfoo = 1\n"
    ));
    assert_eq!(e.line, Some(5), "{e}");
    assert!(
        e.to_string()
            .starts_with("p.toml:5: key `foo` in [sandbox]: unknown key"),
        "{e}"
    );
    let e = err(&format!("{HEAD}colour = \"red\"\n"));
    assert_eq!(e.line, Some(3), "{e}");
    assert!(e.to_string().contains("key `colour`"), "{e}");
    let e = err(&format!(
        "{HEAD}[[action]]\nname = \"a.b\"\nbuiltin = \"sys.ping\"\n[[action]]\nname = \"a.c\"\nbuiltin = \"sys.ping\"\nbogus = true\n"
    ));
    assert_eq!(e.line, Some(9), "{e}");
    assert!(
        e.to_string()
            .contains("key `bogus` in [[action]] #2: unknown key"),
        "{e}"
    );
    let e = err(&format!("{HEAD}[sandbox.limits]\nswap = \"1GiB\"\n"));
    assert!(
        e.to_string().contains("key `swap` in [sandbox.limits]"),
        "{e}"
    );
}

#[test]
fn bad_patterns_and_missing_params_name_line_and_key() {
    let e = err(&format!(
        "{HEAD}[[action]]\nname = \"x.y\"\nrun = [\"/bin/echo\", \"{{v}}\"]\nparams = {{ v = \"[a-z\" }}\n"
    ));
    assert_eq!(e.line, Some(6), "{e}");
    assert!(
        e.to_string()
            .contains("key `params.v` in [[action]] #1: pattern does not compile"),
        "{e}"
    );
    let e = err(&format!(
        "{HEAD}[[action]]\nname = \"x.y\"\nrun = [\"/bin/echo\", \"{{v}}\", \"{{w}}\"]\nparams = {{ v = \"a\" }}\n"
    ));
    assert_eq!(e.line, Some(5), "{e}");
    assert!(
        e.to_string()
            .contains("key `run` in [[action]] #1: `{w}` has no pattern"),
        "{e}"
    );
    let e = err(&format!(
        "{HEAD}[[action]]\nname = \"x.y\"\nrun = [\"/bin/echo\"]\nparams = {{ v = \"a\" }}\n"
    ));
    assert!(e.to_string().contains("params.v"), "{e}");
}

#[test]
fn rules_must_name_existing_actions() {
    let base =
        format!("{HEAD}[[action]]\nname = \"fs.read\"\nbuiltin = \"fs.read\"\nroot = \"/\"\n");
    for bad in [
        "fs.readx",
        "FS.READ",
        "fs.read.",
        "fs.re\u{0430}d",
        "net.*",
        "fs.*.x",
    ] {
        let e = err(&format!(
            "{base}[[rule]]\neffect = \"allow\"\nactions = [\"{bad}\"]\n"
        ));
        assert_eq!(e.line, Some(9), "{bad}: {e}");
        assert!(
            e.to_string().contains("key `actions` in [[rule]] #1"),
            "{bad}: {e}"
        );
    }
    let ok = format!("{base}[[rule]]\neffect = \"allow\"\nactions = [\"fs.*\"]\n");
    assert!(Policy::parse(&ok, Path::new("p.toml")).is_ok());
    let e = err(&format!(
        "{base}[[rule]]\neffect = \"permit\"\nactions = [\"fs.read\"]\n"
    ));
    assert!(e.to_string().contains("key `effect`"), "{e}");
    let e = err(&format!(
        "{base}[[rule]]\neffect = \"deny\"\nactions = [\"fs.read\"]\nargs = {{ nope = \"x\" }}\n"
    ));
    assert!(e.to_string().contains("key `args.nope`"), "{e}");
}

#[test]
fn parameters_that_begin_a_word_before_dashes_are_in_option_position() {
    let p = Policy::parse(
        &format!(
            "{HEAD}[[action]]\nname = \"c\"\n\
             run = [\"/bin/x\", \"{{a}}\", \"{{b}}.txt\", \"--out={{c}}\", \"x{{d}}\", \"--\", \"{{e}}\", \"{{a}}\"]\n\
             params = {{ a = \".*\", b = \".*\", c = \".*\", d = \".*\", e = \".*\" }}\n"
        ),
        Path::new("/tmp/p.toml"),
    )
    .unwrap();
    let ActionKind::Command { option_words, .. } = &p.action("c").unwrap().kind else {
        panic!("not a command")
    };
    // `{a}` and `{b}.txt` begin a word; `--out={c}` and `x{d}` do not; `{e}` comes after `--`.
    assert_eq!(option_words, &["{a}", "{b}.txt"]);
}

#[test]
fn net_connect_builtin_and_allow_private_parse() {
    let p = Policy::parse(
        &format!(
            "{HEAD}[network]\nmode = \"proxy\"\nallow = [\"db.internal\", \"*.example.com:443\"]\n\
             allow_private = [\"db.internal\"]\n\
             [[action]]\nname = \"net.connect\"\nbuiltin = \"net.connect\"\nparams = {{ method = \"^(GET|CONNECT)$\" }}\n"
        ),
        Path::new("/tmp/p.toml"),
    )
    .unwrap();
    assert_eq!(p.network.allow_private, ["db.internal"]);
    let a = p.action("net.connect").unwrap();
    assert_eq!(a.kind, ActionKind::Builtin(Builtin::NetConnect));
    assert_eq!(a.required, ["host", "port", "method"]);
    assert!(a.params["method"].is_match("GET") && !a.params["method"].is_match("POST"));
}

#[test]
fn incoherent_values_are_refused() {
    let cases: &[(&str, &str)] = &[
        ("version = 2\nname = \"p\"\n", "version"),
        ("version = 1\nname = \"bad name\"\n", "name"),
        ("version = 1\n", "name"),
        (&format!("{HEAD}[issuers]\nmax_ttl = \"1 hour\"\n"), "max_ttl"),
        (&format!("{HEAD}[issuers]\nmax_ttl = \"0s\"\n"), "max_ttl"),
        (&format!("{HEAD}[issuers]\nkeys = [\"ed25519:AAAA\"]\n"), "keys"),
        (&format!("{HEAD}[issuers]\nkeys = [\"missing.pub\"]\n"), "keys"),
        (&format!("{HEAD}[sandbox]\nrequire = [\"apparmor\"]\n"), "require"),
        (&format!("{HEAD}[sandbox.limits]\nmemory = \"2GB\"\n"), "memory"),
        (&format!("{HEAD}[sandbox.limits]\nmemory = \"12\"\n"), "memory"),
        (&format!("{HEAD}[sandbox.limits]\npids = \"many\"\n"), "pids"),
        (&format!("{HEAD}[network]\nmode = \"open\"\n"), "mode"),
        (&format!("{HEAD}[network]\nallow = [\"example.com\"]\n"), "allow"),
        (&format!("{HEAD}[network]\nmode = \"proxy\"\nallow = [\"Example.com/x\"]\n"), "allow"),
        (&format!("{HEAD}[network]\nmode = \"proxy\"\nallow_private = [\"db.internal\"]\n"), "allow_private"),
        (&format!("{HEAD}[network]\nmode = \"proxy\"\nallow = [\"*.internal\"]\nallow_private = [\"*.internal\"]\n"), "allow_private"),
        (&format!("{HEAD}[network]\nallow_private = [\"db.internal\"]\n"), "allow_private"),
        // Entries the proxy could never act on: an IP address; a credential no plain HTTP request reaches.
        (&format!("{HEAD}[network]\nmode = \"proxy\"\nallow = [\"127.0.0.1\"]\n"), "allow"),
        (&format!("{HEAD}[network]\nmode = \"proxy\"\ndeny = [\"10.0.0.1:22\"]\n"), "deny"),
        (&format!("{HEAD}[network]\nmode = \"proxy\"\nallow = [\"api.test\"]\n[[network.credentials]]\nhost = \"api.test:443\"\nheader = \"Authorization\"\nvalue_env = \"API_TOKEN\"\n"), "credentials"),
        (&format!("{HEAD}[[action]]\nname = \"net.open\"\nbuiltin = \"net.connect\"\n"), "name"),
        (&format!("{HEAD}[[action]]\nname = \"net.connect\"\nbuiltin = \"net.connect\"\nroot = \"/\"\n"), "root"),
        (&format!("{HEAD}[[action]]\nname = \"net.connect\"\nbuiltin = \"net.connect\"\nparams = {{ url = \".*\" }}\n"), "params.url"),
        (&format!("{HEAD}[[action]]\nname = \"Fs.Read\"\nbuiltin = \"sys.ping\"\n"), "name"),
        (&format!("{HEAD}[[action]]\nname = \"a\"\n"), "name"),
        (&format!("{HEAD}[[action]]\nname = \"a\"\nbuiltin = \"fs.read\"\n"), "root"),
        (&format!("{HEAD}[[action]]\nname = \"a\"\nbuiltin = \"fs.delete\"\nroot = \"/\"\n"), "builtin"),
        (&format!("{HEAD}[[action]]\nname = \"a\"\nrun = [\"{{p}}\"]\nparams = {{ p = \".*\" }}\n"), "run"),
        (&format!("{HEAD}[[action]]\nname = \"a\"\nrun = [\"x\", \"{{p\"]\n"), "run"),
        (&format!("{HEAD}[[action]]\nname = \"a\"\nbuiltin = \"sys.ping\"\n[[action]]\nname = \"a\"\nbuiltin = \"sys.ping\"\n"), "name"),
    ];
    for (text, key) in cases {
        let e = err(text);
        assert!(e.line.is_some(), "{text}: {e}");
        assert!(
            e.to_string().contains(&format!("key `{key}`")),
            "{text}: {e}"
        );
    }
}

#[test]
fn landlock_inexpressible_nesting_is_refused() {
    let e = err(&format!(
        "{HEAD}[sandbox]\nread_write = [\"/srv/data\"]\nread_only = [\"/srv/data/config\"]\n"
    ));
    assert_eq!(e.line, Some(5), "{e}");
    assert!(e.to_string().contains("Landlock"), "{e}");
    let e = err(&format!(
        "{HEAD}[sandbox]\nread_write = [\"/x\"]\nread_only = [\"/x/./\"]\n"
    ));
    assert!(e.to_string().contains("both"), "{e}");
    // The other way round is expressible: a writable subdirectory of a read-only tree.
    let ok = format!("{HEAD}[sandbox]\nread_only = [\"/srv\"]\nread_write = [\"/srv/out\"]\n");
    assert!(Policy::parse(&ok, Path::new("p.toml")).is_ok());
    let e = err(&format!("{HEAD}[sandbox]\nread_write = [\"/\"]\n"));
    assert!(e.to_string().contains("read_write"), "{e}");
}

#[test]
fn issuer_key_files_are_relative_to_the_policy() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("keys")).unwrap();
    let public =
        crate::capability::keys::write_key_pair(&dir.path().join("keys/issuer"), false).unwrap();
    let path = dir.path().join("policy.toml");
    std::fs::write(
        &path,
        format!("{HEAD}[issuers]\nkeys = [\"keys/issuer.pub\"]\n"),
    )
    .unwrap();
    let p = Policy::load(&path).unwrap();
    assert_eq!(p.issuers[0].key, public);
    assert_eq!(p.source.as_deref(), Some(path.as_path()));
}

#[test]
fn patterns_are_anchored_and_cannot_escape_their_group() {
    let re = compile_pattern("[a-z]+").unwrap();
    assert!(re.is_match("abc"));
    assert!(!re.is_match("abc1"));
    assert!(!re.is_match("1abc"));
    assert!(!re.is_match("abc\n"));
    assert!(compile_pattern("a)|(b").is_err());
    let re = compile_pattern("^a$").unwrap();
    assert!(!re.is_match("a\n"));
    let re = compile_pattern("(?m)a$").unwrap();
    assert!(!re.is_match("a\nb"));
}

#[test]
fn a_deny_rules_dot_spans_line_breaks_and_an_allow_patterns_does_not() {
    // `.*secret.*` in a deny rule must catch a value with a line break before the word; the same
    // pattern as a parameter or allow condition keeps refusing line breaks.
    let p = sample();
    let deny = p.rules.iter().find(|r| r.id == "no-secrets").unwrap();
    assert!(deny.args["path"].is_match("secret.txt"));
    assert!(deny.args["path"].is_match("secret\nx.txt"));
    let write = p.action("fs.write").unwrap();
    assert!(!write.params["path"].is_match("a\nb.txt"));
    let re = compile_pattern_with(".*KEY.*", true).unwrap();
    assert!(re.is_match("x\n-----BEGIN PRIVATE KEY-----\nMIIE"));
    assert!(!compile_pattern(".*KEY.*").unwrap().is_match("x\nKEY"));
}

#[test]
fn render_argv_fills_each_word() {
    let args: BTreeMap<String, String> = [("name".to_string(), "W; rm -rf /".to_string())].into();
    let argv = render_argv(
        &["/bin/echo".into(), "Hello, {name}!".into(), "{{x}}".into()],
        &args,
    )
    .unwrap();
    assert_eq!(argv, vec!["/bin/echo", "Hello, W; rm -rf /!", "{x}"]);
    assert!(render_argv(&["{other}".into()], &args).is_err());
}

proptest::proptest! {
    #[test]
    fn arbitrary_policy_text_never_panics(text in "\\PC{0,400}") {
        let _ = Policy::parse(&text, Path::new("p.toml"));
    }

    #[test]
    fn arbitrary_bytes_as_policy_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400)) {
        let text = String::from_utf8_lossy(&bytes);
        let _ = Policy::parse(&text, Path::new("p.toml"));
    }

    #[test]
    fn mutated_sample_policy_never_panics(pos in 0usize..2000, byte in proptest::prelude::any::<u8>()) {
        let mut text = sample_text().into_bytes();
        let at = pos % text.len();
        text[at] = byte;
        let _ = Policy::parse(&String::from_utf8_lossy(&text), Path::new("p.toml"));
    }
}
