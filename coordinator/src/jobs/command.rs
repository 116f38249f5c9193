//! The `command` runner: the job type's target is a program, the job's `params.args` its
//! arguments (strings, passed as they are: no shell ever parses them). It records the exit
//! code, the tails of stdout and stderr and the duration, with a CALLOUT event before and
//! after the call.
use std::process::Stdio;
use std::time::Instant;

use serde_json::{json, Value};
use tokio_postgres::Client;

use crate::api::{self, ApiError, ClaimedJob};

/// How much of stdout and stderr is kept (the end of each).
const TAIL_BYTES: usize = 4000;

/// What the command did.
pub struct Outcome {
    /// Exit code 0.
    pub ok: bool,
    pub result: Value,
    /// Why it failed, for the job's error.
    pub error: Option<String>,
}

/// The arguments from `params.args`: an array of strings (absent: none).
pub fn arguments(params: &Value) -> Result<Vec<String>, String> {
    match params.get("args") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.clone()),
                other => Err(format!("params.args must hold strings only, found {other}")),
            })
            .collect(),
        Some(other) => Err(format!(
            "params.args must be an array of strings, not {other}"
        )),
    }
}

fn tail(bytes: &[u8]) -> String {
    let start = bytes.len().saturating_sub(TAIL_BYTES);
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}

/// Run the job's command; CALLOUT `begin` and `end` are recorded on `client`, which holds
/// the job's claim. The command is killed if that connection breaks.
pub async fn run(client: &Client, job: &ClaimedJob) -> Result<Outcome, ApiError> {
    let args = match arguments(&job.params) {
        Ok(args) => args,
        Err(error) => {
            return Ok(Outcome {
                ok: false,
                result: Value::Null,
                error: Some(error),
            })
        }
    };
    api::callout(
        client,
        job.id,
        "begin",
        &json!({"program": job.target, "args": args}),
    )
    .await?;
    let started = Instant::now();
    let mut command = tokio::process::Command::new(&job.target);
    command
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // SAFETY: the closure runs in the forked child before exec and only calls prctl, which
    // is async-signal-safe; it makes the kernel kill the command if the coordinator dies,
    // so that a command never outlives the claim that protects it.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    // The claim lives on `client`'s connection (shared with other running commands): if it
    // breaks, the job is rescued elsewhere, so the command must not go on here.
    let output = tokio::select! {
        output = command.output() => output,
        _ = connection_lost(client) => {
            // Dropping the output future kills the command (`kill_on_drop`).
            return Ok(Outcome {
                ok: false,
                result: json!({"duration_ms": started.elapsed().as_millis() as u64}),
                error: Some("the connection holding the job's claim broke; command killed".into()),
            });
        }
    };
    let duration_ms = started.elapsed().as_millis() as u64;
    let outcome = match output {
        Ok(out) => {
            let code = out.status.code();
            let stdout = tail(&out.stdout);
            let stderr = tail(&out.stderr);
            let ok = out.status.success();
            let error = (!ok).then(|| {
                let how = match code {
                    Some(c) => format!("exited with code {c}"),
                    None => "was killed by a signal".to_string(),
                };
                format!("command {} {how}: {}", job.target, stderr.trim())
            });
            Outcome {
                ok,
                result: json!({"exit_code": code, "stdout": stdout, "stderr": stderr,
                               "duration_ms": duration_ms}),
                error,
            }
        }
        Err(e) => Outcome {
            ok: false,
            result: json!({"duration_ms": duration_ms}),
            error: Some(format!("cannot run {}: {e}", job.target)),
        },
    };
    let mut end = outcome.result.clone();
    if let Some(map) = end.as_object_mut() {
        map.insert("program".into(), json!(job.target));
        map.insert("ok".into(), json!(outcome.ok));
    }
    api::callout(client, job.id, "end", &end).await?;
    Ok(outcome)
}

/// Resolves once `client`'s connection has closed (checked every 200 ms).
async fn connection_lost(client: &Client) {
    while !client.is_closed() {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_are_strings_from_params_args() {
        assert_eq!(arguments(&json!({})).unwrap(), Vec::<String>::new());
        assert_eq!(
            arguments(&json!({"args": ["--year", "2026; rm -rf /"]})).unwrap(),
            vec!["--year".to_string(), "2026; rm -rf /".to_string()]
        );
        assert!(arguments(&json!({"args": [1]})).is_err());
        assert!(arguments(&json!({"args": "a b"})).is_err());
    }

    #[test]
    fn tails_keep_the_end() {
        let long = vec![b'x'; TAIL_BYTES + 10];
        assert_eq!(tail(&long).len(), TAIL_BYTES);
        assert_eq!(tail(b"ok"), "ok");
    }
}
