//! Sending mail through the configured SMTP server (`--smtp-url`), with what a caller needs
//! to send each message at most once: a failure to reach the server means nothing was
//! sent (try again later), a refusal for now (4xx) too, a refusal for good (5xx) is final,
//! and a failure after the message may have reached the server is final as well (it may
//! have been sent). Knows no Herald concept: jobs' outcome mails and reports' output use it.
use std::time::Duration;

use lettre::message::Mailbox;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

/// How long one exchange with the mail server may take.
const SMTP_TIMEOUT: Duration = Duration::from_secs(10);

/// The configured mail server and sender.
#[derive(Clone)]
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    server: String,
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailer")
            .field("server", &self.server)
            .field("from", &self.from.to_string())
            .finish()
    }
}

/// How sending one mail went.
#[derive(Debug, PartialEq, Eq)]
pub enum Sent {
    Sent,
    /// Not sent (the server is unreachable or refused for now): try again later.
    Retry(String),
    /// Refused for good: never again.
    Failed(String),
    /// The connection broke off mid-send: the mail may have been sent. Callers that must
    /// not send twice give up; callers whose mail carries a stable Message-ID may resend.
    MaybeSent(String),
}

impl Mailer {
    /// `url`: `smtp://host[:port]` (plain, or STARTTLS with `?tls=required`),
    /// `smtps://host[:port]` (TLS); credentials as `user:password@`. `from`: the sender.
    pub fn new(url: &str, from: &str) -> Result<Mailer, String> {
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
            .map_err(|e| format!("invalid --smtp-url {url:?}: {e}"))?
            .timeout(Some(SMTP_TIMEOUT))
            .build();
        let from = from
            .parse::<Mailbox>()
            .map_err(|e| format!("invalid --mail-from {from:?}: {e}"))?;
        // The server without credentials, for logs.
        let server = url
            .split_once("://")
            .map(|(scheme, rest)| format!("{scheme}://{}", rest.rsplit('@').next().unwrap_or(rest)))
            .unwrap_or_else(|| url.to_string());
        Ok(Mailer {
            transport,
            from,
            server,
        })
    }

    /// The sender of every mail.
    pub fn from(&self) -> &Mailbox {
        &self.from
    }

    /// Send one message.
    pub async fn send(&self, message: Message) -> Sent {
        // Reach the server first: a failure here means that nothing was sent.
        match self.transport.test_connection().await {
            Ok(true) => {}
            Ok(false) => return Sent::Retry(format!("{} did not answer", self.server)),
            Err(e) => return Sent::Retry(format!("cannot reach {}: {e}", self.server)),
        }
        match self.transport.send(message).await {
            Ok(_) => Sent::Sent,
            Err(e) if e.is_transient() => {
                Sent::Retry(format!("{} refused for now: {e}", self.server))
            }
            Err(e) if e.is_permanent() => Sent::Failed(format!("{} refused: {e}", self.server)),
            Err(e) => Sent::MaybeSent(format!(
                "sending through {} broke off ({e}); the mail may have been sent",
                self.server
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_settings_are_refused_with_the_setting_named() {
        assert!(Mailer::new("smtp://localhost:2525", "herald@example.com").is_ok());
        let e = Mailer::new("ftp://x", "herald@example.com").unwrap_err();
        assert!(e.contains("--smtp-url"), "{e}");
        let e = Mailer::new("smtp://localhost", "not an address").unwrap_err();
        assert!(e.contains("--mail-from"), "{e}");
        let m = Mailer::new("smtp://user:secret@mail.example.com:587", "h@example.com").unwrap();
        assert!(!format!("{m:?}").contains("secret"));
    }
}
