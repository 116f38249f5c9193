//! Outcome mails: a job submitted with `notify_email` is mailed to that address when it
//! completes or fails, with the job, its duration and its outcome. The database decides
//! which mail is due and records that it is being sent before the server is called
//! (`herald.claim_job_mail`), so a mail goes out at most once per outcome whatever
//! crashes; `smtp` says whether a failed send may be tried again. The job is never held up
//! by its mail.
use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::Message;
use serde_json::Value;

use crate::api::DueMail;

/// The outcome mail of a job, from `from`.
pub fn outcome_message(from: &Mailbox, mail: &DueMail) -> Result<Message, String> {
    let to = mail
        .to
        .parse::<Mailbox>()
        .map_err(|e| format!("notify_email {:?} is not a mail address: {e}", mail.to))?;
    let d = &mail.details;
    let text = |k: &str| match &d[k] {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let state = text("state");
    let subject = format!(
        "Herald job {} ({}) {}",
        mail.job,
        text("type"),
        match state.as_str() {
            "COMPLETED" => "completed",
            "ABORTED" => "was aborted",
            _ => "failed",
        }
    );
    let duration = d["duration_ms"]
        .as_f64()
        .map(|ms| format!("{:.1} s", ms / 1000.0))
        .unwrap_or_else(|| "-".into());
    let mut body = format!(
        "Job:        {}\nType:       {}\nClass:      {}\nOutcome:    {}\nNode:       {}\n\
         Attempts:   {}\nSubmitted:  {} by {}\nStarted:    {}\nEnded:      {}\nDuration:   {}\n",
        mail.job,
        text("type"),
        text("class"),
        state,
        text("node"),
        text("attempts"),
        text("submitted_at"),
        text("submitted_by"),
        text("started_at"),
        text("ended_at"),
        duration,
    );
    if !d["error"].is_null() {
        body.push_str(&format!("\nError:\n{}\n", text("error")));
    }
    if !d["result"].is_null() {
        body.push_str(&format!("\nResult:\n{}\n", d["result"]));
    }
    // One Message-ID per outcome, so that a copy is recognisable as such.
    let outcome_key: String = text("ended_at")
        .chars()
        .filter(|c| c.is_ascii_digit())
        .collect();
    Message::builder()
        .from(from.clone())
        .to(to)
        .subject(subject)
        .message_id(Some(format!(
            "<herald-job-{}-{outcome_key}@herald>",
            mail.job
        )))
        .header(ContentType::TEXT_PLAIN)
        .body(body)
        .map_err(|e| format!("cannot build the mail: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_mail_tells_the_job_its_outcome_and_duration() {
        let from: Mailbox = "Herald <herald@example.com>".parse().unwrap();
        let mail = DueMail {
            job: 42,
            to: "clerk@example.com".into(),
            attempt: 1,
            details: json!({"type": "post", "class": "posting", "state": "FINISHERROR",
                            "duration_ms": 1500, "error": "books not balanced",
                            "ended_at": "2026-12-06T10:00:00.123+00:00"}),
        };
        let text = String::from_utf8(outcome_message(&from, &mail).unwrap().formatted()).unwrap();
        assert!(
            text.contains("Subject: Herald job 42 (post) failed"),
            "{text}"
        );
        assert!(text.contains("Duration:   1.5 s"), "{text}");
        assert!(text.contains("books not balanced"), "{text}");
        assert!(
            text.contains("Message-ID: <herald-job-42-2026120610000012300"),
            "{text}"
        );
        let bad = DueMail {
            to: "no address".into(),
            ..mail
        };
        assert!(outcome_message(&from, &bad).is_err());
    }
}
