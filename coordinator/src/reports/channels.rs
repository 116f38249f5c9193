//! The devices an output goes to. Each takes the output's artefacts (in member order) and
//! returns the sha256 of what it sent.
//!
//! - `file`: one file per output under `<spool-dir>/<target>/`, named after the group (or
//!   the report job): `group-<id>.<ext>` / `job-<id>.<ext>`, the members' artefacts one
//!   after the other. Written to a temporary file, flushed, then renamed: a reader never
//!   sees half a file, and writing it again (after a node died mid-output) replaces it
//!   with the same content.
//! - `print`: one `lp` job (CUPS) to the target queue with every artefact as a file, a
//!   COPY banner first when an operator reprints an uncertain output.
//! - `email`: one mail to the target recipients with every artefact attached; its
//!   Message-ID is derived from the output (group or job), so a resent mail is recognisable
//!   as the same one.
use std::path::{Path, PathBuf};

use lettre::message::header::ContentType;
use lettre::message::{Attachment, MultiPart, SinglePart};
use sha2::{Digest, Sha256};

use crate::api::{Artefact, ClaimedOutput};
use crate::smtp::{Mailer, Sent};

/// Why a device did not take the output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelError {
    /// Not output, and trying again is harmless (the mail server is unreachable or refused
    /// for now, `lp` could not queue the job, the spool directory could not be written):
    /// the output goes back to pending with a delay (the channel's `retry_seconds`, doubled
    /// per attempt) until its `max_attempts` are used up.
    Retry(String),
    /// Not output, and trying again would fail the same way (a bad recipient, a refusal for
    /// good): the output is recorded `failed` for an operator.
    Failed(String),
}

impl ChannelError {
    pub fn message(&self) -> &str {
        match self {
            ChannelError::Retry(m) | ChannelError::Failed(m) => m,
        }
    }
}

impl std::fmt::Display for ChannelError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message())
    }
}

fn retry(message: String) -> ChannelError {
    ChannelError::Retry(message)
}

/// The output's artefacts one after the other.
fn combined(artefacts: &[Artefact]) -> Vec<u8> {
    let mut out = Vec::new();
    for a in artefacts {
        out.extend_from_slice(&a.content);
    }
    out
}

pub fn checksum(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn extension(format: &str) -> &str {
    match format {
        "text" => "txt",
        other => other,
    }
}

/// The output's deterministic name (without extension).
pub fn base_name(output: &ClaimedOutput) -> String {
    match (output.group_id, output.job) {
        (Some(g), _) => format!("group-{g}"),
        (None, Some(j)) => format!("job-{j}"),
        (None, None) => format!("output-{}", output.id),
    }
}

/// Write the output into the spool directory atomically; its path and checksum. The
/// artefacts of a group are one file, one after the other; PDFs, which cannot be joined
/// that way, are one file per member (`group-N.<job>.pdf`), and the path is the first.
pub fn file(
    spool: &Path,
    output: &ClaimedOutput,
    artefacts: &[Artefact],
) -> Result<(PathBuf, String), ChannelError> {
    let dir = spool.join(&output.target);
    std::fs::create_dir_all(&dir)
        .map_err(|e| retry(format!("cannot create {}: {e}", dir.display())))?;
    let ext = artefacts
        .first()
        .map(|a| extension(&a.format))
        .unwrap_or("txt");
    let base = base_name(output);
    let files: Vec<(String, Vec<u8>)> = if ext == "pdf" && artefacts.len() > 1 {
        artefacts
            .iter()
            .map(|a| (format!("{base}.{}.pdf", a.job), a.content.clone()))
            .collect()
    } else {
        vec![(format!("{base}.{ext}"), combined(artefacts))]
    };
    let mut first = None;
    for (name, content) in &files {
        let path = write_atomically(&dir, name, content)?;
        first.get_or_insert(path);
    }
    let path = first.unwrap_or_else(|| dir.join(format!("{base}.{ext}")));
    Ok((path, checksum(&combined(artefacts))))
}

/// Write `content` to `dir/name` through a temporary file and a rename.
fn write_atomically(dir: &Path, name: &str, content: &[u8]) -> Result<PathBuf, ChannelError> {
    let path = dir.join(name);
    // Each writer writes a temporary file of its own (a node that lost its claim but has
    // not noticed yet never writes into ours), named after the output so that one left by
    // a writer that died is recognised and removed below.
    let temp_prefix = format!(".{name}.tmp-");
    let temp = dir.join(format!("{temp_prefix}{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        let mut f = std::fs::File::create(&temp)?;
        f.write_all(content)?;
        f.sync_all()?;
        std::fs::rename(&temp, &path)?;
        // The rename itself survives a crash once the directory is flushed.
        std::fs::File::open(dir)?.sync_all()
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&temp);
        retry(format!("cannot write {}: {e}", path.display()))
    })?;
    // This writer holds the output's claim, so a temporary file of another writer of the
    // same output was left by one whose claim is gone (its node died mid-write).
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry
                .file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(&temp_prefix))
            {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    Ok(path)
}

/// A new directory under the temporary directory that only this user may enter, created
/// here (never one that existed: another local user cannot plant files or links in it).
fn private_dir(prefix: &str) -> Result<PathBuf, ChannelError> {
    use std::os::unix::fs::DirBuilderExt;
    let mut last = None;
    for attempt in 0..16u32 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!(
            "{prefix}-{}-{nanos:08x}{attempt}",
            std::process::id()
        ));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) => last = Some(e),
        }
    }
    Err(retry(format!(
        "cannot create a private temporary directory: {last:?}"
    )))
}

/// Is `lp` (CUPS) on this host?
pub fn lp_available() -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|p| p.join("lp").is_file()))
}

/// Print the output as one `lp` job; the checksum of what was printed.
pub async fn print(output: &ClaimedOutput, artefacts: &[Artefact]) -> Result<String, ChannelError> {
    let dir = private_dir(&format!("herald-print-{}", output.id))?;
    let mut files = Vec::new();
    if output.as_copy {
        let banner = dir.join("0-copy.txt");
        std::fs::write(
            &banner,
            format!(
                "*** COPY ***\n\nReprint of {} (output {}), printed again by an operator.\n",
                output.name, output.id
            ),
        )
        .map_err(|e| retry(format!("cannot write {}: {e}", banner.display())))?;
        files.push(banner);
    }
    for (i, a) in artefacts.iter().enumerate() {
        let f = dir.join(format!("{}-job-{}.{}", i + 1, a.job, extension(&a.format)));
        std::fs::write(&f, &a.content)
            .map_err(|e| retry(format!("cannot write {}: {e}", f.display())))?;
        files.push(f);
    }
    let mut command = tokio::process::Command::new("lp");
    command
        .arg("-d")
        .arg(&output.target)
        .arg("-t")
        .arg(&output.name);
    if let Some(opts) = output.options.get("lp_options").and_then(|o| o.as_array()) {
        for o in opts.iter().filter_map(|o| o.as_str()) {
            command.arg("-o").arg(o);
        }
    }
    command.arg("--").args(&files);
    let result = command.output().await;
    let _ = std::fs::remove_dir_all(&dir);
    let out = result.map_err(|e| retry(format!("cannot run lp: {e}")))?;
    // lp exits non-zero when the job was not queued (the scheduler is down, the queue
    // refuses jobs): nothing was printed, so trying again later is safe.
    if !out.status.success() {
        return Err(retry(format!(
            "lp -d {} failed ({}): {}",
            output.target,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(checksum(&combined(artefacts)))
}

/// Mail the output with its artefacts attached; the checksum of what was attached. A
/// server that cannot be reached, refuses for now, or breaks off mid-send is tried again
/// later (the Message-ID stays the same, so a mail that did arrive twice is recognisable
/// as one); a refusal for good fails the output.
pub async fn email(
    mailer: &Mailer,
    output: &ClaimedOutput,
    artefacts: &[Artefact],
) -> Result<String, ChannelError> {
    let subject = output
        .options
        .get("subject")
        .and_then(|s| s.as_str())
        .map(str::to_string)
        .unwrap_or_else(|| format!("{} ({})", output.name, base_name(output)));
    let mut builder = lettre::Message::builder()
        .from(mailer.from().clone())
        .subject(subject)
        .message_id(Some(format!(
            "<herald-{}.{}@herald.invalid>",
            base_name(output),
            output.origin
        )));
    for to in output
        .target
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        builder = builder.to(to
            .parse()
            .map_err(|e| ChannelError::Failed(format!("bad recipient {to:?}: {e}")))?);
    }
    let mut body = MultiPart::mixed().singlepart(SinglePart::plain(format!(
        "{}: {} document(s) attached.{}\n",
        output.name,
        artefacts.len(),
        if output.failed.is_empty() {
            String::new()
        } else {
            format!(" Not included (failed): jobs {:?}.", output.failed)
        }
    )));
    for a in artefacts {
        let kind = match a.format.as_str() {
            "csv" => "text/csv",
            "json" => "application/json",
            "html" => "text/html",
            "pdf" => "application/pdf",
            _ => "text/plain",
        };
        let name = format!("{}-{}.{}", a.report, a.job, extension(&a.format));
        body = body.singlepart(Attachment::new(name).body(
            a.content.clone(),
            ContentType::parse(kind).unwrap_or(ContentType::TEXT_PLAIN),
        ));
    }
    let message = builder
        .multipart(body)
        .map_err(|e| ChannelError::Failed(format!("cannot build the mail: {e}")))?;
    match mailer.send(message).await {
        Sent::Sent => Ok(checksum(&combined(artefacts))),
        Sent::Retry(e) | Sent::MaybeSent(e) => Err(retry(e)),
        Sent::Failed(e) => Err(ChannelError::Failed(e)),
    }
}
