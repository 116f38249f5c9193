//! Connections to PostgreSQL.
use tokio_postgres::{AsyncMessage, Client, Config, NoTls};

/// Connect with `application_name = herald/<node>` so monitoring can tell nodes apart.
pub async fn connect(config: &Config, node: &str) -> Result<Client, tokio_postgres::Error> {
    let mut config = config.clone();
    config.application_name(format!("herald/{node}"));
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!("connection closed: {e}");
        }
    });
    Ok(client)
}

/// A connection that runs jobs: the server checks every second that the coordinator is
/// still there (`client_connection_check_interval`), so a job's statement ends soon after
/// its coordinator died, and TCP keepalives notice a host that vanished; either way the
/// job's claim goes with the connection.
pub async fn connect_runner(config: &Config, node: &str) -> Result<Client, tokio_postgres::Error> {
    let mut config = config.clone();
    config.options(
        "-c client_connection_check_interval=1000 -c tcp_keepalives_idle=10 \
         -c tcp_keepalives_interval=5 -c tcp_keepalives_count=3",
    );
    connect(&config, node).await
}

/// Connect and forward NOTIFY payloads of the channels this client LISTENs to.
pub async fn connect_listening(
    config: &Config,
    node: &str,
) -> Result<(Client, tokio::sync::mpsc::UnboundedReceiver<String>), tokio_postgres::Error> {
    let mut config = config.clone();
    config.application_name(format!("herald/{node}"));
    let (client, mut connection) = config.connect(NoTls).await?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    if tx.send(n.payload().to_string()).is_err() {
                        break;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::debug!("control connection closed: {e}");
                    break;
                }
                None => break,
            }
        }
    });
    Ok((client, rx))
}
