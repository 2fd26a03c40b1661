//! Command-line parsing and dispatch. Nothing here decides or enforces anything: each subcommand's
//! arguments are handed to the module that owns the work, and its [`Failure`] becomes a message and an
//! exit status (see `exit.rs` and SPEC "Exit status").

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::exit::{CmdResult, Failure, REFUSED, USAGE};

#[derive(Parser, Debug)]
#[command(
    name = "zt-aas",
    version,
    about = "Zero-trust sandbox for untrusted agents",
    long_about = "Runs an untrusted agent in a sandbox it cannot leave (namespaces, Landlock, seccomp, no \
                  capabilities) whose only channel to the world is a mediator that checks signed capability \
                  tokens against a policy and records every decision in a signed, hash-chained audit log."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run CMD inside the sandbox, with the mediator on fd 3.
    Run(RunArgs),
    /// Inside the sandbox: send one request to the mediator and print its result.
    Call(CallArgs),
    /// Generate an ed25519 key pair: PREFIX.key (mode 0600) and PREFIX.pub.
    Keygen(KeygenArgs),
    /// Issue, inspect and revoke capability tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Check a policy, or explain the decision it makes for a hypothetical call.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Verify, show, replay and export audit logs.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// The five-minute walk-through: deny, policy, allow, audit. Self-contained, needs no network.
    Demo(DemoArgs),
    /// Report which sandbox layers this host can enforce.
    Doctor(DoctorArgs),
    /// Print a shell completion script (e.g. `zt-aas completions bash > /etc/bash_completion.d/zt-aas`).
    Completions(CompletionsArgs),
    /// Print the man page (roff): `zt-aas man | man -l -`.
    Man,
}

#[derive(Args, Debug, Clone, Default)]
pub struct RunArgs {
    /// Policy file (TOML). Without it the built-in default policy applies.
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// Profile: a shipped profile's name (minimal, ci) or a path to a profile file.
    #[arg(long, value_name = "NAME|FILE")]
    pub profile: Option<String>,
    /// Capability token file backing the session (repeatable). Verified before the agent starts.
    #[arg(long = "token", value_name = "FILE")]
    pub tokens: Vec<PathBuf>,
    /// Agent identity (default: the policy's `agent`, else "agent").
    #[arg(long, value_name = "NAME")]
    pub agent: Option<String>,
    /// Audit log (default: the policy's [audit] log, else $XDG_STATE_HOME/zt-aas/audit.jsonl).
    #[arg(long, value_name = "FILE")]
    pub audit: Option<PathBuf>,
    /// Workspace directory, writable inside at its own path (default: the current directory). Never `/`,
    /// a directory that contains a home directory, nor one in a home's dot-directory (exit 125).
    #[arg(long, value_name = "DIR")]
    pub workspace: Option<PathBuf>,
    /// The audit log's signing key (default: the policy's [audit] key, else audit.key beside the log;
    /// created on first use, i.e. only with a new log).
    #[arg(long, value_name = "FILE")]
    pub audit_key: Option<PathBuf>,
    /// Write the sealed head (hex hash of the session's last record) to FILE.
    #[arg(long, value_name = "FILE")]
    pub head_out: Option<PathBuf>,
    /// Run with fewer layers when a required one is unavailable (recorded in the audit log).
    #[arg(long)]
    pub allow_degraded: bool,
    /// The workspace is a throwaway directory, deleted after the run (a sandboxed brokered command's):
    /// skip the after-run checks of what the agent left in it for the user's git and shell.
    #[arg(long)]
    pub scratch_workspace: bool,
    /// No summary line on stderr.
    #[arg(short, long)]
    pub quiet: bool,
    /// The agent's command and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

#[derive(Args, Debug, Clone)]
pub struct CallArgs {
    /// The action's name, e.g. hello-world.say_hello.
    pub action: String,
    /// Arguments as KEY=VALUE.
    #[arg(value_name = "KEY=VALUE")]
    pub args: Vec<String>,
    /// Arguments as a JSON object (merged with KEY=VALUE pairs; a key given twice is an error).
    #[arg(long, value_name = "JSON")]
    pub args_json: Option<String>,
    /// Present this token with the request instead of the session's tokens.
    #[arg(long, value_name = "FILE")]
    pub token: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
pub struct KeygenArgs {
    /// Writes PREFIX.key and PREFIX.pub.
    #[arg(long, value_name = "PREFIX")]
    pub out: PathBuf,
    /// Overwrite existing key files.
    #[arg(long)]
    pub force: bool,
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Issue a token; refused when the policy would not allow a capability or the TTL is too long.
    Issue(TokenIssueArgs),
    /// Show a token's payload, validity, and whether the policy still allows each capability.
    Inspect(TokenInspectArgs),
    /// Append a token's id to the policy's revocation list (atomic; the next use is denied).
    Revoke(TokenRevokeArgs),
}

#[derive(Args, Debug, Clone)]
pub struct TokenIssueArgs {
    /// The policy the token is for (its audience; every grant is checked against it).
    #[arg(long, value_name = "FILE")]
    pub policy: PathBuf,
    /// The issuer's private key (from `zt-aas keygen`).
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
    /// The agent the token is for (its subject).
    #[arg(long, value_name = "NAME")]
    pub agent: String,
    /// Action granted (repeatable).
    #[arg(long = "action", value_name = "NAME", required = true)]
    pub actions: Vec<String>,
    /// Constrain a parameter: PARAM=REGEX, applied to every granted action that has PARAM (repeatable).
    #[arg(long = "arg", value_name = "PARAM=REGEX")]
    pub arg_constraints: Vec<String>,
    /// Lifetime, e.g. 30s, 10m, 1h (default: the policy's max_ttl).
    #[arg(long, value_name = "DURATION")]
    pub ttl: Option<String>,
    /// Maximum number of uses of each capability.
    #[arg(long, value_name = "N")]
    pub max_uses: Option<u64>,
    /// Write the token here (mode 0600) instead of stdout; an existing file is replaced only if it holds a token.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
pub struct TokenInspectArgs {
    /// The token file.
    pub file: PathBuf,
    /// Check the signature, status and capabilities against this policy (and its trusted issuers).
    /// Exit 0 then means `run --token` would accept the token now; 1 that it would not (the output
    /// says why). Without it, exit 0 once the token could be decoded and shown (signature unchecked).
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// With --policy: the agent `run` would use (default: the policy's `agent`, else `agent`).
    #[arg(long, value_name = "NAME", requires = "policy")]
    pub agent: Option<String>,
    /// Print one JSON object (payload, signature, status, capabilities).
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug, Clone)]
pub struct TokenRevokeArgs {
    #[arg(long, value_name = "FILE")]
    pub policy: PathBuf,
    /// A token file or a token id (32 hex digits).
    #[arg(value_name = "TOKEN_FILE|TOKEN_ID")]
    pub token: String,
}

#[derive(Subcommand, Debug)]
pub enum PolicyCommand {
    /// Parse and check a policy; errors name the file, line and key.
    Check(PolicyCheckArgs),
    /// The decision and the determining rule for a hypothetical call.
    Explain(PolicyExplainArgs),
}

#[derive(Args, Debug, Clone)]
pub struct PolicyCheckArgs {
    pub file: PathBuf,
}

#[derive(Args, Debug, Clone)]
pub struct PolicyExplainArgs {
    #[arg(long, value_name = "FILE")]
    pub policy: PathBuf,
    #[arg(long, value_name = "NAME")]
    pub agent: String,
    #[arg(long, value_name = "NAME")]
    pub action: String,
    #[arg(value_name = "KEY=VALUE")]
    pub args: Vec<String>,
    /// Decide as if this token were presented (default: no token).
    #[arg(long, value_name = "FILE")]
    pub token: Option<PathBuf>,
    /// Print the decision as one JSON object (decision, check, rule, reason, token, notes).
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Check every record's hash, chain link and signature, and that every session is sealed.
    Verify(AuditVerifyArgs),
    /// A readable timeline: who, what, decision, why.
    Show(AuditShowArgs),
    /// Re-decide every recorded request against POLICY and print what would change.
    Replay(AuditReplayArgs),
    /// Export records in another format.
    Export(AuditExportArgs),
    /// After a crash left a torn last line: close it with a signed `recovery` record (nothing dropped).
    Recover(AuditRecoverArgs),
}

#[derive(Args, Debug, Clone)]
pub struct AuditRecoverArgs {
    pub log: PathBuf,
    /// The log's signing key (default: audit.key beside the log).
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
pub struct AuditVerifyArgs {
    pub log: PathBuf,
    /// Pin the signer: every record must be signed by this public key.
    #[arg(long, value_name = "PUBFILE")]
    pub key: Option<PathBuf>,
    /// Fail unless the log ends in this head (catches truncation of whole sessions).
    #[arg(long, value_name = "HEX")]
    pub expect_head: Option<String>,
    /// Print a machine-readable summary (one JSON object; fields in docs/audit-format.md).
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug, Clone)]
pub struct AuditShowArgs {
    pub log: PathBuf,
    /// Print the records themselves, one JSON object a line.
    #[arg(long)]
    pub json: bool,
    /// Only this session.
    #[arg(long, value_name = "ID")]
    pub session: Option<String>,
    /// Only decisions with this outcome (allow, deny, error).
    #[arg(long, value_name = "DECISION")]
    pub decision: Option<String>,
}

#[derive(Args, Debug, Clone)]
pub struct AuditReplayArgs {
    /// The audit log whose recorded requests are decided again.
    pub log: PathBuf,
    #[arg(long, value_name = "FILE")]
    pub policy: PathBuf,
    /// Print the differences as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug, Clone)]
pub struct AuditExportArgs {
    pub log: PathBuf,
    /// Output format: ocsf (OCSF API Activity events, JSON Lines).
    #[arg(long, value_name = "FORMAT")]
    pub format: String,
}

#[derive(Args, Debug, Clone, Default)]
pub struct DemoArgs {
    /// Keep the demo's directory (policy, keys, tokens, audit log) instead of removing it.
    #[arg(long)]
    pub keep: bool,
}

#[derive(Args, Debug, Clone, Default)]
pub struct DoctorArgs {
    /// Print one JSON object (what this host can enforce).
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug, Clone)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// Entry point of the `zt-aas` binary.
pub fn main() -> ExitCode {
    let argv: Vec<OsString> = std::env::args_os().collect();
    let is_run = argv.get(1).is_some_and(|a| a == "run");
    let cli = match Cli::try_parse_from(&argv) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            let code = match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => 0,
                // SPEC: `run` exits 125 when zt-aas itself refuses, a bad command line included.
                _ if is_run => REFUSED,
                _ => USAGE,
            };
            return ExitCode::from(code);
        }
    };
    match dispatch(cli.command) {
        Ok(0) if crate::exit::stdout_failed() => ExitCode::from(crate::exit::FAILED),
        Ok(code) => ExitCode::from(code),
        Err(failure) => {
            let _ = std::io::stdout().flush();
            // A message may quote untrusted input (a log, a token, a policy): no escape sequences.
            let message = crate::audit::show::printable_lines(&failure.to_string());
            errln!("zt-aas: {message}");
            ExitCode::from(failure.code)
        }
    }
}

fn dispatch(command: Command) -> CmdResult {
    match command {
        Command::Run(args) => crate::session::run(&args),
        Command::Doctor(args) => crate::sandbox::doctor::main(&args),
        Command::Call(args) => crate::mediator::client::main(&args),
        Command::Keygen(args) => crate::capability::commands::keygen(&args),
        Command::Token(TokenCommand::Issue(args)) => crate::capability::commands::issue(&args),
        Command::Token(TokenCommand::Inspect(args)) => crate::capability::commands::inspect(&args),
        Command::Token(TokenCommand::Revoke(args)) => crate::capability::commands::revoke(&args),
        Command::Policy(PolicyCommand::Check(args)) => crate::policy::commands::check(&args),
        Command::Policy(PolicyCommand::Explain(args)) => crate::policy::commands::explain(&args),
        Command::Audit(AuditCommand::Verify(args)) => crate::audit::commands::verify(&args),
        Command::Audit(AuditCommand::Show(args)) => crate::audit::commands::show(&args),
        Command::Audit(AuditCommand::Replay(args)) => crate::audit::commands::replay(&args),
        Command::Audit(AuditCommand::Export(args)) => crate::audit::commands::export(&args),
        Command::Audit(AuditCommand::Recover(args)) => crate::audit::commands::recover(&args),
        Command::Demo(args) => crate::demo::main(&args),
        Command::Completions(args) => completions(&args),
        Command::Man => man(),
    }
}

/// Parses `KEY=VALUE` words into a map; a key given twice is a usage error.
pub fn parse_key_values(
    words: &[String],
) -> Result<std::collections::BTreeMap<String, String>, Failure> {
    let mut map = std::collections::BTreeMap::new();
    for word in words {
        let (key, value) = word
            .split_once('=')
            .ok_or_else(|| Failure::usage(format!("argument `{word}` is not KEY=VALUE")))?;
        if key.is_empty() {
            return Err(Failure::usage(format!(
                "argument `{word}` has an empty key"
            )));
        }
        if map.insert(key.to_string(), value.to_string()).is_some() {
            return Err(Failure::usage(format!("argument `{key}` is given twice")));
        }
    }
    Ok(map)
}

/// `zt-aas completions SHELL`: the completion script, generated from the clap definitions above.
fn completions(args: &CompletionsArgs) -> CmdResult {
    let mut cmd = <Cli as clap::CommandFactory>::command();
    // Generated into memory: clap_complete panics on a failed write, a closed stdout included.
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "zt-aas", &mut script);
    print_generated(&script, "completion script")
}

/// `zt-aas man`: the zt-aas(1) man page in roff, generated from the clap definitions above.
fn man() -> CmdResult {
    let mut page = Vec::new();
    clap_mangen::Man::new(<Cli as clap::CommandFactory>::command())
        .render(&mut page)
        .map_err(|e| Failure::failed(format!("rendering the man page: {e}")))?;
    print_generated(&page, "man page")
}

/// Writes generated text to stdout; a reader that stops early (`| head`) is not an error.
fn print_generated(bytes: &[u8], what: &str) -> CmdResult {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(Failure::failed(format!("writing the {what}: {e}")))
        }
        _ => Ok(0),
    }
}
